"""What keraseq does with the cores of one CPU machine, measured over sizes from the seed
workload to the realistic one, the two variants side by side in one process (interleaved):

- JAX (default): a minibatch's rows split over one JAX CPU device per core
  (``keraseq/backend/jax/rows.py``: ``row_replicas``) against the plain one-device program;
- ``--tf``: TensorFlow's window loop as a plain graph (its intra-op threads share each matmul)
  against XLA (one core), the choice of ``jit_compile="auto"`` (``GRAPH_MIN_WORK``).

Prints the steady s/epoch of each, the speed-up, the work per window the rules compare
(rows x window steps x weights) and what keraseq's rule picks (right where the speed-up > 1).

    KERAS_BACKEND=jax .venv/bin/python benchmarks/bench_cores.py [--rounds 3] [--epochs 4]
    .venv/bin/python benchmarks/bench_cores.py --tf
"""

import argparse
import os
import statistics
import sys

os.environ["KERAS_BACKEND"] = (
    "tensorflow" if "--tf" in sys.argv else os.environ.get("KERAS_BACKEND", "jax")
)

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from epoch_timer import EpochTimer

from keraseq import Estimator

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
    return keras.Sequential(
        [
            keras.Input((None, features)),
            keras.layers.LSTM(units, return_sequences=True),
            keras.layers.Dense(1),
        ]
    )


def measure(make_estimator, modes, x, y, rounds):
    """Steady epoch times per mode (the first epoch of each fit is not timed)."""
    times = {mode: [] for mode in modes}
    for rnd in range(rounds):
        for mode in modes if rnd % 2 == 0 else modes[::-1]:
            timer = EpochTimer()
            est = make_estimator(mode, timer).fit(x, y)
            times[mode] += timer.times[1:]
    return [statistics.median(times[m]) for m in modes], est.model_.count_params()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tf", action="store_true", help="TensorFlow: graph against XLA")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=4, help="per fit; the first is not timed")
    ap.add_argument("--sizes", default=",".join(s[0] for s in SIZES))
    args = ap.parse_args()
    if args.tf:
        from keraseq.backend import tensorflow as backend

        modes = [True, False]
        names = ("XLA", "graph")
        print(
            f"TensorFlow, {backend.common.usable_cores()} core(s); GRAPH_MIN_WORK = "
            f"{backend.GRAPH_MIN_WORK:,}"
        )
    else:
        if keras.backend.backend() != "jax":
            sys.exit("run with KERAS_BACKEND=jax (or --tf)")
        import jax

        from keraseq.backend.jax import rows as backend

        modes = [10**18, 0]  # MIN_WORK_PER_DEVICE: never split, always split
        names = ("one device", "rows split")
        rule = backend.MIN_WORK_PER_DEVICE
        n_dev = len(jax.devices("cpu"))
        print(f"JAX, {n_dev} CPU device(s); MIN_WORK_PER_DEVICE = {rule:,}")
        if n_dev < 2:
            sys.exit("one CPU device: nothing to compare (KERASEQ_CPU_DEVICES=1, or one core)")
    rows = []
    for name, units, features, T, batch, window, N in SIZES:
        if name not in args.sizes.split(","):
            continue
        rng = np.random.default_rng(0)
        x = rng.normal(size=(N, T, features)).astype("float32")
        y = np.cumsum(x[..., :1], axis=1).astype("float32") / np.sqrt(T)

        def make_estimator(mode, timer):
            if args.tf:
                jit = mode
            else:
                backend.MIN_WORK_PER_DEVICE, jit = mode, "auto"
            return Estimator(
                model(units, features),
                seq_len=window,
                batch_size=batch,
                epochs=args.epochs,
                verbose=0,
                random_state=0,
                jit_compile=jit,
                callbacks=[timer],
            )

        (first, second), params = measure(make_estimator, modes, x, y, args.rounds)
        work = batch * window * params
        if args.tf:
            pick = "graph" if not backend.jit_for(model(units, features), "auto", work) else "XLA"
        else:
            backend.MIN_WORK_PER_DEVICE = rule
            k = backend.row_replicas(batch, work)
            pick = f"split ({k} devices)" if k > 1 else "one device"
        rows.append((name, work, first, second, pick))
    print(
        f"{'size':<10} {'work/window':>13} {names[0]:>11} {names[1]:>11} {'speed-up':>9}  "
        f"keraseq picks"
    )
    for name, work, first, second, pick in rows:
        print(
            f"{name:<10} {work:>13,} {first:>10.3f}s {second:>10.3f}s {first / second:>8.2f}x  "
            f"{pick}"
        )


if __name__ == "__main__":
    main()
