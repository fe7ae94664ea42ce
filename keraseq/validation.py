"""Checks of what the user passes: arrays, tuples of arrays, hyper-parameters and ``spec``.

What lives here: functions that turn user input into tuples of arrays (without copying or
loading out-of-core data) and raise a clear ``ValueError``/``TypeError`` that names the argument
and the expected shape, before any training step. What does not: anything that trains.
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Sequence

import numpy as np

__all__ = ["as_arrays", "check_finite", "check_positive_int", "spec_fields",
           "SPEC_ALIASES", "REQUIRED_SPEC_FIELDS"]

#: Seed (FluxUtils.jl) spelling -> keraseq keyword.
SPEC_ALIASES = {"batchsize": "batch_size", "seqsize": "seq_len"}
#: Fields a ``spec`` must have (the seed's three).
REQUIRED_SPEC_FIELDS = ("epochs", "batch_size", "seq_len")

_CHUNK_BYTES = 64 * 2**20


def _is_array_like(a: Any) -> bool:
    return hasattr(a, "shape") and hasattr(a, "dtype")


def as_arrays(value: Any, name: str, ndims: Sequence[int] | None, what: str) -> tuple:
    """``value`` (one array or a tuple/list of arrays) as a tuple of arrays.

    ndarrays, memmaps and ``h5py.Dataset`` objects are kept as they are (never copied nor
    loaded); anything else array-like (lists, tensors) goes through ``np.asarray``.
    ``ndims``: the ranks allowed (``None``: any; the caller checks them against the model).
    """
    if value is None:
        raise ValueError(f"`{name}` is None: this estimator requires {name} to be passed, but "
                         f"the target {name} is None; expected {what}" if name == "y" else
                         f"`{name}` is None; expected {what}")
    if hasattr(value, "tocsr") or type(value).__module__.startswith("scipy.sparse"):
        raise TypeError(f"`{name}` is a scipy sparse matrix; keraseq needs dense arrays: {what}")
    from .inputs import SliceTuple
    if isinstance(value, SliceTuple):
        value = value.arrays
    if isinstance(value, dict):
        raise TypeError(f"`{name}` is a dict; pass a tuple/list of arrays in the order of the "
                        f"model's inputs/outputs ({what})")
    if isinstance(value, (tuple, list)) and len(value) == 0:
        raise ValueError(f"`{name}` is empty; expected {what}")
    if isinstance(value, (tuple, list)) and all(_is_array_like(v) for v in value):
        items = list(value)  # one array per model input / output
    else:
        items = [value]  # one array (a nested Python list included)
    arrays = []
    for k, item in enumerate(items):
        label = name if len(items) == 1 else f"{name}[{k}]"
        if not _is_array_like(item) and not isinstance(item, (list, tuple, numbers.Number)):
            kind = f"{type(item).__module__}.{type(item).__qualname__}"
            raise TypeError(f"`{label}` is a {kind}; expected {what}" + (
                "; or, as model.fit takes them, a tf.data.Dataset, a keras.utils.PyDataset, "
                "a generator or an iterable of (x, y[, sample_weight]) batches (with y=None)"
                if name == "x" else ""))
        if _is_array_like(item) and not isinstance(item.dtype, np.dtype):
            item = np.asarray(item)  # a tf.Tensor / keras.ops tensor: its values, once
        if not _is_array_like(item):
            try:
                item = np.asarray(item)
            except Exception as exc:  # pragma: no cover - numpy's own message is kept
                raise TypeError(f"`{label}` is not an array: {exc}") from None
        if item.dtype.kind not in "biuf":
            raise TypeError(f"`{label}` has dtype {item.dtype}; expected a numeric array "
                            f"({what})")
        if ndims is not None and item.ndim not in ndims:
            shapes = " or ".join({3: "(N, T, F)", 2: "(N, F)" if "series" in what else "(N, T)",
                                  1: "(N,)"}[d] for d in ndims)
            raise ValueError(f"`{label}` has shape {tuple(item.shape)} (rank {item.ndim}); "
                             f"expected {shapes}: {what}")
        if any(int(d) == 0 for d in item.shape):
            raise ValueError(f"`{label}` is empty (shape {tuple(item.shape)}); expected {what}")
        arrays.append(item)
    return tuple(arrays)


def check_finite(arrays: tuple, name: str, rows: tuple[int, int] | None = None) -> None:
    """Raise ``ValueError`` naming ``name`` and the first bad row if a value is NaN or Inf.

    Streams over the rows in blocks of about 64 MB, so out-of-core arrays are never loaded whole.
    """
    for k, a in enumerate(arrays):
        if a.dtype.kind != "f":
            continue
        label = name if len(arrays) == 1 else f"{name}[{k}]"
        lo, hi = rows if rows is not None else (0, int(a.shape[0]))
        row_bytes = max(1, int(np.prod(a.shape[1:])) * a.dtype.itemsize)
        step = max(1, _CHUNK_BYTES // row_bytes)
        for start in range(lo, hi, step):
            block = np.asarray(a[start:min(hi, start + step)])
            finite = np.isfinite(block)
            if not finite.all():
                bad = start + int(np.argwhere(~finite)[0][0])
                raise ValueError(f"`{label}` contains NaN or Inf (first at row {bad}); "
                                 f"clean or impute it before fitting")


def check_positive_int(value: Any, name: str, allow_none: bool = False) -> int | None:
    """``value`` as an int >= 1, or ``None`` when allowed; else a clear error."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        expected = "a positive integer" + (" or None" if allow_none else "")
        raise TypeError(f"`{name}` must be {expected}, got {value!r}")
    if value < 1:
        raise ValueError(f"`{name}` must be >= 1, got {value}")
    return int(value)


def spec_fields(spec: Any) -> dict[str, Any]:
    """The fields of ``spec`` (dict, dataclass, namedtuple or plain object) as a dict."""
    if spec is None:
        return {}
    if isinstance(spec, dict):
        fields = dict(spec)
    elif dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    elif hasattr(spec, "_asdict"):
        fields = dict(spec._asdict())
    elif hasattr(spec, "__dict__"):
        fields = {k: v for k, v in vars(spec).items() if not k.startswith("_")}
    else:
        raise TypeError(f"`spec` must be a dict, dataclass, namedtuple or object with "
                        f"attributes, got {type(spec).__name__}")
    return {SPEC_ALIASES.get(k, k): v for k, v in fields.items()}
