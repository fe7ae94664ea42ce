"""Run under mpirun. Mode "files": callbacks that write files run on rank 0 only.
Mode "raise": rank 1 raises during training; every rank must exit (Abort), none may hang.
Mode "stop": a callback stops training on rank 1 only; every rank must stop with it.
Mode "check": the windows' self-check compares windows on rank 0 only (rank 1's series are too
short); the warm fit and the predict after it must not check on one rank alone."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
import numpy as np
from mpi4py import MPI

from keraseq import Estimator

mode, folder = sys.argv[1], sys.argv[2]
rank = MPI.COMM_WORLD.Get_rank()
keras.utils.set_random_seed(0)
model = keras.Sequential(
    [keras.Input((None, 2)), keras.layers.GRU(4, return_sequences=True), keras.layers.Dense(1)]
)
x = np.random.default_rng(0).normal(size=(16, 12, 2)).astype("float32")
y = x[..., :1].cumsum(1)


class Boom(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if rank == 1 and epoch == 1:
            raise RuntimeError("injected failure on rank 1")


est = Estimator(
    model, "mse", "adam", epochs=3, batch_size=4, seq_len=4, verbose=1, jit_compile=False
)
if mode == "files":
    est.fit(
        x,
        y,
        callbacks=[
            keras.callbacks.CSVLogger(os.path.join(folder, f"log_{rank}.csv")),
            keras.callbacks.ModelCheckpoint(os.path.join(folder, f"ckpt_{rank}.keras")),
        ],
    )
    print(f"rank {rank} done")
elif mode == "stop":

    class StopOnRank1(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if rank == 1 and batch == 1:
                self.model.stop_training = True

    est.fit(x, y, callbacks=[StopOnRank1()])
    print(f"rank {rank} stopped after {len(est.history_['loss'])} epoch(s)", flush=True)
elif mode == "check":
    lengths = np.array([12] * 8 + [5] * 8)  # rank 1's rows: shorter than two windows of 4
    est.set_params(window_check="raise", epochs=1, verbose=0)
    est.fit(x, y, lengths=lengths)
    est.partial_fit(x, y, lengths=lengths)
    shape = est.predict(x, lengths=lengths).shape
    print(f"rank {rank} checked, trained on and predicted {shape}", flush=True)
else:
    est.fit(x, y, callbacks=[Boom()])
    print(f"rank {rank} finished without failing", flush=True)
