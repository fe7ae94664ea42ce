"""Which recurrent layers keraseq's fused loop runs: the rule alone, with no backend imported.

What lives here: :func:`why_not` (``None`` when a layer takes the fused loop, else why it
keeps Keras's own), given the backend's facts as arguments (whether it computes on a GPU,
its name), and the layer, cell and activation kinds the loop knows. ``fused.py`` asks it with
the running backend's facts (``keraseq.fused.why_not``), and the TensorFlow backend with its
own when it chooses XLA or not for ``jit_compile="auto"``: the backends import this module,
never ``fused.py`` (which asks the backend for its primitives).

What does not live here: the fused loop itself (``fused.py``), the state carry that calls it
(``windows.py``).

Example:
    >>> import keras
    >>> lstm = keras.layers.LSTM(4)
    >>> why_not(lstm, True, lambda: False, "jax") is None
    True
    >>> why_not(keras.layers.LSTM(4, go_backwards=True), True, lambda: False, "jax")
    'go_backwards'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

__all__ = ["why_not", "ELEMENTWISE_ACTIVATIONS", "CELLS", "activation_name"]

#: Keras's activations that act on each element alone (so their derivative is elementwise):
#: every one of ``keras.activations`` but ``softmax``, ``log_softmax``, ``glu``, ``sparsemax``.
ELEMENTWISE_ACTIVATIONS = (
    "tanh",
    "sigmoid",
    "relu",
    "linear",
    "hard_sigmoid",
    "hard_silu",
    "hard_tanh",
    "elu",
    "selu",
    "celu",
    "gelu",
    "silu",
    "swish",
    "mish",
    "softplus",
    "softsign",
    "exponential",
    "leaky_relu",
    "relu6",
    "log_sigmoid",
    "hard_shrink",
    "soft_shrink",
    "tanh_shrink",
    "sparse_plus",
    "sparse_sigmoid",
    "squareplus",
)

LAYERS = (keras.layers.RNN, keras.layers.LSTM, keras.layers.GRU, keras.layers.SimpleRNN)

#: The cells whose maths the fused loop has (``fused.py``).
CELLS = (keras.layers.LSTMCell, keras.layers.GRUCell, keras.layers.SimpleRNNCell)


def activation_name(fn) -> str | None:
    """The name of ``fn`` among :data:`ELEMENTWISE_ACTIVATIONS` (``None``: not one)."""
    for name in ELEMENTWISE_ACTIVATIONS:
        if fn is getattr(keras.activations, name, None):
            return name
    return None


def why_not(layer, xla: bool, on_gpu: Callable[[], bool], backend: str) -> str | None:
    """``None`` when ``layer`` runs the fused loop in keraseq's window programs, else why it
    keeps Keras's own loop (a short phrase). ``xla``: whether the programs compile with XLA
    (always on JAX; on TensorFlow a plain graph runs Keras's loop faster than the fused one);
    ``on_gpu()``: whether the backend computes on a GPU (asked only for a layer that may take
    cuDNN); ``backend``: the backend's name."""
    cell: Any = getattr(layer, "cell", None)
    if type(layer) not in LAYERS:
        return f"{type(layer).__name__} is not one of Keras's LSTM, GRU, SimpleRNN, RNN"
    if type(cell) not in CELLS:
        return f"its cell {type(cell).__name__} is not LSTMCell, GRUCell or SimpleRNNCell"
    if cell.recurrent_dropout:
        return "recurrent_dropout"
    if getattr(cell, "implementation", 2) == 1 and cell.dropout:
        return "implementation=1 with dropout (a mask per gate)"
    if layer.go_backwards:
        return "go_backwards"
    if layer.unroll:
        return "unroll=True"
    if layer.compute_dtype not in ("float32", "float64"):
        return f"compute dtype {layer.compute_dtype}"
    for attr in ("activation", "recurrent_activation"):
        fn = getattr(cell, attr, None)
        if fn is not None and activation_name(fn) is None:
            return f"{attr} {getattr(fn, '__name__', fn)!r} is not an elementwise Keras activation"
    if getattr(layer, "use_cudnn", False) is not False and on_gpu():
        return "cuDNN on the GPU (use_cudnn is not False)"
    if not xla and backend == "tensorflow":
        return "a TensorFlow graph without XLA, where Keras's loop is faster"
    return None
