"""Unequal lengths: fit throughput in real (unpadded) time steps per second, side by side.

Series of lognormal lengths (median ~T/10, max T: max/median ~10) padded at the end to one T,
a ``Masking`` + ``LSTM`` + ``Dense`` model with per-step targets, truncated BPTT windows:

(p) keraseq padded to the global T: the same shapes without a mask, every window of every
    minibatch computed (what padding costs when nothing knows the lengths);
(a) keraseq, random minibatches: the windows past a minibatch's longest series are skipped,
    but with random minibatches that series is often near T;
(b) keraseq, ``group_by_length=True``: series of similar length share a minibatch, and the
    windows past a minibatch's longest series are skipped;
(c) plain Keras ``model.fit`` on the same padded data (whole sequences, no windows), for scale.

Prints steady-epoch real steps/s of each, the ratio b/p (target >= 3), b/a, and the share of the
computed time steps that are padding. Runs are interleaved in rounds (noisy shared machine).

Usage: python benchmarks/bench_lengths.py [--n 1024] [--t 200] [--rounds 2] [--epochs 3]
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
import numpy as np

from keraseq import Estimator
from keraseq.lengths import grouped_plan, windows_needed
from keraseq.readers import minibatch_plan

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from epoch_timer import EpochTimer

# The project's "realistic" workload (see bench_mpi.py): LSTM(128), F=32, batch 64, windows of 20.
F, UNITS, BATCH, SEQ = 32, 128, 64, 20


def make_data(n, t, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(np.exp(rng.normal(np.log(t / 10), 0.8, n))), 2, t).astype(int)
    lengths[0] = t
    x = rng.normal(size=(n, t, F)).astype("float32")
    real = np.arange(t)[None, :] < lengths[:, None]
    x[~real] = 0.0
    y = (np.cumsum(x[..., :1], axis=1) / 5).astype("float32")
    return x, y, lengths


def make_model(masking=True):
    keras.utils.set_random_seed(0)
    front = [keras.layers.Masking(0.0)] if masking else []
    return keras.Sequential(
        [keras.Input((None, F))]
        + front
        + [keras.layers.LSTM(UNITS, return_sequences=True), keras.layers.Dense(1)]
    )


def computed_steps(lengths, t, grouped, seed=0):
    """Time steps the window loop runs in one epoch (windows x SEQ x batch rows)."""
    n = len(lengths)
    steps = -(-n // BATCH)
    rng = np.random.default_rng(seed)
    plan = (
        grouped_plan(0, n, BATCH, steps, lengths, True, rng)
        if grouped
        else minibatch_plan(0, n, BATCH, steps, True, rng)
    )
    total = 0
    for rows in plan:
        mask = (np.arange(t)[None, :] < lengths[rows][:, None]).astype(np.float32)
        total += windows_needed(mask, SEQ) * SEQ * BATCH
    return total


def bench_keraseq(x, y, epochs, grouped, masking=True):
    est = Estimator(
        make_model(masking),
        "mse",
        keras.optimizers.AdamW(1e-3),
        epochs=epochs,
        batch_size=BATCH,
        seq_len=SEQ,
        shuffle=True,
        random_state=0,
        verbose=0,
        group_by_length=grouped,
    )
    timer = EpochTimer()
    est.fit(x, y, callbacks=[timer])
    return timer.times


def bench_keras(x, y, epochs):
    model = make_model()
    model.compile(keras.optimizers.AdamW(1e-3), "mse")
    timer = EpochTimer()
    model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=True, verbose=0, callbacks=[timer])
    return timer.times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--t", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    x, y, lengths = make_data(args.n, args.t)
    real = int(lengths.sum())
    print(
        f"N={args.n} T={args.t} lengths: median {np.median(lengths):.0f}, max "
        f"{lengths.max()}, max/median {lengths.max() / np.median(lengths):.1f}; real steps "
        f"{real} of {args.n * args.t} ({real / (args.n * args.t):.0%}); LSTM({UNITS}), "
        f"batch {BATCH}, seq_len {SEQ}"
    )
    runs = {"p_padded": [], "a_random": [], "b_grouped": [], "c_keras": []}
    for r in range(args.rounds):
        runs["p_padded"].append(min(bench_keraseq(x, y, args.epochs, False, False)[1:]))
        runs["a_random"].append(min(bench_keraseq(x, y, args.epochs, False)[1:]))
        runs["b_grouped"].append(min(bench_keraseq(x, y, args.epochs, True)[1:]))
        runs["c_keras"].append(min(bench_keras(x, y, args.epochs)[1:]))
        print(
            f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in runs.items()),
            flush=True,
        )
    best = {k: min(v) for k, v in runs.items()}
    for key, label in (
        ("p_padded", "(p) keraseq, padded to global T (no mask)"),
        ("a_random", "(a) keraseq, random minibatches"),
        ("b_grouped", "(b) keraseq, group_by_length=True"),
        ("c_keras", "(c) Keras model.fit, whole padded sequences"),
    ):
        print(f"{label:48s} {best[key]:7.3f} s/epoch  {real / best[key]:10.0f} real steps/s")
    for grouped, label in ((False, "random"), (True, "grouped")):
        steps = computed_steps(lengths, args.t, grouped)
        print(
            f"computed time steps per epoch, {label:8s}: {steps} ({1 - real / steps:.0%} padding)"
        )
    print(
        f"computed time steps per epoch, padded  : {args.n * args.t} "
        f"({1 - real / (args.n * args.t):.0%} padding)"
    )
    print(
        f"ratio b/p (grouped vs padded to global T): {best['p_padded'] / best['b_grouped']:.2f}"
        f"  (target >= 3)"
    )
    print(f"ratio b/a (grouped vs random minibatches): {best['a_random'] / best['b_grouped']:.2f}")
    print(f"ratio b/c (grouped vs Keras model.fit):     {best['c_keras'] / best['b_grouped']:.2f}")


if __name__ == "__main__":
    main()
