"""The hyper-parameters of ``Estimator``: their defaults, how ``spec`` fills them, their checks.

What lives here: the keywords and their effective defaults (:data:`DEFAULTS`), the names
scikit-learn's ``get_params`` sees (:data:`PARAM_NAMES`), :func:`resolve` (the stored keywords
and ``spec`` -> the validated :class:`Settings` ``p`` that training and inference read; every
error names the parameter) and the ``model__<name>`` / ``optimizer__<key>`` parameters of
``get_params``/``set_params``. What does not: storing them (``Estimator.__init__`` keeps what
it is given, as scikit-learn asks), using them (``trainer.py``, ``inference.py``).

Example:
    >>> from keraseq.hyperparams import DEFAULTS, resolve
    >>> values = dict(DEFAULTS, epochs=None, batch_size=None)
    >>> p = resolve(values, {"epochs": 3, "batch_size": 8, "seq_len": 5}, {}, "Estimator")
    >>> p.epochs, p.batch_size, p.seq_len, p.verbose
    (3, 8, 5, 1)
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass, fields
from typing import Any

import keras

from .validation import REQUIRED_SPEC_FIELDS, check_positive_int, spec_fields

__all__ = [
    "Settings",
    "DEFAULTS",
    "SPEC_WHEN_NONE",
    "PARAM_NAMES",
    "resolve",
    "extra_params",
    "model_params",
    "check_param_name",
    "optimizer_config",
    "optimizer_params",
    "with_optimizer_params",
]

#: Effective defaults of the keywords (``epochs``/``batch_size`` default to ``None`` in the
#: signature: "from ``spec``, else this").
DEFAULTS: dict[str, Any] = dict(
    epochs=1,
    batch_size=32,
    global_batch_size=None,
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
    fused_rnn=True,
    window_check="warn",
)


@dataclass(frozen=True)
class Settings:
    """The resolved hyper-parameters of one call (:func:`resolve`): each keyword of
    :data:`DEFAULTS`, checked, the ``spec`` and the defaults filled in (``verbose="auto"``
    read as 1). Frozen: a step that changes one (``epochs`` of ``partial_fit``, a rank's
    share of ``global_batch_size``) makes a new one with ``dataclasses.replace``."""

    epochs: int
    batch_size: int
    global_batch_size: int | None
    seq_len: int | None
    shuffle: bool
    random_state: int | None
    verbose: int
    metrics: Any
    loss_weights: Any
    predict_batch_size: int | None
    rebatch: bool
    jit_compile: Any  #: "auto", True or False
    device: Any  #: "auto", None or a device name
    distributed: Any  #: "auto", True, False or a communicator
    warm_start: bool
    group_by_length: bool
    callbacks: Any
    validation_split: float
    sync_every: int
    steps_per_epoch: int | None
    windows_per_call: Any  #: "auto" or a count
    fused_rnn: bool
    window_check: str

    def as_dict(self) -> dict[str, Any]:
        """The settings as the keywords of :data:`DEFAULTS` (the values themselves, not
        copies)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


#: Keywords that a ``spec`` fills only when they are ``None`` (an explicit value wins); the
#: others take the spec's field when they are left at their default.
SPEC_WHEN_NONE = ("epochs", "batch_size", "seq_len")
#: The parameters of ``Estimator``'s signature, in ``get_params`` order.
PARAM_NAMES = ("model", "loss", "optimizer", "spec") + tuple(DEFAULTS)


# ------------------------------------------------------------------------------- resolving
def resolve(values: dict[str, Any], spec: Any, extra: dict[str, Any], owner: str) -> Settings:
    """The validated hyper-parameters: ``values`` (each keyword of :data:`DEFAULTS` as stored)
    filled from ``spec`` and the defaults. ``extra``: keyword arguments beyond the signature
    (only ``model__<name>`` is allowed); ``owner``: the class name for messages."""
    fields = _spec_fields(spec)
    unknown = [k for k in extra if not k.startswith("model__")]
    if unknown:
        raise TypeError(
            f"{owner} got unexpected keyword argument(s) {unknown} "
            f"(arguments of a model-building function are passed as "
            f"model__<name>)"
        )
    p = {}
    for key, default in DEFAULTS.items():
        value = values[key]
        if key in fields and (value is None if key in SPEC_WHEN_NONE else value is default):
            value = fields[key]  # the spec fills what was not given
        p[key] = default if value is None else value
    return Settings(**_checked(p))


def _spec_fields(spec: Any) -> dict[str, Any]:
    """The fields of ``spec``: none unknown, the required ones present."""
    try:
        fields = spec_fields(spec)
    except TypeError as exc:
        raise TypeError(str(exc)) from None
    if spec is not None:
        unknown = sorted(set(fields) - set(DEFAULTS))
        if unknown:
            raise ValueError(
                f"`spec` has unknown field(s) {unknown}; known fields: {sorted(DEFAULTS)}"
            )
        missing = [f for f in REQUIRED_SPEC_FIELDS if f not in fields]
        if missing:
            raise ValueError(
                f"`spec` is missing field(s) {missing}; a spec needs at least "
                f"{list(REQUIRED_SPEC_FIELDS)}"
            )
    return fields


def _checked(p: dict) -> dict:
    """``p`` with its counts as ints and its settings checked (``verbose="auto"`` -> 1)."""
    p["epochs"] = check_positive_int(p["epochs"], "epochs")
    p["batch_size"] = check_positive_int(p["batch_size"], "batch_size")
    p["global_batch_size"] = check_positive_int(
        p["global_batch_size"], "global_batch_size", allow_none=True
    )
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
    if not isinstance(p["fused_rnn"], (bool, int)) or p["fused_rnn"] not in (True, False):
        raise ValueError(f"`fused_rnn` must be True or False, got {p['fused_rnn']!r}")
    p["fused_rnn"] = bool(p["fused_rnn"])
    if p["window_check"] not in ("warn", "raise", "off"):
        raise ValueError(
            f"`window_check` must be 'warn', 'raise' or 'off', got {p['window_check']!r}"
        )
    if p["jit_compile"] not in ("auto", True, False):
        raise ValueError(f"`jit_compile` must be 'auto', True or False, got {p['jit_compile']!r}")
    return p


# --------------------------------------------------------- model__ and optimizer__ parameters
def extra_params(attributes: Mapping[str, Any], fixed: Container[str]) -> dict[str, Any]:
    """Keyword arguments beyond the signature's (``fixed``) among an estimator's
    ``attributes``, as ``__init__``/``set_params`` stored them: public names, not fitted
    ``name_`` attributes."""
    return {
        k: v
        for k, v in sorted(attributes.items())
        if k not in fixed and not k.startswith("_") and not k.endswith("_")
    }


def model_params(extra: dict[str, Any]) -> dict[str, Any]:
    """The ``model__<name>`` parameters, as ``{name: value}`` for the model builder."""
    return {k[len("model__") :]: v for k, v in extra.items() if k.startswith("model__")}


def check_param_name(key: str, valid, owner: str) -> None:
    """``set_params``: ``key`` must be a parameter (or ``model__<name>``)."""
    if not key.startswith("model__") and key not in valid:
        raise ValueError(
            f"Invalid parameter {key!r} for {owner}; "
            f"valid parameters: {sorted(valid)}, optimizer__<key> and "
            f"model__<name>"
        )


def optimizer_config(opt: Any) -> dict[str, Any]:
    """The settings of an optimizer (instance, name or config dict) without its name; empty
    when it cannot be read."""
    try:
        opt = keras.optimizers.get(opt) if isinstance(opt, (str, dict)) else opt
        config = dict(opt.get_config())
    except Exception:
        return {}
    config.pop("name", None)
    return config


def optimizer_params(opt: Any) -> dict[str, Any]:
    """The optimizer's settings as ``get_params(deep=True)`` lists them: ``optimizer__<key>``."""
    return {f"optimizer__{key}": value for key, value in optimizer_config(opt).items()}


def with_optimizer_params(opt: Any, params: dict[str, Any]) -> keras.optimizers.Optimizer:
    """A new optimizer of ``opt``'s class with the ``optimizer__<key>`` entries of ``params``
    over its configuration; ``opt`` is untouched."""
    prefix = "optimizer__"
    settings = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
    config = optimizer_config(opt)
    unknown = sorted(set(settings) - set(config))
    if unknown:
        raise ValueError(
            f"Invalid optimizer parameter(s) {unknown}; the optimizer takes {sorted(config)}"
        )
    config.update(settings)
    cls = type(keras.optimizers.get(opt)) if isinstance(opt, (str, dict)) else type(opt)
    return cls.from_config(config)
