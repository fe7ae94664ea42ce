"""Memory over many calls, for ``tests/test_soak.py`` (run as a subprocess: its resident memory
is measured alone).

    python tests/soak.py MODE CALLS WARMUP

``fit``: CALLS fits cycling over 6 programs (3 LSTM sizes x 2 window lengths), each on fresh
data with a fresh model and estimator, followed by a ``predict``, then everything dropped
(``gc.collect()``), as a hyper-parameter search does. ``predict``: CALLS ``predict`` calls of one
fitted estimator on fresh data. ``partial_fit``: CALLS ``partial_fit`` calls of one estimator.
After each call the resident set size (``/proc/self/statm``) is recorded; the script prints
``RESULT {"slope_mb": ..., "rss_mb": [...]}``: the least-squares slope of the resident memory in
MB per call over the calls after the first WARMUP (by then every program exists).
"""

import gc
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
import numpy as np

from keraseq import Estimator

PROGRAMS = [(units, seq_len) for units in (2, 3, 4) for seq_len in (4, 6)]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def estimator(units, seq_len):
    model = keras.Sequential(
        [
            keras.Input((None, 2)),
            keras.layers.LSTM(units, return_sequences=True),
            keras.layers.Dense(1),
        ]
    )
    return Estimator(model, "mse", "adam", epochs=1, batch_size=4, seq_len=seq_len, verbose=0)


def main(mode, calls, warmup):
    rng = np.random.default_rng(0)

    def data():
        x = rng.normal(size=(8, 12, 2)).astype("float32")
        return x, np.cumsum(x[..., :1], axis=1) / 4

    kept = estimator(*PROGRAMS[0]).fit(*data()) if mode != "fit" else None
    rss = []
    for i in range(calls):
        x, y = data()
        if mode == "fit":
            est = estimator(*PROGRAMS[i % len(PROGRAMS)]).fit(x, y)
            est.predict(x)
            del est
        elif mode == "predict":
            kept.predict(x)
        elif mode == "partial_fit":
            kept.partial_fit(x, y)
        else:
            raise SystemExit(f"unknown mode {mode!r}")
        gc.collect()
        rss.append(rss_mb())
    after = np.asarray(rss[warmup:])
    slope = float(np.polyfit(np.arange(len(after)), after, 1)[0])
    print("RESULT " + json.dumps({"slope_mb": slope, "rss_mb": [round(r, 2) for r in rss]}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
