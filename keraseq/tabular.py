"""Tabular data: 2-D ``x`` (N, F) for a model without a time axis (input ``(F,)``).

scikit-learn's data are rows ``(n_samples, n_features)``. A Keras model whose input is
``keras.Input((F,))`` says that it expects such rows, so keraseq takes them as they are:
inside, each row is a series of one step ``(N, 1, F)`` (a view, never a copy), and the model
is called through a thin wrapper, ``Input((1, F)) -> Reshape((F,)) -> model``, whose only
weights are the model's. Its output is one vector per row (a per-series output), so ``y`` is
``(N,)`` or ``(N, F_out)`` and ``predict`` returns the shape of ``y``.

What lives here: the rule that decides it (:func:`takes_rows`, :func:`row_widths`), the
one-step view of the rows (:func:`as_steps`) and the wrapper (:func:`wrap`). What does not:
the estimator face that applies them (``estimator.py``), sequence data (``checks.py``).

Example:
    >>> import keras, numpy as np
    >>> from keraseq import tabular
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> tabular.takes_rows(model), tabular.as_steps(np.zeros((5, 3))).shape
    (True, (5, 1, 3))
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from .inputs import SliceTuple

__all__ = ["takes_rows", "row_widths", "as_steps", "wrap", "RowSteps"]


def takes_rows(model: Any) -> bool | None:
    """True when every input of ``model`` is ``(batch, F)`` floats with a known F (a model
    without a time axis); False for any other built input (sequences, token ids); None when
    the model is not built yet (it is decided by the data)."""
    if not isinstance(model, keras.Model):
        return None
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        return None
    for spec in inputs:
        shape = tuple(spec.shape)
        if len(shape) != 2 or shape[-1] is None:
            return False
        if np.dtype(keras.backend.standardize_dtype(spec.dtype)).kind != "f":
            return False
    return True


def _rank(a) -> int | None:
    return len(a.shape) if hasattr(a, "shape") and hasattr(a, "dtype") else None


def row_widths(x) -> tuple[int, ...] | None:
    """The feature count of each input when ``x`` is tabular: one 2-D array (N, F), or a
    tuple / :class:`SliceTuple` of 2-D arrays sharing N; else None."""
    items = x.arrays if isinstance(x, SliceTuple) else (x if isinstance(x, tuple) and x else (x,))
    if any(_rank(a) != 2 for a in items):
        return None
    if len({int(a.shape[0]) for a in items}) != 1:
        return None
    return tuple(int(a.shape[1]) for a in items)


class RowSteps:
    """A 2-D array that is not in memory (e.g. an ``h5py.Dataset``) read as ``(N, 1, F)``:
    indexing reads only the rows asked for."""

    def __init__(self, rows):
        self.rows = rows
        self.shape = (int(rows.shape[0]), 1, int(rows.shape[1]))
        self.dtype = rows.dtype
        self.ndim = 3

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows):
        return np.asarray(self.rows[rows])[..., None, :]  # (n, F) -> (n, 1, F)


def as_steps(x):
    """Tabular ``x`` as series of one step: (N, F) -> (N, 1, F), each input of a tuple too."""

    def one(a):
        return a[:, None, :] if isinstance(a, np.ndarray) else RowSteps(a)

    if isinstance(x, SliceTuple):
        return SliceTuple(*(one(a) for a in x.arrays))
    if isinstance(x, tuple):
        return tuple(one(a) for a in x)
    return one(x)


def wrap(model: keras.Model, widths: tuple[int, ...]) -> keras.Model:
    """``model`` (inputs ``(F,)``, or not built yet) called on series of one step:
    ``Input((1, F)) -> Reshape((F,)) -> model``. The wrapper adds no weights."""
    given = takes_rows(model)
    dtypes = (
        [keras.backend.standardize_dtype(s.dtype) for s in model.inputs]
        if given
        else [keras.backend.floatx()] * len(widths)
    )
    if given and len(model.inputs) != len(widths):
        raise ValueError(
            f"the model has {len(model.inputs)} input(s) but `x` has "
            f"{len(widths)} array(s); pass a tuple with one (N, F) array per input"
        )
    inputs = [
        keras.Input((1, f), dtype=d, name=f"rows_{k}")
        for k, (f, d) in enumerate(zip(widths, dtypes))
    ]
    flat = [
        keras.layers.Reshape((f,), name=f"rows_{k}_as_features")(i)
        for k, (f, i) in enumerate(zip(widths, inputs))
    ]
    try:
        out = model(flat[0] if len(flat) == 1 else flat)
    except Exception as exc:
        raise ValueError(
            f"`x` is 2-D (N, F) tabular data, read as rows for a model whose input is (F,), "
            f"but the model cannot take (batch, {', '.join(map(str, widths))}) input: {exc}. "
            f"For sequences pass `x` as (N, T, F) (T = 1 for one step)"
        ) from None
    return keras.Model(inputs[0] if len(inputs) == 1 else inputs, out, name=f"{model.name}_rows")
