"""What a fitted ``Estimator`` holds beyond its hyper-parameters.

What lives here: :func:`check_fitted`, :func:`attributes` (the fitted attributes read off a trained
:class:`~keraseq.session.Session`), :func:`restore_session` (the runtime that pickling and
saving leave out, rebuilt from those attributes: compiled steps, state carry, communicator).
What does not: training (``trainer.py``), files (``persistence.py``), the kept streaming states
(``streams.py``).
"""

from __future__ import annotations

from typing import Any

from sklearn.exceptions import NotFittedError

from . import distributed as dist
from .backend import current as _backend
from .session import Session, build_steps, device_for
from .streams import StreamStates as StreamStates  # where pickles of earlier versions find it
from .trainer import Progress
from .windows import StateCarry

__all__ = ["check_fitted", "attributes", "restore_session", "progress"]


def check_fitted(est, method: str) -> None:
    """scikit-learn's ``NotFittedError``, naming ``method``, unless ``est`` has been fitted."""
    if not hasattr(est, "model_"):
        raise NotFittedError(
            f"this {type(est).__name__} is not fitted yet: call `fit` before `{method}`"
        )


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
