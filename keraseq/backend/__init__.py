"""The backend layer: the window programs as classes, one per Keras backend.

Layout (mirroring Keras's trainers: ``keras/src/trainers/trainer.py`` backend-free,
``keras/src/backend/<name>/trainer.py`` per backend):

- ``backend/plan.py``: :class:`~keraseq.backend.plan.WindowPlan`, which windows of a minibatch
  run, with which targets, masks and weights, and how predict's windows join (``keras.ops``);
- ``backend/base.py``: :class:`~keraseq.backend.base.BaseSteps`, the five programs (train per
  window, per series, accumulated over ``sync_every`` windows, evaluate, predict), what a window
  does in each, the count-weighted gradient buffer and the non-finite gate, written once;
- ``backend/common.py``: what both backends share, written once: :class:`StepFunctions`, the
  gradient buffer's packing and splitting, the host side of the Allreduce (and its test
  delay), the GPU per local rank, the device scope, the usable cores;
- ``backend/tensorflow.py`` (``TensorFlowSteps``) and the package ``backend/jax/``
  (``JaxSteps`` in ``steps.py``, the CPU row split in ``rows.py``, the cuDNN rule in
  ``cudnn.py``, MPI in ``mpi.py``, devices in ``devices.py``, the primitives in ``core.py``):
  only what differs -- reading and assigning variables, taking a gradient, compiling and
  calling a program, the traced loops, the Allreduce inside a program, devices (and on JAX, a
  minibatch's rows over CPU devices).

None of these imports a keraseq module that asks for the backend (``distributed.py``,
``fused.py``, ``windows.py``): those import the backend, not the other way round.

Here: :func:`current`, the module of the backend Keras runs on (``KERAS_BACKEND``, chosen once
at import, as in Keras), and :class:`StepFunctions` (what every backend builds; from
``common.py``). Each backend module offers the same names:

- ``build_step_functions(model, carry, state_specs, objective, optimizer, metrics, seq_len,
  per_series, jit_compile, allreduce=None, sync_every=1) -> StepFunctions`` (a thin function
  building the backend's class);
- ``graph_allreduce(comm, device)`` (the in-step sum of one flat float32 buffer over ranks)
  and ``fused_allreduce(comm, tensors)`` (for :func:`keraseq.distributed.DistributedOptimizer`);
- ``default_device(comm)``, ``device_scope(name)``, ``jit_for(model, setting, work, distributed)``
  (XLA or not for ``jit_compile``);
- ``to_tensor(array)``, ``to_numpy(tensor)``, ``dtype_of(name)``, ``shapes_of(model, fn,
  *args)`` (a model call's output shapes and dtypes, without keeping a compiled program),
  ``release_eager_kernels()`` (what earlier models left in the backend's caches; once per fit);
- ``while_loop(bound, body, init, maximum)``, ``cond``, ``scan``, ``slice_time``, ``pad_time``
  (the traced primitives of the plan and the base);
- ``time_scan(body, init, xs, reverse)`` (``lax.scan`` over the first axis of ``xs``; ``scan``
  runs on it), ``custom_vjp(forward, backward)``, ``elementwise_grad(fn, pre)`` and
  ``on_gpu()`` (what the fused recurrent loop of ``fused.py`` needs).

What does not live here: what runs around the programs (the epoch loop in ``trainer.py``,
inference in ``inference.py``, the state carry in ``windows.py``).

Example:
    >>> from keraseq.backend import current
    >>> current().NAME in ("tensorflow", "jax")
    True
"""

from __future__ import annotations

import importlib
from types import ModuleType

import keras

from .common import StepFunctions

__all__ = ["StepFunctions", "current", "name"]


def name() -> str:
    """The Keras backend keraseq runs on."""
    return keras.backend.backend()


def current() -> ModuleType:
    """The backend module for Keras's backend (imported on first use)."""
    backend = name()
    if backend not in ("tensorflow", "jax"):
        raise ImportError(
            f"keraseq runs on the TensorFlow or JAX Keras backend, not "
            f"{backend!r}: set KERAS_BACKEND=tensorflow or jax"
        )
    return importlib.import_module(f"{__name__}.{backend}")
