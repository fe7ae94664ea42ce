"""Time to a first result on TensorFlow: a fresh model's ``fit`` + ``predict``, where tracing and
compiling the window programs dominate, with keraseq's programs traced without AutoGraph (as
Keras's own ``model.fit`` traces, ``do_not_convert``) against the same programs traced with
AutoGraph (``tf.function``'s default, keraseq's before 2026-12-02), measured side by side,
interleaved, in one run.

Each trial builds a new model (fresh variables, so nothing is reused: ``KERASEQ_REUSE_STEPS=0``)
and times ``Estimator.fit`` (2 epochs, minibatches 8, 8, 4; windows 10, 10, 5) and
``predict``. Prints the median of each and their ratio.

Usage: python benchmarks/bench_trace.py [--trials 5] [--jit 1]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["KERASEQ_REUSE_STEPS"] = "0"  # every fit traces and compiles its programs
import keras
import numpy as np
import tensorflow as tf

import keraseq.backend.tensorflow as ktf
from keraseq import Estimator

_plain_function = tf.function


class _WithAutograph:
    """``tf`` as keraseq's TensorFlow backend sees it, but ``tf.function`` forces AutoGraph."""

    def __getattr__(self, name):
        return getattr(tf, name)

    @staticmethod
    def function(fn=None, **kwargs):
        kwargs["autograph"] = True
        return _plain_function(fn, **kwargs)


def model(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((None, 3)),
            keras.layers.LSTM(8, return_sequences=True),
            keras.layers.Dense(1),
        ]
    )


def trial(x, y, seed, autograph, jit):
    ktf.tf = _WithAutograph() if autograph else tf
    try:
        t0 = time.perf_counter()
        est = Estimator(
            model(seed),
            "mse",
            keras.optimizers.Adam(0.01),
            epochs=2,
            batch_size=8,
            seq_len=10,
            metrics=["mae"],
            jit_compile=bool(jit),
            verbose=0,
        ).fit(x, y)
        t1 = time.perf_counter()
        est.predict(x)
        t2 = time.perf_counter()
    finally:
        ktf.tf = tf
    return t1 - t0, t2 - t1


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--jit", type=int, default=1, help="jit_compile (1: XLA, 0: a plain graph)")
    a = p.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 25, 3)).astype("float32")
    y = (np.cumsum(x[..., :1], 1) / 5).astype("float32")
    trial(x, y, 99, False, a.jit)  # warm TensorFlow and Keras up (imports, first kernels)
    times = {False: [], True: []}
    for k in range(a.trials):
        for autograph in (False, True) if k % 2 == 0 else (True, False):
            times[autograph].append(trial(x, y, k, autograph, a.jit))
    med = {ag: [statistics.median(t[i] for t in times[ag]) for i in (0, 1)] for ag in times}
    print(
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, jit_compile={bool(a.jit)}, "
        f"{a.trials} trials each, interleaved; medians:"
    )
    for ag, name in ((False, "keraseq (no AutoGraph)"), (True, "with AutoGraph")):
        fit, pred = med[ag]
        print(f"  {name:24s} fit {fit:6.2f} s   predict {pred:5.2f} s   both {fit + pred:6.2f} s")
    ratio = sum(med[False]) / sum(med[True])
    print(f"  ratio no-AutoGraph / AutoGraph (fit + predict): {ratio:.2f}")


if __name__ == "__main__":
    main()
