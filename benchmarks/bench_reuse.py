"""Compile once, not per fit: a 3-fold x 4-candidate GridSearchCV (12 fits + the refit) with
keraseq's reuse of compiled window loops (``keraseq/reuse.py``) and without it
(``KERASEQ_REUSE_STEPS=0``), side by side in one process; prints compiles and the time ratio.

    .venv/bin/python benchmarks/bench_reuse.py
"""

import os
import time

import keras
import numpy as np
from sklearn.model_selection import GridSearchCV

from keraseq import Estimator, reuse


def grid(x, y, model):
    before = reuse.stats()
    t = time.perf_counter()
    GridSearchCV(
        Estimator(model, epochs=1, batch_size=8, seq_len=5, verbose=0, random_state=0),
        {"optimizer__learning_rate": [1e-3, 3e-3], "shuffle": [True, False]},
        cv=3,
    ).fit(x, y)
    return time.perf_counter() - t, reuse.stats()["compiled"] - before["compiled"]


def main():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((None, 3)), keras.layers.LSTM(8, return_sequences=True), keras.layers.Dense(1)]
    )
    rng = np.random.default_rng(0)
    x = rng.random((30, 20, 3), dtype=np.float32)
    y = (np.cumsum(x[..., :1], 1) / 5).astype("float32")
    os.environ["KERASEQ_REUSE_STEPS"] = "1"
    t_on, c_on = grid(x, y, model)
    reuse.clear()
    os.environ["KERASEQ_REUSE_STEPS"] = "0"
    t_off, c_off = grid(x, y, model)
    print(f"reuse on : {t_on:7.1f} s, {c_on} compile(s)")
    print(f"reuse off: {t_off:7.1f} s, {c_off} compile(s)")
    print(f"ratio off/on = {t_off / t_on:.2f}x")


if __name__ == "__main__":
    main()
