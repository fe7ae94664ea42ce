"""The JAX window programs: :class:`JaxSteps`, the JAX half of ``backend/base.py``.

What lives here: :class:`JaxSteps` (what differs from TensorFlow: the variables' values
``vals`` threaded through pure functions in a ``keras.StatelessScope``, ``jax.value_and_grad``,
the stateless optimizer update, ``jax.jit`` with donation, the callables that read the
variables, call a program and assign the new values back), :func:`build_step_functions`, which
builds it, :func:`jit_for` (always XLA on JAX) and the float64 check. One ``jax.jit`` program
per minibatch runs all its windows in a ``lax.while_loop`` whose bound is a runtime value (the
window count of a minibatch of unequal lengths: no recompilation per count).

What does not live here: what a window does (``backend/base.py``, shared with TensorFlow), the
traced primitives (``core.py``), a minibatch's rows over CPU devices (``rows.py``: ``JaxSteps``
is a ``RowSplit``), cuDNN or XLA's loop on a GPU (``cudnn.py``), the Allreduce (``mpi.py``),
devices (``devices.py``), the epoch loop, the state carry (``windows.py``), the objectives
(``losses.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import keras

from ..common import StepFunctions
from . import core, cudnn
from .rows import RowSplit, row_replicas


def jit_for(
    model, setting, work: float = 0.0, distributed: bool = False, fused: bool = False
) -> bool:
    """Always True: on JAX, XLA (``jax.jit``) is the only compiler, and keraseq's window loop
    is always one compiled program, as on TensorFlow (where ``jit_compile=False`` still
    compiles a graph, without XLA). ``jit_compile=False`` therefore compiles too; to run op by
    op (prints and breakpoints in the model), wrap the call in ``with jax.disable_jit():``."""
    return True


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


class JaxSteps(RowSplit):
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
    (:class:`~keraseq.backend.jax.rows.RowSplit`, ``rows.py``): the gradient buffer is summed
    over the devices (``psum``) before the ranks, exactly as ranks sum theirs.
    """

    while_loop = staticmethod(core.while_loop)
    cond = staticmethod(core.cond)
    scan = staticmethod(core.scan)
    slice_time = staticmethod(core.slice_time)
    pad_time = staticmethod(core.pad_time)

    def __init__(self, model: keras.Model, *args, **kwargs):
        """The arguments of :func:`build_step_functions`."""
        _check_float64(model)
        super().__init__(model, *args, **kwargs)
        optimizer = self.optimizer
        self.non_trainable = list(model.non_trainable_variables)
        self.opt_vars = [] if optimizer is None else list(optimizer.variables)
        self.metric_vars = [v for metric in self.metrics for v in metric.variables]
        self.n_params = sum(self.sizes)
        self.setup_rows(model)

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

    # --------------------------------------------------------------- compiled and called
    def step_functions(self) -> StepFunctions:
        # Always compiled (see jit_for): ``jit_compile`` chooses XLA or not on TensorFlow only.
        train = cudnn.xla_rnn_loops(self.model, self.seq_len, self.train)
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
        if k > 1:
            return self.train_split(k, x, y, w, m, tm, n_win, h0, chunk)
        result, vals = self.train_c(self.current(), x, y, w, m, tm, n_win, h0, chunk)
        self.assign(vals)
        return result

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
        return self.predict_split(k, tv, ntv, x, tm, h0)


#: The compiled minibatch functions (the contract of ``backend/__init__.py``; what they do:
#: :class:`~keraseq.backend.base.BaseSteps`), built by :class:`JaxSteps`. Float64 models
#: need JAX's 64-bit mode (refused otherwise).
build_step_functions = JaxSteps.build
