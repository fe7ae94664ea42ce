"""Shared fixtures: quiet TensorFlow, small data, small models."""

import os
import subprocess
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
if os.environ["KERAS_BACKEND"] == "jax":
    # Many tests build the same small programs: XLA's compiled executables are kept for this
    # session (the children that mpirun starts inherit the folder) and reused by key (the
    # program's HLO), so each distinct program compiles once.
    import atexit
    import shutil
    import tempfile

    # (Made by the first process that loads this file: pytest-xdist's controller before it
    # starts its workers, which inherit it; removed by that process when it exits.)
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        _cache = tempfile.mkdtemp(prefix="keraseq-jax-cache-")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
        atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    # Every program, however short its compile (JAX's default keeps those of 1 s or more):
    # the weight initialisers and eager operations compile per shape in each process, and
    # the two workers share many shapes. Three files of the JAX pass over two workers, twice
    # in alternation (2026-12-07): 77 / 86 s with 0 against 86 / 89 s with 0.2, the CPU
    # time 0.93x / 0.95x.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    # Two JAX CPU devices even on a one-core machine, so the row-split program is tested.
    os.environ.setdefault("KERASEQ_CPU_DEVICES", "2")

import numpy as np
import pytest

# (Keras is imported where it is used: pytest-xdist's controller loads this file too, and
# importing Keras there cost ~10 s of CPU per pass of make test, before any test ran.)


@pytest.hookimpl(tryfirst=True)  # before pytest's -m selection reads the marks
def pytest_collection_modifyitems(config, items):
    """A behaviour test (``backend``) that `make test` runs on one backend only, `make test-full`
    on both (issue 22: make test in 10 minutes):

    - ``tf_in_full``: its TensorFlow run is ``slow``. These test what keraseq does above the
      compiled step (pipelines, chunks and callbacks, class weights, scikit-learn searches,
      ragged series): `make test` runs them on JAX, where they cost a fraction.
    - ``jax_in_full``: its JAX run is ``slow`` (`make test` runs it on TensorFlow).

    :func:`split_between_backends` marks the cases of one parametrized test alternately, so
    `make test` runs every case once and each backend half of them."""
    jax = os.environ["KERAS_BACKEND"] == "jax"
    for item in items:
        for mark, slow_on_jax in (("tf_in_full", False), ("jax_in_full", True)):
            if item.get_closest_marker(mark):
                item.add_marker(pytest.mark.backend)
                if jax == slow_on_jax:
                    item.add_marker(pytest.mark.slow)


def split_between_backends(cases: dict, full: tuple = ()) -> list:
    """The cases of a parametrized ``backend`` test, ``{id: value or tuple of values}``, marked
    alternately ``jax_in_full`` and ``tf_in_full``: `make test` runs the first, third, ... on
    TensorFlow and the others on JAX; `make test-full` runs them all on both. The ids in
    ``full`` run in `make test-full` only (on both backends), where `make test` has a sibling
    case on the other backend."""
    halves = (pytest.mark.jax_in_full, pytest.mark.tf_in_full)
    return [
        pytest.param(
            *(v if isinstance(v, tuple) else (v,)),
            id=k,
            marks=(pytest.mark.backend, pytest.mark.slow) if k in full else halves[i % 2],
        )
        for i, (k, v) in enumerate(cases.items())
    ]


def lstm_model(features=3, units=8, outputs=1, cell="LSTM", seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    layer = getattr(keras.layers, cell)
    return keras.Sequential(
        [
            keras.Input((None, features)),
            layer(units, return_sequences=True),
            keras.layers.Dense(outputs),
        ]
    )


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 25, 3)).astype("float32")
    y = np.cumsum(x[..., :1], axis=1) / 5.0
    return x, y.astype("float32")


def stateful_reference(model_fn, x, y, batch, seq_len, optimizer, loss, weights, epochs=1):
    """Keras's own truncated BPTT: a stateful copy trained window by window with
    ``train_on_batch``, its states reset at each minibatch, for ``epochs`` passes in order."""
    ref = model_fn(batch)
    ref.set_weights(weights)
    ref.compile(optimizer=optimizer, loss=loss)
    for _epoch in range(epochs):
        for lo in range(0, len(x), batch):
            for layer in ref.layers:
                if getattr(layer, "stateful", False):
                    layer.reset_states()
            for start in range(0, x.shape[1], seq_len):
                ref.train_on_batch(
                    x[lo : lo + batch, start : start + seq_len],
                    y[lo : lo + batch, start : start + seq_len],
                )
    return ref


#: Open MPI itself failing to start (seen with two ``mpirun`` jobs starting at the same moment on
#: one machine): no rank ran, so a test launches again; any other failure is the test's.
MPI_DID_NOT_START = "PMIx server's listener thread failed to start"
#: Launches of one ``mpirun`` command at most, when Open MPI itself does not start.
MPI_LAUNCHES = 3


def mpi_did_not_start(returncode: int, stderr: str) -> bool:
    """Whether an ``mpirun`` ended because Open MPI itself did not start (no rank ran)."""
    return returncode != 0 and MPI_DID_NOT_START in stderr


def run_mpi(cmd, **kwargs):
    """``subprocess.run(cmd, capture_output=True, text=True, **kwargs)`` of an ``mpirun``
    command, launched again while Open MPI itself did not start (:data:`MPI_LAUNCHES` at most);
    returns the last launch and its seconds."""
    for _launch in range(MPI_LAUNCHES):
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
        if not mpi_did_not_start(proc.returncode, proc.stderr):
            break
    return proc, time.time() - t0


def mpi_env(**extra):
    """The environment of a test's ``mpirun`` (and of its single-process runs): Open MPI as
    root, more ranks than cores allowed, TensorFlow quiet, output unbuffered."""
    return dict(
        os.environ,
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMPI_MCA_rmaps_base_oversubscribe="1",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONUNBUFFERED="1",
        **extra,
    )
