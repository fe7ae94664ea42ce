"""Rows over the cores on JAX: a minibatch's rows split over one JAX CPU device per core
(``keraseq/backend/jax.py``: ``row_replicas``) against the plain one-device program, side by
side in one process, over sizes from the seed workload to the realistic one. Prints the
steady s/epoch of each, the speed-up, the work per window that ``MIN_WORK_PER_DEVICE`` compares,
and whether keraseq's rule splits that size (it should where the speed-up is > 1).

    KERAS_BACKEND=jax .venv/bin/python benchmarks/bench_cores.py [--rounds 3] [--epochs 4]
"""
import argparse
import os
import statistics
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from epoch_timer import EpochTimer  # noqa: E402

from keraseq import Estimator  # noqa: E402

# (name, units, features, T, batch, window, N)
SIZES = [
    ("seed", 10, 10, 1000, 20, 10, 200),
    ("small", 32, 16, 200, 32, 20, 256),
    ("small+", 48, 16, 200, 32, 20, 256),
    ("mid-", 64, 16, 200, 32, 20, 256),
    ("medium", 64, 32, 200, 64, 20, 256),
    ("realistic", 128, 32, 200, 64, 20, 256),
]


def model(units, features):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((None, features)),
                             keras.layers.LSTM(units, return_sequences=True),
                             keras.layers.Dense(1)])


def main():
    if keras.backend.backend() != "jax":
        sys.exit("bench_cores measures the JAX backend: run with KERAS_BACKEND=jax")
    import jax

    from keraseq.backend import jax as kj
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=4, help="per fit; the first is not timed")
    ap.add_argument("--sizes", default=",".join(s[0] for s in SIZES))
    args = ap.parse_args()
    n_dev = len(jax.devices("cpu"))
    print(f"{n_dev} JAX CPU device(s); MIN_WORK_PER_DEVICE = {kj.MIN_WORK_PER_DEVICE:,}")
    if n_dev < 2:
        sys.exit("one CPU device: nothing to compare (KERASEQ_CPU_DEVICES=1, or one core)")
    rule = kj.MIN_WORK_PER_DEVICE
    rows = []
    for name, units, features, T, batch, window, N in SIZES:
        if name not in args.sizes.split(","):
            continue
        rng = np.random.default_rng(0)
        x = rng.normal(size=(N, T, features)).astype("float32")
        y = np.cumsum(x[..., :1], axis=1).astype("float32") / np.sqrt(T)
        times = {"one device": [], "rows split": []}
        params = None
        for rnd in range(args.rounds):
            order = list(times) if rnd % 2 == 0 else list(times)[::-1]
            for mode in order:
                kj.MIN_WORK_PER_DEVICE = 10 ** 18 if mode == "one device" else 0
                timer = EpochTimer()
                est = Estimator(model(units, features), seq_len=window, batch_size=batch,
                                epochs=args.epochs, verbose=0, random_state=0,
                                callbacks=[timer])
                est.fit(x, y)
                times[mode] += timer.times[1:]
                params = est.model_.count_params()
        kj.MIN_WORK_PER_DEVICE = rule
        work = batch * window * params
        one, split = (statistics.median(times[m]) for m in times)
        rows.append((name, work, one, split, kj.row_replicas(batch, work)))
    print(f"{'size':<10} {'work/window':>13} {'one device':>11} {'rows split':>11} "
          f"{'speed-up':>9}  rule splits")
    for name, work, one, split, k in rows:
        print(f"{name:<10} {work:>13,} {one:>10.3f}s {split:>10.3f}s {one / split:>8.2f}x  "
              f"{'yes (%d devices)' % k if k > 1 else 'no'}")


if __name__ == "__main__":
    main()
