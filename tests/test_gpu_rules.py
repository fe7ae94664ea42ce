"""What keraseq decides for a GPU, checked on the CPU (the GPU run itself:
``benchmarks/gpu_check.py``, docs/gpu.md).

- The estimator's copy of the model keeps ``LSTM(use_cudnn=...)``, which Keras leaves out of
  ``get_config`` (``keras.models.clone_model`` would reset it to ``"auto"``).
- On JAX with a GPU, the training program of short windows runs the LSTMs left at
  ``use_cudnn="auto"`` with Keras's XLA loop (``backend.jax.xla_rnn_loops``); the fitted model
  keeps the user's setting.
"""

import keras
import numpy as np
import pytest

from keraseq import Estimator
from keraseq.utils import notrack

pytestmark = pytest.mark.backend
on_jax = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="cuDNN or XLA's loop inside the window loop: JAX backend",
)


def lstm_model(use_cudnn="auto"):
    return keras.Sequential(
        [
            keras.Input((None, 2)),
            keras.layers.LSTM(3, return_sequences=True, use_cudnn=use_cudnn),
            keras.layers.Dense(1),
        ]
    )


def data(n=4, t=8):
    rng = np.random.default_rng(0)
    return (
        rng.normal(size=(n, t, 2)).astype("float32"),
        rng.normal(size=(n, t, 1)).astype("float32"),
    )


def test_copies_keep_use_cudnn():
    model = lstm_model(use_cudnn=False)
    assert keras.models.clone_model(model).layers[0].use_cudnn == "auto"  # Keras's own clone
    est = Estimator(model, "mse", "adam", epochs=1, batch_size=2, seq_len=4, verbose=0)
    est.fit(*data())
    assert est.model_.layers[0].use_cudnn is False
    assert notrack(model).layers[0].use_cudnn is False
    assert model.layers[0].use_cudnn is False


@pytest.fixture
def seen(monkeypatch):
    """The ``use_cudnn`` each LSTM call saw (calls while a program is traced, or eager)."""
    calls = []
    original = keras.layers.LSTM.inner_loop

    def spy(self, *args, **kwargs):
        calls.append(self.use_cudnn)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.layers.LSTM, "inner_loop", spy)
    return calls


def fit(seq_len, gpu, monkeypatch, model=None):
    from keraseq.backend.jax import cudnn as kj

    monkeypatch.setattr(kj, "_on_gpu_backend", lambda: gpu)
    est = Estimator(
        model or lstm_model(),
        "mse",
        "adam",
        epochs=2,
        batch_size=2,
        seq_len=seq_len,
        verbose=0,
        random_state=0,
        fused_rnn=False,  # Keras's own loop: these tests are about its cuDNN / XLA choice
    )
    return est.fit(*data())


@on_jax
@pytest.mark.exact  # the two programs' weights bit for bit
def test_short_windows_on_a_gpu_train_with_xla_loops(seen, monkeypatch):
    keras.utils.set_random_seed(0)
    model = lstm_model()
    plain = fit(4, False, monkeypatch, model)
    assert seen and set(seen) == {"auto"}
    seen.clear()
    gpu = fit(4, True, monkeypatch, model)
    # the training program was traced with XLA's loop; predict's keeps the user's "auto"
    assert False in seen
    assert gpu.model_.layers[0].use_cudnn == "auto" and model.layers[0].use_cudnn == "auto"
    # the same maths: on the CPU both paths are Keras's loop, so the weights are equal
    for a, b in zip(plain.model_.get_weights(), gpu.model_.get_weights()):
        np.testing.assert_array_equal(a, b)
    seen.clear()
    gpu.predict(data()[0])
    assert set(seen) == {"auto"}


@on_jax
@pytest.mark.parametrize("seq_len", [None, 21])
def test_long_windows_keep_cudnn(seen, monkeypatch, seq_len):
    fit(seq_len, True, monkeypatch)
    assert seen and set(seen) == {"auto"}


@on_jax
def test_explicit_use_cudnn_is_left_alone():
    from keraseq.backend.jax import cudnn as kj

    model = keras.Sequential(
        [
            keras.Input((None, 2)),
            keras.layers.LSTM(3, return_sequences=True, use_cudnn=True),
            keras.layers.LSTM(3, use_cudnn="auto"),
        ]
    )
    during = []
    kj_on_gpu = kj._on_gpu_backend
    try:
        kj._on_gpu_backend = lambda: True
        wrapped = kj.xla_rnn_loops(
            model, 10, lambda: during.extend(layer.use_cudnn for layer in model.layers)
        )
    finally:
        kj._on_gpu_backend = kj_on_gpu
    wrapped()
    assert during == [True, False]
    assert [layer.use_cudnn for layer in model.layers] == [True, "auto"]
