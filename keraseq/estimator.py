"""The scikit-learn style ``Estimator``: ``fit`` / ``predict`` / ``score`` for Keras sequence models.

What lives here: the backend-independent training logic (hyper-parameters and ``spec``,
validation order, epochs and minibatches, callbacks, progress bar and ``History``, streaming
states, saving and loading). What does not: the compiled window loop and state carry
(``windows.py``), per-window losses (``losses.py``), reading the data (``batches.py``) and MPI
(``distributed.py``).
"""
from __future__ import annotations

import copy
import io
import json
import math
import os
import tempfile
import warnings
import zipfile
from typing import Any, Sequence

import keras
import numpy as np

from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import NotFittedError

from . import distributed as dist
from .batches import DatasetReader, MinibatchReader, as_dataset, dataset_batch, minibatch_plan, \
    read_rows
from .inputs import SliceTuple, split_rows
from .lengths import (check_lengths, grouped_plan, input_mask_rule, is_ragged, pad_ragged,
                      series_lengths, time_mask, unpad, windows_needed)
from .losses import build_objective, is_window_loss
from .model_selection import whole
from .validation import (REQUIRED_SPEC_FIELDS, as_arrays, check_finite, check_positive_int,
                         spec_fields)
from .backend import current as _backend
from .windows import StateCarry, carries_masked_output, find_causal_convs, find_rnn_layers

__all__ = ["Estimator", "NonFiniteLossError"]

_X_WHAT = "sequence inputs (N series, T time steps, F features); use T = 1 for non-sequence data"
_Y_WHAT = ("targets per time step (N, T, F_out) or per series (N, F_out), sharing N and T "
           "with `x`")


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or Inf loss or gradient; the weights are those before it."""


def _unpack(arrays: tuple):
    return arrays[0] if len(arrays) == 1 else arrays


class Estimator(RegressorMixin, BaseEstimator):
    """Fit, predict and score a Keras sequence model with truncated BPTT.

    Parameters:
        model: a Keras model taking ``(batch, time, features)`` input(s): plain recurrent layers
            (``LSTM``, ``GRU``, ``SimpleRNN``, stacked; ``Bidirectional`` with
            ``seq_len=None``), any batch size, no ``stateful=True`` needed (a stateful model
            works too). It is not modified: ``fit`` trains a copy, ``model_``. Or a function
            (or model class) that builds the model, called by each ``fit`` with the
            ``model__<name>`` parameters (``Estimator(build, model__units=64)``), so that
            model selection can tune the architecture.
        loss: a Keras loss (name, function or ``Loss``; a list/dict per output like
            ``compile``), applied to each window; or a callable ``loss(model, x, y)`` returning
            the window's mean loss (see :func:`keraseq.seqloss`).
        optimizer: a Keras optimizer instance (copied at each ``fit``) or its name.
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
            layer opts out, e.g. LSTM/GRU on a GPU, which then use cuDNN), ``True`` or ``False``.
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

    Unequal lengths: pass ``x`` as a list of ``(T_i, F)`` arrays (``y`` as a list of
    ``(T_i, F_out)`` arrays or per-series ``(N, F_out)``), or padded arrays with ``lengths``
    (N,), or padded arrays and a model that starts with ``keras.layers.Masking``. Padded steps
    are left out of the loss, the metrics and ``score``; the recurrent state of a series stops
    at its last real step; a per-series output is the one at that step; windows that are
    padding for every series of a minibatch are skipped. The result does not depend on
    ``seq_len``.

    Fitted attributes: ``model_``, ``optimizer_``, ``history_``, ``n_features_in_``,
    ``n_outputs_``, ``n_epochs_`` (epochs trained so far, warm fits included: the next epoch's
    number).

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

    #: Effective defaults of the keywords (``epochs``/``batch_size`` default to ``None`` in
    #: the signature: "from ``spec``, else this").
    _DEFAULTS = dict(epochs=1, batch_size=32, seq_len=None, shuffle=True, random_state=None,
                     verbose="auto", metrics=None, loss_weights=None, predict_batch_size=None,
                     rebatch=False, jit_compile="auto", device="auto", distributed="auto",
                     warm_start=False, group_by_length=False, callbacks=None,
                     validation_split=0.0, sync_every=1)
    #: Keywords that a ``spec`` fills only when they are ``None`` (an explicit value wins).
    _SPEC_WHEN_NONE = ("epochs", "batch_size", "seq_len")

    def __init__(self, model: Any, loss: Any = "mse", optimizer: Any = "adam",
                 spec: Any = None, *, epochs: int | None = None, batch_size: int | None = None,
                 seq_len: int | None = None, shuffle: bool = True, random_state: int | None = None,
                 verbose: int | str = "auto", metrics: Sequence | None = None,
                 loss_weights: Sequence[float] | None = None,
                 predict_batch_size: int | None = None, rebatch: bool = False,
                 jit_compile: bool | str = "auto", device: str | None = "auto",
                 distributed: Any = "auto", warm_start: bool = False,
                 group_by_length: bool = False, callbacks: Sequence | None = None,
                 validation_split: float = 0.0, sync_every: int = 1,
                 **model_params: Any):
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
        return {k: v for k, v in sorted(vars(self).items())
                if k not in fixed and not k.startswith("_") and not k.endswith("_")}

    def _model_params(self) -> dict[str, Any]:
        """The ``model__<name>`` parameters, as ``{name: value}`` for the model builder."""
        return {k[len("model__"):]: v for k, v in self._extra_params().items()
                if k.startswith("model__")}

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

    def set_params(self, **params: Any) -> "Estimator":
        """Set hyper-parameters (scikit-learn convention), ``optimizer__<key>`` included: the
        optimizer is then replaced by a new one with that setting (the old one is untouched).
        Returns ``self``."""
        valid = set(self._get_param_names()) | set(self._extra_params())
        nested = {}
        for key, value in params.items():
            if key.startswith("optimizer__"):
                nested[key[len("optimizer__"):]] = value
            elif key.startswith("model__"):
                setattr(self, key, value)  # an argument of the model-building function
            elif key not in valid:
                raise ValueError(f"Invalid parameter {key!r} for {type(self).__name__}; "
                                 f"valid parameters: {sorted(valid)}, optimizer__<key> and "
                                 f"model__<name>")
            else:
                setattr(self, key, value)
        if nested:
            config = self._optimizer_config()
            unknown = sorted(set(nested) - set(config))
            if unknown:
                raise ValueError(f"Invalid optimizer parameter(s) {unknown}; the optimizer "
                                 f"takes {sorted(config)}")
            config.update(nested)
            self.optimizer = self._optimizer_class().from_config(config)
        return self

    def _optimizer_class(self):
        opt = self.optimizer
        return type(keras.optimizers.get(opt)) if isinstance(opt, str) else type(opt)

    def _optimizer_config(self) -> dict[str, Any]:
        opt = self.optimizer
        try:
            opt = keras.optimizers.get(opt) if isinstance(opt, str) else opt
            config = dict(opt.get_config())
        except Exception:
            return {}
        config.pop("name", None)
        return config

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True   # x is (N, T, F)
        tags.target_tags.multi_output = True   # tuples of outputs, or F_out > 1
        return tags

    # ----------------------------------------------------------------------------- pickling
    #: runtime objects rebuilt after unpickling (TF functions, layer patches, communicator)
    _RUNTIME = ("_steps", "_carry", "_comm", "_device_name", "optimizer_")

    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: the live estimator keeps its runtime
        for key in self._RUNTIME:
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if "model_" in state:
            self._restore_runtime()

    def _windows_seq_len(self):
        """The window length the compiled steps use (fixed at ``fit``, not by a later
        ``set_params``)."""
        return getattr(self, "_fit_seq_len", self._resolved()["seq_len"])

    def _restore_runtime(self) -> None:
        """Rebuild what is not pickled: the optimizer link, state carry and compiled steps."""
        self._fit_seq_len = self._resolved()["seq_len"]
        self.optimizer_ = self.model_.optimizer
        self._comm = dist.get_comm(self.distributed)
        self._device_name = self._device(self._comm)
        self._carry = StateCarry(self.model_)
        self._steps, _ = self._build(self.model_, self.optimizer_, self._carry,
                                     self._state_specs, self._per_series, self._resolved(),
                                     self._comm, [])

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
                raise ValueError(f"`spec` has unknown field(s) {unknown}; known fields: "
                                 f"{sorted(self._DEFAULTS)}")
            missing = [f for f in REQUIRED_SPEC_FIELDS if f not in fields]
            if missing:
                raise ValueError(f"`spec` is missing field(s) {missing}; a spec needs at least "
                                 f"{list(REQUIRED_SPEC_FIELDS)}")
        unknown = [k for k in self._extra_params() if not k.startswith("model__")]
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected keyword argument(s) {unknown} "
                            f"(arguments of a model-building function are passed as "
                            f"model__<name>)")
        p = {}
        for key, default in self._DEFAULTS.items():
            value = getattr(self, key)
            if key in fields and (value is None if key in self._SPEC_WHEN_NONE
                                  else value is default):
                value = fields[key]  # the spec fills what was not given
            p[key] = default if value is None else value
        p["epochs"] = check_positive_int(p["epochs"], "epochs")
        p["batch_size"] = check_positive_int(p["batch_size"], "batch_size")
        p["seq_len"] = check_positive_int(p["seq_len"], "seq_len", allow_none=True)
        p["sync_every"] = check_positive_int(p["sync_every"], "sync_every")
        p["predict_batch_size"] = check_positive_int(p["predict_batch_size"],
                                                     "predict_batch_size", allow_none=True)
        if p["verbose"] == "auto":
            p["verbose"] = 1
        if p["verbose"] not in (0, 1, 2):
            raise ValueError(f"`verbose` must be 0, 1, 2 or 'auto', got {p['verbose']!r}")
        if p["jit_compile"] not in ("auto", True, False):
            raise ValueError(f"`jit_compile` must be 'auto', True or False, "
                             f"got {p['jit_compile']!r}")
        return p

    @staticmethod
    def _jit_for(model, setting) -> bool:
        """``jit_compile="auto"`` follows Keras's own rule (``model_supports_jit``): XLA unless a
        layer opts out (an LSTM/GRU on a GPU does, to use cuDNN) or op determinism is on."""
        return _backend().jit_for(model, setting)

    @staticmethod
    def _check_windows(model, seq_len, t, masked) -> None:
        """Refuse recurrent layers that windows would silently change.

        A backward RNN (``go_backwards=True``, the backward half of ``Bidirectional``) reads a
        window from its end, so no state carried from the previous window can continue it.
        With masks, a custom cell's masked outputs cannot be carried across windows."""
        if seq_len is None or seq_len >= t:
            return
        mask_layers = [layer for layer in model._flatten_layers(include_self=False)
                       if isinstance(layer, keras.layers.Masking)
                       or getattr(layer, "mask_zero", False)]
        if getattr(model, "_keraseq_mask_reaches_rnn", True) is False:
            mask_layers = []  # dropped before the recurrent layers (Keras ignores it too)
        if mask_layers and not masked and input_mask_rule(model) is None:
            raise ValueError(
                f"layer {mask_layers[0].name!r} masks time steps, but keraseq reads which steps "
                f"are real only from a keras.layers.Masking layer applied directly to a model "
                f"input; with windows (seq_len={seq_len} < T={t}) pass `lengths` (or a list of "
                f"(T_i, F) arrays as `x`) so that each series' last real step is known")
        masked = masked or bool(mask_layers)
        backward = [layer for layer in model._flatten_layers(include_self=False)
                    if isinstance(layer, keras.layers.Bidirectional)
                    or (isinstance(layer, keras.layers.RNN) and layer.go_backwards)]
        if backward:
            kind = ("Bidirectional" if isinstance(backward[0], keras.layers.Bidirectional)
                    else "go_backwards=True")
            raise ValueError(
                f"layer {backward[0].name!r} ({kind}) runs backwards in time: a window of "
                f"seq_len={seq_len} < T={t} would restart its backward pass from each "
                f"window's end, which is not the whole-sequence result; use seq_len=None "
                f"(or >= T) for this model")
        for layer in _window_bound_layers(model):
            warnings.warn(
                f"layer {layer.name!r} ({type(layer).__name__}) sees only its window of "
                f"seq_len={seq_len} steps, not the series before it: the result depends on "
                f"seq_len (use seq_len=None or >= T={t} for the whole-sequence result)",
                UserWarning, stacklevel=4)
        for layer in find_rnn_layers(model):
            if masked and not carries_masked_output(layer) and not layer.zero_output_for_mask:
                raise ValueError(
                    f"layer {layer.name!r} has a {type(layer.cell).__name__} cell: keraseq "
                    f"carries the output of masked (padded) steps across windows only for "
                    f"SimpleRNN/GRU/LSTM cells; use seq_len=None for unequal lengths with it")

    def _device(self, comm) -> str | None:
        if self.device == "auto":
            return _backend().default_device(comm)
        return self.device

    # ---------------------------------------------------------------------------- data checks
    @staticmethod
    def _check_x(x) -> tuple[tuple, int, int]:
        """``x`` as a tuple of (N, T, F) arrays sharing N and T; returns (xs, N, T)."""
        xs = as_arrays(x, "x", (3,), _X_WHAT)
        n, t = int(xs[0].shape[0]), int(xs[0].shape[1])
        for k, a in enumerate(xs[1:], 1):
            if int(a.shape[0]) != n or int(a.shape[1]) != t:
                raise ValueError(f"`x[{k}]` has shape {tuple(a.shape)} but `x[0]` has N={n}, "
                                 f"T={t}; all inputs must share N and T")
        return xs, n, t

    def _check_xy(self, x, y, sample_weight):
        if y is None:
            as_arrays(y, "y", (3, 2), _Y_WHAT)  # raises the message scikit-learn expects
        xs, n, t = self._check_x(x)
        ys = as_arrays(y, "y", (3, 2), _Y_WHAT)
        ranks = {a.ndim for a in ys}
        if len(ranks) > 1:
            raise ValueError("`y` mixes per-step (N, T, F) and per-series (N, F) targets; use "
                             "one kind for all outputs")
        for k, a in enumerate(ys):
            label = "y" if len(ys) == 1 else f"y[{k}]"
            if int(a.shape[0]) != n:
                raise ValueError(f"`{label}` has N={a.shape[0]} series but `x` has N={n}; "
                                 f"expected shape ({n}, {t}, F_out) or ({n}, F_out)")
            if a.ndim == 3 and int(a.shape[1]) != t:
                raise ValueError(f"`{label}` has T={a.shape[1]} time steps but `x` has T={t}; "
                                 f"expected shape ({n}, {t}, F_out)")
        ws = None
        if sample_weight is not None:
            ws = as_arrays(sample_weight, "sample_weight", (1, 2),
                           "one weight per series (N,) or per time step (N, T)")
            if len(ws) != 1:
                raise ValueError("`sample_weight` must be one array of shape (N,) or (N, T)")
            w = ws[0]
            if int(w.shape[0]) != n or (w.ndim == 2 and int(w.shape[1]) != t):
                raise ValueError(f"`sample_weight` has shape {tuple(w.shape)}; expected ({n},) "
                                 f"or ({n}, {t})")
            if w.ndim == 2 and ys[0].ndim == 2:
                raise ValueError("`sample_weight` of shape (N, T) needs per-step targets; with "
                                 "per-series targets `y` (N, F_out) pass shape (N,)")
        return xs, ys, ws

    def _check_model_inputs(self, model, xs):
        inputs = getattr(model, "inputs", None)
        if not inputs:
            return
        if len(inputs) != len(xs):
            raise ValueError(f"the model has {len(inputs)} input(s) but `x` has {len(xs)} "
                             f"array(s); pass a tuple with one (N, T, F) array per input")
        for k, (spec, a) in enumerate(zip(inputs, xs)):
            label = "x" if len(xs) == 1 else f"x[{k}]"
            shape = tuple(spec.shape)
            if len(shape) != 3:
                raise ValueError(f"the model's input {k} has shape {shape}; keraseq needs "
                                 f"(batch, time, features) inputs (reshape inside the model)")
            if shape[-1] is not None and shape[-1] != a.shape[-1]:
                raise ValueError(f"`{label}` has F={a.shape[-1]} features but the model expects "
                                 f"{shape[-1]}: shape (N, T, {shape[-1]})")

    # ------------------------------------------------------------------------------- building
    def _new_model(self) -> keras.Model:
        if not isinstance(self.model, keras.Model):
            if callable(self.model):  # a function or class building the model
                kwargs = self._model_params()
                try:
                    model = self.model(**kwargs)
                except TypeError as exc:
                    raise TypeError(f"`model` was called with {kwargs} (the model__<name> "
                                    f"parameters) and failed: {exc}") from exc
                if not isinstance(model, keras.Model):
                    raise TypeError(f"`model` is a callable that returned "
                                    f"{type(model).__name__}; it must return a keras.Model")
                return model
            raise TypeError(f"`model` must be a keras.Model or a function returning one, got "
                            f"{type(self.model).__name__}")
        if self._model_params():
            raise ValueError(f"model__ parameters {sorted(self._model_params())} need `model` "
                             f"to be a function that builds the model, not a built model")
        try:
            # The config comes from the user's own live model, not from a file: rebuilding a
            # Lambda's Python function from it is no deserialisation risk.
            from keras.src.saving.serialization_lib import SafeModeScope
            with SafeModeScope(False):
                model = keras.models.clone_model(self.model)
            model.set_weights(self.model.get_weights())
            return model
        except Exception:  # a subclassed model without a config
            pass
        if not any(isinstance(layer, keras.layers.Lambda)
                   for layer in self.model._flatten_layers()):
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
            f"a function that builds it as `model`", UserWarning, stacklevel=4)
        model.set_weights(initial)
        return model

    def _new_optimizer(self) -> keras.optimizers.Optimizer:
        opt = self.optimizer
        if isinstance(opt, str):
            return keras.optimizers.get(opt)
        if isinstance(opt, keras.optimizers.Optimizer):
            return opt.__class__.from_config(opt.get_config())
        raise TypeError(f"`optimizer` must be a keras optimizer or its name, got {opt!r}")

    def _output_names(self, model, n_outputs):
        names = list(getattr(model, "output_names", None) or [])
        if len(names) != n_outputs:
            names = [f"output_{k}" for k in range(n_outputs)]
        return names

    def _probe(self, model, carry, xs, seq_len, row=0):
        """One eager call on one series' first window: state shapes and output structure.

        ``row`` is a series of this rank's own block (under MPI a rank reads no other rows)."""
        t = int(xs[0].shape[1])
        s = t if seq_len is None else min(seq_len, t)
        window = tuple(np.asarray(read_rows(a, slice(row, row + 1)))[:, :s].astype(
            np.float32 if a.dtype.kind == "f" else np.int32) for a in xs)
        with carry:
            carry.feed(None)
            try:
                out = model(_unpack(window), training=False)
            except Exception as exc:
                raise ValueError(f"the model cannot be called on a window of `x` with shape "
                                 f"{[w.shape for w in window]}: {exc}") from exc
            states = carry.collected()
            # Keras drops a mask at a layer without mask support: then no recurrent layer
            # sees it and the padding is computed over, which keraseq must follow.
            object.__setattr__(model, "_keraseq_mask_reaches_rnn",
                               any(carry.model_masks) or not carry.model_masks)
        specs = [[(tuple(int(d) for d in st.shape[1:]), st.dtype) for st in call]
                 for call in states]
        outs = keras.tree.flatten(out)
        return specs, [tuple(o.shape[1:]) for o in outs], s

    def _check_outputs(self, out_shapes, ys, window):
        if len(out_shapes) != len(ys):
            raise ValueError(f"the model has {len(out_shapes)} output(s) but `y` has {len(ys)} "
                             f"array(s); pass one array per output")
        for k, (shape, a) in enumerate(zip(out_shapes, ys)):
            label = "y" if len(ys) == 1 else f"y[{k}]"
            if a.ndim == 3:
                if len(shape) != 2 or shape[0] != window:
                    raise ValueError(
                        f"`{label}` has targets per time step {tuple(a.shape)} but the model "
                        f"returns {('(batch,) + ' + str(shape))} for a window of {window} steps; "
                        f"use return_sequences=True on the last recurrent layer, or pass "
                        f"per-series targets (N, F_out)")
            elif len(shape) != 1:
                raise ValueError(
                    f"`{label}` has per-series targets {tuple(a.shape)} but the model returns "
                    f"{('(batch,) + ' + str(shape))} per window; per-series targets need a model "
                    f"that returns one vector per series (return_sequences=False)")
            if shape[-1] != a.shape[-1] and not (shape[-1] and a.shape[-1] == 1):
                # sparse integer labels (F_out = 1) against class scores are allowed
                raise ValueError(f"`{label}` has F_out={a.shape[-1]} but the model's output {k} "
                                 f"has {shape[-1]} features")

    def _build(self, model, opt, carry, state_specs, per_series, p, comm, metrics,
               val_metrics=None, n_outputs=None):
        """Compiled step functions for training (and, when asked, for validation)."""
        n_outputs = len(self.n_outputs_shapes_) if n_outputs is None else n_outputs
        objective = build_objective(model, self.loss, self._output_names(model, n_outputs),
                                    p["loss_weights"])
        jit = self._jit_for(model, p["jit_compile"])
        allreduce = _backend().graph_allreduce(comm, self._device(comm)) if comm.size > 1 else None
        steps = _backend().build_step_functions(model, carry, state_specs, objective, opt, metrics,
                                     p["seq_len"], per_series, jit, allreduce,
                                     sync_every=p["sync_every"])
        val_steps = None
        if val_metrics is not None:
            val_steps = _backend().build_step_functions(model, carry, state_specs, objective, None,
                                             val_metrics, p["seq_len"], per_series, jit)
        return steps, val_steps

    # ------------------------------------------------------------------------------------ fit
    def fit(self, x, y=None, sample_weight=None, validation_data=None, callbacks=None,
            epochs: int | None = None, lengths=None,
            initial_epoch: int | None = None) -> "Estimator":
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
        ``x`` may also be a ``keras.utils.PyDataset`` (or a list) of ``(x, y[,
        sample_weight])`` minibatches (B, T, F), with ``y=None``: they are trained as given
        (the first batch the largest; ``on_epoch_end`` called after each epoch; under MPI each
        rank passes its own), exactly as the same minibatches of arrays.
        """
        return self._fit(x, y, sample_weight, validation_data, callbacks, epochs,
                         warm=bool(self.warm_start) and hasattr(self, "model_"),
                         lengths=lengths, initial_epoch=initial_epoch)

    def partial_fit(self, x, y=None, sample_weight=None, validation_data=None,
                    callbacks=None, lengths=None) -> "Estimator":
        """One epoch on ``(x, y)``, continuing from the fitted weights and optimizer state
        (the first call starts from ``model``); ``history_`` grows by one entry per call."""
        return self._fit(x, y, sample_weight, validation_data, callbacks, 1,
                         warm=hasattr(self, "model_"), lengths=lengths)

    def _fit(self, x, y, sample_weight, validation_data, callbacks, epochs, warm, lengths=None,
             initial_epoch=None):
        p = self._resolved()
        x, y = whole(x), whole(y)  # a refit on TimeSplit's folds: all of every series
        dataset = as_dataset(x)
        if dataset is not None:
            # Ready minibatches (a PyDataset or a list of (x, y[, w]) batches): the first one
            # stands for the data in every check and probe below.
            if y is not None or sample_weight is not None or lengths is not None:
                raise ValueError("`x` is a dataset of (x, y[, sample_weight]) batches: pass "
                                 "y=None (the targets are in the batches)")
            if p["validation_split"] or p["group_by_length"]:
                raise ValueError("validation_split and group_by_length need arrays; a dataset "
                                 "brings its own batches (use validation_data)")
            if len(dataset) == 0:
                raise ValueError("`x` is an empty dataset")
            if is_window_loss(self.loss):
                raise ValueError("a dataset of batches needs a Keras loss (its last batch is "
                                 "padded with masked rows)")
            x, y, sample_weight = dataset_batch(dataset[0], 0)
            p["batch_size"] = int(np.shape(x[0] if isinstance(x, (tuple, list)) else x)[0])
            p["shuffle"] = False  # the dataset orders its batches (PyDataset.on_epoch_end)
        built = None
        if isinstance(x, dict) or isinstance(y, dict):  # keyed by the model's input/output names
            built = self.model_ if warm else self._new_model()
            x, y = _keyed(x, built, "x"), _keyed(y, built, "y")
        x, y, sample_weight, lengths = _unragged(x, y, sample_weight, lengths)
        split = p["validation_split"]
        if split:
            if not isinstance(split, (int, float)) or not 0.0 <= split < 1.0:
                raise ValueError(f"`validation_split` must be a fraction in [0, 1), got "
                                 f"{split!r}")
            if validation_data is not None:
                raise ValueError("pass `validation_data` or `validation_split`, not both")
            n = int(np.shape(x[0] if isinstance(x, (tuple, list)) else x)[0]) if not \
                isinstance(x, SliceTuple) else len(x)
            at = int(math.floor(n * (1.0 - split)))  # Keras's rule: the last rows
            if at < 1 or at >= n:
                raise ValueError(f"`validation_split={split}` leaves {at} of {n} series for "
                                 f"training; it needs at least one series on each side")
            (x, vx), (y, vy), (sample_weight, vw), (lengths, vl) = (
                split_rows(v, at) for v in (x, y, sample_weight, lengths))
            validation_data = (vx, vy, vw, vl)
        if epochs is not None:
            p["epochs"] = check_positive_int(epochs, "epochs")
        comm = dist.get_comm(p["distributed"])
        def validate():
            xs, ys, ws = self._check_xy(x, y, sample_weight)
            per_series = ys[0].ndim == 2
            window_loss = is_window_loss(self.loss)
            if window_loss and ws is not None:
                raise ValueError("`sample_weight` needs a Keras loss; a callable loss(model, x, y) "
                                 "returns one number per window and cannot weight series")
            if window_loss and p["metrics"]:
                raise ValueError("`metrics` need a Keras loss: with a callable loss(model, x, y) "
                                 "keraseq never sees the predictions")
            if p["rebatch"]:
                if per_series:
                    raise ValueError("`rebatch=True` needs per-step targets `y` (N, T, F_out)")
                if window_loss:
                    raise ValueError("`rebatch=True` needs a Keras loss (padding is masked out)")
            if lengths is not None:
                if p["rebatch"]:
                    raise ValueError("`rebatch=True` cannot be combined with unequal lengths "
                                     "(`lengths` or a ragged `x`)")
                checked = check_lengths(lengths, int(xs[0].shape[0]), int(xs[0].shape[1]))
            else:
                checked = None
            val = None
            if validation_data is not None:
                if not isinstance(validation_data, (tuple, list)) or \
                        len(validation_data) not in (2, 3, 4):
                    raise ValueError("`validation_data` must be a tuple (x_val, y_val), "
                                     "(x_val, y_val, sample_weight_val) or (x_val, y_val, "
                                     "sample_weight_val, lengths_val)")
                vx, vy, vw, vl = _unragged(*(tuple(validation_data) + (None, None))[:4])
                val = self._check_xy(vx, vy, vw)
                if val[1][0].ndim != ys[0].ndim:
                    raise ValueError("`validation_data` targets must be of the same kind as `y`")
                val = val + (None if vl is None else check_lengths(
                    vl, int(val[0][0].shape[0]), int(val[0][0].shape[1]),
                    "validation_data lengths"),)
            lo, hi = dist.shard(int(xs[0].shape[0]), comm)
            for name, arrays in (("x", xs), ("y", ys), ("sample_weight", ws or ())):
                check_finite(arrays, name, rows=(lo, hi))
            if val is not None:
                vlo, vhi = dist.shard(int(val[0][0].shape[0]), comm)
                for name, arrays in (("x", val[0]), ("y", val[1]), ("sample_weight", val[2] or ())):
                    check_finite(arrays, f"validation_data {name}", rows=(vlo, vhi))
            return xs, ys, ws, per_series, window_loss, val, checked

        xs, ys, ws, per_series, window_loss, val, lengths = dist.agree(comm, validate)

        if p["random_state"] is not None:
            keras.utils.set_random_seed(int(p["random_state"]))
        device = self._device(comm)
        with _backend().device_scope(device):
            model = self.model_ if warm else (built or self._new_model())
            self._check_model_inputs(model, xs)
            self._check_windows(model, p["seq_len"], int(xs[0].shape[1]),
                                lengths is not None or (val is not None and val[3] is not None))
            carry = StateCarry(model)
            own = dist.shard(int(xs[0].shape[0]), comm)[0]
            state_specs, out_shapes, window = self._probe(
                model, carry, xs, p["seq_len"], row=min(own, int(xs[0].shape[0]) - 1))
            self._check_outputs(out_shapes, ys, window)
            opt = self.optimizer_ if warm else self._new_optimizer()
            if comm.size > 1:
                opt = dist.DistributedOptimizer(opt, comm=comm)
            if not warm:
                model.compile(optimizer=opt)
                if isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer):
                    opt = model.optimizer  # mixed_float16: compile's loss scaling, as model.fit
            opt.build(model.trainable_variables)
            metrics, val_metrics = ([_metric(m, *_metric_shapes(k, ys, out_shapes))
                                     for k, m in enumerate(p["metrics"] or [])]
                                    for _ in range(2))
            if comm.size > 1:
                dist.broadcast_variables(model.variables + opt.variables, comm)

        # Building checks the loss against the outputs: before any fitted attribute is set.
        steps, val_steps = self._build(model, opt, carry, state_specs, per_series, p, comm,
                                       metrics, val_metrics if val is not None else None,
                                       n_outputs=len(out_shapes))
        self.model_ = model
        self.optimizer_ = opt
        self.n_features_in_ = int(xs[0].shape[-1])
        self.n_outputs_ = len(ys)
        self.n_outputs_shapes_ = out_shapes
        self._state_specs = state_specs
        self._per_series = per_series
        self._carry = carry
        self._device_name = device
        self._comm = comm
        self._steps = steps
        self._fit_seq_len = p["seq_len"]  # the windows of the compiled steps

        # Data for training (rebatch reshapes in memory; it is for small N).
        if p["rebatch"] and p["batch_size"] > int(xs[0].shape[0]):
            xs, ys, ws, time_mask = _rebatch(xs, ys, ws, p["batch_size"], p["seq_len"])
        else:
            time_mask = None
        n = int(xs[0].shape[0])
        lo, hi = dist.shard(n, comm)
        n_steps = dist.max_over_ranks(math.ceil((hi - lo) / p["batch_size"]), comm)
        if dataset is not None:  # under MPI each rank brings its own dataset
            lo, hi = 0, n
            n_steps = dist.max_over_ranks(len(dataset), comm)
        rule = input_mask_rule(model)
        masked = rule is not None or lengths is not None
        if p["group_by_length"]:
            row_lengths = series_lengths(xs, lengths, rule, lo, hi)

            def plan_of(shuffle, epoch_rng):
                return grouped_plan(lo, hi, p["batch_size"], n_steps, row_lengths, shuffle,
                                    epoch_rng)
        else:
            def plan_of(shuffle, epoch_rng):
                return minibatch_plan(lo, hi, p["batch_size"], n_steps, shuffle, epoch_rng)

        # Epochs are numbered as in model.fit: a warm fit (warm_start, partial_fit) continues
        # the count, so schedulers, loggers and BackupAndRestore see the true epoch; an
        # explicit initial_epoch has Keras's meaning (run epochs initial_epoch .. epochs - 1).
        if initial_epoch is not None:
            first = check_positive_int(initial_epoch + 1, "initial_epoch") - 1
            last = p["epochs"]
        else:
            first = int(getattr(self, "n_epochs_", 0)) if warm else 0
            last = first + p["epochs"]
        if not warm or not hasattr(self, "_shuffle_seed"):
            # One seed per estimator (rank 0's under MPI); epoch e shuffles with (seed, e),
            # so a resumed or continued run shuffles exactly like an uninterrupted one.
            seed = p["random_state"] if p["random_state"] is not None else \
                int(np.random.default_rng().integers(2**31))
            self._shuffle_seed = dist.broadcast_object(int(seed), comm)
        cb = _callback_list(list(p["callbacks"] or []) + list(callbacks or []), model, p,
                            n_steps, comm, epochs=last)
        history = self.history_ if (warm and hasattr(self, "history_")) else {}
        model.stop_training = False
        model._initial_epoch = None
        cb.on_train_begin()
        # A BackupAndRestore callback (rank 0 only under MPI) may have restored the weights,
        # the optimizer state and the epoch to start from: every rank takes rank 0's.
        start = dist.broadcast_object(int(model._initial_epoch or first), comm)
        model._initial_epoch = None
        if comm.size > 1:
            dist.broadcast_variables(model.variables + opt.variables, comm)
        epoch = start - 1
        logs = {}
        for epoch in range(start, last):
            epoch_rng = np.random.default_rng([self._shuffle_seed, epoch]) \
                if p["shuffle"] else None
            cb.on_epoch_begin(epoch)
            if p["random_state"] is not None:
                _reseed(model, int(p["random_state"]), epoch)
            for m in metrics:
                m.reset_state()
            if dataset is not None:
                reader = DatasetReader(dataset, list(range(n_steps)), p["batch_size"],
                                       [_x_dtype(xs), np.float32, np.float32])
            else:
                reader = MinibatchReader(
                    [xs, ys, ws, (time_mask,) if time_mask is not None else None,
                     (lengths,) if lengths is not None else None], plan_of(p["shuffle"], epoch_rng),
                    p["batch_size"], [_x_dtype(xs), np.float32, np.float32, np.float32, np.int64],
                    pad=not steps.exact_rows, fallback_row=lo if hi > lo else 0)
            total = np.zeros(2)
            for step, (batch, rows_mask, n_real) in enumerate(reader):
                cb.on_train_batch_begin(step)
                bx, by, bw, bt, bl = batch
                tensors = _batch_tensors(bx, by, bw, rows_mask, per_series, bt, bl, rule,
                                         masked, p["seq_len"], comm)
                with carry, _backend().device_scope(device):
                    result = steps.train(*tensors, None)
                loss_sum, count, bad = _backend().to_numpy(result).tolist()
                bad = int(bad)
                if bad >= 0:
                    raise NonFiniteLossError(
                        f"non-finite loss or gradient at epoch {epoch + 1}, minibatch "
                        f"{step + 1}, window {bad + 1}"
                        f"{'' if comm.size == 1 else ' (on some rank)'}; the weights are those "
                        f"from before that update. Lower the learning rate, clip gradients "
                        f"(optimizer clipnorm=...) or check the data")
                # Logged like model.fit: the mean of the minibatch losses weighted by their
                # number of series (a minibatch's loss: the mean over its unmasked elements).
                loss_sum, count, rows = dist.allreduce_sum(
                    np.array([loss_sum, count, n_real]), comm)
                total += [loss_sum / count * rows if count else 0.0, rows]
                logs = {"loss": total[0] / max(total[1], 1.0)}
                logs.update(dist.metric_results(metrics, comm))
                cb.on_train_batch_end(step, logs)
                if comm.size > 1:  # a callback that stops one rank stops all (no hang)
                    model.stop_training = bool(dist.max_over_ranks(int(model.stop_training),
                                                                   comm))
                if model.stop_training:
                    break
            if val is not None:
                logs.update({f"val_{k}": v for k, v in self._evaluate(
                    val_steps, val, val_metrics, p, comm).items()})
            cb.on_epoch_end(epoch, logs)
            if dataset is not None and hasattr(dataset, "on_epoch_end"):
                dataset.on_epoch_end()  # as model.fit: a PyDataset may reshuffle here
            if comm.size > 1:
                model.stop_training = bool(dist.max_over_ranks(int(model.stop_training), comm))
            if model.stop_training:
                break
        # As model.fit: exponential moving averages (use_ema) become the weights.
        opt.finalize_variable_values(model.trainable_variables)
        cb.on_train_end(logs)
        # Keras's own History (it also holds what callbacks add, e.g. learning_rate).
        for key, values in model.history.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        self.history_ = history
        self.n_epochs_ = epoch + 1
        self._final_states = None
        return self

    def _evaluate(self, steps, data, metrics, p, comm) -> dict[str, float]:
        xs, ys, ws, lengths = data
        rule = input_mask_rule(self.model_)
        for m in metrics:
            m.reset_state()
        batch = self._predict_batch_size(p, xs, None)
        lo, hi = dist.shard(int(xs[0].shape[0]), comm)
        n_steps = dist.max_over_ranks(math.ceil((hi - lo) / batch), comm)
        reader = MinibatchReader([xs, ys, ws, (lengths,) if lengths is not None else None],
                                 minibatch_plan(lo, hi, batch, n_steps, False, None),
                                 batch, [_x_dtype(xs), np.float32, np.float32, np.int64],
                                 fallback_row=lo if hi > lo else 0)
        masked = rule is not None or lengths is not None
        total = np.zeros(2)
        for (bx, by, bw, bl), rows_mask, _ in reader:
            # No collective inside evaluate's window loop: ranks need not agree on windows.
            tensors = _batch_tensors(bx, by, bw, rows_mask, self._per_series, None, bl, rule,
                                     masked, p["seq_len"], None)
            with self._carry, _backend().device_scope(self._device_name):
                loss_sum, count = steps.evaluate(*tensors, None)
            total += np.array([float(loss_sum), float(count)])
        total = dist.allreduce_sum(total, comm)
        out = {"loss": total[0] / max(total[1], 1.0)}
        out.update(dist.metric_results(metrics, comm))
        return out

    # -------------------------------------------------------------------------------- predict
    def _check_fitted(self, method: str):
        if not hasattr(self, "model_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call `fit` "
                                 f"before `{method}`")

    def _output_shapes(self, n, t):
        shapes = []
        for shape in self.n_outputs_shapes_:
            shapes.append((n, t) + tuple(shape[1:]) if len(shape) == 2 else (n,) + tuple(shape))
        return shapes

    def _check_predict_x(self, x):
        xs, n, t = self._check_x(x)
        self._check_model_inputs(self.model_, xs)
        if xs[0].shape[-1] != self.n_features_in_:
            raise ValueError(f"`x` has F={xs[0].shape[-1]} features but the estimator was "
                             f"fitted with {self.n_features_in_}: shape (N, T, "
                             f"{self.n_features_in_})")
        return xs, n, t

    def _predict_batch_size(self, p, xs, batch_size):
        """The given size, else ``predict_batch_size``, else the multiple of the training
        ``batch_size`` nearest below 256 series and below ~64 MB of ``x`` (out-of-core data;
        at least ``batch_size``). A multiple of the training batch: with 33 series of
        (1000, 500) per minibatch against 32, XLA:CPU's predict took 590 MB more memory."""
        given = check_positive_int(batch_size, "batch_size", allow_none=True)
        if given or p["predict_batch_size"]:
            return given or p["predict_batch_size"]
        row_bytes = sum(int(np.prod(a.shape[1:])) * 4 for a in xs)
        rows = min(256, (64 * 2**20) // max(1, row_bytes))
        return p["batch_size"] * max(1, rows // p["batch_size"])

    def _predict_blocks(self, xs, lo, hi, batch, h_all, lengths=None):
        """Predict rows ``[lo, hi)`` minibatch by minibatch (collective under MPI).

        Yields ``(first_row, n_real, predictions, final_states, time_mask)`` as numpy arrays
        of the real rows (``time_mask`` (n_real, T) or ``None`` when every step is real);
        ``h_all`` gives initial states per series (``None``: zeros).
        """
        comm = self._comm
        batch = min(batch, max(1, hi - lo))
        n_steps = dist.max_over_ranks(math.ceil((hi - lo) / batch), comm)
        plan = minibatch_plan(lo, hi, batch, n_steps, False, None)
        rule = input_mask_rule(self.model_)
        reader = MinibatchReader([xs, (lengths,) if lengths is not None else None], plan, batch,
                                 [_x_dtype(xs), np.int64], fallback_row=lo if hi > lo else 0)
        for index, ((bx, bl), _, n_real) in zip(plan, reader):
            h0 = None
            if h_all is not None:
                rows = index if n_real else np.array([0])
                h0 = [[_backend().to_tensor(_pad_rows(np.asarray(s)[rows], batch))
                       for s in call] for call in h_all]
            tm = None
            if rule is not None or lengths is not None:
                tm = time_mask(bx, None if bl is None else bl[0], rule)
            with self._carry, _backend().device_scope(self._device_name):
                preds, states = self._steps.predict(
                    tuple(_backend().to_tensor(a) for a in bx),
                    None if tm is None else _backend().to_tensor(tm), h0)
            if n_real:
                yield (int(index[0]), n_real, [_backend().to_numpy(pr)[:n_real] for pr in preds],
                       [[_backend().to_numpy(st)[:n_real] for st in call] for call in states],
                       None if tm is None else tm[:n_real])

    def predict(self, x, out=None, reset: bool = True, batch_size: int | None = None,
                lengths=None):
        """Predictions for ``x`` (N, T, F), window by window with the state carried.

        Unequal lengths: ``x`` a list of ``(T_i, F)`` arrays gives a list of ``(T_i, F_out)``
        predictions per step (an (N, F_out) array per series), or pass padded ``x`` with
        ``lengths`` (N,); a per-series prediction is the output at the series' last real
        step, and ``reset=False`` continues each series from there.

        ``out`` (an ndarray, memmap, ``h5py.Dataset`` or a tuple of them, one per output) is
        filled minibatch by minibatch and returned. The final state of every series is kept:
        ``predict(next_chunk, reset=False)`` continues the sequences (streaming inference).
        Under MPI ``predict`` is collective: each rank predicts its block of series; an
        ndarray result holds every row on every rank; a memmap ``out`` gets each rank's rows
        written by that rank; an ``h5py.Dataset`` ``out`` is written by rank 0 (the others may
        pass ``out=None``).
        """
        self._check_fitted("predict")
        p = self._resolved()
        if _predict_batches(x) is not None:
            return self._predict_dataset(_predict_batches(x))
        x = whole(x)
        x = _keyed(x, self.model_, "x")
        ragged = is_ragged(x)
        x, _, _, lengths = _unragged(x, None, None, lengths)
        if ragged and out is not None:
            raise ValueError("`out` needs a padded `x` (N, T, F) with `lengths`; a ragged `x` "
                             "returns a list")
        xs, n, t = self._check_predict_x(x)
        if lengths is not None:
            lengths = check_lengths(lengths, n, t)
        self._check_windows(self.model_, self._windows_seq_len(), t, lengths is not None)
        comm = self._comm
        lo, hi = dist.shard(n, comm)
        dist.agree(comm, lambda: check_finite(xs, "x", rows=(lo, hi)))
        shapes = self._output_shapes(n, t)
        outs = None
        if out is not None:
            outs = out if isinstance(out, (tuple, list)) else (out,)
            if len(outs) != len(shapes):
                raise ValueError(f"`out` has {len(outs)} array(s) but the model has "
                                 f"{len(shapes)} output(s)")
            for k, (o, shape) in enumerate(zip(outs, shapes)):
                label = "out" if len(outs) == 1 else f"out[{k}]"
                if not hasattr(o, "shape") or tuple(o.shape) != shape:
                    raise ValueError(f"`{label}` has shape {getattr(o, 'shape', None)}; "
                                     f"expected {shape}")
                if np.dtype(o.dtype).kind != "f":
                    raise TypeError(f"`{label}` has dtype {o.dtype}; expected a float dtype")
                if isinstance(o, np.ndarray) and not o.flags.writeable:
                    raise ValueError(f"`{label}` is read-only")
        h_all = None
        if not reset:
            h_all = getattr(self, "_final_states", None)
            if h_all is None:
                raise ValueError("`reset=False` continues the series of the previous `predict`, "
                                 "but there is none (or `fit` ran since); call predict with "
                                 "reset=True first")
            if h_all and h_all[0] and int(h_all[0][0].shape[0]) != n:
                raise ValueError(f"`reset=False` continues {h_all[0][0].shape[0]} series but `x` "
                                 f"has N={n}")
        batch = self._predict_batch_size(p, xs, batch_size)
        # Rows this rank writes directly (its own block); the rest is gathered below.
        direct = [o is not None and comm.size == 1 or isinstance(o, np.memmap)
                  for o in (outs or [None] * len(shapes))]
        local = [None if d else np.empty((hi - lo,) + sh[1:], np.float32)
                 for d, sh in zip(direct, shapes)]
        new_states = [[np.zeros((hi - lo,) + shape, np.float32) for shape, _ in spec]
                      for spec in self._state_specs]
        for first, n_real, preds, states, _ in self._predict_blocks(xs, lo, hi, batch, h_all,
                                                                     lengths):
            rows = slice(first - lo, first - lo + n_real)
            for k, values in enumerate(preds):
                if direct[k]:
                    outs[k][first:first + n_real] = values
                else:
                    local[k][rows] = values
            for c, call in enumerate(states):
                for s_, st in enumerate(call):
                    new_states[c][s_][rows] = st
        results = []
        for k, (d, sh) in enumerate(zip(direct, shapes)):
            if d:
                if isinstance(outs[k], np.memmap):
                    outs[k].flush()
                results.append(outs[k])
                continue
            full = dist.allgather_rows([local[k]], comm)[0] if comm.size > 1 else local[k]
            if outs is not None and outs[k] is not None and (comm.rank == 0 or
                                                             isinstance(outs[k], np.ndarray)):
                outs[k][...] = full  # an h5py.Dataset is written by rank 0 only
                results.append(outs[k])
            else:
                results.append(full)
        if comm.size > 1:
            new_states = [[dist.allgather_rows([s_], comm)[0] for s_ in call]
                          for call in new_states]
            comm.Barrier()  # every rank's rows are in the shared files before anyone reads
        self._final_states = new_states
        if ragged:
            results = [unpad(r, lengths) if len(sh) >= 3 else r
                       for r, sh in zip(results, shapes)]
        return out if out is not None else _unpack(tuple(results))

    def _predict_dataset(self, batches):
        """Predictions for a dataset of batches, concatenated over its batches."""
        if self._comm.size > 1:
            raise ValueError("predict on a dataset of batches runs in one process; under MPI "
                             "pass arrays (each rank predicts its block of rows)")
        parts = []
        for k in range(len(batches)):
            item = batches[k]
            # Keras's rule (unpack_x_y_sample_weight): a tuple of 1-3 is (x[, y[, w]]).
            bx = item[0] if isinstance(item, (tuple, list)) and len(item) in (1, 2, 3) else item
            pred = self.predict(bx)
            parts.append(pred if isinstance(pred, tuple) else (pred,))
        out = tuple(np.concatenate([p[k] for p in parts]) for k in range(len(parts[0])))
        return _unpack(out)

    def score(self, x, y, sample_weight=None, lengths=None) -> float:
        """Coefficient of determination R² over all outputs and time steps (uniform average).

        Each output feature is one target; the samples are the (series, time step) pairs
        (padded steps of unequal-length series left out). Streams minibatch by minibatch
        (out-of-core ``x``/``y`` are never loaded whole) and leaves the streaming states of
        ``predict`` untouched. Collective under MPI.
        """
        self._check_fitted("score")
        score_from = int(getattr(x, "keraseq_score_from", 0))  # a TimeSplit test fold
        x, y = _keyed(whole(x), self.model_, "x"), _keyed(whole(y), self.model_, "y")
        x, y, sample_weight, lengths = _unragged(x, y, sample_weight, lengths)
        xs, ys, ws = self._check_xy(x, y, sample_weight)
        _, n_, t_ = self._check_predict_x(_unpack(xs))
        if lengths is not None:
            lengths = check_lengths(lengths, n_, t_)
        self._check_windows(self.model_, self._windows_seq_len(), t_, lengths is not None)
        comm = self._comm
        n = int(xs[0].shape[0])
        lo, hi = dist.shard(n, comm)
        batch = self._predict_batch_size(self._resolved(), xs, None)
        # Per output feature, in float64: sum w, sum w*(y - c), sum w*(y - c)^2 and
        # sum w*(y - yhat)^2, with the shift c = the first block's mean (this rank's), so the
        # variance keeps its precision for series far from zero (prices, CO2 levels, ...).
        sums = [np.zeros((4, int(a.shape[-1]))) for a in ys]
        shifts = [None] * len(ys)
        for first, n_real, preds, _, tm in self._predict_blocks(xs, lo, hi, batch, None,
                                                                lengths):
            rows = slice(first, first + n_real)
            w = None if ws is None else np.asarray(ws[0][rows], np.float64)
            for k, (a, yp) in enumerate(zip(ys, preds)):
                yt = np.asarray(a[rows], np.float64)
                f = yt.shape[-1]
                wk = np.ones(yt.shape[:-1]) if w is None else (
                    np.broadcast_to(w[:, None], yt.shape[:-1]) if w.ndim < yt.ndim - 1 else w)
                if tm is not None and yt.ndim == 3:
                    wk = wk * tm  # padded steps are no samples
                if score_from and yt.ndim == 3:
                    wk = np.array(wk, np.float64)
                    wk[:, :score_from] = 0.0  # the history a TimeSplit fold runs through
                wk = wk.reshape(-1, 1)
                yt, yp = yt.reshape(-1, f), np.asarray(yp, np.float64).reshape(-1, f)
                if shifts[k] is None:
                    shifts[k] = yt.mean(0)
                yc = yt - shifts[k]
                sums[k] += np.stack([np.broadcast_to(wk, yt.shape).sum(0), (wk * yc).sum(0),
                                     (wk * yc ** 2).sum(0), (wk * (yt - yp) ** 2).sum(0)])
        # Merge per-rank (count, mean, M2) exactly (Chan et al.), in rank order.
        local = [(sm, np.zeros(sm.shape[1]) if c is None else c) for sm, c in zip(sums, shifts)]
        gathered = comm.allgather(local) if comm.size > 1 else [local]
        scores = []
        for k in range(len(ys)):
            count = mean = m2 = ss_res = 0.0
            for rank_stats in gathered:
                (sw, swy, swy2, res), c = rank_stats[k]
                if not np.any(sw):
                    continue
                mean_r = c + swy / np.maximum(sw, 1e-300)
                m2_r = np.maximum(swy2 - swy ** 2 / np.maximum(sw, 1e-300), 0.0)
                total = count + sw
                delta = mean_r - mean
                mean = mean + delta * sw / np.maximum(total, 1e-300)
                m2 = m2 + m2_r + delta ** 2 * count * sw / np.maximum(total, 1e-300)
                count, ss_res = total, ss_res + res
            ss_tot = m2
            with np.errstate(divide="ignore", invalid="ignore"):
                r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1),
                              np.where(ss_res == 0, 1.0, 0.0))
            scores.extend(np.atleast_1d(r2).tolist())
        return float(np.mean(scores))

    # -------------------------------------------------------------------------- states (utils)
    def _get_states(self) -> list[np.ndarray]:
        """The final state of every series after the last ``predict`` (flat list, leading N)."""
        states = getattr(self, "_final_states", None)
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
        self._final_states = out

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
        params = {k: (getattr(self, k) if k == "verbose" else resolved[k])
                  for k in self._DEFAULTS if k not in ("distributed", "callbacks")}
        params["metrics"] = [m if isinstance(m, str) else keras.metrics.serialize(m)
                             for m in (params["metrics"] or [])]
        meta = {"class": type(self).__name__, "params": params,
                "loss": _serialize_loss(self.loss),
                "n_features_in_": self.n_features_in_, "n_outputs_": self.n_outputs_,
                "n_outputs_shapes_": [list(s) for s in self.n_outputs_shapes_],
                "per_series": self._per_series, "history_": self.history_,
                "state_specs": [[[list(shape), str(np.dtype(dtype.name if hasattr(dtype, "name")
                                                         else dtype))]
                                 for shape, dtype in call] for call in self._state_specs],
                "fitted": self._fitted_extras()}
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(suffix=".keras", dir=directory)
        os.close(fd)
        try:
            self.model_.save(tmp)
            with zipfile.ZipFile(tmp, "a") as zf:
                zf.writestr("keraseq.json", json.dumps(meta, default=_json_default))
                if getattr(self, "_final_states", None) is not None:
                    buf = io.BytesIO()
                    np.savez(buf, *self._get_states())
                    zf.writestr("keraseq_states.npz", buf.getvalue())
            os.replace(tmp, path)  # atomic: a crash never leaves a half-written file
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    @classmethod
    def load(cls, path: str | os.PathLike, loss: Any = None, custom_objects=None) -> "Estimator":
        """Load an estimator saved by :meth:`save` (Keras ``safe_mode``: no arbitrary code).

        A callable loss cannot be stored: pass it again as ``loss``.
        """
        path = os.fspath(path)
        with zipfile.ZipFile(path) as zf:
            if "keraseq.json" not in zf.namelist():
                raise ValueError(f"{path!r} is a Keras file without keraseq metadata; load the "
                                 f"model with keras.saving.load_model and wrap it")
            meta = json.loads(zf.read("keraseq.json"))
            states = None
            if "keraseq_states.npz" in zf.namelist():
                with np.load(io.BytesIO(zf.read("keraseq_states.npz"))) as npz:
                    states = [npz[f"arr_{k}"] for k in range(len(npz.files))]
        model = keras.saving.load_model(path, custom_objects=custom_objects, safe_mode=True)
        stored_loss = _deserialize_loss(meta["loss"])
        if stored_loss is None and loss is None:
            raise ValueError("this estimator was saved with a callable loss; pass it again: "
                             "Estimator.load(path, loss=...)")
        params = meta["params"]
        params["metrics"] = [m if isinstance(m, str) else keras.metrics.deserialize(m)
                             for m in params["metrics"]] or None
        est = cls(model, loss if loss is not None else stored_loss, model.optimizer, **params)
        est.model_ = model
        est.n_features_in_ = meta["n_features_in_"]
        est.n_outputs_ = meta["n_outputs_"]
        est.n_outputs_shapes_ = [tuple(s) for s in meta["n_outputs_shapes_"]]
        est.history_ = meta["history_"]
        est._per_series = meta["per_series"]
        est._state_specs = [[(tuple(shape), _backend().dtype_of(dtype)) for shape, dtype in call]
                            for call in meta["state_specs"]]
        est._restore_runtime()  # optimizer link, communicator, state carry, compiled steps
        est._final_states = None
        est._load_fitted_extras(meta.get("fitted", {}))
        if states is not None:
            est._set_states(states)
        return est


#: Layers that mix time steps and that keraseq does not carry across windows.
_WINDOW_BOUND = tuple(getattr(keras.layers, name) for name in (
    "MultiHeadAttention", "GroupQueryAttention", "Attention", "AdditiveAttention",
    "GlobalAveragePooling1D", "GlobalMaxPooling1D", "AveragePooling1D", "MaxPooling1D",
    "Flatten") if hasattr(keras.layers, name))


def _window_bound_layers(model) -> list:
    """Layers whose output at a step depends on other steps of the window only (not carried):
    attention, pooling over time, non-causal or strided convolutions."""
    carried = find_causal_convs(model)
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, _WINDOW_BOUND):
            found.append(layer)
        elif isinstance(layer, keras.layers.Conv1D) and layer not in carried \
                and (layer.kernel_size[0] > 1 or layer.strides[0] > 1):
            found.append(layer)
    return found


def _predict_batches(x):
    """``x`` when ``predict`` should read it batch by batch (a ``keras.utils.PyDataset``)."""
    return x if isinstance(x, keras.utils.PyDataset) else None


def _keyed(value, model, name):
    """A dict keyed by the model's input (``x``) or output (``y``) names as a tuple in the
    model's order; anything else unchanged."""
    if not isinstance(value, dict):
        return value
    if name == "x":
        names = [getattr(t, "name", None) for t in (getattr(model, "inputs", None) or [])]
    else:
        names = list(getattr(model, "output_names", None) or [])
    if not names or None in names:
        raise TypeError(f"`{name}` is a dict but the model's {'inputs' if name == 'x' else 'outputs'}"
                        f" have no names; pass a tuple in the model's order")
    missing = [k for k in names if k not in value]
    unknown = [k for k in value if k not in names]
    if missing or unknown:
        raise ValueError(f"`{name}` is a dict with keys {sorted(value)}; the model's "
                         f"{'inputs' if name == 'x' else 'outputs'} are {names}"
                         + (f" (missing {missing})" if missing else "")
                         + (f" (unknown {unknown})" if unknown else ""))
    return tuple(value[k] for k in names)


def _unragged(x, y, sample_weight, lengths):
    """Ragged inputs (lists of per-series arrays) padded at the end; the lengths they give.

    Returns ``(x, y, sample_weight, lengths)``; arrays pass through untouched."""
    if is_ragged(x):
        if lengths is not None:
            raise ValueError("`lengths` is given by the ragged `x` (a list of (T_i, F) "
                             "arrays); pass padded `x` with `lengths`, or the list alone")
        x, lengths = pad_ragged(x, "x", np.float32 if all(
            np.asarray(s).dtype.kind == "f" for s in x) else None)
        if x.ndim != 3:
            raise ValueError(f"`x` is a list of series of shape (T_i,); expected (T_i, F) "
                             f"arrays (use a[:, None] for one feature)")
    for name, value in (("y", y), ("sample_weight", sample_weight)):
        if value is None or not is_ragged(value):
            continue
        if lengths is None and len({len(v) for v in value}) == 1:
            continue  # a list of equal rows: an ordinary array
        if lengths is None:
            raise ValueError(f"`{name}` is a list of per-step series but `x` is not; pass a "
                             f"list of (T_i, F) arrays as `x` too (or padded arrays and "
                             f"`lengths`)")
        padded, got = pad_ragged(value, name, np.float32 if name == "sample_weight" else None)
        wrong = np.flatnonzero(got != np.asarray(lengths)[:len(got)]) if len(got) == len(
            lengths) else [min(len(got), len(lengths)) - 1]
        if len(got) != len(lengths) or len(wrong):
            k = int(wrong[0])
            raise ValueError(f"`{name}[{k}]` has {got[k] if k < len(got) else 'no'} time steps "
                             f"but `x[{k}]` has {lengths[k] if k < len(lengths) else 'none'}; "
                             f"per-step series must match `x` in length")
        if padded.shape[1] < int(np.max(lengths)):
            padded = np.pad(padded, [(0, 0), (0, int(np.max(lengths)) - padded.shape[1])]
                            + [(0, 0)] * (padded.ndim - 2))
        if name == "y":
            y = padded
        else:
            sample_weight = padded
    return x, y, sample_weight, lengths


def _reseed(model, random_state: int, epoch: int) -> None:
    """Set every random-number generator of the model (Dropout, recurrent dropout, noise
    layers) from ``(random_state, epoch)`` alone, so that an epoch draws the same masks
    whether the run was resumed (``BackupAndRestore`` saves no generator state) or not."""
    for k, layer in enumerate(model._flatten_layers(include_self=True, recursive=True)):
        for j, generator in enumerate(getattr(layer, "_seed_generators", [])):
            seed = (random_state * 1_000_003 + epoch * 7_919 + k * 31 + j) % (2**31 - 1)
            generator.state.assign(np.array([seed, 0]).astype(generator.state.dtype))


def _metric(spec, y_true_shape=None, y_pred_shape=None) -> keras.metrics.Metric:
    """A fresh Keras ``Metric`` from a name, a function or a ``Metric`` (copied).

    ``"accuracy"``/``"acc"`` resolve as ``compile`` resolves them for the output's shapes
    (binary, sparse categorical or categorical accuracy)."""
    if isinstance(spec, keras.metrics.Metric):
        return spec.__class__.from_config(spec.get_config())
    if isinstance(spec, str) and spec.lower() in ("accuracy", "acc") and y_pred_shape:
        from types import SimpleNamespace

        from keras.src.trainers.compile_utils import get_metric
        return get_metric(spec, SimpleNamespace(shape=tuple(y_true_shape)),
                          SimpleNamespace(shape=tuple(y_pred_shape)))
    fn = keras.metrics.get(spec)
    if isinstance(fn, keras.metrics.Metric):
        config = fn.get_config()
        if isinstance(spec, str):
            config["name"] = spec  # logged under the name the user wrote, as in model.fit
        return fn.__class__.from_config(config)
    name = spec if isinstance(spec, str) else getattr(fn, "__name__", "metric")
    return keras.metrics.MeanMetricWrapper(fn, name=name)


def _metric_shapes(k, ys, out_shapes):
    """(y_true shape, y_pred shape) of the output metric ``k`` is computed on (as in
    ``windows.update_metrics``: metric k on output k modulo the number of outputs)."""
    out = k % len(out_shapes)
    return tuple(ys[out].shape), (None,) + tuple(out_shapes[out])


def _x_dtype(xs):
    return np.float32 if all(a.dtype.kind == "f" for a in xs) else None


def _batch_tensors(bx, by, bw, rows_mask, per_series, rebatch_mask, bl, rule, masked, seq_len,
                   agree_comm):
    """A read minibatch as the step functions take it: ``(x, y, weights or None, mask,
    time mask or None, windows to run or None)``.

    With unequal lengths (``masked``) the time mask marks each row's real steps and the
    window count stops at the minibatch's longest series; ``agree_comm`` (under MPI, when the
    window loop holds an Allreduce per window) makes every rank run the same count."""
    t = bx[0].shape[1]
    weights = None if bw is None else (_backend().to_tensor(_weights(bw[0], per_series, t)),)
    mask = _mask(rows_mask, t, per_series, rebatch_mask)
    tm = n_win = None
    if masked:
        tm = time_mask(bx, None if bl is None else bl[0], rule)
        if tm is None:
            tm = np.ones((len(rows_mask), t), np.float32)
        tm = tm * rows_mask[:, None]
        if not per_series:
            mask = mask * tm
        n_win = windows_needed(tm, seq_len)
        if agree_comm is not None and agree_comm.size > 1 and not per_series:
            n_win = dist.max_over_ranks(n_win, agree_comm)
        tm, n_win = _backend().to_tensor(tm), _backend().to_tensor(np.int32(n_win))
    return (tuple(_backend().to_tensor(a) for a in bx), tuple(_backend().to_tensor(a) for a in by),
            weights, (_backend().to_tensor(mask),), tm, n_win)


def _weights(w, per_series, t):
    """Sample weights as the window loop wants them: (B,) per series, (B, T) per step."""
    w = np.asarray(w, np.float32)
    if not per_series and w.ndim == 1:
        w = np.repeat(w[:, None], t, axis=1)
    return w


def _mask(rows_mask, t, per_series, time_mask):
    if per_series:
        return rows_mask
    mask = np.repeat(rows_mask[:, None], t, axis=1)
    if time_mask is not None:
        mask = mask * time_mask[0]
    return mask


def _pad_rows(a, size):
    a = np.asarray(a)
    if a.shape[0] < size:
        a = np.concatenate([a, np.zeros((size - a.shape[0],) + a.shape[1:], a.dtype)])
    return a


def _rebatch(xs, ys, ws, batch_size, seq_len):
    """Cut each series into contiguous time pieces so that N * pieces fills ``batch_size``."""
    n, t = int(xs[0].shape[0]), int(xs[0].shape[1])
    s = seq_len or t
    k = max(1, min(batch_size // n, math.ceil(t / s)))
    length = math.ceil(math.ceil(t / k) / s) * s
    k = math.ceil(t / length)

    def cut(a):
        a = np.asarray(a)
        pad = k * length - t
        if pad:
            a = np.concatenate([a, np.zeros((a.shape[0], pad) + a.shape[2:], a.dtype)], axis=1)
        return a.reshape((a.shape[0], k, length) + a.shape[2:]).reshape(
            (a.shape[0] * k, length) + a.shape[2:])

    time_mask = cut(np.ones((n, t), np.float32))
    if ws is not None:
        w = np.asarray(ws[0], np.float32)
        w = np.repeat(w[:, None], t, axis=1) if w.ndim == 1 else w
        ws = (cut(w),)
    return tuple(cut(a) for a in xs), tuple(cut(a) for a in ys), ws, time_mask


def _callback_list(callbacks, model, p, n_steps, comm, epochs=None):
    callbacks = list(callbacks or [])
    if comm.rank != 0:
        callbacks = [c for c in callbacks if not isinstance(c, dist.ROOT_ONLY_CALLBACKS)]
    verbose = p["verbose"] if comm.rank == 0 else 0
    return keras.callbacks.CallbackList(callbacks, add_history=True, add_progbar=verbose != 0,
                                        model=model, verbose=verbose,
                                        epochs=p["epochs"] if epochs is None else epochs,
                                        steps=n_steps)


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
