"""Run under mpirun: K ranks with batch B == one process with batch K*B on the same minibatches.

Writes a JSON report from rank 0 to argv[1]: max |w_mpi - w_single|, whether all ranks hold
bit-identical weights, and the history of both. The rest of argv is one scenario:

    opt n batch [jit|nojit] [mode] [sync_every] [windows_per_call]

mode: "equal" (default), "masked-step" or "masked-series": unequal lengths (zero padding
after a random length per series, a Masking layer in front), with per-step or per-series
targets; "tokens": token ids (N, T) padded with 0 into Embedding(mask_zero=True), next-token
labels (N, T), sparse loss; "resets": per-row state resets (``resets=``, about one step in
five, inside windows too) with equal lengths. windows_per_call: the ranks' chunks of windows
(the one process keeps "auto").

Or several scenarios in one launch (the ranks import Keras once): ``--many`` followed by
scenarios, each its arguments joined by commas; the report is then ``{scenario: report}``.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import itertools

import keras
import numpy as np
from mpi4py import MPI

from keraseq import Estimator, _mpi_xla
from keraseq.utils import net2vec

comm = MPI.COMM_WORLD
k = comm.Get_size()
V = 11  # "tokens": the vocabulary of the token ids


def model(mode):
    keras.utils.set_random_seed(1)
    if mode == "tokens":  # token ids (N, T) with 0 as padding, per-step sparse labels (N, T)
        return keras.Sequential(
            [
                keras.Input((None,), dtype="int32"),
                keras.layers.Embedding(V, 4, mask_zero=True),
                keras.layers.LSTM(6, return_sequences=True),
                keras.layers.Dense(V),
            ]
        )
    front = [keras.layers.Masking(0.0)] if mode not in ("equal", "resets") else []
    return keras.Sequential(
        [keras.Input((None, 3))]
        + front
        + [keras.layers.LSTM(6, return_sequences=mode != "masked-series"), keras.layers.Dense(2)]
    )


def optimizer(opt_name):
    return keras.optimizers.SGD(0.05) if opt_name == "sgd" else keras.optimizers.Adam(0.01)


def scenario_data(n, mode):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 23, 3)).astype("float32")
    y = np.stack([np.cumsum(x[..., 0], 1), x[..., 1] * x[..., 2]], -1).astype("float32") / 5
    loss, metrics = "mse", ["mae"]
    if mode == "tokens":
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        metrics = ["sparse_categorical_accuracy"]
        lengths = rng.integers(1, 24, n)
        x = rng.integers(1, V, size=(n, 23)).astype("int32")
        x[np.arange(23)[None, :] >= lengths[:, None]] = 0
        y = np.roll(x, -1, axis=1)  # the next token
    elif mode != "equal":
        lengths = rng.integers(1, 24, n)
        x[np.arange(23)[None, :] >= lengths[:, None]] = 0.0
        if mode == "masked-series":
            y = y[np.arange(n), lengths - 1]  # the target at each series' last real step
    resets = rng.random((n, 23)) < 0.2 if mode == "resets" else None
    return x, y, loss, metrics, resets


def pieces(model, x, resets):
    """Keras's outputs of each series cut at its resets, each piece run alone."""
    out = []
    for row, flags in zip(x, resets):
        bounds = [0] + [int(t) for t in np.flatnonzero(flags) if t > 0] + [len(row)]
        parts = [np.asarray(model(row[None, a:b]))[0] for a, b in itertools.pairwise(bounds)]
        out.append(np.concatenate(parts))
    return np.stack(out)


def run(opt_name, n, batch, jit="jit", mode="equal", sync_every=1, windows_per_call="auto"):
    """One scenario; its report on rank 0 (None on the others)."""
    n, batch, sync_every = int(n), int(batch), int(sync_every)
    jit = jit == "jit"
    windows_per_call = "auto" if windows_per_call == "auto" else int(windows_per_call)
    x, y, loss, metrics, resets = scenario_data(n, mode)
    common = dict(epochs=2, seq_len=7, shuffle=False, verbose=0, metrics=metrics, jit_compile=jit)
    # An explicit communicator (here the world one; "auto" would find it too).
    est = Estimator(
        model(mode),
        loss,
        optimizer(opt_name),
        batch_size=batch,
        distributed=comm,
        sync_every=sync_every,
        windows_per_call=windows_per_call,
        **common,
    ).fit(x, y, resets=resets)
    w = net2vec(est.model_)
    all_w = comm.gather(w, root=0)
    # Distributed predict: each rank predicts its block, every rank returns the full result.
    pred = est.predict(x, batch_size=3, resets=resets)
    if resets is None:
        full = np.asarray(est.model_.predict(x, verbose=0))  # whole series == windows with carry
    else:
        full = pieces(est.model_, x, resets)
    pred_diff = comm.allreduce(float(np.abs(pred - full).max()), op=MPI.MAX)

    if keras.backend.backend() == "jax":  # the in-program Allreduce: mpi4jax (None: a callback)
        from keraseq import distributed
        from keraseq.backend import current

        path, _ = current().graph_allreduce(distributed.get_comm(comm)).path(True)
        in_program = path.startswith("inside the XLA program")
        program_error = None if in_program else "mpi4jax unavailable: host-callback Allreduce"
    else:
        in_program, program_error = _mpi_xla._lib is not None, _mpi_xla._lib_error

    if comm.Get_rank() != 0:
        return None
    # One process, batch k*B, minibatch i = the ranks' minibatches i side by side.
    bounds = [
        (r * (n // k) + min(r, n % k), (r + 1) * (n // k) + min(r + 1, n % k)) for r in range(k)
    ]
    steps = max(-(-(hi - lo) // batch) for lo, hi in bounds)
    order = [
        np.arange(lo, hi)[i * batch : (i + 1) * batch] for i in range(steps) for lo, hi in bounds
    ]
    order = np.concatenate(order)
    single = Estimator(
        model(mode),
        loss,
        optimizer(opt_name),
        batch_size=k * batch,
        distributed=False,
        sync_every=sync_every,
        **common,
    ).fit(x[order], y[order], resets=None if resets is None else resets[order])
    ws = net2vec(single.model_)
    return {
        "max_diff": float(np.max(np.abs(w - ws))),
        "identical_across_ranks": all(np.array_equal(all_w[0], a) for a in all_w[1:]),
        "history_mpi": est.history_,
        "history_single": single.history_,
        "size": k,
        "xla_allreduce": in_program,
        "xla_error": program_error,
        "backend": keras.backend.backend(),
        "predict_max_diff": pred_diff,
        "predict_shape": list(pred.shape),
    }


if __name__ == "__main__":
    out_path = sys.argv[1]
    if sys.argv[2] == "--many":
        report = {spec: run(*spec.split(",")) for spec in sys.argv[3:]}
    else:
        report = run(*sys.argv[2:])
    if comm.Get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(report, f)
