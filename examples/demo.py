"""keraseq demo: forecast the Mauna Loa CO2 series (weekly, 1958-2001, shipped by statsmodels).

Trains an LSTM with truncated BPTT on the first 80 % of the series (cut into contiguous pieces,
so there are several series per minibatch), then forecasts the held-out last 20 % one week
ahead by *streaming*: ``predict(train_part)`` warms the state up, ``predict(test_part,
reset=False)`` continues from it. Prints the loss per epoch, the test RMSE against the naive
baselines (no change — the strongest —, persistence of the change, seasonal naive), and writes a
plot of the forecast against the truth.

Single process:    python examples/demo.py --out out/demo
Two MPI ranks:     mpirun -np 2 python examples/demo.py --out out/demo_mpi --compare out/demo
(The same script runs unchanged; under MPI each rank trains on its share of each update's series,
``global_batch_size``: the same updates as one process, to float32 rounding.)
"""

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# isort: off
import keraseq  # noqa: F401  (first: it loads Keras and TensorFlow, start-up lines held)
import keras

# isort: on
import numpy as np
import statsmodels.api as sm

from keraseq import Estimator, distributed
from keraseq.utils import net2vec

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="out/demo")
ap.add_argument("--epochs", type=int, default=40)
ap.add_argument("--compare", default=None, help="folder of a single-process run to compare with")
args = ap.parse_args()
rank = distributed.rank()
os.makedirs(args.out, exist_ok=True)

# ---- data: weekly CO2 (ppm), gaps interpolated; the model sees the weekly change ----------
co2 = sm.datasets.co2.load_pandas().data["co2"].interpolate().bfill().to_numpy(np.float32)
delta = np.diff(co2)  # weekly change, strongly seasonal
split = int(0.8 * len(delta))
scale = delta[:split].std()
z = delta / scale
x_all, y_all = z[:-1], z[1:]  # input: change this week; target: next
train_x, train_y = x_all[: split - 1], y_all[: split - 1]
test_x, test_y = x_all[split - 1 :], y_all[split - 1 :]

pieces, length = 8, (len(train_x) // 8)  # 8 contiguous series of ~227 weeks
X = train_x[: pieces * length].reshape(pieces, length, 1)
Y = train_y[: pieces * length].reshape(pieces, length, 1)

# ---- model and estimator: the model a user naturally writes --------------------------------
keras.utils.set_random_seed(0)
model = keras.Sequential(
    [keras.Input((None, 1)), keras.layers.LSTM(32, return_sequences=True), keras.layers.Dense(1)]
)
spec = dict(epochs=args.epochs, batch_size=4, seq_len=26)  # windows of half a year
est = Estimator(
    model,
    "mse",
    keras.optimizers.AdamW(3e-3),
    spec,
    # the spec's 4 series per update over all the ranks (2 per rank on 2 ranks), cut from one
    # shuffled order: 1 process or K ranks make the same updates
    global_batch_size=spec["batch_size"],
    shuffle=True,
    random_state=0,
    verbose=2 if rank == 0 else 0,
)
est.fit(X, Y)

# ---- streaming forecast of the held-out tail -------------------------------------------
est.predict(train_x[None, :, None])  # warm the state up on the past
pred = est.predict(test_x[None, :, None], reset=False)[0, :, 0]
rmse = lambda a, b: float(np.sqrt(np.mean((a - b) ** 2)) * scale)
truth = test_y
result = {
    "test_rmse_keraseq": rmse(pred, truth),
    "test_rmse_no_change": rmse(np.zeros_like(truth), truth),  # next week's level = this week's
    "test_rmse_persistence": rmse(test_x, truth),  # next change = this change
    "test_rmse_seasonal_naive": rmse(x_all[split - 1 - 51 : len(x_all) - 51], truth),  # a year ago
    "final_loss": est.history_["loss"][-1],
    "ranks": distributed.size(),
}

# ---- under MPI: every rank must hold the same weights ----------------------------------
w = net2vec(est.model_)
if distributed.size() > 1:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    w0 = comm.bcast(w if rank == 0 else None, root=0)
    diff = comm.allreduce(float(np.abs(w - w0).max()), op=MPI.MAX)
    result["max_weight_diff_across_ranks"] = diff

if rank == 0:
    print(json.dumps(result, indent=2))
    print(
        f"test RMSE (ppm/week): keraseq {result['test_rmse_keraseq']:.4f} | no change "
        f"{result['test_rmse_no_change']:.4f} | persistence "
        f"{result['test_rmse_persistence']:.4f} | seasonal naive "
        f"{result['test_rmse_seasonal_naive']:.4f}"
    )
    if "max_weight_diff_across_ranks" in result:
        print(
            f"ranks agree: max |w_rank - w_0| = {result['max_weight_diff_across_ranks']:.3g} "
            f"over {result['ranks']} ranks"
        )
    if args.compare and os.path.exists(os.path.join(args.compare, "result.json")):
        with open(os.path.join(args.compare, "result.json")) as f:
            single = json.load(f)
        print(
            f"single process test RMSE {single['test_rmse_keraseq']:.4f} vs "
            f"{result['ranks']} ranks {result['test_rmse_keraseq']:.4f}; final loss "
            f"{single['final_loss']:.6g} vs {result['final_loss']:.6g} (the same updates: "
            f"global_batch_size, the ranks' sums in float32 in another order)"
        )
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f, indent=2)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weeks = np.arange(len(truth))
    level = co2[split + 1 : split + 1 + len(truth)]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    a1.plot(weeks, level, label="observed CO2 (ppm)")
    a1.plot(weeks, level - truth * scale + pred * scale, label="one-week-ahead forecast", alpha=0.8)
    a1.legend()
    a1.set_ylabel("ppm")
    a2.plot(weeks, truth * scale, label="observed weekly change")
    a2.plot(weeks, pred * scale, label="keraseq forecast")
    a2.legend()
    a2.set_xlabel("weeks into the held-out tail (1993-2001)")
    a2.set_ylabel("ppm/week")
    fig.suptitle(
        f"Mauna Loa CO2, held-out tail: RMSE {result['test_rmse_keraseq']:.3f} vs "
        f"no change {result['test_rmse_no_change']:.3f}"
    )
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "forecast.png"), dpi=90)
    print(f"plot written to {os.path.join(args.out, 'forecast.png')}")
