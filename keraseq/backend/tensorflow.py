"""The TensorFlow backend: compiled window loops, in-graph Allreduce, devices.

What lives here: :func:`build_step_functions` (one compiled graph call per minibatch runs all
its windows ``[0:S], [S:2S], ...`` -- forward, loss, gradient, optimizer update -- in a symbolic
``tf.while_loop``, so the graph, and the XLA compile time, does not grow with the number of
windows), the Allreduce inside that graph (a host callback, or an XLA custom call from
``_mpi_xla``), device choice and placement, and host <-> tensor conversion.

What does not live here: the backend-free epoch loop (``trainer.py``), the state carry
(``windows.py``), the per-window objectives (``losses.py``), MPI on NumPy buffers
(``distributed.py``). The JAX twin of this module is ``backend/jax.py``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import tree

from .. import distributed as dist
from ..losses import metric_updates, output_mask
from ..windows import StateCarry
from . import StepFunctions
from .plan import WindowPlan

NAME = "tensorflow"


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


def jit_for(model, setting, work: float = 0.0, distributed: bool = False) -> bool:
    """``jit_compile="auto"`` follows Keras's own rule (``model_supports_jit``): XLA unless a
    layer opts out (an LSTM/GRU on a GPU does, to use cuDNN) or op determinism is on; and,
    in one process on a multi-core CPU, no XLA for windows of at least
    :data:`GRAPH_MIN_WORK` multiply-adds (``work``). Under MPI XLA stays: the Allreduce is
    then inside the compiled loop, and a rank has its own core."""
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
        and dist.usable_cores() >= 2
        and not tf.config.list_logical_devices("GPU")
    ):
        return False
    return True


def dtype_of(name):
    return tf.as_dtype(name)


def shapes_of(model, fn: Callable, *args):
    """``fn(*args)`` (a call of ``model``), run eagerly: its outputs (an eager call keeps
    nothing behind on TensorFlow; on JAX it would, see ``backend/jax.py``)."""
    return fn(*args)


def release_eager_kernels() -> None:
    """Drop TensorFlow's cache of eager kernels (as ``keras.backend.clear_session`` does, without
    resetting Keras's names and graph). It keys a kernel by the op's attributes, and a
    variable's handle op names its variable: every model and optimizer made left ~0.6 MB
    behind, 0.59 MB per fit of a search (issue 24). Called once per fit."""
    from tensorflow.python.eager import context

    context.context().clear_kernel_cache()


def slice_time(a, start, length):
    """``a[:, start:start+length]`` with a static window length (XLA friendly)."""
    if a is None:
        return None
    rank = len(a.shape)
    begin = [0, start] + [0] * (rank - 2)
    size = [-1, length] + [-1] * (rank - 2)
    return tf.slice(a, tf.stack([tf.cast(b, tf.int32) for b in begin]), size)


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


def build_step_functions(
    model: keras.Model,
    carry: StateCarry,
    state_specs: list[list[tuple[tuple, Any]]],
    objective: Callable,
    optimizer: keras.optimizers.Optimizer | None,
    metrics: list,
    seq_len: int | None,
    per_series: bool,
    jit_compile: bool,
    allreduce: Callable | None = None,
    sync_every: int = 1,
) -> StepFunctions:
    """Build the three compiled minibatch functions.

    ``objective(forward, xw, yw, ww, mw, training, states)`` returns
    ``(loss_sum, count, reg, y_pred, new_states)`` for one window (see ``losses.py``):
    ``loss_sum / count`` is the window's mean loss, ``count`` the number of loss elements that
    are not masked, ``reg`` the regularisation losses; ``forward(states, fn)`` runs ``fn()``
    (which calls the model) starting from ``states`` and returns ``(fn(), new_states)``.
    ``state_specs`` gives, per RNN call, the per-series shapes and dtypes of its states (probed
    once on real data).

    ``train(x, y, w, m, h0)`` runs every window of one minibatch: forward, loss, gradient,
    optional ``allreduce(buffer) -> summed buffer`` of one flat float32 buffer holding every
    count-weighted gradient, the count and a non-finite flag (one collective per update; the
    result is the count-weighted mean gradient over ranks), optimizer update; it skips (and
    reports) the first window whose loss or gradient is not finite and every window after it,
    so the weights stay those from before the bad update. ``h0`` is the initial state (``None``:
    zeros). It returns one float tensor ``[loss_sum, count, bad_window]`` (one transfer to the
    host), ``bad_window = -1`` when all were finite.

    ``train(x, y, w, m, tm, n_win, h0, chunk)`` with ``chunk = (first, final, acc)`` trains
    one chunk of a minibatch (``backend/__init__.py``): windows ``first .. n_win - 1``, from
    the states ``h0``, the minibatch's end (tail window, per-series update) only when
    ``final``; it returns ``(result, final states, acc)``, where ``acc`` is what the next
    chunk continues from (the loss sum and count so far; with per-series targets of unequal
    lengths also the finite flag and the gradient sums).
    """
    trainable = model.trainable_variables
    loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    # A DistributedOptimizer's own ``apply`` would reduce again: the loop reduces already, so
    # it applies inside ``gradients_reduced()`` (which also reaches a DistributedOptimizer
    # wrapped by compile's LossScaleOptimizer under mixed_float16).
    apply_grads = None if optimizer is None else optimizer.apply

    def zero_states(x0):
        batch = tf.shape(x0)[0]
        return [
            [tf.zeros(tf.concat([[batch], shape], 0), dtype) for shape, dtype in spec]
            for spec in state_specs
        ]

    plan = WindowPlan(
        carry, seq_len, per_series, while_loop, slice_time, pad_time, zero_states, cond
    )

    def forward(states, fn):
        """Run ``fn()`` (which calls the model) from ``states``; return (result, new states)."""
        carry.feed(states)
        result = fn()
        return result, [[tf.stop_gradient(s) for s in c] for c in carry.collected()]

    def run_model(xw, states, training):
        return forward(states, lambda: model(xw if len(xw) > 1 else xw[0], training=training))

    def update_metrics(yw, y_pred, ww, mw):
        if not metrics:
            return
        preds = tree.flatten(y_pred)
        for metric, yt, yp, sw in metric_updates(
            metrics, yw, preds, [output_mask(p) for p in preds], ww, mw
        ):
            metric.update_state(yt, yp, sample_weight=sw)

    # ----------------------------------------------------------------------------------- train
    shapes = [tuple(v.shape) for v in trainable]
    sizes = [int(np.prod(sh)) for sh in shapes]
    dtypes = [v.dtype for v in trainable]  # float64 models keep float64 gradients

    def gradients(xw, yw, ww, mw, states):
        """Forward, loss and gradient of one window; metrics updated.

        With a ``LossScaleOptimizer`` (mixed_float16, as ``compile`` sets up) the gradient is
        that of the scaled loss; the optimizer unscales it, and skips updates whose gradient
        overflowed while it lowers the scale, so only a non-finite loss counts as a fault."""
        with tf.GradientTape() as tape:
            loss_sum, count, reg, y_pred, new_states = objective(
                forward, xw, yw, ww, mw, True, states
            )
            # (float64 when floatx is: see losses.loss_dtype)
            mean = loss_sum / tf.cast(tf.maximum(count, 1.0), loss_sum.dtype) + reg
            if loss_scaled:
                mean = optimizer.scale_loss(mean)
        grads = tape.gradient(mean, trainable)
        grads = [
            tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
            for g, v in zip(grads, trainable)
        ]
        loss_sum, reg = tf.cast(loss_sum, tf.float32), tf.cast(reg, tf.float32)
        # One fused reduction: a NaN or Inf anywhere makes the sum non-finite.
        finite = tf.math.is_finite(
            tf.add_n(
                [loss_sum]
                + ([] if loss_scaled else [tf.cast(tf.reduce_sum(g), tf.float32) for g in grads])
            )
        )
        update_metrics(yw, y_pred, ww, mw)
        return grads, finite, loss_sum + reg * count, count, new_states

    def apply_checked(grads, finite, count, bad, step):
        """Apply unless a non-finite value appeared (now or in an earlier window) or the
        window has no unmasked loss element (``count == 0``: all padding)."""
        ok = tf.logical_and(finite, bad < 0)

        def apply():
            with dist.gradients_reduced():
                apply_grads(grads, trainable)
            return tf.constant(0)

        tf.cond(tf.logical_and(ok, count > 0), apply, lambda: tf.constant(0))
        return tf.where(tf.logical_or(ok, bad >= 0), bad, step), ok

    # Under MPI, ``allreduce.xla`` (an XLA custom call that runs MPI_Allreduce, see
    # distributed.graph_allreduce) keeps the whole window loop, Allreduce included, ONE XLA
    # program, exactly like the single-process loop. Without it (GPU, no compiler, or
    # jit_compile=False) the host callback ``allreduce(buf)`` cannot live inside XLA, so the
    # window step is split in two XLA-compiled halves around it inside a plain-graph loop.
    xla_reduce = (
        getattr(allreduce, "xla", None) if (allreduce is not None and jit_compile) else None
    )
    fused = allreduce is None or xla_reduce is not None

    # (1) forward + backward, packing count-weighted gradients, the count and a non-finite
    # flag into ONE flat buffer; (2) unpack the summed buffer, divide by the total count, apply.
    def pack_buffer(weighted_grads, count, finite):
        return tf.concat(
            [tf.reshape(tf.cast(g, tf.float32), [-1]) for g in weighted_grads]
            + [tf.stack([count, 1.0 - tf.cast(finite, tf.float32)])],
            0,
        )

    def pack(xw, yw, ww, mw, states):
        grads, finite, loss_sum, count, new_states = gradients(xw, yw, ww, mw, states)
        return (
            pack_buffer([g * tf.cast(count, g.dtype) for g in grads], count, finite),
            loss_sum,
            count,
            new_states,
        )

    def unpack_apply(summed, bad, step):
        pieces = tf.split(summed, sizes + [2])
        total, nonfinite = pieces[-1][0], pieces[-1][1]
        grads = [
            tf.cast(tf.reshape(p, sh) / tf.maximum(total, 1e-12), dt)
            for p, sh, dt in zip(pieces[:-1], shapes, dtypes)
        ]
        return apply_checked(grads, nonfinite < 0.5, total, bad, step)

    if allreduce is None:

        def learn_window(xw, yw, ww, mw, states, bad, step):
            grads, finite, loss_sum, count, new_states = gradients(xw, yw, ww, mw, states)
            bad, ok = apply_checked(grads, finite, count, bad, step)
            return bad, ok, loss_sum, count, new_states

        def reduce_apply(buf, bad, step):
            return unpack_apply(buf, bad, step)
    elif xla_reduce is not None:

        def learn_window(xw, yw, ww, mw, states, bad, step):
            buf, loss_sum, count, new_states = pack(xw, yw, ww, mw, states)
            bad, ok = unpack_apply(xla_reduce(buf), bad, step)
            return bad, ok, loss_sum, count, new_states

        def reduce_apply(buf, bad, step):
            return unpack_apply(xla_reduce(buf), bad, step)
    else:
        pack_c, unpack_apply_c = pack, unpack_apply
        if jit_compile:
            pack_c = tf.function(pack, jit_compile=True)
            unpack_apply_c = tf.function(unpack_apply, jit_compile=True)

        def learn_window(xw, yw, ww, mw, states, bad, step):
            buf, loss_sum, count, new_states = pack_c(xw, yw, ww, mw, states)
            bad, ok = unpack_apply_c(allreduce(buf), bad, step)
            return bad, ok, loss_sum, count, new_states

        def reduce_apply(buf, bad, step):
            return unpack_apply_c(allreduce(buf), bad, step)

    def train_window(xw, yw, ww, mw, states, acc):
        loss_acc, count_acc, bad, step = acc
        bad, ok, loss_sum, count, new_states = learn_window(xw, yw, ww, mw, states, bad, step)
        loss_acc = loss_acc + tf.where(ok, loss_sum, 0.0)
        count_acc = count_acc + tf.where(ok, count, 0.0)
        return new_states, (loss_acc, count_acc, bad, step + 1)

    def loop(x, y, w, m, tm, n_win, h0, window_fn, acc, first=None, final=None):
        """Run ``window_fn`` over the windows of a minibatch (see ``plan.WindowPlan.run``)."""
        return plan.run(x, y, w, m, tm, n_win, h0, window_fn, acc, first, final)

    def train(x, y, w, m, tm, n_win, h0, chunk=None):
        if per_series and tm is not None:
            return train_series(x, y, w, m, tm, n_win, h0, chunk)
        if sync_every > 1 and not per_series:
            return train_accumulated(x, y, w, m, tm, n_win, h0, chunk)
        first, final, (loss0, count0) = (None, None, zero_sums()) if chunk is None else chunk

        def window_fn(xw, yw, ww, mw, states, acc, has_loss):
            if not has_loss:
                _, new_states = run_model(xw, states, True)
                return new_states, acc
            return train_window(xw, yw, ww, mw, states, acc)

        acc = (loss0, count0, tf.constant(-1), tf.constant(0) if first is None else first)
        states, acc = loop(x, y, w, m, tm, n_win, h0, window_fn, acc, first, final)
        # One tensor, so the host fetches the minibatch's result with one transfer.
        result = tf.stack([acc[0], acc[1], tf.cast(acc[2], tf.float32)])
        return result if chunk is None else (result, states, (acc[0], acc[1]))

    def zero_sums():
        """The loss sum and count a minibatch starts from (a chunk: the previous one's)."""
        return tf.constant(0.0), tf.constant(0.0)

    def zero_series_acc():
        """What a chunk of ``train_series`` continues from: loss, count, finite, gradients."""
        return (
            tf.constant(0.0),
            tf.constant(0.0),
            tf.constant(True),
            [tf.zeros(sh, dt) for sh, dt in zip(shapes, dtypes)],
        )

    def train_series(x, y, w, m, tm, n_win, h0, chunk=None):
        """Per-series targets of unequal lengths: each row's loss lives in the window of its
        last real step, so the count-weighted gradients of every window are summed and
        applied in ONE update per minibatch (as for equal lengths), one Allreduce under MPI."""

        def window_fn(xw, yw, ww, mw, states, acc):
            loss_acc, count_acc, finite_acc, grads_acc = acc
            grads, finite, loss_sum, count, new_states = gradients(xw, yw, ww, mw, states)
            grads_acc = [a + g * tf.cast(count, g.dtype) for a, g in zip(grads_acc, grads)]
            return new_states, (
                loss_acc + loss_sum,
                count_acc + count,
                tf.logical_and(finite_acc, finite),
                grads_acc,
            )

        first, final, acc = (None, None, zero_series_acc()) if chunk is None else chunk
        states, acc = loop(
            x, y, w, m, tm, n_win, h0, lambda *a: window_fn(*a[:6]), acc, first, final
        )
        loss_sum, count, finite, grads_acc = acc

        def update():
            return reduce_apply(
                pack_buffer(grads_acc, count, finite), tf.constant(-1), tf.constant(0)
            )

        if chunk is None:
            bad, ok = update()
        else:
            # A chunk before the last one only sums (and reports the sums so far): the update
            # comes with the minibatch's end.
            bad, ok = tf.cond(final, update, lambda: (tf.constant(-1), tf.constant(True)))
        result = tf.stack(
            [tf.where(ok, loss_sum, 0.0), tf.where(ok, count, 0.0), tf.cast(bad, tf.float32)]
        )
        return result if chunk is None else (result, states, acc)

    def train_accumulated(x, y, w, m, tm, n_win, h0, chunk=None):
        """``sync_every = k > 1`` (for slow networks): the count-weighted gradients of k
        consecutive windows are summed and applied in one update, one Allreduce per k windows
        (and one for a remainder at the minibatch's end). Windows still carry the state; the
        gradient of each is still cut at its borders. Same on every rank: the window count is
        agreed, so every rank flushes at the same windows. A chunk starts at a multiple of k
        (the trainer's chunks are whole multiples of k), so it flushes where the whole call
        does."""
        zeros = lambda: [tf.zeros(sh, dt) for sh, dt in zip(shapes, dtypes)]

        def flush(acc):
            loss_acc, count_acc, bad, step, p_loss, p_count, p_finite, p_grads = acc
            bad, ok = reduce_apply(pack_buffer(p_grads, p_count, p_finite), bad, step - 1)
            return (
                loss_acc + tf.where(ok, p_loss, 0.0),
                count_acc + tf.where(ok, p_count, 0.0),
                bad,
                step,
                tf.constant(0.0),
                tf.constant(0.0),
                tf.constant(True),
                zeros(),
            )

        def window_fn(xw, yw, ww, mw, states, acc, has_loss):
            loss_acc, count_acc, bad, step, p_loss, p_count, p_finite, p_grads = acc
            grads, finite, loss_sum, count, new_states = gradients(xw, yw, ww, mw, states)
            acc = (
                loss_acc,
                count_acc,
                bad,
                step + 1,
                p_loss + loss_sum,
                p_count + count,
                tf.logical_and(p_finite, finite),
                [a + g * tf.cast(count, g.dtype) for a, g in zip(p_grads, grads)],
            )
            acc = tf.cond(tf.equal((step + 1) % sync_every, 0), lambda: flush(acc), lambda: acc)
            return new_states, acc

        first, final, (loss0, count0) = (None, None, zero_sums()) if chunk is None else chunk
        acc = (
            loss0,
            count0,
            tf.constant(-1),
            tf.constant(0) if first is None else first,
            tf.constant(0.0),
            tf.constant(0.0),
            tf.constant(True),
            zeros(),
        )
        states, acc = loop(x, y, w, m, tm, n_win, h0, window_fn, acc, first, final)
        # A remainder of fewer than k windows: one more update (the same on every rank).
        acc = tf.cond(tf.equal(acc[3] % sync_every, 0), lambda: acc, lambda: flush(acc))
        result = tf.stack([acc[0], acc[1], tf.cast(acc[2], tf.float32)])
        return result if chunk is None else (result, states, (acc[0], acc[1]))

    # -------------------------------------------------------------------------------- evaluate
    def evaluate(x, y, w, m, tm, n_win, h0):
        def window_fn(xw, yw, ww, mw, states, acc, has_loss):
            if not has_loss:
                _, new_states = run_model(xw, states, False)
                return new_states, acc
            loss_sum, count, reg, y_pred, new_states = objective(
                forward, xw, yw, ww, mw, False, states
            )
            update_metrics(yw, y_pred, ww, mw)
            loss_acc, count_acc, bad, step = acc
            loss_sum, reg = tf.cast(loss_sum, tf.float32), tf.cast(reg, tf.float32)
            return new_states, (loss_acc + loss_sum + reg * count, count_acc + count, bad, step + 1)

        acc = (tf.constant(0.0), tf.constant(0.0), tf.constant(-1), tf.constant(0))
        _, acc = loop(x, y, w, m, tm, n_win, h0, window_fn, acc)
        return acc[0], acc[1]

    # --------------------------------------------------------------------------------- predict
    def predict(x, tm, h0):
        """Every window runs (outputs at padded steps are those of the whole sequence); a
        per-series output is, per row, that of the window holding its last real step."""
        T = x[0].shape[1]
        S, n_full, tail = plan.windows_of(T)
        batch = tf.shape(x[0])[0]
        states = zero_states(x[0]) if h0 is None else h0
        ends = None if tm is None else plan.end_windows(tm, S)

        def step(index, start, length, states):
            xw = tuple(slice_time(a, start, length) for a in x)
            plan.window_mask(tm, start, length)
            try:
                y_pred, new_states = run_model(xw, states, False)
            finally:
                carry.window_mask = None
            return tree.flatten(y_pred), new_states

        def keep_series(index, old, new):
            """Per-series outputs: this window's where it holds the row's last real step."""
            if ends is None:
                return new
            here = tf.equal(ends, index)
            return tf.where(tf.reshape(here, [-1] + [1] * (len(new.shape) - 1)), new, old)

        outs = None
        if n_full > 0:
            # Trace one window outside the loop to learn the output structure.
            first, states = step(0, 0, S, states)
            if n_full > 1:
                seq = [not per_series for p in first]
                arrays = [
                    tf.TensorArray(p.dtype, size=n_full - 1, element_shape=None)
                    for p, s in zip(first, seq)
                    if s
                ]
                series = [p for p, s in zip(first, seq) if not s]

                def body(i, states, arrays, series):
                    preds, states = step(i + 1, (i + 1) * S, S, states)
                    arrays = [
                        ta.write(i, p)
                        for ta, p in zip(arrays, [p for p, s in zip(preds, seq) if s])
                    ]
                    series = [
                        keep_series(i + 1, old, p)
                        for old, p in zip(series, [p for p, s in zip(preds, seq) if not s])
                    ]
                    return i + 1, states, arrays, series

                _, states, arrays, series = tf.while_loop(
                    lambda i, *_: i < n_full - 1,
                    body,
                    (tf.constant(0), states, arrays, series),
                    maximum_iterations=n_full - 1,
                )
                arrays, series = iter(arrays), iter(series)
                outs = []
                for p, s in zip(first, seq):
                    if not s:
                        outs.append(next(series))
                        continue
                    rest = next(arrays).stack()  # (n_full - 1, B, S, ...)
                    perm = [1, 0] + list(range(2, len(rest.shape)))
                    rest = tf.transpose(rest, perm)
                    shape = tf.concat([[batch, (n_full - 1) * S], tf.shape(rest)[3:]], 0)
                    outs.append(tf.concat([p, tf.reshape(rest, shape)], axis=1))
            else:
                outs = first
        if tail:
            preds, states = step(n_full, n_full * S, tail, states)
            if outs is None:
                outs = preds
            else:
                outs = [
                    tf.concat([a, p], axis=1) if not per_series else keep_series(n_full, a, p)
                    for a, p in zip(outs, preds)
                ]
        return tuple(outs), states

    def chunk_start(x, tm):
        """The zero states and accumulators the first chunk of a minibatch starts from."""
        states = [
            [tf.zeros((x[0].shape[0],) + tuple(shape), dtype) for shape, dtype in spec]
            for spec in state_specs
        ]
        return states, (zero_series_acc() if per_series and tm is not None else zero_sums())

    compile_ = lambda f: tf.function(f, jit_compile=jit_compile, reduce_retracing=False)
    return StepFunctions(
        # With the host-callback Allreduce the outer window loop stays a plain graph; its two
        # halves per window are XLA-compiled above.
        train=None
        if optimizer is None
        else (compile_(train) if fused else tf.function(train, jit_compile=False)),
        evaluate=compile_(evaluate),
        predict=compile_(predict),
        exact_rows=getattr(objective, "needs_exact_rows", False),
        chunk_start=chunk_start,
    )


# ------------------------------------------------------------------------------- Allreduce
def fused_allreduce(comm, tensors: Sequence[tf.Tensor], extra: tf.Tensor | None = None):
    """Sum ``tensors`` (and ``extra``, a 1-D float32) over ranks with ONE ``Allreduce``.

    All tensors are flattened into one float32 buffer in the given order (the same on every
    rank), reduced by one host call inside the graph (``tf.numpy_function``), and split back.
    """
    parts = [tf.reshape(tf.cast(t, tf.float32), [-1]) for t in tensors]
    if extra is not None:
        parts.append(tf.reshape(tf.cast(extra, tf.float32), [-1]))
    flat = tf.concat(parts, 0)
    reduced = tf.numpy_function(
        lambda a: dist._flat_allreduce(comm, a), [flat], tf.float32, stateful=True
    )
    reduced.set_shape(flat.shape)
    sizes = [int(np.prod(t.shape)) if t.shape.is_fully_defined() else tf.size(t) for t in tensors]
    if extra is not None:
        sizes.append(int(extra.shape[0]))
    pieces = tf.split(reduced, sizes)
    out = [tf.cast(tf.reshape(p, tf.shape(t)), t.dtype) for p, t in zip(pieces, tensors)]
    return out, (pieces[-1] if extra is not None else None)


def graph_allreduce(comm, device: str | None = None) -> Callable:
    """In-graph sum of one flat float32 buffer over ranks: one ``Allreduce`` per call.

    The returned ``reduce(buf)`` is a host callback (``tf.numpy_function``), usable in any
    graph but not inside XLA. Its attribute ``reduce.xla`` is the same reduction as an XLA
    custom call (``_mpi_xla``), which keeps the whole window loop one XLA program; it is
    ``None`` where that is unavailable (then the loop is split around the host callback).
    """
    # Test-only hook: an artificial delay per Allreduce, in seconds, to model a slow network
    # (this machine's kernel has no netem). Host-callback path only (jit_compile=False).
    delay = float(os.environ.get("KERASEQ_TEST_ALLREDUCE_DELAY_S", "0") or 0.0)

    def host(a):
        if delay:
            time.sleep(delay)
        return dist._flat_allreduce(comm, a)

    def reduce(buf):
        out = tf.numpy_function(host, [buf], tf.float32, stateful=True)
        out.set_shape(buf.shape)
        return out

    reduce.xla = None
    if device is None or "GPU" not in device.upper():
        from .. import _mpi_xla

        reduce.xla = _mpi_xla.xla_allreduce(comm.comm)
    return reduce


# ------------------------------------------------------------------------------------ devices
_threads_set = False


def default_device(comm) -> str:
    """``/GPU:{local_rank % n_gpus}`` when GPUs exist, else ``/CPU:0``.

    On the CPU with several ranks on one machine, TensorFlow's intra-op threads are split
    between the local ranks so that they do not oversubscribe the cores.
    """
    global _threads_set
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        for gpu in gpus:
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:
                pass  # already initialised
        return f"/GPU:{dist.local_rank(comm) % len(gpus)}"
    if comm.size > 1 and not _threads_set:
        _threads_set = True
        # Cores this rank may run on: Open MPI binds a rank to its cores by default (then
        # use them all), else the node's cores are shared by its ranks.
        total = os.cpu_count() or 1
        mine = dist.usable_cores()
        per_rank = mine if mine < total else max(1, total // dist._local_size(comm))
        try:
            tf.config.threading.set_intra_op_parallelism_threads(per_rank)
            tf.config.threading.set_inter_op_parallelism_threads(per_rank)
        except RuntimeError:
            pass  # TensorFlow already started; keep its setting
    return "/CPU:0"


class device_scope:
    """``tf.device(name)``, or nothing for ``None``."""

    def __init__(self, name: str | None):
        self.name = name
        self._ctx = None

    def __enter__(self):
        if self.name is not None:
            self._ctx = tf.device(self.name)
            self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        if self._ctx is not None:
            return self._ctx.__exit__(*exc)
        return False
