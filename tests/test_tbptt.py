"""Truncated BPTT semantics: keraseq's fit equals a plain reference written with the backend's
own gradient (TensorFlow's GradientTape, or jax.value_and_grad over stateless_call)."""

import keras
import numpy as np
import pytest
from conftest import lstm_model

from keraseq import Estimator


def window_step(ref, optimizer, inputs, yw):
    """One window of the reference: MSE of ``ref(inputs)[0]`` against ``yw``, its gradient, one
    optimizer update; returns the final states with the gradient cut."""
    if keras.backend.backend() == "jax":
        import jax
        import jax.numpy as jnp

        ntv = [v.value for v in ref.non_trainable_variables]

        def loss(tv):
            (out, *new_h), _ = ref.stateless_call(tv, ntv, inputs)
            return jnp.mean(jnp.square(out - yw)), new_h

        (_, new_h), grads = jax.value_and_grad(loss, has_aux=True)(
            [v.value for v in ref.trainable_variables]
        )
        optimizer.apply_gradients(zip(grads, ref.trainable_variables))
        return [jax.lax.stop_gradient(s) for s in new_h]
    import tensorflow as tf

    with tf.GradientTape() as tape:
        out, *new_h = ref(inputs)
        loss = tf.reduce_mean(tf.square(out - yw))
    grads = tape.gradient(loss, ref.trainable_variables)
    optimizer.apply_gradients(zip(grads, ref.trainable_variables))
    return [tf.stop_gradient(s) for s in new_h]


def reference_fit(model, optimizer, x, y, seq_len):
    """Per window: the gradient of the model run from the carried, stop-gradient state."""
    rnn, dense = model.layers[0], model.layers[1]
    cell = type(rnn)
    units = rnn.units
    ref_rnn = cell(units, return_sequences=True, return_state=True)
    ref_dense = keras.layers.Dense(dense.units)
    inp = keras.Input((None, x.shape[-1]))
    n_states = 2 if cell is keras.layers.LSTM else 1
    state_inputs = [keras.Input((units,)) for _ in range(n_states)]
    seq, *states = ref_rnn(inp, initial_state=state_inputs)
    ref = keras.Model([inp] + state_inputs, [ref_dense(seq)] + states)
    ref.set_weights(model.get_weights())
    optimizer.build(ref.trainable_variables)
    h = [keras.ops.zeros((x.shape[0], units)) for _ in range(n_states)]
    for start in range(0, x.shape[1], seq_len):
        xw, yw = x[:, start : start + seq_len], y[:, start : start + seq_len]
        h = window_step(ref, optimizer, [keras.ops.convert_to_tensor(xw)] + h, yw)
    return ref.get_weights()


# make test runs six of the ten runs: on TensorFlow a Latin square (each cell with each
# optimizer once, XLA and plain graph each with both cells and both optimizers), on JAX two
# cases (there ``jit_compile`` changes nothing: always jax.jit); make test-full runs the other
# four on TensorFlow (the two JAX cases among them).
ON_TF = {
    ("LSTM", "sgd", True),
    ("GRU", "adam", True),
    ("LSTM", "adam", False),
    ("GRU", "sgd", False),
}
ON_JAX = {("LSTM", "adam", True), ("GRU", "sgd", True)}  # their TensorFlow run: test-full


def _marks(case):
    if case in ON_JAX:
        return [pytest.mark.tf_in_full]
    return [] if case in ON_TF else [pytest.mark.slow]


@pytest.mark.parametrize(
    "cell,opt,jit",
    [
        pytest.param(cell, opt, jit, marks=_marks((cell, opt, jit)))
        for jit in (True, False)
        for opt in ("sgd", "adam")
        for cell in ("LSTM", "GRU")
    ],
)
def test_fit_equals_plain_reference(cell, opt, jit, data):
    x, y = data  # T = 25, seq_len = 10: windows of 10, 10 and a short last one of 5
    model = lstm_model(cell=cell)
    make = lambda: keras.optimizers.SGD(0.1) if opt == "sgd" else keras.optimizers.Adam(0.01)
    expected = reference_fit(model, make(), x, y, seq_len=10)
    est = Estimator(
        model,
        "mse",
        make(),
        epochs=1,
        batch_size=len(x),
        seq_len=10,
        shuffle=False,
        verbose=0,
        jit_compile=jit,
    ).fit(x, y)
    got = est.model_.get_weights()
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # the model passed in is untouched
    for a, b in zip(model.get_weights(), lstm_model(cell=cell).get_weights()):
        np.testing.assert_array_equal(a, b)
