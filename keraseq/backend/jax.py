"""The JAX backend: compiled window loops, in-program Allreduce, devices.

What lives here: :func:`build_step_functions` for ``KERAS_BACKEND=jax``. One ``jax.jit``
program per minibatch runs all its windows ``[0:S], [S:2S], ...`` -- forward, loss, gradient,
optimizer update -- in a ``lax.while_loop`` whose bound is a runtime value (the window count
of a minibatch of unequal lengths: no recompilation per count). The program is a pure function
of ``(trainable, non_trainable, optimizer, metric values, x, y, w, m, tm, n_win, h0)``: the
model runs inside a ``keras.StatelessScope`` (what ``Layer.stateless_call`` does; the
per-window objective calls the model itself), the gradient of each window is
``jax.value_and_grad`` of that call, the optimizer update is applied statelessly, and the
metrics are updated in a scope over their variables. The callables handed to the Estimator
read the variables' values, call the program and assign the new values back, so the epoch
loop stays backend-free. Also here: the Allreduce inside that program (``mpi4jax``, or a
host callback on a GPU without CUDA-aware mpi4jax), device choice and placement, and
host <-> array conversion.

Same semantics as ``backend/tensorflow.py`` (read it first): this module is its twin.
What does not live here: the epoch loop, the state carry (``windows.py``), the objectives
(``losses.py``), MPI on NumPy buffers (``distributed.py``).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import keras
import numpy as np
from jax import lax
from keras import tree

from .. import distributed as dist
from ..losses import metric_updates, output_mask
from ..windows import StateCarry
from . import StepFunctions
from .plan import WindowPlan

NAME = "jax"


def to_tensor(a):
    """A host array (or ``None``) as a JAX array (on the default device of the scope)."""
    return None if a is None else jnp.asarray(a)


def to_numpy(t) -> np.ndarray:
    return np.asarray(t)


def jit_for(model, setting, work: float = 0.0, distributed: bool = False) -> bool:
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


def _f32(v):
    return jnp.asarray(v, jnp.float32)


def _i32(v):
    return jnp.asarray(v, jnp.int32)


def _check_float64(model) -> None:
    """JAX computes in float32 unless 64-bit mode is on: a float64 model would silently train
    in float32 (Keras's own ``fit`` would too). Refuse it, naming the layer."""
    if jax.config.jax_enable_x64:
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
    """Build the three compiled minibatch functions (the contract of ``backend/__init__``).

    See ``backend/tensorflow.py``'s :func:`build_step_functions` for the semantics, which are
    the same here: windows with a short tail, state carried with the gradient cut at window
    borders, ``h0`` or zero initial states, the time mask ``tm`` and the runtime window count
    ``n_win``, per-series targets in the window of each row's last real step (one update per
    minibatch), ``sync_every``, the non-finite check (the first bad window is reported and it
    and every later update are skipped), no update for a window without loss elements, the
    ``LossScaleOptimizer``, float64 models, metrics per window, and under MPI one flat float32
    buffer ``[count-weighted gradients..., count, nonfinite]`` summed per update.
    """
    _check_float64(model)
    trainable = list(model.trainable_variables)
    non_trainable = list(model.non_trainable_variables)
    opt_vars = [] if optimizer is None else list(optimizer.variables)
    metric_vars = [v for metric in metrics for v in metric.variables]
    loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    shapes = [tuple(v.shape) for v in trainable]
    sizes = [int(np.prod(sh)) for sh in shapes]
    dtypes = [jnp.dtype(v.dtype) for v in trainable]  # float64 models keep float64 gradients

    # ------------------------------------------------------------------------ scopes
    # ``vals`` is the tuple (trainable, non_trainable, optimizer, metric values) the program
    # threads through the windows; every model call runs in a StatelessScope over it.
    def scope_of(vals, with_opt=False, collect_losses=False):
        tv, ntv, ov, _ = vals
        mapping = list(zip(trainable, tv)) + list(zip(non_trainable, ntv))
        if with_opt:
            mapping += list(zip(opt_vars, ov))
        return keras.StatelessScope(state_mapping=mapping, collect_losses=collect_losses)

    def read(scope, variables, old):
        out = []
        for v, o in zip(variables, old):
            new = scope.get_current_value(v)
            out.append(o if new is None else jnp.asarray(new, jnp.dtype(o.dtype)))
        return out

    def zero_states(x0):
        return [
            [jnp.zeros((x0.shape[0],) + tuple(shape), jnp.dtype(dtype)) for shape, dtype in spec]
            for spec in state_specs
        ]

    plan = WindowPlan(
        carry, seq_len, per_series, while_loop, slice_time, pad_time, zero_states, cond
    )

    def forward(states, fn):
        """Run ``fn()`` (which calls the model) from ``states``; return (result, new states)."""
        carry.feed(states)
        result = fn()
        return result, [[lax.stop_gradient(jnp.asarray(s)) for s in c] for c in carry.collected()]

    def run_model(vals, xw, states, training):
        """The model on one window; returns (outputs, new states, vals with the new
        non-trainable values: dropout's seed generators, normalisation statistics)."""
        tv, ntv, ov, mv = vals
        with scope_of(vals) as scope:
            y_pred, new_states = forward(
                states, lambda: model(xw if len(xw) > 1 else xw[0], training=training)
            )
        return y_pred, new_states, (tv, read(scope, non_trainable, ntv), ov, mv)

    def masks_of(y_pred):
        """Per flattened output, its Keras mask (needed by the metrics) or ``None``."""
        if not metrics or y_pred is None:
            return None, None
        preds = tree.flatten(y_pred)
        return preds, [output_mask(p) for p in preds]

    def update_metrics(vals, yw, preds, masks, ww, mw):
        if not metrics:
            return vals
        tv, ntv, ov, mv = vals
        with keras.StatelessScope(state_mapping=list(zip(metric_vars, mv))) as scope:
            for metric, yt, yp, sw in metric_updates(metrics, yw, preds, masks, ww, mw):
                metric.update_state(yt, yp, sample_weight=sw)
        return (tv, ntv, ov, read(scope, metric_vars, mv))

    # ----------------------------------------------------------------------------------- train
    def gradients(vals, xw, yw, ww, mw, states):
        """Forward, loss and gradient of one window; metrics updated.

        With a ``LossScaleOptimizer`` (mixed_float16, as ``compile`` sets up) the gradient is
        that of the scaled loss; the optimizer unscales it, and skips updates whose gradient
        overflowed while it lowers the scale, so only a non-finite loss counts as a fault."""
        tv, ntv, ov, mv = vals

        def loss_fn(tv_):
            with scope_of((tv_, ntv, ov, mv), with_opt=True, collect_losses=True) as scope:
                loss_sum, count, reg, y_pred, new_states = objective(
                    forward, xw, yw, ww, mw, True, states
                )
                # (float64 when floatx is: see losses.loss_dtype)
                mean = loss_sum / jnp.maximum(count, 1.0).astype(loss_sum.dtype) + reg
                if loss_scaled:
                    mean = optimizer.scale_loss(mean)
                preds, masks = masks_of(y_pred)
            return mean, (
                loss_sum,
                count,
                reg,
                preds,
                masks,
                new_states,
                read(scope, non_trainable, ntv),
            )

        (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(list(tv))
        loss_sum, count, reg, preds, masks, new_states, ntv = aux
        loss_sum, count = _f32(loss_sum), _f32(count)
        grads = [jnp.asarray(g, dt) for g, dt in zip(grads, dtypes)]
        # One fused reduction: a NaN or Inf anywhere makes the sum non-finite.
        total = loss_sum
        if not loss_scaled:
            for g in grads:
                total = total + jnp.sum(g).astype(jnp.float32)
        finite = jnp.isfinite(total)
        vals = update_metrics((tv, ntv, ov, mv), yw, preds, masks, ww, mw)
        return vals, grads, finite, loss_sum + _f32(reg) * count, count, new_states

    def apply_update(vals, grads):
        tv, ntv, ov, mv = vals
        # The loop has averaged the gradients over ranks already: a DistributedOptimizer
        # (also inside compile's LossScaleOptimizer) must not reduce them again.
        with dist.gradients_reduced():
            if loss_scaled:
                # Its stateful ``apply`` updates the scale inside ``ops.cond`` branches, which
                # JAX cannot trace; ``stateless_apply`` is what Keras's JAX trainer calls.
                new_tv, new_ov = optimizer.stateless_apply(list(ov), grads, list(tv))
                return (
                    [jnp.asarray(a, jnp.dtype(o.dtype)) for a, o in zip(new_tv, tv)],
                    ntv,
                    [jnp.asarray(a, jnp.dtype(o.dtype)) for a, o in zip(new_ov, ov)],
                    mv,
                )
            mapping = list(zip(trainable, tv)) + list(zip(opt_vars, ov))
            with keras.StatelessScope(state_mapping=mapping) as scope:
                optimizer.apply(grads, trainable)
        return (read(scope, trainable, tv), ntv, read(scope, opt_vars, ov), mv)

    def apply_checked(vals, grads, finite, count, bad, step):
        """Apply unless a non-finite value appeared (now or in an earlier window) or the
        window has no unmasked loss element (``count == 0``: all padding)."""
        ok = jnp.logical_and(finite, bad < 0)
        vals = cond(
            jnp.logical_and(ok, count > 0), lambda v: apply_update(v, grads), lambda v: v, vals
        )
        return vals, jnp.where(jnp.logical_or(ok, bad >= 0), bad, step), ok

    def pack_buffer(weighted_grads, count, finite):
        return jnp.concatenate(
            [jnp.reshape(g.astype(jnp.float32), (-1,)) for g in weighted_grads]
            + [jnp.stack([_f32(count), 1.0 - finite.astype(jnp.float32)])],
            0,
        )

    def unpack_apply(vals, summed, bad, step):
        offsets = np.cumsum(sizes).tolist()
        pieces = jnp.split(summed, offsets)
        total, nonfinite = pieces[-1][0], pieces[-1][1]
        grads = [
            (jnp.reshape(p, sh) / jnp.maximum(total, 1e-12)).astype(dt)
            for p, sh, dt in zip(pieces[:-1], shapes, dtypes)
        ]
        return apply_checked(vals, grads, nonfinite < 0.5, total, bad, step)

    # While the row-sharded program is traced (see ``sharded`` below), each device holds some
    # rows of the minibatch: the buffer is summed over the devices (``psum``) before the
    # ranks (MPI), exactly as ranks sum theirs.
    tracing = {"rows": False}
    seeds = {
        id(sg.state)
        for layer in model._flatten_layers(include_self=True)
        for sg in getattr(layer, "_seed_generators", [])
    }

    def reduce(buf):
        if tracing["rows"]:
            buf = lax.psum(buf, _ROWS)
        return buf if allreduce is None else allreduce(buf)

    def learn_window(vals, xw, yw, ww, mw, states, bad, step):
        vals, grads, finite, loss_sum, count, new_states = gradients(vals, xw, yw, ww, mw, states)
        if allreduce is None and not tracing["rows"]:
            vals, bad, ok = apply_checked(vals, grads, finite, count, bad, step)
        else:
            buf = pack_buffer([g * count.astype(g.dtype) for g in grads], count, finite)
            vals, bad, ok = unpack_apply(vals, reduce(buf), bad, step)
        return vals, bad, ok, loss_sum, count, new_states

    def train_window(vals, xw, yw, ww, mw, states, acc):
        loss_acc, count_acc, bad, step = acc
        vals, bad, ok, loss_sum, count, new_states = learn_window(
            vals, xw, yw, ww, mw, states, bad, step
        )
        loss_acc = loss_acc + jnp.where(ok, loss_sum, 0.0)
        count_acc = count_acc + jnp.where(ok, count, 0.0)
        return vals, new_states, (loss_acc, count_acc, bad, step + 1)

    def loop(vals, x, y, w, m, tm, n_win, h0, window_fn, acc, first=None, final=None):
        """Run ``window_fn`` over the windows of a minibatch (see ``plan.WindowPlan.run``),
        threading the variables' values ``vals`` through; returns (vals, states, acc)."""

        def fn(xw, yw, ww, mw, states, c, has_loss):
            vals, states, acc = window_fn(c[0], xw, yw, ww, mw, states, c[1], has_loss)
            return states, (vals, acc)

        states, (vals, acc) = plan.run(x, y, w, m, tm, n_win, h0, fn, (vals, acc), first, final)
        return vals, states, acc

    def train(vals, x, y, w, m, tm, n_win, h0, chunk=None):
        """One minibatch, or one chunk of it (``chunk = (first, final, acc)``: see
        ``backend/tensorflow.py``); returns (result, vals), or ((result, states, acc), vals)."""
        if per_series and tm is not None:
            return train_series(vals, x, y, w, m, tm, n_win, h0, chunk)
        if sync_every > 1 and not per_series:
            return train_accumulated(vals, x, y, w, m, tm, n_win, h0, chunk)
        first, final, (loss0, count0) = (None, None, zero_sums()) if chunk is None else chunk

        def window_fn(vals, xw, yw, ww, mw, states, acc, has_loss):
            if not has_loss:
                _, new_states, vals = run_model(vals, xw, states, True)
                return vals, new_states, acc
            return train_window(vals, xw, yw, ww, mw, states, acc)

        acc = (loss0, count0, _i32(-1), _i32(0) if first is None else _i32(first))
        vals, states, acc = loop(vals, x, y, w, m, tm, n_win, h0, window_fn, acc, first, final)
        # One array, so the host fetches the minibatch's result with one transfer.
        result = jnp.stack([acc[0], acc[1], acc[2].astype(jnp.float32)])
        return (result if chunk is None else (result, states, (acc[0], acc[1]))), vals

    def zero_sums():
        """The loss sum and count a minibatch starts from (a chunk: the previous one's)."""
        return _f32(0.0), _f32(0.0)

    def zero_grads():
        return [jnp.zeros(sh, dt) for sh, dt in zip(shapes, dtypes)]

    def zero_series_acc():
        """What a chunk of ``train_series`` continues from: loss, count, finite, gradients."""
        return (_f32(0.0), _f32(0.0), jnp.asarray(True), zero_grads())

    def train_series(vals, x, y, w, m, tm, n_win, h0, chunk=None):
        """Per-series targets of unequal lengths: each row's loss lives in the window of its
        last real step, so the count-weighted gradients of every window are summed and
        applied in ONE update per minibatch (as for equal lengths), one Allreduce under MPI."""

        def window_fn(vals, xw, yw, ww, mw, states, acc, has_loss):
            loss_acc, count_acc, finite_acc, grads_acc = acc
            vals, grads, finite, loss_sum, count, new_states = gradients(
                vals, xw, yw, ww, mw, states
            )
            grads_acc = [a + g * count.astype(g.dtype) for a, g in zip(grads_acc, grads)]
            return (
                vals,
                new_states,
                (
                    loss_acc + loss_sum,
                    count_acc + count,
                    jnp.logical_and(finite_acc, finite),
                    grads_acc,
                ),
            )

        first, final, acc = (None, None, zero_series_acc()) if chunk is None else chunk
        vals, states, acc = loop(vals, x, y, w, m, tm, n_win, h0, window_fn, acc, first, final)
        loss_sum, count, finite, grads_acc = acc

        def update(vals):
            return unpack_apply(
                vals, reduce(pack_buffer(grads_acc, count, finite)), _i32(-1), _i32(0)
            )

        # A chunk before the last one only sums (and reports the sums so far): the update
        # comes with the minibatch's end.
        vals, bad, ok = (
            update(vals)
            if chunk is None
            else cond(final, update, lambda v: (v, _i32(-1), jnp.asarray(True)), vals)
        )
        result = jnp.stack(
            [jnp.where(ok, loss_sum, 0.0), jnp.where(ok, count, 0.0), bad.astype(jnp.float32)]
        )
        return (result if chunk is None else (result, states, acc)), vals

    def train_accumulated(vals, x, y, w, m, tm, n_win, h0, chunk=None):
        """``sync_every = k > 1`` (for slow networks): the count-weighted gradients of k
        consecutive windows are summed and applied in one update, one Allreduce per k windows
        (and one for a remainder at the minibatch's end). Windows still carry the state; the
        gradient of each is still cut at its borders. Same on every rank: the window count is
        agreed, so every rank flushes at the same windows."""

        def flush(c):
            vals, (loss_acc, count_acc, bad, step, p_loss, p_count, p_finite, p_grads) = c
            vals, bad, ok = unpack_apply(
                vals, reduce(pack_buffer(p_grads, p_count, p_finite)), bad, step - 1
            )
            return vals, (
                loss_acc + jnp.where(ok, p_loss, 0.0),
                count_acc + jnp.where(ok, p_count, 0.0),
                bad,
                step,
                _f32(0.0),
                _f32(0.0),
                jnp.asarray(True),
                zero_grads(),
            )

        def window_fn(vals, xw, yw, ww, mw, states, acc, has_loss):
            loss_acc, count_acc, bad, step, p_loss, p_count, p_finite, p_grads = acc
            vals, grads, finite, loss_sum, count, new_states = gradients(
                vals, xw, yw, ww, mw, states
            )
            acc = (
                loss_acc,
                count_acc,
                bad,
                step + 1,
                p_loss + loss_sum,
                p_count + count,
                jnp.logical_and(p_finite, finite),
                [a + g * count.astype(g.dtype) for a, g in zip(p_grads, grads)],
            )
            vals, acc = cond((step + 1) % sync_every == 0, flush, lambda c: c, (vals, acc))
            return vals, new_states, acc

        first, final, (loss0, count0) = (None, None, zero_sums()) if chunk is None else chunk
        acc = (
            loss0,
            count0,
            _i32(-1),
            _i32(0) if first is None else _i32(first),
            _f32(0.0),
            _f32(0.0),
            jnp.asarray(True),
            zero_grads(),
        )
        vals, states, acc = loop(vals, x, y, w, m, tm, n_win, h0, window_fn, acc, first, final)
        # A remainder of fewer than k windows: one more update (the same on every rank).
        vals, acc = cond(acc[3] % sync_every == 0, lambda c: c, flush, (vals, acc))
        result = jnp.stack([acc[0], acc[1], acc[2].astype(jnp.float32)])
        return (result if chunk is None else (result, states, (acc[0], acc[1]))), vals

    # -------------------------------------------------------------------------------- evaluate
    def evaluate(vals, x, y, w, m, tm, n_win, h0):
        def window_fn(vals, xw, yw, ww, mw, states, acc, has_loss):
            if not has_loss:
                _, new_states, vals = run_model(vals, xw, states, False)
                return vals, new_states, acc
            tv, ntv, ov, mv = vals
            with scope_of(vals, collect_losses=True) as scope:
                loss_sum, count, reg, y_pred, new_states = objective(
                    forward, xw, yw, ww, mw, False, states
                )
                preds, masks = masks_of(y_pred)
            vals = update_metrics(
                (tv, read(scope, non_trainable, ntv), ov, mv), yw, preds, masks, ww, mw
            )
            loss_acc, count_acc, bad, step = acc
            return (
                vals,
                new_states,
                (
                    loss_acc + _f32(loss_sum) + _f32(reg) * _f32(count),
                    count_acc + _f32(count),
                    bad,
                    step + 1,
                ),
            )

        acc = (_f32(0.0), _f32(0.0), _i32(-1), _i32(0))
        vals, _, acc = loop(vals, x, y, w, m, tm, n_win, h0, window_fn, acc)
        return (acc[0], acc[1]), vals

    # --------------------------------------------------------------------------------- predict
    def predict(vals, x, tm, h0):
        """Every window runs (outputs at padded steps are those of the whole sequence); a
        per-series output is, per row, that of the window holding its last real step."""
        T = x[0].shape[1]
        S, n_full, tail = plan.windows_of(T)
        states = zero_states(x[0]) if h0 is None else h0
        ends = None if tm is None else plan.end_windows(tm, S)

        def step(vals, start, length, states):
            xw = tuple(slice_time(a, start, length) for a in x)
            plan.window_mask(tm, start, length)
            try:
                y_pred, new_states, vals = run_model(vals, xw, states, False)
            finally:
                carry.window_mask = None
            return vals, tuple(tree.flatten(y_pred)), new_states

        per_window = []  # (outputs, is stacked over windows)
        if n_full > 0:

            def body(c, i):
                vals, states = c
                vals, preds, states = step(vals, i * S, S, states)
                return (vals, states), preds

            (vals, states), stacked = lax.scan(
                body, (vals, states), jnp.arange(n_full, dtype=jnp.int32)
            )
            per_window.append(stacked)  # each (n_full, B, ...)
        if tail:
            vals, preds, states = step(vals, n_full * S, tail, states)
            per_window.append(tuple(p[None] for p in preds))
        outs = []
        for k in range(len(per_window[0])):
            parts = [w[k] for w in per_window]
            if not per_series:  # per step: (n, B, S, ...) -> (B, n*S, ...), then the tail
                seq = []
                for p in parts:
                    p = jnp.moveaxis(p, 0, 1)
                    seq.append(
                        jnp.reshape(p, (p.shape[0], p.shape[1] * p.shape[2]) + tuple(p.shape[3:]))
                    )
                outs.append(seq[0] if len(seq) == 1 else jnp.concatenate(seq, axis=1))
            else:  # per series: the last window's, or per row that of its last real step
                every = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0)
                if ends is None:
                    outs.append(every[-1])
                else:
                    index = jnp.reshape(ends, (1, -1) + (1,) * (every.ndim - 2))
                    outs.append(jnp.take_along_axis(every, index, axis=0)[0])
        return (tuple(outs), states), vals

    # ------------------------------------------------------------------------------- wrappers
    def compiled(fn, donate):
        # Always compiled (see jit_for): ``jit_compile`` chooses XLA or not on TensorFlow only.
        return jax.jit(fn, donate_argnums=(0,) if donate else ())

    train_c = compiled(xla_rnn_loops(model, seq_len, train), True)
    evaluate_c = compiled(evaluate, False)
    predict_c = compiled(predict, False)

    # ------------------------------------------------------------- rows over the CPU devices
    def train_rows(vals, x, y, w, m, tm, n_win, h0, chunk=None):
        """``train`` on this device's rows; the gradients are summed over devices per update
        (``reduce``), so every device applies the same update to the same weights. The
        minibatch's loss and count and the metrics' increments are summed at the end.

        A chunk's sums (loss, count, per-series gradients) are this device's own, summed over
        the devices as at the end of one call: between chunks they travel with a leading
        axis of one entry per device."""
        if chunk is not None:
            chunk = chunk[:2] + (jax.tree.map(lambda a: a[0], chunk[2]),)
        tracing["rows"] = True
        try:
            out, (tv, ntv, ov, mv) = train(own_seeds(vals), x, y, w, m, tm, n_win, h0, chunk)
        finally:
            tracing["rows"] = False
        result = out if chunk is None else out[0]
        result = jnp.concatenate([lax.psum(result[:2], _ROWS), result[2:]])
        mv = [a + lax.psum(b - a, _ROWS) for a, b in zip(vals[3], mv)]
        if chunk is not None:
            result = (result, out[1], jax.tree.map(lambda a: a[None], out[2]))
        return result, (tv, ntv, ov, mv)

    def own_seeds(vals):
        """Dropout draws from the seed generators' states: each device offsets its copy, so
        the rows of different devices get different masks; device 0's copy (offset 0) is the
        one kept, so the states advance as on one device."""
        offset = lax.axis_index(_ROWS).astype(jnp.uint32) * jnp.uint32(0x9E3779B9)
        ntv = [
            v + jnp.asarray([1, 0], v.dtype) * offset.astype(v.dtype) if id(var) in seeds else v
            for var, v in zip(non_trainable, vals[1])
        ]
        return (vals[0], ntv) + tuple(vals[2:])

    def predict_rows(vals, x, tm, h0):
        """``predict`` on this device's rows (its own dropout masks, e.g. Monte Carlo
        dropout with ``training=True``)."""
        return predict(own_seeds(vals), x, tm, h0)

    programs = {}  # (name, replicas) -> the jitted row-split program

    def on_devices(name, fn, k, in_kinds, out_kinds):
        """``fn`` run by ``k`` CPU devices at once, each on its share of the rows of the
        arguments marked ``"rows"`` (the others, ``"all"``, are copied to every device); an
        output marked ``"all"`` is device 0's."""
        if (name, k) not in programs:
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

            programs[name, k] = call
        return programs[name, k]

    # Splitting the rows of a training minibatch keeps the result of one device (the same
    # maths, summed in another order). Not with MPI (one rank per core is the user's choice
    # there), not for models whose non-trainable state depends on the rows (normalisation
    # statistics), not for a callable loss that may mix rows. Dropout's seed generators are
    # the one non-trainable state allowed (see ``own_seeds``).
    n_params = sum(sizes)
    can_shard = (
        allreduce is None
        and all(id(v) in seeds for v in non_trainable)
        and optimizer is not None
        and not getattr(objective, "needs_exact_rows", False)
    )

    def replicas_for(x):
        """How many CPU devices share this minibatch's rows (1: the plain program)."""
        if not can_shard:
            return 1
        rows, T = x[0].shape[0], x[0].shape[1]
        S = T if seq_len is None else min(seq_len, T)
        return row_replicas(rows, rows * S * n_params)

    def current():
        """The variables' values. ``train`` donates them (updated in place, as Keras's own
        JAX trainer does), and XLA refuses one buffer donated twice: two variables that share
        a buffer (one assigned from the other's value) get a copy."""
        seen = set()

        def own(a):
            if id(a) in seen:
                return jnp.array(a, copy=True)
            seen.add(id(a))
            return a

        return (
            [own(v.value) for v in trainable],
            [own(v.value) for v in non_trainable],
            [own(v.value) for v in opt_vars],
            [own(v.value) for v in metric_vars],
        )

    def assign(variables, values):
        for v, a in zip(variables, values):
            v._direct_assign(a)

    def train_call(x, y, w, m, tm, n_win, h0, chunk=None):
        k = replicas_for(x)
        if k > 1:
            split_calls[0] += 1
            kinds = ["all", "rows", "rows", "rows", "rows", "rows", "all", "rows"]
            out_kind = "all"
            if chunk is not None:  # (first, final, per-device sums)
                kinds.append(("all", "all", "rows"))
                out_kind = ("all", "rows", "rows")
            result, new = on_devices(
                "train" if chunk is None else "train_chunk",
                train_rows,
                k,
                tuple(kinds),
                (out_kind, "all"),
            )(current(), x, y, w, m, tm, n_win, h0, *([] if chunk is None else [chunk]))
            # Replicated over the devices: the variables keep device 0's copy (no copy made).
            tv, ntv, ov, mv = ([_first_shard(a) for a in part] for part in new)
            result = (
                _first_shard(result)
                if chunk is None
                else ((_first_shard(result[0]),) + tuple(result[1:]))
            )
        else:
            result, (tv, ntv, ov, mv) = train_c(current(), x, y, w, m, tm, n_win, h0, chunk)
        assign(trainable, tv)
        assign(non_trainable, ntv)
        assign(opt_vars, ov)
        assign(metric_vars, mv)
        return result

    def evaluate_call(x, y, w, m, tm, n_win, h0):
        result, (_, ntv, _, mv) = evaluate_c(current(), x, y, w, m, tm, n_win, h0)
        assign(non_trainable, ntv)
        assign(metric_vars, mv)
        return result

    def predict_call(x, tm, h0):
        tv, ntv, _, _ = current()
        rows, T = x[0].shape[0], x[0].shape[1]
        # Rows are independent in inference (dropout off, normalisation by its moving
        # statistics) and the devices never wait for each other: split when the work pays.
        k = row_replicas(rows, rows * T * n_params)
        if k > 1:
            split_calls[0] += 1
            result, (_, ntv, _, _) = on_devices(
                "predict",
                predict_rows,
                k,
                ("all", "rows", "rows", "rows"),
                (("rows", "rows"), "all"),
            )((tv, ntv, [], []), x, tm, h0)
            # Outputs and states back on device 0, where the next call's arguments live.
            result = jax.device_put(result, jax.devices("cpu")[0])
            ntv = [_first_shard(a) for a in ntv]
        else:
            result, (_, ntv, _, _) = predict_c((tv, ntv, [], []), x, tm, h0)
        assign(non_trainable, ntv)
        return result

    def chunk_start(x, tm):
        """The zero states and accumulators the first chunk of a minibatch starts from (the
        per-series sums with one entry per device when the rows are split)."""
        states = zero_states(x[0])
        k = replicas_for(x)
        acc = zero_series_acc() if per_series and tm is not None else zero_sums()
        return states, (
            acc if k == 1 else jax.tree.map(lambda a: jnp.broadcast_to(a, (k,) + a.shape), acc)
        )

    return StepFunctions(
        train=None if optimizer is None else train_call,
        evaluate=evaluate_call,
        predict=predict_call,
        exact_rows=getattr(objective, "needs_exact_rows", False),
        chunk_start=chunk_start,
    )


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
    if (
        jax.config.jax_num_cpu_devices != -1
        or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
    ):
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

    reduce.xla = None if host else "mpi4jax"
    return reduce


# ------------------------------------------------------------------------------------ devices
def _device(name: str | None):
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
