"""Unequal-length series: ragged input, lengths, time masks and length-grouped minibatches.

What lives here: turning a list of ``(T_i, F)`` arrays into a padded ``(N, T, F)`` array and
its lengths (:func:`pad_ragged`, :func:`unpad`; :func:`unragged` for ``x``, ``y`` and
``sample_weight`` together), reading which time steps are real from the
model's own input ``Masking`` layer or ``Embedding(mask_zero=True)``
(:func:`input_mask_rule`), the per-minibatch time mask and the number of windows it needs
(:func:`time_mask`, :func:`windows_needed`), and the length-grouped minibatch plan
(:func:`grouped_plan`). What does not: the masked window loop
itself (``backend/``), which receives the time mask.

Series are padded at the end. A time step is real when it is before the series' length (given
explicitly, or by a ragged input) and, when the model starts with ``keras.layers.Masking``,
when that layer keeps it (the same rule as Keras: some feature differs from ``mask_value``), and
when it starts with ``Embedding(mask_zero=True)``, when its token id is not 0.

Example:
    >>> import numpy as np
    >>> x, lengths = pad_ragged([np.ones((2, 3)), np.ones((4, 3))], "x")
    >>> x.shape, lengths.tolist()
    ((2, 4, 3), [2, 4])
    >>> [a.shape for a in unpad(x, lengths)]
    [(2, 3), (4, 3)]
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

__all__ = [
    "is_ragged",
    "pad_ragged",
    "unpad",
    "unragged",
    "check_lengths",
    "input_mask_rule",
    "input_readers",
    "time_mask",
    "real_steps",
    "windows_needed",
    "series_lengths",
    "grouped_plan",
]


def is_ragged(value: Any, series_rank: int | None = None) -> bool:
    """True for a list/tuple (or object ndarray) of per-series arrays ``(T_i, F)``/``(T_i,)``
    whose lengths differ or whose rank is below the (N, T, F) layout; with ``series_rank``
    (the rank of one series of the model's one input, e.g. 3 for ``(T_i, W, C)``), also a
    list of arrays of that rank."""
    if isinstance(value, np.ndarray):
        if value.dtype != object or value.ndim != 1:
            return False
        value = list(value)
    if not isinstance(value, (list, tuple)) or not value:
        return False
    items = [np.asarray(v) if not hasattr(v, "ndim") else v for v in value]
    if (
        series_rank is not None
        and series_rank >= 3
        and isinstance(value, list)
        and all(hasattr(v, "ndim") and v.ndim == series_rank for v in items)
    ):
        return True
    if not all(hasattr(v, "ndim") and v.ndim in (1, 2) for v in items):
        return False
    # A tuple of 2-D arrays of one shape is a multi-input/multi-output tuple of (N, F) arrays,
    # which keraseq rejects with its shape message; ragged means a list of series.
    return isinstance(value, list) or len({v.shape[0] for v in items}) > 1


def pad_ragged(seqs: Sequence, name: str, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """Stack series ``(T_i, F)`` (or ``(T_i,)``) into ``(N, max T_i, F)`` padded with zeros at
    the end; returns ``(padded, lengths)``."""
    items = [np.asarray(s) for s in seqs]
    ranks = {a.ndim for a in items}
    if len(ranks) != 1:
        raise ValueError(
            f"`{name}` is a list of series of mixed ranks {sorted(ranks)}; pass "
            f"arrays of shape (T_i, F) for every series"
        )
    tails = {a.shape[1:] for a in items}
    if len(tails) != 1:
        raise ValueError(
            f"`{name}` is a list of series with different feature shapes "
            f"{sorted(tails)}; every series needs shape (T_i, F) with one F"
        )
    for k, a in enumerate(items):
        if a.dtype.kind not in "biuf":
            raise TypeError(f"`{name}[{k}]` has dtype {a.dtype}; expected numbers")
        if a.shape[0] == 0:
            raise ValueError(f"`{name}[{k}]` has no time steps; every series needs T_i >= 1")
    lengths = np.array([a.shape[0] for a in items], np.int64)
    dtype = dtype or np.result_type(*items)
    out = np.zeros((len(items), int(lengths.max())) + tails.pop(), dtype)
    for k, a in enumerate(items):
        out[k, : a.shape[0]] = a
    return out, lengths


def unpad(padded: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    """The inverse of :func:`pad_ragged`: each series cut back to its length."""
    return [padded[k, : int(n)] for k, n in enumerate(lengths)]


def unragged(x, y, sample_weight, lengths, series_rank=None):
    """Ragged inputs (lists of per-series arrays) padded at the end; the lengths they give.

    ``series_rank`` (``model_facts.step_rank``): the rank of one series of the model's
    input, so that a list of ``(T_i, W, C)`` series (``ConvLSTM1D``) is told from a tuple of
    inputs.
    Returns ``(x, y, sample_weight, lengths)``; arrays pass through untouched."""
    if is_ragged(x, series_rank):
        if lengths is not None:
            raise ValueError(
                "`lengths` is given by the ragged `x` (a list of (T_i, F) "
                "arrays); pass padded `x` with `lengths`, or the list alone"
            )
        x, lengths = pad_ragged(
            x, "x", np.float32 if all(np.asarray(s).dtype.kind == "f" for s in x) else None
        )
        if x.ndim == 2 and x.dtype.kind == "f":
            raise ValueError(
                "`x` is a list of series of shape (T_i,); expected (T_i, F) "
                "arrays (use a[:, None] for one feature)"
            )
    for name, value in (("y", y), ("sample_weight", sample_weight)):
        if value is None or not is_ragged(value):
            continue
        if lengths is None and len({len(v) for v in value}) == 1:
            continue  # a list of equal rows: an ordinary array
        if lengths is None:
            raise ValueError(
                f"`{name}` is a list of per-step series but `x` is not; pass a "
                f"list of (T_i, F) arrays as `x` too (or padded arrays and "
                f"`lengths`)"
            )
        padded, got = pad_ragged(value, name, np.float32 if name == "sample_weight" else None)
        wrong = (
            np.flatnonzero(got != np.asarray(lengths)[: len(got)])
            if len(got) == len(lengths)
            else [min(len(got), len(lengths)) - 1]
        )
        if len(got) != len(lengths) or len(wrong):
            k = int(wrong[0])
            raise ValueError(
                f"`{name}[{k}]` has {got[k] if k < len(got) else 'no'} time steps "
                f"but `x[{k}]` has {lengths[k] if k < len(lengths) else 'none'}; "
                f"per-step series must match `x` in length"
            )
        if padded.shape[1] < int(np.max(lengths)):
            padded = np.pad(
                padded,
                [(0, 0), (0, int(np.max(lengths)) - padded.shape[1])]
                + [(0, 0)] * (padded.ndim - 2),
            )
        if name == "y":
            y = padded
        else:
            sample_weight = padded
    return x, y, sample_weight, lengths


def check_lengths(lengths: Any, n: int, t: int, name: str = "lengths") -> np.ndarray:
    """``lengths`` as an int array of shape (N,) with 0 <= length <= T; else a clear error."""
    a = np.asarray(lengths)
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"`{name}` has shape {a.shape}; expected one length per series: ({n},)")
    if a.dtype.kind not in "iu" and not (a.dtype.kind == "f" and np.all(a == np.round(a))):
        raise TypeError(f"`{name}` has dtype {a.dtype}; expected integers (time steps)")
    a = a.astype(np.int64)
    if a.size and (a.min() < 1 or a.max() > t):
        raise ValueError(f"`{name}` must lie in [1, T={t}]; got values in [{a.min()}, {a.max()}]")
    return a


def input_readers(model: keras.Model, kinds) -> list[tuple[int, Any]]:
    """``(k, layer)`` for every layer of class ``kinds`` inside ``model`` that reads model
    input ``k`` directly (``Sequential([Input, layer, ...])`` included)."""
    try:
        inputs = list(getattr(model, "inputs", None) or [])
    except (AttributeError, ValueError):  # a subclassed model never built
        return []
    found: list[tuple[int, Any]] = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not isinstance(layer, kinds):
            continue
        for node in getattr(layer, "_inbound_nodes", []):
            for tensor in getattr(node, "input_tensors", []):
                found.extend((k, layer) for k, inp in enumerate(inputs) if tensor is inp)
    return found


#: What keraseq's probe saw of a model without a layer graph (subclassed): whether the mask
#: reached its recurrent calls. Kept here, per model object, not on the model.
_PROBED_MASKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def note_probed_masks(model: keras.Model, reached: bool) -> None:
    """Record what the probe's call of ``model`` saw (``session.probe``): whether any
    recurrent call got a mask. Read by :func:`mask_reaches_rnn` when the graph cannot tell."""
    _PROBED_MASKS[model] = bool(reached)


def mask_reaches_rnn(model: keras.Model) -> bool:
    """Whether a Keras mask reaches the model's recurrent layers (Keras drops a mask at a layer
    without mask support, e.g. ``Conv1D``: then no recurrent layer sees it and the padding is
    computed over, which keraseq must follow). Read from the model's layer graph (the mask of
    the tensor each layer holding a recurrent layer is called on), so it does not depend on
    what ran before; for a model without a graph (subclassed, or recurrent layers nested in an
    inner model), what keraseq's probe saw (``True`` before any probe). A model without
    recurrent layers: ``True`` (its mask reaches the loss)."""
    from keras.src.backend.common.masking import get_keras_mask

    rnn = keras.layers.RNN
    every = [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, rnn)
    ]
    if not every:
        return True
    holders = [
        layer
        for layer in getattr(model, "layers", [])
        if isinstance(layer, rnn)
        or (
            not isinstance(layer, keras.Model)
            and any(isinstance(s, rnn) for s in layer._flatten_layers(include_self=False))
        )
    ]
    held = {
        id(s) for h in holders for s in h._flatten_layers(include_self=True) if isinstance(s, rnn)
    }
    nodes = [node for h in holders for node in getattr(h, "_inbound_nodes", [])]
    if not nodes or any(id(layer) not in held for layer in every):
        return _PROBED_MASKS.get(model, True)
    return any(
        get_keras_mask(tensor) is not None
        for node in nodes
        for tensor in keras.tree.flatten(getattr(node, "input_tensors", []))[:1]
    )


def input_mask_rule(model: keras.Model) -> Callable | None:
    """``rule(xs) -> (B, T) bool`` when a model input feeds a ``Masking`` layer or an
    ``Embedding(mask_zero=True)`` directly (``Sequential([Input, Masking, ...])`` included)
    and that mask reaches the recurrent layers, the same rule Keras applies (some feature
    differs from ``mask_value``; the token id is not 0); else None."""
    inputs = list(getattr(model, "inputs", None) or [])
    if not inputs or not mask_reaches_rnn(model):
        # No input, or the mask is dropped before any recurrent layer, as Keras does at a
        # layer without mask support (e.g. Conv1D): Keras then runs over the padding, and so
        # does keraseq.
        return None
    rules = [
        # Keras's rule for an Embedding(mask_zero=True): token id 0 is padding (value None)
        (k, layer.mask_value if isinstance(layer, keras.layers.Masking) else None)
        for k, layer in input_readers(model, (keras.layers.Masking, keras.layers.Embedding))
        if isinstance(layer, keras.layers.Masking) or layer.mask_zero
    ]
    if not rules:
        return None

    def rule(xs):
        mask = None
        for k, value in rules:
            a = np.asarray(xs[k])
            if value is None:  # token ids (N, T): real where not 0
                real = a != 0 if a.ndim == 2 else np.any(a != 0, axis=tuple(range(2, a.ndim)))
            else:  # Masking: real where some feature differs from mask_value
                real = np.any(a != value, axis=-1)
            mask = real if mask is None else mask | real
        return mask

    return rule


def time_mask(
    xs: Sequence[np.ndarray],
    lengths: np.ndarray | None,
    rule: Callable | None,
    resets: np.ndarray | None = None,
) -> np.ndarray | None:
    """The (B, T) float32 mask of a minibatch's real steps (``None`` when every step is).

    With ``resets`` (B, T) booleans, integer marks instead (int32): bit 0 says the step is
    real, bit 1 that the row's recurrent states restart before it (0 padding, 1 real, 2 a
    masked step with a reset, 3 a real step with one); a reset past a row's ``lengths`` is
    dropped, as padding is. Marks of a minibatch without padding are int8 (1 or 3): the
    programs then apply no mask. The compiled programs tell the two apart by the dtype
    (``backend/plan.py``), so a run without resets keeps its programs; :func:`real_steps`
    reads either as the mask of real steps."""
    t = int(xs[0].shape[1])
    mask = None
    if lengths is not None:
        mask = np.arange(t)[None, :] < np.asarray(lengths)[:, None]
    if rule is not None:
        real = rule(xs)
        mask = real if mask is None else mask & real
    if resets is not None:
        flags = np.asarray(resets, bool)
        if lengths is not None:
            flags = flags & (np.arange(t)[None, :] < np.asarray(lengths)[:, None])
        if mask is None:  # every step real: int8 marks, so no mask is applied in the loops
            return (1 + 2 * flags.astype(np.int8)).astype(np.int8)
        return mask.astype(np.int32) + 2 * flags.astype(np.int32)
    return None if mask is None else mask.astype(np.float32)


def real_steps(marks: np.ndarray) -> np.ndarray:
    """The boolean mask of real steps of :func:`time_mask`'s result (a float mask or integer
    marks)."""
    marks = np.asarray(marks)
    return marks % 2 == 1 if marks.dtype.kind in "iu" else marks > 0


def windows_needed(mask: np.ndarray, seq_len: int | None) -> int:
    """How many windows of ``seq_len`` steps reach the last real step of any row (>= 1)."""
    t = mask.shape[1]
    real = real_steps(mask).any(axis=0)
    last = int(np.flatnonzero(real)[-1]) + 1 if real.any() else 1
    return math.ceil(last / (seq_len or t))


def series_lengths(
    xs: Sequence,
    lengths: np.ndarray | None,
    rule: Callable | None,
    lo: int,
    hi: int,
    block_rows: int = 1024,
) -> np.ndarray:
    """Per series of rows ``[lo, hi)``, 1 + its last real step (streamed over ``xs``)."""
    t = int(xs[0].shape[1])
    if rule is None:
        return (
            np.full(hi - lo, t, np.int64)
            if lengths is None
            else np.asarray(lengths[lo:hi], np.int64)
        )
    out = np.empty(hi - lo, np.int64)
    for start in range(lo, hi, block_rows):
        stop = min(hi, start + block_rows)
        block = tuple(np.asarray(a[start:stop]) for a in xs)
        mask = time_mask(block, None if lengths is None else lengths[start:stop], rule)
        assert mask is not None  # the rule is given
        steps = np.arange(1, t + 1)[None, :] * (mask > 0)
        out[start - lo : stop - lo] = steps.max(axis=1)
    return out


def grouped_plan(
    lo: int,
    hi: int,
    batch_size: int,
    n_steps: int,
    lengths: np.ndarray,
    shuffle: bool,
    rng: np.random.Generator | None,
    pool_batches: int = 32,
) -> list[np.ndarray]:
    """Minibatches of series of similar length over rows ``[lo, hi)`` (``lengths`` per row).

    With ``shuffle``, rows are permuted, taken in pools of ``pool_batches`` minibatches,
    each pool sorted by length and cut into minibatches, and the minibatches shuffled: the
    rows meet different partners every epoch while each minibatch stays short where its
    series are. Without, the rows are sorted by length once. Minibatches are cut from the
    longest series down, so a short remainder holds the shortest (padded rows cost a
    minibatch's full length). Rows are visited once each;
    ``n_steps`` minibatches are returned (empty ones at the end, as
    :func:`keraseq.readers.minibatch_plan`), each sorted.
    """
    rows = np.arange(lo, hi)
    lengths = np.asarray(lengths)
    if shuffle and rng is not None:
        rows = rng.permutation(rows)
        pool = pool_batches * batch_size
        batches = []
        for start in range(0, len(rows), pool):
            part = rows[start : start + pool]
            part = part[np.argsort(-lengths[part - lo], kind="stable")]
            batches += [part[k : k + batch_size] for k in range(0, len(part), batch_size)]
        batches = [batches[k] for k in rng.permutation(len(batches))]
    else:
        rows = rows[np.argsort(-lengths, kind="stable")]
        batches = [rows[k : k + batch_size] for k in range(0, len(rows), batch_size)]
    batches = [np.sort(b) for b in batches]
    assert len(batches) <= n_steps, (len(batches), n_steps)
    return batches + [rows[:0]] * (n_steps - len(batches))
