"""What a fit learns, kept on the estimator: the fitted record.

What lives here: :class:`FittedRecord`, the fitted schema that ``fit`` writes once and that
``predict``, ``save``/``load``, pickling and the kept streaming states read: the
:class:`~keraseq.session.Layout` the fit read off the model and the data (``n_features_in_``,
``n_outputs_``, ``n_outputs_shapes_``, targets per series or per step, the recurrent states'
specs, the windows), whether ``x`` was tabular rows and ``y`` 1-D, what a warm fit continues
from (``history_``, ``n_epochs_``, the shuffle seed) and a ``Classifier``'s ``classes_``; its
one serial form (:meth:`FittedRecord.to_dict` / :meth:`FittedRecord.from_dict`: plain JSON
values, :data:`FORMAT`); the readers of the format before it (:func:`pop_legacy` and
:meth:`FittedRecord.from_legacy` for pickles, :meth:`FittedRecord.from_legacy_metadata` for
saved files); :class:`FittedAttributes` (the estimator's public fitted attributes,
``n_features_in_``, ``history_``, ..., read off its record and session); :func:`check_fitted`.
What does not: the runtime rebuilt from a record
(``session.rebuild``), the model file (``persistence.py``), the kept streaming states
(``streams.py``).

Example:
    >>> from keraseq.session import Layout
    >>> record = FittedRecord(Layout(3, 1, [(10, 1)], False, [[((8,), "float32")]], 10))
    >>> FittedRecord.from_dict(record.to_dict()).layout.out_shapes
    [(10, 1)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from sklearn.exceptions import NotFittedError

from .backend import current as _backend
from .session import Layout, Session
from .streams import StreamStates as StreamStates  # where pickles of earlier versions find it
from .trainer import Progress

__all__ = ["FittedRecord", "FittedAttributes", "FORMAT", "check_fitted", "pop_legacy"]

#: The serial form's number: 2 since the record; files and pickles written before it have
#: none (their readers: :meth:`FittedRecord.from_legacy_metadata`, :func:`pop_legacy`).
FORMAT = 2

#: The fitted attributes of a pickle written before the record (an ``Estimator``'s
#: ``__dict__``), which the record replaces.
_LEGACY = (
    "n_features_in_",
    "n_outputs_",
    "n_outputs_shapes_",
    "history_",
    "n_epochs_",
    "_state_specs",
    "_per_series",
    "_fit_seq_len",
    "_rows",
    "_flat_y",
    "_shuffle_seed",
    "optimizer_",
)


def check_fitted(est, method: str) -> None:
    """scikit-learn's ``NotFittedError``, naming ``method``, unless ``est`` has been fitted."""
    if not hasattr(est, "model_"):
        raise NotFittedError(
            f"this {type(est).__name__} is not fitted yet: call `fit` before `{method}`"
        )


@dataclass(frozen=True, eq=False)
class FittedRecord:
    """What a fit learned of the data and the model, beyond the model's weights.

    ``history``/``n_epochs``/``shuffle_seed`` are ``None`` until a fit finishes (and
    ``n_epochs``/``shuffle_seed`` for a file saved before the record); then the estimator has
    no ``history_``/``n_epochs_`` and a warm fit starts its count at 0."""

    layout: Layout  #: ``n_features_in_``, ``n_outputs_``, ``n_outputs_shapes_``, states, windows
    rows: bool = False  #: ``x`` was tabular rows (N, F), read as series of one step
    flat_y: bool = False  #: ``y`` was (N,), read as (N, 1): predictions come back as (N,)
    history: dict | None = None  #: ``history_``: per metric, its value per epoch
    n_epochs: int | None = None  #: ``n_epochs_``: epochs done, where a warm fit continues
    shuffle_seed: int | None = None  #: the seed every epoch's shuffle derives from
    classes: np.ndarray | None = None  #: a ``Classifier``'s ``classes_``

    @classmethod
    def of(
        cls,
        session: Session,
        rows: bool,
        flat_y: bool,
        classes: np.ndarray | None = None,
        progress: Progress | None = None,
        before: FittedRecord | None = None,
    ) -> FittedRecord:
        """The record of a fit that trained ``session``; ``progress``: what it leaves for
        the next warm fit (``None``: it stopped on an exception, and what the fits
        ``before`` it left stays)."""
        kept: Progress | FittedRecord | None = progress if progress is not None else before
        return cls(
            session.layout,
            bool(rows),
            bool(flat_y),
            history=None if kept is None else kept.history,
            n_epochs=None if kept is None else kept.n_epochs,
            shuffle_seed=None if kept is None else kept.shuffle_seed,
            classes=classes,
        )

    def progress(self) -> Progress:
        """What the next warm fit continues from (the history dict itself: it grows)."""
        history = self.history if self.history is not None else {}
        return Progress(history, int(self.n_epochs or 0), self.shuffle_seed)

    # ----------------------------------------------------------------------- serial form
    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON values (what ``save`` and pickling write)."""
        layout, classes = self.layout, self.classes
        return {
            "format": FORMAT,
            "n_features": int(layout.n_features),
            "n_outputs": int(layout.n_outputs),
            "out_shapes": [[_int_or_none(d) for d in s] for s in layout.out_shapes],
            "per_series": bool(layout.per_series),
            "state_specs": _specs_to_json(layout.state_specs),
            "seq_len": _int_or_none(layout.seq_len),
            "rows": self.rows,
            "flat_y": self.flat_y,
            "history": self.history,
            "n_epochs": _int_or_none(self.n_epochs),
            "shuffle_seed": _int_or_none(self.shuffle_seed),
            "classes": None if classes is None else classes.tolist(),
            "classes_dtype": None if classes is None else classes.dtype.str,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FittedRecord:
        """The inverse of :meth:`to_dict` (states' dtypes as the running backend's)."""
        if d.get("format") != FORMAT:
            raise ValueError(
                f"a fitted record of format {d.get('format')!r}; this keraseq reads format "
                f"{FORMAT} (and, without a number, the format before it)"
            )
        layout = Layout(
            n_features=int(d["n_features"]),
            n_outputs=int(d["n_outputs"]),
            out_shapes=[tuple(s) for s in d["out_shapes"]],
            per_series=bool(d["per_series"]),
            state_specs=_specs_from_json(d["state_specs"]),
            seq_len=d["seq_len"],
        )
        return cls(
            layout,
            bool(d["rows"]),
            bool(d["flat_y"]),
            d["history"],
            d["n_epochs"],
            d["shuffle_seed"],
            _classes(d["classes"], d["classes_dtype"]),
        )

    # ------------------------------------------------------------ the format before it
    @classmethod
    def from_legacy(cls, attrs: dict, seq_len: int | None, classes=None) -> FittedRecord:
        """The record of a pickle written before it, from the attributes :func:`pop_legacy`
        took out of it (``seq_len``: the resolved one, for a pickle without the fit's)."""
        layout = Layout(
            n_features=int(attrs["n_features_in_"]),
            n_outputs=int(attrs["n_outputs_"]),
            out_shapes=[tuple(s) for s in attrs["n_outputs_shapes_"]],
            per_series=bool(attrs["_per_series"]),
            state_specs=_specs_from_json(_specs_to_json(attrs["_state_specs"])),
            seq_len=attrs.get("_fit_seq_len", seq_len),
        )
        return cls(
            layout,
            bool(attrs.get("_rows", False)),
            bool(attrs.get("_flat_y", False)),
            attrs.get("history_"),
            attrs.get("n_epochs_"),
            attrs.get("_shuffle_seed"),
            classes,
        )

    @classmethod
    def from_legacy_metadata(cls, meta: dict) -> FittedRecord:
        """The record of a file saved before it (``keraseq.json`` without a format number),
        read as that format's ``load`` read it: no ``n_epochs_`` and no shuffle seed."""
        extras = meta.get("fitted", {})
        layout = Layout(
            n_features=int(meta["n_features_in_"]),
            n_outputs=int(meta["n_outputs_"]),
            out_shapes=[tuple(s) for s in meta["n_outputs_shapes_"]],
            per_series=bool(meta["per_series"]),
            state_specs=_specs_from_json(meta["state_specs"]),
            seq_len=meta["params"]["seq_len"],
        )
        return cls(
            layout,
            bool(meta.get("rows", False)),
            bool(meta.get("flat_y", False)),
            history=meta["history_"],
            classes=_classes(extras.get("classes_"), extras.get("classes_dtype")),
        )


class FittedAttributes:
    """scikit-learn's fitted attributes of an estimator, read-only, read off the record its
    last ``fit`` wrote (``_fitted``) and the session it trained (``_session``); before a fit,
    reading one is an ``AttributeError`` (``hasattr`` is False, as scikit-learn expects)."""

    def _record(self, name: str) -> FittedRecord:
        return _fitted_part(self, "_fitted", name)

    def _runtime(self, name: str) -> Session:
        return _fitted_part(self, "_session", name)

    @property
    def n_features_in_(self) -> int:
        """The width of one step of ``x`` in ``fit`` (1 for token ids, ``F`` for rows)."""
        return self._record("n_features_in_").layout.n_features

    @property
    def n_outputs_(self) -> int:
        """The number of targets (model outputs) in ``fit``."""
        return self._record("n_outputs_").layout.n_outputs

    @property
    def n_outputs_shapes_(self) -> list[tuple]:
        """Per output, its shape per window without the batch."""
        return list(self._record("n_outputs_shapes_").layout.out_shapes)

    @property
    def history_(self) -> dict:
        """Per metric (``loss``, ``val_loss``, ...), its value per epoch of the fits so far."""
        return _finished("history_", self._record("history_").history)

    @property
    def n_epochs_(self) -> int:
        """Epochs trained so far (a warm fit continues the count)."""
        return _finished("n_epochs_", self._record("n_epochs_").n_epochs)

    @property
    def optimizer_(self) -> Any:
        """The optimizer ``model_`` is trained with (its state continues a warm fit)."""
        return self._runtime("optimizer_").optimizer

    @property
    def rnn_paths_(self) -> dict[str, str]:
        """Per recurrent layer of the fitted model (by name), the loop keraseq runs it in:
        ``"fused"`` (keraseq's fused loop) or ``"keras (<why>)"`` (Keras's own loop)."""
        return dict(self._runtime("rnn_paths_").carry.paths)


def _fitted_part(est: Any, key: str, name: str) -> Any:
    """``est``'s record or session (``key``), for the fitted attribute ``name``."""
    part = est.__dict__.get(key)
    if part is None:
        raise AttributeError(f"{name}: this estimator is not fitted yet")
    return part


def _finished(name: str, value: Any) -> Any:
    """``value`` of the fitted attribute ``name``, which exists once a fit has finished."""
    if value is None:
        raise AttributeError(f"{name}: no fit of this estimator has finished")
    return value


def pop_legacy(state: dict) -> dict:
    """The fitted attributes of a pickle written before the record, taken out of its
    ``state`` (empty for a pickle of this format)."""
    return {key: state.pop(key) for key in _LEGACY if key in state}


def _int_or_none(value) -> int | None:
    return None if value is None else int(value)


def _specs_to_json(state_specs) -> list:
    """Per RNN call, per state: ``[shape, dtype name]``."""
    return [
        [[[int(d) for d in shape], keras.backend.standardize_dtype(dtype)] for shape, dtype in call]
        for call in state_specs
    ]


def _specs_from_json(specs) -> list:
    """The inverse of :func:`_specs_to_json`: ``(shape tuple, the backend's dtype)``."""
    dtype_of = _backend().dtype_of
    return [[(tuple(shape), dtype_of(dtype)) for shape, dtype in call] for call in specs]


def _classes(values, dtype) -> np.ndarray | None:
    return None if values is None else np.array(values, dtype=np.dtype(dtype))
