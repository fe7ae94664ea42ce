"""Run under mpirun: fit, predict and score read only the rank's own rows of x and y."""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import h5py
import keras
import numpy as np
from mpi4py import MPI

from keraseq import Estimator, distributed

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
folder = sys.argv[1]
n = 23
if rank == 0:
    rng = np.random.default_rng(0)
    with h5py.File(os.path.join(folder, "d.h5"), "w") as f:
        x = rng.normal(size=(n, 12, 2)).astype("float32")
        f["x"], f["y"] = x, x[..., :1].cumsum(1)
comm.Barrier()


class RowRecorder:
    """Wrap an h5py dataset; record every row index read."""

    def __init__(self, d):
        self.d, self.shape, self.dtype, self.ndim = d, d.shape, d.dtype, d.ndim
        self.rows = set()

    def __getitem__(self, key):
        rows = key[0] if isinstance(key, tuple) else key
        if isinstance(rows, slice):
            self.rows.update(range(*rows.indices(self.shape[0])))
        else:
            self.rows.update(int(r) for r in np.atleast_1d(rows))
        return self.d[key]


with h5py.File(os.path.join(folder, "d.h5"), "r") as f:
    x, y = RowRecorder(f["x"]), RowRecorder(f["y"])
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((None, 2)), keras.layers.GRU(3, return_sequences=True), keras.layers.Dense(1)]
    )
    est = Estimator(
        model,
        "mse",
        "adam",
        epochs=2,
        batch_size=4,
        seq_len=5,
        verbose=0,
        shuffle=True,
        random_state=0,
        predict_batch_size=3,
    )
    est.fit(x, y)
    pred = est.predict(x)
    r2 = est.score(x, y)
    lo, hi = distributed.shard(n, distributed.get_comm())
    report = {
        "rank": rank,
        "block": [lo, hi],
        "x_rows": sorted(x.rows),
        "y_rows": sorted(y.rows),
        "pred_shape": list(pred.shape),
        "r2": r2,
    }
reports = comm.gather(report, root=0)
if rank == 0:
    with open(os.path.join(folder, "reads.json"), "w") as f:
        json.dump(reports, f)
