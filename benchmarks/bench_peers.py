"""keraseq against its peers: an idiomatic PyTorch TBPTT loop and a compiled JAX loop.

The same data, model, global batch, window length and optimizer for every system, timed per
epoch in a fresh process each, in interleaved rounds (the order rotates from round to round)
so that the noise of a shared machine hits every contender alike:

- ``keraseq[tensorflow]`` and ``keraseq[jax]``: ``keraseq.Estimator.fit`` under
  ``KERAS_BACKEND=tensorflow`` / ``jax``, with the default ``fused_rnn=True`` (Keras's LSTM runs
  in keraseq's fused loop); on JAX keraseq splits a minibatch's rows over one JAX CPU device
  per core (a backend keraseq cannot run under gets a "not available (<reason>)" row and the
  run goes on);
- ``keraseq[tensorflow]-unfused`` and ``keraseq[jax]-unfused``: the same with
  ``fused_rnn=False``: Keras's own LSTM loop inside keraseq (the path before the fused loop,
  the baseline of the fused gain);
- ``keraseq[jax]-1dev``: ``keraseq[jax]`` with ``KERASEQ_CPU_DEVICES=1``: one JAX CPU device,
  no row split; to be read against ``torch-1t``;
- ``jax hand loop``: a hand-written LSTM cell (Keras's gate order i, f, c, o, one kernel and
  one recurrent kernel; ``lax.scan`` over the time steps of a window), ``lax.scan`` over the
  windows of a minibatch with ``jax.value_and_grad`` and a hand-written AdamW update (Keras's
  formula) per window, parameters and optimizer state donated: ONE ``jax.jit`` call per
  minibatch (on JAX's default single CPU device);
- ``torch``: ``nn.LSTM(batch_first=True)`` + ``nn.Linear``, a Python loop over minibatches and
  windows, zero state per minibatch, ``h.detach(), c.detach()`` at each window border, one
  ``torch.optim.AdamW`` step per window; with torch's default threads, and again with
  ``torch.set_num_threads(1)`` (``torch-1t``). On a busy machine torch's multi-threaded
  kernels can stall for seconds per minibatch; a torch epoch therefore stops after the
  minibatch that passes ``--max-epoch-s`` (10 s) and its time is extrapolated to all N rows
  (marked ``*``). ``torch-cuda`` (not in the default set; for a GPU machine): the same loop
  with the model and data on torch's CUDA device.

Workloads (mse on per-step targets, ``shuffle=False``, AdamW with Keras's defaults: lr 1e-3,
betas (0.9, 0.999), eps 1e-7, weight decay 0.004, for every system):

- ``seed``: LSTM(10) + Dense(1), F=10, T=1000, batch 20, window 10, N=200 (1000 windows/epoch);
- ``realistic``: LSTM(128) + Dense(1), F=32, T=200, batch 64, window 20, N=256 (40 windows/epoch).

Reported per system: the median (and fastest) steady epoch (every epoch after the first, pooled
over the rounds), the first epoch's extra time over a steady one (tracing, compilation: the
median over rounds), the loss of the last epoch (a sanity check that every system trains the
same problem; initializations differ), and the columns ``vs kq[tf]`` / ``vs kq[jax]``: this
system's time / the fused keraseq[tensorflow]'s or keraseq[jax]'s (> 1 = keraseq faster).
Then the summary ratios, each the other system's median s/epoch over the named keraseq's
(> 1 = keraseq faster):

- ``fused gain: keraseq[B] vs keraseq[B]-unfused``: unfused time / fused time, per backend;
- ``keraseq[jax] / torch (n threads)``: torch with its default threads / keraseq[jax];
- ``keraseq[jax]-1dev / torch (1 thread)``: torch-1t / keraseq[jax]-1dev (one core each);
- ``keraseq[jax] / jax hand loop``: the hand loop / keraseq[jax]; issue 29's target >= 1.0.

For the realistic workload also the fraction of FP32 peak: the LSTM's gate matmul FLOPs of an
epoch (forward ``2 * B * (F + units) * 4 * units`` per step, backward twice that; elementwise
math and the Dense left out) over the median s/epoch, in GFLOP/s and in % of a peak measured
by the parent at the start (the best of five float32 2048x2048 NumPy matmuls; NumPy's BLAS
uses every core the process may run on, the ``--cores`` ones under ``--cores``).

Usage::

    python benchmarks/bench_peers.py                      # both workloads, 3 rounds, 4 epochs
    python benchmarks/bench_peers.py --quick              # smoke run: small N and T, 1 round
    python benchmarks/bench_peers.py --cores 1            # every worker under ``taskset -c 0``
    python benchmarks/bench_peers.py --workloads seed --systems torch,jax --rounds 5
    python benchmarks/bench_peers.py --keraseq-src DIR    # time the keraseq found in DIR

Needs the ``bench`` extra (``pip install -e ".[bench]"``: torch, jax); keraseq itself never
imports either. ``--worker SYSTEM --workload W`` is the internal mode that times one system in
its own process and prints one ``RESULT {json}`` line.
"""

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time

from peer_ratios import ratio_lines  # this folder: sys.path[0] of a script

HERE = os.path.abspath(__file__)

# name: (F, units, T, batch, window, N)
WORKLOADS = {
    "seed": (10, 10, 1000, 20, 10, 200),
    "realistic": (32, 128, 200, 64, 20, 256),
}
QUICK = {"seed": (10, 10, 200, 20, 10, 40), "realistic": (32, 128, 100, 64, 20, 64)}
SYSTEMS = [
    "keraseq[tensorflow]",
    "keraseq[jax]",
    "keraseq[tensorflow]-unfused",
    "keraseq[jax]-unfused",
    "keraseq[jax]-1dev",
    "jax",
    "torch",
    "torch-1t",
]
LABELS = {
    "keraseq[tensorflow]": "keraseq[tensorflow]",
    "keraseq[jax]": "keraseq[jax]",
    "keraseq[tensorflow]-unfused": "keraseq[tensorflow]-unfused",
    "keraseq[jax]-unfused": "keraseq[jax]-unfused",
    "keraseq[jax]-1dev": "keraseq[jax]-1dev",
    "jax": "jax hand loop",
    "torch": "torch",
    "torch-1t": "torch (1 thread)",
    "torch-cuda": "torch (CUDA)",
}
KQ = {"keraseq[tensorflow]": "kq[tf]", "keraseq[jax]": "kq[jax]"}  # the `vs kq[..]` columns
LR, BETA1, BETA2, EPS, WD = 1e-3, 0.9, 0.999, 1e-7, 0.004  # keras.optimizers.AdamW's defaults


def backend_of(system):
    """``keraseq[jax]-unfused`` -> ``jax``; None for a system that is not keraseq."""
    if not system.startswith("keraseq[") or "]" not in system:
        return None
    return system[len("keraseq[") : system.index("]")]


def epoch_flops(shape):
    """Matmul FLOPs of one training epoch of LSTM(units) + Dense(1): the gate matmuls only.

    Forward, per time step: ``2 * B * (F + units) * 4 * units`` (the input and recurrent
    kernels); over an epoch the B of the minibatches sum to N and there are T steps per row.
    The backward pass is about twice the forward matmuls (the input and the weight gradients),
    so the total is 3x the forward. Elementwise gate math, the loss and the Dense are left out.
    """
    F, units, T, _, _, N = shape
    return 3 * 2 * N * T * (F + units) * 4 * units


def measure_peak(n=2048, repeats=5):
    """The best GFLOP/s of a few float32 ``n x n`` NumPy matmuls (its BLAS uses every core)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: BLAS threads, caches
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def make_data(shape):
    import numpy as np

    F, _, T, _, _, N = shape
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, T, F)).astype("float32")
    y = (np.cumsum(x[..., :1], axis=1) / 30).astype("float32")
    return x, y


# --------------------------------------------------------------------------- workers


def run_keraseq(shape, epochs, fused=True):
    import keras

    from keraseq import Estimator

    sys.path.insert(0, os.path.dirname(HERE))
    from epoch_timer import EpochTimer

    import keraseq

    F, units, T, batch, window, N = shape
    x, y = make_data(shape)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((None, F)),
            keras.layers.LSTM(units, return_sequences=True),
            keras.layers.Dense(1),
        ]
    )
    opt = keras.optimizers.AdamW(
        learning_rate=LR, beta_1=BETA1, beta_2=BETA2, epsilon=EPS, weight_decay=WD
    )
    timer = EpochTimer()
    extra = {} if fused else {"fused_rnn": False}  # keyword left out: a keraseq without it runs
    est = Estimator(
        model,
        "mse",
        opt,
        epochs=epochs,
        batch_size=batch,
        seq_len=window,
        shuffle=False,
        verbose=0,
        **extra,
    )
    est.fit(x, y, callbacks=[timer])
    hist = est.history_ if hasattr(est, "history_") else None
    loss = None
    if hist is not None:
        h = getattr(hist, "history", hist)
        if isinstance(h, dict) and h.get("loss"):
            loss = float(h["loss"][-1])
    res = {
        "times": timer.times,
        "loss": loss,
        "backend": keras.backend.backend(),
        "keraseq": os.path.dirname(keraseq.__file__),
        "fused": fused,
    }
    if res["backend"] == "jax":
        import jax

        res["devices"] = len(jax.devices())
    return res


def run_torch(shape, epochs, threads=None, max_epoch_s=None, device="cpu"):
    import torch
    from torch import nn

    if threads:
        torch.set_num_threads(threads)
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("torch sees no CUDA device")
    F, units, T, batch, window, N = shape
    x, y = make_data(shape)
    X, Y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    torch.manual_seed(0)
    lstm = nn.LSTM(F, units, batch_first=True).to(device)
    dense = nn.Linear(units, 1).to(device)
    params = list(lstm.parameters()) + list(dense.parameters())
    opt = torch.optim.AdamW(params, lr=LR, betas=(BETA1, BETA2), eps=EPS, weight_decay=WD)
    loss_fn = nn.MSELoss()
    times, loss, scaled = [], None, []
    for _ in range(epochs):
        t0 = time.perf_counter()
        total, count, done = torch.zeros((), device=device), 0, 0
        for b in range(0, N, batch):
            if max_epoch_s and time.perf_counter() - t0 > max_epoch_s:
                break  # pathologically slow (see --max-epoch-s): extrapolate from `done` rows
            xb, yb = X[b : b + batch], Y[b : b + batch]
            h = torch.zeros(1, xb.shape[0], units, device=device)
            c = torch.zeros(1, xb.shape[0], units, device=device)
            for s in range(0, T, window):
                out, (h, c) = lstm(xb[:, s : s + window], (h, c))
                lw = loss_fn(dense(out), yb[:, s : s + window])
                opt.zero_grad(set_to_none=True)
                lw.backward()
                opt.step()
                h, c = h.detach(), c.detach()
                total += lw.detach()
                count += 1
            done += xb.shape[0]
        loss = float(total) / count  # waits for the device
        times.append((time.perf_counter() - t0) * N / done)
        scaled.append(done < N)
    return {
        "times": times,
        "loss": loss,
        "threads": torch.get_num_threads(),
        "extrapolated": any(scaled),
        "device": device,
    }


def run_jax(shape, epochs):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    F, units, T, batch, window, N = shape
    x, y = make_data(shape)
    n_win = T // window

    # Keras's initializers: glorot-uniform kernels, orthogonal recurrent kernel, unit forget bias.
    rng = np.random.default_rng(0)

    def glorot(fan_in, fan_out):
        lim = np.sqrt(6 / (fan_in + fan_out))
        return rng.uniform(-lim, lim, (fan_in, fan_out)).astype("float32")

    q, r = np.linalg.qr(rng.normal(size=(4 * units, units)))
    rec = (q * np.sign(np.diag(r))).T.astype("float32")  # (units, 4 units), orthonormal rows
    bias = np.zeros(4 * units, "float32")
    bias[units : 2 * units] = 1.0
    params = {
        "k": glorot(F, 4 * units),
        "r": rec,
        "b": bias,
        "dk": glorot(units, 1),
        "db": np.zeros(1, "float32"),
    }
    params = jax.tree_util.tree_map(jnp.asarray, params)
    opt_state = (
        jax.tree_util.tree_map(jnp.zeros_like, params),  # m
        jax.tree_util.tree_map(jnp.zeros_like, params),  # v (own buffers: donated)
        jnp.zeros((), "float32"),
    )  # step count

    def forward(p, h, c, xw):  # xw: (window, B, F), time-major
        # Keras's cell, step by step. Projecting the whole window's inputs in one matmul before
        # the scan measured 10-30% slower on XLA:CPU (realistic workload), so it is not done.
        def cell(hc, xt):
            h, c = hc
            z = xt @ p["k"] + h @ p["r"] + p["b"]
            i, f, g, o = jnp.split(z, 4, axis=-1)  # Keras's gate order
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        (h, c), hs = lax.scan(cell, (h, c), xw)
        return hs @ p["dk"] + p["db"], h, c

    def window_loss(p, h, c, xw, yw):
        out, h, c = forward(p, h, c, xw)
        return jnp.mean((out - yw) ** 2), (h, c)

    def adamw(p, g, state):  # keras.optimizers.AdamW.update_step, weight decay first
        m, v, t = state
        t = t + 1
        lr_t = LR * jnp.sqrt(1 - BETA2**t) / (1 - BETA1**t)
        m = jax.tree_util.tree_map(lambda m, g: m + (g - m) * (1 - BETA1), m, g)
        v = jax.tree_util.tree_map(lambda v, g: v + (g * g - v) * (1 - BETA2), v, g)
        p = jax.tree_util.tree_map(
            lambda p, m, v: p - p * (WD * LR) - lr_t * m / (jnp.sqrt(v) + EPS), p, m, v
        )
        return p, (m, v, t)

    grad_fn = jax.value_and_grad(window_loss, has_aux=True)

    # one call per minibatch: every window's forward, backward and update
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def minibatch(p, state, xb, yb):
        B = xb.shape[0]
        # (B, T, F) -> (n_win, window, B, F): windows, then time-major steps
        xs = xb.reshape(B, n_win, window, -1).transpose(1, 2, 0, 3)
        ys = yb.reshape(B, n_win, window, -1).transpose(1, 2, 0, 3)

        def step(carry, xy):
            p, state, h, c = carry
            (loss, (h, c)), g = grad_fn(p, h, c, *xy)
            p, state = adamw(p, g, state)
            return (p, state, lax.stop_gradient(h), lax.stop_gradient(c)), loss

        h0 = jnp.zeros((B, units), xb.dtype)
        (p, state, _, _), losses = lax.scan(step, (p, state, h0, h0), (xs, ys))
        return p, state, jnp.sum(losses)

    batches = [
        (jnp.asarray(x[b : b + batch]), jnp.asarray(y[b : b + batch])) for b in range(0, N, batch)
    ]
    times, loss = [], None
    for _ in range(epochs):
        t0 = time.perf_counter()
        total = 0.0
        for xb, yb in batches:
            params, opt_state, lsum = minibatch(params, opt_state, xb, yb)
            total = total + lsum
        total = float(total)  # waits for the last minibatch
        times.append(time.perf_counter() - t0)
        loss = total / (len(batches) * n_win)
    return {"times": times, "loss": loss, "devices": str(jax.devices())}


def worker(args):
    shape = (QUICK if args.quick else WORKLOADS)[args.workload]
    if args.worker.startswith("keraseq"):
        res = run_keraseq(shape, args.epochs, fused=not args.worker.endswith("-unfused"))
    elif args.worker == "jax":
        res = run_jax(shape, args.epochs)
    elif args.worker == "torch":
        res = run_torch(shape, args.epochs, max_epoch_s=args.max_epoch_s)
    elif args.worker == "torch-1t":
        res = run_torch(shape, args.epochs, threads=1, max_epoch_s=args.max_epoch_s)
    elif args.worker == "torch-cuda":
        res = run_torch(shape, args.epochs, max_epoch_s=args.max_epoch_s, device="cuda")
    else:
        raise SystemExit(f"unknown system {args.worker}")
    res["affinity"] = len(os.sched_getaffinity(0))
    print("RESULT " + json.dumps(res), flush=True)


# --------------------------------------------------------------------------- parent


def launch(system, workload, args):
    cmd = [
        sys.executable,
        HERE,
        "--worker",
        system,
        "--workload",
        workload,
        "--epochs",
        str(args.epochs),
        "--max-epoch-s",
        str(args.max_epoch_s),
    ]
    cmd += ["--quick"] if args.quick else []
    if args.cores:
        cmd = ["taskset", "-c", ",".join(str(i) for i in range(args.cores))] + cmd
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if backend_of(system):
        env["KERAS_BACKEND"] = backend_of(system)
    if system.endswith("-1dev"):
        env["KERASEQ_CPU_DEVICES"] = "1"  # keraseq[jax] on one JAX CPU device
    if args.keraseq_src:
        env["PYTHONPATH"] = os.pathsep.join(
            [os.path.abspath(args.keraseq_src)] + [p for p in [env.get("PYTHONPATH")] if p]
        )
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout} s"}
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    lines = [ln.strip() for ln in (out.stderr or out.stdout).splitlines() if ln.strip()]
    msg = lines[-1] if lines else f"exit status {out.returncode}"
    return {"error": msg if len(msg) <= 120 else msg[:117] + "..."}


def summarize(runs):
    """Median and fastest steady epoch (pooled), median first-epoch extra, last loss."""
    steady = [t for r in runs for t in r["times"][1:]]
    if not steady:
        return None
    first = [r["times"][0] - statistics.median(r["times"][1:]) for r in runs if len(r["times"]) > 1]
    return {
        "median": statistics.median(steady),
        "min": min(steady),
        "first_extra": statistics.median(first),
        "loss": runs[-1].get("loss"),
        "extrapolated": any(r.get("extrapolated") for r in runs),
        "threads": runs[-1].get("threads"),
        "rounds": [statistics.median(r["times"][1:]) for r in runs if len(r["times"]) > 1],
    }


def report(workload, shape, systems, results, errors, args, peak=None):
    F, units, T, batch, window, N = shape
    n_win = (N // batch) * (T // window)
    cores = f"taskset -c 0-{args.cores - 1}" if args.cores else f"all {os.cpu_count()} cores"
    print(
        f"\n{workload}: LSTM({units})+Dense(1), F={F}, T={T}, batch {batch}, window {window}, "
        f"N={N} ({n_win} windows/epoch); {args.rounds} round(s) x {args.epochs - 1} steady "
        f"epoch(s); {cores}"
    )
    stats = {s: summarize(results[s]) if results[s] else None for s in systems}
    kq = [s for s in systems if s in KQ and stats[s]]
    head = (
        f"{'system':28s} {'s/epoch':>9s} {'fastest':>9s} {'ms/window':>9s} "
        f"{'1st-epoch extra':>15s} {'loss':>7s} " + " ".join(f"{'vs ' + KQ[k]:>13s}" for k in kq)
    )
    print(head)
    print("-" * len(head))
    for s in systems:
        st = stats[s]
        if st is None:
            reason = errors[s][-1] if errors[s] else "no result"
            print(f"{LABELS[s]:28s} not available ({reason})")
            continue
        loss = f"{st['loss']:7.4f}" if st["loss"] is not None else f"{'-':>7s}"
        ratios = " ".join(f"{st['median'] / stats[k]['median']:12.2f}x" for k in kq)
        mark = "*" if st["extrapolated"] else " "
        label = LABELS[s] if s != "torch" else f"torch ({st['threads']} threads)"
        print(
            f"{label:28s} {st['median']:8.3f}{mark} {st['min']:9.3f} "
            f"{1000 * st['median'] / n_win:9.3f} {st['first_extra']:15.2f} {loss} {ratios}"
        )
    print(
        "(vs kq[..] = this system's median s/epoch / keraseq[tensorflow]'s or [jax]'s: "
        "> 1 = keraseq faster; loss = mean window loss of the last epoch; "
        "* = epochs cut at --max-epoch-s and extrapolated)"
    )
    for line in ratio_lines(stats, systems):
        print(line)
    if peak and workload == "realistic":
        gflop = epoch_flops(shape) / 1e9
        print(
            f"\nfraction of FP32 peak ({gflop:.2f} GFLOP of LSTM gate matmuls per epoch, "
            f"forward + backward; measured peak {peak:.1f} GFLOP/s):"
        )
        print(f"{'system':28s} {'GFLOP/s':>9s} {'% of peak':>10s}")
        for s in systems:
            if stats[s]:
                label = LABELS[s] if s != "torch" else f"torch ({stats[s]['threads']} threads)"
                rate = gflop / stats[s]["median"]
                print(f"{label:28s} {rate:9.2f} {100 * rate / peak:9.1f}%")
    return stats


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", default="seed,realistic")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=4, help="per run; the first is the compile epoch")
    ap.add_argument("--cores", type=int, default=0, help="run every worker under taskset -c 0..N-1")
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: small N and T, 1 round, 2 epochs"
    )
    ap.add_argument(
        "--keraseq-src",
        default=None,
        help="directory put first on PYTHONPATH of the keraseq workers",
    )
    ap.add_argument("--timeout", type=int, default=600, help="seconds per worker")
    ap.add_argument(
        "--max-epoch-s",
        type=float,
        default=10.0,
        help="a torch epoch stops after the minibatch that passes this many seconds "
        "and its time is extrapolated to all N rows (marked *)",
    )
    ap.add_argument("--json", default=None, help="also write the raw results to this file")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workload", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.quick:
        args.rounds, args.epochs = 1, 2
    systems = [s for s in args.systems.split(",") if s]
    if args.cores == 1 and "torch-1t" in systems:
        systems.remove("torch-1t")  # the same as torch on one core
    table = QUICK if args.quick else WORKLOADS
    raw = {}
    t_start = time.perf_counter()
    peak = None
    if "realistic" in args.workloads.split(","):
        if args.cores:  # the peak on the cores the workers get (inherited; they use taskset too)
            os.sched_setaffinity(0, range(args.cores))
        peak = measure_peak()
        print(
            f"measured FP32 peak: {peak:.1f} GFLOP/s (best of 5 NumPy float32 2048x2048 matmuls, "
            f"{len(os.sched_getaffinity(0))} cores)",
            flush=True,
        )
        raw["peak_gflops"] = peak
    for workload in args.workloads.split(","):
        results = {s: [] for s in systems}
        errors = {s: [] for s in systems}
        for rnd in range(args.rounds):
            order = systems[rnd % len(systems) :] + systems[: rnd % len(systems)]
            for s in order:
                if errors[s] and not results[s]:
                    continue  # failed before: do not pay for it again
                res = launch(s, workload, args)
                if "error" in res:
                    errors[s].append(res["error"])
                elif backend_of(s) and res.get("backend") != backend_of(s):
                    errors[s].append(f"ran under backend {res.get('backend')}")
                else:
                    results[s].append(res)
                print(
                    f"  [{workload} round {rnd + 1}] {LABELS[s]}: "
                    + (
                        ", ".join(f"{t:.3f}" for t in res["times"]) + " s"
                        if "times" in res
                        else res.get("error", "")
                    )
                    + (
                        f" ({res['devices']} JAX device(s))"
                        if isinstance(res.get("devices"), int)
                        else ""
                    ),
                    flush=True,
                )
        stats = report(workload, table[workload], systems, results, errors, args, peak)
        raw[workload] = {"results": results, "errors": errors, "stats": stats}
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)


if __name__ == "__main__":
    main()
