"""Which Allreduce path a run takes, said once (run by tests/test_mpi.py under mpirun).

    python allreduce_path.py [--without-mpi4jax]

Fits a small LSTM twice with the ``keraseq`` logger at INFO; rank 0 prints ``LOG <message>``
for each record and ``WARN <message>`` for each warning. ``--without-mpi4jax`` makes
``import mpi4jax`` fail, as when it is not installed.
"""

import logging
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "--without-mpi4jax" in sys.argv:
    sys.modules["mpi4jax"] = None  # import mpi4jax raises ImportError

import keras
import numpy as np

from keraseq import Estimator, distributed

records = []


class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())


logging.getLogger("keraseq").addHandler(Keep())
logging.getLogger("keraseq").setLevel(logging.INFO)
rng = np.random.default_rng(0)
x = rng.normal(size=(8, 6, 2)).astype("float32")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(2):
        model = keras.Sequential(
            [keras.Input((None, 2)), keras.layers.LSTM(3, return_sequences=True)]
        )
        Estimator(model, epochs=1, batch_size=2, seq_len=3, verbose=0).fit(x, x[..., :1] * 0)
if distributed.rank() == 0:
    for message in records:
        print(f"LOG {message}", flush=True)
    for w in caught:
        if "Allreduce" in str(w.message):
            print(f"WARN {w.message}", flush=True)
