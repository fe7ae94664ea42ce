"""The JAX backend, a package as Keras's ``keras/src/backend/jax/`` is: one module per concept.

- ``steps.py``: :class:`JaxSteps`, the window programs of ``backend/base.py`` as JAX runs them
  (pure functions of the variables' values, ``jax.value_and_grad``, ``jax.jit`` with
  donation), and :func:`build_step_functions`, :func:`jit_for`;
- ``rows.py``: a minibatch's rows split over the CPU devices (``RowSplit``, ``row_replicas``,
  ``MIN_WORK_PER_DEVICE``, ``split_calls``);
- ``cudnn.py``: cuDNN or XLA's loop for Keras's LSTMs on a GPU (``xla_rnn_loops``,
  ``MAX_XLA_RNN_WINDOW``, ``on_gpu``);
- ``mpi.py``: the Allreduce inside a ``jax.jit`` program (``mpi4jax`` or a host callback):
  :func:`graph_allreduce`, :func:`fused_allreduce`;
- ``devices.py``: one CPU device per core, asked for when this package is imported (before
  JAX starts), :func:`default_device`, :class:`device_scope`;
- ``core.py``: host <-> array conversion and the traced primitives (``while_loop``, ``cond``,
  ``scan``, ``slice_time``, ``pad_time``, ``time_scan``, ``custom_vjp``,
  ``elementwise_grad``).

Here: the names every backend offers (``backend/__init__.py`` lists them; ``current()``
returns this package), re-exported from those modules. What does not live here: anything
else. What both backends share (the gradient buffer's packing, the host side of the
Allreduce, the GPU per local rank, the device scope) is in ``backend/common.py``; what a
window does in ``backend/base.py``. Settings that tests change (``MIN_WORK_PER_DEVICE``,
``_on_gpu_backend``) are changed in their own module (``rows``, ``cudnn``), where the code
reads them.
"""

from __future__ import annotations

from . import devices  # first: asks JAX for one CPU device per core before JAX starts
from .core import (
    cond,
    custom_vjp,
    dtype_of,
    elementwise_grad,
    pad_time,
    release_eager_kernels,
    scan,
    shapes_of,
    slice_time,
    time_scan,
    to_numpy,
    to_tensor,
    while_loop,
)
from .cudnn import MAX_XLA_RNN_WINDOW, on_gpu, xla_rnn_loops
from .devices import default_device, device_scope
from .mpi import fused_allreduce, graph_allreduce
from .rows import row_replicas, split_calls
from .steps import JaxSteps, build_step_functions, jit_for

NAME = "jax"

__all__ = [
    "NAME",
    "JaxSteps",
    "build_step_functions",
    "jit_for",
    "graph_allreduce",
    "fused_allreduce",
    "default_device",
    "device_scope",
    "devices",
    "to_tensor",
    "to_numpy",
    "dtype_of",
    "shapes_of",
    "release_eager_kernels",
    "while_loop",
    "cond",
    "scan",
    "slice_time",
    "pad_time",
    "time_scan",
    "custom_vjp",
    "elementwise_grad",
    "on_gpu",
    "xla_rnn_loops",
    "MAX_XLA_RNN_WINDOW",
    "row_replicas",
    "split_calls",
]
