"""The TensorFlow backend: the window programs as TensorFlow runs them, in-graph Allreduce,
devices.

What lives here: :class:`TensorFlowSteps`, the TensorFlow half of the window programs of
``backend/base.py`` (what differs from JAX: the variables assigned in place, a
``tf.GradientTape``, ``tf.function`` with or without XLA, the window step split around a host
Allreduce), and :func:`build_step_functions`, which builds it. One compiled graph call per
minibatch runs all its windows in a symbolic ``tf.while_loop``, so the graph, and the XLA
compile time, does not grow with the number of windows. Also here: the traced primitives the
base and the plan use (``while_loop``, ``cond``, ``scan``, ``slice_time``, ``pad_time``), the
Allreduce inside that graph (a host callback, or an XLA custom call from ``_mpi_xla``), XLA or
not for ``jit_compile="auto"`` (:func:`jit_for`), TensorFlow's devices and threads, and
host <-> tensor conversion.

What does not live here: what a window does (``backend/base.py``, shared with JAX), what both
backends share (``backend/common.py``: the gradient buffer's packing, the host side of the
Allreduce and its test delay, the GPU per local rank, the device scope), the backend-free
epoch loop (``trainer.py``), the state carry (``windows.py``), the per-window objectives
(``losses.py``), MPI on NumPy buffers (``distributed.py``), which layers take the fused loop
(``fused_rule.py``). The JAX twin of this module is the package ``backend/jax/``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from .. import fused_rule
from . import common
from .base import BaseSteps
from .common import StepFunctions

NAME = "tensorflow"


class _OwnRetracing(logging.Filter):
    """Drops TensorFlow's "triggered tf.function retracing" warning about keraseq's own
    programs: keraseq compiles one per window and minibatch shape on purpose (a grid search,
    many fits or predicts of other lengths in one process), and the warning would point users
    at their own code. The warning about any other function stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("triggered tf.function retracing" in message and "TensorFlowSteps." in message)


logging.getLogger("tensorflow").addFilter(_OwnRetracing())


def to_tensor(a):
    """A host array (or ``None``) as this backend's tensor."""
    return None if a is None else tf.convert_to_tensor(a)


def to_numpy(t) -> np.ndarray:
    return t.numpy() if hasattr(t, "numpy") else np.asarray(t)


#: Multiply-adds per window (rows x window steps x weights, roughly) from which
#: ``jit_compile="auto"`` runs the window loop as a plain TensorFlow graph on a CPU with several
#: cores: TensorFlow's intra-op threads share each large matmul, while XLA:CPU's loop runs on
#: one core. Measured (``benchmarks/bench_cores.py --tf``, 2 cores): the graph 1.28x faster at
#: the realistic size (106 M multiply-adds), even (1.04x) at 32 M, 0.88x at 13 M, 0.21x at the
#: seed size (0.17 M).
GRAPH_MIN_WORK = 60_000_000


def jit_for(
    model, setting, work: float = 0.0, distributed: bool = False, fused: bool = False
) -> bool:
    """``jit_compile="auto"`` follows Keras's own rule (``model_supports_jit``): XLA unless a
    layer opts out (an LSTM/GRU on a GPU does, to use cuDNN) or op determinism is on; and,
    in one process on a multi-core CPU, no XLA for windows of at least
    :data:`GRAPH_MIN_WORK` multiply-adds (``work``), unless every recurrent layer runs
    keraseq's fused loop (``fused``: ``fused_rnn`` is on and :func:`keraseq.fused.why_not`
    lets each layer take it). Under MPI XLA stays: the Allreduce is then inside the compiled
    loop, and a rank has its own core.

    The plain graph runs Keras's recurrent loop, faster there than Keras's loop under XLA;
    keraseq's fused loop under XLA is faster still (measured 2026-12-06, paired epochs, 2-core
    AMD EPYC: 1.63x on the character LM, 1.50x at the realistic size; see
    ``docs/performance/fused.md``)."""
    if setting != "auto":
        return bool(setting)
    from tensorflow.python.framework.config import is_op_determinism_enabled

    if (
        not all(getattr(layer, "supports_jit", True) for layer in model._flatten_layers())
        or is_op_determinism_enabled()
    ):
        return False
    if (
        not distributed
        and work >= GRAPH_MIN_WORK
        and common.usable_cores() >= 2
        and not tf.config.list_logical_devices("GPU")
        and not (fused and _all_fused(model))
    ):
        return False
    return True


def _all_fused(model) -> bool:
    """Whether ``model`` has recurrent layers and each one runs the fused loop under XLA."""
    layers = [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.RNN)
    ]
    return bool(layers) and all(
        fused_rule.why_not(layer, True, on_gpu, NAME) is None for layer in layers
    )


def dtype_of(name):
    return tf.as_dtype(name)


def shapes_of(model, fn: Callable, *args):
    """``fn(*args)`` (a call of ``model``), run eagerly: its outputs (an eager call keeps
    nothing behind on TensorFlow; on JAX it would, see ``backend/jax/core.py``)."""
    return fn(*args)


def release_eager_kernels() -> None:
    """Drop TensorFlow's cache of eager kernels (as ``keras.backend.clear_session`` does, without
    resetting Keras's names and graph). It keys a kernel by the op's attributes, and a
    variable's handle op names its variable: every model and optimizer made left ~0.6 MB
    behind, 0.59 MB per fit of a search (issue 24). Called once per fit."""
    from tensorflow.python.eager import context

    context.context().clear_kernel_cache()


def slice_time(a, start, length):
    """``a[:, start:start+length]`` with a static window length (XLA friendly).

    A runtime ``start`` is a gather of ``length`` steps, not ``tf.slice``: TensorFlow's XLA
    bridge takes a slice's ``begin`` as a compile-time constant wherever it can trace it back
    to a program argument, so with a chunk of windows starting at a runtime index (``first``,
    ``windows_per_call``) the program compiled anew for every chunk (1.1-1.5 s each on an
    LM-sized model). The gather compiles once and ran as fast (``docs/performance/fused.md``)."""
    if a is None:
        return None
    if isinstance(start, int):
        return a[:, start : start + length]
    return tf.gather(a, tf.cast(start, tf.int32) + tf.range(length), axis=1)


def pad_time(a, extra):
    """``a`` with ``extra`` zero steps appended on the time axis (axis 1)."""
    return tf.pad(a, [[0, 0], [0, extra]] + [[0, 0]] * (len(a.shape) - 2))


def cond(pred, true_fn, false_fn, operand):
    """``true_fn(operand) if pred else false_fn(operand)`` with a traced ``pred``."""
    return tf.cond(pred, lambda: true_fn(operand), lambda: false_fn(operand))


def while_loop(bound, body, init, maximum):
    """``i = 0; while i < bound: carry = body(i, carry)`` as a symbolic ``tf.while_loop``
    (``bound`` may be a tensor, at most ``maximum``): the graph holds one copy of ``body``."""
    _, out = tf.while_loop(
        lambda i, c: i < bound,
        lambda i, c: (i + 1, body(i, c)),
        (tf.constant(0), init),
        maximum_iterations=maximum,
    )
    return out


def scan(body, init, n: int):
    """``lax.scan`` over ``i = 0 .. n - 1`` (``body(carry, i) -> (carry, outputs)``): returns
    the final carry and each output stacked over ``i`` on a new first axis
    (:func:`time_scan` over ``tf.range(n)``)."""
    return time_scan(body, init, tf.range(n))


class TensorFlowSteps(BaseSteps):
    """The window programs (``backend/base.py``) on TensorFlow: the variables are assigned in
    place (``vals`` is ``()``), the gradient is a ``tf.GradientTape``'s, a program is a
    ``tf.function`` (``jit_compile``: XLA or a plain graph) whose window loop is a symbolic
    ``tf.while_loop``, so the graph, and the XLA compile time, does not grow with the number
    of windows.

    Under MPI, ``allreduce.xla`` (an XLA custom call that runs MPI_Allreduce, see
    :func:`graph_allreduce`) keeps the whole window loop, Allreduce included, ONE XLA program,
    exactly like the single-process loop. Without it (GPU, no compiler, or
    ``jit_compile=False``) the host callback ``allreduce(buf)`` cannot live inside XLA, so the
    window step is split in two XLA-compiled halves around it (:meth:`pack`, then
    :meth:`unpack_apply`) inside a plain-graph loop.
    """

    while_loop = staticmethod(while_loop)
    cond = staticmethod(cond)
    scan = staticmethod(scan)
    slice_time = staticmethod(slice_time)
    pad_time = staticmethod(pad_time)

    def __init__(self, *args, **kwargs):
        """The arguments of :func:`build_step_functions`."""
        super().__init__(*args, **kwargs)
        allreduce = self.allreduce
        xla_reduce = getattr(allreduce, "xla", None) if self.jit_compile else None
        if xla_reduce is not None:
            self.allreduce = xla_reduce  # the Allreduce inside the XLA program
        #: Whether the whole window loop is one program (no host-callback Allreduce inside).
        self.fused = allreduce is None or xla_reduce is not None
        if not self.fused and self.jit_compile:
            # Compiled per instance: the two XLA halves around the host-callback Allreduce.
            self.pack = tf.function(  # type: ignore[method-assign]
                self.pack, jit_compile=True, autograph=False
            )
            self.unpack_apply = tf.function(  # type: ignore[method-assign]
                self.unpack_apply, jit_compile=True, autograph=False
            )

    def in_model(self, vals, fn, collect_losses=False):
        return fn(), vals

    def value_and_grad(self, vals, fn):
        with tf.GradientTape() as tape:
            mean, aux = fn()
        grads = tape.gradient(mean, self.trainable)
        grads = [
            tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
            for g, v in zip(grads, self.trainable)
        ]
        return aux, grads, vals

    def metrics_scope(self, vals, fn):
        fn()
        return vals

    def apply(self, vals, grads):
        self.optimizer.apply(grads, self.trainable)
        return vals

    @staticmethod
    def program(method: Callable) -> Callable:
        """A program of ``BaseSteps`` as TensorFlow calls it: no ``vals`` in or out."""

        def fn(*args):
            return method((), *args)[0]

        return fn

    def step_functions(self) -> StepFunctions:
        # No AutoGraph: the programs' loops and branches are explicit (``while_loop``,
        # ``cond``), and Keras's own ``model.fit`` does not convert the model's code either
        # (``do_not_convert`` in ``keras/src/backend/tensorflow/trainer.py``). Converting it
        # was half of the tracing time.
        compile_ = lambda f: tf.function(
            self.program(f), jit_compile=self.jit_compile, reduce_retracing=False, autograph=False
        )
        train = None
        if self.optimizer is not None:
            # With the host-callback Allreduce the outer window loop stays a plain graph; its
            # two halves per window are XLA-compiled (see ``__init__``).
            train = (
                compile_(self.train)
                if self.fused
                else tf.function(self.program(self.train), jit_compile=False, autograph=False)
            )
        return StepFunctions(
            train=train,
            evaluate=compile_(self.evaluate),
            predict=compile_(self.predict),
            exact_rows=self.exact_rows,
            chunk_start=self.chunk_start,
        )


#: The compiled minibatch functions (the contract of ``backend/__init__.py``; what they do:
#: :class:`~keraseq.backend.base.BaseSteps`), built by :class:`TensorFlowSteps`.
build_step_functions = TensorFlowSteps.build


# ------------------------------------------------------------------------------- Allreduce
def _host_sum(comm, buf, delay: float = 0.0):
    """The sum of a flat float32 ``buf`` over ranks by a host call inside the graph
    (``tf.numpy_function``; not inside XLA)."""
    out = tf.numpy_function(common.host_sum(comm, delay), [buf], tf.float32, stateful=True)
    out.set_shape(buf.shape)
    return out


def fused_allreduce(comm, tensors: Sequence[tf.Tensor], extra: tf.Tensor | None = None):
    """Sum ``tensors`` (and ``extra``, a 1-D float32) over ranks with ONE ``Allreduce``
    (:func:`keraseq.backend.common.fused_allreduce`): one float32 buffer reduced by one host
    call inside the graph (``tf.numpy_function``), split back."""
    return common.fused_allreduce(tensors, extra, lambda flat: _host_sum(comm, flat))


def graph_allreduce(comm, device: str | None = None) -> Callable:
    """In-graph sum of one flat float32 buffer over ranks: one ``Allreduce`` per call.

    The returned ``reduce(buf)`` is a host callback (``tf.numpy_function``), usable in any
    graph but not inside XLA. Its attribute ``reduce.xla`` is the same reduction as an XLA
    custom call (``_mpi_xla``), which keeps the whole window loop one XLA program; it is
    ``None`` where that is unavailable (then the loop is split around the host callback).
    The test-only delay (:func:`keraseq.backend.common.allreduce_delay`) slows the
    host-callback path only (``jit_compile=False``).
    """
    delay = common.allreduce_delay()

    def reduce(buf):
        return _host_sum(comm, buf, delay)

    reduce.xla = None  # type: ignore[attr-defined]  # read by TensorFlowSteps
    if device is None or "GPU" not in device.upper():
        from .. import _mpi_xla

        reduce.xla = _mpi_xla.xla_allreduce(comm.comm)  # type: ignore[attr-defined]

    def path(jit: bool) -> tuple[str, str | None]:
        if jit and reduce.xla is not None:  # type: ignore[attr-defined]
            return "inside the XLA program (keraseq's XLA custom call)", None
        why = "jit_compile off" if not jit else "on a GPU"
        return f"as a host callback (tf.numpy_function) between graph pieces ({why})", None

    reduce.path = path  # type: ignore[attr-defined]  # read by session.build_steps
    return reduce


# ------------------------------------------------------------------------------------ devices
_threads_set = False


def default_device(comm) -> str:
    """``/GPU:{local_rank % n_gpus}`` when GPUs exist (with memory growth), else ``/CPU:0``
    (:func:`keraseq.backend.common.device_for_rank`).

    On the CPU with several ranks on one machine, TensorFlow's intra-op threads are split
    between the local ranks so that they do not oversubscribe the cores.
    """
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # already initialised
    if not gpus:
        _split_threads(comm)
    return common.device_for_rank(comm, len(gpus))


def _split_threads(comm) -> None:
    """Once per process, with several ranks: TensorFlow's threads per rank."""
    global _threads_set
    if comm.size == 1 or _threads_set:
        return
    _threads_set = True
    # Cores this rank may run on: Open MPI binds a rank to its cores by default (then use
    # them all), else the node's cores are shared by its ranks.
    total = os.cpu_count() or 1
    mine = common.usable_cores()
    per_rank = mine if mine < total else max(1, total // common.node_rank(comm)[1])
    try:
        tf.config.threading.set_intra_op_parallelism_threads(per_rank)
        tf.config.threading.set_inter_op_parallelism_threads(per_rank)
    except RuntimeError:
        pass  # TensorFlow already started; keep its setting


class device_scope(common.DeviceScope):
    """``tf.device(name)``, or nothing for ``None``."""

    context = staticmethod(tf.device)


# ------------------------------------------------------- primitives of the fused RNN loop
def on_gpu() -> bool:
    """Whether TensorFlow sees a GPU (where Keras's LSTM/GRU take cuDNN)."""
    return bool(tf.config.list_logical_devices("GPU"))


def time_scan(body, init, xs, reverse: bool = False):
    """``lax.scan`` on TensorFlow: ``body(carry, x) -> (carry, y)`` over the first axis of
    ``xs`` (a structure of tensors with a static first axis), each ``y`` stacked on a new first
    axis (in the order of ``xs``, also with ``reverse``). The first step is traced outside the
    loop (the ``TensorArray`` of each ``y`` needs its dtype and shape); the others run in a
    symbolic ``tf.while_loop``, each ``y`` written in place at its step. Both the window loop
    of ``predict`` (:func:`scan`) and the fused recurrent loop (``fused.py``) run on it."""
    from keras import tree

    flat = [tf.convert_to_tensor(a) for a in tree.flatten(xs)]
    n = int(flat[0].shape[0])
    first = n - 1 if reverse else 0
    carry, y0 = body(init, tree.pack_sequence_as(xs, [a[first] for a in flat]))
    y0_flat = tree.flatten(y0)
    if n == 1:
        return carry, tree.pack_sequence_as(y0, [y[None] for y in y0_flat])
    inputs = [tf.TensorArray(a.dtype, size=n, element_shape=a.shape[1:]).unstack(a) for a in flat]
    outputs = [
        tf.TensorArray(y.dtype, size=n, element_shape=y.shape).write(first, y) for y in y0_flat
    ]

    def step(k, carry, outputs):
        i = n - 2 - k if reverse else k + 1
        carry, ys = body(carry, tree.pack_sequence_as(xs, [ta.read(i) for ta in inputs]))
        return k + 1, carry, [ta.write(i, y) for ta, y in zip(outputs, tree.flatten(ys))]

    _, carry, outputs = tf.while_loop(
        lambda k, *_: k < n - 1,
        step,
        (tf.constant(0), carry, outputs),
        maximum_iterations=n - 1,
    )
    return carry, tree.pack_sequence_as(y0, [ta.stack() for ta in outputs])


def custom_vjp(forward: Callable, backward: Callable) -> Callable:
    """``f(*args) = forward(*args)[0]`` (a flat list of tensors) whose gradient is
    ``backward(saved, upstream)`` (one per argument; ``tf.custom_gradient``)."""

    def f(*args):
        @tf.custom_gradient
        def inner(*a):
            flat, saved = forward(*a)

            def grad(*upstream):
                upstream = [tf.zeros_like(o) if u is None else u for u, o in zip(upstream, flat)]
                return list(backward(saved, upstream))

            return list(flat), grad

        return inner(*args)

    return f


def elementwise_grad(fn: Callable, pre):
    """``fn'(pre)`` for an elementwise ``fn``: the gradient of ``sum(fn(pre))``."""
    with tf.GradientTape() as tape:
        tape.watch(pre)
        y = fn(pre)
    return tape.gradient(y, pre)
