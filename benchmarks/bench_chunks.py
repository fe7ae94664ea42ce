"""The cost of training a minibatch in chunks of windows (``windows_per_call``), side by side.

keraseq trains a long minibatch as several compiled calls so that the progress bar and the
callbacks move inside it (docs/guide/progress.md). Each call costs a little (argument
conversion, dispatch, the result's transfer, the callbacks). Measured at the seed and realistic
workloads of the other benchmarks with forced calls much SHORTER than ``"auto"`` picks (auto
keeps them one call per minibatch): an upper bound of the cost; and at long minibatches of the
same models (``*-long``) cut as ``"auto"`` cuts them (calls of about a second). The contenders
run interleaved, in alternating order, in one process, on the backend Keras runs on
(``KERAS_BACKEND``).

Prints, per workload: steady s/epoch of one call per minibatch and of the chunks, the ratio
chunked / one call (target <= 1.02), and the measured seconds per window next to the estimate
``"auto"`` sizes its calls with (``keraseq.calls.auto_windows``).

    python benchmarks/bench_chunks.py [--rounds 3] [--epochs 3]
        [--sizes seed,realistic,seed-long,realistic-long]
    KERAS_BACKEND=jax python benchmarks/bench_chunks.py
"""

import argparse
import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
import numpy as np

from keraseq import Estimator
from keraseq import calls as keraseq_calls

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from epoch_timer import EpochTimer

# name: (units, features, T, batch, window, N, windows per call when chunked)
SIZES = {
    # Forced short calls (an upper bound of the cost: "auto" keeps these one call).
    "seed": (10, 10, 1000, 20, 10, 200, 25),  # 100 windows: 4 calls of ~5 ms
    "realistic": (128, 32, 200, 64, 20, 256, 5),  # 10 windows: 2 calls of ~50 ms
    # Long minibatches, as "auto" cuts them (calls of about a second).
    "seed-long": (10, 10, 100_000, 20, 10, 20, "auto"),  # 10,000 windows: 2 calls
    "realistic-long": (128, 32, 2000, 64, 20, 128, "auto"),  # 100 windows: 2 calls
}
ONE_CALL = 10**9


def make_model(units, features):
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((None, features)),
            keras.layers.LSTM(units, return_sequences=True),
            keras.layers.Dense(1),
        ]
    )


def epochs_of(size, windows_per_call, x, y, epochs):
    units, features, _, batch, window, _, _ = SIZES[size]
    timer = EpochTimer()
    est = Estimator(
        make_model(units, features),
        "mse",
        keras.optimizers.AdamW(1e-3),
        epochs=epochs,
        batch_size=batch,
        seq_len=window,
        shuffle=False,
        verbose=0,
        windows_per_call=windows_per_call,
    )
    est.fit(x, y, callbacks=[timer])
    return timer.times[1:], est  # steady epochs (the first one compiles)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="seed,realistic,seed-long,realistic-long")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3, help="per fit, the first not timed")
    args = ap.parse_args()
    print(
        f"backend {keras.backend.backend()}; {args.rounds} interleaved rounds of "
        f"{args.epochs - 1} steady epochs per contender"
    )
    for size in args.sizes.split(","):
        units, features, t, batch, window, n, chunk = SIZES[size]
        rng = np.random.default_rng(0)
        x = rng.normal(size=(n, t, features)).astype("float32")
        y = (np.cumsum(x[..., :1], axis=1) / 30).astype("float32")
        times = {ONE_CALL: [], chunk: []}
        for rnd in range(args.rounds):
            for wpc in (ONE_CALL, chunk) if rnd % 2 == 0 else (chunk, ONE_CALL):
                steady, est = epochs_of(size, wpc, x, y, args.epochs)
                times[wpc] += steady
        one, chunked = min(times[ONE_CALL]), min(times[chunk])
        windows_per_minibatch = -(-t // window)
        label = chunk
        if chunk == "auto":
            per_call = keraseq_calls.auto_windows(
                min(batch, n) * window * est.model_.count_params()
            )
            calls = -(-windows_per_minibatch // per_call)
            label = f"auto: {calls} calls of {-(-windows_per_minibatch // calls)} windows"
        med = statistics.median(times[chunk]) / statistics.median(times[ONE_CALL])
        windows = -(-n // batch) * windows_per_minibatch
        work = min(batch, n) * window * est.model_.count_params()
        estimate = keraseq_calls.WINDOW_SECONDS + work / keraseq_calls.WORK_PER_SECOND
        print(
            f"{size}: LSTM({units}), F={features}, T={t}, batch {batch}, window {window}, "
            f"N={n}: {windows_per_minibatch} windows per minibatch, chunks of {label}"
        )
        print(
            f"  one call per minibatch {one:.3f} s/epoch; chunked {chunked:.3f} s/epoch; "
            f"ratio chunked/one = {chunked / one:.3f} (best epochs; medians: {med:.3f}; "
            f"target <= 1.02)"
        )
        print(
            f"  seconds per window: measured {one / windows * 1e3:.3f} ms, auto's estimate "
            f"{estimate * 1e3:.3f} ms (work {work / 1e6:.2f} M) -> auto calls of "
            f"{keraseq_calls.auto_windows(work)} windows"
        )


if __name__ == "__main__":
    main()
