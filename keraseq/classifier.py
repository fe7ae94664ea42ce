"""``Classifier``: the sequence Estimator for labels, per series or per time step.

What lives here: the class, which encodes the labels (via their sorted unique values in
``classes_``) before ``Estimator.fit``, and gives ``predict`` as labels, ``predict_proba`` and
``score`` = accuracy. What does not: the labels' checks, codes, class weights and accuracy
(``labels.py``), training itself (``trainer.py``).
"""

from __future__ import annotations

import inspect
from typing import Any, cast

import numpy as np
from sklearn.base import ClassifierMixin

from . import labels as lab
from .estimator import Estimator
from .model_selection import whole
from .readers import read_validation

__all__ = ["Classifier"]


class Classifier(ClassifierMixin, Estimator):
    """Classify sequences: labels per series ``(N,)`` or per time step ``(N, T)``.

    The parameters are :class:`Estimator`'s, with ``loss="sparse_categorical_crossentropy"``
    by default, and ``class_weight``: a dict ``{label: weight}`` or ``"balanced"``
    (scikit-learn's rule), for labels per series and per step alike (Keras's
    ``class_weight`` refuses per-step labels); it multiplies ``sample_weight``.

    The model returns class probabilities (softmax): ``(batch, n_classes)`` per series (the last
    window's output, e.g. ``LSTM(return_sequences=False)`` + ``Dense(C, "softmax")``) or
    ``(batch, time, n_classes)`` per time step; for two classes a single sigmoid unit with
    ``loss="binary_crossentropy"`` works too (``predict`` thresholds at 0.5, ``predict_proba``
    gives both columns). Labels may be of any type (strings included); they are encoded as
    indices into ``classes_`` (sorted unique labels). ``is_classifier()`` is true, so
    scikit-learn's cross-validation stratifies per-series labels.

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
        model: Any,
        loss: Any = "sparse_categorical_crossentropy",
        optimizer: Any = "adam",
        spec: Any = None,
        *,
        class_weight: Any = None,
        **params: Any,
    ):
        super().__init__(model, loss, optimizer, spec, **params)  # Estimator's keywords
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

    # Labels are required here (Estimator's ``y`` defaults to None, for pipelines).
    def fit(  # type: ignore[override]
        self,
        x,
        y,
        sample_weight=None,
        validation_data=None,
        callbacks=None,
        epochs: int | None = None,
        lengths=None,
        initial_epoch: int | None = None,
        resets=None,
    ) -> Classifier:
        """Train on ``x`` (N, T, F) and labels ``y`` (N,) or (N, T); returns ``self``.

        With ``class_weight``, each series (or step) is weighted by its class's weight,
        times ``sample_weight``."""
        if y is None:
            lab.require_labels(y)  # the message scikit-learn expects (datasets: Estimator)
        x, y = whole(x), whole(y)  # a refit on TimeSplit's folds: all of every series
        x, y, sample_weight = lab.in_memory(x, y, sample_weight)
        y = lab.stacked_unless_ragged(x, y)
        lab.check_not_one_hot(x, y)
        lab.check_label_kind(lab.real_labels(y, lengths))
        self.classes_ = np.unique(lab.real_labels(y, lengths))
        codes = lab.encode(y, self.classes_, lengths=lengths)
        sample_weight = self._class_weights(y, lengths, sample_weight)
        return super().fit(
            x,
            codes,
            sample_weight,
            self._encoded(validation_data),
            callbacks,
            epochs,
            lengths,
            initial_epoch,
            resets,
        )

    # Labels are required, and ``classes`` comes third as in scikit-learn's classifiers.
    def partial_fit(  # type: ignore[override]
        self,
        x,
        y,
        classes=None,
        sample_weight=None,
        validation_data=None,
        callbacks=None,
        lengths=None,
        resets=None,
    ) -> Classifier:
        """One epoch, continuing; pass every label in ``classes`` on the first call."""
        x, y, sample_weight = lab.in_memory(x, y, sample_weight)
        y = lab.stacked_unless_ragged(x, y)
        if not hasattr(self, "classes_"):
            self.classes_ = np.unique(
                lab.real_labels(y, lengths) if classes is None else np.asarray(classes)
            )
        codes = lab.encode(y, self.classes_, lengths=lengths)
        weights = self._class_weights(y, lengths, sample_weight)
        validation_data = self._encoded(validation_data)
        return super().partial_fit(x, codes, weights, validation_data, callbacks, lengths, resets)

    def _encoded(self, validation_data):
        """``validation_data`` (arrays, or a pipeline read into arrays) with its labels
        encoded as ``classes_``' indices, as the training labels are."""
        validation_data = read_validation(validation_data)
        if validation_data is None:
            return None
        vl = validation_data[3] if len(validation_data) > 3 else None
        vy = lab.encode(validation_data[1], self.classes_, "validation_data y", vl)
        return (validation_data[0], vy, *validation_data[2:])

    def _class_weights(self, y, lengths, sample_weight):
        return lab.class_weights(self.class_weight, self.classes_, y, lengths, sample_weight)

    def predict_proba(
        self,
        x,
        reset: bool = True,
        batch_size: int | None = None,
        lengths=None,
        resets=None,
    ):
        """Class probabilities: (N, n_classes) or (N, T, n_classes), columns as ``classes_``
        (a list of (T_i, n_classes) for a ragged ``x`` with per-step labels)."""
        out = super().predict(x, reset=reset, batch_size=batch_size, lengths=lengths, resets=resets)
        return lab.both_columns(out) if self._binary_unit() else out

    # Labels, not model outputs: no ``out`` to write them into (Estimator.predict has one).
    def predict(  # type: ignore[override]
        self,
        x,
        reset: bool = True,
        batch_size: int | None = None,
        lengths=None,
        resets=None,
    ):
        """Labels: (N,) per series or (N, T) per time step (a list of (T_i,) for a ragged
        ``x`` with per-step labels)."""
        proba = self.predict_proba(
            x, reset=reset, batch_size=batch_size, lengths=lengths, resets=resets
        )
        if isinstance(proba, list):
            return [self.classes_[np.argmax(p, axis=-1)] for p in proba]
        return self.classes_[np.argmax(proba, axis=-1)]

    def score(self, x, y, sample_weight=None, lengths=None, resets=None) -> float:
        """Accuracy over all series (and real time steps), weighted by ``sample_weight``."""
        score_from = int(getattr(x, "keraseq_score_from", 0))  # a TimeSplit test fold
        x, y = whole(x), whole(y)
        pred = self.predict(x, lengths=lengths, resets=resets)
        y = lab.stacked_unless_ragged(x, y)
        return lab.accuracy(pred, y, sample_weight, lengths, score_from)

    # --------------------------------------------------------------- checks, fitted record
    def _binary_unit(self) -> bool:
        return self.n_outputs_shapes_[0][-1] == 1 and len(self.classes_) == 2

    def _check_outputs(self, out_shapes, ys, window, per_series=None):
        super()._check_outputs(out_shapes, ys, window, per_series)
        lab.check_units(out_shapes[0][-1], self.classes_, self.loss)

    def _fitted_classes(self):
        return self.classes_


def _signature() -> inspect.Signature:
    """``Classifier.__init__``'s full signature, for scikit-learn, which reads the defaults of
    the hyper-parameters from it (``repr``, its checks): ``Estimator``'s, with this loss
    default and ``class_weight``. The code spells out only what differs."""
    base = inspect.signature(Estimator.__init__).parameters.values()
    own = inspect.signature(Classifier.__init__).parameters
    params = [own.get(p.name, p) for p in base if p.kind != p.VAR_KEYWORD]
    return inspect.Signature([*params, own["class_weight"], own["params"]])


cast(Any, Classifier.__init__).__signature__ = _signature()
