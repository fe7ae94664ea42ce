"""The cuDNN rule on JAX: cuDNN or XLA's own loop for Keras's LSTMs on a GPU.

What lives here: :func:`xla_rnn_loops` (the training program traced with ``use_cudnn=False``
on the layers left at ``"auto"``, for short windows on a GPU), its threshold
:data:`MAX_XLA_RNN_WINDOW`, and :func:`on_gpu`, whether JAX computes on a GPU (the same fact,
asked by the fused loop's rule, ``fused_rule.py``). Both read ``_on_gpu_backend``, which
``tests/test_gpu_rules.py`` patches here to play a GPU on a CPU.

What does not live here: the programs that call it (``steps.py``), where arrays live
(``devices.py``), whether the Allreduce buffer is on a GPU (``mpi.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import keras

#: Longest training window (``seq_len``) for which, on a GPU, the LSTMs left at
#: ``use_cudnn="auto"`` run Keras's XLA loop instead of cuDNN inside keraseq's window loop.
#: Measured on an NVIDIA H200 (docs/gpu.md): cuDNN launches its kernels per time step from
#: the host, so its short calls, one per window, keep the GPU idle; XLA's loop runs inside
#: the compiled program. 2.4x faster at 10 steps (LSTM(10), batch 20), 1.1x at 20 steps
#: (LSTM(128), batch 64). Longer windows keep cuDNN (not measured).
MAX_XLA_RNN_WINDOW = 20


def _on_gpu_backend() -> bool:
    """Whether JAX computes on a GPU: when Keras's LSTM takes cuDNN (its ``cudnn_ok``)."""
    return jax.default_backend() == "gpu"


def on_gpu() -> bool:
    """Whether JAX computes on a GPU (where Keras's LSTM/GRU may take cuDNN)."""
    return _on_gpu_backend()


def xla_rnn_loops(model: keras.Model, seq_len: int | None, fn: Callable) -> Callable:
    """``fn`` traced with ``use_cudnn=False`` on the model's layers left at ``"auto"``, on a
    GPU with windows of at most :data:`MAX_XLA_RNN_WINDOW` steps; ``fn`` itself otherwise.

    The layers' setting is changed only while ``fn`` is traced (the compiled program keeps
    XLA's loop) and restored after, so the fitted model, ``predict`` and a saved file are as
    the user built them. ``use_cudnn=True`` is left alone. Same maths: the loss may differ in
    the last float32 digits (cuDNN sums in another order)."""
    if not _on_gpu_backend() or seq_len is None or seq_len > MAX_XLA_RNN_WINDOW:
        return fn
    layers = [
        layer
        for layer in model._flatten_layers(include_self=False)
        if getattr(layer, "use_cudnn", None) == "auto"
    ]
    if not layers:
        return fn

    def traced(*args):
        for layer in layers:
            layer.use_cudnn = False
        try:
            return fn(*args)
        finally:
            for layer in layers:
                layer.use_cudnn = "auto"

    return traced
