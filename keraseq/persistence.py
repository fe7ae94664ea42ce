"""Saving and loading a fitted ``Estimator`` in Keras's ``.keras`` format.

What lives here: :func:`save` (the fitted model as Keras saves it, plus ``keraseq.json``: the
hyper-parameters, the loss, the fitted attributes; and ``keraseq_states.npz``: the kept
streaming states; written atomically, by MPI rank 0), :func:`load` (its inverse, under Keras's
``safe_mode``) and the (de)serialisation of losses and metrics for that JSON. A plain
``keras.saving.load_model`` reads the model alone. What does not: pickling (``Estimator``'s
``__getstate__``), the fitted attributes themselves (``fitted.py``).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from typing import Any

import keras
import numpy as np

from . import distributed as dist
from .backend import current as _backend
from .hyperparams import DEFAULTS
from .losses import is_window_loss
from .streams import StreamStates

__all__ = ["save", "load", "serialize_loss", "deserialize_loss"]

#: The hyper-parameters a file does not keep: live objects of the process that saved it.
_NOT_SAVED = ("distributed", "callbacks")


def save(est: Any, path: str | os.PathLike) -> None:
    """Save the fitted estimator ``est`` to ``path`` (ending in ``.keras``); only rank 0
    writes under MPI."""
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"`path` must end in '.keras', got {path!r}")
    if dist.get_comm(est.distributed).rank != 0:
        return
    stream = getattr(est, "_stream", None)
    states = est._get_states() if stream is not None and stream.states is not None else None
    _write(path, est.model_, _metadata(est), states)


def _metadata(est: Any) -> dict:
    """``keraseq.json``: what the model file does not hold."""
    resolved = est._resolved()
    params = {
        k: (getattr(est, k) if k == "verbose" else resolved[k])
        for k in DEFAULTS
        if k not in _NOT_SAVED
    }
    params["metrics"] = [
        m if isinstance(m, str) else keras.metrics.serialize(m) for m in (params["metrics"] or [])
    ]
    return {
        "class": type(est).__name__,
        "params": params,
        "loss": serialize_loss(est.loss),
        "n_features_in_": est.n_features_in_,
        "n_outputs_": est.n_outputs_,
        "n_outputs_shapes_": [list(s) for s in est.n_outputs_shapes_],
        "per_series": est._per_series,
        "history_": est.history_,
        "rows": bool(getattr(est, "_rows", False)),
        "flat_y": bool(getattr(est, "_flat_y", False)),
        "state_specs": [
            [
                [list(shape), str(np.dtype(dtype.name if hasattr(dtype, "name") else dtype))]
                for shape, dtype in call
            ]
            for call in est._state_specs
        ],
        "fitted": est._fitted_extras(),
    }


def _write(path: str, model: keras.Model, meta: dict, states: list | None) -> None:
    """The model's ``.keras`` file with the metadata (and the states) added, written to a
    temporary file first: a crash never leaves a half-written file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=".keras", dir=directory)
    os.close(fd)
    try:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as zf:
            zf.writestr("keraseq.json", json.dumps(meta, default=_json_default))
            if states is not None:
                buf = io.BytesIO()
                np.savez(buf, *states)
                zf.writestr("keraseq_states.npz", buf.getvalue())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load(cls: type, path: str | os.PathLike, loss: Any = None, custom_objects=None) -> Any:
    """An estimator of class ``cls`` from a file :func:`save` wrote; ``loss``: the callable
    loss it was saved with (a callable cannot be stored)."""
    path = os.fspath(path)
    meta, states = _read(path)
    model = keras.saving.load_model(path, custom_objects=custom_objects, safe_mode=True)
    stored_loss = deserialize_loss(meta["loss"])
    if stored_loss is None and loss is None:
        raise ValueError(
            "this estimator was saved with a callable loss; pass it again: "
            "Estimator.load(path, loss=...)"
        )
    params = meta["params"]
    params["metrics"] = [
        m if isinstance(m, str) else keras.metrics.deserialize(m) for m in params["metrics"]
    ] or None
    est = cls(model, loss if loss is not None else stored_loss, model.optimizer, **params)
    est.model_ = model
    est.n_features_in_ = meta["n_features_in_"]
    est.n_outputs_ = meta["n_outputs_"]
    est.n_outputs_shapes_ = [tuple(s) for s in meta["n_outputs_shapes_"]]
    est.history_ = meta["history_"]
    est._per_series = meta["per_series"]
    est._state_specs = [
        [(tuple(shape), _backend().dtype_of(dtype)) for shape, dtype in call]
        for call in meta["state_specs"]
    ]
    est._fit_seq_len = params["seq_len"]
    est._rows = bool(meta.get("rows", False))
    est._flat_y = bool(meta.get("flat_y", False))
    est._restore_runtime()  # optimizer link, communicator, state carry, compiled steps
    est._stream = StreamStates()
    est._load_fitted_extras(meta.get("fitted", {}))
    if states is not None:
        est._set_states(states)
    return est


def _read(path: str) -> tuple[dict, list | None]:
    """The metadata and the kept states (``None``: none) of a saved file."""
    with zipfile.ZipFile(path) as zf:
        if "keraseq.json" not in zf.namelist():
            raise ValueError(
                f"{path!r} is a Keras file without keraseq metadata; load the "
                f"model with keras.saving.load_model and wrap it"
            )
        meta = json.loads(zf.read("keraseq.json"))
        states = None
        if "keraseq_states.npz" in zf.namelist():
            with np.load(io.BytesIO(zf.read("keraseq_states.npz"))) as npz:
                states = [npz[f"arr_{k}"] for k in range(len(npz.files))]
    return meta, states


def serialize_loss(loss: Any) -> dict | None:
    """A loss as JSON (``None`` for a window loss, a callable that cannot be stored)."""
    if is_window_loss(loss):
        return None
    if isinstance(loss, (list, tuple)):
        return {"list": [serialize_loss(item) for item in loss]}
    if isinstance(loss, dict):
        return {"dict": {k: serialize_loss(v) for k, v in loss.items()}}
    if isinstance(loss, str):
        return {"name": loss}
    return {"keras": keras.losses.serialize(loss)}


def deserialize_loss(meta: dict | None) -> Any:
    """The inverse of :func:`serialize_loss`."""
    if meta is None:
        return None
    if "list" in meta:
        return [deserialize_loss(m) for m in meta["list"]]
    if "dict" in meta:
        return {k: deserialize_loss(m) for k, m in meta["dict"].items()}
    if "name" in meta:
        return meta["name"]
    return keras.losses.deserialize(meta["keras"])


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot store {obj!r} in the keraseq metadata")
