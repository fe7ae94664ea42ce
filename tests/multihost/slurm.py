"""A real Slurm on the simulated hosts of ``cluster.py``, for ``tests/test_slurm.py``.

``SlurmCluster(c)`` starts, for a :class:`cluster.SimulatedCluster` ``c``: one ``munged`` (its
own key and socket in the cluster's temporary folder: the machine's munge is not touched),
``slurmctld`` inside host0 and one ``slurmd`` inside every host (``-N hostK``: each host is a
node, reached at its address on the link), all from the distribution's packages (``slurm-wlm``,
``munge``), configured by a ``slurm.conf`` written here (``SLURM_CONF`` points the clients at
it). ``run(cmd)`` runs a Slurm client (``sbatch``, ``squeue``, ``sacct``-less ``scontrol``)
inside host0. The daemons run in the foreground (``-D``) as children of this process, each in
a process group of its own, and carry the cluster's ``KQMH_OWNER`` mark; ``close()`` kills them
(and every job process: they run inside the hosts, which ``SimulatedCluster.close`` empties).

Needs root and the packages; :func:`unavailable` says why not.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

PACKAGES = {
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sbatch": "slurm-client",
    "munged": "munge",
    "mungekey": "munge",
}


def unavailable() -> str | None:
    """Why a Slurm cannot be started here (``None`` when it can)."""
    missing = sorted(
        {
            pkg
            for tool, pkg in PACKAGES.items()
            if shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is None
        }
    )
    if missing:
        return (
            "Slurm tests need the distribution's packages "
            + ", ".join(missing)
            + " (apt-get install slurm-wlm munge; .ci/run installs them)"
        )
    return None


CONF = """\
ClusterName=kqmh
SlurmctldHost={ctl}({ctl_addr})
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock},cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation={tmp}/ctld
SlurmdSpoolDir={tmp}/slurmd-%n
SlurmctldPidFile={tmp}/slurmctld.pid
SlurmdPidFile={tmp}/slurmd-%n.pid
SlurmctldLogFile={tmp}/slurmctld.log
SlurmdLogFile={tmp}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
KillWait=2
InactiveLimit=0
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
{nodes}
PartitionName=sim Nodes={names} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


class SlurmCluster:
    def __init__(self, sim, cpus: int = 2):
        why = unavailable()
        if why:
            raise RuntimeError(why)
        self.sim, self.tmp = sim, sim.tmp / "slurm"
        self.tmp.mkdir()
        (self.tmp / "ctld").mkdir()
        self.procs: list[subprocess.Popen] = []
        self.conf = self.tmp / "slurm.conf"
        self.sock = self.tmp / "munge.socket"
        nodes = "\n".join(
            f"NodeName={h.name} NodeAddr={h.address} CPUs={cpus} RealMemory=1000 State=UNKNOWN"
            for h in sim.hosts
        )
        self.conf.write_text(
            CONF.format(
                ctl=sim.hosts[0].name,
                ctl_addr=sim.hosts[0].address,
                sock=self.sock,
                tmp=self.tmp,
                nodes=nodes,
                names=",".join(h.name for h in sim.hosts),
            )
        )
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def env(self, **extra) -> dict[str, str]:
        return self.sim.env(SLURM_CONF=str(self.conf), **extra)

    def _daemon(self, host, argv, name):
        cmd = (host.enter("/") if host is not None else []) + argv
        # The daemon writes to its own copy of the file descriptor: ours closes after the start.
        with open(self.tmp / f"{name}.out", "w") as log:
            proc = subprocess.Popen(
                cmd,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def _start(self):
        key = self.tmp / "munge.key"
        subprocess.run(
            ["mungekey", "--create", "--keyfile", str(key), "--force"],
            check=True,
            capture_output=True,
        )
        key.chmod(0o400)
        self._daemon(
            None,
            [
                "munged",
                "--foreground",
                "--force",
                f"--socket={self.sock}",
                f"--key-file={key}",
                f"--pid-file={self.tmp}/munged.pid",
                f"--log-file={self.tmp}/munged.log",
                f"--seed-file={self.tmp}/munged.seed",
            ],
            "munged",
        )
        self._wait(lambda: self.sock.exists(), "munged did not create its socket", 20)
        self._daemon(
            self.sim.hosts[0], ["slurmctld", "-D", "-i", "-f", str(self.conf)], "slurmctld"
        )
        for h in self.sim.hosts:
            self._daemon(
                h, ["slurmd", "-D", "-N", h.name, "-f", str(self.conf)], f"slurmd-{h.name}"
            )
        self._wait(self._nodes_idle, "the nodes did not become idle", 60)

    def _nodes_idle(self) -> bool:
        out = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False).stdout.split()
        states = dict(zip(out[::2], out[1::2]))
        return all(states.get(h.name) == "idle" for h in self.sim.hosts)

    def _wait(self, ready, what, timeout):
        deadline = time.time() + timeout
        while not ready():
            dead = [p for p in self.procs if p.poll() is not None]
            if dead or time.time() > deadline:
                raise RuntimeError(f"{what}:\n{self.logs()}")
            time.sleep(0.2)

    def logs(self) -> str:
        parts = []
        for f in sorted(self.tmp.glob("*.out")) + sorted(self.tmp.glob("*.log")):
            text = f.read_text(errors="replace")[-2000:]
            parts.append(f"--- {f.name}\n{text}")
        return "\n".join(parts)

    def run(self, argv, check=True, timeout=60, cwd=None) -> subprocess.CompletedProcess:
        """A Slurm client command (``sbatch ...``) run inside host0."""
        proc = subprocess.run(
            self.sim.hosts[0].enter(cwd) + list(map(str, argv)),
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{argv}: {proc.stderr}\n{self.logs()}")
        return proc

    def job(self, job_id) -> dict[str, str]:
        """``scontrol show job``'s fields (JobState, ExitCode, Restarts, ...)."""
        out = self.run(["scontrol", "show", "job", "-o", job_id], check=False).stdout
        return dict(f.split("=", 1) for f in out.split() if "=" in f)

    def wait_job(
        self,
        job_id,
        timeout,
        until=(
            "COMPLETED",
            "FAILED",
            "CANCELLED",
            "TIMEOUT",
            "NODE_FAIL",
            "OUT_OF_MEMORY",
            "PREEMPTED",
        ),
    ):
        deadline = time.time() + timeout
        while time.time() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in until:
                return info
            time.sleep(0.5)
        raise AssertionError(
            f"job {job_id} not done after {timeout} s: {self.job(job_id)}\n{self.logs()}"
        )

    def close(self):
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.sim.kill_jobs()  # slurmstepd and job processes inside the hosts

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
