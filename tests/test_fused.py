"""keraseq's fused recurrent loop (``keraseq/fused.py``) against Keras's own loop.

The layer's outputs, final states and every gradient (weights, inputs, initial states) of the
fused loop agree with Keras's ``inner_loop`` in float64 to 1e-12 and in float32 to 1e-6
(relative), for LSTM, GRU (``reset_after`` True and False), SimpleRNN, with and without masks,
default and other elementwise activations; a fit with ``fused_rnn=True`` trains the same
weights as with ``fused_rnn=False``; ``rnn_paths_`` says which loop each layer took.
"""

import contextlib
import os

import keras
import numpy as np
import pytest
from conftest import split_between_backends
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from keras import ops

from keraseq import Estimator, fused
from keraseq.windows import _masked_output_from_state, carries_masked_output

BACKEND = keras.backend.backend()
pytestmark = pytest.mark.backend

LAYERS = {
    "lstm": lambda u: keras.layers.LSTM(u, return_sequences=True),
    "lstm-relu-hard": lambda u: keras.layers.LSTM(
        u, activation="relu", recurrent_activation="hard_sigmoid", return_sequences=True
    ),
    "lstm-impl1": lambda u: keras.layers.LSTM(u, implementation=1, return_sequences=True),
    "lstm-zero-output": lambda u: keras.layers.LSTM(
        u, return_sequences=True, zero_output_for_mask=True
    ),
    "gru": lambda u: keras.layers.GRU(u, return_sequences=True),
    "gru-reset-before": lambda u: keras.layers.GRU(u, reset_after=False, return_sequences=True),
    "gru-no-bias": lambda u: keras.layers.GRU(u, use_bias=False, return_sequences=True),
    "gru-elu-silu": lambda u: keras.layers.GRU(
        u, activation="elu", recurrent_activation="silu", return_sequences=True
    ),
    "simple-rnn": lambda u: keras.layers.SimpleRNN(u, return_sequences=True),
    "simple-rnn-gelu": lambda u: keras.layers.SimpleRNN(
        u, activation="gelu", return_sequences=True
    ),
    "rnn-of-lstm-cell": lambda u: keras.layers.RNN(keras.layers.LSTMCell(u), return_sequences=True),
}


@contextlib.contextmanager
def precision(dtype):
    """Keras's floatx (and JAX's 64-bit mode for float64) for the block."""
    old, old_policy = keras.config.floatx(), keras.config.dtype_policy()
    x64 = contextlib.nullcontext()
    if BACKEND == "jax" and dtype == "float64":
        import jax

        x64 = jax.enable_x64(True)
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)  # (a test before may have set one explicitly)
    try:
        with x64:
            yield
    finally:
        keras.config.set_floatx(old)
        keras.config.set_dtype_policy(old_policy)
        keras.backend.clear_session()  # nothing traced in float64 is reused after


def outputs_and_grads(layer, loop, x, h0, mask, weights):
    """The outputs, final states and gradients of ``sum(outputs * R) + sum(states * R_s)``
    with respect to the layer's weights, ``x`` and ``h0``, the loop being ``loop``."""
    tv = layer.trainable_variables

    def run(xx, hh):
        last, outs, states = loop(xx, list(hh))
        if mask is not None and carries_masked_output(layer):  # as keraseq's state carry
            last, outs = _masked_output_from_state(layer, mask, list(hh), last, outs)
        loss = ops.sum(outs * weights[0]) + sum(ops.sum(s * r) for s, r in zip(states, weights[1:]))
        return loss, [outs, *states]

    if BACKEND == "tensorflow":
        import tensorflow as tf

        xt, ht = tf.convert_to_tensor(x), [tf.convert_to_tensor(h) for h in h0]
        with tf.GradientTape() as tape:
            tape.watch([xt, *ht])
            loss, outs = run(xt, ht)
        grads = tape.gradient(loss, [*tv, xt, *ht])
        return [np.asarray(a) for a in outs + grads]
    import jax

    def f(values, xx, hh):
        with keras.StatelessScope(state_mapping=list(zip(tv, values))):
            return run(xx, hh)

    (_, outs), g = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(
        [v.value for v in tv], x, h0
    )
    return [np.asarray(a) for a in [*outs, *g[0], g[1], *g[2]]]


#: Weights drawn at 0.5 (times a standard normal), except where the layer would blow up:
#: silu gates are unbounded, and at 0.5 the GRU's state reached 1e15 in 7 steps, where
#: float32 rounding alone differed by 1.2e-5 (relative) between two orders of the same sums
#: (an AMD EPYC; 1e-6 elsewhere). At 0.3 its outputs stay near 4e2 and the check measures the
#: maths, not the conditioning.
WEIGHT_SCALE = {"gru-elu-silu": 0.3}


def compare(name, dtype, masked, batch=3, steps=7, features=4, units=5, seed=0):
    """Largest error of the fused loop against Keras's, relative to each array's scale."""
    rng = np.random.default_rng(seed)
    layer = LAYERS[name](units)
    x = rng.normal(size=(batch, steps, features)).astype(dtype)
    layer(x)
    scale = WEIGHT_SCALE.get(name, 0.5)
    for v in layer.trainable_variables:  # biases too: every gradient exercised
        v.assign((rng.normal(size=v.shape) * scale).astype(dtype))
    n_states = 2 if "lstm" in name else 1
    h0 = [rng.normal(size=(batch, units)).astype(dtype) for _ in range(n_states)]
    mask = None
    if masked:
        mask = rng.random((batch, steps)) > 0.4
        mask[0, : min(3, steps)] = False  # a row that starts with padding
        mask[-1, -2:] = False  # one that ends with it
    weights = [rng.normal(size=(batch, steps, units)).astype(dtype)] + [
        rng.normal(size=(batch, units)).astype(dtype) for _ in range(n_states)
    ]
    assert fused.why_not(layer) is None
    ref = outputs_and_grads(
        layer, lambda xx, hh: layer.inner_loop(xx, hh, mask, training=True), x, h0, mask, weights
    )
    out = outputs_and_grads(
        layer, lambda xx, hh: fused.run(layer, xx, hh, mask, True), x, h0, mask, weights
    )
    assert len(ref) == len(out)
    return max(
        float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(a))))) for a, b in zip(ref, out)
    )


#: XLA:CPU evaluates float64 ``tanh`` to about 1e-7 (8e-8 from NumPy's on normal values,
#: measured; its ``sigmoid`` is exact), so on JAX the layers with tanh in them agree with
#: Keras's loop, which computes the same tanh, to that: the float64 check at 1e-12 takes the
#: layers without tanh there.
TANH_FREE = ("lstm-relu-hard", "gru-elu-silu", "simple-rnn-gelu")


#: Every layer, masked or not: `make test` runs half the cases on each backend, `make
#: test-full` all of them on both (conftest.split_between_backends).
CASES = split_between_backends(
    {f"{name}-{m}": (name, m == "masked") for name in LAYERS for m in ("unmasked", "masked")}
)


@pytest.mark.parametrize(("name", "masked"), CASES)
def test_fused_loop_agrees_with_keras_in_float64(name, masked):
    if BACKEND == "jax" and name not in TANH_FREE:
        if name.startswith("simple-rnn"):
            pytest.skip("Keras's SimpleRNN does not build in float64 on JAX (its state is float32)")
        with precision("float64"):
            assert compare(name, "float64", masked) < 2e-6  # XLA's float64 tanh, see above
        return
    with precision("float64"):
        assert compare(name, "float64", masked) < 1e-12


@pytest.mark.parametrize(("name", "masked"), CASES)
def test_fused_loop_agrees_with_keras_in_float32(name, masked):
    assert compare(name, "float32", masked) < 1e-6


@pytest.mark.property
@settings(
    max_examples=int(os.environ.get("KERASEQ_FUSED_EXAMPLES", "4")),  # test-full: 10
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(
    name=st.sampled_from(sorted(LAYERS)),
    batch=st.integers(1, 4),
    steps=st.integers(1, 9),
    features=st.integers(1, 5),
    units=st.integers(1, 6),
    masked=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_fused_loop_agrees_over_shapes(name, batch, steps, features, units, masked, seed):
    err = compare(name, "float32", masked, batch, steps, features, units, seed)
    assert err < 1e-6


def why(layer_fn):
    layer = layer_fn()
    return fused.why_not(layer)


def test_what_keeps_keras_loop_is_named():
    assert why(lambda: keras.layers.LSTM(4, recurrent_dropout=0.1)) == "recurrent_dropout"
    assert why(lambda: keras.layers.GRU(4, go_backwards=True)) == "go_backwards"
    assert why(lambda: keras.layers.LSTM(4, unroll=True)) == "unroll=True"
    assert "implementation=1" in why(lambda: keras.layers.LSTM(4, implementation=1, dropout=0.2))
    assert "softmax" in why(lambda: keras.layers.SimpleRNN(4, activation="softmax"))
    assert "ConvLSTM1D" in why(lambda: keras.layers.ConvLSTM1D(2, 3, data_format="channels_last"))
    assert "StackedRNNCells" in why(
        lambda: keras.layers.RNN(keras.layers.StackedRNNCells([keras.layers.LSTMCell(2)]))
    )

    class MyLSTM(keras.layers.LSTM):
        pass

    assert "MyLSTM" in why(lambda: MyLSTM(3))
    assert why(lambda: keras.layers.LSTM(4, dropout=0.3)) is None


def series(n=12, t=24, f=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, t, f)).astype("float32")
    return x, (np.cumsum(x[..., :1], axis=1) / 5).astype("float32")


def fit(model_fn, fused_rnn, x, y, lengths=None):
    keras.utils.set_random_seed(0)
    est = Estimator(
        model_fn(),
        "mse",
        "adam",
        epochs=2,
        batch_size=4,
        seq_len=5,
        shuffle=False,
        verbose=0,
        fused_rnn=fused_rnn,
    )
    return est.fit(x, y, lengths=lengths)


def stacked():
    return keras.Sequential(
        [
            keras.Input((None, 3)),
            keras.layers.Masking(0.0),
            keras.layers.GRU(6, return_sequences=True, dropout=0.2),
            keras.layers.LSTM(5, return_sequences=True),
            keras.layers.SimpleRNN(4, return_sequences=True, activation="relu"),
            keras.layers.Dense(1),
        ]
    )


@pytest.mark.slow  # make test-full on both backends (make test keeps the fit with lengths
@pytest.mark.backend  # and streaming on JAX, and every agreement test runs the fused loop)
def test_fit_trains_the_same_weights_fused_or_not():
    x, y = series()
    x[2, 18:] = 0.0  # padding that Masking hides
    a = fit(stacked, True, x, y)
    b = fit(stacked, False, x, y)
    assert set(a.rnn_paths_.values()) == {"fused"}
    assert all(v == "keras (fused_rnn=False)" for v in b.rnn_paths_.values())
    for wa, wb in zip(a.model_.get_weights(), b.model_.get_weights()):
        np.testing.assert_allclose(wa, wb, atol=2e-5)
    np.testing.assert_allclose(a.predict(x), b.predict(x), atol=2e-5)
    np.testing.assert_allclose(a.history_["loss"], b.history_["loss"], rtol=1e-5)


@pytest.mark.tf_in_full  # make test: on JAX; make test-full: on both
def test_fit_with_lengths_and_streaming_predict_agree_fused_or_not():
    x, y = series(n=8, t=20)
    lengths = np.array([20, 13, 7, 20, 16, 3, 20, 11])
    model_fn = lambda: keras.Sequential(
        [keras.Input((None, 3)), keras.layers.LSTM(6, return_sequences=True), keras.layers.Dense(1)]
    )
    a = fit(model_fn, True, x, y, lengths=lengths)
    b = fit(model_fn, False, x, y, lengths=lengths)
    assert a.rnn_paths_ == {a.model_.layers[0].name: "fused"}
    for wa, wb in zip(a.model_.get_weights(), b.model_.get_weights()):
        np.testing.assert_allclose(wa, wb, atol=2e-5)
    # streaming: two pieces with the state carried == one call, fused or not
    whole = a.predict(x)
    first = a.predict(x[:, :9])
    rest = a.predict(x[:, 9:], reset=False)
    np.testing.assert_allclose(np.concatenate([first, rest], 1), whole, atol=1e-5)
    np.testing.assert_allclose(b.predict(x), whole, atol=2e-5)


@pytest.mark.tf_in_full
def test_recurrent_dropout_keeps_keras_loop_and_says_so():
    x, y = series(n=4, t=10)
    model_fn = lambda: keras.Sequential(
        [
            keras.Input((None, 3)),
            keras.layers.LSTM(4, return_sequences=True, recurrent_dropout=0.2, name="rd"),
            keras.layers.GRU(4, return_sequences=True, name="plain"),
            keras.layers.Dense(1),
        ]
    )
    est = fit(model_fn, True, x, y)
    assert est.rnn_paths_ == {"rd": "keras (recurrent_dropout)", "plain": "fused"}


def test_fused_rnn_is_a_checked_parameter():
    est = Estimator(keras.Sequential([keras.Input((None, 3)), keras.layers.Dense(1)]), "mse")
    assert est.get_params()["fused_rnn"] is True
    est.set_params(fused_rnn="no")
    x, y = series(n=4, t=6)
    with pytest.raises(ValueError, match="fused_rnn"):
        est.fit(x, y)
    with pytest.raises(AttributeError, match="not fitted"):
        _ = est.rnn_paths_
