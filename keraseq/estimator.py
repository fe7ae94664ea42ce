"""The scikit-learn face: ``Estimator`` (``fit`` / ``predict`` / ``score``) for Keras sequence
models.

What lives here: the class whose ``__init__`` stores the hyper-parameters, with
``get_params``/``set_params``, tags, pickling and the public methods, each delegating down:
``fit`` -> ``sklearn_inputs`` (scikit-learn's input rules) -> ``trainer.fit``;
``predict``/``score`` -> ``inference``; ``save``/``load`` -> ``persistence``. ``fit`` writes
the fitted record (``fitted.py``) once, in :meth:`Estimator._adopt`; loading and unpickling
take one in :meth:`Estimator._restore`. What does not: resolving the hyper-parameters
(``hyperparams.py``), a fresh model and optimizer per fit (``fresh.py``), the fitted record,
its serial form and the fitted attributes read off it (``fitted.py``), the streaming states
(``streams.py``), data checks (``checks.py``), the epoch loop (``trainer.py``), the window
loops (``backend/``), MPI (``distributed.py``).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin

from . import export as export_lib
from . import fitted, fresh, hyperparams, inference, persistence, sklearn_inputs, tabular, trainer
from . import session as session_lib
from . import streams as streams_lib
from .checks import check_outputs
from .fitted import FittedAttributes, FittedRecord
from .inputs import is_pipeline
from .model_selection import whole
from .readers import read_validation
from .streams import StreamStates as StreamStates  # where pickles of earlier versions find it
from .trainer import NonFiniteLossError, Progress
from .validation import check_positive_int

__all__ = ["Estimator", "NonFiniteLossError"]


class Estimator(FittedAttributes, RegressorMixin, BaseEstimator):
    """Fit, predict and score a Keras sequence model with truncated BPTT.

    Parameters:
        model: a Keras model taking ``(batch, time, *step_shape)`` input(s), with plain
            recurrent layers, any batch size (see ``docs/guide/inputs.md``); ``fit`` trains a
            copy, ``model_``. Or a function building it, called with the ``model__<name>``
            parameters and the data facts it names (:mod:`keraseq.builders`). An input
            ``keras.Input((F,))`` takes scikit-learn's rows ``(N, F)`` (:mod:`keraseq.tabular`).
        loss: a Keras loss (a list/dict per output like ``compile``), applied to each window;
            or a callable ``loss(model, x, y)`` (see :func:`keraseq.seqloss`).
        optimizer: a Keras optimizer (copied at each ``fit``), its name or its config dict.
        spec: optional dict / dataclass / namedtuple / object whose fields (at least
            ``epochs``, ``batch_size``, ``seq_len``) fill the keywords not given.
        epochs: passes over the data (``None``: the spec's, else 1).
        batch_size: series per minibatch, per MPI rank (``None``: the spec's, else 32).
        global_batch_size: series per minibatch over all MPI ranks, split evenly between
            them (it must divide by their number; it replaces ``batch_size``): the
            minibatches, and so the updates, do not depend on the number of ranks, e.g. when
            a run resumes from a backup on another number of ranks (``docs/guide/mpi.md``).
        seq_len: window length for truncated BPTT; ``None`` = the whole sequence.
        shuffle: visit the series in a new random order each epoch.
        random_state: seed for the shuffling and Keras's random number generators.
        verbose: 0 silent, 1 progress bar, 2 one line per epoch (as ``model.fit``).
        metrics: Keras metrics computed on every window, for every output.
        loss_weights: per-output weights of the losses (multi-output models).
        predict_batch_size: series per minibatch in ``predict``/``score`` (default: from
            ``batch_size``, at most 256 series and ~64 MB of ``x``).
        rebatch: when ``batch_size`` > N, cut each series into time pieces to fill it.
        jit_compile: XLA: ``"auto"`` (Keras's rule, see ``docs/guide/windows.md``) or a bool.
        device: ``"auto"`` (a GPU when present, else the CPU), ``None`` or a device string.
        distributed: ``"auto"`` (MPI when launched with more than one rank), a bool or an
            ``mpi4py`` communicator.
        warm_start: a second ``fit`` continues from the fitted weights.
        callbacks: Keras callbacks of every ``fit`` (before those passed to ``fit``).
        sync_every: windows whose gradients make one update (1: exact truncated BPTT).
        validation_split: the last fraction of the series, held out as by ``model.fit``.
        group_by_length: build each minibatch from series of similar length.
        steps_per_epoch: minibatches per epoch of a pipeline ``x``, as ``model.fit``'s.
        windows_per_call: windows per compiled call: ``"auto"`` (about a second) or an int
            (see ``docs/guide/progress.md``).
        fused_rnn: run Keras's standard ``LSTM``/``GRU``/``SimpleRNN`` layers in keraseq's
            fused loop (the same maths, faster; ``docs/performance/fused.md``); ``False``:
            Keras's own loop. ``rnn_paths_`` says which loop each layer took.
        window_check: before training with windows (and before a windowed ``predict`` of a
            model not yet checked), run each layer on a few series whole and cut into
            windows: ``"warn"`` names a layer that mixes time steps keraseq does not carry
            (e.g. a cumulative sum), ``"raise"`` makes it a ``ValueError``, ``"off"`` skips it
            (``docs/guide/windows.md``).

    Fitted attributes: ``model_``, ``optimizer_``, ``history_``, ``n_features_in_``,
    ``n_outputs_``, ``n_epochs_``, ``rnn_paths_`` (read-only but ``model_``: read off the
    fitted record, :class:`keraseq.fitted.FittedAttributes`). Unequal lengths:
    ``docs/guide/unequal-lengths.md``; scikit-learn's input rules:
    ``docs/guide/sklearn_checks.md``.

    Example:
        >>> import keras, numpy as np
        >>> from keraseq import Estimator
        >>> model = keras.Sequential([keras.Input((None, 3)),
        ...                           keras.layers.LSTM(8, return_sequences=True),
        ...                           keras.layers.Dense(1)])
        >>> x = np.random.rand(16, 30, 3).astype("float32"); y = x.sum(-1, keepdims=True)
        >>> est = Estimator(model, "mse", "adam", epochs=2, batch_size=8, seq_len=10, verbose=0)
        >>> est.fit(x, y).predict(x).shape
        (16, 30, 1)
    """

    # Hyper-parameters are stored by ``__init__`` (``setattr``); ``set_params`` replaces this one.
    optimizer: Any

    def __init__(
        self,
        model: Any,
        loss: Any = "mse",
        optimizer: Any = "adam",
        spec: Any = None,
        *,
        epochs: int | None = None,
        batch_size: int | None = None,
        global_batch_size: int | None = None,
        seq_len: int | None = None,
        shuffle: bool = True,
        random_state: int | None = None,
        verbose: int | str = "auto",
        metrics: Sequence | None = None,
        loss_weights: Sequence[float] | None = None,
        predict_batch_size: int | None = None,
        rebatch: bool = False,
        jit_compile: bool | str = "auto",
        device: str | None = "auto",
        distributed: Any = "auto",
        warm_start: bool = False,
        group_by_length: bool = False,
        callbacks: Sequence | None = None,
        validation_split: float = 0.0,
        sync_every: int = 1,
        steps_per_epoch: int | None = None,
        windows_per_call: int | str = "auto",
        fused_rnn: bool = True,
        window_check: str = "warn",
        **model_params: Any,
    ):
        # scikit-learn's contract: store what is given, as given; ``fit`` resolves and checks.
        given = dict(locals())
        del given["self"], given["model_params"]
        for key, value in {**given, **model_params}.items():  # model__<name>: fit checks them
            setattr(self, key, value)

    # ------------------------------------------------------------------ scikit-learn plumbing
    @classmethod
    def _get_param_names(cls) -> list[str]:
        return list(hyperparams.PARAM_NAMES)

    def _extra_params(self) -> dict[str, Any]:
        """Keyword arguments beyond the signature (``model__<name>``), as stored."""
        return hyperparams.extra_params(vars(self), set(self._get_param_names()))

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Hyper-parameters as a dict (scikit-learn convention); with ``deep=True`` the
        optimizer's settings too, as ``optimizer__<key>`` (for ``GridSearchCV``)."""
        params = {name: getattr(self, name) for name in self._get_param_names()}
        params.update(self._extra_params())
        return {**params, **(hyperparams.optimizer_params(self.optimizer) if deep else {})}

    def set_params(self, **params: Any) -> Estimator:
        """Set hyper-parameters (scikit-learn convention); ``optimizer__<key>`` replaces the
        optimizer by a new one with that setting (the old one is untouched). Returns ``self``."""
        valid = set(self._get_param_names()) | set(self._extra_params())
        for key, value in params.items():
            if not key.startswith("optimizer__"):
                hyperparams.check_param_name(key, valid, type(self).__name__)
                setattr(self, key, value)
        if any(key.startswith("optimizer__") for key in params):
            self.optimizer = hyperparams.with_optimizer_params(self.optimizer, params)
        return self

    def _resolved(self) -> hyperparams.Settings:
        """The validated hyper-parameters (``spec`` and defaults filled in)."""
        values = {key: getattr(self, key) for key in hyperparams.DEFAULTS}
        return hyperparams.resolve(values, self.spec, self._extra_params(), type(self).__name__)

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        rows = tabular.takes_rows(self.model)  # None (a builder, an unbuilt model): both
        tags.input_tags.two_d_array = rows is not False  # rows (N, F): a model with input (F,)
        tags.input_tags.three_d_array = rows is not True
        tags.target_tags.multi_output = True  # tuples of outputs, or F_out > 1
        return tags

    # ----------------------------------------------------------------------------- pickling
    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: the live estimator keeps its runtime
        state.pop("_session", None)  # compiled steps, layer patches, communicator
        record = state.pop("_fitted", None)
        if record is not None:
            state["_fitted"] = record.to_dict()  # plain values, as in a saved file
        return state

    def __setstate__(self, state):
        state = dict(state)
        serial = state.pop("_fitted", None)
        legacy = fitted.pop_legacy(state)  # pickled before the fitted record
        super().__setstate__(state)
        for key, param in inspect.signature(Estimator.__init__).parameters.items():
            if key in hyperparams.DEFAULTS and key not in state:  # pickled by an older keraseq
                setattr(self, key, param.default)
        if serial is not None:
            self._restore(FittedRecord.from_dict(serial), self.model_)
        elif "model_" in state:
            seq_len = self._resolved().seq_len
            record = FittedRecord.from_legacy(legacy, seq_len, state.get("classes_"))
            self._restore(record, self.model_)

    def _restore(self, record: FittedRecord, model) -> None:
        """Take the fitted ``record`` and ``model`` of a file or a pickle, and rebuild what
        neither keeps: the optimizer link, state carry and compiled steps."""
        self._fitted, self.model_ = record, model
        self._session = session_lib.rebuild(
            record.layout, model, self.loss, self._resolved(), self.distributed
        )

    # ---------------------------------------------------------------- hooks of a subclass
    def _builder_meta(self) -> dict:
        """What a model builder may ask beyond the data's shapes (``classes_``)."""
        return {}

    def _check_outputs(self, out_shapes, ys, window, per_series=None):
        """The model's outputs against the targets (a subclass adds its own checks)."""
        check_outputs(out_shapes, ys, window, per_series)

    def _fitted_classes(self):
        """The classes a classifier's fit learned (its record keeps them); ``None`` here."""
        return None

    # ------------------------------------------------------------------------------------ fit
    def fit(
        self,
        x,
        y=None,
        sample_weight=None,
        validation_data=None,
        callbacks=None,
        epochs: int | None = None,
        lengths=None,
        initial_epoch: int | None = None,
        resets=None,
    ) -> Estimator:
        """Train on ``x`` (N, T, F) and ``y`` (N, T, F_out) or (N, F_out); returns ``self``.

        Minibatches over N; within each, windows over T in order with the recurrent state
        carried (gradients cut at the borders), reset at each minibatch. Starts from the
        initial weights of ``model`` (the fitted ones with ``warm_start=True``; epochs then
        continue the count, ``initial_epoch`` has Keras's meaning). ``lengths`` (N,): the
        real steps of each series; ``resets`` (N, T) booleans: True at step t, that series'
        recurrent states restart from their initial ones before step t (documents laid end
        to end, sessions, restarts: ``docs/guide/resets.md``); ``validation_data``:
        ``(x, y, sample_weight, lengths, resets)`` (the last two or three optional).
        ``x`` may be a pipeline of ``(x, y[, sample_weight])`` minibatches, as ``model.fit``
        takes them, with ``y=None`` (see ``docs/guide/windows.md``, ``docs/guide/inputs.md``).
        """
        warm = bool(self.warm_start) and hasattr(self, "model_")
        return self._fit(
            x,
            y,
            sample_weight,
            validation_data,
            callbacks,
            epochs,
            warm,
            lengths,
            initial_epoch,
            resets,
        )

    def partial_fit(
        self,
        x,
        y=None,
        sample_weight=None,
        validation_data=None,
        callbacks=None,
        lengths=None,
        resets=None,
    ) -> Estimator:
        """One epoch on ``(x, y)``, continuing from the fitted weights and optimizer state
        (the first call starts from ``model``); ``history_`` grows by one entry per call."""
        warm = hasattr(self, "model_")
        return self._fit(
            x, y, sample_weight, validation_data, callbacks, 1, warm, lengths, None, resets
        )

    def _fit(
        self,
        x,
        y,
        w,
        val,
        callbacks,
        epochs,
        warm: bool,
        lengths=None,
        initial_epoch=None,
        resets=None,
    ):
        p = self._resolved()
        if epochs is not None:
            p = dataclasses.replace(p, epochs=check_positive_int(epochs, "epochs"))
        val = read_validation(val)  # a pipeline: read once into arrays
        data = sklearn_inputs.fit_inputs(
            p,
            whole(x),
            whole(y),
            w,
            val,
            lengths,
            model=self.model,
            model_params=hyperparams.model_params(self._extra_params()),
            builder_meta=self._builder_meta,
            owner=type(self).__name__,
            continued=self._fitted if warm else None,
        )
        try:
            session, progress = trainer.fit(
                p,
                self.loss,
                trainer.FitRequest(
                    data.x,
                    data.y,
                    data.sample_weight,
                    data.validation_data,
                    lengths,
                    resets,
                    callbacks,
                    initial_epoch,
                ),
                trainer.Builders(
                    data.new_model,
                    lambda: fresh.new_optimizer(self.optimizer),
                    self._check_outputs,
                ),
                warm=self._session if warm else None,
                progress=self._fitted.progress() if warm else None,
                previous=getattr(self, "_session", None),
            )
        except BaseException as exc:
            failed = getattr(exc, "keraseq_session", None)
            if failed is not None:  # weights before the failure
                self._adopt(failed, data)
            raise
        self._adopt(session, data, progress)
        return self

    def _adopt(self, session: trainer.Session, data, progress: Progress | None = None) -> None:
        """Take a trained session: its model, the fitted record (the one place ``fit`` writes
        it) and empty kept streaming states. ``progress``: the fit's history, epochs and
        shuffle seed (``None``: it stopped on an exception; the previous fit's stay)."""
        self._fitted = FittedRecord.of(
            session,
            data.rows,
            data.flat_y,
            self._fitted_classes(),
            progress,
            before=self.__dict__.get("_fitted"),
        )
        self.model_, self._session, self._stream = session.model, session, StreamStates()

    # -------------------------------------------------------------------------------- predict
    def predict(
        self,
        x,
        out=None,
        reset: bool = True,
        batch_size: int | None = None,
        lengths=None,
        resets=None,
    ):
        """Predictions for ``x`` (N, T, F), window by window with the state carried.

        ``out`` (an ndarray, memmap, ``h5py.Dataset`` or a tuple of them) is filled and
        returned. ``reset=True`` starts every series from a zero state; the final states are
        kept, so ``predict(next_chunk, reset=False)`` continues the sequences (streaming).
        Unequal lengths: a list of ``(T_i, F)`` arrays, or padded ``x`` with ``lengths`` (N,).
        ``resets`` (N, T): where each series' states restart, as in :meth:`fit` (a reset at
        step 0 with ``reset=False`` restarts a continued stream). Collective under MPI
        (``docs/guide/mpi.md``)."""
        fitted.check_fitted(self, "predict")
        p = self._resolved()
        if is_pipeline(x):
            return inference.predict_dataset(self._session, p, x)
        x = self._face_x(x)
        h_all = None if reset else streams_lib.kept_states(self._stream)
        result, self._stream.states = inference.predict(
            self._session, p, x, out, h_all, batch_size, lengths, resets
        )
        return sklearn_inputs.as_fitted_y(result, out, self._fitted.flat_y)

    def _face_x(self, x):
        rows = self._fitted.rows
        return sklearn_inputs.predict_x(x, self.n_features_in_, type(self).__name__, rows)

    def score(self, x, y, sample_weight=None, lengths=None, resets=None) -> float:
        """R² over all outputs and (real) time steps, uniform average; streamed minibatch by
        minibatch, leaving the kept streaming states untouched. Collective under MPI."""
        fitted.check_fitted(self, "score")
        x = self._face_x(x)
        y = sklearn_inputs.score_y(y, self._fitted.rows)
        return inference.score(
            self._session, self._resolved(), x, y, sample_weight, lengths, resets
        )

    # ----------------------------------------------------------- states (keraseq.utils.states)
    def _get_states(self) -> list[np.ndarray]:
        return streams_lib.flat_states(getattr(self, "_stream", None))

    def _set_states(self, flat: Sequence[np.ndarray]) -> None:
        fitted.check_fitted(self, "load_states")
        self._stream = streams_lib.stream_from_flat(flat, self._fitted.layout.state_specs)

    # ------------------------------------------------------------------------------ export
    def export(self, path: str | os.PathLike, verbose: bool = False) -> None:
        """Write the model's streaming step as a TensorFlow SavedModel at ``path``, for
        serving with TensorFlow alone (``tf.saved_model.load``, TF Serving), on either backend.

        The loaded object has ``initial_states(batch_size)`` (a dict of zero states) and
        ``step(x, states)`` -> ``(y, states)`` for a window of any length of the model's
        inputs: streaming a series through it in pieces gives what ``predict(...,
        reset=False)`` gives; ``serve``, also the ``serving_default`` signature, is the
        same step with one flat dict in and out. A model with a layer that cannot stream
        (attention, pooling over time, a backward RNN) is refused with an error naming the
        layer. Only rank 0 writes under MPI. See ``docs/guide/serving.md``."""
        fitted.check_fitted(self, "export")
        if self._fitted.rows:
            raise ValueError(
                "export streams a sequence model step by step; this estimator was fitted on "
                "tabular rows (N, F) for a model without a time axis, which has nothing to stream"
            )
        export_lib.export(self._session, path, verbose)

    # ---------------------------------------------------------------------------- save / load
    def save(self, path: str | os.PathLike) -> None:
        """Save to a Keras ``.keras`` file: the model, optimizer state, hyper-parameters and the
        kept streaming states. Load with :meth:`Estimator.load`; plain
        ``keras.saving.load_model`` reads the model alone."""
        fitted.check_fitted(self, "save")
        kept = getattr(self, "_stream", None)
        states = self._get_states() if kept is not None and kept.states is not None else None
        params = dict(
            self._resolved().as_dict(), verbose=self.verbose
        )  # verbose: as given ("auto")
        saved = persistence.Saved(self.model_, self.loss, params, self._fitted, states)
        persistence.save(path, saved, type(self).__name__, self.distributed)

    @classmethod
    def load(cls, path: str | os.PathLike, loss: Any = None, custom_objects=None) -> Estimator:
        """Load an estimator saved by :meth:`save` (Keras ``safe_mode``: no arbitrary code); a
        callable loss cannot be stored: pass it again as ``loss``."""
        saved = persistence.load(path, loss, custom_objects)
        # The optimizer parameter is a spec, as a user passes it: a copy by config. The
        # model's own optimizer keeps the state (a warm fit continues from it); handing that
        # one over as the parameter made a pickle carry it twice, and Keras warned on
        # unpickling it ("Skipping variable loading for optimizer").
        optimizer = fresh.new_optimizer(saved.model.optimizer)
        est = cls(saved.model, saved.loss, optimizer, **saved.params)
        est._restore(saved.record, saved.model)
        if saved.record.classes is not None:
            est.classes_ = saved.record.classes
        est._stream = StreamStates()
        if saved.states is not None:
            est._set_states(saved.states)
        return est
