"""Checks of what the user passes: shapes, kinds and the model, before any training step.

What lives here: ``x``/``y``/``sample_weight`` as tuples of arrays with one N and T
(:func:`check_xy`), the model's inputs and outputs against them, the refusals and warnings
for layers that windows would silently change (:func:`check_windows`), dict inputs by name
(:func:`keyed`), ragged lists padded with their lengths (:func:`unragged`), and the whole
validation of a ``fit`` call (:func:`check_fit`), agreed by every MPI rank. Every error is a
``ValueError``/``TypeError`` naming the argument and the expected shape.
What does not: hyper-parameters (``estimator.py``), training (``trainer.py``).

Example:
    >>> import numpy as np
    >>> from keraseq.checks import check_xy
    >>> xs, ys, ws = check_xy(np.zeros((4, 5, 2)), np.zeros((4, 1)), None)
    >>> ys[0].shape
    (4, 1)
"""
from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import keras
import numpy as np

from . import distributed as dist
from .inputs import SliceTuple, split_rows
from .lengths import check_lengths, input_mask_rule, is_ragged, pad_ragged
from .losses import is_window_loss
from .validation import as_arrays, check_finite
from .windows import carries_masked_output, find_causal_convs, find_rnn_layers

__all__ = ["check_x", "check_xy", "check_model_inputs", "check_outputs", "check_windows",
           "window_bound_layers", "keyed", "unragged", "check_fit", "FitData"]

_X_WHAT = "sequence inputs (N series, T time steps, F features); use T = 1 for non-sequence data"
_Y_WHAT = ("targets per time step (N, T, F_out) or per series (N, F_out), sharing N and T "
           "with `x`")


def check_x(x) -> tuple[tuple, int, int]:
    """``x`` as a tuple of (N, T, F) arrays sharing N and T; returns (xs, N, T)."""
    xs = as_arrays(x, "x", (3,), _X_WHAT)
    n, t = int(xs[0].shape[0]), int(xs[0].shape[1])
    for k, a in enumerate(xs[1:], 1):
        if int(a.shape[0]) != n or int(a.shape[1]) != t:
            raise ValueError(f"`x[{k}]` has shape {tuple(a.shape)} but `x[0]` has N={n}, "
                             f"T={t}; all inputs must share N and T")
    return xs, n, t

def check_xy(x, y, sample_weight):
    if y is None:
        as_arrays(y, "y", (3, 2), _Y_WHAT)  # raises the message scikit-learn expects
    xs, n, t = check_x(x)
    ys = as_arrays(y, "y", (3, 2), _Y_WHAT)
    ranks = {a.ndim for a in ys}
    if len(ranks) > 1:
        raise ValueError("`y` mixes per-step (N, T, F) and per-series (N, F) targets; use "
                         "one kind for all outputs")
    for k, a in enumerate(ys):
        label = "y" if len(ys) == 1 else f"y[{k}]"
        if int(a.shape[0]) != n:
            raise ValueError(f"`{label}` has N={a.shape[0]} series but `x` has N={n}; "
                             f"expected shape ({n}, {t}, F_out) or ({n}, F_out)")
        if a.ndim == 3 and int(a.shape[1]) != t:
            raise ValueError(f"`{label}` has T={a.shape[1]} time steps but `x` has T={t}; "
                             f"expected shape ({n}, {t}, F_out)")
    ws = None
    if sample_weight is not None:
        ws = as_arrays(sample_weight, "sample_weight", (1, 2),
                       "one weight per series (N,) or per time step (N, T)")
        if len(ws) != 1:
            raise ValueError("`sample_weight` must be one array of shape (N,) or (N, T)")
        w = ws[0]
        if int(w.shape[0]) != n or (w.ndim == 2 and int(w.shape[1]) != t):
            raise ValueError(f"`sample_weight` has shape {tuple(w.shape)}; expected ({n},) "
                             f"or ({n}, {t})")
        if w.ndim == 2 and ys[0].ndim == 2:
            raise ValueError("`sample_weight` of shape (N, T) needs per-step targets; with "
                             "per-series targets `y` (N, F_out) pass shape (N,)")
    return xs, ys, ws

def check_model_inputs(model, xs):
    inputs = getattr(model, "inputs", None)
    if not inputs:
        return
    if len(inputs) != len(xs):
        raise ValueError(f"the model has {len(inputs)} input(s) but `x` has {len(xs)} "
                         f"array(s); pass a tuple with one (N, T, F) array per input")
    for k, (spec, a) in enumerate(zip(inputs, xs)):
        label = "x" if len(xs) == 1 else f"x[{k}]"
        shape = tuple(spec.shape)
        if len(shape) != 3:
            raise ValueError(f"the model's input {k} has shape {shape}; keraseq needs "
                             f"(batch, time, features) inputs (reshape inside the model)")
        if shape[-1] is not None and shape[-1] != a.shape[-1]:
            raise ValueError(f"`{label}` has F={a.shape[-1]} features but the model expects "
                             f"{shape[-1]}: shape (N, T, {shape[-1]})")


def check_outputs(out_shapes, ys, window):
    if len(out_shapes) != len(ys):
        raise ValueError(f"the model has {len(out_shapes)} output(s) but `y` has {len(ys)} "
                         f"array(s); pass one array per output")
    for k, (shape, a) in enumerate(zip(out_shapes, ys)):
        label = "y" if len(ys) == 1 else f"y[{k}]"
        if a.ndim == 3:
            if len(shape) != 2 or shape[0] != window:
                raise ValueError(
                    f"`{label}` has targets per time step {tuple(a.shape)} but the model "
                    f"returns {('(batch,) + ' + str(shape))} for a window of {window} steps; "
                    f"use return_sequences=True on the last recurrent layer, or pass "
                    f"per-series targets (N, F_out)")
        elif len(shape) != 1:
            raise ValueError(
                f"`{label}` has per-series targets {tuple(a.shape)} but the model returns "
                f"{('(batch,) + ' + str(shape))} per window; per-series targets need a model "
                f"that returns one vector per series (return_sequences=False)")
        if shape[-1] != a.shape[-1] and not (shape[-1] and a.shape[-1] == 1):
            # sparse integer labels (F_out = 1) against class scores are allowed
            raise ValueError(f"`{label}` has F_out={a.shape[-1]} but the model's output {k} "
                             f"has {shape[-1]} features")


def check_windows(model, seq_len, t, masked) -> None:
    """Refuse recurrent layers that windows would silently change.

    A backward RNN (``go_backwards=True``, the backward half of ``Bidirectional``) reads a
    window from its end, so no state carried from the previous window can continue it.
    With masks, a custom cell's masked outputs cannot be carried across windows."""
    if seq_len is None or seq_len >= t:
        return
    mask_layers = [layer for layer in model._flatten_layers(include_self=False)
                   if isinstance(layer, keras.layers.Masking)
                   or getattr(layer, "mask_zero", False)]
    if getattr(model, "_keraseq_mask_reaches_rnn", True) is False:
        mask_layers = []  # dropped before the recurrent layers (Keras ignores it too)
    if mask_layers and not masked and input_mask_rule(model) is None:
        raise ValueError(
            f"layer {mask_layers[0].name!r} masks time steps, but keraseq reads which steps "
            f"are real only from a keras.layers.Masking layer applied directly to a model "
            f"input; with windows (seq_len={seq_len} < T={t}) pass `lengths` (or a list of "
            f"(T_i, F) arrays as `x`) so that each series' last real step is known")
    masked = masked or bool(mask_layers)
    backward = [layer for layer in model._flatten_layers(include_self=False)
                if isinstance(layer, keras.layers.Bidirectional)
                or (isinstance(layer, keras.layers.RNN) and layer.go_backwards)]
    if backward:
        kind = ("Bidirectional" if isinstance(backward[0], keras.layers.Bidirectional)
                else "go_backwards=True")
        raise ValueError(
            f"layer {backward[0].name!r} ({kind}) runs backwards in time: a window of "
            f"seq_len={seq_len} < T={t} would restart its backward pass from each "
            f"window's end, which is not the whole-sequence result; use seq_len=None "
            f"(or >= T) for this model")
    for layer in window_bound_layers(model):
        warnings.warn(
            f"layer {layer.name!r} ({type(layer).__name__}) sees only its window of "
            f"seq_len={seq_len} steps, not the series before it: the result depends on "
            f"seq_len (use seq_len=None or >= T={t} for the whole-sequence result)",
            UserWarning, stacklevel=4)
    for layer in find_rnn_layers(model):
        if masked and not carries_masked_output(layer) and not layer.zero_output_for_mask:
            raise ValueError(
                f"layer {layer.name!r} has a {type(layer.cell).__name__} cell: keraseq "
                f"carries the output of masked (padded) steps across windows only for "
                f"SimpleRNN/GRU/LSTM cells; use seq_len=None for unequal lengths with it")


#: Layers that mix time steps and that keraseq does not carry across windows.
_WINDOW_BOUND = tuple(getattr(keras.layers, name) for name in (
    "MultiHeadAttention", "GroupQueryAttention", "Attention", "AdditiveAttention",
    "GlobalAveragePooling1D", "GlobalMaxPooling1D", "AveragePooling1D", "MaxPooling1D",
    "Flatten") if hasattr(keras.layers, name))


def window_bound_layers(model) -> list:
    """Layers whose output at a step depends on other steps of the window only (not carried):
    attention, pooling over time, non-causal or strided convolutions."""
    carried = find_causal_convs(model)
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, _WINDOW_BOUND):
            found.append(layer)
        elif isinstance(layer, keras.layers.Conv1D) and layer not in carried \
                and (layer.kernel_size[0] > 1 or layer.strides[0] > 1):
            found.append(layer)
    return found


def keyed(value, model, name):
    """A dict keyed by the model's input (``x``) or output (``y``) names as a tuple in the
    model's order; anything else unchanged."""
    if not isinstance(value, dict):
        return value
    if name == "x":
        names = [getattr(t, "name", None) for t in (getattr(model, "inputs", None) or [])]
    else:
        names = list(getattr(model, "output_names", None) or [])
    if not names or None in names:
        raise TypeError(f"`{name}` is a dict but the model's {'inputs' if name == 'x' else 'outputs'}"
                        f" have no names; pass a tuple in the model's order")
    missing = [k for k in names if k not in value]
    unknown = [k for k in value if k not in names]
    if missing or unknown:
        raise ValueError(f"`{name}` is a dict with keys {sorted(value)}; the model's "
                         f"{'inputs' if name == 'x' else 'outputs'} are {names}"
                         + (f" (missing {missing})" if missing else "")
                         + (f" (unknown {unknown})" if unknown else ""))
    return tuple(value[k] for k in names)


def unragged(x, y, sample_weight, lengths):
    """Ragged inputs (lists of per-series arrays) padded at the end; the lengths they give.

    Returns ``(x, y, sample_weight, lengths)``; arrays pass through untouched."""
    if is_ragged(x):
        if lengths is not None:
            raise ValueError("`lengths` is given by the ragged `x` (a list of (T_i, F) "
                             "arrays); pass padded `x` with `lengths`, or the list alone")
        x, lengths = pad_ragged(x, "x", np.float32 if all(
            np.asarray(s).dtype.kind == "f" for s in x) else None)
        if x.ndim != 3:
            raise ValueError(f"`x` is a list of series of shape (T_i,); expected (T_i, F) "
                             f"arrays (use a[:, None] for one feature)")
    for name, value in (("y", y), ("sample_weight", sample_weight)):
        if value is None or not is_ragged(value):
            continue
        if lengths is None and len({len(v) for v in value}) == 1:
            continue  # a list of equal rows: an ordinary array
        if lengths is None:
            raise ValueError(f"`{name}` is a list of per-step series but `x` is not; pass a "
                             f"list of (T_i, F) arrays as `x` too (or padded arrays and "
                             f"`lengths`)")
        padded, got = pad_ragged(value, name, np.float32 if name == "sample_weight" else None)
        wrong = np.flatnonzero(got != np.asarray(lengths)[:len(got)]) if len(got) == len(
            lengths) else [min(len(got), len(lengths)) - 1]
        if len(got) != len(lengths) or len(wrong):
            k = int(wrong[0])
            raise ValueError(f"`{name}[{k}]` has {got[k] if k < len(got) else 'no'} time steps "
                             f"but `x[{k}]` has {lengths[k] if k < len(lengths) else 'none'}; "
                             f"per-step series must match `x` in length")
        if padded.shape[1] < int(np.max(lengths)):
            padded = np.pad(padded, [(0, 0), (0, int(np.max(lengths)) - padded.shape[1])]
                            + [(0, 0)] * (padded.ndim - 2))
        if name == "y":
            y = padded
        else:
            sample_weight = padded
    return x, y, sample_weight, lengths


class FitData(NamedTuple):
    """The checked data of one ``fit`` call."""
    xs: tuple            #: inputs, each (N, T, F)
    ys: tuple            #: targets, each (N, T, F_out) or (N, F_out)
    ws: tuple | None     #: (sample_weight,) or None
    per_series: bool     #: targets per series (N, F_out)
    window_loss: bool    #: a callable loss(model, x, y)
    val: tuple | None    #: (xs, ys, ws, lengths) of validation_data, or None
    lengths: np.ndarray | None  #: real steps per series, or None


def split_validation(x, y, sample_weight, lengths, split, validation_data):
    """``validation_split`` as ``model.fit``: the last fraction of the series is held out
    (lazily for out-of-core arrays). Returns ``(x, y, sample_weight, lengths,
    validation_data)``."""
    if not split:
        return x, y, sample_weight, lengths, validation_data
    if not isinstance(split, (int, float)) or not 0.0 <= split < 1.0:
        raise ValueError(f"`validation_split` must be a fraction in [0, 1), got {split!r}")
    if validation_data is not None:
        raise ValueError("pass `validation_data` or `validation_split`, not both")
    n = len(x) if isinstance(x, SliceTuple) else int(
        np.shape(x[0] if isinstance(x, (tuple, list)) else x)[0])
    at = int(math.floor(n * (1.0 - split)))  # Keras's rule: the last rows
    if at < 1 or at >= n:
        raise ValueError(f"`validation_split={split}` leaves {at} of {n} series for "
                         f"training; it needs at least one series on each side")
    (x, vx), (y, vy), (sample_weight, vw), (lengths, vl) = (
        split_rows(v, at) for v in (x, y, sample_weight, lengths))
    return x, y, sample_weight, lengths, (vx, vy, vw, vl)


def check_fit(x, y, sample_weight, lengths, validation_data, loss, metrics, rebatch,
              comm) -> FitData:
    """Every check of a ``fit`` call's data, before any training step; under MPI every rank
    raises the same error (each checks the finiteness of its own block of rows)."""
    def validate():
        xs, ys, ws = check_xy(x, y, sample_weight)
        per_series = ys[0].ndim == 2
        window_loss = is_window_loss(loss)
        if window_loss and ws is not None:
            raise ValueError("`sample_weight` needs a Keras loss; a callable loss(model, x, y) "
                             "returns one number per window and cannot weight series")
        if window_loss and metrics:
            raise ValueError("`metrics` need a Keras loss: with a callable loss(model, x, y) "
                             "keraseq never sees the predictions")
        if rebatch:
            if per_series:
                raise ValueError("`rebatch=True` needs per-step targets `y` (N, T, F_out)")
            if window_loss:
                raise ValueError("`rebatch=True` needs a Keras loss (padding is masked out)")
        checked = None
        if lengths is not None:
            if rebatch:
                raise ValueError("`rebatch=True` cannot be combined with unequal lengths "
                                 "(`lengths` or a ragged `x`)")
            checked = check_lengths(lengths, int(xs[0].shape[0]), int(xs[0].shape[1]))
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or \
                    len(validation_data) not in (2, 3, 4):
                raise ValueError("`validation_data` must be a tuple (x_val, y_val), "
                                 "(x_val, y_val, sample_weight_val) or (x_val, y_val, "
                                 "sample_weight_val, lengths_val)")
            vx, vy, vw, vl = unragged(*(tuple(validation_data) + (None, None))[:4])
            val = check_xy(vx, vy, vw)
            if val[1][0].ndim != ys[0].ndim:
                raise ValueError("`validation_data` targets must be of the same kind as `y`")
            val = val + (None if vl is None else check_lengths(
                vl, int(val[0][0].shape[0]), int(val[0][0].shape[1]),
                "validation_data lengths"),)
        lo, hi = dist.shard(int(xs[0].shape[0]), comm)
        for name, arrays in (("x", xs), ("y", ys), ("sample_weight", ws or ())):
            check_finite(arrays, name, rows=(lo, hi))
        if val is not None:
            vlo, vhi = dist.shard(int(val[0][0].shape[0]), comm)
            for name, arrays in (("x", val[0]), ("y", val[1]), ("sample_weight", val[2] or ())):
                check_finite(arrays, f"validation_data {name}", rows=(vlo, vhi))
        return FitData(xs, ys, ws, per_series, window_loss, val, checked)

    return dist.agree(comm, validate)
