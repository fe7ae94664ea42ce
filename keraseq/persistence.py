"""Saving and loading a fitted estimator in Keras's ``.keras`` format.

What lives here: :func:`save` (the fitted model as Keras saves it, plus ``keraseq.json``: the
format number, the hyper-parameters, the loss and the fitted record's serial form
(``fitted.py``); and ``keraseq_states.npz``: the kept streaming states; written atomically, by
MPI rank 0), :func:`load` (its inverse, under Keras's ``safe_mode``: the parts of a
:class:`Saved`, of which ``Estimator.load`` makes an estimator; files saved before the fitted
record, without a format number, are read too) and the (de)serialisation of losses and
metrics for that JSON. A plain ``keras.saving.load_model`` reads the model alone. What does
not: pickling (``Estimator``'s ``__getstate__``), the fitted record itself (``fitted.py``),
the estimator's attributes (``estimator.py``).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from typing import Any, NamedTuple

import keras
import numpy as np

from . import distributed as dist
from .fitted import FORMAT, FittedRecord
from .hyperparams import DEFAULTS
from .losses import is_window_loss

__all__ = ["Saved", "save", "load", "serialize_loss", "deserialize_loss"]

#: The hyper-parameters a file does not keep: live objects of the process that saved it.
_NOT_SAVED = ("distributed", "callbacks")


class Saved(NamedTuple):
    """What a saved file holds."""

    model: keras.Model  #: the fitted model, compiled with its optimizer (and its state)
    loss: Any  #: the loss (a callable one: as passed to :func:`load`)
    params: dict  #: the other hyper-parameters (keywords of the estimator, as resolved)
    record: FittedRecord
    states: list | None  #: the kept streaming states, flat (``None``: none kept)


def save(
    path: str | os.PathLike,
    saved: Saved,
    owner: str,
    distributed: Any = "auto",
) -> None:
    """Save ``saved`` (of an estimator of class ``owner``) to ``path`` (ending in
    ``.keras``); only rank 0 of ``distributed``'s communicator writes under MPI."""
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"`path` must end in '.keras', got {path!r}")
    if dist.get_comm(distributed).rank != 0:
        return
    _write(path, saved.model, _metadata(saved, owner), saved.states)


def _metadata(saved: Saved, owner: str) -> dict:
    """``keraseq.json``: what the model file does not hold."""
    params = {k: saved.params[k] for k in DEFAULTS if k not in _NOT_SAVED}
    params["metrics"] = [
        m if isinstance(m, str) else keras.metrics.serialize(m) for m in (params["metrics"] or [])
    ]
    return {
        "format": FORMAT,
        "class": owner,
        "params": params,
        "loss": serialize_loss(saved.loss),
        "record": saved.record.to_dict(),
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


def load(path: str | os.PathLike, loss: Any = None, custom_objects=None) -> Saved:
    """What :func:`save` wrote to ``path``; ``loss``: the callable loss it was saved with (a
    callable cannot be stored). A file saved before the fitted record (no format number) is
    read as that version's ``load`` read it (:meth:`FittedRecord.from_legacy_metadata`)."""
    path = os.fspath(path)
    meta, states = _read(path)
    model = keras.saving.load_model(path, custom_objects=custom_objects, safe_mode=True)
    stored_loss = deserialize_loss(meta["loss"])
    if stored_loss is None and loss is None:
        raise ValueError(
            "this estimator was saved with a callable loss; pass it again: "
            "Estimator.load(path, loss=...)"
        )
    params = dict(meta["params"])
    params["metrics"] = [
        m if isinstance(m, str) else keras.metrics.deserialize(m) for m in params["metrics"]
    ] or None
    if "format" in meta:
        record = FittedRecord.from_dict(meta["record"])
    else:
        record = FittedRecord.from_legacy_metadata(meta)
    return Saved(model, loss if loss is not None else stored_loss, params, record, states)


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
