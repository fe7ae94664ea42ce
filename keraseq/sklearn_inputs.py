"""The data of ``fit``/``predict``/``score`` under scikit-learn's input rules, before training.

What lives here: :func:`fit_inputs` (scikit-learn's checks and messages, the ``n_features_in_``
rule of a warm fit, tabular rows ``(N, F)`` read as series of one step with the model wrapped
for them, 1-D ``y`` as a column, and the ``new_model`` that the trainer calls, giving a model
builder the data's facts), :func:`predict_x` and :func:`score_y` (the same rules for
``predict``/``score``) and :func:`as_fitted_y` (predictions in the shape ``y`` was fitted in).
What does not: the sequence checks (``checks.py``), the checks of one array
(``validation.py``), the tabular wrapper itself (``tabular.py``).

Example:
    >>> import numpy as np
    >>> from keraseq.sklearn_inputs import predict_x
    >>> predict_x(np.zeros((5, 3)), 3, "Estimator", rows=True).shape  # rows: one-step series
    (5, 1, 3)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import keras
import numpy as np

from . import builders, fresh, tabular
from .model_selection import whole
from .validation import check_n_features, check_sklearn_array, check_weights_not_all_zero

if TYPE_CHECKING:
    from .fitted import FittedRecord
    from .hyperparams import Settings

__all__ = ["FitInputs", "fit_inputs", "predict_x", "score_y", "as_fitted_y"]


class FitInputs(NamedTuple):
    """What ``fit`` trains on, after the rules of this module."""

    x: Any
    y: Any
    sample_weight: Any
    validation_data: Any
    new_model: Callable[[], keras.Model]  #: the model of a new fit (not called on a warm one)
    rows: bool  #: ``x`` was tabular rows (N, F), read as (N, 1, F)
    flat_y: bool  #: ``y`` was (N,), read as (N, 1)


def fit_inputs(
    p: Settings,
    x,
    y,
    sample_weight,
    validation_data,
    lengths,
    *,
    model: Any,
    model_params: dict[str, Any],
    builder_meta: Callable[[], dict],
    owner: str,
    continued: FittedRecord | None = None,
) -> FitInputs:
    """scikit-learn's input rules, the builder's data facts and tabular rows, applied before
    any training step. ``p``: the resolved hyper-parameters; ``model``: the estimator's model
    or builder, with its ``model__<name>`` parameters ``model_params`` (without the prefix);
    ``builder_meta()``: what a builder may ask beyond the data's widths (a classifier's
    ``classes_``); ``owner``: the estimator's class name, for messages; ``continued``: the
    fitted record of the fit a warm one continues (its ``n_features_in_``, and whether it
    was fitted on rows)."""
    fitted = (continued.layout.n_features, continued.rows) if continued is not None else None
    x, y, sample_weight = _checked(x, y, sample_weight, owner, fitted)

    def meta():  # read when a builder is called (a dataset's first batch is read then)
        return {**builders.data_meta(x0, y0), **builder_meta()}

    def new_model():  # the data's facts are read only for a builder that may ask
        builder = callable(model) and not isinstance(model, keras.Model)
        return fresh.new_model(model, model_params, meta() if builder else None)

    x0, y0 = x, y
    rows = fitted[1] if fitted is not None else False
    widths = tabular.row_widths(x) if lengths is None else None
    if widths is not None and fitted is None:
        facts = meta()
        built = fresh.build_seeded(p, lambda: fresh.new_model(model, model_params, facts))
        if _takes_rows(built, x):
            built = tabular.wrap(built, widths)
            rows = True

        def new_model():
            return built

    flat_y = False
    if rows:
        x = tabular.as_steps(x)
        flat_y = isinstance(y, np.ndarray) and y.ndim == 1
        if flat_y:
            y = y[:, None]
        validation_data = _rows_validation(validation_data)
    return FitInputs(x, y, sample_weight, validation_data, new_model, rows, flat_y)


def _checked(x, y, sample_weight, owner: str, fitted):
    """``x``, ``y`` and ``sample_weight`` under scikit-learn's rules (its messages)."""
    x = check_sklearn_array(x, "x")
    if y is not None:
        y = check_sklearn_array(y, "y")
    if sample_weight is not None:
        sample_weight = check_sklearn_array(sample_weight, "sample_weight")
        check_weights_not_all_zero(sample_weight)
    if fitted is not None:
        check_n_features(x, fitted[0], owner, rows=fitted[1])
    if y is None and tabular.row_widths(x) is not None:
        raise ValueError(
            "`y` is None: this estimator requires y to be passed, but the "
            "target y is None; expected targets (N,) or (N, F_out)"
        )
    return x, y, sample_weight


def _takes_rows(built: keras.Model, x) -> bool:
    """Tabular ``x`` is read as rows: the model says so (input ``(F,)``), or it does not
    say (not built) and ``x`` is floats."""
    takes = tabular.takes_rows(built)
    arrays = x.arrays if hasattr(x, "arrays") else x if isinstance(x, tuple) else (x,)
    floats = all(np.dtype(a.dtype).kind == "f" for a in arrays)
    return bool(takes or (takes is None and floats))


def _rows_validation(validation_data):
    """``validation_data`` of a tabular fit: its rows read as one-step series too."""
    if not (isinstance(validation_data, (tuple, list)) and len(validation_data) >= 2):
        return validation_data
    vx = check_sklearn_array(whole(validation_data[0]), "x")
    vy = check_sklearn_array(whole(validation_data[1]), "y")
    if tabular.row_widths(vx) is not None:
        vx = tabular.as_steps(vx)
    if isinstance(vy, np.ndarray) and vy.ndim == 1:
        vy = vy[:, None]
    return (vx, vy, *validation_data[2:])


def predict_x(x, n_features: int, owner: str, rows: bool = False):
    """``x`` of ``predict``/``score`` under scikit-learn's rules (its messages, the
    ``n_features_in_`` rule), tabular rows read as series of one step."""
    x = check_sklearn_array(whole(x), "x")
    check_n_features(x, n_features, owner, rows=rows)
    if rows and tabular.row_widths(x) is not None:
        x = tabular.as_steps(x)
    return x


def score_y(y, rows: bool = False):
    """``y`` of ``score`` under scikit-learn's rules; 1-D targets of rows as a column."""
    y = check_sklearn_array(whole(y), "y")
    if rows and isinstance(y, np.ndarray) and y.ndim == 1:
        y = y[:, None]
    return y


def as_fitted_y(result, out, flat_y: bool):
    """Predictions ``(N, 1)`` as ``(N,)`` when ``y`` was fitted as ``(N,)`` (scikit-learn's
    shape), unless they were written into ``out``."""
    if (
        out is None
        and flat_y
        and isinstance(result, np.ndarray)
        and result.ndim == 2
        and result.shape[1] == 1
    ):
        return result[:, 0]
    return result
