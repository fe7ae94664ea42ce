"""Input containers: ``SliceTuple``, lazy row ranges, and the channels-first converter.

What lives here: the container that lets ``GridSearchCV``, ``cross_val_score`` and friends
split a multi-input ``x`` (or multi-output ``y``) by series, as skorch's ``SliceDict`` does
for dicts; :class:`RowRange`, :func:`split_rows` and :func:`split_validation`
(``validation_split`` without reading out-of-core data); :func:`from_channels_first` for
sktime's and aeon's ``(N, channels, T)``; what kind of source an input is (:func:`is_pipeline`:
ready minibatches, not arrays) and the structure the model takes its arrays in (:func:`keyed`:
dicts by the model's names, :func:`as_model_input`).
What does not: validation of the arrays (``validation.py``), ragged series (``lengths.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import keras
import numpy as np

__all__ = [
    "SliceTuple",
    "RowRange",
    "ExpandLast",
    "expand_last",
    "split_rows",
    "split_validation",
    "keyed",
    "from_channels_first",
    "is_pipeline",
    "as_model_input",
]


class SliceTuple:
    """A tuple of arrays sharing the leading axis N; ``st[rows]`` slices every array.

    scikit-learn sees an object of length N with ``shape == (N,)``; keraseq sees the tuple
    of arrays (one per model input or output).

    Example:
        >>> import numpy as np
        >>> from keraseq import SliceTuple
        >>> st = SliceTuple(np.zeros((10, 5, 2)), np.ones((10, 5, 3)))
        >>> len(st), st[[0, 3]].arrays[1].shape
        (10, (2, 5, 3))
    """

    def __init__(self, *arrays: Any):
        if not arrays:
            raise ValueError("SliceTuple needs at least one array")
        n = {int(np.shape(a)[0]) for a in arrays}
        if len(n) != 1:
            raise ValueError(f"SliceTuple arrays must share N, got leading sizes {sorted(n)}")
        self.arrays = tuple(arrays)

    @property
    def shape(self) -> tuple[int]:
        return (int(np.shape(self.arrays[0])[0]),)

    @property
    def ndim(self) -> int:
        return 1

    def __len__(self) -> int:
        return self.shape[0]

    def __iter__(self) -> Iterator:
        return iter(self.arrays)

    def __getitem__(self, rows) -> SliceTuple:
        return SliceTuple(*(np.asarray(a)[rows] for a in self.arrays))

    def __repr__(self) -> str:
        shapes = ", ".join(str(tuple(np.shape(a))) for a in self.arrays)
        return f"SliceTuple({shapes})"


class RowRange:
    """Rows ``[lo, hi)`` of an array (ndarray, memmap, ``h5py.Dataset``) without reading them.

    ``validation_split`` uses it so that an out-of-core array is split lazily: indexing maps
    rows into the parent, and only what the minibatch reader asks for is read.

    Example:
        >>> import numpy as np
        >>> r = RowRange(np.arange(10).reshape(5, 2), 3, 5)
        >>> r.shape, r[0:2].tolist()
        ((2, 2), [[6, 7], [8, 9]])
    """

    def __init__(self, array: Any, lo: int, hi: int):
        self.array, self.lo, self.hi = array, int(lo), int(hi)

    @property
    def shape(self) -> tuple:
        return (self.hi - self.lo,) + tuple(self.array.shape[1:])

    @property
    def dtype(self):
        return self.array.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.hi - self.lo

    def __getitem__(self, key):
        rows, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if isinstance(rows, slice):
            start, stop, step = rows.indices(len(self))
            if step != 1:
                raise IndexError("RowRange supports contiguous slices and index arrays")
            rows = slice(self.lo + start, self.lo + stop)
        elif isinstance(rows, (int, np.integer)):
            rows = self.lo + (int(rows) if rows >= 0 else len(self) + int(rows))
        else:
            rows = np.asarray(rows) + self.lo
        return self.array[(rows,) + rest] if rest else self.array[rows]

    def __array__(self, dtype=None, copy=None):
        out = np.asarray(self.array[self.lo : self.hi])
        return out if dtype is None else out.astype(dtype)


class ExpandLast:
    """An array read with one more axis of size 1 at the end, lazily (sparse labels
    ``(N, T)`` of an ``h5py.Dataset`` or memmap seen as ``(N, T, 1)``).

    Example:
        >>> import numpy as np
        >>> e = ExpandLast(np.arange(6).reshape(2, 3))
        >>> e.shape, e[1:2].shape
        ((2, 3, 1), (1, 3, 1))
    """

    def __init__(self, array: Any):
        self.array = array

    @property
    def shape(self) -> tuple:
        return tuple(self.array.shape) + (1,)

    @property
    def dtype(self):
        return self.array.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def __getitem__(self, key):
        if isinstance(key, tuple):  # an index over the new last axis is dropped
            key = key[: len(self.array.shape)]
        return np.asarray(self.array[key])[..., None]

    def __array__(self, dtype=None, copy=None):
        out = np.asarray(self.array)[..., None]
        return out if dtype is None else out.astype(dtype)


def expand_last(a: Any) -> Any:
    """``a[..., None]``: a view for an ndarray (memmaps included), :class:`ExpandLast`
    for anything else (``h5py.Dataset``, :class:`RowRange`)."""
    return a[..., None] if isinstance(a, np.ndarray) else ExpandLast(a)


def split_rows(value: Any, at: int) -> tuple[Any, Any]:
    """``(value[:at], value[at:])`` for an array, a tuple/list of arrays (one per input or
    output), a :class:`SliceTuple` or ``None`` — lazily for out-of-core arrays."""
    if value is None:
        return None, None
    if isinstance(value, SliceTuple):
        parts = [split_rows(a, at) for a in value.arrays]
        return SliceTuple(*(p[0] for p in parts)), SliceTuple(*(p[1] for p in parts))
    if isinstance(value, (tuple, list)):
        parts = [split_rows(a, at) for a in value]
        return tuple(p[0] for p in parts), tuple(p[1] for p in parts)
    if isinstance(value, np.ndarray):
        return value[:at], value[at:]  # views
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return RowRange(value, 0, at), RowRange(value, at, int(value.shape[0]))
    value = np.asarray(value)
    return value[:at], value[at:]


def split_validation(x, y, sample_weight, lengths, split, validation_data, resets=None):
    """``validation_split`` as ``model.fit``: the last fraction of the series is held out
    (lazily for out-of-core arrays). Returns ``(x, y, sample_weight, lengths,
    validation_data, resets)``."""
    if not split:
        return x, y, sample_weight, lengths, validation_data, resets
    if not isinstance(split, (int, float)) or not 0.0 <= split < 1.0:
        raise ValueError(f"`validation_split` must be a fraction in [0, 1), got {split!r}")
    if validation_data is not None:
        raise ValueError("pass `validation_data` or `validation_split`, not both")
    n = (
        len(x)
        if isinstance(x, SliceTuple)
        else int(np.shape(x[0] if isinstance(x, (tuple, list)) else x)[0])
    )
    at = math.floor(n * (1.0 - split))  # Keras's rule: the last rows
    if at < 1 or at >= n:
        raise ValueError(
            f"`validation_split={split}` leaves {at} of {n} series for "
            f"training; it needs at least one series on each side"
        )
    (x, vx), (y, vy), (sample_weight, vw), (lengths, vl), (resets, vr) = (
        split_rows(v, at) for v in (x, y, sample_weight, lengths, resets)
    )
    return x, y, sample_weight, lengths, (vx, vy, vw, vl, vr), resets


def from_channels_first(x: Any) -> Any:
    """Series in sktime's / aeon's layout ``(N, channels, T)`` — or a list of ``(channels,
    T_i)`` arrays for unequal lengths — as keraseq's ``(N, T, channels)`` (a list of
    ``(T_i, channels)``), without copying the 3-D array (a transposed view).

    Example:
        >>> import numpy as np
        >>> from keraseq import from_channels_first
        >>> from_channels_first(np.zeros((5, 3, 40))).shape
        (5, 40, 3)
        >>> [a.shape for a in from_channels_first([np.zeros((3, 7)), np.zeros((3, 9))])]
        [(7, 3), (9, 3)]
    """
    if isinstance(x, (list, tuple)):
        out = [np.asarray(a) for a in x]
        for k, a in enumerate(out):
            if a.ndim != 2:
                raise ValueError(f"`x[{k}]` has shape {a.shape}; expected (channels, T_i)")
        return [a.T for a in out]
    a = np.asarray(x)
    if a.ndim != 3:
        raise ValueError(f"`x` has shape {a.shape}; expected (N, channels, T)")
    return np.swapaxes(a, 1, 2)


def as_model_input(model, xs: Sequence[Any]):
    """The arrays ``xs`` (one per input, in the model's input order) in the structure the
    model takes: the array alone for one input, else the model's own (a dict for a model
    built on a dict of inputs, where Keras warns at a tuple)."""
    if len(xs) == 1:
        return xs[0]
    struct = getattr(model, "_inputs_struct", None)
    if isinstance(struct, dict) and len(keras.tree.flatten(struct)) == len(xs):
        return keras.tree.pack_sequence_as(struct, list(xs))
    return tuple(xs)


def is_pipeline(value) -> bool:
    """A source of ready minibatches as ``model.fit`` takes them (not arrays)."""
    from keras.src.trainers.data_adapters import (
        is_grain_dataset,
        is_tf_dataset,
        is_torch_dataloader,
    )

    if (
        isinstance(value, keras.utils.PyDataset)
        or is_tf_dataset(value)
        or is_torch_dataloader(value)
        or is_grain_dataset(value)
    ):
        return True
    if isinstance(value, (list, tuple)):  # a list of (x, y[, w]) batches
        return bool(value) and all(
            isinstance(item, (list, tuple)) and len(item) in (2, 3) and hasattr(item[0], "shape")
            for item in value
        )
    if hasattr(value, "shape") or isinstance(value, (dict, str, bytes)):
        return False
    if isinstance(value, SliceTuple):
        return False
    return hasattr(value, "__next__") or hasattr(value, "__iter__")


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
        raise TypeError(
            f"`{name}` is a dict but the model's {'inputs' if name == 'x' else 'outputs'}"
            f" have no names; pass a tuple in the model's order"
        )
    missing = [k for k in names if k not in value]
    unknown = [k for k in value if k not in names]
    if missing or unknown:
        raise ValueError(
            f"`{name}` is a dict with keys {sorted(value)}; the model's "
            f"{'inputs' if name == 'x' else 'outputs'} are {names}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unknown {unknown})" if unknown else "")
        )
    return tuple(value[k] for k in names)
