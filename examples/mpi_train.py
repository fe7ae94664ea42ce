"""Template for distributed training (the seed's test/mpi.jl): run with

    mpirun -np 4 python examples/mpi_train.py

The same script runs unchanged as one process (python examples/mpi_train.py). Every rank runs
all of it; keraseq shards the series, averages the gradients and logs on rank 0 only.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras
import numpy as np

from keraseq import Estimator, distributed

# ... code to load data: every rank may open the same file; keraseq reads only its own rows
F, N, T = 10, 400, 200
rng = np.random.default_rng(0)
x = rng.normal(size=(N, T, F)).astype("float32")
y = (np.cumsum(x[..., :1], axis=1) / 10).astype("float32")

# ... code to define est
model = keras.Sequential(
    [keras.Input((None, F)), keras.layers.LSTM(10, return_sequences=True), keras.layers.Dense(1)]
)
est = Estimator(model, "mse", keras.optimizers.AdamW(1e-3), epochs=2, batch_size=20, seq_len=10)
est.fit(x, y)

# ... code to predict: like fit, predict and score are collective under MPI (every rank calls
# them, each predicts its block); every rank gets the full result
yhat = est.predict(x)
r2 = est.score(x, y)
if distributed.rank() == 0:
    print(f"{distributed.size()} rank(s); R^2 on the training data: {r2:.3f}")
os.makedirs("out", exist_ok=True)
est.save("out/mpi_model.keras")  # written by rank 0 only
