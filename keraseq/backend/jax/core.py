"""JAX's primitives for keraseq: host <-> array conversion and the traced loops.

What lives here: :func:`to_tensor`, :func:`to_numpy`, :func:`dtype_of`, :func:`shapes_of` (a
model call's output shapes, traced and not run), :func:`release_eager_kernels`; the traced
primitives that the window programs (``backend/base.py``) and the window plan
(``backend/plan.py``) run on (:func:`while_loop`, :func:`cond`, :func:`scan`,
:func:`slice_time`, :func:`pad_time`); and what the fused recurrent loop (``fused.py``) asks of
the backend (:func:`time_scan`, :func:`custom_vjp`, :func:`elementwise_grad`; ``on_gpu`` is in
``cudnn.py``).

What does not live here: the programs themselves (``steps.py``), the rows split over CPU
devices (``rows.py``), the Allreduce (``mpi.py``), devices (``devices.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def to_tensor(a):
    """A host array (or ``None``) as an argument of keraseq's compiled programs: a NumPy
    array or scalar as it is (``jax.jit`` moves it to the device of the scope as part of the
    call: ~6 µs, where ``jnp.asarray`` first costs ~100 µs per array, on every minibatch and
    every streaming step), anything else as a JAX array on the default device of the scope."""
    if a is None or isinstance(a, (np.ndarray, np.generic)):
        return a
    return jnp.asarray(a)


def to_numpy(t) -> np.ndarray:
    return np.asarray(t)


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


# ------------------------------------------------------------------------- traced loops
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


def scan(body, init, n: int):
    """``lax.scan`` over ``i = 0 .. n - 1`` (``body(carry, i) -> (carry, outputs)``): the final
    carry and each output stacked over ``i`` on a new first axis."""
    return time_scan(body, init, jnp.arange(n, dtype=jnp.int32))


# ------------------------------------------------------- primitives of the fused RNN loop
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
