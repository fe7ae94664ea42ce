"""The JAX backend: the window programs as JAX runs them, in-program Allreduce, devices.

What lives here: :class:`JaxSteps`, the JAX half of the window programs of ``backend/base.py``
(what differs from TensorFlow: the variables' values ``vals`` threaded through pure functions in
a ``keras.StatelessScope``, ``jax.value_and_grad``, the stateless optimizer update, ``jax.jit``
with donation, a minibatch's rows split over CPU devices), and :func:`build_step_functions`,
which builds it. One ``jax.jit`` program per minibatch runs all its windows in a
``lax.while_loop`` whose bound is a runtime value (the window count of a minibatch of unequal
lengths: no recompilation per count). Also here: the traced primitives the base and the plan
use (``while_loop``, ``cond``, ``scan``, ``slice_time``, ``pad_time``), the Allreduce inside
that program (``mpi4jax``, or a host callback on a GPU without CUDA-aware mpi4jax), cuDNN or
XLA's loop on a GPU (:func:`xla_rnn_loops`), device choice and placement, and host <-> array
conversion.

What does not live here: what a window does (``backend/base.py``, shared with TensorFlow), the
epoch loop, the state carry (``windows.py``), the objectives (``losses.py``), MPI on NumPy
buffers (``distributed.py``).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import keras
import numpy as np
from jax import lax

from .. import distributed as dist
from . import StepFunctions
from .base import BaseSteps

NAME = "jax"


def to_tensor(a):
    """A host array (or ``None``) as a JAX array (on the default device of the scope)."""
    return None if a is None else jnp.asarray(a)


def to_numpy(t) -> np.ndarray:
    return np.asarray(t)


def jit_for(
    model, setting, work: float = 0.0, distributed: bool = False, fused: bool = False
) -> bool:
    """Always True: on JAX, XLA (``jax.jit``) is the only compiler, and keraseq's window loop
    is always one compiled program, as on TensorFlow (where ``jit_compile=False`` still
    compiles a graph, without XLA). ``jit_compile=False`` therefore compiles too; to run op by
    op (prints and breakpoints in the model), wrap the call in ``with jax.disable_jit():``."""
    return True


def dtype_of(name):
    return jnp.dtype(name)


def shapes_of(model, fn: Callable, *args):
    """``fn(*args)`` (a call of ``model``) traced, not run: the outputs' shapes and dtypes
    (``jax.ShapeDtypeStruct``). Run eagerly, a recurrent layer's ``lax.scan`` would be
    compiled into JAX's cache of single primitives, keyed by its jaxpr (new for every model)
    and kept (up to 4096 programs): 1.5 MB per fit (issue 24). An unbuilt model, or a call
    that cannot be traced, runs eagerly (its variables are created, its errors raised there).
    """
    from keras.src.backend.common.stateless_scope import StatelessScope

    def traced(*a):
        with StatelessScope():  # a layer assigning a variable must not keep a tracer
            return fn(*a)

    if model.built and all(layer.built for layer in model._flatten_layers()):
        try:
            return jax.eval_shape(traced, *args)
        except Exception:
            pass
    return fn(*args)


def release_eager_kernels() -> None:
    """Nothing to do: JAX keeps no kernel per variable (TensorFlow does, see there)."""


def slice_time(a, start, length):
    """``a[:, start:start+length]``: ``start`` static or traced, ``length`` static."""
    if a is None:
        return None
    if isinstance(start, (int, np.integer)):
        return a[:, int(start) : int(start) + length]
    return lax.dynamic_slice_in_dim(a, start, length, axis=1)


def pad_time(a, extra):
    """``a`` with ``extra`` zero steps appended on the time axis (axis 1)."""
    return jnp.pad(a, [(0, 0), (0, extra)] + [(0, 0)] * (a.ndim - 2))


def cond(pred, true_fn, false_fn, operand):
    """``true_fn(operand) if pred else false_fn(operand)`` with a traced ``pred``."""
    return lax.cond(pred, true_fn, false_fn, operand)


def while_loop(bound, body, init, maximum=None):
    """``i = 0; while i < bound: carry = body(i, carry)`` (``bound`` may be traced)."""
    _, out = lax.while_loop(
        lambda c: c[0] < bound, lambda c: (c[0] + 1, body(c[0], c[1])), (_i32(0), init)
    )
    return out


def _i32(v):
    return jnp.asarray(v, jnp.int32)


def _check_float64(model) -> None:
    """JAX computes in float32 unless 64-bit mode is on: a float64 model would silently train
    in float32 (Keras's own ``fit`` would too). Refuse it, naming the layer."""
    if jax.config.jax_enable_x64:  # type: ignore[attr-defined]
        return
    for layer in model._flatten_layers(include_self=True, recursive=True):
        policy = getattr(layer, "dtype_policy", None)
        dtypes = {getattr(policy, "variable_dtype", None), getattr(policy, "compute_dtype", None)}
        if "float64" in dtypes:
            raise ValueError(
                f"layer {layer.name!r} ({type(layer).__name__}) is float64, but JAX runs in "
                f"32-bit mode, where it would compute in float32. Turn on JAX's 64-bit mode "
                f"before building the model: jax.config.update('jax_enable_x64', True) (or "
                f"JAX_ENABLE_X64=1), or use float32"
            )


def scan(body, init, n: int):
    """``lax.scan`` over ``i = 0 .. n - 1`` (``body(carry, i) -> (carry, outputs)``): the final
    carry and each output stacked over ``i`` on a new first axis."""
    return time_scan(body, init, jnp.arange(n, dtype=jnp.int32))


class JaxSteps(BaseSteps):
    """The window programs (``backend/base.py``) on JAX, as Keras's JAX trainer runs a step.

    A program is a pure function of ``vals = (trainable, non_trainable, optimizer, metric
    values)`` and the minibatch: the model runs inside a ``keras.StatelessScope`` over
    ``vals`` (what ``Layer.stateless_call`` does; the per-window objective calls the model
    itself), the gradient is ``jax.value_and_grad`` of that call, the optimizer update is
    applied statelessly and the metrics are updated in a scope over their variables. Each
    program is one ``jax.jit`` (training donates ``vals``: updated in place, as Keras's own
    JAX trainer does) whose window loop is a ``lax.while_loop`` with a runtime bound. The
    callables handed to the Estimator (:meth:`train_call`, ...) read the variables' values,
    call the program and assign the new values back, so the epoch loop stays backend-free.

    On a CPU with several devices a large minibatch's rows are split over them
    (:meth:`train_rows`, :func:`row_replicas`): the gradient buffer is summed over the
    devices (``psum``) before the ranks, exactly as ranks sum theirs.
    """

    while_loop = staticmethod(while_loop)
    cond = staticmethod(cond)
    scan = staticmethod(scan)
    slice_time = staticmethod(slice_time)
    pad_time = staticmethod(pad_time)

    def __init__(self, model: keras.Model, *args, **kwargs):
        """The arguments of :func:`build_step_functions`."""
        _check_float64(model)
        super().__init__(model, *args, **kwargs)
        optimizer = self.optimizer
        self.non_trainable = list(model.non_trainable_variables)
        self.opt_vars = [] if optimizer is None else list(optimizer.variables)
        self.metric_vars = [v for metric in self.metrics for v in metric.variables]
        #: True while the row-split program is traced (each device holds some rows).
        self.rows = False
        self.seeds = {
            id(sg.state)
            for layer in model._flatten_layers(include_self=True)
            for sg in getattr(layer, "_seed_generators", [])
        }
        self.programs: dict = {}  # (name, replicas) -> the jitted row-split program
        self.n_params = sum(self.sizes)
        # Splitting the rows of a training minibatch keeps the result of one device (the same
        # maths, summed in another order). Not with MPI (one rank per core is the user's
        # choice there), not for models whose non-trainable state depends on the rows
        # (normalisation statistics), not for a callable loss that may mix rows. Dropout's
        # seed generators are the one non-trainable state allowed (see ``own_seeds``).
        self.can_shard = (
            self.allreduce is None
            and all(id(v) in self.seeds for v in self.non_trainable)
            and optimizer is not None
            and not self.exact_rows
        )

    # ------------------------------------------------------------------ scopes over vals
    def scope(self, vals, with_opt=False, collect_losses=False):
        """A ``StatelessScope`` in which the model's variables (and the optimizer's) hold
        ``vals``."""
        tv, ntv, ov, _ = vals
        mapping = list(zip(self.trainable, tv)) + list(zip(self.non_trainable, ntv))
        if with_opt:
            mapping += list(zip(self.opt_vars, ov))
        return keras.StatelessScope(state_mapping=mapping, collect_losses=collect_losses)

    @staticmethod
    def read(scope, variables, old):
        """The values ``variables`` got in ``scope`` (``old`` where none was assigned)."""
        out = []
        for v, o in zip(variables, old):
            new = scope.get_current_value(v)
            out.append(o if new is None else jnp.asarray(new, jnp.dtype(o.dtype)))
        return out

    def in_model(self, vals, fn, collect_losses=False):
        tv, ntv, ov, mv = vals
        with self.scope(vals, collect_losses=collect_losses) as scope:
            out = fn()
        return out, (tv, self.read(scope, self.non_trainable, ntv), ov, mv)

    def value_and_grad(self, vals, fn):
        tv, ntv, ov, mv = vals

        def loss_fn(tv_):
            with self.scope((tv_, ntv, ov, mv), with_opt=True, collect_losses=True) as scope:
                mean, aux = fn()
                return mean, (aux, self.read(scope, self.non_trainable, ntv))

        (_, (aux, ntv)), grads = jax.value_and_grad(loss_fn, has_aux=True)(list(tv))
        grads = [jnp.asarray(g, dt) for g, dt in zip(grads, self.dtypes)]
        return aux, grads, (tv, ntv, ov, mv)

    def metrics_scope(self, vals, fn):
        tv, ntv, ov, mv = vals
        with keras.StatelessScope(state_mapping=list(zip(self.metric_vars, mv))) as scope:
            fn()
        return (tv, ntv, ov, self.read(scope, self.metric_vars, mv))

    def apply(self, vals, grads):
        tv, ntv, ov, mv = vals
        if self.loss_scaled:
            # Its stateful ``apply`` updates the scale inside ``ops.cond`` branches, which
            # JAX cannot trace; ``stateless_apply`` is what Keras's JAX trainer calls.
            new_tv, new_ov = self.optimizer.stateless_apply(list(ov), grads, list(tv))
            return (
                [jnp.asarray(a, jnp.dtype(o.dtype)) for a, o in zip(new_tv, tv)],
                ntv,
                [jnp.asarray(a, jnp.dtype(o.dtype)) for a, o in zip(new_ov, ov)],
                mv,
            )
        mapping = list(zip(self.trainable, tv)) + list(zip(self.opt_vars, ov))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            self.optimizer.apply(grads, self.trainable)
        return (
            self.read(scope, self.trainable, tv),
            ntv,
            self.read(scope, self.opt_vars, ov),
            mv,
        )

    @property
    def reduces(self) -> bool:
        return self.allreduce is not None or self.rows

    def reduce(self, buf):
        """Over the devices holding the rows (``psum``), then over the ranks."""
        if self.rows:
            buf = lax.psum(buf, _ROWS)
        return super().reduce(buf)

    # --------------------------------------------------------------- compiled and called
    def step_functions(self) -> StepFunctions:
        # Always compiled (see jit_for): ``jit_compile`` chooses XLA or not on TensorFlow only.
        train = xla_rnn_loops(self.model, self.seq_len, self.train)
        self.train_c = jax.jit(train, donate_argnums=(0,))
        self.evaluate_c = jax.jit(self.evaluate)
        self.predict_c = jax.jit(self.predict)
        return StepFunctions(
            train=None if self.optimizer is None else self.train_call,
            evaluate=self.evaluate_call,
            predict=self.predict_call,
            exact_rows=self.exact_rows,
            chunk_start=self.chunk_start,
        )

    def current(self):
        """The variables' values. ``train`` donates them, and XLA refuses one buffer donated
        twice: two variables that share a buffer (one assigned from the other's value) get a
        copy."""
        seen = set()

        def own(a):
            if id(a) in seen:
                return jnp.array(a, copy=True)
            seen.add(id(a))
            return a

        parts = (self.trainable, self.non_trainable, self.opt_vars, self.metric_vars)
        return tuple([own(v.value) for v in part] for part in parts)

    def assign(self, vals, parts=(0, 1, 2, 3)):
        """Assign ``vals`` (those of ``parts``) back to the variables."""
        variables = (self.trainable, self.non_trainable, self.opt_vars, self.metric_vars)
        for k in parts:
            for v, a in zip(variables[k], vals[k]):
                v._direct_assign(a)

    def train_call(self, x, y, w, m, tm, n_win, h0, chunk=None):
        k = self.replicas_for(x)
        if k == 1:
            result, vals = self.train_c(self.current(), x, y, w, m, tm, n_win, h0, chunk)
            self.assign(vals)
            return result
        split_calls[0] += 1
        kinds = ["all", "rows", "rows", "rows", "rows", "rows", "all", "rows"]
        out_kind = "all"
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

    def evaluate_call(self, x, y, w, m, tm, n_win, h0):
        result, vals = self.evaluate_c(self.current(), x, y, w, m, tm, n_win, h0)
        self.assign(vals, (1, 3))
        return result

    def predict_call(self, x, tm, h0):
        tv, ntv, _, _ = self.current()
        rows, T = x[0].shape[0], x[0].shape[1]
        # Rows are independent in inference (dropout off, normalisation by its moving
        # statistics) and the devices never wait for each other: split when the work pays.
        k = row_replicas(rows, rows * T * self.n_params)
        if k == 1:
            result, vals = self.predict_c((tv, ntv, [], []), x, tm, h0)
            self.assign(vals, (1,))
            return result
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

    def chunk_start(self, x, tm):
        """The zero states and accumulators the first chunk of a minibatch starts from (the
        per-series sums with one entry per device when the rows are split)."""
        states, acc = super().chunk_start(x, tm)
        k = self.replicas_for(x)
        if k > 1:
            acc = jax.tree.map(lambda a: jnp.broadcast_to(a, (k,) + a.shape), acc)
        return states, acc

    # ------------------------------------------------------------- rows over the CPU devices
    def replicas_for(self, x) -> int:
        """How many CPU devices share this minibatch's rows (1: the plain program)."""
        if not self.can_shard:
            return 1
        rows, T = x[0].shape[0], x[0].shape[1]
        S = T if self.seq_len is None else min(self.seq_len, T)
        return row_replicas(rows, rows * S * self.n_params)

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


#: The compiled minibatch functions (the contract of ``backend/__init__.py``; what they do:
#: :class:`~keraseq.backend.base.BaseSteps`), built by :class:`JaxSteps`. Float64 models
#: need JAX's 64-bit mode (refused otherwise).
build_step_functions = JaxSteps.build


# ------------------------------------------------------------------- cuDNN or XLA's loop
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


# ------------------------------------------------------------------- rows over CPU devices
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


def _wanted_cpu_devices() -> int:
    """How many CPU devices keraseq asks JAX for: ``KERASEQ_CPU_DEVICES`` if set, else the
    cores this process may run on; 1 under ``mpirun`` with several ranks (one rank per core
    is the user's choice there)."""
    env = os.environ.get("KERASEQ_CPU_DEVICES", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"KERASEQ_CPU_DEVICES={env!r}: expected a whole number >= 1")
        return int(env)
    return 1 if dist.launched_with_several_ranks() else dist.usable_cores()


def _ask_for_cpu_devices() -> None:
    """One JAX CPU device per core (``jax_num_cpu_devices``), so a minibatch's rows can run on
    every core (:func:`row_replicas`). Only when neither the user (the config value or
    ``--xla_force_host_platform_device_count``) nor an earlier use of JAX fixed it already."""
    fixed = jax.config.jax_num_cpu_devices != -1  # type: ignore[attr-defined]
    if fixed or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    wanted = _wanted_cpu_devices()
    if wanted <= 1:
        return
    try:
        jax.config.update("jax_num_cpu_devices", wanted)
    except Exception:  # JAX's backends are up already: keep what they have
        pass


_ask_for_cpu_devices()


# ------------------------------------------------------------------------------- Allreduce
def _mpi4jax():
    try:
        import mpi4jax
    except ImportError:
        return None
    return mpi4jax


def _host_allreduce(comm, buf, delay=0.0):
    """The sum of ``buf`` over ranks by a host callback (any device, inside jit)."""
    from jax.experimental import io_callback

    def host(a):
        if delay:
            time.sleep(delay)
        return dist._flat_allreduce(comm, np.ascontiguousarray(a, np.float32))

    return io_callback(host, jax.ShapeDtypeStruct(buf.shape, jnp.float32), buf, ordered=True)


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


def _mpi4jax_has_cuda(mpi4jax) -> bool:
    check = getattr(mpi4jax, "has_cuda_support", None)
    return bool(check()) if check is not None else False


def fused_allreduce(comm, tensors: Sequence, extra=None):
    """Sum ``tensors`` (and ``extra``, a 1-D float32) over ranks with ONE ``Allreduce``.

    All tensors are flattened into one float32 buffer in the given order (the same on every
    rank), summed (``mpi4jax`` inside jit, or a host callback), and split back."""
    parts = [jnp.reshape(jnp.asarray(t).astype(jnp.float32), (-1,)) for t in tensors]
    if extra is not None:
        parts.append(jnp.reshape(jnp.asarray(extra).astype(jnp.float32), (-1,)))
    flat = jnp.concatenate(parts, 0)
    reduced = _sum_over_ranks(comm, flat)
    sizes = [int(np.prod(jnp.shape(t))) for t in tensors]
    if extra is not None:
        sizes.append(int(jnp.shape(extra)[0]))
    pieces = jnp.split(reduced, np.cumsum(sizes)[:-1].tolist())
    out = [
        jnp.reshape(p, jnp.shape(t)).astype(jnp.asarray(t).dtype) for p, t in zip(pieces, tensors)
    ]
    return out, (pieces[-1] if extra is not None else None)


def graph_allreduce(comm, device: str | None = None) -> Callable:
    """Sum of one flat float32 buffer over ranks, usable inside ``jax.jit``: one
    ``Allreduce`` per call, by ``mpi4jax`` (an XLA custom call: the whole window loop stays
    one program), or by a host callback (``io_callback``) on a GPU when mpi4jax was built
    without CUDA, or when mpi4jax is not installed."""
    # Test-only hook: an artificial delay per Allreduce, in seconds, to model a slow network
    # (this machine's kernel has no netem): the host-callback path sleeps before each one.
    delay = float(os.environ.get("KERASEQ_TEST_ALLREDUCE_DELAY_S", "0") or 0.0)
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


# ------------------------------------------------------------------------------------ devices
def _device(name: str):
    """A JAX device from a name: ``"/GPU:1"``, ``"gpu:1"``, ``"/CPU:0"``, ``"cpu"``."""
    match = re.fullmatch(r"/?(?:device:)?([A-Za-z]+)(?::(\d+))?", name.strip())
    if match is None:
        raise ValueError(f"device={name!r}: expected a name like '/GPU:0' or '/CPU:0'")
    kind, index = match.group(1).lower(), int(match.group(2) or 0)
    try:
        devices = jax.devices(kind)
    except RuntimeError as exc:
        raise ValueError(f"device={name!r}: JAX has no {kind} device ({exc})") from exc
    if index >= len(devices):
        raise ValueError(f"device={name!r}: JAX has {len(devices)} {kind} device(s)")
    return devices[index]


def default_device(comm) -> str:
    """``/GPU:{local_rank % n_gpus}`` when JAX sees GPUs, else ``/CPU:0``.

    (XLA's CPU thread pool is sized when JAX starts; ranks sharing a node share its cores.)"""
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        gpus = []
    if gpus:
        return f"/GPU:{dist.local_rank(comm) % len(gpus)}"
    return "/CPU:0"


class device_scope:
    """``jax.default_device(device)`` for a name such as ``"/GPU:0"``; nothing for ``None``."""

    def __init__(self, name: str | None):
        self.name = name
        self._ctx = None

    def __enter__(self):
        if self.name is not None:
            self._ctx = jax.default_device(_device(self.name))
            self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        if self._ctx is not None:
            return self._ctx.__exit__(*exc)
        return False


# ------------------------------------------------------- primitives of the fused RNN loop
def on_gpu() -> bool:
    """Whether JAX computes on a GPU (where Keras's LSTM/GRU may take cuDNN)."""
    return _on_gpu_backend()


def time_scan(body, init, xs, reverse: bool = False):
    """``lax.scan(body, init, xs, reverse)``: ``body(carry, x) -> (carry, y)`` over the first
    axis of ``xs`` (a pytree), each ``y`` stacked on a new first axis."""
    return lax.scan(body, init, xs, reverse=reverse)


def custom_vjp(forward: Callable, backward: Callable) -> Callable:
    """``f(*args) = forward(*args, save=False)[0]`` (a flat list of arrays) whose gradient is
    ``backward(saved, cotangents)`` (one per argument), ``saved`` from ``forward(*args)``."""

    @jax.custom_vjp
    def f(*args):
        return forward(*args, save=False)[0]

    f.defvjp(lambda *args: forward(*args), lambda saved, cts: tuple(backward(saved, list(cts))))
    return f


def elementwise_grad(fn: Callable, pre):
    """``fn'(pre)`` for an elementwise ``fn``: its vector-Jacobian product with ones."""
    _, vjp = jax.vjp(fn, pre)
    return vjp(jnp.ones_like(pre))[0]
