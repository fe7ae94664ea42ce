"""What a model says about the data it takes, read from the model itself (no data needed).

What lives here: the model's symbolic inputs (:func:`input_specs`) and the rank of one series
of its input (:func:`step_rank`), how each output is laid out (:func:`output_layouts`: per
step or per series, traced as Keras shapes it), the layout of ``x`` an input takes
(:func:`x_layout`), and the layers that windows concern: those that make a mask, run backwards
in time, cannot carry their masked outputs, or see only their window
(:func:`window_bound_layers`); :class:`ModelFacts`, all of these read once per built model
(:func:`facts_of`) and carried by its session. What does not: the checks that use these
facts (``checks.py``, ``selfcheck.py``, ``export.py``), the recurrent layers and causal
convolutions the carry handles (``windows.py``), the mask rule itself (``lengths.py``).

Example:
    >>> import keras
    >>> from keraseq.model_facts import output_layouts, step_rank, window_bound_layers
    >>> import numpy as np
    >>> m = keras.Sequential([keras.Input((None, 3)), keras.layers.LSTM(4)])
    >>> step_rank(m), output_layouts(m, (np.zeros((1, 5, 3), "float32"),))
    (2, [Layout(per_step=False, shape=(4,))])
    >>> window_bound_layers(m)
    []
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import keras
import numpy as np

from .inputs import as_model_input
from .lengths import input_mask_rule
from .windows import carries_masked_output, find_causal_convs, find_rnn_layers

__all__ = [
    "ModelFacts",
    "facts_of",
    "Layout",
    "input_specs",
    "output_layouts",
    "x_layout",
    "is_int_dtype",
    "step_rank",
    "mask_layers",
    "backward_layers",
    "masked_outputs_not_carried",
    "window_bound_layers",
]


class Layout(NamedTuple):
    """How one model output is laid out, read from the model's output spec."""

    per_step: bool  #: the output has a time axis (batch, time, ...)
    shape: tuple  #: what one element holds: after (batch, time) per step, after batch else


def input_specs(model) -> list | None:
    """The model's symbolic inputs (``keras.Input``), or ``None`` when it has none (a
    subclassed model that was never built)."""
    try:
        inputs = list(getattr(model, "inputs", None) or [])
    except (AttributeError, ValueError):
        return None
    return inputs or None


def output_layouts(model, xs) -> list[Layout] | None:
    """Per output of ``model``, whether it has a time axis, decided as Keras shapes it: the
    output specs for windows of 2 and of 3 steps (``model.compute_output_spec``); an axis 1
    that follows the window length is the time axis. ``None`` when the model cannot be
    traced symbolically (then the rank of ``y`` decides, as before)."""
    specs = input_specs(model)
    if specs is not None and len(specs) != len(xs):
        return None

    def spec_at(t):
        args = []
        for k, a in enumerate(xs):
            batch = specs[k].shape[0] if specs else None
            dtype = specs[k].dtype if specs else ("float32" if a.dtype.kind == "f" else "int32")
            args.append(
                keras.KerasTensor((batch, t) + tuple(int(d) for d in a.shape[2:]), dtype=dtype)
            )
        out = model.compute_output_spec(as_model_input(model, args))
        return [tuple(o.shape) for o in keras.tree.flatten(out)]

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            two, three = spec_at(2), spec_at(3)
    except Exception:
        return None
    layouts = []
    for a, b in zip(two, three):
        per_step = len(a) >= 2 and a[1] == 2 and b[1] == 3
        layouts.append(Layout(per_step, tuple(a[2:] if per_step else a[1:])))
    return layouts


def is_int_dtype(dtype) -> bool:
    """Whether ``dtype`` (any spelling Keras takes) holds integers or booleans."""
    try:
        return np.dtype(keras.backend.standardize_dtype(dtype)).kind in "iub"
    except (TypeError, ValueError):
        return False


def x_layout(shape, dtype=None) -> str:
    """The layout of ``x`` a model input of ``shape`` (batch, time, *step) takes."""
    step = tuple(shape[2:])
    if not step:
        return "(N, T) integer token ids" if dtype is not None and is_int_dtype(dtype) else "(N, T)"
    dims = ", ".join("?" if d is None else str(d) for d in step)
    if len(step) == 1:
        return f"(N, T, F) = (N, T, {dims})"
    return f"(N, T, {dims}) (N, T, *step_shape)"


def step_rank(model) -> int | None:
    """The rank of one series ``(T_i, *step_shape)`` of a one-input model (``None`` when
    unknown or several inputs): a list of such arrays is a ragged ``x``."""
    specs = input_specs(model)
    return len(specs[0].shape) - 1 if specs is not None and len(specs) == 1 else None


def mask_layers(model) -> list:
    """The layers of ``model`` that make a mask: ``Masking``, ``mask_zero`` embeddings."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.Masking) or getattr(layer, "mask_zero", False)
    ]


def backward_layers(model) -> list:
    """The layers of ``model`` that run backwards in time (``Bidirectional``, an RNN with
    ``go_backwards=True``): no state carried from earlier steps can continue them."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.Bidirectional)
        or (isinstance(layer, keras.layers.RNN) and layer.go_backwards)
    ]


def masked_outputs_not_carried(model) -> list:
    """The recurrent layers whose masked outputs keraseq cannot carry to the next call (a
    custom cell that repeats its last output at a masked step)."""
    return [
        layer
        for layer in find_rnn_layers(model)
        if not carries_masked_output(layer) and not layer.zero_output_for_mask
    ]


#: Layers that mix time steps and that keraseq does not carry across windows.
_WINDOW_BOUND = tuple(
    getattr(keras.layers, name)
    for name in (
        "MultiHeadAttention",
        "GroupQueryAttention",
        "Attention",
        "AdditiveAttention",
        "GlobalAveragePooling1D",
        "GlobalMaxPooling1D",
        "AveragePooling1D",
        "MaxPooling1D",
        "Flatten",
    )
    if hasattr(keras.layers, name)
)


def window_bound_layers(model) -> list:
    """Layers whose output at a step depends on other steps of the window only (not carried):
    attention, pooling over time, non-causal or strided convolutions."""
    carried = find_causal_convs(model)
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, _WINDOW_BOUND) or (
            isinstance(layer, keras.layers.Conv1D)
            and layer not in carried
            and (layer.kernel_size[0] > 1 or layer.strides[0] > 1)
        ):
            found.append(layer)
    return found


@dataclass(frozen=True)
class ModelFacts:
    """What a built model says about the data it takes and the windows it runs in, read once
    (:func:`facts_of`) and carried by its session to the checks, the epoch loop and
    inference. (Whether a mask reaches the recurrent layers is not here: for a subclassed
    model it is known only once the model has run, ``lengths.mask_reaches_rnn``.)"""

    specs: list | None  #: the symbolic inputs (:func:`input_specs`)
    step_rank: int | None  #: the rank of one series of a one-input model (:func:`step_rank`)
    mask_rule: Callable | None  #: which steps are real, from the input's own mask
    masks: tuple  #: the layers that make a mask (:func:`mask_layers`)
    backward: tuple  #: the layers that run backwards in time (:func:`backward_layers`)
    window_bound: tuple  #: the layers that see only their window (:func:`window_bound_layers`)
    not_carried: tuple  #: RNNs whose masked outputs are not carried (custom cells)


_FACTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def facts_of(model) -> ModelFacts:
    """The :class:`ModelFacts` of ``model``, read on the first call once it is built and kept
    beside it (nothing is written onto the model).

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((None, 3)), keras.layers.Masking(),
        ...                       keras.layers.GRU(2, go_backwards=True, name="back")])
        >>> facts = facts_of(m)
        >>> facts.step_rank, facts.mask_rule is not None, [l.name for l in facts.backward]
        (2, True, ['back'])
        >>> facts_of(m) is facts
        True
    """
    facts = _FACTS.get(model)
    if facts is None:
        facts = ModelFacts(
            specs=input_specs(model),
            step_rank=step_rank(model),
            mask_rule=input_mask_rule(model),
            masks=tuple(mask_layers(model)),
            backward=tuple(backward_layers(model)),
            window_bound=tuple(window_bound_layers(model)),
            not_carried=tuple(masked_outputs_not_carried(model)),
        )
        if model.built:  # (a model not yet built has no inputs to read until it runs)
            _FACTS[model] = facts
    return facts
