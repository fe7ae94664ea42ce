"""A real Slurm on the simulated hosts (issue 24): the cluster guide's job script, submitted.

``slurmctld`` and one ``slurmd`` per simulated host (``tests/multihost/slurm.py``, the
distribution's ``slurm-wlm`` and ``munge``), two hosts joined by a veth link
(``tests/multihost/cluster.py``). The batch script is the one in ``docs/guide/cluster.md``
(section 5, read from the file; the ``--gpus-per-node`` line dropped as it says for CPU
nodes), submitted
with ``sbatch --nodes=2 --ntasks-per-node=1`` from host0: its ``mpirun`` starts the second
node's daemon through ``srun`` inside the allocation. Checked: 2 ranks on 2 nodes equal one
process (1e-5) with bit-identical weights; a rank killed on one node ends the job (FAILED, no
hang, nothing of the job left on either node); a job requeued mid-epoch resumes from
``BackupAndRestore`` to the uninterrupted weights, bit for bit.

Needs root, namespaces and the packages (``.ci/run`` installs them); skipped elsewhere with
the reason (in CI, ``KERASEQ_REQUIRE_SLURM=1``: failed). ``pytest -m slurm`` runs these alone.
"""

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from multihost import cluster, slurm

HERE = Path(__file__).parent
FIT = HERE / "mpi" / "multihost_fit.py"
GUIDE = HERE.parent / "docs" / "guide" / "cluster.md"
WHY_NOT = cluster.unavailable() or slurm.unavailable()
# CI (.ci/run) installs the packages and sets KERASEQ_REQUIRE_SLURM=1: there they fail, not skip.
REQUIRED = os.environ.get("KERASEQ_REQUIRE_SLURM") == "1"
pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.mpi,
    pytest.mark.skipif(WHY_NOT is not None and not REQUIRED, reason=str(WHY_NOT)),
]


def guide_script() -> str:
    """The batch script of docs/guide/cluster.md's Slurm section, for CPU-only nodes."""
    text = GUIDE.read_text()
    section = text[text.index("## 5. Slurm") :]
    block = re.search(r"```bash\n(#!/bin/bash\n.*?)```", section, re.S).group(1)
    return "".join(line + "\n" for line in block.splitlines() if "--gpus-per-node" not in line)


@pytest.fixture(scope="module")
def sl(tmp_path_factory):
    """Two simulated hosts with a Slurm on them; everything ends with the module."""
    if WHY_NOT is not None:
        pytest.fail(f"KERASEQ_REQUIRE_SLURM=1 but {WHY_NOT}")
    cluster.remove_stale()
    with cluster.SimulatedCluster(2) as c, slurm.SlurmCluster(c) as s:
        s.folder = tmp_path_factory.mktemp("slurm_jobs")
        (s.folder / "train.sbatch").write_text(guide_script())
        yield s
    assert not c.leftovers(), c.leftovers()


def submit(sl, *args, options=()):
    env_options = f"--export=ALL,VENV={Path(sys.executable).parent.parent},NET={cluster.SUBNET}"
    proc = sl.run(
        [
            "sbatch",
            "--parsable",
            "--nodes=2",
            "--ntasks-per-node=1",
            "--cpus-per-task=2",
            env_options,
            *options,
            "train.sbatch",
            str(FIT),
            *map(str, args),
        ],
        cwd=sl.folder,
    )
    return proc.stdout.strip().split(";")[0]


def output(sl, job_id) -> str:
    path = sl.folder / f"keraseq-{job_id}.out"
    return path.read_text(errors="replace") if path.exists() else ""


def job_processes(sl):
    """Processes of a job (ranks, Open MPI daemons, step daemons) still on any node."""
    found = []
    for h in sl.sim.hosts:
        for p in h.pids():
            cmd = (cluster._read(f"/proc/{p}/cmdline", "rb") or b"").replace(b"\0", b" ")
            if any(k in cmd for k in (str(FIT).encode(), b"prted", b"slurmstepd", b"mpirun")):
                found.append((h.name, p, cmd.decode(errors="replace")[:120]))
    return found


def load(folder, rank):
    return (
        np.load(folder / f"weights_{rank}.npy"),
        np.load(folder / f"optimizer_{rank}.npy"),
        json.loads((folder / f"report_{rank}.json").read_text()),
    )


@pytest.fixture(scope="module")
def reference(sl):
    out = sl.folder / "reference"
    t0 = time.time()
    job = submit(sl, out, out / "backup", "--reference")
    info = sl.wait_job(job, 300)
    assert info["JobState"] == "COMPLETED", (info, output(sl, job)[-3000:])
    return out, time.time() - t0


def test_guide_script_on_two_nodes_equals_one_process(sl, reference):
    folder, seconds = reference
    r = json.loads((folder / "reference.json").read_text())
    assert r["max_diff"] < 1e-5, r
    assert r["identical_across_ranks"], r
    (w0, o0, rep0), (w1, o1, rep1) = load(folder, 0), load(folder, 1)
    assert np.array_equal(w0, w1) and np.array_equal(o0, o1)  # bit-identical on both nodes
    assert (rep0["hostname"], rep1["hostname"]) == ("host0", "host1")  # one rank per node
    assert rep0["node_size"] == rep1["node_size"] == 1
    assert r["predict_max_diff"] < 1e-5, r
    assert not job_processes(sl)


@pytest.fixture(scope="module")
def paused(sl):
    """A job paused mid-epoch 1 (the backup of epoch 0 written); returns (job, out, backup)."""

    def start(name):
        out = sl.folder / name
        job = submit(sl, out, out / "backup", "--pause-at", 1, options=["--requeue"])
        deadline = time.time() + 240
        while "PAUSED 1" not in output(sl, job):
            state = sl.job(job).get("JobState")
            assert state in ("PENDING", "RUNNING", "CONFIGURING"), (state, output(sl, job))
            assert time.time() < deadline, f"no PAUSED within 240 s: {output(sl, job)}"
            time.sleep(0.2)
        return job, out

    return start


def test_a_rank_killed_on_one_node_fails_the_job_and_ends_the_other(sl, paused):
    job, out = paused("killed")
    ranks = [
        p
        for p in sl.sim.hosts[1].pids()
        if str(FIT).encode() in (cluster._read(f"/proc/{p}/cmdline", "rb") or b"")
    ]
    assert len(ranks) == 1, ranks  # rank 1, the only rank on host1
    t0 = time.time()
    os.kill(ranks[0], signal.SIGKILL)
    info = sl.wait_job(job, 60)
    elapsed = time.time() - t0
    print(f"job {job} {info['JobState']} {elapsed:.1f} s after the kill")
    assert info["JobState"] == "FAILED", info  # (wait_job's 60 s is the hang guard)
    deadline = time.time() + 15  # the step daemons may take a moment after the batch script
    while job_processes(sl) and time.time() < deadline:
        time.sleep(0.2)
    assert not job_processes(sl), job_processes(sl)  # rank 0 on host0 and the daemons too
    text = " ".join(output(sl, job).split())
    assert f"process rank 1 with PID {ranks[0]} on node host1 exited on signal 9" in text, text
    assert "FINISHED" not in text


def test_a_requeued_job_resumes_to_the_uninterrupted_weights(sl, paused, reference):
    job, out = paused("requeued")
    with h5py.File(out / "backup" / "latest.weights.h5", "r") as f:
        assert json.loads(f.attrs["keraseq_training_metadata"])["epoch"] == 1
    sl.run(["scontrol", "requeue", job])
    info = sl.wait_job(job, 300, until=("COMPLETED", "FAILED", "CANCELLED"))
    assert info["JobState"] == "COMPLETED", (info, output(sl, job)[-3000:])
    assert info["Restarts"] == "1", info
    print(
        f"job {job}: requeued, then ran again from {info.get('StartTime')} to {info.get('EndTime')}"
    )
    w_ref, opt_ref, ref = load(reference[0], 0)
    for rank in (0, 1):
        w, opt, rep = load(out, rank)
        assert np.array_equal(w, w_ref), (rank, np.abs(w - w_ref).max())
        assert np.array_equal(opt, opt_ref), (rank, np.abs(opt - opt_ref).max())
        assert rep["history"]["loss"] == ref["history"]["loss"][1:]  # resumed at epoch 1
    assert not (out / "backup").exists()
    assert not job_processes(sl)
