"""Checks of what the user passes: shapes, kinds and the model, before any training step.

What lives here: ``x``/``y``/``sample_weight`` as tuples of arrays with one N and T
(:func:`check_xy`), read as the model's input specs and output layouts say (token ids
``(N, T)``, any step shape, targets per step or per series, sparse labels), the model's inputs
and outputs against them, the refusals and warnings for layers that windows would silently
change (:func:`check_windows`), and the whole check of a ``fit`` call's data
(:func:`check_fit`), agreed by every MPI rank. Every error is a ``ValueError``/``TypeError``
naming the argument and the expected shape.
What does not: what the model says (``model_facts.py``), transforms of the data (dicts by
name and the validation split: ``inputs.py``; ragged lists: ``lengths.py``), the checks of
one hyper-parameter or one array (``hyperparams.py``, ``validation.py``), training
(``trainer.py``).

Example:
    >>> import numpy as np
    >>> from keraseq.checks import check_xy
    >>> xs, ys, ws = check_xy(np.zeros((4, 5, 2)), np.zeros((4, 1)), None)
    >>> ys[0].shape
    (4, 1)
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import keras
import numpy as np

from . import distributed as dist
from .inputs import expand_last
from .lengths import check_lengths, mask_reaches_rnn, unragged
from .losses import is_window_loss
from .model_facts import (
    Layout,
    facts_of,
    input_specs,
    is_int_dtype,
    output_layouts,
    step_rank,
    x_layout,
)
from .ranges import Ranges, check_ranges, model_ranges
from .resets import check_model_for_resets, check_resets, ragged_resets
from .validation import as_arrays, check_finite

__all__ = [
    "check_x",
    "check_xy",
    "check_model_inputs",
    "check_outputs",
    "check_windows",
    "per_series_targets",
    "step_features",
    "check_fit",
    "FitData",
]

_X_WHAT = (
    "sequence inputs (N series, T time steps, F features), or (N, T) integer token ids "
    "or (N, T, *step_shape) as the model's input reads them; use T = 1 for "
    "non-sequence data"
)
_Y_WHAT = "targets per time step (N, T, F_out) or per series (N, F_out), sharing N and T with `x`"


def check_x(x, specs=None) -> tuple[tuple, int, int]:
    """``x`` as a tuple of ``(N, T, *step_shape)`` arrays sharing N and T; returns
    (xs, N, T). With the model's input ``specs``, every array must have its input's rank,
    step shape and kind (integer ids for an integer input)."""
    xs = as_arrays(x, "x", None, _X_WHAT)
    for k, a in enumerate(xs):
        label = "x" if len(xs) == 1 else f"x[{k}]"
        if specs is None and (a.ndim < 2 or (a.ndim == 2 and a.dtype.kind == "f")):
            raise ValueError(
                f"`{label}` has shape {tuple(a.shape)} (rank {a.ndim}); "
                f"expected (N, T, F): {_X_WHAT}"
            )
    if specs is not None:
        check_model_inputs(None, xs, specs)
    n, t = int(xs[0].shape[0]), int(xs[0].shape[1])
    for k, a in enumerate(xs[1:], 1):
        if int(a.shape[0]) != n or int(a.shape[1]) != t:
            raise ValueError(
                f"`x[{k}]` has shape {tuple(a.shape)} but `x[0]` has N={n}, "
                f"T={t}; all inputs must share N and T"
            )
    return xs, n, t


def _matches(shape, expected) -> bool:
    return len(shape) == len(expected) and all(
        e is None or int(d) == int(e) for d, e in zip(shape, expected)
    )


def _fmt(dims) -> str:
    return (
        "("
        + ", ".join("?" if d is None else str(d) for d in dims)
        + ("," if len(dims) == 1 else "")
        + ")"
    )


def _target(a, layout: Layout, k: int, label: str, n: int, t: int):
    """``a`` checked against output ``k``'s layout, as Keras pairs targets with outputs:
    the output's shape, or integer labels without its last axis (sparse losses; read with
    a trailing axis of 1, lazily)."""
    o = tuple(layout.shape)
    lead = (n, t) if layout.per_step else (n,)
    rest = tuple(a.shape[len(lead) :])
    fits = a.ndim >= len(lead) and tuple(int(d) for d in a.shape[: len(lead)]) == lead
    if fits and _matches(rest, o):
        return a
    if fits and o and _matches(rest, o[:-1]):
        return expand_last(a)  # sparse labels: (N, T) for (N, T, V), (N,) for (N, V)
    if fits and o and _matches(rest, o[:-1] + (1,)):
        return a
    dense, sparse = _fmt(lead + o), _fmt(lead + o[:-1]) if o else None
    expected = f"expected {dense}" + (
        f" (or integer labels {sparse} with a sparse loss)" if sparse else ""
    )
    per_window = "(batch, time) + " + _fmt(o) if layout.per_step else "(batch,) + " + _fmt(o)
    if layout.per_step:
        if a.ndim == 2 + len(o) and int(a.shape[1]) != t:
            raise ValueError(
                f"`{label}` has T={a.shape[1]} time steps but `x` has T={t}; {expected}"
            )
        if a.ndim == 2 + len(o):
            raise ValueError(
                f"`{label}` has F_out={a.shape[-1]} but the model's output {k} "
                f"has {o[-1] if o else None} features: {expected}"
            )
        if a.ndim == 1 + len(o):
            raise ValueError(
                f"`{label}` has per-series targets {tuple(a.shape)} but the model returns "
                f"{per_window} for a window; per-series targets need a model that returns "
                f"one vector per series (return_sequences=False), or pass per-step targets: "
                f"{expected}"
            )
    else:
        if a.ndim >= 3 and int(a.shape[1]) == t and a.ndim == 2 + len(o):
            raise ValueError(
                f"`{label}` has targets per time step {tuple(a.shape)} but the model returns "
                f"{per_window} per window; use return_sequences=True on the last recurrent "
                f"layer, or pass per-series targets: {expected}"
            )
        if a.ndim == 1 + len(o) and o:
            raise ValueError(
                f"`{label}` has F_out={a.shape[-1]} but the model's output {k} "
                f"has {o[-1]} features: {expected}"
            )
    raise ValueError(
        f"`{label}` has shape {tuple(a.shape)} (rank {a.ndim}) but the model's "
        f"output {k} is {per_window}: {expected}"
    )


def per_series_targets(ys, layouts=None) -> bool:
    """Whether the targets are per series: from the model's outputs when known, else
    (a model that cannot be traced) from the rank of ``y``: (N, F_out)."""
    if layouts:
        return not layouts[0].per_step
    return ys[0].ndim == 2


def check_xy(x, y, sample_weight, layouts=None, specs=None):
    """``(xs, ys, ws)``: ``x``/``y``/``sample_weight`` as tuples of arrays, checked against
    each other and, when given, the model's input ``specs`` and output ``layouts``
    (:func:`output_layouts`); sparse labels come back with a trailing axis of 1."""
    as_arrays(x, "x", None, _X_WHAT)  # an `x` of no known kind is named first
    if y is None:
        as_arrays(y, "y", (3, 2), _Y_WHAT)  # raises the message scikit-learn expects
    xs, n, t = check_x(x, specs)
    if layouts is None:
        ys = as_arrays(y, "y", (3, 2), _Y_WHAT)
        ranks = {a.ndim for a in ys}
        if len(ranks) > 1:
            raise ValueError(
                "`y` mixes per-step (N, T, F) and per-series (N, F) targets; "
                "use one kind for all outputs"
            )
    else:
        ys = as_arrays(y, "y", None, _Y_WHAT)
        if len({lay.per_step for lay in layouts}) > 1:
            raise ValueError(
                "the model mixes outputs per time step and per series; keraseq "
                "needs one kind for all outputs"
            )
        if len(layouts) != len(ys):
            raise ValueError(
                f"the model has {len(layouts)} output(s) but `y` has {len(ys)} "
                f"array(s); pass one array per output"
            )
    for k, a in enumerate(ys):
        label = "y" if len(ys) == 1 else f"y[{k}]"
        if int(a.shape[0]) != n:
            raise ValueError(
                f"`{label}` has N={a.shape[0]} series but `x` has N={n}; "
                f"expected shape ({n}, {t}, F_out) or ({n}, F_out)"
            )
        if layouts is None and a.ndim == 3 and int(a.shape[1]) != t:
            raise ValueError(
                f"`{label}` has T={a.shape[1]} time steps but `x` has T={t}; "
                f"expected shape ({n}, {t}, F_out)"
            )
    if layouts is not None:
        ys = tuple(
            _target(a, lay, k, "y" if len(ys) == 1 else f"y[{k}]", n, t)
            for k, (a, lay) in enumerate(zip(ys, layouts))
        )
    per_series = per_series_targets(ys, layouts)
    ws = None
    if sample_weight is not None:
        ws = as_arrays(
            sample_weight,
            "sample_weight",
            (1, 2),
            "one weight per series (N,) or per time step (N, T)",
        )
        if len(ws) != 1:
            raise ValueError("`sample_weight` must be one array of shape (N,) or (N, T)")
        w = ws[0]
        if int(w.shape[0]) != n or (w.ndim == 2 and int(w.shape[1]) != t):
            raise ValueError(
                f"`sample_weight` has shape {tuple(w.shape)}; expected ({n},) or ({n}, {t})"
            )
        if w.ndim == 2 and per_series:
            raise ValueError(
                "`sample_weight` of shape (N, T) needs per-step targets; with "
                "per-series targets `y` (N, F_out) pass shape (N,)"
            )
    return xs, ys, ws


def check_model_inputs(model, xs, specs=None):
    """Each array of ``xs`` against the model's input: rank (N, T, *step_shape), step shape
    and kind (integer token ids for an integer input such as ``Embedding``'s)."""
    specs = specs if specs is not None else input_specs(model)
    if not specs:
        return
    if len(specs) != len(xs):
        raise ValueError(
            f"the model has {len(specs)} input(s) but `x` has {len(xs)} "
            f"array(s); pass a tuple with one array per input, each "
            f"{' / '.join(x_layout(tuple(s.shape), s.dtype) for s in specs)}"
        )
    for k, (spec, a) in enumerate(zip(specs, xs)):
        label = "x" if len(xs) == 1 else f"x[{k}]"
        shape = tuple(spec.shape)
        if len(shape) < 2:
            raise ValueError(
                f"the model's input {k} has shape {shape}; keraseq needs "
                f"(batch, time, ...) inputs (reshape inside the model)"
            )
        layout = x_layout(shape, spec.dtype)
        if a.ndim != len(shape):
            raise ValueError(
                f"`{label}` has shape {tuple(a.shape)} (rank {a.ndim}); "
                f"expected {layout}: the model's input {k} is {shape}"
            )
        if len(shape) == 3 and shape[-1] is not None and shape[-1] != a.shape[-1]:
            raise ValueError(
                f"`{label}` has F={a.shape[-1]} features but the model expects "
                f"{shape[-1]}: shape (N, T, {shape[-1]})"
            )
        if not _matches(tuple(a.shape[2:]), shape[2:]):
            raise ValueError(
                f"`{label}` has step shape {tuple(a.shape[2:])} (shape "
                f"{tuple(a.shape)}) but the model's input {k} takes "
                f"{tuple(shape[2:])} per step: expected {layout}"
            )
        if is_int_dtype(spec.dtype) and a.dtype.kind == "f":
            raise TypeError(
                f"`{label}` has dtype {a.dtype} but the model's input {k} takes "
                f"integers ({spec.dtype}, e.g. token ids for an Embedding): "
                f"expected {layout}; pass x.astype('int32')"
            )


def check_outputs(out_shapes, ys, window, per_series=None):
    """The model's outputs on a window (``out_shapes``, without the batch) against the
    targets: one array per output, with the time axis when they are per step."""
    if len(out_shapes) != len(ys):
        raise ValueError(
            f"the model has {len(out_shapes)} output(s) but `y` has {len(ys)} "
            f"array(s); pass one array per output"
        )
    if per_series is None:
        per_series = ys[0].ndim == 2
    for k, (shape, a) in enumerate(zip(out_shapes, ys)):
        label = "y" if len(ys) == 1 else f"y[{k}]"
        if not per_series:
            if len(shape) != a.ndim - 1 or shape[0] != window:
                raise ValueError(
                    f"`{label}` has targets per time step {tuple(a.shape)} but the model "
                    f"returns {('(batch,) + ' + str(shape))} for a window of {window} steps; "
                    f"use return_sequences=True on the last recurrent layer, or pass "
                    f"per-series targets (N, F_out)"
                )
        elif len(shape) != a.ndim - 1:
            raise ValueError(
                f"`{label}` has per-series targets {tuple(a.shape)} but the model returns "
                f"{('(batch,) + ' + str(shape))} per window; per-series targets need a model "
                f"that returns one vector per series (return_sequences=False)"
            )
        if shape[-1] != a.shape[-1] and not (shape[-1] and a.shape[-1] == 1):
            # sparse integer labels (F_out = 1) against class scores are allowed
            raise ValueError(
                f"`{label}` has F_out={a.shape[-1]} but the model's output {k} "
                f"has {shape[-1]} features"
            )


def check_windows(model, seq_len, t, masked) -> None:
    """Refuse recurrent layers that windows would silently change.

    A backward RNN (``go_backwards=True``, the backward half of ``Bidirectional``) reads a
    window from its end, so no state carried from the previous window can continue it.
    With masks, a custom cell's masked outputs cannot be carried across windows."""
    if seq_len is None or seq_len >= t:
        return
    facts = facts_of(model)
    masks = list(facts.masks)
    if not mask_reaches_rnn(model):
        masks = []  # dropped before the recurrent layers (Keras ignores it too)
    if masks and not masked and facts.mask_rule is None:
        raise ValueError(
            f"layer {masks[0].name!r} masks time steps, but keraseq reads which steps "
            f"are real only from a keras.layers.Masking layer applied directly to a model "
            f"input; with windows (seq_len={seq_len} < T={t}) pass `lengths` (or a list of "
            f"(T_i, F) arrays as `x`) so that each series' last real step is known"
        )
    masked = masked or bool(masks)
    backward = facts.backward
    if backward:
        kind = (
            "Bidirectional"
            if isinstance(backward[0], keras.layers.Bidirectional)
            else "go_backwards=True"
        )
        raise ValueError(
            f"layer {backward[0].name!r} ({kind}) runs backwards in time: a window of "
            f"seq_len={seq_len} < T={t} would restart its backward pass from each "
            f"window's end, which is not the whole-sequence result; use seq_len=None "
            f"(or >= T) for this model"
        )
    for layer in facts.window_bound:
        warnings.warn(
            f"layer {layer.name!r} ({type(layer).__name__}) sees only its window of "
            f"seq_len={seq_len} steps, not the series before it: the result depends on "
            f"seq_len (use seq_len=None or >= T={t} for the whole-sequence result)",
            UserWarning,
            stacklevel=4,
        )
    for layer in facts.not_carried if masked else []:
        raise ValueError(
            f"layer {layer.name!r} has a {type(layer.cell).__name__} cell: keraseq "
            f"carries the output of masked (padded) steps across windows only for "
            f"SimpleRNN/GRU/LSTM cells; use seq_len=None for unequal lengths with it"
        )


def step_features(a) -> int:
    """``n_features_in_`` of ``x``: the size of its last axis, 1 for token ids (N, T)."""
    return int(a.shape[-1]) if a.ndim > 2 else 1


class FitData(NamedTuple):
    """The checked data of one ``fit`` call."""

    xs: tuple  #: inputs, each (N, T, *step_shape)
    ys: tuple  #: targets, each (N, T, ...) per step or (N, ...) per series
    ws: tuple | None  #: (sample_weight,) or None
    per_series: bool  #: targets per series (N, F_out)
    window_loss: bool  #: a callable loss(model, x, y)
    val: tuple | None  #: (xs, ys, ws, lengths, resets) of validation_data, or None
    lengths: np.ndarray | None  #: real steps per series, or None
    ranges: Ranges = Ranges()  #: the model's token-id and sparse-label bounds
    resets: Any = None  #: (N, T) booleans: where each series' states restart, or None


def check_fit(
    x,
    y,
    sample_weight,
    lengths,
    validation_data,
    loss,
    metrics,
    rebatch,
    comm,
    model=None,
    resets=None,
) -> FitData:
    """Every check of a ``fit`` call's data, before any training step; under MPI every rank
    raises the same error (each checks the finiteness of its own block of rows). ``model``
    (built): its input specs and output layouts decide how ``x`` and ``y`` are read;
    ``resets``: the per-row state resets (``keraseq/resets.py``)."""
    specs = None if model is None else input_specs(model)
    series_rank = None if model is None else step_rank(model)
    layouts = None

    def validate():
        nonlocal layouts
        if model is not None and y is not None:
            try:
                layouts = output_layouts(model, check_x(x, specs)[0])
            except (TypeError, ValueError):
                pass  # check_xy names what is wrong, in its order
        xs, ys, ws = check_xy(x, y, sample_weight, layouts, specs)
        per_series = per_series_targets(ys, layouts)
        window_loss = is_window_loss(loss)
        if window_loss and ws is not None:
            raise ValueError(
                "`sample_weight` needs a Keras loss; a callable loss(model, x, y) "
                "returns one number per window and cannot weight series"
            )
        if window_loss and metrics:
            raise ValueError(
                "`metrics` need a Keras loss: with a callable loss(model, x, y) "
                "keraseq never sees the predictions"
            )
        if rebatch:
            if per_series:
                raise ValueError("`rebatch=True` needs per-step targets `y` (N, T, F_out)")
            if window_loss:
                raise ValueError("`rebatch=True` needs a Keras loss (padding is masked out)")
        checked = None
        if lengths is not None:
            if rebatch:
                raise ValueError(
                    "`rebatch=True` cannot be combined with unequal lengths "
                    "(`lengths` or a ragged `x`)"
                )
            checked = check_lengths(lengths, int(xs[0].shape[0]), int(xs[0].shape[1]))
        if resets is not None and rebatch:
            raise ValueError("`rebatch=True` cannot be combined with `resets`")
        checked_resets = check_resets(resets, int(xs[0].shape[0]), int(xs[0].shape[1]))
        if checked_resets is not None and model is not None:
            check_model_for_resets(model)
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (
                2,
                3,
                4,
                5,
            ):
                raise ValueError(
                    "`validation_data` must be a tuple (x_val, y_val), "
                    "(x_val, y_val, sample_weight_val), (x_val, y_val, "
                    "sample_weight_val, lengths_val) or (x_val, y_val, sample_weight_val, "
                    "lengths_val, resets_val)"
                )
            padded = (tuple(validation_data) + (None, None, None))[:5]
            vx, vy, vw, vl = unragged(*padded[:4], series_rank=series_rank)
            val = check_xy(vx, vy, vw, layouts, specs)
            if layouts is None and val[1][0].ndim != ys[0].ndim:
                raise ValueError("`validation_data` targets must be of the same kind as `y`")
            vn, vt = int(val[0][0].shape[0]), int(val[0][0].shape[1])
            vr = ragged_resets(padded[4], vl, vt, "validation_data resets")
            val = val + (
                None if vl is None else check_lengths(vl, vn, vt, "validation_data lengths"),
                check_resets(vr, vn, vt, "validation_data resets"),
            )
            if val[4] is not None and model is not None:
                check_model_for_resets(model)
        lo, hi = dist.shard(int(xs[0].shape[0]), comm)
        for name, arrays in (("x", xs), ("y", ys), ("sample_weight", ws or ())):
            check_finite(arrays, name, rows=(lo, hi))
        ranges = Ranges()
        if model is not None:
            classes = None if layouts is None else [o.shape[-1] if o.shape else 1 for o in layouts]
            ranges = model_ranges(model, None if window_loss else loss, classes)
        check_ranges(ranges, xs, ys, rows=(lo, hi), lengths=checked)
        if val is not None:
            vlo, vhi = dist.shard(int(val[0][0].shape[0]), comm)
            for name, arrays in (("x", val[0]), ("y", val[1]), ("sample_weight", val[2] or ())):
                check_finite(arrays, f"validation_data {name}", rows=(vlo, vhi))
            check_ranges(
                ranges,
                val[0],
                val[1],
                rows=(vlo, vhi),
                lengths=val[3],
                name="validation_data x",
                y_name="validation_data y",
            )
        return FitData(xs, ys, ws, per_series, window_loss, val, checked, ranges, checked_resets)

    return dist.agree(comm, validate)
