"""Can TensorFlow put one window's rows on two cores? Two XLA programs over the row halves.

keraseq[jax] splits a minibatch's rows over one JAX CPU device per core (``shard_map``, the
gradients summed by ``psum``); on the character LM that is 1.5x its one-device time
(``bench_lm.py``: ``keraseq[jax]`` vs ``keraseq[jax]-1dev``). keraseq[tensorflow] compiles the
whole window loop as ONE XLA program, which runs on one device: XLA:CPU's matmuls may use a
second thread, its time loop does not. This script measures what TensorFlow could gain by
splitting instead: the gradient of one LM-sized window (an LSTM(128) over 50 steps, F=32,
32 rows, a sum-of-squares loss, ``tf.GradientTape`` through a ``tf.while_loop``), three ways,
in interleaved rounds in one process:

- ``whole``: one ``tf.function(jit_compile=True)`` call over the 32 rows;
- ``halves``: a plain-graph ``tf.function`` that calls that XLA program on rows 0-15 and on
  rows 16-31 (independent ops: TensorFlow's executor may run them at once on its inter-op
  threads) and sums the two gradients;
- ``half``: one call over 16 rows (the floor for ``halves``).

Reported: the median ms per window of each, the CPU seconds / wall seconds (cores busy), and
``whole / halves`` (> 1: the split gains). The gradients of ``whole`` and ``halves`` are
checked to agree first.

Usage::

    python benchmarks/bench_tf_rows.py              # 5 rounds of 30 windows
    python benchmarks/bench_tf_rows.py --rounds 3 --windows 20
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

B, S, F, U = 32, 50, 32, 128


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--windows", type=int, default=30, help="timed calls per round and way")
    args = ap.parse_args()

    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    kernel = tf.Variable(rng.normal(size=(F, 4 * U)).astype("float32") * 0.1)
    rec = tf.Variable(rng.normal(size=(U, 4 * U)).astype("float32") * 0.1)
    x = tf.constant(rng.normal(size=(S, B, F)).astype("float32"))

    def loss_of(xs):  # Keras's LSTM cell, gate order i, f, c, o; the input projection hoisted
        xp = tf.einsum("sbf,fg->sbg", xs, kernel)

        def body(t, h, c, acc):
            i, f, g, o = tf.split(xp[t] + h @ rec, 4, axis=-1)
            c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
            h = tf.sigmoid(o) * tf.tanh(c)
            return t + 1, h, c, acc + tf.reduce_sum(h * h)

        h0 = tf.zeros((xs.shape[1], U))
        return tf.while_loop(lambda t, *_: t < S, body, (0, h0, h0, 0.0), maximum_iterations=S)[3]

    @tf.function(jit_compile=True)
    def grads(xs):
        with tf.GradientTape() as tape:
            loss = loss_of(xs)
        return tape.gradient(loss, [kernel, rec])

    ways = {
        "whole": tf.function(lambda xs: grads(xs), jit_compile=False),
        "halves": tf.function(
            lambda xs: [a + b for a, b in zip(grads(xs[:, : B // 2]), grads(xs[:, B // 2 :]))],
            jit_compile=False,
        ),
        "half": tf.function(lambda xs: grads(xs[:, : B // 2]), jit_compile=False),
    }
    for a, b in zip(ways["whole"](x), ways["halves"](x)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-4, atol=1e-4)

    ms = {k: [] for k in ways}
    cores = {k: [] for k in ways}
    for rnd in range(args.rounds):
        order = list(ways)[rnd % 3 :] + list(ways)[: rnd % 3]
        for k in order:
            fn = ways[k]
            [g.numpy() for g in fn(x)]
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.windows):
                out = fn(x)
            [g.numpy() for g in out]
            wall = time.perf_counter() - t0
            ms[k].append(wall / args.windows * 1e3)
            cores[k].append((time.process_time() - c0) / wall)
    print(
        f"TensorFlow {tf.__version__}: the gradient of one window, LSTM({U}), {S} steps, "
        f"F={F}, {B} rows; {args.rounds} rounds x {args.windows} windows; {os.cpu_count()} cores"
    )
    for k in ways:
        print(
            f"  {k:7s} {statistics.median(ms[k]):7.2f} ms per window (fastest "
            f"{min(ms[k]):6.2f}), {statistics.median(cores[k]):.2f} cores busy"
        )
    whole, halves = statistics.median(ms["whole"]), statistics.median(ms["halves"])
    print(
        f"whole / halves = {whole / halves:.2f}x (> 1: two XLA programs over the row halves gain)"
    )


if __name__ == "__main__":
    main()
