"""Run under mpirun: time per epoch and loss reached with sync_every=1 and sync_every=k on a
slow network, modelled by a test-only delay per Allreduce (KERASEQ_TEST_ALLREDUCE_DELAY_S; the
kernel here has no netem). The seed's task: LSTM(10), F=10, batch 20 per rank, windows of 10
steps, AdamW. Writes a JSON report from rank 0 to argv[1]; argv[2] = k; optional argv[3] = T
(200), argv[4] = series in all (20 per rank), argv[5] = epochs (3). The seed's full size:
T=1000, N=200, 2 epochs.
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
import numpy as np
from mpi4py import MPI

from keraseq import Estimator

out_path, k = sys.argv[1], int(sys.argv[2])
comm = MPI.COMM_WORLD
rng = np.random.default_rng(0)
t = int(sys.argv[3]) if len(sys.argv) > 3 else 200
n = int(sys.argv[4]) if len(sys.argv) > 4 else 20 * comm.Get_size()
epochs = int(sys.argv[5]) if len(sys.argv) > 5 else 3
f = 10
x = rng.normal(size=(n, t, f)).astype("float32")
# A target with one step of memory: y_t = (x_t,0 + x_{t-1},1) / 2.
y = np.zeros((n, t, 1), "float32")
y[:, :, 0] = x[:, :, 0] / 2
y[:, 1:, 0] += x[:, :-1, 1] / 2


class EpochTimes(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.t0)

    def on_train_begin(self, logs=None):
        self.times = []


report = {}
for sync in (1, k):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((None, f)),
            keras.layers.LSTM(10, return_sequences=True),
            keras.layers.Dense(1),
        ]
    )
    timer = EpochTimes()
    est = Estimator(
        model,
        "mse",
        keras.optimizers.AdamW(3e-3),
        epochs=epochs,
        batch_size=20,
        seq_len=10,
        shuffle=False,
        verbose=0,
        jit_compile=False,
        sync_every=sync,
    ).fit(x, y, callbacks=[timer])
    report[f"k{sync}"] = {
        "epoch_times": timer.times,
        "loss": est.history_["loss"],
        "updates": int(est.optimizer_.iterations.numpy()),
    }
if comm.Get_rank() == 0:
    report["ranks"] = comm.Get_size()
    report["delay_s"] = float(os.environ.get("KERASEQ_TEST_ALLREDUCE_DELAY_S", "0"))
    with open(out_path, "w") as fh:
        json.dump(report, fh)
