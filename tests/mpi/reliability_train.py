"""A deterministic training run for the reliability tests; runs as one process or under mpirun.

    python reliability_train.py OUT_DIR [--backup DIR] [--double] [--pause-at EPOCH]
                                [--dropout] [--epochs E] [--jit] [--kill-in-save EPOCH:K]
                                [--atomic] [--global-batch G]

Trains a small GRU with ``random_state`` set, ``keras.utils.set_random_seed`` and
``shuffle=True``. With ``--backup`` a ``keras.callbacks.BackupAndRestore(DIR)`` is passed to
``fit`` (``--double``: ``double_checkpoint=True``). With ``--pause-at E`` rank 0 trains the first
minibatch of epoch E (0-based), prints ``PAUSED <E>`` and sleeps, so that the test can kill the
run in the middle of an epoch (the weights then hold one update that no backup has seen); it
pauses once (a flag file in OUT_DIR), so the restart runs the very same command.
``--kill-in-save EPOCH:K`` kills rank 0 with SIGKILL inside the backup write at the end of EPOCH,
after K variables were written (once, likewise). ``--global-batch G``: ``global_batch_size=G``
(split over the ranks) instead of ``batch_size=4`` per rank.
At the end every rank writes ``weights_<rank>.npy`` (every model weight, concatenated),
``optimizer_<rank>.npy`` (every optimizer variable) and ``report_<rank>.json``.
"""

import argparse
import json
import os
import signal
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
import numpy as np

import keraseq
from keraseq import Estimator, distributed

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--backup")
parser.add_argument("--double", action="store_true")
parser.add_argument(
    "--atomic", action="store_true", help="keraseq.callbacks.BackupAndRestore instead of Keras's"
)
parser.add_argument("--pause-at", type=int)
parser.add_argument("--dropout", action="store_true")
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--jit", action="store_true")
parser.add_argument("--random-state", type=int, default=11)
parser.add_argument(
    "--global-batch", type=int, help="global_batch_size (split over the ranks) for batch_size"
)
parser.add_argument(
    "--kill-in-save",
    help="EPOCH:K: SIGKILL this process inside the backup "
    "written at the end of EPOCH, after its K-th variable was written",
)
args = parser.parse_args()

comm = distributed.get_comm("auto")
rank = comm.rank

keras.utils.set_random_seed(3)
layers = [keras.Input((None, 2)), keras.layers.GRU(5, return_sequences=True)]
if args.dropout:
    layers.append(keras.layers.Dropout(0.3))
layers.append(keras.layers.Dense(1))
model = keras.Sequential(layers)

rng = np.random.default_rng(0)
x = rng.normal(size=(24, 12, 2)).astype("float32")
y = (np.cumsum(x[..., :1], axis=1) / 4 + 0.5 * x[..., 1:]).astype("float32")


class Markers(keras.callbacks.Callback):
    """Prints progress markers (rank 0) and pauses where asked, mid-epoch."""

    def on_epoch_end(self, epoch, logs=None):
        if rank == 0:
            print(f"EPOCH_DONE {epoch}", flush=True)

    def on_train_batch_begin(self, batch, logs=None):
        if rank == 0 and args.pause_at is not None and self._epoch == args.pause_at and batch == 1:
            flag = os.path.join(args.out, "paused_once")
            if os.path.exists(flag):  # the restart runs the same command: pause only once
                return
            os.makedirs(args.out, exist_ok=True)
            open(flag, "w").close()
            print(f"PAUSED {args.pause_at}", flush=True)
            time.sleep(600)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if rank == 0:
            print(f"EPOCH_BEGIN {epoch}", flush=True)


class KillInSave(keras.callbacks.Callback):
    """Fault injection: a real SIGKILL in the middle of BackupAndRestore's real h5 write.

    Placed before BackupAndRestore, so its on_epoch_end runs just before the backup is written;
    a profile hook counts the variables that Keras's H5IOStore writes and kills this process
    (rank 0) after the K-th. Once only (a flag file), so the restart runs the same command."""

    def __init__(self, spec):
        super().__init__()
        epoch, k = spec.split(":")
        self.epoch, self.k = int(epoch), int(k)

    def on_epoch_end(self, epoch, logs=None):
        flag = os.path.join(args.out, "killed_once")
        if rank != 0 or epoch != self.epoch or os.path.exists(flag):
            return
        os.makedirs(args.out, exist_ok=True)
        open(flag, "w").close()
        written = [0]

        def hook(frame, event, arg):
            code = frame.f_code
            if (
                event == "return"
                and code.co_name == "__setitem__"
                and code.co_filename.endswith("saving_lib.py")
            ):
                written[0] += 1
                if written[0] == self.k:
                    print(f"KILLING IN SAVE after {self.k} variables", flush=True)
                    os.kill(os.getpid(), signal.SIGKILL)

        sys.setprofile(hook)


callbacks = [Markers()]
if args.backup:
    # BackupAndRestore writes its files in on_epoch_end: after Markers printed EPOCH_DONE.
    backup_class = (
        keraseq.callbacks.BackupAndRestore if args.atomic else keras.callbacks.BackupAndRestore
    )
    callbacks.insert(0, backup_class(args.backup, double_checkpoint=args.double))
if args.kill_in_save:
    callbacks.insert(0, KillInSave(args.kill_in_save))
est = Estimator(
    model,
    "mse",
    keras.optimizers.Adam(0.02),
    epochs=args.epochs,
    batch_size=4,
    global_batch_size=args.global_batch,
    seq_len=4,
    shuffle=True,
    random_state=args.random_state,
    verbose=0,
    jit_compile=bool(args.jit),
)
est.fit(x, y, callbacks=callbacks)

weights = np.concatenate([np.ravel(w).astype(np.float64) for w in est.model_.get_weights()])
opt_vars = np.concatenate(
    [np.ravel(np.asarray(v)).astype(np.float64) for v in est.optimizer_.variables]
)
os.makedirs(args.out, exist_ok=True)
np.save(os.path.join(args.out, f"weights_{rank}.npy"), weights)
np.save(os.path.join(args.out, f"optimizer_{rank}.npy"), opt_vars)
with open(os.path.join(args.out, f"report_{rank}.json"), "w") as f:
    json.dump(
        {
            "history": est.history_,
            "n_epochs": est.n_epochs_,
            "size": comm.size,
            "finite": bool(np.isfinite(weights).all()),
        },
        f,
    )
print(f"FINISHED rank {rank}", flush=True)
sys.exit(0)
