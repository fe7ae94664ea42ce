"""The minibatch programs every backend compiles, written once: what a window does in training,
evaluation and prediction, and how the windows of a minibatch are wired.

What lives here: :class:`BaseSteps`, the backend-free half of a per-backend trainer (as
``keras/src/trainers/trainer.py`` is to ``keras/src/backend/jax/trainer.py``). Its methods are
the five programs -- :meth:`~BaseSteps.train` (one update per window),
:meth:`~BaseSteps.train_series` (per-series targets of unequal lengths: one update per
minibatch), :meth:`~BaseSteps.train_accumulated` (``sync_every``), :meth:`~BaseSteps.evaluate`,
:meth:`~BaseSteps.predict` -- and their window functions, the loss of one window, the metric
updates, the count-weighted gradient buffer (:meth:`~BaseSteps.pack_buffer`,
:meth:`~BaseSteps.unpack_apply`) and the non-finite gate (:meth:`~BaseSteps.apply_checked`),
all with ``keras.ops`` and the window plan of ``backend/plan.py``.

A backend subclass (``TensorFlowSteps`` in ``backend/tensorflow.py``, ``JaxSteps`` in
``backend/jax/steps.py``) supplies only what must differ, the methods marked *backend* below:
how the model's variables are read and written (:meth:`~BaseSteps.in_model`,
:meth:`~BaseSteps.metrics_scope`, :meth:`~BaseSteps.apply`), how a gradient is taken
(:meth:`~BaseSteps.value_and_grad`), the traced loops (``while_loop``, ``cond``, ``scan``,
``slice_time``, ``pad_time``), the Allreduce (:meth:`~BaseSteps.reduce`) and how the programs
are compiled and called (:meth:`~BaseSteps.step_functions`).

``vals`` is what a program threads through its windows besides the states: on JAX the
variables' values ``(trainable, non_trainable, optimizer, metrics)`` (the programs are pure
functions), on TensorFlow ``()`` (the programs assign TensorFlow's variables in place). Every
program takes ``vals`` first and returns ``(result, vals)``.

What does not live here: the buffer's packing and splitting themselves, shared with
``DistributedOptimizer``'s Allreduce (``backend/common.py``), how predict's windows join
(``backend/plan.py``), the epoch loop (``trainer.py``), the state carry (``windows.py``), the
objectives (``losses.py``), the compile-reuse keys (``reuse.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
from keras import ops, tree

from ..inputs import as_model_input
from ..losses import metric_updates, output_mask
from . import common
from .plan import WindowPlan

if TYPE_CHECKING:  # (``windows.py`` runs the fused loop, which asks for the backend)
    from ..windows import StateCarry
    from .common import StepFunctions


def _f32(v):
    return ops.cast(v, "float32")


def _i32(v):
    return ops.cast(v, "int32")


class BaseSteps:
    """The compiled minibatch functions of one model, optimizer and window plan.

    The arguments are those of ``build_step_functions`` (``backend/__init__.py``):
    ``objective(forward, xw, yw, ww, mw, training, states)`` returns ``(loss_sum, count, reg,
    y_pred, new_states)`` for one window (``losses.py``); ``state_specs`` gives, per RNN call,
    the per-series shapes and dtypes of its states; ``allreduce(buffer) -> summed buffer`` sums
    one flat float32 buffer over ranks (``None``: one process).

    ``train`` runs every window of one minibatch: forward, loss, gradient, the optional
    Allreduce of one buffer ``[count-weighted gradients..., count, nonfinite]`` (one collective
    per update; the result is the count-weighted mean gradient over ranks), optimizer update.
    It skips (and reports) the first window whose loss or gradient is not finite and every
    window after it, so the weights stay those from before the bad update; a window without
    an unmasked loss element (all padding) makes no update. A chunk (``chunk = (first, final,
    acc)``, see ``StepFunctions``) trains windows ``first .. n_win - 1`` and ends the
    minibatch only when ``final``; ``acc`` is what the next chunk continues from.
    """

    # The backend's traced primitives (functions of ``backend/<name>.py``), set by a subclass:
    # ``while_loop(bound, body, init, maximum)``, ``cond(pred, true_fn, false_fn, operand)``,
    # ``scan(body, init, n) -> (carry, outputs stacked over i)`` for ``body(carry, i)``,
    # ``slice_time(a, start, length)``, ``pad_time(a, extra)``.
    while_loop: Callable
    cond: Callable
    scan: Callable
    slice_time: Callable
    pad_time: Callable

    def __init__(
        self,
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
    ):
        self.model, self.carry, self.state_specs = model, carry, state_specs
        self.objective, self.optimizer, self.metrics = objective, optimizer, metrics
        self.seq_len, self.per_series, self.jit_compile = seq_len, per_series, jit_compile
        self.allreduce, self.sync_every = allreduce, sync_every
        self.trainable = list(model.trainable_variables)
        self.loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        self.shapes = [tuple(v.shape) for v in self.trainable]
        self.sizes = [int(np.prod(sh)) for sh in self.shapes]
        # float64 models keep float64 gradients
        self.dtypes = [keras.backend.standardize_dtype(v.dtype) for v in self.trainable]
        self.exact_rows = getattr(objective, "needs_exact_rows", False)
        self.plan = WindowPlan(
            carry,
            seq_len,
            per_series,
            self.while_loop,
            self.slice_time,
            self.pad_time,
            self.zero_states,
            self.cond,
        )

    # ------------------------------------------------------------------ backend primitives
    def in_model(self, vals, fn: Callable, collect_losses: bool = False):
        """*backend*: ``fn()`` (which calls the model) with the model's variables holding
        ``vals``; returns ``(fn(), vals)`` with the new non-trainable values."""
        raise NotImplementedError

    def value_and_grad(self, vals, fn: Callable):
        """*backend*: ``fn() -> (mean, aux)`` and the gradient of ``mean`` with respect to the
        trainable variables; returns ``(aux, gradients, vals)``."""
        raise NotImplementedError

    def metrics_scope(self, vals, fn: Callable):
        """*backend*: ``fn()`` (which updates the metrics) on the metric variables of
        ``vals``; returns ``vals`` with their new values."""
        raise NotImplementedError

    def apply(self, vals, grads):
        """*backend*: the optimizer's update with ``grads``; returns the new ``vals``."""
        raise NotImplementedError

    def reduce(self, buf):
        """The sum of a gradient buffer over ranks (itself in one process)."""
        return buf if self.allreduce is None else self.allreduce(buf)

    @property
    def reduces(self) -> bool:
        """Whether an update's gradients go through :meth:`reduce` (a buffer is packed)."""
        return self.allreduce is not None

    def step_functions(self):
        """*backend*: the compiled programs as ``backend.StepFunctions``."""
        raise NotImplementedError

    @classmethod
    def build(cls, *args, **kwargs) -> StepFunctions:
        """``build_step_functions`` of a backend (``backend/__init__.py``; the arguments of
        ``__init__``): this backend's programs, as ``backend.StepFunctions``."""
        return cls(*args, **kwargs).step_functions()

    # ------------------------------------------------------------------ one window's maths
    def zero_states(self, x0):
        """The zero initial states for the rows of ``x0``."""
        batch = ops.shape(x0)[0]
        return [
            [ops.zeros((batch,) + tuple(shape), dtype) for shape, dtype in spec]
            for spec in self.state_specs
        ]

    def forward(self, states, fn: Callable):
        """Run ``fn()`` (which calls the model) from ``states``; return (result, new states)."""
        self.carry.feed(states)
        result = fn()
        return result, [[ops.stop_gradient(s) for s in c] for c in self.carry.collected()]

    def call_model(self, vals, xw, states, training: bool):
        """The model on one window: (outputs, new states, vals)."""
        x_in = as_model_input(self.model, xw)
        (y_pred, new_states), vals = self.in_model(
            vals, lambda: self.forward(states, lambda: self.model(x_in, training=training))
        )
        return y_pred, new_states, vals

    def window_outputs(self, xw, yw, ww, mw, training: bool, states):
        """The objective on one window: ``(loss_sum, count, reg, flattened outputs, their
        Keras masks, new states)`` (outputs and masks ``None`` without metrics)."""
        loss_sum, count, reg, y_pred, new_states = self.objective(
            self.forward, xw, yw, ww, mw, training, states
        )
        if not self.metrics or y_pred is None:
            return loss_sum, count, reg, None, None, new_states
        preds = tree.flatten(y_pred)
        return loss_sum, count, reg, preds, [output_mask(p) for p in preds], new_states

    def window_loss(self, xw, yw, ww, mw, states):
        """``(mean loss, window_outputs)`` of one training window: the loss differentiated.

        With a ``LossScaleOptimizer`` (mixed_float16, as ``compile`` sets up) the mean is
        scaled; the optimizer unscales the gradient, and skips updates whose gradient
        overflowed while it lowers the scale, so only a non-finite loss counts as a fault."""
        out = self.window_outputs(xw, yw, ww, mw, True, states)
        loss_sum, count, reg = out[:3]
        # (float64 when floatx is: see losses.loss_dtype)
        mean = loss_sum / ops.cast(ops.maximum(count, 1.0), loss_sum.dtype) + reg
        if self.loss_scaled:
            mean = self.optimizer.scale_loss(mean)
        return mean, out

    def gradients(self, vals, xw, yw, ww, mw, states):
        """Forward, loss and gradient of one window; metrics updated. Returns ``(vals, grads,
        finite, loss_sum + reg * count, count, new states)``."""
        aux, grads, vals = self.value_and_grad(
            vals, lambda: self.window_loss(xw, yw, ww, mw, states)
        )
        loss_sum, count, reg, preds, masks, new_states = aux
        loss_sum, count, reg = _f32(loss_sum), _f32(count), _f32(reg)
        # One fused reduction: a NaN or Inf anywhere makes the sum non-finite.
        total = loss_sum
        if not self.loss_scaled:
            for g in grads:
                total = total + _f32(ops.sum(g))
        finite = ops.isfinite(total)
        vals = self.update_metrics(vals, yw, preds, masks, ww, mw)
        return vals, grads, finite, loss_sum + reg * count, count, new_states

    def update_metrics(self, vals, yw, preds, masks, ww, mw):
        """The metrics' ``update_state`` for one window, weighed as ``model.fit`` does."""
        if not self.metrics:
            return vals

        def update():
            for metric, yt, yp, sw in metric_updates(self.metrics, yw, preds, masks, ww, mw):
                metric.update_state(yt, yp, sample_weight=sw)

        return self.metrics_scope(vals, update)

    # ------------------------------------------------------------ the update and its gate
    def apply_checked(self, vals, grads, finite, count, bad, step):
        """Apply unless a non-finite value appeared (now or in an earlier window) or the
        window has no unmasked loss element (``count == 0``: all padding). Returns
        ``(vals, bad, ok)``: ``bad`` the first bad window (``-1``: none yet)."""
        ok = ops.logical_and(finite, bad < 0)

        def update(v):
            # The loop has averaged the gradients over ranks already: a DistributedOptimizer
            # (also inside compile's LossScaleOptimizer) must not reduce them again.
            with common.gradients_reduced():
                return self.apply(v, grads)

        vals = self.cond(ops.logical_and(ok, count > 0), update, lambda v: v, vals)
        return vals, ops.where(ops.logical_or(ok, bad >= 0), bad, step), ok

    def pack_buffer(self, weighted_grads, count, finite):
        """One flat float32 buffer ``[count-weighted gradients..., count, nonfinite]``."""
        return common.pack(weighted_grads, extra=ops.stack([_f32(count), 1.0 - _f32(finite)]))

    def pack(self, vals, xw, yw, ww, mw, states):
        """Forward and backward of one window, packed: ``(vals, buffer, loss, count,
        new states)``."""
        vals, grads, finite, loss_sum, count, new_states = self.gradients(
            vals, xw, yw, ww, mw, states
        )
        buf = self.pack_buffer([g * ops.cast(count, g.dtype) for g in grads], count, finite)
        return vals, buf, loss_sum, count, new_states

    def unpack_apply(self, vals, summed, bad, step):
        """Divide a summed buffer by its total count and apply it (through the gate)."""
        pieces, rest = common.split(summed, self.shapes)
        total, nonfinite = rest[0], rest[1]
        grads = [ops.cast(p / ops.maximum(total, 1e-12), dt) for p, dt in zip(pieces, self.dtypes)]
        return self.apply_checked(vals, grads, nonfinite < 0.5, total, bad, step)

    def reduce_apply(self, vals, buf, bad, step):
        """Sum a buffer over ranks, then :meth:`unpack_apply` it."""
        return self.unpack_apply(vals, self.reduce(buf), bad, step)

    def zero_sums(self):
        """The loss sum and count a minibatch starts from (a chunk: the previous one's)."""
        return _f32(0.0), _f32(0.0)

    def zero_grads(self):
        return [ops.zeros(sh, dt) for sh, dt in zip(self.shapes, self.dtypes)]

    def zero_series_acc(self):
        """What a chunk of :meth:`train_series` continues from: loss, count, finite,
        gradient sums."""
        return _f32(0.0), _f32(0.0), ops.cast(True, "bool"), self.zero_grads()

    def chunk_start(self, x, tm):
        """The zero states and accumulators the first chunk of a minibatch starts from."""
        series = self.per_series and WindowPlan.padded(tm)
        acc = self.zero_series_acc() if series else self.zero_sums()
        return self.zero_states(x[0]), acc

    # ------------------------------------------------------------------ the window loop
    def loop(self, vals, x, y, w, m, tm, n_win, h0, window_fn, acc, first=None, final=None):
        """Run ``window_fn(vals, xw, yw, ww, mw, states, acc, has_loss) -> (vals, states,
        acc)`` over the windows of a minibatch (``plan.WindowPlan.run``); returns ``(vals,
        final states, acc)``."""

        def fn(xw, yw, ww, mw, states, c, has_loss):
            vals, states, acc = window_fn(c[0], xw, yw, ww, mw, states, c[1], has_loss)
            return states, (vals, acc)

        states, (vals, acc) = self.plan.run(
            x, y, w, m, tm, n_win, h0, fn, (vals, acc), first, final
        )
        return vals, states, acc

    # ---------------------------------------------------------------------------- train
    def train(self, vals, x, y, w, m, tm, n_win, h0, chunk=None):
        """One minibatch, or one chunk of it; returns ``(result, vals)`` or ``((result,
        states, acc), vals)``, ``result = [loss_sum, count, bad_window]``."""
        if self.per_series and WindowPlan.padded(tm):
            return self.train_series(vals, x, y, w, m, tm, n_win, h0, chunk)
        if self.sync_every > 1 and not self.per_series:
            return self.train_accumulated(vals, x, y, w, m, tm, n_win, h0, chunk)
        first, final, (loss0, count0) = (None, None, self.zero_sums()) if chunk is None else chunk
        acc = (loss0, count0, _i32(-1), _i32(0) if first is None else _i32(first))
        vals, states, acc = self.loop(
            vals, x, y, w, m, tm, n_win, h0, self.train_window, acc, first, final
        )
        # One array, so the host fetches the minibatch's result with one transfer.
        result = ops.stack([acc[0], acc[1], _f32(acc[2])])
        return (result if chunk is None else (result, states, (acc[0], acc[1]))), vals

    def train_window(self, vals, xw, yw, ww, mw, states, acc, has_loss):
        """One window of :meth:`train`: an update, or (no loss here) only the forward pass."""
        if not has_loss:
            _, new_states, vals = self.call_model(vals, xw, states, True)
            return vals, new_states, acc
        loss_acc, count_acc, bad, step = acc
        vals, bad, ok, loss_sum, count, new_states = self.learn_window(
            vals, xw, yw, ww, mw, states, bad, step
        )
        loss_acc = loss_acc + ops.where(ok, loss_sum, 0.0)
        count_acc = count_acc + ops.where(ok, count, 0.0)
        return vals, new_states, (loss_acc, count_acc, bad, step + 1)

    def learn_window(self, vals, xw, yw, ww, mw, states, bad, step):
        """Gradient and gated update of one window, through the buffer when it is reduced."""
        if not self.reduces:
            vals, grads, finite, loss_sum, count, new_states = self.gradients(
                vals, xw, yw, ww, mw, states
            )
            vals, bad, ok = self.apply_checked(vals, grads, finite, count, bad, step)
        else:
            vals, buf, loss_sum, count, new_states = self.pack(vals, xw, yw, ww, mw, states)
            vals, bad, ok = self.reduce_apply(vals, buf, bad, step)
        return vals, bad, ok, loss_sum, count, new_states

    def train_series(self, vals, x, y, w, m, tm, n_win, h0, chunk=None):
        """Per-series targets of unequal lengths: each row's loss lives in the window of its
        last real step, so the count-weighted gradients of every window are summed and
        applied in ONE update per minibatch (as for equal lengths), one Allreduce under MPI.
        A chunk before the last one only sums (and reports the sums so far): the update
        comes with the minibatch's end."""
        first, final, acc = (None, None, self.zero_series_acc()) if chunk is None else chunk
        vals, states, acc = self.loop(
            vals, x, y, w, m, tm, n_win, h0, self.series_window, acc, first, final
        )
        loss_sum, count, finite, grads_acc = acc

        def update(v):
            buf = self.pack_buffer(grads_acc, count, finite)
            return self.reduce_apply(v, buf, _i32(-1), _i32(0))

        if chunk is None:
            vals, bad, ok = update(vals)
        else:
            skip = lambda v: (v, _i32(-1), ops.cast(True, "bool"))
            vals, bad, ok = self.cond(final, update, skip, vals)
        result = ops.stack([ops.where(ok, loss_sum, 0.0), ops.where(ok, count, 0.0), _f32(bad)])
        return (result if chunk is None else (result, states, acc)), vals

    def series_window(self, vals, xw, yw, ww, mw, states, acc, has_loss):
        """One window of :meth:`train_series`: its count-weighted gradient summed."""
        loss_acc, count_acc, finite_acc, grads_acc = acc
        vals, grads, finite, loss_sum, count, new_states = self.gradients(
            vals, xw, yw, ww, mw, states
        )
        grads_acc = [a + g * ops.cast(count, g.dtype) for a, g in zip(grads_acc, grads)]
        acc = (loss_acc + loss_sum, count_acc + count, ops.logical_and(finite_acc, finite))
        return vals, new_states, acc + (grads_acc,)

    def train_accumulated(self, vals, x, y, w, m, tm, n_win, h0, chunk=None):
        """``sync_every = k > 1`` (for slow networks): the count-weighted gradients of k
        consecutive windows are summed and applied in one update, one Allreduce per k windows
        (and one for a remainder at the minibatch's end). Windows still carry the state; the
        gradient of each is still cut at its borders. Same on every rank: the window count is
        agreed, so every rank flushes at the same windows. A chunk starts at a multiple of k
        (the trainer's chunks are whole multiples of k), so it flushes where the whole call
        does."""
        first, final, (loss0, count0) = (None, None, self.zero_sums()) if chunk is None else chunk
        step0 = _i32(0) if first is None else _i32(first)
        acc = (loss0, count0, _i32(-1), step0) + self.pending()
        vals, states, acc = self.loop(
            vals, x, y, w, m, tm, n_win, h0, self.accumulated_window, acc, first, final
        )
        # A remainder of fewer than k windows: one more update (the same on every rank).
        every_k = ops.equal(acc[3] % self.sync_every, 0)
        vals, acc = self.cond(every_k, lambda c: c, self.flush, (vals, acc))
        result = ops.stack([acc[0], acc[1], _f32(acc[2])])
        return (result if chunk is None else (result, states, (acc[0], acc[1]))), vals

    def pending(self):
        """The sums of windows not yet applied: loss, count, finite, gradients."""
        return _f32(0.0), _f32(0.0), ops.cast(True, "bool"), self.zero_grads()

    def flush(self, c):
        """Apply the pending sums of :meth:`train_accumulated` (``c = (vals, acc)``)."""
        vals, (loss_acc, count_acc, bad, step, p_loss, p_count, p_finite, p_grads) = c
        buf = self.pack_buffer(p_grads, p_count, p_finite)
        vals, bad, ok = self.reduce_apply(vals, buf, bad, step - 1)
        loss_acc = loss_acc + ops.where(ok, p_loss, 0.0)
        count_acc = count_acc + ops.where(ok, p_count, 0.0)
        return vals, (loss_acc, count_acc, bad, step) + self.pending()

    def accumulated_window(self, vals, xw, yw, ww, mw, states, acc, has_loss):
        """One window of :meth:`train_accumulated`: summed, flushed every k windows."""
        loss_acc, count_acc, bad, step, p_loss, p_count, p_finite, p_grads = acc
        vals, grads, finite, loss_sum, count, new_states = self.gradients(
            vals, xw, yw, ww, mw, states
        )
        acc = (
            loss_acc,
            count_acc,
            bad,
            step + 1,
            p_loss + loss_sum,
            p_count + count,
            ops.logical_and(p_finite, finite),
            [a + g * ops.cast(count, g.dtype) for a, g in zip(p_grads, grads)],
        )
        every_k = ops.equal((step + 1) % self.sync_every, 0)
        vals, acc = self.cond(every_k, self.flush, lambda c: c, (vals, acc))
        return vals, new_states, acc

    # ------------------------------------------------------------------------- evaluate
    def evaluate(self, vals, x, y, w, m, tm, n_win, h0):
        """Loss sum and count of one minibatch, metrics updated: ``((loss, count), vals)``."""
        acc = (_f32(0.0), _f32(0.0), _i32(-1), _i32(0))
        vals, _, acc = self.loop(vals, x, y, w, m, tm, n_win, h0, self.evaluate_window, acc)
        return (acc[0], acc[1]), vals

    def evaluate_window(self, vals, xw, yw, ww, mw, states, acc, has_loss):
        if not has_loss:
            _, new_states, vals = self.call_model(vals, xw, states, False)
            return vals, new_states, acc
        out, vals = self.in_model(
            vals, lambda: self.window_outputs(xw, yw, ww, mw, False, states), collect_losses=True
        )
        loss_sum, count, reg, preds, masks, new_states = out
        vals = self.update_metrics(vals, yw, preds, masks, ww, mw)
        loss_acc, count_acc, bad, step = acc
        loss_acc = loss_acc + _f32(loss_sum) + _f32(reg) * _f32(count)
        return vals, new_states, (loss_acc, count_acc + _f32(count), bad, step + 1)

    # -------------------------------------------------------------------------- predict
    def predict(self, vals, x, tm, h0):
        """Every window runs (outputs at padded steps are those of the whole sequence); a
        per-series output is, per row, that of the window holding its last real step.
        Returns ``((outputs, final states), vals)``."""
        S, n_full, tail = self.plan.windows_of(x[0].shape[1])
        states = self.zero_states(x[0]) if h0 is None else h0
        ends = self.plan.end_windows(tm, S) if WindowPlan.padded(tm) else None

        def step(c, start, length):
            vals, states = c
            xw = tuple(self.slice_time(a, start, length) for a in x)
            self.plan.window_mask(tm, start, length)
            try:
                y_pred, new_states, vals = self.call_model(vals, xw, states, False)
            finally:
                self.plan.window_mask(None, start, length)
            return (vals, new_states), tuple(tree.flatten(y_pred))

        c, per_window = (vals, states), []  # outputs stacked over windows: (n, B, ...)
        if n_full > 0:
            c, stacked = self.scan(lambda c, i: step(c, i * S, S), c, n_full)
            per_window.append(stacked)
        if tail:
            c, preds = step(c, n_full * S, tail)
            per_window.append(tuple(p[None] for p in preds))
        outs = tuple(
            self.plan.join_windows([w[k] for w in per_window], ends)
            for k in range(len(per_window[0]))
        )
        vals, states = c
        return (outs, states), vals
