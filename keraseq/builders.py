"""Model-building functions that ask for what the data say (SciKeras's ``meta``).

``Estimator(build, model__units=8)`` calls ``build`` at each ``fit`` with its ``model__<name>``
parameters. A builder may also name, in its signature, facts about the data of that ``fit``;
it receives them, so one builder serves data sets of different widths (a search over them,
``check_estimator``'s data, ...):

- ``n_features_in_``: features per step of ``x`` (of its first input for a tuple), as the
  fitted attribute;
- ``n_outputs_``: the width of the targets, SciKeras's meaning: ``y.shape[-1]``, 1 for
  ``y`` of shape ``(N,)`` (a tuple with one width per output for a tuple ``y``; the fitted
  ``n_outputs_`` counts the model's outputs instead);
- ``n_outputs_expected_``: the number of outputs the model must have (arrays in ``y``);
- ``X_shape_`` / ``y_shape_``: the shapes of ``x`` / ``y`` (tuples of shapes for tuples;
  ``None`` for T of a ragged list);
- ``classes_`` / ``n_classes_`` (``Classifier``): the sorted labels and their count;
- ``meta``: all of the above as one dict.

A ``model__<name>`` parameter of the same name wins. What lives here: reading those facts
(:func:`data_meta`) and calling a builder with the ones it names (:func:`call_builder`).
What does not: copying a built model (``estimator.py``).

Example:
    >>> import keras, numpy as np
    >>> from keraseq.builders import call_builder, data_meta
    >>> def build(n_features_in_, n_outputs_, units=4):
    ...     return keras.Sequential([keras.Input((n_features_in_,)),
    ...                              keras.layers.Dense(units), keras.layers.Dense(n_outputs_)])
    >>> meta = data_meta(np.zeros((10, 3)), np.zeros((10, 2)))
    >>> call_builder(build, {"units": 5}, meta).output_shape
    (None, 2)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, cast

import numpy as np

from .inputs import SliceTuple
from .lengths import is_ragged

__all__ = ["data_meta", "call_builder", "META_NAMES"]

#: The names a builder may ask for.
META_NAMES = (
    "n_features_in_",
    "n_outputs_",
    "n_outputs_expected_",
    "X_shape_",
    "y_shape_",
    "classes_",
    "n_classes_",
)


def _shape(a) -> tuple | None:
    if hasattr(a, "shape") and hasattr(a, "dtype"):
        return tuple(int(d) for d in a.shape)
    try:
        ragged = is_ragged(a)
    except ValueError:  # nested sequences numpy cannot read
        return None
    if ragged:  # a list of (T_i, F) series
        first = np.shape(a[0])
        return (len(a), None) + tuple(int(d) for d in first[1:])
    try:
        return tuple(int(d) for d in np.shape(a))
    except Exception:
        return None


def _arrays(value) -> list:
    if isinstance(value, SliceTuple):
        return list(value.arrays)
    if isinstance(value, tuple) and value and all(hasattr(v, "shape") for v in value):
        return list(value)
    return [value]


def data_meta(x, y) -> dict[str, Any]:
    """What a builder may ask about ``x`` and ``y`` (see the module docstring); for a
    dataset of batches, the widths of its first batch (no ``X_shape_``/``y_shape_``); none for
    a generator or iterator (reading its first batch would take it from ``fit``)."""
    from .inputs import is_pipeline
    from .readers.pipelines import BatchSource, dataset_batch

    if y is None and is_pipeline(x):
        if hasattr(x, "__next__"):  # a generator or iterator: reading it would consume it
            return {}
        if hasattr(x, "__getitem__"):  # a list or PyDataset: its first batch, no epoch hooks
            bx, by = dataset_batch(x[0], 0)[:2]
        else:  # re-iterable (tf.data): fit reads it anew
            source = BatchSource(x)
            try:
                bx, by = source.first()[:2]
            finally:
                source.close()
        first = data_meta(bx, by)
        first.pop("X_shape_", None)
        first.pop("y_shape_", None)
        return first
    meta: dict[str, Any] = {}
    if x is not None:
        xs = [_shape(a) for a in _arrays(x)]
        if all(s is not None for s in xs):
            meta["X_shape_"] = xs[0] if len(xs) == 1 else tuple(xs)
            if xs[0] and len(xs[0]) >= 2:
                meta["n_features_in_"] = xs[0][-1]
    if y is not None:
        ys = [_shape(a) for a in _arrays(y)]
        known = [s for s in ys if s is not None and len(s) >= 1]
        if len(known) == len(ys):
            widths = tuple(1 if len(s) == 1 else s[-1] for s in known)
            meta["y_shape_"] = known[0] if len(known) == 1 else tuple(known)
            meta["n_outputs_"] = widths[0] if len(widths) == 1 else widths
            meta["n_outputs_expected_"] = len(known)
    return meta


def _parameters(fn: Callable) -> dict[str, inspect.Parameter]:
    try:
        target = cast("type[Any]", fn).__init__ if isinstance(fn, type) else fn
        params = dict(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return {}
    params.pop("self", None)
    return params


def call_builder(fn: Callable, params: dict[str, Any], meta: dict[str, Any]):
    """``fn(**params, **what it names of meta)``; a name it asks for that the data cannot
    give (e.g. ``classes_`` of a regressor) is left out, so Python names it."""
    names = _parameters(fn)
    kwargs = dict(params)
    for key in META_NAMES:
        if key in names and key not in kwargs and key in meta:
            kwargs[key] = meta[key]
    if "meta" in names and "meta" not in kwargs:
        kwargs["meta"] = dict(meta)
    return fn(**kwargs)
