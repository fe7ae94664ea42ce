"""Checks of what the user passes: arrays, tuples of arrays, hyper-parameters and ``spec``.

What lives here: functions that turn user input into tuples of arrays (without copying or
loading out-of-core data) and raise a clear ``ValueError``/``TypeError`` that names the argument
and the expected shape, before any training step. What does not: anything that trains.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence
from typing import Any, Literal, overload

import numpy as np

__all__ = [
    "as_arrays",
    "check_finite",
    "check_positive_int",
    "spec_fields",
    "SPEC_ALIASES",
    "REQUIRED_SPEC_FIELDS",
    "is_sparse",
    "check_sklearn_array",
    "check_n_features",
    "check_weights_not_all_zero",
]

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
        raise ValueError(
            f"`{name}` is None: this estimator requires {name} to be passed, but "
            f"the target {name} is None; expected {what}"
            if name == "y"
            else f"`{name}` is None; expected {what}"
        )
    if is_sparse(value):
        raise TypeError(
            f"`{name}` is a SciPy sparse matrix: sparse data is not supported, "
            f"keraseq needs dense arrays ({what}); use `.toarray()`"
        )
    from .inputs import SliceTuple

    if isinstance(value, SliceTuple):
        value = value.arrays
    if isinstance(value, dict):
        raise TypeError(
            f"`{name}` is a dict; pass a tuple/list of arrays in the order of the "
            f"model's inputs/outputs ({what})"
        )
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
            raise TypeError(
                f"`{label}` is a {kind}; expected {what}"
                + (
                    "; or, as model.fit takes them, a tf.data.Dataset, a keras.utils.PyDataset, "
                    "a generator or an iterable of (x, y[, sample_weight]) batches (with y=None)"
                    if name == "x"
                    else ""
                )
            )
        if _is_array_like(item) and not isinstance(item.dtype, np.dtype):
            item = np.asarray(item)  # a tf.Tensor / keras.ops tensor: its values, once
        if not _is_array_like(item):
            try:
                item = np.asarray(item)
            except Exception as exc:  # pragma: no cover - numpy's own message is kept
                raise TypeError(f"`{label}` is not an array: {exc}") from None
        if item.dtype.kind == "c":
            raise ValueError(
                f"Complex data not supported: `{label}` has dtype {item.dtype}; "
                f"expected real numbers ({what})"
            )
        if item.dtype.kind not in "biuf":
            raise TypeError(f"`{label}` has dtype {item.dtype}; expected a numeric array ({what})")
        if ndims is not None and item.ndim not in ndims:
            shapes = " or ".join(
                {3: "(N, T, F)", 2: "(N, F)" if "series" in what else "(N, T)", 1: "(N,)"}[d]
                for d in ndims
            )
            raise ValueError(
                f"`{label}` has shape {tuple(item.shape)} (rank {item.ndim}); "
                f"expected {shapes}: {what}"
            )
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
            block = np.asarray(a[start : min(hi, start + step)])
            finite = np.isfinite(block)
            if not finite.all():
                bad = start + int(np.argwhere(~finite)[0][0])
                raise ValueError(
                    f"`{label}` contains NaN or Inf (first at row {bad}); "
                    f"clean or impute it before fitting"
                )


@overload
def check_positive_int(value: Any, name: str, allow_none: Literal[False] = False) -> int: ...


@overload
def check_positive_int(value: Any, name: str, allow_none: bool) -> int | None: ...


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
        raise TypeError(
            f"`spec` must be a dict, dataclass, namedtuple or object with "
            f"attributes, got {type(spec).__name__}"
        )
    return {SPEC_ALIASES.get(k, k): v for k, v in fields.items()}


# --- scikit-learn's rules at the estimator face (its wording, which its checks match) -------
def is_sparse(value: Any) -> bool:
    """A SciPy sparse matrix or array."""
    return hasattr(value, "tocsr") or type(value).__module__.startswith("scipy.sparse")


def check_sklearn_array(value: Any, name: str) -> Any:
    """One array given to ``fit``/``predict``/``score`` under scikit-learn's rules, in its
    words: sparse data, complex data, 1-D ``x`` ("Reshape your data ..."), no rows and no
    features are refused. Lists, DataFrames and object arrays of numbers come back as
    numeric ndarrays (``check_array``'s conversion); a numeric ndarray (memmaps and
    subclasses included) and out-of-core arrays come back as they are. Anything else
    (tuples of inputs, ragged lists of series, datasets) is left to the sequence checks."""
    if is_sparse(value):
        raise TypeError(
            f"Sparse data was passed for `{name}`, but dense data is required: "
            f"sparse data is not supported; use `{name}.toarray()`"
        )
    if isinstance(value, tuple):  # several inputs: object arrays of numbers as one input's
        return tuple(
            check_sklearn_array(v, f"{name}[{k}]")
            if isinstance(v, np.ndarray) and v.dtype.kind == "O"
            else v
            for k, v in enumerate(value)
        )
    if _not_a_table(value):
        return value
    if not (isinstance(value, np.ndarray) and value.dtype.kind in "biufc"):
        value = _numeric(value, name)
    _check_table_shape(value, name)
    return value


def _not_a_table(value: Any) -> bool:
    """What scikit-learn's rules leave alone: inputs of several arrays, pipelines, series of
    unequal lengths, no array at all, non-numeric arrays (the sequence checks name them) and
    out-of-core arrays (read row by row later)."""
    if (
        isinstance(value, dict)
        or value is None
        or any(c.__name__ in ("SliceTuple", "PyDataset", "TimeFolds") for c in type(value).__mro__)
    ):
        return True
    from .inputs import is_pipeline

    if is_pipeline(value):  # tf.data, generators, lists of batches: read batch by batch later
        return True
    if not (
        hasattr(value, "__array__")
        or hasattr(value, "shape")
        or isinstance(value, (list, numbers.Number))
    ):
        return True  # no array at all: the sequence checks name its type
    if isinstance(value, list):
        numbers_ = value and all(isinstance(v, numbers.Number) for v in value)
        rows = (
            value
            and all(
                isinstance(v, (list, tuple)) and all(isinstance(e, numbers.Number) for e in v)
                for v in value
            )
            and len({len(v) for v in value}) == 1
        )  # a table as nested lists: (N, F)
        if not (numbers_ or rows):
            return True  # series of unequal lengths, batches, ...: the sequence checks
    if isinstance(value, np.ndarray):
        return value.dtype.kind not in "biufcO"  # strings, dates, ...: named by the dtype
    return (  # out of core (h5py.Dataset)
        hasattr(value, "shape")
        and not hasattr(value, "iloc")
        and isinstance(getattr(value, "dtype", None), np.dtype)
        and value.dtype.kind in "biuf"
    )


def _numeric(value: Any, name: str) -> np.ndarray:
    """``value`` as a numeric ndarray by scikit-learn's ``check_array``, its errors in
    keraseq's words."""
    from sklearn.utils.validation import check_array

    try:
        return check_array(
            value,
            accept_sparse=False,
            dtype="numeric",
            ensure_2d=False,
            allow_nd=True,
            ensure_all_finite=False,
            ensure_min_samples=0,
            ensure_min_features=0,
            input_name=name,
        )
    except ValueError as exc:
        if "Complex data" in str(exc):
            raise ValueError(
                f"Complex data not supported: `{name}` holds complex numbers"
            ) from None
        if "bytes/strings" not in str(exc) and "convert" not in str(exc):
            raise
        raise TypeError(
            f"`{name}` has a non-numeric dtype: {exc}; expected a numeric array"
        ) from None
    except TypeError as exc:  # numpy's "float() argument must be a string or a number"
        raise TypeError(
            f"`{name}` has dtype object holding a non-number: {exc}; expected a numeric array"
        ) from None


def _check_table_shape(value: np.ndarray, name: str) -> None:
    """No complex numbers, no 1-D ``x``, at least one row (and one feature of ``x``)."""
    if value.dtype.kind == "c":
        raise ValueError(f"Complex data not supported: `{name}` has dtype {value.dtype}")
    if value.ndim == 1 and name == "x":
        raise ValueError(
            f"`x` has shape {value.shape} (rank 1); expected a 2D array (N, F) for a model "
            f"whose input is (F,), or (N, T, F) sequences. Reshape your data either using "
            f"x.reshape(-1, 1) if your data has a single feature or x.reshape(1, -1) if it "
            f"contains a single sample."
        )
    if value.ndim >= 1 and value.shape[0] == 0:
        raise ValueError(
            f"Found array with 0 sample(s) (shape={value.shape}) while a "
            f"minimum of 1 is required: `{name}` is empty"
        )
    if name == "x" and value.ndim >= 2 and value.shape[-1] == 0:
        raise ValueError(
            f"Found array with 0 feature(s) (shape={value.shape}) while a "
            f"minimum of 1 is required: `x` is empty"
        )


def check_n_features(x: Any, expected: int, estimator: str, rows: bool = False) -> None:
    """scikit-learn's ``n_features_in_`` rule for ``predict``/``score``/a warm ``fit``: the
    features of ``x`` (of its first input) must be the fitted count. Features are the last
    axis of tabular rows (``rows``: a model with input ``(F,)``) and of ``(N, T, ..., F)``
    sequences; token ids ``(N, T)`` have one (as ``checks.step_features`` counts them)."""
    first = (
        x.arrays[0]
        if type(x).__name__ == "SliceTuple"
        else (x[0] if isinstance(x, tuple) and x and hasattr(x[0], "shape") else x)
    )
    shape = getattr(first, "shape", None)
    if shape is None or len(shape) < 2 or not hasattr(first, "dtype"):
        return
    got = int(shape[-1]) if rows or len(shape) > 2 else 1
    if got != int(expected):
        raise ValueError(
            f"X has {got} features, but {estimator} is expecting {expected} "
            f"features as input: `x` has F={got} features, the fit had "
            f"{expected} (x of shape (N, {expected}) or (N, T, {expected}))"
        )


def check_weights_not_all_zero(sample_weight: Any) -> None:
    """All-zero ``sample_weight`` makes every weighted mean 0/0: refused, in scikit-learn's
    words."""
    if sample_weight is None or is_sparse(sample_weight):
        return
    from .lengths import is_ragged

    try:
        if is_ragged(sample_weight):
            w = np.concatenate([np.ravel(np.asarray(s, np.float64)) for s in sample_weight])
        else:
            w = np.asarray(sample_weight, np.float64)
    except (TypeError, ValueError):
        return  # the shape checks name what is wrong
    if w.size and not np.any(w):
        raise ValueError(
            "Sample weights must contain at least one non-zero number: "
            "`sample_weight` is all zero, so every weighted loss would be 0/0"
        )
