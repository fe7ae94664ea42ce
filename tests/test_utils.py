"""Tests of keraseq.utils, each against an independent computation (NumPy algebra, an explicit
tf.GradientTape or jax.grad of stateless_call, a non-stateful rerun of the whole sequence)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keraseq.utils import (
    bmm,
    load_states,
    named_params,
    net2grad,
    net2vec,
    notrack,
    states,
    vec2net,
    weights,
)

RNG = np.random.default_rng(1234)


def lstm_model(stateful_batch=None):
    keras.utils.set_random_seed(0)
    inp = (
        keras.Input(batch_shape=(stateful_batch, None, 3))
        if stateful_batch
        else keras.Input((None, 3))
    )
    return keras.Sequential(
        [
            inp,
            keras.layers.LSTM(5, return_sequences=True, stateful=bool(stateful_batch)),
            keras.layers.LSTM(4, return_sequences=True, stateful=bool(stateful_batch)),
            keras.layers.Dense(2),
        ]
    )


def dense_model(m=3, p=2, **kw):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((m,)), keras.layers.Dense(p, **kw)])


# ------------------------------------------------------------------------- net2vec / vec2net
def test_net2vec_layout_and_dtype():
    model = lstm_model()
    v = net2vec(model)
    assert v.ndim == 1 and v.dtype == np.float32
    sizes = [int(np.prod(w.shape)) for w in model.trainable_weights]
    assert v.size == sum(sizes)
    # first block is the first LSTM kernel in C order
    k0 = np.asarray(model.trainable_weights[0])
    np.testing.assert_array_equal(v[: k0.size], k0.ravel())


def test_vec2net_roundtrip_and_inverse():
    model = lstm_model()
    x = RNG.normal(size=(2, 6, 3)).astype("float32")
    v0 = net2vec(model)
    y0 = np.asarray(model(x))
    v1 = RNG.normal(size=v0.shape).astype("float32")
    assert vec2net(model, v1) is model
    np.testing.assert_array_equal(net2vec(model), v1)
    assert not np.allclose(np.asarray(model(x)), y0)
    vec2net(model, v0)
    np.testing.assert_array_equal(net2vec(model), v0)
    np.testing.assert_allclose(np.asarray(model(x)), y0, rtol=1e-6, atol=1e-6)


def test_vec2net_sets_outputs_as_numpy_predicts():
    m, p = 3, 2
    model = dense_model(m, p)
    v = RNG.normal(size=m * p + p)
    vec2net(model, v)
    W, b = v[: m * p].reshape(m, p), v[m * p :]
    x = RNG.normal(size=(7, m)).astype("float32")
    np.testing.assert_allclose(np.asarray(model(x)), x @ W + b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [np.zeros(7), np.zeros(9), np.zeros((2, 4))])
def test_vec2net_rejects_wrong_vectors(bad):
    model = dense_model(3, 2)
    before = net2vec(model)
    with pytest.raises(ValueError) as err:
        vec2net(model, bad)
    msg = str(err.value)
    assert "`v`" in msg and "8" in msg and str(bad.shape[0] if bad.ndim == 1 else bad.shape) in msg
    np.testing.assert_array_equal(net2vec(model), before)


# ------------------------------------------------------------------------------- net2grad
def tape_grad(model, x, y, loss_fn):
    """Gradient of the data loss alone (no regularisation), by the backend's own means: an
    explicit GradientTape, or jax.grad of Keras's stateless_call."""
    if keras.backend.backend() == "jax":
        import jax

        ntv = [v.value for v in model.non_trainable_variables]

        def value(tv):
            out, _ = model.stateless_call(tv, ntv, x, training=True)
            return loss_fn(y, out)

        grads = jax.grad(value)([v.value for v in model.trainable_variables])
    else:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            value = loss_fn(y, model(x, training=True))
        grads = tape.gradient(value, model.trainable_variables)
    return np.concatenate([np.asarray(g).ravel() for g in grads])


@pytest.mark.backend
def test_net2grad_matches_gradient_tape_plus_l2_regularisation():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((None, 3)),
            keras.layers.LSTM(
                4, return_sequences=True, name="rnn", kernel_regularizer=keras.regularizers.L2(0.1)
            ),
            keras.layers.Dense(2, name="head", kernel_regularizer=keras.regularizers.L2(0.05)),
        ],
        name="regnet",
    )
    x = RNG.normal(size=(4, 5, 3)).astype("float32")
    y = RNG.normal(size=(4, 5, 2)).astype("float32")
    data_grad = tape_grad(model, x, y, keras.losses.MeanSquaredError())
    # L2(c) adds c * sum(w**2): gradient 2 c w on the regularised kernels only
    coef = {"regnet/rnn/lstm_cell/kernel": 0.1, "regnet/head/kernel": 0.05}
    c = [coef.get(w.path, 0.0) for w in model.trainable_weights]
    assert sorted(c) == [0.0, 0.0, 0.0, 0.05, 0.1]
    reg_grad = np.concatenate(
        [2 * ci * np.asarray(w).ravel() for w, ci in zip(model.trainable_weights, c)]
    )
    for loss in ("mse", keras.losses.MeanSquaredError(), keras.losses.mean_squared_error):
        got = net2grad(model, x, y, loss)
        assert got.shape == net2vec(model).shape
        np.testing.assert_allclose(got, data_grad + reg_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.backend
def test_net2grad_matches_analytic_linear_gradient():
    m, p, n = 3, 2, 10
    model = dense_model(m, p)
    x = RNG.normal(size=(n, m)).astype("float32")
    y = RNG.normal(size=(n, p)).astype("float32")
    W, b = (np.asarray(w, dtype=np.float64) for w in model.trainable_weights)
    r = x @ W + b - y  # mse = mean(r**2) over n*p elements
    gW, gb = 2 * x.T @ r / (n * p), 2 * r.sum(0) / (n * p)
    np.testing.assert_allclose(
        net2grad(model, x, y, "mse"), np.concatenate([gW.ravel(), gb]), rtol=1e-5, atol=1e-6
    )


@pytest.mark.backend
def test_net2grad_model_callable_loss():
    m, p, n = 3, 2, 10
    model = dense_model(m, p)
    x = RNG.normal(size=(n, m)).astype("float32")
    y = RNG.normal(size=(n, p)).astype("float32")

    def total_abs(model, x, y):  # loss(model, x, y) form: sum instead of mean
        return keras.ops.sum(keras.ops.abs(model(x) - y))

    W, b = (np.asarray(w, dtype=np.float64) for w in model.trainable_weights)
    s = np.sign(x @ W + b - y)
    np.testing.assert_allclose(
        net2grad(model, x, y, total_abs),
        np.concatenate([(x.T @ s).ravel(), s.sum(0)]),
        rtol=1e-5,
        atol=1e-5,
    )


# ---------------------------------------------------------------------------- named_params
def test_named_params_unique_readable_and_complete():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((None, 3)),
            keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True), name="bi"),
            keras.layers.LSTM(4, return_sequences=True),
            keras.layers.Dense(2, name="head"),
        ],
        name="net",
    )
    names = named_params(model)
    assert len(names) == len(model.trainable_weights)
    assert [id(v) for v in names.values()] == [id(v) for v in model.trainable_weights]
    assert "net/head/kernel" in names and "net/head/bias" in names
    assert any(k.startswith("net/bi/forward_") for k in names)
    assert any(k.startswith("net/bi/backward_") for k in names)
    assert len(named_params(model, trainable_only=False)) == len(model.weights)


def test_named_params_deduplicates_equal_paths():
    class Twice(keras.layers.Layer):
        def build(self, shape):
            self.a = self.add_weight(name="w", shape=(2,))
            self.b = self.add_weight(name="w", shape=(3,))

        def call(self, x):
            return x

    model = keras.Sequential([keras.Input((2,)), Twice(name="twice")], name="m")
    paths = [v.path for v in model.trainable_weights]
    assert paths[0] == paths[1]  # Keras really gives equal paths here
    names = named_params(model)
    assert list(names) == ["m/twice/w", "m/twice/w_1"]
    assert [tuple(v.shape) for v in names.values()] == [(2,), (3,)]


# --------------------------------------------------------------------------------- weights
def test_weights_stacked_lstm_dense_are_the_five_kernels():
    model = lstm_model()
    ks = weights(model)
    assert len(ks) == 5
    assert [k.name for k in ks] == [
        "kernel",
        "recurrent_kernel",
        "kernel",
        "recurrent_kernel",
        "kernel",
    ]
    assert all(len(k.shape) == 2 for k in ks)
    biases = [v for v in model.trainable_weights if v.name == "bias"]
    assert len(biases) == 3 and not any(b is k for b in biases for k in ks)


def test_weights_bidirectional_embedding_norm():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(10, 3),
            keras.layers.Bidirectional(keras.layers.GRU(4, return_sequences=True)),
            keras.layers.LayerNormalization(),
            keras.layers.SeparableConv1D(2, 3, padding="same"),
            keras.layers.Dense(1),
        ]
    )
    ks = weights(model)
    names = sorted(k.name for k in ks)
    assert names == sorted(
        [
            "embeddings",
            "kernel",
            "recurrent_kernel",
            "kernel",
            "recurrent_kernel",
            "depthwise_kernel",
            "pointwise_kernel",
            "kernel",
        ]
    )
    assert not any(k.name in ("bias", "gamma", "beta") for k in ks)
    # ndim alone would be wrong: GRU biases are 2-D (reset_after), and are excluded
    gru_bias = [v for v in model.trainable_weights if v.name == "bias" and len(v.shape) == 2]
    assert gru_bias and not any(b is k for b in gru_bias for k in ks)


# ------------------------------------------------------------------------------------- bmm
@pytest.mark.backend
def test_bmm_value_and_gradient():
    a = RNG.normal(size=(4, 3, 5)).astype("float32")
    b = RNG.normal(size=(4, 5, 2)).astype("float32")
    g = RNG.normal(size=(4, 3, 2)).astype("float32")
    np.testing.assert_allclose(
        np.asarray(bmm(a, b)), np.einsum("bnm,bmp->bnp", a, b), rtol=1e-5, atol=1e-5
    )
    if keras.backend.backend() == "jax":
        import jax

        ga, gb = jax.grad(lambda ta, tb: (bmm(ta, tb) * g).sum(), argnums=(0, 1))(a, b)
    else:
        import tensorflow as tf

        ta, tb = tf.constant(a), tf.constant(b)
        with tf.GradientTape() as tape:
            tape.watch([ta, tb])
            value = tf.reduce_sum(bmm(ta, tb) * g)
        ga, gb = tape.gradient(value, [ta, tb])
    np.testing.assert_allclose(
        np.asarray(ga), np.einsum("bnp,bmp->bnm", g, b), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(gb), np.einsum("bnm,bnp->bmp", a, g), rtol=1e-5, atol=1e-5
    )


def test_bmm_under_xla_with_unknown_batch():
    """TensorFlow: a tf.function with an unknown batch size, compiled by XLA."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow only: a batch size unknown at compile time")
    import tensorflow as tf

    a = RNG.normal(size=(3, 2, 4)).astype("float32")
    b = RNG.normal(size=(3, 4, 6)).astype("float32")
    f = tf.function(
        bmm,
        jit_compile=True,
        input_signature=[tf.TensorSpec((None, 2, 4)), tf.TensorSpec((None, 4, 6))],
    )
    np.testing.assert_allclose(
        np.asarray(f(a, b)), np.einsum("bnm,bmp->bnp", a, b), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "sa,sb",
    [
        ((2, 3, 4), (2, 5, 6)),
        ((2, 3, 4), (3, 4, 6)),
        ((3, 4), (2, 4, 6)),
        ((2, 3, 4), (2, 4, 6, 1)),
    ],
)
def test_bmm_shape_errors_name_both_shapes(sa, sb):
    with pytest.raises(ValueError) as err:
        bmm(np.zeros(sa, "float32"), np.zeros(sb, "float32"))
    assert str(sa) in str(err.value) and str(sb) in str(err.value)


# --------------------------------------------------------------------------------- notrack
def test_notrack_copy_is_frozen_and_original_untouched():
    model = lstm_model()
    x = RNG.normal(size=(2, 6, 3)).astype("float32")
    before = [np.array(w) for w in model.get_weights()]
    n_trainable = len(model.trainable_weights)
    copy = notrack(model)
    assert len(copy.trainable_weights) == 0
    np.testing.assert_allclose(np.asarray(copy(x)), np.asarray(model(x)), rtol=1e-6, atol=1e-6)
    assert model.trainable and len(model.trainable_weights) == n_trainable
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    # independent variables: changing the original leaves the copy as it was
    y_copy = np.asarray(copy(x))
    vec2net(model, np.zeros_like(net2vec(model)))
    np.testing.assert_array_equal(np.asarray(copy(x)), y_copy)


# ---------------------------------------------------------------------------------- states
def test_states_empty_for_plain_model():
    assert states(lstm_model()) == []


def test_states_roundtrip_continues_predictions_identically():
    model = lstm_model(stateful_batch=2)
    x = RNG.normal(size=(2, 12, 3)).astype("float32")
    model.predict(x[:, :7], verbose=0)
    s = states(model)
    assert [a.shape for a in s] == [(2, 5), (2, 5), (2, 4), (2, 4)]  # LSTM h, c per layer
    y_cont = model.predict(x[:, 7:], verbose=0)

    # independent reference: a non-stateful copy run over the whole sequence at once
    plain = lstm_model()
    plain.set_weights(model.get_weights())
    y_full = np.asarray(plain(x))
    np.testing.assert_allclose(y_cont, y_full[:, 7:], rtol=1e-5, atol=1e-5)

    # scramble the state, load the copy back: the continuation is the same again
    model.predict(RNG.normal(size=(2, 4, 3)).astype("float32"), verbose=0)
    assert not np.allclose(states(model)[0], s[0])
    assert load_states(model, s) is model
    for a, b in zip(states(model), s):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(model.predict(x[:, 7:], verbose=0), y_cont, rtol=1e-6, atol=1e-6)


def test_states_bidirectional_and_errors():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input(batch_shape=(3, None, 2)),
            keras.layers.Bidirectional(keras.layers.GRU(4, stateful=True, return_sequences=True)),
            keras.layers.Dense(1),
        ]
    )
    model.predict(np.ones((3, 5, 2), "float32"), verbose=0)
    s = states(model)
    assert [a.shape for a in s] == [(3, 4), (3, 4)]  # backward and forward GRU
    assert all(np.abs(a).sum() > 0 for a in s)
    s[0] = s[0] + 1.0  # states are copies
    assert not np.allclose(states(model)[0], s[0])
    with pytest.raises(ValueError, match="received 1"):
        load_states(model, s[:1])
    with pytest.raises(ValueError) as err:
        load_states(model, [s[0], np.zeros((2, 4))])
    assert "(3, 4)" in str(err.value) and "(2, 4)" in str(err.value) and "gru" in str(err.value)


def test_states_delegates_to_estimator_like_objects():
    class Fitted:  # the duck-typed Estimator protocol
        def __init__(self):
            self.saved = [np.arange(6.0).reshape(3, 2)]

        def _get_states(self):
            return [a.copy() for a in self.saved]

        def _set_states(self, s):
            self.saved = list(s)

    est = Fitted()
    s = states(est)
    np.testing.assert_array_equal(s[0], np.arange(6.0).reshape(3, 2))
    assert load_states(est, [np.zeros((3, 2))]) is est
    np.testing.assert_array_equal(est.saved[0], np.zeros((3, 2)))


@pytest.mark.tf_in_full
def test_estimator_states_resume_streaming_after_load_states():
    """states(est) after predict(x[:, :t]); later load_states + predict(x[:, t:], reset=False)
    equals the tail of predict(x)."""
    from keraseq import Estimator

    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((None, 2)),
            keras.layers.GRU(5, return_sequences=True),
            keras.layers.LSTM(4, return_sequences=True),
            keras.layers.Dense(1),
        ]
    )
    rng = np.random.default_rng(3)
    x = rng.normal(size=(7, 22, 2)).astype("float32")
    y = x[..., :1].cumsum(1)
    est = Estimator(
        model, "mse", "adam", epochs=1, batch_size=4, seq_len=5, verbose=0, jit_compile=False
    ).fit(x, y)
    full = est.predict(x)
    est.predict(x[:, :13])
    saved = states(est)
    assert [s.shape for s in saved] == [(7, 5), (7, 4), (7, 4)]  # GRU h; LSTM h, c
    est.predict(x[::-1].copy())  # something else runs in between
    load_states(est, saved)
    tail = est.predict(x[:, 13:], reset=False)
    np.testing.assert_allclose(tail, full[:, 13:], atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        load_states(est, [s[:, :2] for s in saved])


@pytest.mark.slow  # make test-full (two TensorFlow start-ups in subprocesses)
def test_tensorflow_start_up_lines_follow_tf_cpp_min_log_level():
    """Issue 32: TensorFlow prints C++ lines while it loads, before its log honours
    ``TF_CPP_MIN_LOG_LEVEL``; imported through keraseq they follow the level (level 0: all of
    them, as TensorFlow prints them; level 3: none), and a line of any other kind is kept."""
    import os
    import re
    import subprocess
    import sys

    from keraseq._startup import filtered

    code = "import keraseq, sys; print('imported', file=sys.stderr)"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["KERAS_BACKEND"] = "tensorflow"
    loud = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    quiet = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(env, TF_CPP_MIN_LOG_LEVEL="3"),
        capture_output=True,
        text=True,
    )
    assert loud.returncode == quiet.returncode == 0, quiet.stderr
    # TensorFlow's own behaviour: some C++ line in absl's format ("I0000 00:00:... file.cc:N]");
    # which lines depends on the machine (oneDNN on a CPU with AVX-512, no CUDA driver on others)
    assert re.search(r"^[IWEF]\d{4} \S+ +\d+ \S+:\d+\] ", loud.stderr, re.M), loud.stderr
    assert quiet.stderr == "imported\n"
    text = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1.5 7 cpu_feature_guard.cc:227] This TensorFlow binary is optimized\n"
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild.\n"
        "W0000 00:00:1.5 7 x.cc:1] a warning\n"
        "E0000 00:00:1.5 7 x.cc:2] an error\n"
        "  its second line\n"
        "something else\n"
    )
    assert (
        filtered(text, 2)
        == "E0000 00:00:1.5 7 x.cc:2] an error\n  its second line\nsomething else\n"
    )
    assert filtered(text, 1).startswith("W0000") and filtered(text, 0) == text
