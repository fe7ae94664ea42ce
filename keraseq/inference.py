"""Inference with a fitted session: ``predict`` (into ``out=``, streaming states), ``score``.

What lives here: prediction minibatch by minibatch over the rows of this rank (windows in one
compiled call per minibatch, the state carried), writing into arrays, memmaps or HDF5
datasets, continuing from given states (``predict(..., reset=False)``), and R² computed in
one streaming pass. Collective under MPI. What does not: training (``trainer.py``,
``epochs.py``), the scikit-learn face (``estimator.py``), reading the rows (``readers/``), the
window loops (``backend/``).

Example (normally reached through ``Estimator.predict``/``score``):
    >>> import keras, numpy as np
    >>> from keraseq import Estimator
    >>> m = keras.Sequential([keras.Input((None, 2)), keras.layers.LSTM(4, return_sequences=True),
    ...                       keras.layers.Dense(1)])
    >>> x = np.random.rand(6, 10, 2).astype("float32")
    >>> est = Estimator(m, epochs=1, batch_size=3, seq_len=5, verbose=0).fit(x, x[..., :1])
    >>> est.predict(x).shape
    (6, 10, 1)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras
import numpy as np

from . import distributed as dist
from .backend import current as _backend
from .checks import check_windows, check_x, check_xy, step_features
from .inputs import keyed
from .lengths import (
    check_lengths,
    is_ragged,
    real_steps,
    time_mask,
    unpad,
    unragged,
)
from .model_facts import Layout, output_layouts
from .ranges import check_ranges, model_ranges
from .readers import ArrayReader, BatchSource, pad_rows, predict_batch_size, x_dtype
from .resets import check_model_for_resets, check_resets, ragged_resets
from .selfcheck import window_check
from .session import Session
from .validation import check_finite

if TYPE_CHECKING:
    from .hyperparams import Settings

__all__ = ["predict", "predict_dataset", "score", "predict_blocks", "predict_batch_size"]


def _unpack(arrays: tuple):
    return arrays[0] if len(arrays) == 1 else arrays


def output_shapes(session: Session, n, t):
    """The shape of each prediction for ``n`` series of ``t`` steps."""
    return [
        (n,) + tuple(shape) if session.per_series else (n, t) + tuple(shape[1:])
        for shape in session.out_shapes
    ]


def _float_dtype(dtype) -> np.dtype:
    """A state's dtype as NumPy's (float32 for what is not a float)."""
    try:
        dtype = np.dtype(keras.backend.standardize_dtype(dtype))
    except (TypeError, ValueError):
        return np.dtype(np.float32)
    return dtype if dtype.kind == "f" else np.dtype(np.float32)


def check_predict_x(session: Session, x):
    xs, n, t = check_x(x, session.facts.specs)
    if step_features(xs[0]) != session.n_features:
        raise ValueError(
            f"`x` has F={xs[0].shape[-1]} features but the estimator was "
            f"fitted with {session.n_features}: shape (N, T, "
            f"{session.n_features})"
        )
    return xs, n, t


def _layouts(session: Session, x):
    """The output layouts of the fitted model, as ``fit`` read them (from the model; else
    from what fit recorded: per series or per step)."""
    xs = check_x(x, session.facts.specs)[0]
    layouts = output_layouts(session.model, xs)
    if layouts is None:
        layouts = [
            Layout(not session.per_series, tuple(shape) if session.per_series else tuple(shape[1:]))
            for shape in session.out_shapes
        ]
    return layouts


def predict_blocks(session, xs, lo, hi, batch, h_all, lengths=None, resets=None):
    """Predict rows ``[lo, hi)`` minibatch by minibatch (collective under MPI).

    Yields ``(first_row, n_real, predictions, final_states, time_mask)`` as numpy arrays
    of the real rows (``time_mask`` (n_real, T) or ``None`` when every step is real; integer
    marks with ``resets``, see :func:`keraseq.lengths.time_mask`); ``h_all`` gives initial
    states per series (``None``: zeros).
    """
    comm, backend = session.comm, _backend()
    batch = min(batch, max(1, hi - lo))
    rule = session.facts.mask_rule
    reader = ArrayReader(
        [
            xs,
            (lengths,) if lengths is not None else None,
            (resets,) if resets is not None else None,
        ],
        [x_dtype(xs, session.model), np.int64, np.bool_],
        batch,
        comm,
        rows=(lo, hi),
    )
    for minibatch in reader.epoch():
        (bx, bl, br), index, n_real = minibatch.arrays, minibatch.rows, minibatch.n_real
        h0 = None
        if h_all is not None:
            rows = index if n_real else np.array([0])
            h0 = [
                [backend.to_tensor(pad_rows(np.asarray(s)[rows], batch)) for s in call]
                for call in h_all
            ]
        tm = None
        if rule is not None or lengths is not None or resets is not None:
            tm = time_mask(bx, None if bl is None else bl[0], rule, None if br is None else br[0])
        with session.carry, backend.device_scope(session.device):
            preds, states = session.steps.predict(
                tuple(backend.to_tensor(a) for a in bx),
                None if tm is None else backend.to_tensor(tm),
                h0,
            )
        if n_real:
            yield (
                int(index[0]),
                n_real,
                [backend.to_numpy(pr)[:n_real] for pr in preds],
                [[backend.to_numpy(st)[:n_real] for st in call] for call in states],
                None if tm is None else tm[:n_real],
            )


def predict(
    session: Session,
    p: Settings,
    x,
    out=None,
    h_all=None,
    batch_size: int | None = None,
    lengths=None,
    resets=None,
):
    """Predictions for ``x`` (N, T, F), window by window with the state carried, as
    :meth:`keraseq.Estimator.predict` documents; returns ``(predictions, final states)``.
    ``h_all``: the states to continue from (``None``: zeros). Collective under MPI.
    """
    xs, n, t, lengths, ragged = _predict_inputs(session, x, out, lengths)
    resets = _checked_resets(session, resets, lengths, n, t)
    comm = session.comm
    lo, hi = dist.shard(n, comm)
    dist.agree(comm, lambda: _check_x_values(session, xs, (lo, hi), lengths))
    _window_check(session, p, xs, (lo, hi), lengths)  # (runs layers: after the values' check)
    shapes = output_shapes(session, n, t)
    outs = _checked_out(out, shapes)
    if h_all is not None:
        if h_all and h_all[0] and int(h_all[0][0].shape[0]) != n:
            raise ValueError(
                f"`reset=False` continues {h_all[0][0].shape[0]} series but `x` has N={n}"
            )
    batch = predict_batch_size(p, xs, batch_size)
    # Rows this rank writes directly (its own block); the rest is gathered below.
    direct = [
        (o is not None and comm.size == 1) or isinstance(o, np.memmap)
        for o in (outs or [None] * len(shapes))
    ]
    local, new_states = _predicted_rows(
        session, xs, (lo, hi), batch, h_all, lengths, outs, direct, shapes, resets
    )
    results = _gathered(local, outs, direct, comm)
    if comm.size > 1:
        new_states = [[dist.allgather_rows([s_], comm)[0] for s_ in call] for call in new_states]
        comm.Barrier()  # every rank's rows are in the shared files before anyone reads
    if ragged:
        results = [r if session.per_series else unpad(r, lengths) for r in results]
    return (out if out is not None else _unpack(tuple(results))), new_states


def _checked_resets(session: Session, resets, lengths, n: int, t: int):
    """``resets`` of ``predict``/``score`` checked (a list of per-series flags next to a
    ragged ``x`` padded), and the model checked for them."""
    if resets is None:
        return None
    resets = check_resets(ragged_resets(resets, lengths, t), n, t)
    check_model_for_resets(session.model)
    return resets


def _window_check(session: Session, p: Settings, xs, rows, lengths) -> None:
    """The windows' self-check (``selfcheck.py``) before the first windowed run of a model
    that ``fit`` did not check (one loaded, or fitted without windows)."""
    if not session.windows_checked:
        mode = p.window_check
        if window_check(session.model, xs, session.seq_len, mode, rows, lengths, session.comm):
            session.windows_checked = True


def _check_x_values(session: Session, xs, rows, lengths) -> None:
    """This rank's rows of ``x``: finite, token ids within the model's embeddings."""
    check_finite(xs, "x", rows=rows)
    check_ranges(model_ranges(session.model), xs, None, rows=rows, lengths=lengths)


def _predict_inputs(session: Session, x, out, lengths):
    """``(xs, n, t, lengths, ragged)``: ``x`` checked against the fitted model (a ragged list
    of series padded, with its lengths)."""
    x = keyed(x, session.model, "x")
    ragged = is_ragged(x, session.facts.step_rank)
    x, _, _, lengths = unragged(x, None, None, lengths, session.facts.step_rank)
    if ragged and out is not None:
        raise ValueError(
            "`out` needs a padded `x` (N, T, F) with `lengths`; a ragged `x` returns a list"
        )
    xs, n, t = check_predict_x(session, x)
    if lengths is not None:
        lengths = check_lengths(lengths, n, t)
    check_windows(session.model, session.seq_len, t, lengths is not None)
    return xs, n, t, lengths, ragged


def _checked_out(out, shapes) -> tuple | list | None:
    """``out`` as a tuple of writable float arrays, one per output of the expected shape."""
    if out is None:
        return None
    outs = out if isinstance(out, (tuple, list)) else (out,)
    if len(outs) != len(shapes):
        raise ValueError(
            f"`out` has {len(outs)} array(s) but the model has {len(shapes)} output(s)"
        )
    for k, (o, shape) in enumerate(zip(outs, shapes)):
        label = "out" if len(outs) == 1 else f"out[{k}]"
        if not hasattr(o, "shape") or tuple(o.shape) != shape:
            raise ValueError(f"`{label}` has shape {getattr(o, 'shape', None)}; expected {shape}")
        if np.dtype(o.dtype).kind != "f":
            raise TypeError(f"`{label}` has dtype {o.dtype}; expected a float dtype")
        if isinstance(o, np.ndarray) and not o.flags.writeable:
            raise ValueError(f"`{label}` is read-only")
    return outs


def _predicted_rows(
    session: Session, xs, rows, batch, h_all, lengths, outs, direct, shapes, resets=None
):
    """Predict this rank's rows ``[lo, hi)``: written into ``outs[k]`` where ``direct[k]``,
    else into a local array; returns ``(local arrays, final states)`` of those rows.
    Outputs and states keep the model's dtypes, as ``model.predict`` gives them (float64 for
    a float64 model); a rank without rows takes the model's compute dtype."""
    lo, hi = rows
    compute_dtype = _float_dtype(session.model.compute_dtype)
    local = [
        # zeros, not empty: a block of another dtype recasts the whole array (no garbage cast)
        None if d else np.zeros((hi - lo,) + sh[1:], compute_dtype)
        for d, sh in zip(direct, shapes)
    ]
    new_states = [
        [np.zeros((hi - lo,) + shape, _float_dtype(dtype)) for shape, dtype in spec]
        for spec in session.state_specs
    ]
    for first, n_real, preds, states, _ in predict_blocks(
        session, xs, lo, hi, batch, h_all, lengths, resets
    ):
        own = slice(first - lo, first - lo + n_real)
        for k, values in enumerate(preds):
            if direct[k]:
                outs[k][first : first + n_real] = values
            else:
                block = local[k]
                assert block is not None  # not direct: a local array
                if block.dtype != values.dtype:
                    block = local[k] = block.astype(values.dtype)
                block[own] = values
        for c, call in enumerate(states):
            for s_, st in enumerate(call):
                new_states[c][s_][own] = st
    return local, new_states


def _gathered(local, outs, direct, comm) -> list:
    """Each output whole: ``out``'s array where this rank wrote its rows directly (a memmap
    flushed), else every rank's rows gathered (and written into ``out`` if given; an
    ``h5py.Dataset`` by rank 0 only)."""
    results = []
    for k, d in enumerate(direct):
        if d:
            if isinstance(outs[k], np.memmap):
                outs[k].flush()
            results.append(outs[k])
            continue
        full = dist.allgather_rows([local[k]], comm)[0] if comm.size > 1 else local[k]
        if (
            outs is not None
            and outs[k] is not None
            and (comm.rank == 0 or isinstance(outs[k], np.ndarray))
        ):
            outs[k][...] = full  # an h5py.Dataset is written by rank 0 only
            results.append(outs[k])
        else:
            results.append(full)
    return results


def predict_dataset(session: Session, p: Settings, batches):
    """Predictions for a pipeline of batches (one pass, as ``model.predict`` reads it:
    ``x``, ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)``; or keraseq's ``(x, y,
    sample_weight, resets)``), concatenated over its batches."""
    if session.comm.size > 1:
        raise ValueError(
            "predict on a dataset of batches runs in one process; under MPI "
            "pass arrays (each rank predicts its block of rows)"
        )
    source = BatchSource(batches)
    parts = []
    for item in source.items():
        if isinstance(item, list):
            item = tuple(item)
        resets = item[3] if isinstance(item, tuple) and len(item) == 4 else None
        if resets is not None:
            item = item[:3]
        bx = keras.utils.unpack_x_y_sample_weight(item)[0] if isinstance(item, tuple) else item
        pred, _ = predict(session, p, bx, resets=resets)
        parts.append(pred if isinstance(pred, tuple) else (pred,))
    if not parts:
        raise ValueError("`x` is an empty dataset: it yields no batch")
    out = tuple(np.concatenate([p[k] for p in parts]) for k in range(len(parts[0])))
    return _unpack(out)


def score(
    session: Session, p: Settings, x, y, sample_weight=None, lengths=None, resets=None
) -> float:
    """Coefficient of determination R² over all outputs and time steps (uniform average).

    Each output feature is one target; the samples are the (series, time step) pairs
    (padded steps of unequal-length series left out). Streams minibatch by minibatch
    (out-of-core ``x``/``y`` are never loaded whole) and leaves the streaming states of
    ``predict`` untouched. Collective under MPI.
    """
    score_from = int(getattr(x, "keraseq_score_from", 0))  # a TimeSplit test fold
    xs, ys, ws, lengths = _score_inputs(session, x, y, sample_weight, lengths)
    resets = _checked_resets(session, resets, lengths, int(xs[0].shape[0]), int(xs[0].shape[1]))
    comm = session.comm
    lo, hi = dist.shard(int(xs[0].shape[0]), comm)
    dist.agree(comm, lambda: _check_x_values(session, xs, (lo, hi), lengths))
    _window_check(session, p, xs, (lo, hi), lengths)
    batch = predict_batch_size(p, xs, None)
    # Per output feature, in float64: sum w, sum w*(y - c), sum w*(y - c)^2 and
    # sum w*(y - yhat)^2, with the shift c = the first block's mean (this rank's), so the
    # variance keeps its precision for series far from zero (prices, CO2 levels, ...).
    sums = [np.zeros((4, int(a.shape[-1]))) for a in ys]
    shifts = [None] * len(ys)
    per_step = not session.per_series
    blocks = predict_blocks(session, xs, lo, hi, batch, None, lengths, resets)
    for first, n_real, preds, _, tm in blocks:
        rows = slice(first, first + n_real)
        w = None if ws is None else np.asarray(ws[0][rows], np.float64)
        for k, (a, yp) in enumerate(zip(ys, preds)):
            yt = np.asarray(a[rows], np.float64)
            wk = _sample_weights(w, yt, tm if per_step else None, score_from if per_step else 0)
            f = yt.shape[-1]
            yt, yp = yt.reshape(-1, f), np.asarray(yp, np.float64).reshape(-1, f)
            if shifts[k] is None:
                shifts[k] = yt.mean(0)
            sums[k] += _weighted_sums(wk, yt, yp, shifts[k])
    local = [(sm, np.zeros(sm.shape[1]) if c is None else c) for sm, c in zip(sums, shifts)]
    gathered = comm.allgather(local) if comm.size > 1 else [local]
    scores = []
    for k in range(len(ys)):
        scores.extend(_r2([rank_stats[k] for rank_stats in gathered]).tolist())
    return float(np.mean(scores))


def _score_inputs(session: Session, x, y, sample_weight, lengths):
    """``(xs, ys, ws, lengths)`` checked against the fitted model; targets shaped like its
    outputs (not integer labels)."""
    x, y = keyed(x, session.model, "x"), keyed(y, session.model, "y")
    x, y, sample_weight, lengths = unragged(x, y, sample_weight, lengths, session.facts.step_rank)
    _, n_, t_ = check_predict_x(session, x)
    xs, ys, ws = check_xy(x, y, sample_weight, _layouts(session, x), session.facts.specs)
    for k, (a, shape) in enumerate(zip(ys, session.out_shapes)):
        skip = 1 if session.per_series else 2
        if tuple(a.shape[skip:]) != tuple(shape[skip - 1 :]):
            label = "y" if len(ys) == 1 else f"y[{k}]"
            raise ValueError(
                f"`{label}` has shape {tuple(a.shape)}: integer labels for a sparse loss, "
                f"not values shaped like the model's output {k}; `score` is the R² of "
                f"predictions against such values. For class labels use "
                f"keraseq.Classifier, whose `score` is the accuracy"
            )
    if lengths is not None:
        lengths = check_lengths(lengths, n_, t_)
    check_windows(session.model, session.seq_len, t_, lengths is not None)
    return xs, ys, ws, lengths


def _sample_weights(w, yt, tm, score_from: int) -> np.ndarray:
    """The weight of each sample (series or (series, step)) of a block, as a column: ``w``
    broadcast, padded steps (``tm``) and a TimeSplit fold's history (``score_from``) at 0."""
    wk = (
        np.ones(yt.shape[:-1])
        if w is None
        else np.broadcast_to(w.reshape(w.shape + (1,) * (yt.ndim - 1 - w.ndim)), yt.shape[:-1])
    )
    if tm is not None:  # padded steps are no samples
        wk = wk * real_steps(tm).reshape(tm.shape + (1,) * (yt.ndim - 3))
    if score_from:
        wk = np.array(wk, np.float64)
        wk[:, :score_from] = 0.0  # the history a TimeSplit fold runs through
    return wk.reshape(-1, 1)


def _weighted_sums(wk, yt, yp, shift) -> np.ndarray:
    """(4, F): sum w, sum w*(y - c), sum w*(y - c)^2, sum w*(y - yhat)^2 of a block."""
    yc = yt - shift
    return np.stack(
        [
            np.broadcast_to(wk, yt.shape).sum(0),
            (wk * yc).sum(0),
            (wk * yc**2).sum(0),
            (wk * (yt - yp) ** 2).sum(0),
        ]
    )


def _r2(per_rank) -> np.ndarray:
    """R² per feature of one output from each rank's ``(sums, shift)``: the per-rank (count,
    mean, M2) merged exactly (Chan et al.), in rank order."""
    count = mean = m2 = ss_res = 0.0
    for (sw, swy, swy2, res), c in per_rank:
        if not np.any(sw):
            continue
        mean_r = c + swy / np.maximum(sw, 1e-300)
        m2_r = np.maximum(swy2 - swy**2 / np.maximum(sw, 1e-300), 0.0)
        total = count + sw
        delta = mean_r - mean
        mean = mean + delta * sw / np.maximum(total, 1e-300)
        m2 = m2 + m2_r + delta**2 * count * sw / np.maximum(total, 1e-300)
        count, ss_res = total, ss_res + res
    ss_tot = m2
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(
            ss_tot > 0,
            1 - ss_res / np.where(ss_tot > 0, ss_tot, 1),
            np.where(ss_res == 0, 1.0, 0.0),
        )
    return np.atleast_1d(r2)
