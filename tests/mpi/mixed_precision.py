"""Run under mpirun: mixed_float16 (compile wraps the DistributedOptimizer in a
LossScaleOptimizer) on K ranks with batch B == one process with batch K*B, within float16's
precision; every rank holds the same weights. Writes a JSON report from rank 0 to argv[1]."""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
import numpy as np
from mpi4py import MPI

from keraseq import Estimator
from keraseq.utils import net2vec

comm = MPI.COMM_WORLD
k, batch, n = comm.Get_size(), 4, 16
keras.mixed_precision.set_global_policy("mixed_float16")


def model():
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input((None, 3)),
            keras.layers.LSTM(6, return_sequences=True),
            keras.layers.Dense(2, dtype="float32"),
        ]
    )


rng = np.random.default_rng(0)
x = rng.normal(size=(n, 12, 3)).astype("float32")
y = (x[..., :2] * 0.5).astype("float32")
kw = dict(epochs=2, seq_len=5, shuffle=False, verbose=0)
est = Estimator(
    model(), "mse", keras.optimizers.SGD(0.1), batch_size=batch, distributed=comm, **kw
).fit(x, y)
w = net2vec(est.model_)
all_w = comm.gather(w, root=0)
if comm.Get_rank() == 0:
    block = n // k  # the ranks' minibatches i side by side: one process's minibatch i
    order = np.concatenate(
        [
            np.arange(r * block, (r + 1) * block)[i * batch : (i + 1) * batch]
            for i in range(block // batch)
            for r in range(k)
        ]
    )
    single = Estimator(
        model(), "mse", keras.optimizers.SGD(0.1), batch_size=k * batch, distributed=False, **kw
    ).fit(x[order], y[order])
    with open(sys.argv[1], "w") as f:
        json.dump(
            {
                "max_diff": float(np.abs(w - net2vec(single.model_)).max()),
                "moved": float(np.abs(w - net2vec(model())).max()),
                "identical_across_ranks": all(np.array_equal(all_w[0], a) for a in all_w[1:]),
                "optimizer": type(est.optimizer_).__name__,
                "backend": keras.backend.backend(),
            },
            f,
        )
