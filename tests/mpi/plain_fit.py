"""Run under mpirun: DistributedOptimizer + BroadcastWeightsCallback with plain model.fit.

Each rank has different data; after one SGD step every rank must hold
w0 - lr * mean_over_ranks(grad_r), computed independently from the per-rank gradients."""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
import numpy as np
from mpi4py import MPI

from keraseq.distributed import BroadcastWeightsCallback, DistributedOptimizer
from keraseq.utils import net2grad, net2vec

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
keras.utils.set_random_seed(100 + rank)  # different initial weights: the broadcast must fix it
model = keras.Sequential([keras.Input((5, 3)), keras.layers.LSTM(4), keras.layers.Dense(1)])
rng = np.random.default_rng(rank)
x = rng.normal(size=(8, 5, 3)).astype("float32")
y = rng.normal(size=(8, 1)).astype("float32")

w_root = comm.bcast(model.get_weights() if rank == 0 else None, root=0)
probe = keras.models.clone_model(model)
probe.set_weights(w_root)
grad = net2grad(probe, x, y, "mse")
mean_grad = comm.allreduce(grad, op=MPI.SUM) / comm.Get_size()
expected = net2vec(probe) - 0.1 * mean_grad

opt = DistributedOptimizer(keras.optimizers.SGD(0.1))
# TensorFlow: the reduction is a host call, outside XLA; JAX: mpi4jax inside the jitted step.
model.compile(opt, "mse", jit_compile=keras.backend.backend() == "jax")
model.fit(
    x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[BroadcastWeightsCallback()]
)
got = net2vec(model)
all_got = comm.gather(got, root=0)
if rank == 0:
    path = sys.argv[1]
    model.save(path + ".keras")
    with open(path, "w") as f:
        json.dump(
            {
                "max_diff": float(np.abs(got - expected).max()),
                "identical": all(np.array_equal(all_got[0], g) for g in all_got[1:]),
                "class_name": type(opt).__name__,
                "module": type(opt).__module__,
            },
            f,
        )
