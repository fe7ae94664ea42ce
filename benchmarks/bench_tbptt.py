"""Training throughput of truncated BPTT on the seed's shapes, measured side by side.

(a) keraseq ``Estimator.fit``; (b) the canonical Keras loop: a stateful twin, one
``train_on_batch`` per window, ``reset_states`` per minibatch; (c) a hand-written
``tf.function(jit_compile=True)`` with a symbolic loop over the windows (the practical limit).
Prints series/s for each, the ratios a/c and a/b, and keraseq's compile overhead: the extra
time of the first epoch over a steady one, at 100 windows per minibatch.

Usage: python benchmarks/bench_tbptt.py [--n 200] [--t 1000] [--repeats 3]
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
import numpy as np
import tensorflow as tf

from keraseq import Estimator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from epoch_timer import EpochTimer

F, UNITS, BATCH, SEQ = 10, 10, 20, 10


def make_model(batch=None, stateful=False):
    keras.utils.set_random_seed(0)
    inp = keras.Input(batch_shape=(batch, None, F))
    h = keras.layers.LSTM(UNITS, return_sequences=True, stateful=stateful)(inp)
    return keras.Model(inp, keras.layers.Dense(1)(h))


def bench_keraseq(x, y, epochs):
    est = Estimator(
        make_model(),
        "mse",
        keras.optimizers.AdamW(1e-3),
        epochs=epochs,
        batch_size=BATCH,
        seq_len=SEQ,
        shuffle=False,
        verbose=0,
    )
    timer = EpochTimer()
    est.fit(x, y, callbacks=[timer])
    return timer.times


def bench_keras_loop(x, y, epochs):
    model = make_model(batch=BATCH, stateful=True)
    model.compile(keras.optimizers.AdamW(1e-3), "mse")
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for b in range(0, len(x), BATCH):
            for layer in model.layers:
                if hasattr(layer, "reset_states") and getattr(layer, "stateful", False):
                    layer.reset_states()
            xb, yb = x[b : b + BATCH], y[b : b + BATCH]
            for s in range(0, x.shape[1], SEQ):
                model.train_on_batch(xb[:, s : s + SEQ], yb[:, s : s + SEQ])
        times.append(time.perf_counter() - t0)
    return times


def bench_handwritten(x, y, epochs):
    inp = keras.Input((None, F))
    state_in = [keras.Input((UNITS,)), keras.Input((UNITS,))]
    keras.utils.set_random_seed(0)
    seq, h, c = keras.layers.LSTM(UNITS, return_sequences=True, return_state=True)(
        inp, initial_state=state_in
    )
    model = keras.Model([inp] + state_in, [keras.layers.Dense(1)(seq), h, c])
    opt = keras.optimizers.AdamW(1e-3)
    opt.build(model.trainable_variables)
    n_windows = x.shape[1] // SEQ

    @tf.function(jit_compile=True)
    def step(xb, yb):
        h = tf.zeros((tf.shape(xb)[0], UNITS))
        c = tf.zeros((tf.shape(xb)[0], UNITS))
        for w in tf.range(n_windows):
            xw = tf.slice(xb, [0, w * SEQ, 0], [-1, SEQ, -1])
            yw = tf.slice(yb, [0, w * SEQ, 0], [-1, SEQ, -1])
            with tf.GradientTape() as tape:
                out, h2, c2 = model([xw, h, c], training=True)
                loss = tf.reduce_mean(tf.square(out - yw))
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply(grads, model.trainable_variables)
            h, c = tf.stop_gradient(h2), tf.stop_gradient(c2)
        return loss

    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for b in range(0, len(x), BATCH):
            step(tf.constant(x[b : b + BATCH]), tf.constant(y[b : b + BATCH]))
        times.append(time.perf_counter() - t0)
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--t", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--keras-n",
        type=int,
        default=40,
        help="series for the slow train_on_batch loop (throughput is per series)",
    )
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.n, args.t, F)).astype("float32")
    y = np.cumsum(x[..., :1], axis=1).astype("float32") / 30
    epochs = args.repeats + 1
    print(
        f"seed shapes: F={F}, LSTM({UNITS})+Dense(1), batch {BATCH}, seq_len {SEQ}, "
        f"T={args.t} ({args.t // SEQ} windows per minibatch), AdamW; N={args.n}; "
        f"{tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()} threads"
    )
    # Interleaved rounds so that machine noise hits every contender alike; the first epoch of
    # each run (tracing, compilation) is reported apart, steady epochs are the rest.
    a, c, a_first, c_first = [], [], [], []
    for _ in range(args.rounds):
        times = bench_keraseq(x, y, epochs)
        a_first.append(times[0] - min(times[1:]))
        a += times[1:]
        times = bench_handwritten(x, y, epochs)
        c_first.append(times[0] - min(times[1:]))
        c += times[1:]
    b = bench_keras_loop(x[: args.keras_n], y[: args.keras_n], 2)
    a, c = [float("nan")] + a, [float("nan")] + c  # rate() skips index 0
    rate = lambda times, n: n / min(times[1:])
    ra, rb, rc = rate(a, args.n), rate(b, args.keras_n), rate(c, args.n)
    print(f"(a) keraseq fit           {ra:10.1f} series/s")
    print(f"(b) Keras train_on_batch  {rb:10.1f} series/s")
    print(f"(c) hand-written XLA loop {rc:10.1f} series/s")
    print(f"ratio a/c = {ra / rc:.3f}   (target >= 0.95)")
    print(f"ratio a/b = {ra / rb:.2f}   (target >= 4)")
    print(
        f"keraseq first-epoch overhead (compile) = {max(a_first):.2f} s at "
        f"{args.t // SEQ} windows per minibatch (target <= 5 s; worst of {args.rounds} runs); "
        f"hand-written: {max(c_first):.2f} s"
    )


if __name__ == "__main__":
    main()
