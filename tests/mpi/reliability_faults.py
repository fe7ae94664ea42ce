"""Faults injected under mpirun; no rank may hang. ``python reliability_faults.py MODE OUT_DIR``.

MODE:
  sigkill   rank 1 kills itself with SIGKILL at the start of epoch 2 (index 1): mpirun must end.
  nan_rank1 NaN only in rows of rank 1's block: ``fit`` raises ValueError on every rank (through
            ``distributed.agree``); the uncaught error aborts the job.
  ids       a token id outside the Embedding only in rank 1's rows (arrays), then only in rank 1's
            second batch (each rank its own pipeline): ``fit`` raises ValueError on every rank
            before any step; each rank prints ``rank R arrays|pipeline: <message>``.
  overflow  rank 1's last rows hold values 10x larger, with a linear/ReLU model and a high
            learning rate: the averaged updates diverge until the loss overflows (rank 0's own
            data stays tame); every rank must stop with ``NonFiniteLossError`` at the same
            epoch/minibatch/window with identical, finite weights. Rank 0 writes
            ``overflow.json`` (every rank's message, whether the weights agree, and the same fit
            in one process on the union minibatches); add ``jit`` as a third argument for XLA.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
import numpy as np

from keraseq import Estimator, NonFiniteLossError, distributed

mode, folder = sys.argv[1], sys.argv[2]
jit = len(sys.argv) > 3 and sys.argv[3] == "jit"
comm = distributed.get_comm("auto")
rank = comm.rank
assert comm.size == 2, "run with mpirun -np 2"


class KillRank1(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if rank == 1 and epoch == 1:
            print("rank 1 kills itself with SIGKILL", flush=True)
            os.kill(os.getpid(), 9)


rng = np.random.default_rng(0)
keras.utils.set_random_seed(0)
if mode in ("sigkill", "nan_rank1"):
    model = keras.Sequential(
        [keras.Input((None, 2)), keras.layers.GRU(4, return_sequences=True), keras.layers.Dense(1)]
    )
    x = rng.normal(size=(16, 12, 2)).astype("float32")
    y = x[..., :1].cumsum(1)
    callbacks = []
    if mode == "nan_rank1":
        x[13, 5, 1] = np.nan  # rows 8..15 are rank 1's block; rank 0's rows are clean
    else:
        callbacks = [KillRank1()]
    est = Estimator(
        model, "mse", "adam", epochs=3, batch_size=4, seq_len=4, verbose=0, jit_compile=False
    )
    est.fit(x, y, callbacks=callbacks)
    print(f"rank {rank} finished without failing", flush=True)
elif mode == "ids":

    def token_model():
        return keras.Sequential(
            [
                keras.Input((None,), dtype="int32"),
                keras.layers.Embedding(10, 3, name="emb"),
                keras.layers.GRU(4, return_sequences=True),
                keras.layers.Dense(1),
            ]
        )

    x = rng.integers(0, 10, size=(16, 12))
    y = rng.normal(size=(16, 12, 1)).astype("float32")
    x[13, 5] = 10  # rows 8..15 are rank 1's block
    kw = dict(epochs=1, batch_size=4, seq_len=4, verbose=0)
    try:
        Estimator(token_model, "mse", "adam", **kw).fit(x, y)
        print(f"rank {rank} arrays: no error", flush=True)
    except ValueError as exc:
        print(f"rank {rank} arrays: {exc}", flush=True)
    x[13, 5] = 0
    own = x[rank * 8 : rank * 8 + 8].copy()
    if rank == 1:
        own[6, 2] = -3  # the second batch of rank 1's pipeline
    batches = [(own[k : k + 4], y[k : k + 4]) for k in (0, 4)]
    try:
        Estimator(token_model, "mse", "adam", **kw).fit(batches)
        print(f"rank {rank} pipeline: no error", flush=True)
    except ValueError as exc:
        print(f"rank {rank} pipeline: {exc}", flush=True)
elif mode == "overflow":

    def model():
        keras.utils.set_random_seed(0)
        return keras.Sequential(
            [
                keras.Input((None, 3)),
                keras.layers.Dense(8, activation="relu"),
                keras.layers.Dense(1),
            ]
        )

    x = rng.normal(size=(16, 10, 3)).astype("float32")
    y = x.sum(-1, keepdims=True).astype("float32")
    x[12:16] *= 10.0  # only in rank 1's block (rows 8..15): its last minibatch
    y[12:16] *= 10.0

    def fit(est, x, y):
        try:
            est.fit(x, y)
        except NonFiniteLossError as exc:
            return str(exc)
        return None

    est = Estimator(
        model(),
        "mse",
        keras.optimizers.SGD(0.05),
        epochs=4,
        batch_size=2,
        seq_len=5,
        shuffle=False,
        verbose=0,
        random_state=0,
        jit_compile=jit,
    )
    message = fit(est, x, y)
    weights = np.concatenate([np.ravel(w) for w in est.model_.get_weights()])
    everything = comm.comm.gather((message, weights), root=0)
    if rank == 0:
        # One process with the union minibatches (rank 0's i-th next to rank 1's i-th).
        order = np.concatenate(
            [np.r_[2 * i : 2 * i + 2, 8 + 2 * i : 8 + 2 * i + 2] for i in range(4)]
        )
        single = Estimator(
            model(),
            "mse",
            keras.optimizers.SGD(0.05),
            epochs=4,
            batch_size=4,
            seq_len=5,
            shuffle=False,
            verbose=0,
            random_state=0,
            jit_compile=jit,
            distributed=False,
        )
        single_message = fit(single, x[order], y[order])
        single_w = np.concatenate([np.ravel(w) for w in single.model_.get_weights()])
        with open(os.path.join(folder, "overflow.json"), "w") as f:
            json.dump(
                {
                    "messages": [m for m, _ in everything],
                    "identical": all(
                        np.array_equal(everything[0][1], w) for _, w in everything[1:]
                    ),
                    "finite": all(bool(np.isfinite(w).all()) for _, w in everything),
                    "single_message": single_message,
                    "rel_diff_single": float(
                        np.abs(single_w - weights).max() / max(np.abs(single_w).max(), 1e-30)
                    ),
                    "max_abs_weight": float(np.abs(weights).max()),
                },
                f,
            )
    print(f"rank {rank} done: {message}", flush=True)
else:
    raise SystemExit(f"unknown mode {mode!r}")
