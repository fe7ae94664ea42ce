"""Small model utilities in the spirit of FluxUtils.jl, for Keras 3 models (TensorFlow or JAX).

What lives here: flattening the trainable weights into one vector and back (:func:`net2vec`,
:func:`vec2net`), the flattened gradient of a loss (:func:`net2grad`), readable unique names
for the parameters (:func:`named_params`), copies of the recurrent states of stateful RNN layers
(:func:`states`, :func:`load_states`), the kernels for weight regularisation (:func:`weights`),
an inference-only copy of a model (:func:`notrack`) and a differentiable batched matrix
product (:func:`bmm`).

What does not live here: training (``trainer.py``), the truncated-BPTT state carry of
non-stateful models (``windows.py``), data helpers (``data.py``) and layers (``layers.py``).
All functions work on plain Keras models; :func:`states` and :func:`load_states` also accept a
fitted keraseq ``Estimator``.
"""

from __future__ import annotations

import inspect
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops, tree

__all__ = [
    "bmm",
    "load_states",
    "named_params",
    "net2grad",
    "net2vec",
    "notrack",
    "states",
    "vec2net",
    "weights",
]


# ----------------------------------------------------------------------------- weight vectors
def net2vec(model: keras.Model) -> np.ndarray:
    """All trainable weights of ``model`` as one 1-D ``float32`` vector.

    The order is that of ``model.trainable_weights``, each variable flattened in C order;
    :func:`vec2net` is the inverse and :func:`net2grad` uses the same order.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> net2vec(m).shape   # 3*2 kernel + 2 bias
        (8,)
    """
    parts = [
        np.asarray(keras.ops.convert_to_numpy(w), dtype=np.float32).ravel()
        for w in model.trainable_weights
    ]
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(parts)


def vec2net(model: keras.Model, v: Any) -> keras.Model:
    """Write the 1-D vector ``v`` into the trainable weights of ``model``, in place.

    ``v`` is laid out as :func:`net2vec` returns it. Raises ``ValueError`` when ``v`` is not 1-D
    or its length is not the number of trainable scalars. Returns ``model``.

    Example:
        >>> import keras, numpy as np
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> _ = vec2net(m, np.zeros(8))
        >>> float(abs(net2vec(m)).sum())
        0.0
    """
    arr = np.asarray(v)
    ws = model.trainable_weights
    expected = int(sum(int(np.prod(w.shape)) for w in ws))
    if arr.ndim != 1:
        raise ValueError(
            f"vec2net: `v` must be a 1-D vector of length {expected}, "
            f"received an array of shape {arr.shape} (ndim={arr.ndim})."
        )
    if arr.shape[0] != expected:
        raise ValueError(
            f"vec2net: `v` has length {arr.shape[0]}, expected length {expected} "
            f"(the number of trainable scalars of the model)."
        )
    offset = 0
    for w in ws:
        size = int(np.prod(w.shape))
        w.assign(arr[offset : offset + size].reshape(tuple(w.shape)).astype(w.dtype))
        offset += size
    return model


# ----------------------------------------------------------------------------------- gradient
def _required_positional(fn: Callable) -> int | None:
    """The number of positional parameters without default of ``fn`` (None: unknown)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(
        1
        for p in sig.parameters.values()
        if p.kind in kinds and p.default is inspect.Parameter.empty
    )


def _is_model_loss(loss: Any) -> bool:
    """True for a callable ``loss(model, x, y) -> scalar`` (three required positional params)."""
    if isinstance(loss, (str, keras.losses.Loss)) or not callable(loss):
        return False
    return _required_positional(loss) == 3


def _mean_keras_loss(loss: Any) -> Callable:
    """A Keras loss (name, ``Loss`` instance or ``fn(y_true, y_pred)``) → scalar mean loss."""
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        return loss  # applies its own reduction (default: mean over all elements)
    if not callable(loss):
        raise TypeError(f"net2grad: `loss` must be a Keras loss or a callable, got {loss!r}.")

    def mean_loss(y_true, y_pred):
        return ops.mean(loss(y_true, y_pred))

    return mean_loss


def _objective(loss: Any) -> Callable:
    """Build ``objective(model, x, y) -> scalar`` (without regularisation) from ``loss``."""
    if _is_model_loss(loss):
        return loss
    if isinstance(loss, (list, tuple)):
        fns = [_mean_keras_loss(item) for item in loss]
    else:
        fns = None
        single = _mean_keras_loss(loss)

    def objective(model, x, y):
        y_pred = model(x, training=True)
        preds = tree.flatten(y_pred)
        trues = tree.flatten(y)
        if len(preds) != len(trues):
            raise ValueError(
                f"net2grad: the model returns {len(preds)} output(s) but `y` holds {len(trues)}."
            )
        per_out = fns if fns is not None else [single] * len(preds)
        if len(per_out) != len(preds):
            raise ValueError(
                f"net2grad: {len(per_out)} losses given for {len(preds)} model outputs."
            )
        total = 0.0
        for fn, yt, yp in zip(per_out, trues, preds):
            yt = ops.cast(ops.convert_to_tensor(yt), yp.dtype)
            total = total + ops.cast(fn(yt, yp), "float32")
        return total

    return objective


def net2grad(model: keras.Model, x: Any, y: Any, loss: Any) -> np.ndarray:
    """The gradient of the loss w.r.t. the trainable weights, flattened as :func:`net2vec`.

    ``loss`` is either a Keras loss (a name such as ``"mse"``, a ``keras.losses.Loss`` or a
    function ``fn(y_true, y_pred)``, averaged over all its elements) applied to
    ``model(x, training=True)`` and ``y`` (a list of losses or a tuple ``y`` for multi-output
    models: the per-output losses are summed), or a callable ``loss(model, x, y) -> scalar``
    (recognised by its three required positional parameters). The regularisation losses
    ``model.losses`` are added to the objective in both cases. Variables that do not influence
    the objective get a zero gradient.

    Example:
        >>> import keras, numpy as np
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        >>> g = net2grad(m, np.ones((4, 3)), np.zeros((4, 1)), "mse")
        >>> g.shape == net2vec(m).shape
        True
    """
    objective = _objective(loss)
    trainable = model.trainable_weights

    def value_of():
        value = ops.cast(objective(model, x, y), "float32")
        reg = model.losses
        if reg:
            value = value + ops.sum(ops.stack([ops.cast(r, "float32") for r in reg]))
        return value

    if keras.backend.backend() == "jax":
        grads = _jax_gradients(model, value_of)
    else:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            value = value_of()
        grads = tape.gradient(value, trainable)
        grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
    parts = []
    for g, w in zip(grads, trainable):
        if g is None:
            parts.append(np.zeros(int(np.prod(w.shape)), dtype=np.float32))
        else:
            parts.append(np.asarray(g, dtype=np.float32).ravel())
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(parts)


def _jax_gradients(model: keras.Model, value_of: Callable) -> list:
    """JAX: ``jax.grad`` of ``value_of()`` over the trainable values, the model running in a
    ``StatelessScope`` (as ``stateless_call``); the non-trainable values it updates (dropout
    seeds, normalisation statistics) are assigned back, as the TensorFlow tape's eager run
    does."""
    import jax

    trainable = list(model.trainable_weights)
    others = list(model.non_trainable_weights)
    values = [v.value for v in others]

    def f(tv):
        mapping = list(zip(trainable, tv)) + list(zip(others, values))
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
            value = value_of()
        return value, [scope.get_current_value(v) for v in others]

    grads, new = jax.grad(f, has_aux=True)([v.value for v in trainable])
    for v, a in zip(others, new):
        if a is not None:
            v.assign(a)
    return grads


# -------------------------------------------------------------------------------------- names
def named_params(model: keras.Model, trainable_only: bool = True) -> dict[str, keras.Variable]:
    """Unique readable name → variable, for the trainable (or all) weights of ``model``.

    Names are the Keras 3 variable paths, e.g. ``"sequential/lstm/lstm_cell/kernel"``, in the
    order of ``model.trainable_weights`` (``model.weights`` with ``trainable_only=False``). Were
    two paths ever equal, the later ones get a suffix ``"_1"``, ``"_2"``, ... .

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")],
        ...                      name="net")
        >>> list(named_params(m))
        ['net/d/kernel', 'net/d/bias']
    """
    variables = model.trainable_weights if trainable_only else model.weights
    out: dict[str, keras.Variable] = {}
    for v in variables:
        base = getattr(v, "path", None) or v.name
        name, k = base, 0
        while name in out:
            k += 1
            name = f"{base}_{k}"
        out[name] = v
    return out


# ------------------------------------------------------------------------------------- states
def _is_estimator(obj: Any) -> bool:
    return (
        not isinstance(obj, keras.layers.Layer)
        and callable(getattr(obj, "_get_states", None))
        and callable(getattr(obj, "_set_states", None))
    )


def _stateful_rnns(model: keras.Model) -> list:
    layers = model._flatten_layers(include_self=False, recursive=True)
    return [layer for layer in layers if isinstance(layer, keras.layers.RNN) and layer.stateful]


def _state_variables(model: keras.Model) -> list[tuple[Any, Any]]:
    """``(layer, variable)`` for every state variable of every stateful RNN, in order."""
    out: list[tuple[Any, Any]] = []
    for layer in _stateful_rnns(model):
        if layer.states is None:  # not built yet: no state to copy
            continue
        out.extend((layer, v) for v in tree.flatten(layer.states))
    return out


def states(obj: Any) -> list:
    """Copies (numpy arrays) of the recurrent states of a model or of a fitted Estimator.

    For a Keras model: every state variable of every stateful ``keras.layers.RNN`` found
    recursively in the model (Bidirectional halves included, in the order of
    ``model._flatten_layers``), as a flat list (an LSTM contributes ``h`` and ``c``). A model
    without stateful RNN layers gives ``[]``. For a keraseq ``Estimator`` (any object with
    ``_get_states()`` and ``_set_states(list)``): the final states of its last ``predict``,
    leading axis = series. Load them back with :func:`load_states`.

    Example:
        >>> import keras, numpy as np
        >>> m = keras.Sequential([keras.Input(batch_shape=(2, None, 3)),
        ...                       keras.layers.GRU(4, stateful=True)])
        >>> _ = m.predict(np.ones((2, 5, 3)), verbose=0)
        >>> [s.shape for s in states(m)]
        [(2, 4)]
    """
    if _is_estimator(obj):
        return obj._get_states()
    return [np.array(keras.ops.convert_to_numpy(v)) for _, v in _state_variables(obj)]


def load_states(obj: Any, s: Sequence[Any]) -> Any:
    """Assign the states ``s`` (as :func:`states` returned them) back; returns ``obj``.

    For a Keras model, a wrong number of arrays or a wrong shape raises ``ValueError`` naming
    the layer, the expected and the received shape. For an Estimator it delegates to
    ``obj._set_states(list(s))``.

    Example:
        >>> import keras, numpy as np
        >>> m = keras.Sequential([keras.Input(batch_shape=(2, None, 3)),
        ...                       keras.layers.GRU(4, stateful=True)])
        >>> _ = m.predict(np.ones((2, 5, 3)), verbose=0)
        >>> s = states(m); m.layers[0].reset_state()
        >>> bool(np.allclose(states(load_states(m, s))[0], s[0]))
        True
    """
    if _is_estimator(obj):
        obj._set_states(list(s))
        return obj
    pairs = _state_variables(obj)
    s = list(s)
    if len(s) != len(pairs):
        raise ValueError(
            f"load_states: the model has {len(pairs)} state array(s) in "
            f"{len(_stateful_rnns(obj))} stateful RNN layer(s), received {len(s)}."
        )
    arrays = [np.asarray(a) for a in s]
    for (layer, v), a in zip(pairs, arrays):  # check everything before assigning anything
        if tuple(a.shape) != tuple(v.shape):
            raise ValueError(
                f"load_states: state of layer '{layer.name}' has shape {tuple(v.shape)}, "
                f"received shape {tuple(a.shape)}."
            )
    for (_, v), a in zip(pairs, arrays):
        v.assign(a.astype(v.dtype))
    return obj


# ------------------------------------------------------------------------------------ kernels
_KERNEL_NAME = re.compile(r"(.*kernel|embeddings|lora_kernel_[ab])")


def _is_kernel(variable: Any) -> bool:
    name = str(variable.name).split("/")[-1].split(":")[0]
    return _KERNEL_NAME.fullmatch(name) is not None


def weights(model: keras.Model) -> list:
    """The kernel matrices among the trainable weights of ``model``: for weight regularisation.

    A trainable variable counts when its Keras name ends in ``kernel`` (``kernel``,
    ``recurrent_kernel``, ``depthwise_kernel``, ``pointwise_kernel``, ...), is ``embeddings`` or
    a LoRA kernel; biases, normalisation ``gamma``/``beta`` and anything else are left out,
    whatever their rank. Order: that of ``model.trainable_weights``.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((None, 3)), keras.layers.LSTM(4),
        ...                       keras.layers.Dense(1)])
        >>> [w.name for w in weights(m)]
        ['kernel', 'recurrent_kernel', 'kernel']
    """
    return [v for v in model.trainable_weights if _is_kernel(v)]


# -------------------------------------------------------------------------------- copies
#: Layer options Keras keeps out of ``get_config``: ``keras.models.clone_model`` drops them.
_UNCONFIGURED = ("use_cudnn",)


def _unconfigured_options(model: keras.Model) -> list:
    """The values of :data:`_UNCONFIGURED` options set on the model's layers, in layer order
    (part of what a compiled step depends on, though ``get_config`` omits them)."""
    return [
        (i, name, getattr(layer, name))
        for i, layer in enumerate(model._flatten_layers(include_self=False))
        for name in _UNCONFIGURED
        if name in vars(layer)
    ]


def _clone_model(model: keras.Model) -> keras.Model:
    """``keras.models.clone_model`` (new variables, same architecture), keeping the layer
    options Keras leaves out of ``get_config``: an ``LSTM(use_cudnn=False)`` stays so in the
    copy (Keras's clone would give it back ``"auto"``). The weights are not copied."""
    clone = keras.models.clone_model(model)
    layers = list(clone._flatten_layers(include_self=False))
    if len(layers) == len(list(model._flatten_layers(include_self=False))):  # same structure
        for i, name, value in _unconfigured_options(model):
            setattr(layers[i], name, value)
    return clone


# -------------------------------------------------------------------------------- no tracking
def notrack(model: keras.Model) -> keras.Model:
    """An inference-only copy of ``model``: same outputs, no trainable weights.

    The copy has its own variables (``model`` stays trainable and unchanged) holding the same
    values, and ``trainable = False``. Functional and Sequential models are copied with
    ``keras.models.clone_model``; other (subclassed) models by a ``.keras`` save/load round trip,
    which needs them to be serialisable.

    Example:
        >>> import keras, numpy as np
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> c = notrack(m)
        >>> len(c.trainable_weights), len(m.trainable_weights)
        (0, 2)
        >>> x = np.ones((1, 3))
        >>> bool(np.allclose(c(x), m(x)))
        True
    """
    try:
        copy = _clone_model(model)
        copy.set_weights(model.get_weights())
    except Exception:  # subclassed models: clone_model cannot rebuild them
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.keras")
            model.save(path)
            copy = keras.models.load_model(path, compile=False)
    # stateful RNN state variables are not in get_weights(): copy them too
    src, dst = _state_variables(model), _state_variables(copy)
    if len(src) == len(dst):
        for (_, a), (_, b) in zip(src, dst):
            if tuple(a.shape) == tuple(b.shape):
                b.assign(a)
    copy.trainable = False
    return copy


# ------------------------------------------------------------------------------------ matmul
def bmm(a: Any, b: Any) -> Any:
    """Differentiable batched matrix product ``(B, n, m) @ (B, m, p) -> (B, n, p)``.

    Works on NumPy arrays and backend tensors (inside ``tf.function``/XLA too) with
    ``keras.ops.matmul``. Both operands must be rank 3 with the same batch size ``B`` and inner
    size ``m`` (checked where the shapes are known): else ``ValueError`` naming both shapes.

    Example:
        >>> import numpy as np
        >>> a, b = np.ones((2, 3, 4)), np.ones((2, 4, 5))
        >>> tuple(bmm(a, b).shape)
        (2, 3, 5)
    """
    a = ops.convert_to_tensor(a)
    b = ops.convert_to_tensor(b)
    sa, sb = tuple(a.shape), tuple(b.shape)
    if len(sa) != 3 or len(sb) != 3:
        raise ValueError(
            f"bmm: both operands must be rank 3, (B, n, m) and (B, m, p); got shapes {sa} and {sb}."
        )

    def differ(u, v):
        return u is not None and v is not None and u != v

    if differ(sa[2], sb[1]):
        raise ValueError(
            f"bmm: inner sizes differ: a has shape {sa}, b has shape {sb} "
            f"(a.shape[2]={sa[2]} != b.shape[1]={sb[1]})."
        )
    if differ(sa[0], sb[0]):
        raise ValueError(
            f"bmm: batch sizes differ: a has shape {sa}, b has shape {sb} "
            f"(a.shape[0]={sa[0]} != b.shape[0]={sb[0]})."
        )
    if a.dtype != b.dtype:
        dtype = keras.backend.result_type(a.dtype, b.dtype)
        a, b = ops.cast(a, dtype), ops.cast(b, dtype)
    return ops.matmul(a, b)
