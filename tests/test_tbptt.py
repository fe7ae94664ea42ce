"""Truncated BPTT semantics: keraseq's fit equals a plain-TensorFlow reference, and carry matters."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import lstm_model
from keraseq import Estimator


def reference_fit(model, optimizer, x, y, seq_len):
    """Plain TF: per window, GradientTape over the model run from the carried, stop-gradient state."""
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
    h = [tf.zeros((x.shape[0], units)) for _ in range(n_states)]
    for start in range(0, x.shape[1], seq_len):
        xw, yw = x[:, start:start + seq_len], y[:, start:start + seq_len]
        with tf.GradientTape() as tape:
            out, *new_h = ref([tf.constant(xw)] + h)
            loss = tf.reduce_mean(tf.square(out - yw))
        grads = tape.gradient(loss, ref.trainable_variables)
        optimizer.apply_gradients(zip(grads, ref.trainable_variables))
        h = [tf.stop_gradient(s) for s in new_h]
    return ref.get_weights()


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("jit", [True, False])
def test_fit_equals_plain_tf_reference(cell, opt, jit, data):
    x, y = data  # T = 25, seq_len = 10: windows of 10, 10 and a short last one of 5
    model = lstm_model(cell=cell)
    make = lambda: keras.optimizers.SGD(0.1) if opt == "sgd" else keras.optimizers.Adam(0.01)
    expected = reference_fit(model, make(), x, y, seq_len=10)
    est = Estimator(model, "mse", make(), epochs=1, batch_size=len(x), seq_len=10,
                    shuffle=False, verbose=0, jit_compile=jit).fit(x, y)
    got = est.model_.get_weights()
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # the model passed in is untouched
    for a, b in zip(model.get_weights(), lstm_model(cell=cell).get_weights()):
        np.testing.assert_array_equal(a, b)
