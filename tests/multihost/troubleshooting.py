"""Reproduce the failures of docs/guide/cluster.md's troubleshooting list on simulated hosts (root).

    .venv/bin/python tests/multihost/troubleshooting.py [CASE ...]

Cases (all by default; about a minute and a half in all):
  same-hostname   two hosts that keep the machine's hostname: Open MPI merges them into one node
  oversubscribe   --oversubscribe with --host host0:1,host1:1 puts both ranks on host0 (with the
                  default binding)
  docker0         the same address (172.17.0.1/16) on a second interface of every host, no
                  btl/oob_tcp_if_include: the job hangs; with them it runs
  busy-poll       two busy-polling ranks bound to one core (each host's rank on this machine's
                  core 0): milliseconds per small Allreduce
  binding         the default binding: one core per rank
  ssh-agent       OMPI_MCA_plm_ssh_agent does not reach the launcher; PRTE_MCA_ does
Each prints what happened; every case cleans up after itself.
"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from multihost import cluster

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.path.join(HERE, "mpi", "multihost_probe.py")
ALLREDUCE = (
    "import time, numpy as np; from mpi4py import MPI; c = MPI.COMM_WORLD; "
    "b = np.ones(1, np.float32); o = np.empty_like(b)\n"
    "for _ in range(20): c.Allreduce(b, o)\n"
    "t = time.perf_counter()\nfor _ in range(200): c.Allreduce(b, o)\n"
    "dt = (time.perf_counter() - t) / 200\n"
    "c.rank or print(f'4-byte Allreduce: {dt * 1e6:.1f} us', flush=True)"
)


def attempt(c, per_host, argv, timeout=30, **flags):
    """Run; return (rc or 'hang', stdout, stderr)."""
    extra = flags.pop("extra", ())
    env = flags.pop("env", None) or c.env()
    proc = subprocess.Popen(
        c.mpirun_command(per_host, argv, extra, **flags),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        c.kill_jobs()
        out, err = proc.communicate()
        return f"hang (killed after {timeout} s)", out, err


def lines(text, *words, n=4):
    keep = [ln.strip() for ln in text.splitlines() if any(w in ln for w in words)]
    return "\n      ".join(keep[:n]) or "-"


def probe_result(c):
    path = c.tmp / "p.json"
    if not path.exists():
        return "no report"
    ranks = json.loads(path.read_text())
    path.unlink()
    return ", ".join(
        f"rank {r['rank']} on {r['hostname']} (node size {r['node_size']}, cpus {r['cpus']})"
        for r in ranks
    )


def same_hostname():
    print("\n[same-hostname] hosts keep the machine's hostname (private /dev/shm each)")
    with cluster.SimulatedCluster(2, own_hostname=False) as c:
        code = (
            "import numpy as np; from mpi4py import MPI; c = MPI.COMM_WORLD; "
            "b = np.ones(4, np.float32); o = np.empty_like(b); c.Allreduce(b, o); "
            "print('rank', c.rank, 'sum', o[0], flush=True)"
        )
        for bind_none in (False, True):
            rc, out, err = attempt(
                c,
                1,
                [sys.executable, "-c", code],
                timeout=20,
                bind_none=bind_none,
                yield_when_idle=bind_none,
            )
            print(
                f"  1+1 ranks, one Allreduce of ones (sum 2 expected), "
                f"{'as in the tests' if bind_none else 'plain mpirun'}: {rc}\n      "
                f"{lines(out, 'sum')}\n      "
                f"{lines(err, 'Signal:', 'mca_coll_han', 'exited on')}"
            )
        rc, out, err = attempt(c, 2, [sys.executable, "-c", code], timeout=20)
        print(f"  2+2 ranks, one Allreduce: {rc}")
        split = (
            "from mpi4py import MPI; c = MPI.COMM_WORLD; "
            "n = c.Split_type(MPI.COMM_TYPE_SHARED); print('rank', c.rank, 'node size', "
            "n.Get_size(), flush=True)"
        )
        rc, out, err = attempt(
            c, 1, [sys.executable, "-c", split], timeout=20, extra=["--mca", "coll", "^han"]
        )
        print(
            f"  1+1 ranks, Split_type(COMM_TYPE_SHARED) without han: {rc}\n      "
            f"{lines(out, 'node size')}\n      {lines(err, 'MPI_ERR')}"
        )
    with cluster.SimulatedCluster(2) as c:
        rc, out, err = attempt(c, 1, [sys.executable, PROBE, c.tmp / "p.json"])
        print(f"  the same with a hostname per host: rc {rc}: {probe_result(c)}")


def oversubscribe():
    print("\n[oversubscribe] --host host0:1,host1:1 -np 2")
    with cluster.SimulatedCluster(2) as c:
        for name, extra, bind_none in (
            ("--oversubscribe", ["--oversubscribe"], False),
            ("without it", [], False),
            ("--oversubscribe --bind-to none", ["--oversubscribe"], True),
        ):
            rc, _, _ = attempt(
                c, 1, [sys.executable, PROBE, c.tmp / "p.json"], extra=extra, bind_none=bind_none
            )
            print(f"  {name:<32} rc {rc}: {probe_result(c)}")


def docker0():
    print("\n[docker0] every host also has docker0 = 172.17.0.1/16")
    with cluster.SimulatedCluster(2) as c:
        for h in c.hosts:  # a veth pair inside the host stands in for the docker bridge
            for cmd in (
                ["link", "add", "docker0", "type", "veth", "peer", "name", "vethd0"],
                ["addr", "add", "172.17.0.1/16", "dev", "docker0"],
                ["link", "set", "docker0", "up"],
                ["link", "set", "vethd0", "up"],
            ):
                subprocess.run(h.enter("/") + ["ip", *cmd], check=True)
        for interface in (False, True):
            t = time.time()
            rc, _, err = attempt(
                c, 1, [sys.executable, PROBE, c.tmp / "p.json"], timeout=30, interface=interface
            )
            name = "with if_include" if interface else "without if_include"
            print(
                f"  {name:<20} {rc} after {time.time() - t:.1f} s\n      "
                f"{lines(err, 'accepted a TCP connection', 'cannot find', n=2)}"
            )


def busy_poll():
    print("\n[busy-poll] 1+1 ranks, 4-byte Allreduce; the hosts share this machine's cores")
    with cluster.SimulatedCluster(2) as c:
        for bind_none in (False, True):
            for yield_when_idle in (False, True):
                rc, out, _ = attempt(
                    c,
                    1,
                    [sys.executable, "-c", ALLREDUCE],
                    yield_when_idle=yield_when_idle,
                    bind_none=bind_none,
                )
                name = ("--bind-to none" if bind_none else "default binding (both on core 0)") + (
                    ", mpi_yield_when_idle 1" if yield_when_idle else ", busy-polling"
                )
                print(f"  {name:<54} {lines(out, 'Allreduce')}")


def binding():
    print("\n[binding] CPUs each rank may use")
    with cluster.SimulatedCluster(2) as c:
        for name, flags, extra in (
            ("default binding", {"bind_none": False}, []),
            ("--map-by ppr:1:node:pe=2", {"bind_none": False}, ["--map-by", "ppr:1:node:pe=2"]),
            ("--bind-to none", {}, []),
        ):
            rc, _, _ = attempt(
                c, 1, [sys.executable, PROBE, c.tmp / "p.json"], extra=extra, **flags
            )
            print(f"  {name:<26} {probe_result(c)}")


def ssh_agent():
    print("\n[ssh-agent] the launcher's ssh command set through the environment")
    with cluster.SimulatedCluster(2) as c:
        hosts = ["--host", "host0:1,host1:1", "-np", "2"]
        for var in ("OMPI_MCA_plm_ssh_agent", "PRTE_MCA_plm_ssh_agent"):
            env = c.env(**{var: str(c.agent)})
            proc = subprocess.run(
                c.hosts[0].enter() + [cluster.MPIRUN, *hosts, "hostname"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            print(
                f"  {var:<24} rc {proc.returncode}: {' '.join(proc.stdout.split()) or '-'}"
                f"\n      {lines(proc.stderr, 'ssh:', 'failed to report', n=2)}"
            )


CASES = {
    "same-hostname": same_hostname,
    "oversubscribe": oversubscribe,
    "docker0": docker0,
    "busy-poll": busy_poll,
    "binding": binding,
    "ssh-agent": ssh_agent,
}

if __name__ == "__main__":
    why = cluster.unavailable()
    if why:
        raise SystemExit(why)
    cluster.remove_stale()
    for name in sys.argv[1:] or CASES:
        CASES[name]()
