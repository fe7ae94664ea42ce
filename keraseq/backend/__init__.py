"""The backend layer: the window programs as classes, one per Keras backend.

Layout (mirroring Keras's trainers: ``keras/src/trainers/trainer.py`` backend-free,
``keras/src/backend/<name>/trainer.py`` per backend):

- ``backend/plan.py``: :class:`~keraseq.backend.plan.WindowPlan`, which windows of a minibatch
  run, with which targets, masks and weights (``keras.ops``);
- ``backend/base.py``: :class:`~keraseq.backend.base.BaseSteps`, the five programs (train per
  window, per series, accumulated over ``sync_every`` windows, evaluate, predict), what a window
  does in each, the count-weighted gradient buffer and the non-finite gate, written once;
- ``backend/tensorflow.py`` (``TensorFlowSteps``) and ``backend/jax.py`` (``JaxSteps``): only
  what differs -- reading and assigning variables, taking a gradient, compiling and calling a
  program, the traced loops, the Allreduce, devices (and on JAX, a minibatch's rows over CPU
  devices).

Here: :class:`StepFunctions` (what every backend builds) and :func:`current`, the module of the
backend Keras runs on (``KERAS_BACKEND``, chosen once at import, as in Keras). Each backend
module offers the same names:

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

__all__ = ["StepFunctions", "current", "name"]


class StepFunctions:
    """The compiled per-minibatch functions of one backend.

    ``train(x, y, w, m, tm, n_win, h0)`` trains on every window of one minibatch and returns
    one array ``[loss_sum, count, bad_window]``; ``evaluate(...)`` (same arguments) returns
    ``(loss_sum, count)`` and updates the metrics; ``predict(x, tm, h0)`` returns ``(outputs,
    final states)``. ``x``, ``y`` are tuples of arrays; ``w``, ``m`` 1-tuples or ``None``;
    ``tm`` the (B, T) time mask or ``None``; ``n_win`` the windows to run or ``None``; ``h0``
    the initial states (``None``: zeros).

    Chunks of windows (so that progress and callbacks move inside a long minibatch):
    ``train(x, y, w, m, tm, n_win, h0, chunk)`` with ``chunk = (first, final, acc)`` trains
    windows ``first .. n_win - 1`` only (``first``, ``n_win``: int32 tensors), from the states
    ``h0``; with the runtime flag ``final`` it also ends the minibatch (a short tail window, the
    per-series update, the ``sync_every`` remainder). It returns ``(result, states, acc)``: the
    result as above for these windows (window indices counted from the minibatch's start),
    the final states and accumulators to pass to the next chunk. ``chunk_start(x, tm)`` gives
    the ``(h0, acc)`` of a minibatch's first chunk. One compiled program serves every chunk;
    chunks ``[0, c1), ..., [ck, n)`` train exactly as one call.
    """

    def __init__(self, train, evaluate, predict, exact_rows=False, chunk_start=None):
        #: True when minibatches must not be padded (a callable loss sees every row).
        self.exact_rows = exact_rows
        self.train = train
        self.evaluate = evaluate
        self.predict = predict
        #: ``chunk_start(x, tm) -> (h0, acc)`` for chunked training (``None``: not offered).
        self.chunk_start = chunk_start


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
