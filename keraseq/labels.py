"""Class labels for ``Classifier``: labels <-> indices into ``classes_``, class weights, accuracy.

What lives here: the checks of labels (class labels and not continuous values, not one-hot rows,
scikit-learn's array-likes read as arrays), :func:`encode` (any hashable labels as float codes
``(N, 1)`` per series or ``(N, T, 1)`` per step, the sparse targets the model trains on),
:func:`class_weights` (``class_weight`` times ``sample_weight``), :func:`check_units` (the
model's output units against the classes) and :func:`accuracy` (``Classifier.score``). Labels
at padded steps are ignored everywhere. What does not: training (``trainer.py``), the
estimator face (``classifier.py``).

Example:
    >>> import numpy as np
    >>> from keraseq.labels import encode
    >>> classes = np.array(["down", "up"])
    >>> encode(np.array(["up", "down", "up"]), classes)[:, 0]
    array([1., 0., 1.], dtype=float32)
"""

from __future__ import annotations

import warnings
from typing import Any

import keras
import numpy as np

from .inputs import SliceTuple
from .lengths import check_lengths, is_ragged
from .tabular import row_widths
from .validation import check_sklearn_array

__all__ = [
    "in_memory",
    "stacked_unless_ragged",
    "check_not_one_hot",
    "check_label_kind",
    "real_labels",
    "require_labels",
    "encode",
    "class_weights",
    "is_binary_loss",
    "check_units",
    "both_columns",
    "accuracy",
]


# ------------------------------------------------------------------------ reading the labels
def in_memory(x, y, sample_weight):
    """scikit-learn's array-likes (lists, DataFrames, objects with ``__array__``) as arrays;
    a column of labels ``(N, 1)`` for tabular ``x`` as ``(N,)``, with scikit-learn's
    ``DataConversionWarning``."""
    x = check_sklearn_array(x, "x")
    if sample_weight is not None:
        sample_weight = check_sklearn_array(sample_weight, "sample_weight")
    if (
        y is not None
        and not isinstance(y, (np.ndarray, list, tuple))
        and (hasattr(y, "__array__") or hasattr(y, "iloc"))
    ):
        y = np.asarray(y)
    if isinstance(y, np.ndarray) and y.ndim == 2 and y.shape[1] == 1 and row_widths(x) is not None:
        from sklearn.exceptions import DataConversionWarning

        warnings.warn(
            "A column-vector y was passed when a 1d array was expected: labels per "
            "row of tabular `x` are (N,); y.ravel() is used",
            DataConversionWarning,
            stacklevel=3,
        )
        y = y[:, 0]
    return x, y, sample_weight


def stacked_unless_ragged(x, y):
    """Labels as given for a ragged ``x``; else one array (a list of equal rows stacks)."""
    if y is None or is_ragged(x) or not is_ragged(y):
        return y
    return np.asarray(y)


def check_not_one_hot(x, y) -> None:
    """Labels (N, C) that are not per-step labels (N, T): most likely one-hot targets."""
    if y is None or is_ragged(x) or np.ndim(y) != 2:
        return
    if isinstance(x, SliceTuple):
        x = x.arrays
    first = x[0] if isinstance(x, (tuple, list)) else x
    t = getattr(first, "shape", (None, None))[1] if np.ndim(first) == 3 else None
    labels = np.asarray(y)
    if t is not None and labels.shape[1] != t:
        raise ValueError(
            f"`y` has shape {labels.shape} but `x` has T={t} steps: Classifier takes "
            f"labels per series (N,) or per time step (N, T), not one-hot rows (N, C); pass "
            f"y.argmax(axis=1), or use Estimator with loss='categorical_crossentropy'"
        )


def check_label_kind(labels) -> None:
    """Class labels, not continuous values (scikit-learn's ``check_classification_targets``:
    "Unknown label type: continuous ...")."""
    labels = np.asarray(labels)
    if labels.dtype.kind == "f" and labels.size:
        from sklearn.utils.multiclass import check_classification_targets

        check_classification_targets(labels.ravel())


def real_labels(y, lengths) -> np.ndarray:
    """The labels of real steps/series only (flat for per-step labels)."""
    if is_ragged(y):
        return np.concatenate([np.asarray(a).ravel() for a in y])
    labels = np.asarray(y)
    if lengths is not None and labels.ndim == 2:
        lengths = check_lengths(lengths, labels.shape[0], labels.shape[1])
        return labels[np.arange(labels.shape[1])[None, :] < lengths[:, None]]
    return labels


# ------------------------------------------------------------------------------- encoding
def require_labels(y, name: str = "y") -> None:
    """The error scikit-learn expects when the labels ``y`` are ``None``."""
    if y is None:
        raise ValueError(
            f"`{name}` is None: this estimator requires y to be passed, but "
            f"the target y is None; expected labels (N,) or (N, T)"
        )


def encode(y, classes: np.ndarray, name: str = "y", lengths=None):
    """Labels as float codes, indices into ``classes``: ``(N, 1)`` per series, ``(N, T, 1)``
    per step (a list of ``(T_i, 1)`` for ragged per-step labels); padded steps coded 0."""
    require_labels(y, name)
    if is_ragged(y):  # per-step labels of unequal lengths: a list of (T_i, 1) codes
        return [encode(np.asarray(a)[None], classes, f"{name}[{k}]")[0] for k, a in enumerate(y)]
    labels = np.asarray(y)
    if lengths is not None and labels.ndim == 2:  # padded steps: any label, coded 0
        real = np.arange(labels.shape[1])[None, :] < np.asarray(lengths)[:, None]
        labels = np.where(real, labels, classes[0])
    if labels.ndim not in (1, 2):
        raise ValueError(
            f"`{name}` has shape {labels.shape}; expected labels per series "
            f"(N,) or per time step (N, T)"
        )
    if labels.size == 0:
        raise ValueError(f"`{name}` is empty")
    unknown = np.setdiff1d(np.unique(labels), classes)
    if unknown.size:
        raise ValueError(
            f"`{name}` has labels {unknown[:5].tolist()} not seen in fit; "
            f"classes_ = {classes.tolist()}"
        )
    codes = np.searchsorted(classes, labels).astype(np.float32)
    return codes[..., None]


# -------------------------------------------------------------------------- class weights
def class_weights(class_weight: Any, classes: np.ndarray, y, lengths, sample_weight):
    """``sample_weight`` times the weight of each label's class (``class_weight``: a dict
    ``{label: weight}``, ``"balanced"`` or ``None``), for labels per series and per step."""
    if class_weight is None:
        return sample_weight
    per_class = _per_class(class_weight, classes, y, lengths)

    def weigh(labels, w):
        codes = np.searchsorted(classes, np.asarray(labels)).clip(0, len(classes) - 1)
        out = per_class[codes]
        if w is not None:
            w = np.asarray(w, np.float32)
            out = out * (w.reshape(w.shape + (1,) * (out.ndim - w.ndim)))
        return out

    if is_ragged(y):
        ws = sample_weight if sample_weight is not None else [None] * len(y)
        if sample_weight is not None and not is_ragged(sample_weight):
            ws = list(np.asarray(sample_weight))
        return [weigh(a, w) for a, w in zip(y, ws)]
    return weigh(y, sample_weight)


def _per_class(class_weight: Any, classes: np.ndarray, y, lengths) -> np.ndarray:
    """The weight of each class, in the order of ``classes`` (float32). ``"balanced"`` is
    scikit-learn's ``n_samples / (n_classes * count)`` over the real series (or steps);
    every MPI rank holds all labels, so the counts are global."""
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(
                f"`class_weight` must be a dict, 'balanced' or None, got {class_weight!r}"
            )
        from sklearn.utils.class_weight import compute_class_weight

        labels = np.ravel(real_labels(y, lengths))
        per_class = compute_class_weight("balanced", classes=classes, y=labels)
    elif isinstance(class_weight, dict):
        unknown = [k for k in class_weight if k not in set(classes.tolist())]
        if unknown:
            raise ValueError(
                f"`class_weight` names classes {unknown} that are not in "
                f"`y`; classes_ = {classes.tolist()}"
            )
        per_class = np.array([float(class_weight.get(c, 1.0)) for c in classes.tolist()])
    else:
        raise TypeError(
            f"`class_weight` must be a dict, 'balanced' or None, got {type(class_weight).__name__}"
        )
    return per_class.astype(np.float32)


# ------------------------------------------------------------------ the model's output units
def is_binary_loss(loss) -> bool:
    """A loss for one sigmoid unit (binary cross-entropy or its focal form)."""
    if isinstance(loss, str):
        return loss in ("binary_crossentropy", "bce", "binary_focal_crossentropy")
    return isinstance(
        loss, (keras.losses.BinaryCrossentropy, keras.losses.BinaryFocalCrossentropy)
    ) or loss in (keras.losses.binary_crossentropy, keras.losses.binary_focal_crossentropy)


def check_units(units: int, classes: np.ndarray, loss) -> None:
    """The model's output units for these classes: one per class, or one sigmoid unit with a
    binary loss for two classes."""
    n_classes = len(classes)
    if units == n_classes:
        return
    if units == 1 and n_classes == 2:
        if is_binary_loss(loss):
            return
        raise ValueError(
            f"the model has 1 output unit and `y` has 2 classes {classes.tolist()}: a "
            f"single sigmoid unit needs loss='binary_crossentropy' (got {loss!r}); or "
            f"use Dense(2, activation='softmax') with the default loss"
        )
    raise ValueError(
        f"the model's output has {units} unit(s) but `y` has {n_classes} classes "
        f"{classes[:10].tolist()}; use Dense({n_classes}, activation='softmax')"
        + (" or one sigmoid unit with loss='binary_crossentropy'" if n_classes == 2 else "")
    )


def both_columns(out):
    """The output of one sigmoid unit, P(classes_[1]), as both columns (scikit-learn's
    ``predict_proba``); a list of them for ragged per-step outputs."""
    both = lambda p: np.concatenate([1.0 - p, p], axis=-1)
    return [both(p) for p in out] if isinstance(out, list) else both(out)


# ------------------------------------------------------------------------------- accuracy
def accuracy(pred, y, sample_weight=None, lengths=None, score_from: int = 0) -> float:
    """The weighted share of ``pred`` equal to the labels ``y``, over all series (and real
    time steps from ``score_from`` on); ``pred`` a list for ragged per-step labels."""
    if isinstance(pred, list):  # ragged per-step labels
        if not is_ragged(y) or [len(a) for a in y] != [len(p) for p in pred]:
            raise ValueError(
                "`y` must be a list of per-step labels with the lengths of `x`'s series"
            )
        lengths = np.array([len(p) for p in pred])
        width = int(lengths.max())
        pad = lambda seqs, dtype: np.stack(
            [np.pad(np.asarray(a, dtype), (0, width - len(a))) for a in seqs]
        )
        pred, labels = pad(pred, object), pad(y, object)
        if sample_weight is not None and is_ragged(sample_weight):
            sample_weight = pad(sample_weight, np.float64)
    else:
        labels = np.asarray(y)
    if labels.shape != pred.shape:
        raise ValueError(f"`y` has shape {labels.shape}; expected {pred.shape}")
    hits = (pred == labels).astype(np.float64)
    w = np.ones(hits.shape) if sample_weight is None else np.asarray(sample_weight, np.float64)
    w = np.broadcast_to(w.reshape(w.shape + (1,) * (hits.ndim - w.ndim)), hits.shape)
    if lengths is not None and hits.ndim == 2:  # padded steps are not scored
        w = w * (np.arange(hits.shape[1])[None, :] < np.asarray(lengths)[:, None])
    if score_from and hits.ndim == 2:
        w = w * (np.arange(hits.shape[1])[None, :] >= score_from)
    return float((hits * w).sum() / w.sum())
