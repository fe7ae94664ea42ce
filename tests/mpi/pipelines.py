"""Run under mpirun: pipelines, each rank reading its own shard == one process on the union
minibatches.

argv[1]: the JSON report (rank 0); argv[2]: "tf.data" (each rank shards one dataset with
``.shard(size, rank)``: known length) or "generator" (each rank's own iterable of batches
made by a generator, of unknown length, rank 0 one batch more than the others: the ranks agree
step by step, none hangs) or "too-large" (rank 1's second batch is larger than its first:
every rank raises the ValueError, none trains on, none hangs; no report).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
import numpy as np
from mpi4py import MPI

from keraseq import Estimator
from keraseq.utils import net2vec

out_path, mode = sys.argv[1], sys.argv[2]
comm = MPI.COMM_WORLD
k, rank = comm.Get_size(), comm.Get_rank()
B, T = 4, 9

if mode == "too-large":  # rank 1's second batch has more rows than its first: every rank raises
    x = np.zeros((12, T, 3), "float32")
    sizes = [B, B] if rank == 0 else [B, B + 2]
    parts = [(x[: sizes[0]], x[: sizes[0], :, :2]), (x[: sizes[1]], x[: sizes[1], :, :2])]
    est = Estimator(
        keras.Sequential([keras.Input((None, 3)), keras.layers.GRU(2, return_sequences=True)]),
        "mse",
        "sgd",
        batch_size=B,
        seq_len=3,
        verbose=0,
        distributed=comm,
    )
    try:
        est.fit(parts)
        print(f"rank {rank} trained", flush=True)
    except ValueError as exc:
        print(f"rank {rank} raised ValueError: {exc}", flush=True)
    sys.exit(0)


def model():
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [keras.Input((None, 3)), keras.layers.LSTM(5, return_sequences=True), keras.layers.Dense(2)]
    )


rng = np.random.default_rng(0)
n = 24 if mode == "tf.data" else 20
x = rng.normal(size=(n, T, 3)).astype("float32")
y = np.stack([np.cumsum(x[..., 0], 1), x[..., 1] * x[..., 2]], -1).astype("float32") / 5
w = np.linspace(0.5, 1.5, n).astype("float32")

if mode == "tf.data":
    rows = [np.arange(r, n, k) for r in range(k)]  # what .shard(k, r) keeps
else:  # rank 0: 3 batches of B, the others 2 (unequal, unknown length)
    sizes = [3 * B if r == 0 else 2 * B for r in range(k)]
    starts = np.cumsum([0] + sizes)
    rows = [np.arange(starts[r], starts[r + 1]) for r in range(k)]
    assert starts[-1] == n, (starts, n)


def source():
    if mode == "tf.data":
        import tensorflow as tf

        return tf.data.Dataset.from_tensor_slices((x, y, w)).shard(k, rank).batch(B)
    mine = rows[rank]

    class Batches:  # re-iterable, no length: read anew each epoch, the count found by running
        def __iter__(self):
            return (
                (x[mine[i : i + B]], y[mine[i : i + B]], w[mine[i : i + B]])
                for i in range(0, len(mine), B)
            )

    return Batches()


kw = dict(epochs=2, seq_len=4, shuffle=False, verbose=0, metrics=["mae"])
est = Estimator(
    model(), "mse", keras.optimizers.Adam(0.01), batch_size=B, distributed=comm, **kw
).fit(source())
wv = net2vec(est.model_)
all_w = comm.gather(wv, root=0)
if rank == 0:
    steps = max(-(-len(r) // B) for r in rows)
    # One process: minibatch i = the ranks' minibatches i side by side.
    single_batches = []
    for i in range(steps):
        part = np.concatenate([r[i * B : (i + 1) * B] for r in rows])
        single_batches.append((x[part], y[part], w[part]))
    single = Estimator(
        model(), "mse", keras.optimizers.Adam(0.01), batch_size=k * B, distributed=False, **kw
    ).fit(single_batches)
    report = {
        "max_diff": float(np.max(np.abs(wv - net2vec(single.model_)))),
        "identical_across_ranks": all(np.array_equal(all_w[0], a) for a in all_w[1:]),
        "history_mpi": est.history_,
        "history_single": single.history_,
    }
    with open(out_path, "w") as f:
        json.dump(report, f)
