"""Shared fixtures: quiet TensorFlow, small data, small models."""

import os

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
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    # Two JAX CPU devices even on a one-core machine, so the row-split program is tested.
    os.environ.setdefault("KERASEQ_CPU_DEVICES", "2")

import keras
import numpy as np
import pytest


@pytest.hookimpl(tryfirst=True)  # before pytest's -m selection reads the marks
def pytest_collection_modifyitems(config, items):
    """``tf_in_full``: a behaviour test (``backend``) whose TensorFlow run is ``slow``. These
    test what keraseq does above the compiled step (pipelines, chunks and callbacks, class
    weights, scikit-learn searches, ragged series): `make test` runs them on JAX, where they
    cost a fraction, and `make test-full` on both (issue 22: make test in 10 minutes)."""
    for item in items:
        if item.get_closest_marker("tf_in_full"):
            item.add_marker(pytest.mark.backend)
            if os.environ["KERAS_BACKEND"] != "jax":
                item.add_marker(pytest.mark.slow)


def lstm_model(features=3, units=8, outputs=1, cell="LSTM", seed=0):
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
