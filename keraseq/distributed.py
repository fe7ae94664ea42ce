"""Data-parallel training over MPI (mpi4py): what Horovod did, for Keras 3.

What lives here: choosing the communicator (``distributed="auto"``: MPI when launched under
``mpirun`` with more than one rank), sharding N into contiguous blocks, the fused gradient
``Allreduce`` (one buffer per update, same order on every rank), :func:`DistributedOptimizer`
(a thin dynamic subclass that keeps the optimizer's class name, so saved models load without
keraseq), broadcasting weights and optimizer state from rank 0, averaging logs over all samples,
the rank on this machine, and turning an exception on one rank into ``Abort`` of all.
What does not: the training loop (``trainer.py``), the Allreduce inside the compiled window
loops and the one a DistributedOptimizer runs (each backend's ``fused_allreduce``), and what
the backends read of the job (the usable cores, the rank among a machine's ranks, the GPU per
local rank: ``backend/common.py``, re-exported here).

Single process (no ``mpirun``, or ``distributed=False``) uses :class:`LocalComm`, which does
nothing, so the same script runs unchanged.

Example (``examples/mpi_train.py`` is the full template)::

    # mpirun -np 2 python train.py
    est = keraseq.Estimator(model, "mse", "adam", epochs=2, batch_size=20, seq_len=10)
    est.fit(x, y)          # every rank trains on its own block of the N series
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

from .backend import current
from .backend.common import gradients_already_reduced, node_rank

# What the backends read of the job (``backend/common.py``), importable from here too.
from .backend.common import gradients_reduced as gradients_reduced
from .backend.common import launched_with_several_ranks as launched_with_several_ranks
from .backend.common import usable_cores as usable_cores

__all__ = [
    "LocalComm",
    "get_comm",
    "shard",
    "DistributedOptimizer",
    "BroadcastWeightsCallback",
    "rank",
    "size",
    "local_rank",
]

#: Callbacks that write files or print: kept on rank 0 only.
ROOT_ONLY_CALLBACKS = (
    keras.callbacks.ModelCheckpoint,
    keras.callbacks.CSVLogger,
    keras.callbacks.TensorBoard,
    keras.callbacks.ProgbarLogger,
    keras.callbacks.RemoteMonitor,
    keras.callbacks.BackupAndRestore,
)


class LocalComm:
    """The communicator of a single process: rank 0 of 1; every collective is the identity."""

    rank = 0
    size = 1

    def Get_rank(self) -> int:  # mpi4py spelling
        return 0

    def Get_size(self) -> int:
        return 1


_LOCAL = LocalComm()
_hook_installed = False


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError:  # pragma: no cover - mpi4py is an optional dependency
        return None
    return MPI


def _launched_under_mpi() -> bool:
    env = os.environ
    return any(
        k in env
        for k in (
            "OMPI_COMM_WORLD_SIZE",
            "PMI_SIZE",
            "PMIX_RANK",
            "MPI_LOCALNRANKS",
            "SLURM_STEP_NUM_TASKS",
        )
    )


class _Comm:
    """A thin view of an mpi4py communicator with ``rank``/``size`` attributes."""

    def __init__(self, comm):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()

    def __getattr__(self, name):
        return getattr(self.comm, name)


def get_comm(setting: Any = "auto"):
    """The communicator for ``distributed=setting``.

    ``"auto"``: ``MPI.COMM_WORLD`` when launched by ``mpirun`` with more than one rank, else a
    :class:`LocalComm`; ``False``/``None``: local; ``True``: ``MPI.COMM_WORLD`` (error without
    mpi4py); an mpi4py communicator: that one.
    """
    if setting is False or setting is None:
        return _LOCAL
    if isinstance(setting, (_Comm, LocalComm)):
        return setting
    if setting == "auto":
        if not _launched_under_mpi():
            return _LOCAL
        MPI = _mpi()
        if MPI is None or MPI.COMM_WORLD.Get_size() == 1:
            return _LOCAL
        return _wrap(MPI.COMM_WORLD)
    if setting is True:
        MPI = _mpi()
        if MPI is None:
            raise ImportError("distributed=True needs mpi4py: pip install 'keraseq[mpi]'")
        return _wrap(MPI.COMM_WORLD) if MPI.COMM_WORLD.Get_size() > 1 else _LOCAL
    if hasattr(setting, "Allreduce") and hasattr(setting, "Get_rank"):
        return _wrap(setting) if setting.Get_size() > 1 else _LOCAL
    raise ValueError(
        f"`distributed` must be 'auto', True, False or an mpi4py communicator, got {setting!r}"
    )


_wrapped: dict = {}


def _wrap(comm) -> _Comm:
    key = id(comm)
    if key not in _wrapped:
        _wrapped[key] = _Comm(comm)
        install_abort_hook()
    return _wrapped[key]


def rank(comm=None) -> int:
    """This process's rank (0 without MPI)."""
    return get_comm(comm if comm is not None else "auto").rank


def size(comm=None) -> int:
    """The number of ranks (1 without MPI)."""
    return get_comm(comm if comm is not None else "auto").size


def local_rank(comm=None) -> int:
    """Rank among the processes of this machine (``Split_type(COMM_TYPE_SHARED)``)."""
    return node_rank(get_comm(comm if comm is not None else "auto"))[0]


# ------------------------------------------------------------------------------ fault handling
def install_abort_hook() -> None:
    """Make an uncaught exception on any rank print its traceback and ``Abort`` every rank.

    Without it, the other ranks would wait forever in their next collective.
    """
    global _hook_installed
    if _hook_installed:
        return
    _hook_installed = True
    previous = sys.excepthook

    def hook(kind, value, tb):
        MPI = _mpi()
        r = MPI.COMM_WORLD.Get_rank() if MPI is not None else 0
        sys.stderr.write(
            f"keraseq: rank {r} failed with {kind.__name__}: {value}; aborting all ranks\n"
        )
        previous(kind, value, tb)
        sys.stderr.flush()
        if MPI is not None:
            MPI.COMM_WORLD.Abort(1)

    sys.excepthook = hook

    def thread_hook(args):
        hook(args.exc_type, args.exc_value, args.exc_traceback)

    threading.excepthook = thread_hook


def agree(comm, check: Callable[[], Any]) -> Any:
    """Run ``check()`` on every rank; if it raises on any rank, raise on all (no rank hangs).

    The rank that failed re-raises its own exception; the others raise the same type with the
    failing rank's message.
    """
    error = None
    try:
        result = check()
    except (ValueError, TypeError) as exc:
        error = exc
        result = None
    if comm.size == 1:
        if error is not None:
            raise error
        return result
    reports = comm.allgather(None if error is None else (type(error).__name__, str(error)))
    if error is not None:
        raise error
    for r, report in enumerate(reports):
        if report is not None:
            kind = TypeError if report[0] == "TypeError" else ValueError
            raise kind(f"on rank {r}: {report[1]}")
    return result


_announced: set[str] = set()


def announce_allreduce(path: str, advice: str | None, comm) -> None:
    """Say once per process, on rank 0, how the training programs sum gradients over the
    ranks (``path``): at INFO level on the ``keraseq`` logger, and as a ``UserWarning`` when
    ``advice`` names an install that would make it faster."""
    if comm.rank != 0 or path in _announced:
        return
    _announced.add(path)
    logging.getLogger("keraseq").info("MPI Allreduce over %d ranks: %s", comm.size, path)
    if advice:
        warnings.warn(f"keraseq: the MPI Allreduce runs {path}; {advice}", UserWarning, 3)


# ------------------------------------------------------------------------------------ sharding
def shard(n: int, comm) -> tuple[int, int]:
    """The contiguous block ``[lo, hi)`` of ``n`` rows that this rank owns.

    Blocks differ in size by at most one row (the first ``n % size`` ranks get one more), so
    no sample is dropped. Every rank runs ``ceil(max block / batch_size)`` steps per epoch; a
    rank whose block is exhausted takes part in the remaining steps with masked rows that add
    nothing to the gradient, so the average is over exactly the samples that exist.
    """
    if comm.size == 1:
        return 0, n
    base, extra = divmod(n, comm.size)
    lo = comm.rank * base + min(comm.rank, extra)
    return lo, lo + base + (1 if comm.rank < extra else 0)


def max_over_ranks(value: int, comm) -> int:
    if comm.size == 1:
        return value
    return int(comm.allreduce(int(value), op=_mpi().MAX))


def allreduce_sum(values: np.ndarray, comm) -> np.ndarray:
    values = np.ascontiguousarray(values, dtype=np.float64)
    if comm.size == 1:
        return values
    out = np.empty_like(values)
    comm.Allreduce(values, out, op=_mpi().SUM)
    return out


def broadcast_object(value, comm, root: int = 0):
    """``value`` of rank ``root`` on every rank (identity for one process)."""
    return value if comm.size == 1 else comm.bcast(value, root=root)


def metric_results(metrics: Sequence, comm) -> dict[str, float]:
    """Results of Keras metrics over the samples of all ranks.

    Metric state variables (totals and counts) are summed over ranks before ``result()``, so
    mean-like metrics are weighted by sample counts, not a mean of per-rank means.
    """
    out = {}
    for metric in metrics:
        if comm.size == 1 or not metric.variables:
            result = metric.result()
        else:
            local = [v.numpy() for v in metric.variables]
            flat = np.concatenate([np.ravel(a).astype(np.float64) for a in local])
            total = allreduce_sum(flat, comm)
            k = 0
            for v, a in zip(metric.variables, local):
                v.assign(total[k : k + a.size].reshape(a.shape).astype(a.dtype))
                k += a.size
            result = metric.result()
            for v, a in zip(metric.variables, local):
                v.assign(a)
        out[metric.name] = float(np.asarray(result))
    return out


def allgather_rows(arrays: Sequence[np.ndarray], comm) -> list[np.ndarray]:
    """Concatenate every rank's block of rows, in rank order, on every rank."""
    out = []
    for a in arrays:
        a = np.ascontiguousarray(a)
        counts = comm.allgather(a.shape[0])
        row = int(np.prod(a.shape[1:])) if a.ndim > 1 else 1
        full = np.empty((sum(counts),) + a.shape[1:], a.dtype)
        mpi_type = _mpi()._typedict[a.dtype.char]
        comm.Allgatherv(a, [full, [c * row for c in counts], None, mpi_type])
        out.append(full)
    return out


# ----------------------------------------------------------------------------------- gradients
def DistributedOptimizer(optimizer: keras.optimizers.Optimizer | str, comm: Any = None):
    """Wrap a Keras optimizer so that every update averages the gradients over MPI ranks.

    The Horovod pattern: a thin dynamic subclass of the optimizer's own class (same name, same
    module, same config), so a model saved with it loads with plain ``keras.saving.load_model``
    and no keraseq. Each ``apply`` sums all gradients with one fused ``Allreduce`` and divides
    by the number of ranks. Use it with plain ``model.fit`` too (``jit_compile=False``: the
    reduction is a host call) together with :class:`BroadcastWeightsCallback`.

    Example::

        opt = keraseq.distributed.DistributedOptimizer(keras.optimizers.Adam(1e-3))
        model.compile(opt, "mse", jit_compile=False)
        model.fit(x_shard, y_shard, callbacks=[keraseq.distributed.BroadcastWeightsCallback()])
    """
    if isinstance(optimizer, str):
        optimizer = keras.optimizers.get(optimizer)
    base = type(optimizer)
    if getattr(base, "_keraseq_distributed", False):
        return optimizer
    c = get_comm(comm if comm is not None else True)

    def apply(self, grads, trainable_variables=None):
        if c.size > 1 and not gradients_already_reduced():
            grads = list(grads)
            present = [k for k, g in enumerate(grads) if g is not None]
            reduced, _ = current().fused_allreduce(c, [grads[k] for k in present])
            for k, g in zip(present, reduced):
                grads[k] = g / c.size
        return base.apply(self, grads, trainable_variables)

    def apply_reduced(self, grads, trainable_variables=None):
        """Apply gradients that are already averaged over ranks (keraseq's window loop)."""
        return base.apply(self, grads, trainable_variables)

    cls: Any = type(
        base.__name__,
        (base,),
        {
            "apply": apply,
            "apply_reduced": apply_reduced,
            "_keraseq_distributed": True,
            "_keraseq_comm": c,
            "__module__": base.__module__,
            "__qualname__": base.__qualname__,
            "__doc__": base.__doc__,
        },
    )
    return cls.from_config(optimizer.get_config())


def broadcast_variables(variables: Sequence, comm, root: int = 0) -> None:
    """Overwrite ``variables`` on every rank with rank ``root``'s values (one buffer)."""
    if comm.size == 1 or not variables:
        return
    values = [np.asarray(v.numpy()) for v in variables]
    flat = np.concatenate([np.ravel(a).astype(np.float64) for a in values])
    comm.Bcast(flat, root=root)
    k = 0
    for v, a in zip(variables, values):
        v.assign(flat[k : k + a.size].reshape(a.shape).astype(a.dtype))
        k += a.size


class BroadcastWeightsCallback(keras.callbacks.Callback):
    """For plain ``model.fit``: broadcast weights and optimizer state from rank 0 at the start,
    so that every rank starts identical (Horovod's ``BroadcastGlobalVariablesCallback``)."""

    def __init__(self, root: int = 0, comm: Any = None):
        super().__init__()
        self.root = root
        self.comm = comm

    def on_train_begin(self, logs=None):
        c = get_comm(self.comm if self.comm is not None else "auto")
        opt = self.model.optimizer
        if opt is not None and not opt.built:
            opt.build(self.model.trainable_variables)
        variables = list(self.model.variables) + (list(opt.variables) if opt is not None else [])
        broadcast_variables(variables, c, self.root)
