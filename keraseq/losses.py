"""Losses for windows: ``seqloss`` and the per-window objectives the window loops optimise.

What lives here: :func:`seqloss` (public) and the two objectives: one for any Keras loss (per
output, like ``compile``), one for a user callable ``loss(model, x_window, y_window)``.
What does not: the window loop itself (``backend/``).

An objective returns, for one window, ``(loss_sum, count, reg, y_pred, new_states)``:
``loss_sum / count`` is the window's mean loss over its (unmasked) elements, with Keras's
convention for sample weights (weighted sum divided by the number of elements), so that sums
and counts add up exactly over minibatches and MPI ranks.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Protocol, cast

import keras
from keras import ops, tree

from .inputs import as_model_input

__all__ = ["seqloss", "is_window_loss", "build_objective", "output_mask", "metric_updates"]


class _Objective(Protocol):
    """A per-window objective (see the module docstring); ``needs_exact_rows``: minibatches
    must not be padded (a callable loss sees every row)."""

    needs_exact_rows: bool

    def __call__(
        self, forward: Any, xw: Any, yw: Any, ww: Any, mw: Any, training: Any, states: Any
    ) -> tuple: ...


def output_mask(y_pred):
    """The Keras mask of a model output (``Masking``/``mask_zero`` propagated), or ``None``.

    ``model.fit`` weighs the loss and the metrics by it, so keraseq does too."""
    try:
        from keras.src.backend.common.masking import get_keras_mask
    except ImportError:  # pragma: no cover - older Keras
        return getattr(y_pred, "_keras_mask", None)
    return get_keras_mask(y_pred)


def metric_updates(metrics: list, yw, preds, masks, ww, mw):
    """Per metric, the ``update_state`` arguments of one window, as ``model.fit`` weighs them:
    ``(metric, y_true, y_pred, sample_weight)``.

    ``preds`` are the flattened outputs and ``masks`` their Keras masks (:func:`output_mask`);
    ``ww``/``mw`` the window's sample weights and loss mask (``None``: none). A metric follows
    output ``k % n_outputs``; a per-step output counts every time
    step as one sample, so windows of different length weigh right.
    """
    for k, metric in enumerate(metrics):
        out = k % len(preds) if len(preds) > 1 else 0
        sw = None
        if ww is not None or mw is not None:
            sw = ww if mw is None else (mw if ww is None else ww * mw)
        yt, yp = yw[out], preds[out]
        keras_mask = masks[out]
        if keras_mask is not None and len(keras_mask.shape) == len(yp.shape) - 1:
            keras_mask = ops.cast(keras_mask, "float32")
            sw = keras_mask if sw is None else sw * keras_mask
        per_step = len(yp.shape) == 3 or (
            sw is not None and len(sw.shape) == 2 and len(yp.shape) > 3
        )
        if per_step:  # (B, S, ...) -> (B * S, ...): every time step one sample
            yt = ops.reshape(yt, (-1,) + tuple(yt.shape[2:]))
            yp = ops.reshape(yp, (-1,) + tuple(yp.shape[2:]))
            sw = None if sw is None else ops.reshape(sw, (-1,))
        yield metric, yt, yp, sw


def seqloss(fn: Callable) -> Callable:
    """A window loss built from a per-time-step loss ``fn(y_true_t, y_pred_t)``.

    The returned ``loss(model, x, y)`` runs the model on the window and averages ``fn`` over
    its time steps (and outputs, summed), exactly like the seed's ``seqloss(mse)``.

    Example:
        >>> import keras
        >>> from keraseq import seqloss
        >>> loss = seqloss(keras.losses.mean_squared_error)
        >>> m = keras.Sequential([keras.Input((None, 3)), keras.layers.Dense(1)])
        >>> import numpy as np
        >>> x, y = np.ones((2, 5, 3), "float32"), np.zeros((2, 5, 1), "float32")
        >>> float(loss(m, x, y)) >= 0.0
        True
    """
    if not callable(fn):
        raise TypeError(f"seqloss: `fn` must be callable (y_true_t, y_pred_t) -> loss, got {fn!r}")

    def loss(model, x, y, training=None):
        y_pred = model(x, training=training)
        total = 0.0
        for yt, yp in zip(tree.flatten(y), tree.flatten(y_pred)):
            yt = ops.cast(yt, yp.dtype)
            # Fast path: one call on the window flattened to (B*S, ...). When ``fn`` returns
            # one value per sample, their mean is exactly the mean over time steps of the
            # per-step means. A ``fn`` that reduces to a scalar itself (a sum, say) is called
            # per time step instead, as in the seed (``ops.map``; slower: a loop). (A
            # ``tf.vectorized_map`` here made XLA recompile the step at every call.)
            flat = lambda a: ops.reshape(a, (-1,) + tuple(a.shape[2:]))
            values = fn(flat(yt), flat(yp))
            if len(values.shape) >= 1:
                total = total + ops.mean(values)
                continue
            per_t = ops.map(
                lambda pair: ops.cast(fn(pair[0], pair[1]), "float32"),
                (ops.moveaxis(yt, 1, 0), ops.moveaxis(yp, 1, 0)),
            )
            total = total + ops.mean(per_t)
        return total

    loss.__name__ = f"seqloss({getattr(fn, '__name__', type(fn).__name__)})"
    return loss


def is_window_loss(loss: Any) -> bool:
    """True for a callable ``loss(model, x, y)`` (three positional parameters), not a Keras loss."""
    if isinstance(loss, (str, keras.losses.Loss, list, tuple, dict)) or not callable(loss):
        return False
    try:
        params = [
            p
            for p in inspect.signature(loss).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
    except (TypeError, ValueError):
        return False
    return len(params) == 3


def _accepts_training(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "training" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def _per_element(loss):
    """Unreduced form of a Keras loss: string, function or ``Loss`` instance."""
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):

        def call(y_true, y_pred):  # as Loss.__call__: both in the loss's dtype first
            return loss.call(ops.cast(y_true, loss.dtype), ops.cast(y_pred, loss.dtype))

        return call
    if callable(loss):

        def function(y_true, y_pred):  # as compile's wrapper of a function: floatx first
            dtype = keras.backend.floatx()
            return loss(ops.cast(y_true, dtype), ops.cast(y_pred, dtype))

        return function
    raise TypeError(f"`loss` must be a Keras loss (name, function or Loss), got {loss!r}")


def resolve_output_losses(loss: Any, output_names: list[str]) -> list:
    """Per-output unreduced loss functions (``None`` where an output has no loss)."""
    n = len(output_names)
    if isinstance(loss, dict):
        unknown = set(loss) - set(output_names)
        if unknown:
            raise ValueError(
                f"`loss` names outputs {sorted(unknown)} that the model does not "
                f"have; its outputs are {output_names}"
            )
        return [
            (_per_element(loss[name]) if loss.get(name) is not None else None)
            for name in output_names
        ]
    if isinstance(loss, (list, tuple)):
        if len(loss) != n:
            raise ValueError(
                f"`loss` is a list of {len(loss)} losses but the model has {n} "
                f"outputs {output_names}"
            )
        return [(_per_element(item) if item is not None else None) for item in loss]
    return [_per_element(loss)] * n


def loss_dtype() -> str:
    """The dtype losses are computed and summed in: Keras's (``keras.backend.floatx()``,
    the dtype of compile's loss wrappers and of the regularisation sum), float64 or float32
    (also under mixed precision, where floatx stays float32)."""
    return "float64" if keras.backend.floatx() == "float64" else "float32"


def build_objective(
    model: keras.Model,
    loss: Any,
    output_names: list[str],
    loss_weights: list[float] | None = None,
    per_series: bool | None = None,
) -> Callable:
    """The per-window objective for ``loss`` (see the module docstring).

    ``per_series``: the outputs are one value per series (``(B, ...)``) rather than per
    time step (``(B, S, ...)``); the loss of an element is averaged over the axes after
    those (``None``: after the output's second-to-last axis)."""
    if is_window_loss(loss):
        return _window_loss_objective(model, loss)
    fns = resolve_output_losses(loss, output_names)
    return _keras_loss_objective(model, fns, loss_weights or [1.0] * len(fns), per_series)


def _unpack(arrays):
    return arrays[0] if len(arrays) == 1 else tuple(arrays)


def _regularisation(model: keras.Model, dtype: str):
    """The sum of the model's regularisation losses of this call, in ``dtype``."""
    if model.losses:
        return ops.cast(ops.sum([ops.sum(v) for v in model.losses]), dtype)
    return ops.convert_to_tensor(0.0, dtype)


def _window_loss_objective(model: keras.Model, loss: Callable) -> _Objective:
    """The objective of a callable ``loss(model, x, y)`` returning the window's mean."""
    pass_training = _accepts_training(loss)
    # The loss is computed and summed in Keras's loss dtype (floatx: float64 when the user
    # set it, else float32, as compile's loss wrappers do). ``count`` stays float32.
    dtype = loss_dtype()

    def objective(forward, xw, yw, ww, mw, training, states):
        def call():
            if pass_training:
                return loss(model, _unpack(xw), _unpack(yw), training=training)
            return loss(model, _unpack(xw), _unpack(yw))

        value, new_states = forward(states, call)
        value = ops.cast(value, dtype)
        rows = ops.cast(ops.shape(xw[0])[0], "float32")
        if mw is not None:
            rows = ops.sum(mw if len(mw.shape) == 1 else mw[:, 0])
        # The value is the window's mean: it counts rows x time steps, so a short last
        # window weighs less in the reported mean (and under MPI) than a full one.
        count = rows * ops.cast(ops.shape(xw[0])[1], "float32")
        loss_sum = ops.where(
            count > 0, value * ops.cast(count, dtype), ops.convert_to_tensor(0.0, dtype)
        )
        return loss_sum, count, _regularisation(model, dtype), None, new_states

    window_objective = cast(_Objective, objective)
    window_objective.needs_exact_rows = True
    return window_objective


def _keras_loss_objective(model: keras.Model, fns: list, weights, per_series) -> _Objective:
    """The objective of per-output Keras losses ``fns`` (unreduced; ``None``: no loss),
    weighted by ``weights``, the sum over the outputs of their masked, weighted sums."""
    dtype = loss_dtype()

    def objective(forward, xw, yw, ww, mw, training, states):
        y_pred, new_states = forward(
            states, lambda: model(as_model_input(model, xw), training=training)
        )
        preds = tree.flatten(y_pred)
        loss_sum = ops.convert_to_tensor(0.0, dtype)
        count = None
        for fn, weight, yt, yp in zip(fns, weights, yw, preds):
            if fn is None:
                continue
            values, count = _output_losses(fn, yt, yp, ww, mw, per_series, dtype)
            loss_sum = loss_sum + weight * ops.sum(values)
        return loss_sum, count, _regularisation(model, dtype), y_pred, new_states

    keras_objective = cast(_Objective, objective)
    keras_objective.needs_exact_rows = False
    return keras_objective


def _output_losses(fn, yt, yp, ww, mw, per_series, dtype):
    """``(values, count)`` of one output: its loss per element (``(B,)`` per series,
    ``(B, S)`` per step), weighted and masked, and the count of unmasked elements."""
    values = ops.cast(fn(yt, yp), dtype)  # fn casts both to the loss's dtype
    target_rank = len(yp.shape) - 1 if per_series is None else 1 if per_series else 2
    while len(values.shape) > target_rank:
        values = ops.mean(values, axis=-1)
    if ww is not None:
        values = values * ops.cast(ww, dtype)
    mask = mw
    keras_mask = output_mask(yp)
    if keras_mask is not None and len(keras_mask.shape) == len(values.shape):
        keras_mask = ops.cast(keras_mask, "float32")
        mask = keras_mask if mask is None else mask * keras_mask
    if mask is None:
        return values, ops.cast(ops.size(values), "float32")
    # Keras's rule (losses.loss.apply_mask): the mean over unmasked elements.
    return values * ops.cast(mask, dtype), ops.sum(mask)
