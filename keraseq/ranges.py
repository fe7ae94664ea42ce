"""Token ids and sparse labels within the model's range, checked before a step uses them.

A token id outside ``[0, input_dim)`` of the ``Embedding`` that reads it, or a label outside
``[0, classes)`` of an output trained with a sparse loss, is a silent wrong answer in a
compiled program: TensorFlow's gather clamps or returns zeros, JAX's clamps (or, later, the
loss turns non-finite with no word about ids). keraseq checks them as it reads the data.

What lives here: which model inputs an ``Embedding`` reads directly and which outputs a sparse
loss reads integer labels for (:func:`model_ranges`), and the check of arrays against them
(:func:`check_ranges`), streamed over blocks of rows (out-of-core arrays are never loaded
whole) and naming the argument, the value, the row and the step. What does not: where data is
read (``checks.check_fit``, ``inference``, the pipeline reader in ``batches``, ``text``).

Example:
    >>> import keras, numpy as np
    >>> from keraseq.ranges import model_ranges, check_ranges
    >>> m = keras.Sequential([keras.Input((None,), dtype="int32"),
    ...                       keras.layers.Embedding(10, 4), keras.layers.Dense(3)])
    >>> ranges = model_ranges(m, "sparse_categorical_crossentropy")
    >>> try:
    ...     check_ranges(ranges, (np.array([[1, 12]]),), None)
    ... except ValueError as e:
    ...     print(str(e)[:45])
    `x` holds token id 12 at row 0, step 1: the E
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import keras
import numpy as np

from .lengths import input_readers

__all__ = ["Ranges", "model_ranges", "check_ranges", "clear_padding"]

_CHUNK_BYTES = 64 * 2**20
_SPARSE = "sparsecategoricalcrossentropy"  # the loss's name, any case, no underscores


class Bound(NamedTuple):
    """Values of array ``at`` (an input or an output) must lie in ``[0, high)`` (or equal
    ``ignore``); ``why`` says whose range it is, for the message."""

    at: int
    high: int
    ignore: int | None
    why: str


class Ranges(NamedTuple):
    """The bounds of a model's token-id inputs and sparse-label outputs."""

    ids: tuple[Bound, ...] = ()
    labels: tuple[Bound, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.ids or self.labels)


def _embedding_inputs(model) -> list[Bound]:
    return [
        Bound(
            k,
            int(layer.input_dim),
            None,
            f"the Embedding '{layer.name}' that reads it has input_dim={layer.input_dim}, "
            f"so ids must lie in [0, {layer.input_dim})",
        )
        for k, layer in input_readers(model, keras.layers.Embedding)
    ]


def _sparse(loss) -> tuple[bool, int | None, str]:
    """Whether ``loss`` (one output's: a name, function or ``Loss``) is sparse categorical
    cross-entropy; its ``ignore_class``; its name."""
    ignore = None
    if isinstance(loss, keras.losses.Loss):
        name = getattr(getattr(loss, "fn", None), "__name__", None) or type(loss).__name__
        ignore = (getattr(loss, "_fn_kwargs", None) or {}).get("ignore_class")
    else:
        name = loss if isinstance(loss, str) else getattr(loss, "__name__", "") or ""
    return name.lower().replace("_", "") == _SPARSE, ignore, name


def _output_losses(loss, names: list[str]) -> list:
    if isinstance(loss, dict):
        return [loss.get(name) for name in names]
    if isinstance(loss, (list, tuple)):
        return list(loss) if len(loss) == len(names) else [None] * len(names)
    return [loss] * len(names)


def model_ranges(model, loss: Any = None, classes: Sequence[int | None] | None = None) -> Ranges:
    """The bounds ``model`` puts on its data: every input an ``Embedding`` reads directly, and
    every output whose loss is sparse categorical cross-entropy (its classes: the output's
    last axis, or ``classes[k]`` when given, e.g. from the traced output layouts).

    ``loss``: a Keras loss, or one per output (list or dict by output name); ``None`` or a
    callable ``loss(model, x, y)``: no labels are checked."""
    ids = _embedding_inputs(model)
    labels = []
    try:
        outputs = list(getattr(model, "outputs", None) or [])
    except (AttributeError, ValueError):
        outputs = []
    n_out = len(classes) if classes is not None else len(outputs)
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != n_out:
        names = [f"output_{k}" for k in range(n_out)]
    for k, item in enumerate(_output_losses(loss, names) if loss is not None else []):
        sparse, ignore, loss_name = _sparse(item) if item is not None else (False, None, "")
        if not sparse:
            continue
        width = classes[k] if classes is not None else outputs[k].shape[-1]
        if width is None or int(width) < 2:
            continue
        allowed = "" if ignore is None else f" or {ignore} (ignore_class)"
        why = (
            f"output '{names[k]}' has {int(width)} classes, so its loss ({loss_name}) needs "
            f"labels in [0, {int(width)}){allowed}"
        )
        labels.append(Bound(k, int(width), None if ignore is None else int(ignore), why))
    return Ranges(tuple(ids), tuple(labels))


def _first_outside(block: np.ndarray, bound: Bound, per_step: bool, steps=None):
    """``(row, step, value)`` of the first value of ``block`` outside ``bound`` (``step``:
    ``None`` without a time axis; steps at or past ``steps[row]`` are padding, not looked
    at), or ``None``."""
    a = block.reshape(block.shape[0], -1)
    if a.size == 0 or (a.min() >= 0 and a.max() < bound.high):  # the common case
        return None
    bad = (a < 0) | (a >= bound.high)
    if bound.ignore is not None:
        bad &= a != bound.ignore
    if per_step and steps is not None:
        per_row = a.shape[1] // block.shape[1]  # values per step (a trailing axis of 1)
        bad &= (np.arange(a.shape[1]) // per_row)[None, :] < steps[:, None]
    if not bad.any():
        return None
    row, col = np.argwhere(bad)[0]
    step = int(col) // (a.shape[1] // block.shape[1]) if per_step else None
    return int(row), step, a[row, col].item()


def check_ranges(
    ranges: Ranges,
    xs: Sequence,
    ys: Sequence | None,
    rows: tuple[int, int] | None = None,
    lengths: np.ndarray | None = None,
    name: str = "x",
    y_name: str = "y",
    where: str = "",
) -> None:
    """Raise ``ValueError`` at the first token id or label outside its bound in rows
    ``[lo, hi)`` (all rows: ``None``) of ``xs`` (inputs ``(N, T)``) and ``ys`` (targets, sparse
    labels with a trailing axis of 1); ``lengths``: steps past a series' length are padding.
    ``name``/``y_name`` name the arguments; ``where`` is added to the location (a batch)."""
    if not ranges:
        return
    groups = [(ranges.ids, xs, name)]
    if ys is not None:
        groups.append((ranges.labels, ys, y_name))
    for bounds, arrays, label in groups:
        for bound in bounds:
            if bound.at >= len(arrays):
                continue
            a = arrays[bound.at]
            if np.dtype(a.dtype).kind not in "iuf":
                continue
            what = label if len(arrays) == 1 else f"{label}[{bound.at}]"
            noun = "token id" if bounds is ranges.ids else "label"
            # token ids (N, T[, 1]) always have steps; labels per step (N, T, 1), per series (N, 1)
            per_step = len(a.shape) >= (2 if bounds is ranges.ids else 3)
            lo, hi = rows if rows is not None else (0, int(a.shape[0]))
            row_bytes = max(1, int(np.prod(a.shape[1:])) * np.dtype(a.dtype).itemsize)
            step = max(1, _CHUNK_BYTES // row_bytes)
            for start in range(lo, hi, step):
                stop = min(hi, start + step)
                steps = None if lengths is None else np.asarray(lengths[start:stop])
                found = _first_outside(np.asarray(a[start:stop]), bound, per_step, steps)
                if found is None:
                    continue
                row, t, value = found
                at = f"row {start + row}" + ("" if t is None else f", step {t}") + where
                raise ValueError(f"`{what}` holds {noun} {value!r} at {at}: {bound.why}")


def clear_padding(ranges: Ranges, xs: tuple, ys: tuple, lengths: np.ndarray) -> tuple:
    """``(xs, ys)`` of a read minibatch with every out-of-range token id or label past its
    series' length (padding: any value, never trained on) set to 0, on copies, so that no
    backend sees it (TensorFlow's gather turns such a value into NaN, which a mask times 0
    keeps NaN). Arrays that need nothing are returned as they are."""
    new_xs, new_ys = list(xs), list(ys)
    for bounds, arrays, min_rank in ((ranges.ids, new_xs, 2), (ranges.labels, new_ys, 3)):
        for bound in bounds:
            if bound.at >= len(arrays) or len(arrays[bound.at].shape) < min_rank:
                continue
            a = arrays[bound.at]
            padding = np.arange(a.shape[1])[None, :] >= np.asarray(lengths)[:, None]
            padding = padding.reshape(padding.shape + (1,) * (a.ndim - 2))
            bad = ((a < 0) | (a >= bound.high)) & padding
            if bad.any():
                arrays[bound.at] = np.where(bad, np.zeros((), a.dtype), a)
    return tuple(new_xs), tuple(new_ys)
