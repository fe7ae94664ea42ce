"""The scikit-learn face: ``Estimator`` (``fit`` / ``predict`` / ``score``) for Keras sequence models.

What lives here: the hyper-parameters (``__init__`` only stores them; ``spec`` and defaults
resolved at ``fit``), ``get_params``/``set_params`` (``optimizer__*``, ``model__*``), tags,
pickling, building a fresh model and optimizer from the parameters, saving and loading, and the
public methods, which delegate: ``fit`` -> ``trainer.fit``; ``predict``/``score`` ->
``inference``. What does not: data checks (``checks.py``), the epoch loop (``trainer.py``),
inference (``inference.py``), the window loops (``backend/``), MPI (``distributed.py``).
"""  # noqa: E501

from __future__ import annotations

import copy
import io
import json
import os
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import NotFittedError

from . import builders, inference, tabular, trainer, utils
from . import distributed as dist
from .backend import current as _backend
from .batches import is_pipeline
from .checks import check_outputs
from .losses import is_window_loss
from .model_selection import whole
from .trainer import NonFiniteLossError, Progress, Session
from .validation import (
    REQUIRED_SPEC_FIELDS,
    check_n_features,
    check_positive_int,
    check_sklearn_array,
    check_weights_not_all_zero,
    spec_fields,
)
from .windows import StateCarry

__all__ = ["Estimator", "NonFiniteLossError"]


def _unpack(arrays: tuple):
    return arrays[0] if len(arrays) == 1 else arrays


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


class Estimator(RegressorMixin, BaseEstimator):
    """Fit, predict and score a Keras sequence model with truncated BPTT.

    Parameters:
        model: a Keras model taking ``(batch, time, *step_shape)`` input(s) (features,
            integer token ids, ``ConvLSTM`` frames; see ``docs/guide/inputs.md``): plain
            recurrent layers (``LSTM``, ``GRU``, ``SimpleRNN``, ``ConvLSTM*``, stacked;
            ``Bidirectional`` with ``seq_len=None``), any batch size, no ``stateful=True`` needed (a stateful model
            works too). It is not modified: ``fit`` trains a copy, ``model_``. Or a function
            (or model class) that builds the model, called by each ``fit`` with the
            ``model__<name>`` parameters (``Estimator(build, model__units=64)``), so that
            model selection can tune the architecture; a builder whose signature names
            ``n_features_in_``, ``n_outputs_``, ``X_shape_``, ``y_shape_``, ``classes_``,
            ``n_classes_`` or ``meta`` also receives them, read from the data of that
            ``fit`` (see :mod:`keraseq.builders`), so one builder serves data of any width.
            Tabular data: a model whose input is ``keras.Input((F,))`` (no time axis) takes
            ``x`` as scikit-learn's rows ``(N, F)`` (read inside as series of one step, see
            :mod:`keraseq.tabular`), ``y`` ``(N,)`` or ``(N, F_out)``, and ``predict``
            returns the shape of ``y``; ``model_`` is then the fitted model behind a
            ``Reshape`` (``model_.layers[-1]`` is your model).
        loss: a Keras loss (name, function or ``Loss``; a list/dict per output like
            ``compile``), applied to each window; or a callable ``loss(model, x, y)`` returning
            the window's mean loss (see :func:`keraseq.seqloss`).
        optimizer: a Keras optimizer instance (copied at each ``fit``), its name, or its
            ``keras.optimizers.serialize`` dict (``{"class_name": "Adam", "config":
            {"learning_rate": 0.01}}``, which ``keras.optimizers.get`` reads).
        spec: optional dict / dataclass / namedtuple / object whose fields fill the keywords
            below (at least ``epochs``, ``batch_size``, ``seq_len``; the seed's ``batchsize``
            and ``seqsize`` are accepted), read by ``fit``. ``epochs``, ``batch_size`` and
            ``seq_len`` given (not ``None``) win over the spec; the other keywords win when
            they differ from their defaults.
        epochs: passes over the data (``None``: the spec's, else 1).
        batch_size: series per minibatch (per MPI rank when distributed; ``None``: the
            spec's, else 32).
        seq_len: window length for truncated BPTT; ``None`` = the whole sequence.
        shuffle: visit the minibatches in a new random order of series each epoch.
        random_state: seed for the shuffling and Keras's random number generators.
        verbose: 0 silent, 1 progress bar, 2 one line per epoch (as ``model.fit``).
        metrics: Keras metrics (names or objects) computed on every window, for every output.
        loss_weights: per-output weights of the losses (multi-output models).
        predict_batch_size: series per minibatch in ``predict``/``score`` (default: the
            multiple of ``batch_size`` nearest below 256 series and ~64 MB of ``x``).
        rebatch: when ``batch_size`` > N, cut each series into contiguous time pieces to fill the
            minibatch (the seed's ``rebatch``); each piece starts from a zero state.
        jit_compile: compile the window loop with XLA: ``"auto"`` (Keras's rule: on, unless a
            layer opts out, e.g. LSTM/GRU on a GPU, which then use cuDNN; on TensorFlow in one
            process on a multi-core CPU, off for windows of >= 60 M multiply-adds, where the
            graph's threads use every core), ``True`` or ``False``.
        device: ``"auto"`` (a GPU when present, else the CPU), ``None`` (TensorFlow decides) or a
            device string such as ``"/CPU:0"``.
        distributed: ``"auto"`` (MPI when launched with more than one rank), ``False``, ``True``
            or an ``mpi4py`` communicator.
        warm_start: a second ``fit`` continues from the fitted weights instead of the initial ones.
        callbacks: Keras callbacks used by every ``fit`` (before those passed to ``fit``);
            as a parameter they survive ``sklearn.clone`` inside model selection.
        sync_every: for slow networks: sum the gradients of this many consecutive windows
            and apply them in one update (one Allreduce per ``sync_every`` windows under MPI;
            gradient accumulation, the state still carried window to window). 1 (default):
            one update per window, exact truncated BPTT. Per-step targets only.
        validation_split: as ``model.fit``: the last fraction of the series (before
            shuffling) is held out and evaluated after each epoch (``val_*`` in
            ``history_``); out-of-core arrays are split lazily. To validate on the *future*
            of the same series instead, see :class:`keraseq.TimeSplit`.
        group_by_length: build each minibatch from series of similar length (shuffled within
            pools of 32 minibatches and across them, deterministic with ``random_state``), so
            that with unequal lengths the windows past a minibatch's longest series, which
            are skipped, are most of the padding.
        steps_per_epoch: minibatches per epoch when ``x`` is a pipeline (``tf.data``,
            generator, ``PyDataset``), as ``model.fit``'s: needed for an endless one (the
            iterator then runs on across epochs); ``None``: until the source runs out.
        windows_per_call: how many windows of a minibatch one compiled call trains, so that
            the progress bar, ``on_train_batch_*`` callbacks, ``stop_training`` and Ctrl-C act
            inside a long minibatch (a language model's 400 windows, a series of 200,000
            steps): ``"auto"`` (default: about one second of work per call, estimated from
            rows x window x weights; a minibatch of fewer windows stays one call) or a
            positive int. Each call is then one "step" of the bar and of the callbacks. The
            result does not depend on it (see docs/guide/progress.md).

    Unequal lengths: pass ``x`` as a list of ``(T_i, F)`` arrays (``y`` as a list of
    ``(T_i, F_out)`` arrays or per-series ``(N, F_out)``), or padded arrays with ``lengths``
    (N,), or padded arrays and a model that starts with ``keras.layers.Masking``. Padded steps
    are left out of the loss, the metrics and ``score``; the recurrent state of a series stops
    at its last real step; a per-series output is the one at that step; windows that are
    padding for every series of a minibatch are skipped. The result does not depend on
    ``seq_len``.

    Fitted attributes: ``model_``, ``optimizer_``, ``history_``, ``n_features_in_``,
    ``n_outputs_`` (the model's outputs), ``n_epochs_`` (epochs trained so far, warm fits
    included: the next epoch's number).

    scikit-learn's input rules hold, in its words: sparse and complex data are refused, so
    are 1-D ``x``, empty data and all-zero ``sample_weight``; ``predict``, ``score`` and a
    warm ``fit`` refuse an ``x`` whose feature count differs from ``n_features_in_``.
    ``docs/guide/sklearn_checks.md`` lists scikit-learn's estimator checks and their results.

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
    """  # noqa: E501

    #: Effective defaults of the keywords (``epochs``/``batch_size`` default to ``None`` in
    #: the signature: "from ``spec``, else this").
    _DEFAULTS = dict(
        epochs=1,
        batch_size=32,
        seq_len=None,
        shuffle=True,
        random_state=None,
        verbose="auto",
        metrics=None,
        loss_weights=None,
        predict_batch_size=None,
        rebatch=False,
        jit_compile="auto",
        device="auto",
        distributed="auto",
        warm_start=False,
        group_by_length=False,
        callbacks=None,
        validation_split=0.0,
        sync_every=1,
        steps_per_epoch=None,
        windows_per_call="auto",
    )
    #: Keywords that a ``spec`` fills only when they are ``None`` (an explicit value wins).
    _SPEC_WHEN_NONE = ("epochs", "batch_size", "seq_len")

    def __init__(
        self,
        model: Any,
        loss: Any = "mse",
        optimizer: Any = "adam",
        spec: Any = None,
        *,
        epochs: int | None = None,
        batch_size: int | None = None,
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
        **model_params: Any,
    ):
        # scikit-learn's contract: store what is given, as given; ``fit`` resolves and checks.
        self.model = model
        self.loss = loss
        self.optimizer = optimizer
        self.spec = spec
        self.epochs = epochs
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.shuffle = shuffle
        self.random_state = random_state
        self.verbose = verbose
        self.metrics = metrics
        self.loss_weights = loss_weights
        self.predict_batch_size = predict_batch_size
        self.rebatch = rebatch
        self.jit_compile = jit_compile
        self.device = device
        self.distributed = distributed
        self.warm_start = warm_start
        self.group_by_length = group_by_length
        self.callbacks = callbacks
        self.validation_split = validation_split
        self.sync_every = sync_every
        self.steps_per_epoch = steps_per_epoch
        self.windows_per_call = windows_per_call
        for key, value in model_params.items():  # model__<name>; anything else: fit says so
            setattr(self, key, value)

    # ------------------------------------------------------------------ scikit-learn plumbing
    @classmethod
    def _get_param_names(cls) -> list[str]:
        return ["model", "loss", "optimizer", "spec"] + list(cls._DEFAULTS)

    def _extra_params(self) -> dict[str, Any]:
        """Keyword arguments beyond the signature's, as stored by ``__init__``/``set_params``
        (public names, not fitted ``name_`` attributes)."""
        fixed = set(self._get_param_names())
        return {
            k: v
            for k, v in sorted(vars(self).items())
            if k not in fixed and not k.startswith("_") and not k.endswith("_")
        }

    def _model_params(self) -> dict[str, Any]:
        """The ``model__<name>`` parameters, as ``{name: value}`` for the model builder."""
        return {
            k[len("model__") :]: v
            for k, v in self._extra_params().items()
            if k.startswith("model__")
        }

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Hyper-parameters as a dict (scikit-learn convention).

        With ``deep=True`` the optimizer's configuration is included as
        ``optimizer__<key>`` (e.g. ``optimizer__learning_rate``), so that ``GridSearchCV``
        can search it.
        """
        params = {name: getattr(self, name) for name in self._get_param_names()}
        params.update(self._extra_params())
        if deep:
            for key, value in self._optimizer_config().items():
                params[f"optimizer__{key}"] = value
        return params

    def set_params(self, **params: Any) -> Estimator:
        """Set hyper-parameters (scikit-learn convention), ``optimizer__<key>`` included: the
        optimizer is then replaced by a new one with that setting (the old one is untouched).
        Returns ``self``."""
        valid = set(self._get_param_names()) | set(self._extra_params())
        nested = {}
        for key, value in params.items():
            if key.startswith("optimizer__"):
                nested[key[len("optimizer__") :]] = value
            elif key.startswith("model__"):
                setattr(self, key, value)  # an argument of the model-building function
            elif key not in valid:
                raise ValueError(
                    f"Invalid parameter {key!r} for {type(self).__name__}; "
                    f"valid parameters: {sorted(valid)}, optimizer__<key> and "
                    f"model__<name>"
                )
            else:
                setattr(self, key, value)
        if nested:
            config = self._optimizer_config()
            unknown = sorted(set(nested) - set(config))
            if unknown:
                raise ValueError(
                    f"Invalid optimizer parameter(s) {unknown}; the optimizer "
                    f"takes {sorted(config)}"
                )
            config.update(nested)
            self.optimizer = self._optimizer_class().from_config(config)
        return self

    def _optimizer_class(self):
        opt = self.optimizer
        return type(keras.optimizers.get(opt)) if isinstance(opt, (str, dict)) else type(opt)

    def _optimizer_config(self) -> dict[str, Any]:
        opt = self.optimizer
        try:
            opt = keras.optimizers.get(opt) if isinstance(opt, (str, dict)) else opt
            config = dict(opt.get_config())
        except Exception:
            return {}
        config.pop("name", None)
        return config

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # A built model says which data it takes: rows (N, F) for an input (F,), sequences
        # (N, T, F) otherwise; a builder (or an unbuilt model) decides at fit: both.
        rows = tabular.takes_rows(self.model)
        tags.input_tags.two_d_array = rows is not False
        tags.input_tags.three_d_array = rows is not True
        tags.target_tags.multi_output = True  # tuples of outputs, or F_out > 1
        return tags

    # ----------------------------------------------------------------------------- pickling
    #: runtime objects rebuilt after unpickling (compiled steps, layer patches, communicator)
    _RUNTIME = ("_session", "optimizer_")

    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: the live estimator keeps its runtime
        for key in self._RUNTIME:
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if "model_" in state:
            self._restore_runtime()

    def _restore_runtime(self) -> None:
        """Rebuild what is not pickled: the optimizer link, state carry and compiled steps."""
        p = self._resolved()
        p["seq_len"] = getattr(self, "_fit_seq_len", p["seq_len"])
        model = self.model_
        comm = dist.get_comm(self.distributed)
        device = trainer.device_for(p["device"], comm)
        carry = StateCarry(model)
        steps, _ = trainer.build_steps(
            model,
            model.optimizer,
            carry,
            self._state_specs,
            self._per_series,
            p,
            comm,
            [],
            self.loss,
            len(self.n_outputs_shapes_),
            device,
            _backend().jit_for(model, p["jit_compile"]),
        )
        self.optimizer_ = model.optimizer
        self._session = Session(
            model,
            model.optimizer,
            carry,
            steps,
            comm,
            device,
            self._state_specs,
            self._per_series,
            p["seq_len"],
            list(self.n_outputs_shapes_),
            int(self.n_features_in_),
            int(self.n_outputs_),
        )

    # ------------------------------------------------------------------------- hyper-parameters
    def _resolved(self) -> dict[str, Any]:
        """Validated hyper-parameters; errors name the parameter."""
        try:
            fields = spec_fields(self.spec)
        except TypeError as exc:
            raise TypeError(str(exc)) from None
        if self.spec is not None:
            unknown = sorted(set(fields) - set(self._DEFAULTS))
            if unknown:
                raise ValueError(
                    f"`spec` has unknown field(s) {unknown}; known fields: {sorted(self._DEFAULTS)}"
                )
            missing = [f for f in REQUIRED_SPEC_FIELDS if f not in fields]
            if missing:
                raise ValueError(
                    f"`spec` is missing field(s) {missing}; a spec needs at least "
                    f"{list(REQUIRED_SPEC_FIELDS)}"
                )
        unknown = [k for k in self._extra_params() if not k.startswith("model__")]
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unexpected keyword argument(s) {unknown} "
                f"(arguments of a model-building function are passed as "
                f"model__<name>)"
            )
        p = {}
        for key, default in self._DEFAULTS.items():
            value = getattr(self, key)
            if key in fields and (
                value is None if key in self._SPEC_WHEN_NONE else value is default
            ):
                value = fields[key]  # the spec fills what was not given
            p[key] = default if value is None else value
        p["epochs"] = check_positive_int(p["epochs"], "epochs")
        p["batch_size"] = check_positive_int(p["batch_size"], "batch_size")
        p["seq_len"] = check_positive_int(p["seq_len"], "seq_len", allow_none=True)
        p["sync_every"] = check_positive_int(p["sync_every"], "sync_every")
        p["steps_per_epoch"] = check_positive_int(
            p["steps_per_epoch"], "steps_per_epoch", allow_none=True
        )
        if isinstance(p["windows_per_call"], str) and p["windows_per_call"] != "auto":
            raise ValueError(
                f"`windows_per_call` must be 'auto' or a positive integer, got "
                f"{p['windows_per_call']!r}"
            )
        if p["windows_per_call"] != "auto":
            p["windows_per_call"] = check_positive_int(p["windows_per_call"], "windows_per_call")
        p["predict_batch_size"] = check_positive_int(
            p["predict_batch_size"], "predict_batch_size", allow_none=True
        )
        if p["verbose"] == "auto":
            p["verbose"] = 1
        if p["verbose"] not in (0, 1, 2):
            raise ValueError(f"`verbose` must be 0, 1, 2 or 'auto', got {p['verbose']!r}")
        if p["jit_compile"] not in ("auto", True, False):
            raise ValueError(
                f"`jit_compile` must be 'auto', True or False, got {p['jit_compile']!r}"
            )
        return p

    # ------------------------------------------------------------------------------- building
    def _builder_meta(self) -> dict:
        """What a model builder may ask beyond the data's shapes (a subclass adds to it)."""
        return {}

    def _new_model(self, meta: dict | None = None) -> keras.Model:
        if not isinstance(self.model, keras.Model):
            if callable(self.model):  # a function or class building the model
                kwargs = self._model_params()
                try:
                    model = builders.call_builder(self.model, kwargs, meta or {})
                except TypeError as exc:
                    raise TypeError(
                        f"`model` was called with {kwargs} (the model__<name> "
                        f"parameters) and failed: {exc}"
                    ) from exc
                if not isinstance(model, keras.Model):
                    raise TypeError(
                        f"`model` is a callable that returned "
                        f"{type(model).__name__}; it must return a keras.Model"
                    )
                return model
            raise TypeError(
                f"`model` must be a keras.Model or a function returning one, got "
                f"{type(self.model).__name__}"
            )
        if self._model_params():
            raise ValueError(
                f"model__ parameters {sorted(self._model_params())} need `model` "
                f"to be a function that builds the model, not a built model"
            )
        try:
            # The config comes from the user's own live model, not from a file: rebuilding a
            # Lambda's Python function from it is no deserialisation risk.
            from keras.src.saving.serialization_lib import SafeModeScope

            with SafeModeScope(False):
                model = utils._clone_model(self.model)
            model.set_weights(self.model.get_weights())
            return model
        except Exception:  # a subclassed model without a config
            pass
        if not any(
            isinstance(layer, keras.layers.Lambda) for layer in self.model._flatten_layers()
        ):
            try:  # (a deep copy goes through a saved file: Lambda functions would not survive)
                model = copy.deepcopy(self.model)
                model.set_weights(self.model.get_weights())
                return model
            except Exception:
                pass
        # Neither works (a subclassed model whose __init__ arguments Keras cannot serialise):
        # train it in place, but every fit that is not warm starts again from the weights it
        # had when keraseq first saw it.
        model = self.model
        initial = getattr(model, "_keraseq_initial_weights", None)
        if initial is None:
            initial = [np.array(w) for w in model.get_weights()]
            object.__setattr__(model, "_keraseq_initial_weights", initial)
        warnings.warn(
            f"keraseq cannot copy this {type(model).__name__} (keras.models.clone_model and "
            f"copy.deepcopy need a get_config): it is trained in place, each fit starting from "
            f"its initial weights. To keep your model untouched, give it a get_config, or pass "
            f"a function that builds it as `model`",
            UserWarning,
            stacklevel=4,
        )
        model.set_weights(initial)
        return model

    def _new_optimizer(self) -> keras.optimizers.Optimizer:
        opt = self.optimizer
        if isinstance(opt, (str, dict)):
            return keras.optimizers.get(copy.deepcopy(opt))
        if isinstance(opt, keras.optimizers.Optimizer):
            return opt.__class__.from_config(opt.get_config())
        raise TypeError(f"`optimizer` must be a keras optimizer or its name, got {opt!r}")

    def _check_outputs(self, out_shapes, ys, window, per_series=None):
        """The model's outputs against the targets (a subclass adds its own checks)."""
        check_outputs(out_shapes, ys, window, per_series)

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
    ) -> Estimator:
        """Train on ``x`` (N, T, F) and ``y`` (N, T, F_out) or (N, F_out); returns ``self``.

        Minibatches over N; within each, windows ``[0:S], [S:2S], ...`` over T in order, the
        recurrent state carried from one window to the next (gradients cut at the borders) and
        reset at each minibatch. A short last window and a small last minibatch are trained.
        Starts from the initial weights of ``model`` (from the fitted ones with
        ``warm_start=True``). ``lengths`` (N,): series ``i`` is real up to ``lengths[i]``
        time steps, padding after (see "Unequal lengths" above); ``validation_data`` may be
        ``(x, y, sample_weight, lengths)``. Epochs are numbered as in ``model.fit``: a warm
        fit continues the count (callbacks see the true epoch, ``history_`` grows);
        ``initial_epoch`` has Keras's meaning (run epochs ``initial_epoch .. epochs - 1``).
        ``x`` may also be a pipeline of ``(x, y[, sample_weight])`` minibatches as
        ``model.fit`` takes them, with ``y=None``: a ``tf.data.Dataset``, a
        ``keras.utils.PyDataset``, a Python generator or iterator, a list or other iterable
        of batches (on JAX also a torch ``DataLoader`` or a grain dataset). They are trained
        as given, read through Keras's own data adapters (the first batch the largest;
        ``PyDataset.on_epoch_end`` after each epoch; ``steps_per_epoch`` for an endless
        source; under MPI each rank passes its own shard), exactly as the same minibatches
        of arrays.
        """
        return self._fit(
            x,
            y,
            sample_weight,
            validation_data,
            callbacks,
            epochs,
            warm=bool(self.warm_start) and hasattr(self, "model_"),
            lengths=lengths,
            initial_epoch=initial_epoch,
        )

    def partial_fit(
        self, x, y=None, sample_weight=None, validation_data=None, callbacks=None, lengths=None
    ) -> Estimator:
        """One epoch on ``(x, y)``, continuing from the fitted weights and optimizer state
        (the first call starts from ``model``); ``history_`` grows by one entry per call."""
        return self._fit(
            x,
            y,
            sample_weight,
            validation_data,
            callbacks,
            1,
            warm=hasattr(self, "model_"),
            lengths=lengths,
        )

    def _fit(
        self,
        x,
        y,
        sample_weight,
        validation_data,
        callbacks,
        epochs,
        warm,
        lengths=None,
        initial_epoch=None,
    ):
        p = self._resolved()
        if epochs is not None:
            p["epochs"] = check_positive_int(epochs, "epochs")
        progress = (
            Progress(
                getattr(self, "history_", {}),
                int(getattr(self, "n_epochs_", 0)),
                getattr(self, "_shuffle_seed", None),
            )
            if warm
            else None
        )
        x, y, sample_weight, validation_data, new_model, layout = self._face_fit_data(
            p, whole(x), whole(y), sample_weight, validation_data, lengths, warm
        )
        try:
            session, progress = trainer.fit(
                p,
                self.loss,
                x,
                y,
                sample_weight,
                validation_data,
                callbacks,
                lengths,
                initial_epoch,
                new_model=new_model,
                new_optimizer=self._new_optimizer,
                check_outputs=self._check_outputs,
                warm=self._session if warm else None,
                progress=progress,
                previous=getattr(self, "_session", None),
            )
        except BaseException as exc:
            if getattr(exc, "keraseq_session", None) is not None:
                self._adopt(exc.keraseq_session, *layout)  # the weights before the failed update
            raise
        self._adopt(session, *layout)
        self.history_ = progress.history
        self.n_epochs_ = progress.n_epochs
        self._shuffle_seed = progress.shuffle_seed
        return self

    def _face_fit_data(self, p, x, y, sample_weight, validation_data, lengths, warm):
        """scikit-learn's input rules, the builder's data facts and tabular rows, applied
        before any training step. Returns ``(x, y, sample_weight, validation_data,
        new_model, (rows, flat_y))``: tabular ``x`` (N, F) comes back as series of one step
        (N, 1, F) with ``new_model`` giving the wrapped model, 1-D ``y`` as (N, 1)."""
        x = check_sklearn_array(x, "x")
        if y is not None:
            y = check_sklearn_array(y, "y")
        if sample_weight is not None:
            sample_weight = check_sklearn_array(sample_weight, "sample_weight")
            check_weights_not_all_zero(sample_weight)
        if warm:
            check_n_features(
                x,
                self.n_features_in_,
                type(self).__name__,
                rows=bool(getattr(self, "_rows", False)),
            )
        if y is None and tabular.row_widths(x) is not None:
            raise ValueError(
                "`y` is None: this estimator requires y to be passed, but the "
                "target y is None; expected targets (N,) or (N, F_out)"
            )
        x0, y0 = x, y

        def meta():  # read when a builder is called (a dataset's first batch is read then)
            return {**builders.data_meta(x0, y0), **self._builder_meta()}

        def new_model():  # the data's facts are read only for a builder that may ask
            builder = callable(self.model) and not isinstance(self.model, keras.Model)
            return self._new_model(meta() if builder else None)

        rows = bool(getattr(self, "_rows", False)) if warm else False
        widths = tabular.row_widths(x) if lengths is None else None
        if widths is not None and not warm:
            built = self._build_now(p, meta())
            takes = tabular.takes_rows(built)
            floats = all(
                np.dtype(a.dtype).kind == "f"
                for a in (x.arrays if hasattr(x, "arrays") else x if isinstance(x, tuple) else (x,))
            )
            if takes or (takes is None and floats):
                built = tabular.wrap(built, widths)
                rows = True

            def new_model():
                return built

        flat_y = False
        if rows:
            x = tabular.as_steps(x)
            flat_y = isinstance(y, np.ndarray) and y.ndim == 1
            if flat_y:
                y = y[:, None]
            if (
                validation_data is not None
                and isinstance(validation_data, (tuple, list))
                and len(validation_data) >= 2
            ):
                vx = check_sklearn_array(whole(validation_data[0]), "x")
                vy = check_sklearn_array(whole(validation_data[1]), "y")
                if tabular.row_widths(vx) is not None:
                    vx = tabular.as_steps(vx)
                if isinstance(vy, np.ndarray) and vy.ndim == 1:
                    vy = vy[:, None]
                validation_data = (vx, vy, *validation_data[2:])
        return x, y, sample_weight, validation_data, new_model, (rows, flat_y)

    def _build_now(self, p, meta) -> keras.Model:
        """The model of a new fit, built before the data checks (tabular ``x`` needs to know
        its input), seeded and placed as the training loop would."""
        comm = dist.get_comm(p["distributed"])
        if p["random_state"] is not None:
            keras.utils.set_random_seed(int(p["random_state"]))
        with _backend().device_scope(trainer.device_for(p["device"], comm)):
            return self._new_model(meta)

    def _adopt(self, session: Session, rows: bool = False, flat_y: bool = False) -> None:
        """Take a trained session's model and what ``predict``/``save`` need of it."""
        self._rows = rows
        self._flat_y = flat_y
        self._session = session
        self.model_ = session.model
        self.optimizer_ = session.optimizer
        self.n_features_in_ = session.n_features
        self.n_outputs_ = session.n_outputs
        self.n_outputs_shapes_ = session.out_shapes
        self._state_specs = session.state_specs
        self._per_series = session.per_series
        self._fit_seq_len = session.seq_len
        self._stream = StreamStates()

    # -------------------------------------------------------------------------------- predict
    def _check_fitted(self, method: str):
        if not hasattr(self, "model_"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet: call `fit` before `{method}`"
            )

    def predict(self, x, out=None, reset: bool = True, batch_size: int | None = None, lengths=None):
        """Predictions for ``x`` (N, T, F), window by window with the state carried.

        Unequal lengths: ``x`` a list of ``(T_i, F)`` arrays gives a list of ``(T_i, F_out)``
        predictions per step (an (N, F_out) array per series), or pass padded ``x`` with
        ``lengths`` (N,); a per-series prediction is the output at the series' last real
        step, and ``reset=False`` continues each series from there.

        ``out`` (an ndarray, memmap, ``h5py.Dataset`` or a tuple of them, one per output) is
        filled minibatch by minibatch and returned.

        ``reset=True`` (the default) starts every series from a zero state, so the result
        depends on ``x`` alone, as scikit-learn expects of ``predict``. The final state of
        every series is kept (in an object that ``fit`` creates, so no attribute of the
        estimator is rebound): ``predict(next_chunk, reset=False)`` continues the sequences
        from there (streaming inference), and keeps the new final states in turn. Only
        ``reset=False`` reads the kept states; ``score`` and ``fit`` ignore them, and a new
        ``fit`` forgets them. Tabular ``x`` (N, F) gives ``(N,)`` for ``y`` fitted as ``(N,)``.
        Under MPI ``predict`` is collective: each rank predicts its block of series; an
        ndarray result holds every row on every rank; a memmap ``out`` gets each rank's rows
        written by that rank; an ``h5py.Dataset`` ``out`` is written by rank 0 (the others may
        pass ``out=None``).
        """
        self._check_fitted("predict")
        p = self._resolved()
        if is_pipeline(x):
            return inference.predict_dataset(self._session, p, x)
        x = self._face_x(x)
        h_all = None
        if not reset:
            h_all = self._stream.states
            if h_all is None:
                raise ValueError(
                    "`reset=False` continues the series of the previous `predict`, "
                    "but there is none (or `fit` ran since); call predict with "
                    "reset=True first"
                )
        result, self._stream.states = inference.predict(
            self._session, p, x, out, h_all, batch_size, lengths
        )
        if (
            out is None
            and getattr(self, "_flat_y", False)
            and isinstance(result, np.ndarray)
            and result.ndim == 2
            and result.shape[1] == 1
        ):
            result = result[:, 0]  # y was fitted as (N,): predictions (N,), as scikit-learn's
        return result

    def _face_x(self, x):
        """``x`` of ``predict``/``score`` under scikit-learn's rules (its messages, the
        ``n_features_in_`` rule), tabular rows read as series of one step."""
        x = check_sklearn_array(whole(x), "x")
        check_n_features(
            x, self.n_features_in_, type(self).__name__, rows=bool(getattr(self, "_rows", False))
        )
        if getattr(self, "_rows", False) and tabular.row_widths(x) is not None:
            x = tabular.as_steps(x)
        return x

    def score(self, x, y, sample_weight=None, lengths=None) -> float:
        """Coefficient of determination R² over all outputs and time steps (uniform average).

        Each output feature is one target; the samples are the (series, time step) pairs
        (padded steps of unequal-length series left out). Streams minibatch by minibatch
        (out-of-core ``x``/``y`` are never loaded whole) and leaves the streaming states of
        ``predict`` untouched. Collective under MPI.
        """
        self._check_fitted("score")
        x = self._face_x(x)
        y = check_sklearn_array(whole(y), "y")
        if getattr(self, "_rows", False) and isinstance(y, np.ndarray) and y.ndim == 1:
            y = y[:, None]
        return inference.score(self._session, self._resolved(), x, y, sample_weight, lengths)

    # -------------------------------------------------------------------------- states (utils)
    def _get_states(self) -> list[np.ndarray]:
        """The final state of every series after the last ``predict`` (flat list, leading N)."""
        states = self._stream.states if hasattr(self, "_stream") else None
        if states is None:
            raise ValueError("no states kept: call `predict` first")
        return [np.array(s) for call in states for s in call]

    def _set_states(self, flat: Sequence[np.ndarray]) -> None:
        self._check_fitted("load_states")
        specs = [s for call in self._state_specs for s in call]
        if len(flat) != len(specs):
            raise ValueError(f"expected {len(specs)} state arrays, got {len(flat)}")
        n = int(np.shape(flat[0])[0]) if flat else 0
        out, k = [], 0
        for call in self._state_specs:
            group = []
            for shape, _ in call:
                a = np.asarray(flat[k], np.float32)
                if a.shape != (n,) + tuple(shape):
                    raise ValueError(f"state {k} has shape {a.shape}; expected {(n,) + shape}")
                group.append(a.copy())
                k += 1
            out.append(group)
        self._stream = StreamStates(out)

    # ---------------------------------------------------------------------------- save / load
    def _fitted_extras(self) -> dict:
        """Fitted attributes of a subclass to keep in a saved file (JSON-able)."""
        return {}

    def _load_fitted_extras(self, extras: dict) -> None:
        """Restore what :meth:`_fitted_extras` stored."""

    def save(self, path: str | os.PathLike) -> None:
        """Save to a Keras ``.keras`` file: the model, optimizer state, hyper-parameters and the
        kept streaming states. Load with :meth:`Estimator.load`; plain
        ``keras.saving.load_model`` reads the model alone."""
        self._check_fitted("save")
        path = os.fspath(path)
        if not path.endswith(".keras"):
            raise ValueError(f"`path` must end in '.keras', got {path!r}")
        if dist.get_comm(self.distributed).rank != 0:
            return
        resolved = self._resolved()
        params = {
            k: (getattr(self, k) if k == "verbose" else resolved[k])
            for k in self._DEFAULTS
            if k not in ("distributed", "callbacks")
        }
        params["metrics"] = [
            m if isinstance(m, str) else keras.metrics.serialize(m)
            for m in (params["metrics"] or [])
        ]
        meta = {
            "class": type(self).__name__,
            "params": params,
            "loss": _serialize_loss(self.loss),
            "n_features_in_": self.n_features_in_,
            "n_outputs_": self.n_outputs_,
            "n_outputs_shapes_": [list(s) for s in self.n_outputs_shapes_],
            "per_series": self._per_series,
            "history_": self.history_,
            "rows": bool(getattr(self, "_rows", False)),
            "flat_y": bool(getattr(self, "_flat_y", False)),
            "state_specs": [
                [
                    [list(shape), str(np.dtype(dtype.name if hasattr(dtype, "name") else dtype))]
                    for shape, dtype in call
                ]
                for call in self._state_specs
            ],
            "fitted": self._fitted_extras(),
        }
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(suffix=".keras", dir=directory)
        os.close(fd)
        try:
            self.model_.save(tmp)
            with zipfile.ZipFile(tmp, "a") as zf:
                zf.writestr("keraseq.json", json.dumps(meta, default=_json_default))
                if getattr(self, "_stream", StreamStates()).states is not None:
                    buf = io.BytesIO()
                    np.savez(buf, *self._get_states())
                    zf.writestr("keraseq_states.npz", buf.getvalue())
            os.replace(tmp, path)  # atomic: a crash never leaves a half-written file
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    @classmethod
    def load(cls, path: str | os.PathLike, loss: Any = None, custom_objects=None) -> Estimator:
        """Load an estimator saved by :meth:`save` (Keras ``safe_mode``: no arbitrary code).

        A callable loss cannot be stored: pass it again as ``loss``.
        """
        path = os.fspath(path)
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
        model = keras.saving.load_model(path, custom_objects=custom_objects, safe_mode=True)
        stored_loss = _deserialize_loss(meta["loss"])
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


def _serialize_loss(loss):
    if is_window_loss(loss):
        return None
    if isinstance(loss, (list, tuple)):
        return {"list": [_serialize_loss(item) for item in loss]}
    if isinstance(loss, dict):
        return {"dict": {k: _serialize_loss(v) for k, v in loss.items()}}
    if isinstance(loss, str):
        return {"name": loss}
    return {"keras": keras.losses.serialize(loss)}


def _deserialize_loss(meta):
    if meta is None:
        return None
    if "list" in meta:
        return [_deserialize_loss(m) for m in meta["list"]]
    if "dict" in meta:
        return {k: _deserialize_loss(m) for k, m in meta["dict"].items()}
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
