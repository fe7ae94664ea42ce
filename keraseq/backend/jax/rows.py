"""A minibatch's rows split over JAX's CPU devices (one per core), on one process.

What lives here: :func:`row_replicas` (how many CPU devices share a minibatch's rows: the most
that divide them evenly with at least :data:`MIN_WORK_PER_DEVICE` of work each), the counter
:data:`split_calls` (read by the tests), and :class:`RowSplit`, the half of ``JaxSteps`` that
runs a program on several devices at once (``jax.shard_map``): training sums the gradient
buffer over the devices (``psum``) before the ranks, exactly as ranks sum theirs, so every
device applies the same update; prediction splits the independent rows; dropout draws other
masks per device. ``tests/test_cores.py`` and ``tests/test_progress.py`` set
:data:`MIN_WORK_PER_DEVICE` here.

What does not live here: the programs (``steps.py``: ``JaxSteps`` is a :class:`RowSplit`), how
many CPU devices JAX has (``devices.py`` asks for one per core), the Allreduce over ranks
(``mpi.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..base import BaseSteps

_ROWS = "rows"

#: Multiply-adds per device per window (rows x window steps x trainable weights, a rough
#: measure of the work) below which the rows stay on one device: at the seed size the
#: per-window synchronisation costs more than the second core gains (benchmarks/bench_cores.py).
MIN_WORK_PER_DEVICE = 4_000_000


#: Training calls that split their rows over several CPU devices (read by the tests).
split_calls = [0]


def row_replicas(rows: int, work: float) -> int:
    """The number of CPU devices to split ``rows`` over: the most that divide the rows evenly
    with at least :data:`MIN_WORK_PER_DEVICE` of ``work`` each, on a CPU-only run."""
    if jax.default_backend() != "cpu":
        return 1
    n = len(jax.devices("cpu"))
    for k in range(min(n, rows), 1, -1):
        if rows % k == 0 and work / k >= MIN_WORK_PER_DEVICE:
            return k
    return 1


def _first_shard(a):
    """Device 0's copy of an array replicated over several devices."""
    shards = getattr(a, "addressable_shards", None)
    return shards[0].data if shards and len(shards) > 1 else a


class RowSplit(BaseSteps):
    """The row split of the JAX programs (``JaxSteps`` supplies the variables' values,
    :meth:`current` and :meth:`assign`, and the programs ``train`` and ``predict``)."""

    non_trainable: list
    n_params: int
    current: Callable[[], Any]
    assign: Callable[..., None]

    def setup_rows(self, model) -> None:
        """What the split needs, read once from the model (after ``non_trainable``)."""
        #: True while the row-split program is traced (each device holds some rows).
        self.rows = False
        self.seeds = {
            id(sg.state)
            for layer in model._flatten_layers(include_self=True)
            for sg in getattr(layer, "_seed_generators", [])
        }
        self.programs: dict = {}  # (name, replicas) -> the jitted row-split program
        # Splitting the rows of a training minibatch keeps the result of one device (the same
        # maths, summed in another order). Not with MPI (one rank per core is the user's
        # choice there), not for models whose non-trainable state depends on the rows
        # (normalisation statistics), not for a callable loss that may mix rows. Dropout's
        # seed generators are the one non-trainable state allowed (see ``own_seeds``).
        self.can_shard = (
            self.allreduce is None
            and all(id(v) in self.seeds for v in self.non_trainable)
            and self.optimizer is not None
            and not self.exact_rows
        )

    @property
    def reduces(self) -> bool:
        return self.allreduce is not None or self.rows

    def reduce(self, buf):
        """Over the devices holding the rows (``psum``), then over the ranks."""
        if self.rows:
            buf = lax.psum(buf, _ROWS)
        return super().reduce(buf)

    def replicas_for(self, x) -> int:
        """How many CPU devices share this minibatch's rows (1: the plain program)."""
        if not self.can_shard:
            return 1
        rows, T = x[0].shape[0], x[0].shape[1]
        S = T if self.seq_len is None else min(self.seq_len, T)
        return row_replicas(rows, rows * S * self.n_params)

    def chunk_start(self, x, tm):
        """The zero states and accumulators the first chunk of a minibatch starts from (the
        per-series sums with one entry per device when the rows are split)."""
        states, acc = super().chunk_start(x, tm)
        k = self.replicas_for(x)
        if k > 1:
            acc = jax.tree.map(lambda a: jnp.broadcast_to(a, (k,) + a.shape), acc)
        return states, acc

    # ------------------------------------------------------------------ called on the host
    def train_split(self, k: int, x, y, w, m, tm, n_win, h0, chunk=None):
        """``train_call`` with the rows over ``k`` devices; the variables keep device 0's
        copy of the (replicated) new values."""
        split_calls[0] += 1
        kinds: list[Any] = ["all", "rows", "rows", "rows", "rows", "rows", "all", "rows"]
        out_kind: Any = "all"
        if chunk is not None:  # (first, final, per-device sums)
            kinds.append(("all", "all", "rows"))
            out_kind = ("all", "rows", "rows")
        result, new = self.on_devices(
            "train" if chunk is None else "train_chunk",
            self.train_rows,
            k,
            tuple(kinds),
            (out_kind, "all"),
        )(self.current(), x, y, w, m, tm, n_win, h0, *([] if chunk is None else [chunk]))
        # Replicated over the devices: the variables keep device 0's copy (no copy made).
        self.assign(tuple([_first_shard(a) for a in part] for part in new))
        if chunk is None:
            return _first_shard(result)
        return (_first_shard(result[0]),) + tuple(result[1:])

    def predict_split(self, k: int, tv, ntv, x, tm, h0):
        """``predict_call`` with the rows over ``k`` devices."""
        split_calls[0] += 1
        result, (_, ntv, _, _) = self.on_devices(
            "predict",
            self.predict_rows,
            k,
            ("all", "rows", "rows", "rows"),
            (("rows", "rows"), "all"),
        )((tv, ntv, [], []), x, tm, h0)
        # Outputs and states back on device 0, where the next call's arguments live.
        result = jax.device_put(result, jax.devices("cpu")[0])
        self.assign((None, [_first_shard(a) for a in ntv]), (1,))
        return result

    # ---------------------------------------------------------------- run on each device
    def train_rows(self, vals, x, y, w, m, tm, n_win, h0, chunk=None):
        """``train`` on this device's rows; the gradients are summed over devices per update
        (:meth:`reduce`), so every device applies the same update to the same weights. The
        minibatch's loss and count and the metrics' increments are summed at the end.

        A chunk's sums (loss, count, per-series gradients) are this device's own, summed over
        the devices as at the end of one call: between chunks they travel with a leading
        axis of one entry per device."""
        if chunk is not None:
            chunk = chunk[:2] + (jax.tree.map(lambda a: a[0], chunk[2]),)
        self.rows = True
        try:
            out, (tv, ntv, ov, mv) = self.train(
                self.own_seeds(vals), x, y, w, m, tm, n_win, h0, chunk
            )
        finally:
            self.rows = False
        result = out if chunk is None else out[0]
        result = jnp.concatenate([lax.psum(result[:2], _ROWS), result[2:]])
        mv = [a + lax.psum(b - a, _ROWS) for a, b in zip(vals[3], mv)]
        if chunk is not None:
            result = (result, out[1], jax.tree.map(lambda a: a[None], out[2]))
        return result, (tv, ntv, ov, mv)

    def own_seeds(self, vals):
        """Dropout draws from the seed generators' states: each device offsets its copy, so
        the rows of different devices get different masks; device 0's copy (offset 0) is the
        one kept, so the states advance as on one device."""
        offset = lax.axis_index(_ROWS).astype(jnp.uint32) * jnp.uint32(0x9E3779B9)
        ntv = [
            v + jnp.asarray([1, 0], v.dtype) * offset.astype(v.dtype)
            if id(var) in self.seeds
            else v
            for var, v in zip(self.non_trainable, vals[1])
        ]
        return (vals[0], ntv) + tuple(vals[2:])

    def predict_rows(self, vals, x, tm, h0):
        """``predict`` on this device's rows (its own dropout masks, e.g. Monte Carlo
        dropout with ``training=True``)."""
        return self.predict(self.own_seeds(vals), x, tm, h0)

    def on_devices(self, name, fn, k, in_kinds, out_kinds):
        """``fn`` run by ``k`` CPU devices at once, each on its share of the rows of the
        arguments marked ``"rows"`` (the others, ``"all"``, are copied to every device); an
        output marked ``"all"`` is device 0's."""
        if (name, k) in self.programs:
            return self.programs[name, k]
        from jax.sharding import Mesh, NamedSharding
        from jax.sharding import PartitionSpec as P

        mesh = Mesh(np.array(jax.devices("cpu")[:k]), (_ROWS,))
        spec = lambda kind: P(_ROWS) if kind == "rows" else P()
        program = jax.jit(
            jax.shard_map(
                fn,
                mesh=mesh,
                in_specs=jax.tree.map(spec, tuple(in_kinds)),
                out_specs=jax.tree.map(spec, out_kinds),
                check_vma=False,
            )
        )

        def place(a, kind):
            if isinstance(kind, tuple):  # a tuple of arguments of their own kinds
                return tuple(place(b, k) for b, k in zip(a, kind))
            return jax.device_put(a, NamedSharding(mesh, spec(kind)))

        def call(*args):
            # The arrays live on device 0 (committed there): place them on the devices.
            return program(*(place(a, kind) for a, kind in zip(args, in_kinds)))

        self.programs[name, k] = call
        return call
