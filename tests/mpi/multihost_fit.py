"""One training run for the multi-host tests (``tests/test_multihost.py``); runs under mpirun.

    python multihost_fit.py OUT_DIR BACKUP_DIR [--pause-at EPOCH] [--reference]

K ranks with batch B fit an LSTM with ``keraseq.callbacks.BackupAndRestore(BACKUP_DIR)`` (XLA:
the Allreduce is the custom call inside the compiled window loop). Every rank writes
``weights_<rank>.npy`` (model weights), ``optimizer_<rank>.npy`` (optimizer variables) and
``report_<rank>.json`` (hostname, size of its node group, history, epochs run).

``--pause-at E``: rank 0 trains the first minibatch of epoch E (0-based), prints ``PAUSED E``
and sleeps, so that the test can kill a rank mid-epoch; once only (a flag file in OUT_DIR), so
the restart runs the very same command and resumes from the backup.

``--reference``: after the fit, a distributed ``predict`` (each rank predicts its block, every
rank returns the whole result) compared with Keras's whole-series predict, and on rank 0 the
same fit in one process with batch K*B on the union minibatches (rank r's i-th minibatch side
by side); rank 0 writes ``reference.json``.
"""

import argparse
import json
import os
import socket
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
import numpy as np
from mpi4py import MPI

import keraseq
from keraseq import Estimator, _mpi_xla

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("backup")
parser.add_argument("--pause-at", type=int)
parser.add_argument("--reference", action="store_true")
args = parser.parse_args()

comm = MPI.COMM_WORLD
rank, k = comm.Get_rank(), comm.Get_size()
N, BATCH, EPOCHS = 24, 4, 3


def model():
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [keras.Input((None, 3)), keras.layers.LSTM(6, return_sequences=True), keras.layers.Dense(2)]
    )


def estimator(distributed, batch):
    return Estimator(
        model(),
        "mse",
        keras.optimizers.Adam(0.01),
        epochs=EPOCHS,
        batch_size=batch,
        seq_len=5,
        shuffle=False,
        verbose=0,
        jit_compile=True,
        distributed=distributed,
    )


rng = np.random.default_rng(0)
x = rng.normal(size=(N, 15, 3)).astype("float32")
y = np.stack([np.cumsum(x[..., 0], 1), x[..., 1] * x[..., 2]], -1).astype("float32") / 5


class Pause(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        if rank == 0:
            print(f"EPOCH_BEGIN {epoch}", flush=True)

    def on_train_batch_begin(self, batch, logs=None):
        if rank == 0 and self.epoch == args.pause_at and batch == 1:
            flag = os.path.join(args.out, "paused_once")
            if not os.path.exists(flag):
                open(flag, "w").close()
                print(f"PAUSED {args.pause_at}", flush=True)
                time.sleep(600)


os.makedirs(args.out, exist_ok=True)
est = estimator(comm, BATCH)
est.fit(x, y, callbacks=[keraseq.callbacks.BackupAndRestore(args.backup), Pause()])
weights = np.concatenate([np.ravel(w) for w in est.model_.get_weights()])
opt_vars = np.concatenate([np.ravel(np.asarray(v)) for v in est.optimizer_.variables])
np.save(os.path.join(args.out, f"weights_{rank}.npy"), weights)
np.save(os.path.join(args.out, f"optimizer_{rank}.npy"), opt_vars)
node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
with open(os.path.join(args.out, f"report_{rank}.json"), "w") as f:
    json.dump(
        {
            "hostname": socket.gethostname(),
            "node_size": node.Get_size(),
            "size": k,
            "history": est.history_,
            "n_epochs": est.n_epochs_,
            "xla_allreduce": _mpi_xla._lib is not None,
            "xla_error": _mpi_xla._lib_error,
        },
        f,
    )

if args.reference:
    pred = est.predict(x, batch_size=3)
    full = np.asarray(est.model_.predict(x, verbose=0))  # whole series == windows with carry
    pred_diff = comm.allreduce(float(np.abs(pred - full).max()), op=MPI.MAX)
    all_w = comm.gather(weights, root=0)
    if rank == 0:
        bounds = [
            (r * (N // k) + min(r, N % k), (r + 1) * (N // k) + min(r + 1, N % k)) for r in range(k)
        ]
        steps = max(-(-(hi - lo) // BATCH) for lo, hi in bounds)
        order = np.concatenate(
            [
                np.arange(lo, hi)[i * BATCH : (i + 1) * BATCH]
                for i in range(steps)
                for lo, hi in bounds
            ]
        )
        single = estimator(False, k * BATCH).fit(x[order], y[order])
        ws = np.concatenate([np.ravel(w) for w in single.model_.get_weights()])
        with open(os.path.join(args.out, "reference.json"), "w") as f:
            json.dump(
                {
                    "max_diff": float(np.abs(weights - ws).max()),
                    "identical_across_ranks": all(np.array_equal(all_w[0], w) for w in all_w[1:]),
                    "history_mpi": est.history_,
                    "history_single": single.history_,
                    "predict_shape": list(pred.shape),
                    "predict_max_diff": pred_diff,
                },
                f,
            )
print(f"FINISHED rank {rank} on {socket.gethostname()}", flush=True)
