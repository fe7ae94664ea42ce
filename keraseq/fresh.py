"""A fresh model and optimizer for each ``fit``, from the ``model`` and ``optimizer`` parameters.

What lives here: :func:`new_model` (the user's model copied with its initial weights, or built
by a model-building function with its ``model__<name>`` parameters and the data facts it asks
for), :func:`build_seeded` (that, seeded and placed as the training loop would) and
:func:`new_optimizer` (a copy of the optimizer parameter). The user's own model and optimizer
are never trained. What does not: reading the data facts a builder asks for (``builders.py``),
training (``trainer.py``).

Example:
    >>> import keras
    >>> from keraseq.fresh import new_model, new_optimizer
    >>> model = keras.Sequential([keras.Input((None, 2)), keras.layers.GRU(3)])
    >>> copy = new_model(model, {})
    >>> copy is not model, [w.shape for w in copy.get_weights()] == [
    ...     w.shape for w in model.get_weights()]
    (True, True)
    >>> type(new_optimizer("adam")).__name__
    'Adam'
"""

from __future__ import annotations

import copy
import warnings
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from . import builders, utils
from . import distributed as dist
from .backend import current as _backend
from .session import device_for

if TYPE_CHECKING:
    from .hyperparams import Settings

__all__ = ["new_model", "new_optimizer", "build_seeded"]


def new_model(model: Any, model_params: dict[str, Any], meta: dict | None = None) -> keras.Model:
    """The model a new fit trains: ``model`` called with ``model_params`` (and what it names
    of ``meta``) when it is a function or class, else a copy of the ``keras.Model``."""
    if not isinstance(model, keras.Model):
        if callable(model):  # a function or class building the model
            return _built(model, model_params, meta)
        raise TypeError(
            f"`model` must be a keras.Model or a function returning one, got {type(model).__name__}"
        )
    if model_params:
        raise ValueError(
            f"model__ parameters {sorted(model_params)} need `model` "
            f"to be a function that builds the model, not a built model"
        )
    return _copied(model)


def _built(build: Callable, kwargs: dict[str, Any], meta: dict | None) -> keras.Model:
    try:
        model = builders.call_builder(build, kwargs, meta or {})
    except TypeError as exc:
        raise TypeError(
            f"`model` was called with {kwargs} (the model__<name> parameters) and failed: {exc}"
        ) from exc
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`model` is a callable that returned {type(model).__name__}; it must return a "
            f"keras.Model"
        )
    return model


def _copied(model: keras.Model) -> keras.Model:
    """A copy of ``model`` with its weights: cloned from its config, else deep-copied, else
    (neither works) ``model`` itself, reset to the weights it had when first seen."""
    try:
        # The config comes from the user's own live model, not from a file: rebuilding a
        # Lambda's Python function from it is no deserialisation risk.
        from keras.src.saving.serialization_lib import SafeModeScope

        with SafeModeScope(False):
            clone = utils._clone_model(model)
        clone.set_weights(model.get_weights())
        return clone
    except Exception:  # a subclassed model without a config
        pass
    if not any(isinstance(layer, keras.layers.Lambda) for layer in model._flatten_layers()):
        try:  # (a deep copy goes through a saved file: Lambda functions would not survive)
            clone = copy.deepcopy(model)
            clone.set_weights(model.get_weights())
            return clone
        except Exception:
            pass
    return _in_place(model)


#: The weights each model trained in place had when keraseq first saw it.
_INITIAL_WEIGHTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _in_place(model: keras.Model) -> keras.Model:
    """A subclassed model whose ``__init__`` arguments Keras cannot serialise: trained in
    place, but every fit that is not warm starts again from the weights it had when keraseq
    first saw it."""
    initial = _INITIAL_WEIGHTS.get(model)
    if initial is None:  # (kept beside the model, not on it: nothing is written onto it)
        initial = _INITIAL_WEIGHTS[model] = [np.array(w) for w in model.get_weights()]
    warnings.warn(
        f"keraseq cannot copy this {type(model).__name__} (keras.models.clone_model and "
        f"copy.deepcopy need a get_config): it is trained in place, each fit starting from "
        f"its initial weights. To keep your model untouched, give it a get_config, or pass "
        f"a function that builds it as `model`",
        UserWarning,
        stacklevel=4,
    )
    model.set_weights(initial)
    return model


def build_seeded(p: Settings, make: Callable[[], keras.Model]) -> keras.Model:
    """``make()`` seeded (``random_state``) and on the device of the training loop: the model
    of a new fit built before the data checks (tabular ``x`` needs to know its input)."""
    comm = dist.get_comm(p.distributed)
    if p.random_state is not None:
        keras.utils.set_random_seed(int(p.random_state))
    with _backend().device_scope(device_for(p.device, comm)):
        return make()


def new_optimizer(optimizer: Any) -> keras.optimizers.Optimizer:
    """A new optimizer from the ``optimizer`` parameter (an instance is copied by config)."""
    if isinstance(optimizer, (str, dict)):
        return keras.optimizers.get(copy.deepcopy(optimizer))
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return optimizer.__class__.from_config(optimizer.get_config())
    raise TypeError(f"`optimizer` must be a keras optimizer or its name, got {optimizer!r}")
