"""The windows' self-check (``keraseq/selfcheck.py``): what it adds to a first epoch.

Side by side in one run, on the backend of ``KERAS_BACKEND``, at the seed and realistic sizes
of ``bench_peers.py`` (and the character LM's model, on random ids), each measurement in a
fresh process (nothing compiled or reused before it), interleaved over ``--rounds`` rounds:
the first epoch of ``fit`` (its compile included) with ``window_check="off"`` and with
``"warn"``, and the time the check itself took inside the latter (``window_check`` timed
where the fit calls it). Prints the check's share of the first epoch (the target: at most
2 %; the "warn"/"off" ratio is the same figure through the noise of two whole fits).

    python benchmarks/bench_selfcheck.py
    KERAS_BACKEND=jax python benchmarks/bench_selfcheck.py --rounds 3
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
import numpy as np

from keraseq import Estimator

#: (features, units, T, batch, window, N, vocabulary or None)
WORKLOADS = {
    "seed": (10, 10, 1000, 20, 10, 200, None),
    "realistic": (32, 128, 200, 64, 20, 256, None),
    "lm": (32, 128, 1000, 32, 50, 32, 80),
}


def build(f, units, vocab):
    keras.utils.set_random_seed(0)
    if vocab:
        layers = [keras.Input((None,), dtype="int32"), keras.layers.Embedding(vocab, f)]
        out = keras.layers.Dense(vocab)
    else:
        layers = [keras.Input((None, f))]
        out = keras.layers.Dense(1)
    return keras.Sequential(layers + [keras.layers.LSTM(units, return_sequences=True), out])


def data(f, t, n, vocab):
    rng = np.random.default_rng(0)
    if vocab:
        x = rng.integers(0, vocab, size=(n, t))
        return x, rng.integers(0, vocab, size=(n, t))
    x = rng.normal(size=(n, t, f)).astype("float32")
    return x, (x[..., :1].cumsum(1) / 10).astype("float32")


def first_epoch(workload, mode) -> float:
    f, units, t, batch, window, n, vocab = WORKLOADS[workload]
    x, y = data(f, t, n, vocab)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True) if vocab else "mse"
    est = Estimator(
        lambda: build(f, units, vocab),
        loss,
        "adam",
        epochs=1,
        batch_size=batch,
        seq_len=window,
        verbose=0,
        random_state=0,
        window_check=mode,
    )
    import keraseq.session

    inside = []  # the check's own time inside the fit
    check = keraseq.session.window_check

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return check(*args, **kwargs)
        finally:
            inside.append(time.perf_counter() - t0)

    keraseq.session.window_check = timed
    t0 = time.perf_counter()
    est.fit(x, y)
    return time.perf_counter() - t0, sum(inside)


def measured(workload, mode) -> tuple[float, float]:
    """``(first epoch, the check's part of it)`` in seconds, ``window_check=mode``, in a fresh
    process."""
    out = subprocess.run(
        [sys.executable, __file__, "--one", workload, mode],
        capture_output=True,
        text=True,
        check=True,
    )
    epoch, check = out.stdout.strip().splitlines()[-1].split()
    return float(epoch), float(check)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default="seed,realistic,lm")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(*first_epoch(*args.one))
        return
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}")
    for workload in args.workloads.split(","):
        off, on, inside = [], [], []
        for _ in range(args.rounds):
            off.append(measured(workload, "off")[0])
            epoch, check = measured(workload, "warn")
            on.append(epoch)
            inside.append(check)
        o, w, a = (statistics.median(v) for v in (off, on, inside))
        print(
            f"{workload:10s} first epoch off {o:6.2f} s  warn {w:6.2f} s  "
            f"(ratio {w / o:.3f})  the check inside it {a * 1e3:6.1f} ms = "
            f"{100 * a / o:.2f} % of the first epoch"
        )


if __name__ == "__main__":
    main()
