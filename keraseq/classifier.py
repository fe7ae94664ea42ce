"""``Classifier``: the sequence Estimator for labels, per series or per time step.

What lives here: label encoding (any hashable labels, via their sorted unique values in
``classes_``), ``predict`` returning labels, ``predict_proba``, and ``score`` = accuracy.
What does not: training itself (``estimator.py``).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import ClassifierMixin

from .estimator import Estimator

__all__ = ["Classifier"]


class Classifier(ClassifierMixin, Estimator):
    """Classify sequences: labels per series ``(N,)`` or per time step ``(N, T)``.

    The model returns class probabilities (softmax): ``(batch, n_classes)`` per series (the last
    window's output, e.g. ``LSTM(return_sequences=False)`` + ``Dense(C, "softmax")``) or
    ``(batch, time, n_classes)`` per time step. Labels may be of any type (strings included);
    they are encoded as indices into ``classes_`` (sorted unique labels). The default loss is
    ``"sparse_categorical_crossentropy"``. ``is_classifier()`` is true, so scikit-learn's
    cross-validation stratifies per-series labels.

    Example:
        >>> import keras, numpy as np
        >>> from keraseq import Classifier
        >>> model = keras.Sequential([keras.Input((None, 2)), keras.layers.GRU(8),
        ...                           keras.layers.Dense(2, activation="softmax")])
        >>> x = np.random.rand(20, 12, 2).astype("float32")
        >>> labels = np.where(x[:, :, 0].mean(1) > 0.5, "up", "down")
        >>> clf = Classifier(model, epochs=2, batch_size=10, seq_len=6, verbose=0).fit(x, labels)
        >>> clf.predict(x).shape, list(clf.classes_)
        ((20,), ['down', 'up'])
    """

    def __init__(self, model, loss: Any = "sparse_categorical_crossentropy",
                 optimizer: Any = "adam", spec: Any = None, *, epochs: int = 1,
                 batch_size: int = 32, seq_len: int | None = None, shuffle: bool = True,
                 random_state: int | None = None, verbose: int | str = "auto",
                 metrics=None, loss_weights=None, predict_batch_size: int | None = None,
                 rebatch: bool = False, jit_compile: bool | str = "auto",
                 device: str | None = "auto", distributed: Any = "auto",
                 warm_start: bool = False):
        # The same hyper-parameters as Estimator, spelled out: scikit-learn reads the signature.
        super().__init__(model, loss, optimizer, spec, epochs=epochs, batch_size=batch_size,
                         seq_len=seq_len, shuffle=shuffle, random_state=random_state,
                         verbose=verbose, metrics=metrics, loss_weights=loss_weights,
                         predict_batch_size=predict_batch_size, rebatch=rebatch,
                         jit_compile=jit_compile, device=device, distributed=distributed,
                         warm_start=warm_start)

    def _encode(self, y, name: str = "y") -> np.ndarray:
        if y is None:
            raise ValueError(f"`{name}` is None: this estimator requires y to be passed, but "
                             f"the target y is None; expected labels (N,) or (N, T)")
        labels = np.asarray(y)
        if labels.ndim not in (1, 2):
            raise ValueError(f"`{name}` has shape {labels.shape}; expected labels per series "
                             f"(N,) or per time step (N, T)")
        if labels.size == 0:
            raise ValueError(f"`{name}` is empty")
        unknown = np.setdiff1d(np.unique(labels), self.classes_)
        if unknown.size:
            raise ValueError(f"`{name}` has labels {unknown[:5].tolist()} not seen in fit; "
                             f"classes_ = {self.classes_.tolist()}")
        codes = np.searchsorted(self.classes_, labels).astype(np.float32)
        return codes[..., None]  # (N, 1) per series, (N, T, 1) per step

    def fit(self, x, y, sample_weight=None, validation_data=None, callbacks=None,
            epochs: int | None = None) -> "Classifier":
        """Train on ``x`` (N, T, F) and labels ``y`` (N,) or (N, T); returns ``self``."""
        if y is None:
            self._encode(y)  # raises the message scikit-learn expects
        self.classes_ = np.unique(np.asarray(y))
        codes = self._encode(y)
        if validation_data is not None:
            validation_data = (validation_data[0], self._encode(validation_data[1],
                                                                "validation_data y"),
                               *validation_data[2:])
        return super().fit(x, codes, sample_weight, validation_data, callbacks, epochs)

    def partial_fit(self, x, y, classes=None, sample_weight=None, validation_data=None,
                    callbacks=None) -> "Classifier":
        """One epoch, continuing; pass every label in ``classes`` on the first call."""
        if not hasattr(self, "classes_"):
            self.classes_ = np.unique(np.asarray(y) if classes is None else np.asarray(classes))
        return super().partial_fit(x, self._encode(y), sample_weight, validation_data,
                                   callbacks)

    def predict_proba(self, x, reset: bool = True, batch_size: int | None = None) -> np.ndarray:
        """Class probabilities: (N, n_classes) or (N, T, n_classes), columns as ``classes_``."""
        return super().predict(x, reset=reset, batch_size=batch_size)

    def predict(self, x, reset: bool = True, batch_size: int | None = None) -> np.ndarray:
        """Labels: (N,) per series or (N, T) per time step."""
        proba = self.predict_proba(x, reset=reset, batch_size=batch_size)
        return self.classes_[np.argmax(proba, axis=-1)]

    def score(self, x, y, sample_weight=None) -> float:
        """Accuracy over all series (and time steps), weighted by ``sample_weight``."""
        pred = self.predict(x)
        labels = np.asarray(y)
        if labels.shape != pred.shape:
            raise ValueError(f"`y` has shape {labels.shape}; expected {pred.shape}")
        hits = (pred == labels).astype(np.float64)
        if sample_weight is None:
            return float(hits.mean())
        w = np.asarray(sample_weight, np.float64)
        w = np.broadcast_to(w.reshape(w.shape + (1,) * (hits.ndim - w.ndim)), hits.shape)
        return float((hits * w).sum() / w.sum())
