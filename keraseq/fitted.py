"""What a fitted ``Estimator`` holds beyond its hyper-parameters, and its streaming states.

What lives here: :func:`check_fitted`, :func:`attributes` (the fitted attributes read off a trained
:class:`~keraseq.session.Session`), :func:`restore_session` (the runtime that pickling and
saving leave out, rebuilt from those attributes: compiled steps, state carry, communicator),
:class:`StreamStates` (the final state of every series after ``predict``, which
``predict(..., reset=False)`` continues from) and its flat list form (:func:`flat_states`,
:func:`stream_from_flat`, what ``keraseq.utils.states`` and saved files hold). What does not:
training (``trainer.py``), files (``persistence.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.exceptions import NotFittedError

from . import distributed as dist
from .backend import current as _backend
from .session import Session, build_steps, device_for
from .trainer import Progress
from .windows import StateCarry

__all__ = [
    "check_fitted",
    "StreamStates",
    "attributes",
    "restore_session",
    "progress",
    "kept_states",
    "flat_states",
    "stream_from_flat",
]


def check_fitted(est, method: str) -> None:
    """scikit-learn's ``NotFittedError``, naming ``method``, unless ``est`` has been fitted."""
    if not hasattr(est, "model_"):
        raise NotFittedError(
            f"this {type(est).__name__} is not fitted yet: call `fit` before `{method}`"
        )


class StreamStates:
    """The final recurrent state of every series after the last ``predict``: what
    ``predict(..., reset=False)`` continues from. One is created by each ``fit`` (and by
    loading/unpickling); ``predict`` fills it and never rebinds an estimator attribute, so
    the estimator's ``__dict__`` is the same before and after ``predict`` (scikit-learn's
    contract)."""

    __slots__ = ("states",)

    def __init__(self, states=None):
        self.states = states

    def __getstate__(self):
        return {"states": self.states}

    def __setstate__(self, state):
        self.states = state["states"]


def attributes(session: Session, rows: bool = False, flat_y: bool = False) -> dict[str, Any]:
    """The attributes a fit leaves on the estimator: the public ``name_`` ones, and what
    ``predict``/``save`` need of the trained session (``rows``: tabular ``x``; ``flat_y``:
    ``y`` fitted as ``(N,)``). The kept streaming states start empty."""
    return {
        "_rows": rows,
        "_flat_y": flat_y,
        "_session": session,
        "model_": session.model,
        "optimizer_": session.optimizer,
        "n_features_in_": session.n_features,
        "n_outputs_": session.n_outputs,
        "n_outputs_shapes_": session.out_shapes,
        "_state_specs": session.state_specs,
        "_per_series": session.per_series,
        "_fit_seq_len": session.seq_len,
        "_stream": StreamStates(),
    }


def restore_session(est: Any, p: dict) -> Session:
    """The session of a fitted estimator after unpickling or loading, from its fitted
    attributes (those :func:`attributes` names): the optimizer link, state carry,
    communicator and compiled steps. ``p``: its resolved hyper-parameters."""
    p = dict(p, seq_len=getattr(est, "_fit_seq_len", p["seq_len"]))  # what the fit compiled
    model, state_specs, per_series = est.model_, est._state_specs, est._per_series
    comm = dist.get_comm(est.distributed)
    device = device_for(p["device"], comm)
    carry = StateCarry(model, fused=p["fused_rnn"])
    jit = _backend().jit_for(model, p["jit_compile"])
    carry.compiled_with(jit)
    steps, _ = build_steps(
        model,
        model.optimizer,
        carry,
        state_specs,
        per_series,
        p,
        comm,
        [],
        est.loss,
        len(est.n_outputs_shapes_),
        device,
        jit,
    )
    return Session(
        model,
        model.optimizer,
        carry,
        steps,
        comm,
        device,
        state_specs,
        per_series,
        p["seq_len"],
        list(est.n_outputs_shapes_),
        int(est.n_features_in_),
        int(est.n_outputs_),
    )


def progress(est: Any) -> Progress:
    """What the fits so far leave for the next warm fit: history, epochs, shuffle seed."""
    return Progress(
        getattr(est, "history_", {}),
        int(getattr(est, "n_epochs_", 0)),
        getattr(est, "_shuffle_seed", None),
    )


def kept_states(stream: StreamStates) -> list:
    """The states ``predict(..., reset=False)`` continues from; an error when there are none."""
    if stream.states is None:
        raise ValueError(
            "`reset=False` continues the series of the previous `predict`, "
            "but there is none (or `fit` ran since); call predict with "
            "reset=True first"
        )
    return stream.states


def flat_states(stream: StreamStates | None) -> list[np.ndarray]:
    """The final state of every series after the last ``predict`` (flat list, leading N)."""
    states = None if stream is None else stream.states
    if states is None:
        raise ValueError("no states kept: call `predict` first")
    return [np.array(s) for call in states for s in call]


def stream_from_flat(flat: Sequence[np.ndarray], state_specs) -> StreamStates:
    """Kept states from the flat list :func:`flat_states` gives, checked against the fitted
    model's ``state_specs`` (per RNN call, the per-series (shape, dtype) of its states)."""
    specs = [s for call in state_specs for s in call]
    if len(flat) != len(specs):
        raise ValueError(f"expected {len(specs)} state arrays, got {len(flat)}")
    n = int(np.shape(flat[0])[0]) if flat else 0
    out, k = [], 0
    for call in state_specs:
        group = []
        for shape, _ in call:
            a = np.asarray(flat[k], np.float32)
            if a.shape != (n,) + tuple(shape):
                raise ValueError(f"state {k} has shape {a.shape}; expected {(n,) + shape}")
            group.append(a.copy())
            k += 1
        out.append(group)
    return StreamStates(out)
