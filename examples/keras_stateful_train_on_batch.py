"""Does a Keras ``stateful=True`` RNN carry its state across ``train_on_batch`` calls?

The classic Keras truncated-BPTT loop (``train_on_batch`` window by window with a stateful
RNN) relies on it. Run on each backend::

    KERAS_BACKEND=tensorflow python examples/keras_stateful_train_on_batch.py
    KERAS_BACKEND=jax python examples/keras_stateful_train_on_batch.py

It prints the largest absolute value of the LSTM's state after two ``train_on_batch`` calls
(0.0: the state was not carried), and after two ``predict_on_batch`` calls. Measured with
Keras 3.15.1: TensorFlow carries the state in both (0.97); on JAX the states stay zero in
both, so that loop silently trains (and predicts) without state on JAX. keraseq carries the
state itself (a user's ``stateful=True`` model trains to the weights of its plain twin on
both backends).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
import numpy as np


def state_after(call: str) -> float:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input(batch_shape=(4, None, 3)),
            keras.layers.LSTM(5, return_sequences=True, stateful=True),
            keras.layers.Dense(1),
        ]
    )
    model.compile("sgd", "mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6, 3)).astype("float32")
    y = rng.normal(size=(4, 6, 1)).astype("float32")
    for _ in range(2):
        model.train_on_batch(x, y) if call == "train" else model.predict_on_batch(x)
    return max(float(np.abs(keras.ops.convert_to_numpy(s)).max()) for s in model.layers[0].states)


if __name__ == "__main__":
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}")
    print(f"state after train_on_batch:   {state_after('train'):.4f}")
    print(f"state after predict_on_batch: {state_after('predict'):.4f}")
