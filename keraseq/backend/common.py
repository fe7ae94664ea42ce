"""What both backends share: written once, each backend supplies only its own primitive.

What lives here:

- :class:`StepFunctions`, the compiled per-minibatch functions every backend builds;
- the process's place in its MPI job, read by both backends' device and CPU rules:
  :func:`usable_cores`, :func:`launched_with_several_ranks`, :func:`node_rank` (the rank
  among the ranks of one machine), and the GPU-per-local-rank rule :func:`device_for_rank`;
- :class:`DeviceScope`, a device context by name (a backend gives its ``context``);
- the flat gradient buffer: :func:`pack` (tensors to one float32 buffer, in order) and
  :func:`split` (back), with ``keras.ops``; :func:`fused_allreduce` (ONE ``Allreduce`` of
  many tensors, given the backend's in-program sum of one buffer), also what
  :meth:`~keraseq.backend.base.BaseSteps.pack_buffer` and ``unpack_apply`` pack and split;
- the host side of an in-program Allreduce: :func:`flat_allreduce` (``MPI_Allreduce`` of one
  NumPy buffer), :func:`host_sum` (the callback a backend calls from its program, with the
  test-only delay of :func:`allreduce_delay`);
- :class:`gradients_reduced`, which tells :func:`keraseq.distributed.DistributedOptimizer`
  that the window loop has averaged the gradients over the ranks already.

It imports no backend and no keraseq module above ``backend/``: the backends, the window
programs of ``backend/base.py`` and ``distributed.py`` all import it.

What does not live here: how a backend runs the callback inside its program
(``tf.numpy_function``, the XLA custom call of ``_mpi_xla``, ``io_callback`` or ``mpi4jax``:
``backend/tensorflow.py``, ``backend/jax/mpi.py``), the backends' device lists and thread
settings, communicators and collectives on NumPy values (``distributed.py``).

Example:
    >>> import numpy as np
    >>> from keraseq.backend import common
    >>> a, b = np.ones((2, 3), "float32"), np.arange(4.0)
    >>> flat = common.pack([a, b], extra=np.array([7.0]))
    >>> tuple(flat.shape)
    (11,)
    >>> pieces, rest = common.split(flat, [(2, 3), (4,)])
    >>> [tuple(p.shape) for p in pieces], float(rest[0])
    ([(2, 3), (4,)], 7.0)
"""

from __future__ import annotations

import functools
import operator
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

__all__ = [
    "StepFunctions",
    "DeviceScope",
    "device_for_rank",
    "node_rank",
    "usable_cores",
    "launched_with_several_ranks",
    "pack",
    "split",
    "fused_allreduce",
    "flat_allreduce",
    "host_sum",
    "allreduce_delay",
    "gradients_reduced",
    "gradients_already_reduced",
]


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


# ------------------------------------------------------------------ the process in its job
def _mpi():
    from mpi4py import MPI

    return MPI


def launched_with_several_ranks() -> bool:
    """True when the launcher's environment says this job has more than one rank (read
    before MPI starts, e.g. when a backend sizes its CPU devices)."""
    return any(
        int(os.environ.get(k, "1") or 1) > 1
        for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
    )


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. an MPI rank's binding)."""
    return (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )


def node_rank(comm) -> tuple[int, int]:
    """``(rank among the ranks of this machine, their number)`` for a keraseq communicator
    (``Split_type(COMM_TYPE_SHARED)``, asked once and kept on ``comm``); ``(0, 1)`` for one
    process."""
    if comm.size == 1:
        return 0, 1
    if not hasattr(comm, "_local"):
        node = comm.comm.Split_type(_mpi().COMM_TYPE_SHARED, key=comm.rank)
        comm._local = (node.Get_rank(), node.Get_size())
        node.Free()
    return comm._local


def device_for_rank(comm, n_gpus: int) -> str:
    """The GPU-per-local-rank rule: ``/GPU:{local rank % n_gpus}`` when the backend sees
    ``n_gpus`` GPUs, else ``/CPU:0``."""
    return f"/GPU:{node_rank(comm)[0] % n_gpus}" if n_gpus else "/CPU:0"


class DeviceScope:
    """The backend's device context for a name such as ``"/GPU:0"``; nothing for ``None``.
    A backend's ``device_scope`` subclasses it with its ``context(name)``."""

    @staticmethod
    def context(name: str) -> Any:
        raise NotImplementedError

    def __init__(self, name: str | None):
        self.name = name
        self._ctx = None

    def __enter__(self):
        if self.name is not None:
            self._ctx = self.context(self.name)
            self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        if self._ctx is not None:
            return self._ctx.__exit__(*exc)
        return False


# ------------------------------------------------------------------------ the flat buffer
def pack(tensors: Sequence, extra=None):
    """One flat float32 buffer: each of ``tensors`` flattened, in the given order (the same
    on every rank), then ``extra`` (a 1-D tensor, optional)."""
    parts = [ops.reshape(ops.cast(t, "float32"), (-1,)) for t in tensors]
    if extra is not None:
        parts.append(ops.reshape(ops.cast(extra, "float32"), (-1,)))
    return ops.concatenate(parts, 0)


def _size(shape) -> Any:
    """The number of elements of ``shape`` (a Python int, or a traced one for unknown dims)."""
    if all(isinstance(d, (int, np.integer)) for d in shape):
        return int(np.prod(shape))
    return functools.reduce(operator.mul, shape, 1)


def split(flat, shapes: Sequence) -> tuple[list, Any]:
    """The pieces of a :func:`pack` buffer reshaped to ``shapes`` (still float32), and what
    follows them (the ``extra``)."""
    pieces, start = [], 0
    for shape in shapes:
        end = start + _size(shape)
        pieces.append(ops.reshape(flat[start:end], shape))
        start = end
    return pieces, flat[start:]


def fused_allreduce(tensors: Sequence, extra, sum_over_ranks: Callable):
    """Sum ``tensors`` (and ``extra``, a 1-D float32) over ranks with ONE ``Allreduce``:
    packed into one float32 buffer (:func:`pack`), summed by the backend's
    ``sum_over_ranks(buffer)``, split back and cast to each tensor's dtype. Returns
    ``(summed tensors, summed extra or None)``."""
    pieces, rest = split(sum_over_ranks(pack(tensors, extra)), [ops.shape(t) for t in tensors])
    out = [ops.cast(p, keras.backend.standardize_dtype(t.dtype)) for p, t in zip(pieces, tensors)]
    return out, (rest if extra is not None else None)


# ------------------------------------------------------------- the host side of an Allreduce
def flat_allreduce(comm, flat: np.ndarray) -> np.ndarray:
    """``MPI_Allreduce`` (sum) of one NumPy buffer over the ranks of ``comm``."""
    out = np.empty_like(flat)
    comm.Allreduce(flat, out, op=_mpi().SUM)
    return out


def allreduce_delay() -> float:
    """Test-only hook: an artificial delay per Allreduce, in seconds
    (``KERASEQ_TEST_ALLREDUCE_DELAY_S``), to model a slow network (this machine's kernel has
    no netem). Only the host-callback paths sleep."""
    return float(os.environ.get("KERASEQ_TEST_ALLREDUCE_DELAY_S", "0") or 0.0)


def host_sum(comm, delay: float = 0.0) -> Callable[[np.ndarray], np.ndarray]:
    """The host callback of an in-program Allreduce: ``host(buffer) -> sum over ranks`` of
    one float32 NumPy buffer, sleeping ``delay`` seconds first (:func:`allreduce_delay`)."""

    def host(a):
        if delay:
            time.sleep(delay)
        return flat_allreduce(comm, np.ascontiguousarray(a, np.float32))

    return host


# ----------------------------------------------------- gradients the window loop averaged
_reduced = threading.local()


class gradients_reduced:
    """Inside this context a :func:`~keraseq.distributed.DistributedOptimizer`'s ``apply``
    applies the gradients as given: the caller (keraseq's window loop, which sums one buffer
    per update over ranks) has averaged them already. Unlike calling ``apply_reduced``, it
    also reaches a DistributedOptimizer wrapped by another optimizer, such as the
    ``LossScaleOptimizer`` that ``compile`` puts around it under ``mixed_float16``, whose
    ``apply`` calls the inner one's (which would otherwise reduce a second time, inside the
    compiled step)."""

    def __enter__(self):
        self._previous = getattr(_reduced, "on", False)
        _reduced.on = True
        return self

    def __exit__(self, *exc):
        _reduced.on = self._previous
        return False


def gradients_already_reduced() -> bool:
    """Whether this thread is inside :class:`gradients_reduced`."""
    return getattr(_reduced, "on", False)
