"""Compile once, not per fit: reuse the compiled window loops of a finished fit.

``GridSearchCV``, ``cross_val_score`` and repeated ``fit`` calls train the same architecture
on the same shapes again and again; each fresh model has fresh variables, so its compiled
loops would be traced and compiled anew (about 2 s each). The compiled loops hold the model,
the optimizer and the metrics they were built for, so keraseq keeps those objects with them
and, for a new fit of the same architecture and settings, loads the new fit's initial weights
and a fresh optimizer state into them instead of compiling again. The result is the same as
with a fresh compile, bit for bit (tested).

An entry is reused only when nothing can see it any more: the session that trained it has
been dropped (its estimator was garbage-collected, e.g. a finished cross-validation fold), or
it is the previous fit of the estimator that is fitting again. A fitted estimator that is kept
therefore never has its model overwritten. ``KERASEQ_REUSE_STEPS=0`` turns reuse off.

What lives here: the pool and its key. What does not: building the steps (``session.py``).

Example:
    >>> from keraseq import reuse
    >>> reuse.stats()["compiled"] >= 0
    True
"""

from __future__ import annotations

import gc
import json
import os
import weakref
from dataclasses import dataclass, field
from typing import Any

import keras

from .utils import _unconfigured_options

__all__ = ["key_of", "take", "register", "clear", "stats"]


@dataclass
class Entry:
    key: str | None  #: ``None``: not reusable (not kept in the pool)
    model: keras.Model
    optimizer: Any
    carry: Any
    steps: Any
    metrics: list
    val_steps: Any = None
    val_metrics: list = field(default_factory=list)
    owner: Any = None  #: weak reference to the Session trained with it

    def free(self, previous=None) -> bool:
        owner = None if self.owner is None else self.owner()
        return owner is None or owner is previous


_POOL: dict[str, list[Entry]] = {}
_ORDER: list[Entry] = []
_STATS = {"compiled": 0, "reused": 0}


def enabled() -> bool:
    return os.environ.get("KERASEQ_REUSE_STEPS", "1") != "0"


def _strip_names(config):
    """A model config without its auto-generated layer names (a builder called twice names
    its layers lstm, lstm_1, ...); names still used to wire layers stay."""
    if isinstance(config, dict):
        return {k: _strip_names(v) for k, v in config.items() if k != "name"}
    if isinstance(config, list):
        return [_strip_names(v) for v in config]
    return config


def key_of(model, optimizer, parts: dict) -> str | None:
    """What the compiled loops depend on: the architecture (config, weights' shapes and
    dtypes), the optimizer's class and settings (all but a plain learning rate, which is a
    variable), the loss, metrics and loop settings in ``parts``. ``None``: not reusable."""
    if not enabled():
        return None
    from keras.src.models.functional import Functional

    if type(model) not in (keras.Sequential, Functional):
        return None  # a subclassed model's call may depend on more than its config
    try:
        config = _strip_names(model.get_config())
        options = _unconfigured_options(model)  # e.g. use_cudnn: not in the config
        opt_config = dict(optimizer.get_config())
    except Exception:
        return None
    opt_config.pop("name", None)
    if isinstance(opt_config.get("learning_rate"), (int, float)):
        opt_config.pop("learning_rate")
    variables = [(v.path.split("/")[-1], tuple(v.shape), str(v.dtype)) for v in model.weights]
    try:
        return json.dumps(
            {
                "model": [type(model).__module__, type(model).__qualname__, config, options],
                "variables": variables,
                "optimizer": [type(optimizer).__qualname__, opt_config],
                "backend": keras.backend.backend(),
                "policy": keras.config.dtype_policy().name,
                **parts,
            },
            sort_keys=True,
            default=repr,
        )
    except Exception:
        return None


def describe(value) -> Any:
    """A JSON-able description of a loss, metric or list of them, for :func:`key_of`."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): describe(v) for k, v in value.items()}
    if isinstance(value, (keras.losses.Loss, keras.metrics.Metric)):
        try:
            return keras.saving.serialize_keras_object(value)
        except Exception:
            return repr(value)
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}@{id(value)}"
    return repr(value)


def take(key: str | None, previous=None, model=None) -> Entry | None:
    """A free entry for ``key`` (``previous``: the session of this estimator's last fit,
    which may be recycled; ``model``: only an entry holding this model), or ``None``."""
    if key is None or key not in _POOL:
        return None
    entries = _POOL[key]
    for collect in (False, True):
        if collect:
            gc.collect()  # an estimator dropped in a reference cycle
        for entry in entries:
            if entry.free(previous) and (model is None or entry.model is model):
                entry.owner = None
                _STATS["reused"] += 1
                return entry
    return None


#: Entries kept at most; beyond, the oldest free ones are forgotten (their memory freed).
MAX_ENTRIES = 16


def register(key: str | None, entry: Entry) -> None:
    _STATS["compiled"] += 1
    if key is None:
        return
    _POOL.setdefault(key, []).append(entry)
    _ORDER.append(entry)
    while len(_ORDER) > MAX_ENTRIES:
        old = next((e for e in _ORDER if e.owner is not None and e.free()), None)
        if old is None:
            break
        _ORDER.remove(old)
        old_key = old.key
        assert old_key is not None  # only entries with a key are kept
        _POOL[old_key].remove(old)
        if not _POOL[old_key]:
            del _POOL[old_key]


def own(entry: Entry | None, session) -> None:
    """Mark ``entry`` as trained by ``session`` (free again once ``session`` is dropped)."""
    if entry is not None:
        entry.owner = weakref.ref(session)


def clear() -> None:
    """Forget every kept compiled loop (their models and optimizers too)."""
    _POOL.clear()
    _ORDER.clear()


def stats() -> dict:
    """``{"compiled": builds, "reused": reuses}`` since the process started."""
    return dict(_STATS)
