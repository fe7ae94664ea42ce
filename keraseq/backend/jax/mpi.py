"""MPI on JAX: the sum of a buffer over ranks inside a ``jax.jit`` program.

What lives here: :func:`graph_allreduce` (the in-program Allreduce of the window loop's
gradient buffer, and the path it takes, said once per run) and :func:`fused_allreduce` (the
Allreduce of :func:`keraseq.distributed.DistributedOptimizer`): ``mpi4jax``'s XLA custom call
where it can run (installed; CUDA-aware on a GPU), else a host callback (``io_callback``) of
:func:`keraseq.backend.common.host_sum`.

What does not live here: packing the buffer and the host side of the sum, with the test-only
delay (``backend/common.py``), the sum over the CPU devices of one rank (``rows.py``),
communicators and collectives on NumPy values (``distributed.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from .. import common


def _mpi4jax():
    try:
        import mpi4jax
    except ImportError:
        return None
    return mpi4jax


def _mpi4jax_has_cuda(mpi4jax) -> bool:
    check = getattr(mpi4jax, "has_cuda_support", None)
    return bool(check()) if check is not None else False


def _host_allreduce(comm, buf, delay=0.0):
    """The sum of ``buf`` over ranks by a host callback (any device, inside jit)."""
    from jax.experimental import io_callback

    return io_callback(
        common.host_sum(comm, delay),
        jax.ShapeDtypeStruct(buf.shape, jnp.float32),
        buf,
        ordered=True,
    )


def _on_gpu(buf) -> bool:
    """Whether ``buf`` lives on a GPU (inside jit, a tracer: JAX's default backend decides)."""
    if isinstance(buf, jax.core.Tracer):
        return jax.default_backend() == "gpu"
    return any(d.platform == "gpu" for d in buf.devices())


def _sum_over_ranks(comm, buf):
    mpi4jax = _mpi4jax()
    if mpi4jax is None or (_on_gpu(buf) and not _mpi4jax_has_cuda(mpi4jax)):
        return _host_allreduce(comm, buf)
    from mpi4py import MPI

    return mpi4jax.allreduce(buf, op=MPI.SUM, comm=comm.comm)


def fused_allreduce(comm, tensors: Sequence, extra=None):
    """Sum ``tensors`` (and ``extra``, a 1-D float32) over ranks with ONE ``Allreduce``
    (:func:`keraseq.backend.common.fused_allreduce`): one float32 buffer in the given order
    (the same on every rank), summed by ``mpi4jax`` inside jit or a host callback, split
    back."""
    return common.fused_allreduce(tensors, extra, lambda flat: _sum_over_ranks(comm, flat))


def graph_allreduce(comm, device: str | None = None) -> Callable:
    """Sum of one flat float32 buffer over ranks, usable inside ``jax.jit``: one
    ``Allreduce`` per call, by ``mpi4jax`` (an XLA custom call: the whole window loop stays
    one program), or by a host callback (``io_callback``) on a GPU when mpi4jax was built
    without CUDA, or when mpi4jax is not installed. The test-only delay
    (:func:`keraseq.backend.common.allreduce_delay`) takes the host-callback path, which
    sleeps before each Allreduce."""
    delay = common.allreduce_delay()
    mpi4jax = _mpi4jax()
    on_gpu = device is not None and "GPU" in device.upper()
    host = delay > 0 or mpi4jax is None or (on_gpu and not _mpi4jax_has_cuda(mpi4jax))

    def reduce(buf):
        if host:
            return _host_allreduce(comm, buf, delay)
        from mpi4py import MPI

        return mpi4jax.allreduce(buf, op=MPI.SUM, comm=comm.comm)

    why = (
        "a test delay"
        if delay > 0
        else "mpi4jax is not installed"
        if mpi4jax is None
        else "mpi4jax was built without CUDA"
    )

    def path(jit: bool) -> tuple[str, str | None]:
        if not host:
            return "inside the XLA program (mpi4jax)", None
        advice = (
            "pip install 'keraseq[jax-mpi]' to run it inside the XLA program "
            "(docs/guide/backends.md)"
            if mpi4jax is None
            else None
        )
        return f"as a host callback between window steps ({why})", advice

    reduce.path = path  # type: ignore[attr-defined]  # read by session.build_steps
    return reduce
