"""``Classifier``: the sequence Estimator for labels, per series or per time step.

What lives here: label encoding (any hashable labels, via their sorted unique values in
``classes_``), ``predict`` returning labels, ``predict_proba``, and ``score`` = accuracy.
What does not: training itself (``trainer.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import ClassifierMixin

from .estimator import Estimator
from .lengths import check_lengths, is_ragged
from .model_selection import whole
from .tabular import row_widths
from .validation import check_sklearn_array

__all__ = ["Classifier"]


class Classifier(ClassifierMixin, Estimator):
    """Classify sequences: labels per series ``(N,)`` or per time step ``(N, T)``.

    The model returns class probabilities (softmax): ``(batch, n_classes)`` per series (the last
    window's output, e.g. ``LSTM(return_sequences=False)`` + ``Dense(C, "softmax")``) or
    ``(batch, time, n_classes)`` per time step; for two classes a single sigmoid unit with
    ``loss="binary_crossentropy"`` works too (``predict`` thresholds at 0.5, ``predict_proba``
    gives both columns). Labels may be of any type (strings included);
    they are encoded as indices into ``classes_`` (sorted unique labels). The default loss is
    ``"sparse_categorical_crossentropy"``. ``is_classifier()`` is true, so scikit-learn's
    cross-validation stratifies per-series labels.

    ``class_weight``: a dict ``{label: weight}`` or ``"balanced"`` (scikit-learn's rule),
    for labels per series and per step alike (Keras's ``class_weight`` refuses per-step
    labels); it multiplies ``sample_weight``.

    Unequal lengths: ``x`` a list of ``(T_i, F)`` arrays with labels per series ``(N,)`` or a
    list of per-step labels ``(T_i,)``; or padded arrays with ``lengths`` (labels at padded
    steps are ignored: any value, not counted in ``classes_``).

    Example:
        >>> import keras, numpy as np
        >>> from keraseq import Classifier
        >>> model = keras.Sequential([keras.Input((None, 2)), keras.layers.GRU(8),
        ...                           keras.layers.Dense(2, activation="softmax")])
        >>> x = np.random.rand(20, 12, 2).astype("float32")
        >>> labels = np.where(x[:, :, 0].mean(1) > 0.5, "up", "down")
        >>> clf = Classifier(model, epochs=2, batch_size=10, seq_len=6, verbose=0).fit(x, labels)
        >>> clf.predict(x).shape, [str(c) for c in clf.classes_]
        ((20,), ['down', 'up'])
    """

    def __init__(
        self,
        model,
        loss: Any = "sparse_categorical_crossentropy",
        optimizer: Any = "adam",
        spec: Any = None,
        *,
        epochs: int | None = None,
        batch_size: int | None = None,
        seq_len: int | None = None,
        shuffle: bool = True,
        random_state: int | None = None,
        verbose: int | str = "auto",
        metrics=None,
        loss_weights=None,
        predict_batch_size: int | None = None,
        rebatch: bool = False,
        jit_compile: bool | str = "auto",
        device: str | None = "auto",
        distributed: Any = "auto",
        warm_start: bool = False,
        group_by_length: bool = False,
        callbacks=None,
        class_weight=None,
        **model_params: Any,
    ):
        # The same hyper-parameters as Estimator, spelled out: scikit-learn reads the signature.
        super().__init__(
            model,
            loss,
            optimizer,
            spec,
            epochs=epochs,
            batch_size=batch_size,
            seq_len=seq_len,
            shuffle=shuffle,
            random_state=random_state,
            verbose=verbose,
            metrics=metrics,
            loss_weights=loss_weights,
            predict_batch_size=predict_batch_size,
            rebatch=rebatch,
            jit_compile=jit_compile,
            device=device,
            distributed=distributed,
            warm_start=warm_start,
            group_by_length=group_by_length,
            callbacks=callbacks,
            **model_params,
        )
        self.class_weight = class_weight

    @classmethod
    def _get_param_names(cls) -> list[str]:
        return super()._get_param_names() + ["class_weight"]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = False  # one label per series (or per step), not (N, k)
        return tags

    def _builder_meta(self) -> dict:
        return {"classes_": self.classes_, "n_classes_": len(self.classes_)}

    def _class_weights(self, y, lengths, sample_weight):
        """``sample_weight`` times the weight of each label's class (``class_weight``).

        ``"balanced"`` is scikit-learn's ``n_samples / (n_classes * count)`` over the real
        series (or steps); every MPI rank holds all labels, so the counts are global."""
        cw = self.class_weight
        if cw is None:
            return sample_weight
        if isinstance(cw, str):
            if cw != "balanced":
                raise ValueError(f"`class_weight` must be a dict, 'balanced' or None, got {cw!r}")
            from sklearn.utils.class_weight import compute_class_weight

            per_class = compute_class_weight(
                "balanced", classes=self.classes_, y=np.ravel(self._real_labels(y, lengths))
            )
        elif isinstance(cw, dict):
            unknown = [k for k in cw if k not in set(self.classes_.tolist())]
            if unknown:
                raise ValueError(
                    f"`class_weight` names classes {unknown} that are not in "
                    f"`y`; classes_ = {self.classes_.tolist()}"
                )
            per_class = np.array([float(cw.get(c, 1.0)) for c in self.classes_.tolist()])
        else:
            raise TypeError(
                f"`class_weight` must be a dict, 'balanced' or None, got {type(cw).__name__}"
            )
        per_class = per_class.astype(np.float32)

        def weigh(labels, w):
            codes = np.searchsorted(self.classes_, np.asarray(labels)).clip(
                0, len(self.classes_) - 1
            )
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

    @staticmethod
    def _real_labels(y, lengths) -> np.ndarray:
        """The labels of real steps/series only (flat for per-step labels)."""
        if is_ragged(y):
            return np.concatenate([np.asarray(a).ravel() for a in y])
        labels = np.asarray(y)
        if lengths is not None and labels.ndim == 2:
            lengths = check_lengths(lengths, labels.shape[0], labels.shape[1])
            return labels[np.arange(labels.shape[1])[None, :] < lengths[:, None]]
        return labels

    def _encode(self, y, name: str = "y", lengths=None):
        if y is None:
            raise ValueError(
                f"`{name}` is None: this estimator requires y to be passed, but "
                f"the target y is None; expected labels (N,) or (N, T)"
            )
        if is_ragged(y):  # per-step labels of unequal lengths: a list of (T_i, 1) codes
            return [self._encode(np.asarray(a)[None], f"{name}[{k}]")[0] for k, a in enumerate(y)]
        labels = np.asarray(y)
        if lengths is not None and labels.ndim == 2:  # padded steps: any label, coded 0
            real = np.arange(labels.shape[1])[None, :] < np.asarray(lengths)[:, None]
            labels = np.where(real, labels, self.classes_[0])
        if labels.ndim not in (1, 2):
            raise ValueError(
                f"`{name}` has shape {labels.shape}; expected labels per series "
                f"(N,) or per time step (N, T)"
            )
        if labels.size == 0:
            raise ValueError(f"`{name}` is empty")
        unknown = np.setdiff1d(np.unique(labels), self.classes_)
        if unknown.size:
            raise ValueError(
                f"`{name}` has labels {unknown[:5].tolist()} not seen in fit; "
                f"classes_ = {self.classes_.tolist()}"
            )
        codes = np.searchsorted(self.classes_, labels).astype(np.float32)
        return codes[..., None]  # (N, 1) per series, (N, T, 1) per step

    def fit(
        self,
        x,
        y,
        sample_weight=None,
        validation_data=None,
        callbacks=None,
        epochs: int | None = None,
        lengths=None,
        initial_epoch: int | None = None,
    ) -> Classifier:
        """Train on ``x`` (N, T, F) and labels ``y`` (N,) or (N, T); returns ``self``.

        With ``class_weight``, each series (or step) is weighted by its class's weight,
        times ``sample_weight``."""
        if y is None:
            self._encode(y)  # raises the message scikit-learn expects (datasets: Estimator)
        x, y = whole(x), whole(y)  # a refit on TimeSplit's folds: all of every series
        x, y, sample_weight = _in_memory(x, y, sample_weight)
        y = _stacked_unless_ragged(x, y)
        _check_not_one_hot(x, y)
        _check_label_kind(self._real_labels(y, lengths))
        self.classes_ = np.unique(self._real_labels(y, lengths))
        codes = self._encode(y, lengths=lengths)
        if validation_data is not None:
            vl = validation_data[3] if len(validation_data) > 3 else None
            validation_data = (
                validation_data[0],
                self._encode(validation_data[1], "validation_data y", vl),
                *validation_data[2:],
            )
        sample_weight = self._class_weights(y, lengths, sample_weight)
        return super().fit(
            x,
            codes,
            sample_weight,
            validation_data,
            callbacks,
            epochs,
            lengths=lengths,
            initial_epoch=initial_epoch,
        )

    def partial_fit(
        self,
        x,
        y,
        classes=None,
        sample_weight=None,
        validation_data=None,
        callbacks=None,
        lengths=None,
    ) -> Classifier:
        """One epoch, continuing; pass every label in ``classes`` on the first call."""
        x, y, sample_weight = _in_memory(x, y, sample_weight)
        y = _stacked_unless_ragged(x, y)
        if not hasattr(self, "classes_"):
            self.classes_ = np.unique(
                self._real_labels(y, lengths) if classes is None else np.asarray(classes)
            )
        return super().partial_fit(
            x,
            self._encode(y, lengths=lengths),
            self._class_weights(y, lengths, sample_weight),
            validation_data,
            callbacks,
            lengths=lengths,
        )

    def predict_proba(self, x, reset: bool = True, batch_size: int | None = None, lengths=None):
        """Class probabilities: (N, n_classes) or (N, T, n_classes), columns as ``classes_``
        (a list of (T_i, n_classes) for a ragged ``x`` with per-step labels)."""
        out = super().predict(x, reset=reset, batch_size=batch_size, lengths=lengths)
        if self._binary_unit():  # one sigmoid unit: P(classes_[1]); both columns, as sklearn
            both = lambda p: np.concatenate([1.0 - p, p], axis=-1)
            return [both(p) for p in out] if isinstance(out, list) else both(out)
        return out

    def predict(self, x, reset: bool = True, batch_size: int | None = None, lengths=None):
        """Labels: (N,) per series or (N, T) per time step (a list of (T_i,) for a ragged
        ``x`` with per-step labels)."""
        proba = self.predict_proba(x, reset=reset, batch_size=batch_size, lengths=lengths)
        if isinstance(proba, list):
            return [self.classes_[np.argmax(p, axis=-1)] for p in proba]
        return self.classes_[np.argmax(proba, axis=-1)]

    # ------------------------------------------------------------------ checks, save / load
    def _binary_unit(self) -> bool:
        return self.n_outputs_shapes_[0][-1] == 1 and len(self.classes_) == 2

    def _check_outputs(self, out_shapes, ys, window, per_series=None):
        super()._check_outputs(out_shapes, ys, window, per_series)
        units, n_classes = out_shapes[0][-1], len(self.classes_)
        if units == n_classes:
            return
        if units == 1 and n_classes == 2:
            if _is_binary_loss(self.loss):
                return
            raise ValueError(
                f"the model has 1 output unit and `y` has 2 classes {self.classes_.tolist()}: a "
                f"single sigmoid unit needs loss='binary_crossentropy' (got {self.loss!r}); or "
                f"use Dense(2, activation='softmax') with the default loss"
            )
        raise ValueError(
            f"the model's output has {units} unit(s) but `y` has {n_classes} classes "
            f"{self.classes_[:10].tolist()}; use Dense({n_classes}, activation='softmax')"
            + (" or one sigmoid unit with loss='binary_crossentropy'" if n_classes == 2 else "")
        )

    def _fitted_extras(self) -> dict:
        return {"classes_": self.classes_.tolist(), "classes_dtype": self.classes_.dtype.str}

    def _load_fitted_extras(self, extras: dict) -> None:
        if "classes_" in extras:
            self.classes_ = np.array(extras["classes_"], dtype=np.dtype(extras["classes_dtype"]))

    def score(self, x, y, sample_weight=None, lengths=None) -> float:
        """Accuracy over all series (and real time steps), weighted by ``sample_weight``."""
        score_from = int(getattr(x, "keraseq_score_from", 0))  # a TimeSplit test fold
        x, y = whole(x), whole(y)
        pred = self.predict(x, lengths=lengths)
        y = _stacked_unless_ragged(x, y)
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


def _in_memory(x, y, sample_weight):
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
        import warnings

        from sklearn.exceptions import DataConversionWarning

        warnings.warn(
            "A column-vector y was passed when a 1d array was expected: labels per "
            "row of tabular `x` are (N,); y.ravel() is used",
            DataConversionWarning,
            stacklevel=3,
        )
        y = y[:, 0]
    return x, y, sample_weight


def _check_label_kind(labels) -> None:
    """Class labels, not continuous values (scikit-learn's ``check_classification_targets``:
    "Unknown label type: continuous ...")."""
    labels = np.asarray(labels)
    if labels.dtype.kind == "f" and labels.size:
        from sklearn.utils.multiclass import check_classification_targets

        check_classification_targets(labels.ravel())


def _stacked_unless_ragged(x, y):
    """Labels as given for a ragged ``x``; else one array (a list of equal rows stacks)."""
    if y is None or is_ragged(x) or not is_ragged(y):
        return y
    return np.asarray(y)


def _is_binary_loss(loss) -> bool:
    import keras

    if isinstance(loss, str):
        return loss in ("binary_crossentropy", "bce", "binary_focal_crossentropy")
    return isinstance(
        loss, (keras.losses.BinaryCrossentropy, keras.losses.BinaryFocalCrossentropy)
    ) or loss in (keras.losses.binary_crossentropy, keras.losses.binary_focal_crossentropy)


def _check_not_one_hot(x, y) -> None:
    """Labels (N, C) that are not per-step labels (N, T): most likely one-hot targets."""
    if y is None or is_ragged(x) or np.ndim(y) != 2:
        return
    from .inputs import SliceTuple

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
