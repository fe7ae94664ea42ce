"""The fused window loop of Keras's standard recurrent layers: same maths, fewer operations.

What lives here: :func:`run`, the recurrent loop of an ``LSTM``, ``GRU`` (``reset_after`` True
or False) or ``SimpleRNN`` as keraseq runs it inside its compiled window programs, and
:func:`why_not`, which says why a layer keeps Keras's own loop. Keras's cells compute
``x @ kernel + h @ recurrent_kernel + bias`` at every step, and the gradient of that scan adds
into the weight gradients at every step. Here:

- the input projection of the whole window, ``x @ kernel + bias``, is one matmul before the
  time loop (input dropout applied first, with the mask Keras's cell draws);
- the time loop carries only the recurrent part (one ``h @ recurrent_kernel`` per step) and
  the elementwise gate maths, with masks (``Masking``, ``lengths``, token masks) by ``where``
  as Keras's ``backend.rnn`` applies them;
- in training, the backward pass is written out (a custom gradient: ``jax.custom_vjp`` /
  ``tf.custom_gradient``): a reverse time loop computes the pre-activation gradients from the
  gate values saved by the forward loop, and the recurrent kernel's gradient is ONE matmul
  after it (``h_{t-1}`` of every step against the gradients of every step); the input
  kernel's and the input's gradients are single matmuls too (the projection's own gradient).

The maths is Keras's: the same gates in the same order, the same activations (any of Keras's
elementwise activations: derivatives from the saved outputs for ``tanh``, ``sigmoid``,
``relu`` and ``linear``, else by the backend's autodiff of the activation alone), the same
masked semantics; it agrees with Keras's loop to float rounding (``tests/test_fused.py``).

What does not live here: the state carry between windows (``windows.py`` calls :func:`run`
from its patch of the layers' ``inner_loop``), the backends' primitives it uses
(``time_scan``, ``custom_vjp``, ``elementwise_grad``, ``on_gpu`` of each backend), the rule of
which layers take it (``fused_rule.py``, which the backends import without this module).
Anything else (``recurrent_dropout``, custom cells or layer subclasses, ``go_backwards``,
``unroll``, ConvLSTM, cuDNN on a GPU, float16) keeps Keras's loop.

Example:
    >>> import keras, numpy as np
    >>> from keraseq import fused
    >>> lstm = keras.layers.LSTM(4, return_sequences=True)
    >>> x = np.random.rand(2, 5, 3).astype("float32")
    >>> y = lstm(x)
    >>> h0 = [np.zeros((2, 4), "float32")] * 2
    >>> last, outputs, states = fused.run(lstm, x, h0, None, False)
    >>> bool(np.allclose(outputs, y, atol=1e-6)), fused.why_not(lstm)
    (True, None)
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops, tree

from . import fused_rule
from .fused_rule import ELEMENTWISE_ACTIVATIONS as ELEMENTWISE_ACTIVATIONS
from .fused_rule import activation_name as _activation_name

__all__ = ["run", "why_not", "ELEMENTWISE_ACTIVATIONS"]


def _backend():
    from .backend import current

    return current()


def why_not(layer, xla: bool = True) -> str | None:
    """``None`` when ``layer`` runs the fused loop in keraseq's window programs, else why it
    keeps Keras's own loop (a short phrase). ``xla``: whether the programs compile with XLA
    (always on JAX; on TensorFlow a plain graph runs Keras's loop faster than the fused one).
    The rule is :func:`keraseq.fused_rule.why_not`, with the running backend's facts."""
    return fused_rule.why_not(layer, xla, lambda: _backend().on_gpu(), keras.backend.backend())


# ------------------------------------------------------------------------- activations
def _act(cell, attr):
    fn = getattr(cell, attr, None)
    return keras.activations.linear if fn is None else fn


def _derivative(fn, y, pre):
    """``fn'`` at the point where ``fn(pre) = y``: from ``y`` where that is exact, else by the
    backend's autodiff of ``fn`` alone (``pre`` is then saved by the forward loop)."""
    name = _activation_name(fn)
    if name == "tanh":
        return 1.0 - y * y
    if name == "sigmoid":
        return y * (1.0 - y)
    if name == "linear":
        return ops.ones_like(y)
    if name == "relu":
        return ops.cast(y > 0, y.dtype)
    return _backend().elementwise_grad(fn, pre)


def _needs_pre(fn) -> bool:
    return _activation_name(fn) not in ("tanh", "sigmoid", "linear", "relu")


# ------------------------------------------------------------------------------- cells
class _Cell:
    """One cell kind's maths on time-major steps: ``step`` (forward of one step from the
    projected input ``xp`` of that step), ``back`` (its backward), ``rec_grads`` (the
    recurrent weights' gradients as single matmuls over all steps).

    ``keep`` (optional, ``(B, 1)``: 0.0 where a reset comes before this step, else 1.0): in
    ``step`` the states are taken as ``states * keep``, in ``back`` the gradients returned
    are those of the states before that product. It is applied inside the elementwise work
    next to each matmul (``keep * (h @ U)``, ``(keep * dz) @ U^T``), where XLA fuses it:
    no extra operation per step (a separate ``h * keep`` before the matmul cost 5-10 % of
    the character LM's epoch on JAX)."""

    n_states = 1

    def __init__(self, cell):
        self.cell = cell
        self.act = _act(cell, "activation")
        self.ract = _act(cell, "recurrent_activation")
        self.save_pre = _needs_pre(self.act) or (
            hasattr(cell, "recurrent_activation") and _needs_pre(self.ract)
        )

    def weights(self, dtype):
        """``(kernel, input bias or None, recurrent tensors)`` as tensors of ``dtype``."""
        cell = self.cell
        bias = None if not cell.use_bias else ops.cast(cell.bias, dtype)
        rec = (ops.cast(cell.recurrent_kernel, dtype),)
        return ops.cast(cell.kernel, dtype), bias, rec


class _LSTM(_Cell):
    n_states = 2

    def step(self, xp, states, rec, keep=None):
        h, c = states
        (U,) = rec
        hU = ops.matmul(h, U)
        if keep is not None:
            hU, c = keep * hU, keep * c
        z = xp + hU
        zi, zf, zg, zo = ops.split(z, 4, axis=-1)
        i, f, g, o = self.ract(zi), self.ract(zf), self.act(zg), self.ract(zo)
        c_new = f * c + i * g
        tc = self.act(c_new)
        h_new = o * tc
        res = {"i": i, "f": f, "g": g, "o": o, "tc": tc}
        if self.save_pre:
            res.update(zi=zi, zf=zf, zg=zg, zo=zo, c=c_new)
        return (h_new, c_new), res

    def back(self, d_new, res, prev, rec, keep=None):
        dh, dc = d_new
        _, c_prev = prev
        (Ut,) = rec
        r = res
        dc = dc + dh * r["o"] * _derivative(self.act, r["tc"], r.get("c"))
        dz = ops.concatenate(
            [
                dc * r["g"] * _derivative(self.ract, r["i"], r.get("zi")),
                dc * c_prev * _derivative(self.ract, r["f"], r.get("zf")),
                dc * r["i"] * _derivative(self.act, r["g"], r.get("zg")),
                dh * r["tc"] * _derivative(self.ract, r["o"], r.get("zo")),
            ],
            axis=-1,
        )
        if keep is None:
            return dz, dz, (ops.matmul(dz, Ut), dc * r["f"])
        return dz, dz, (ops.matmul(keep * dz, Ut), keep * dc * r["f"])

    def rec_grads(self, h_prev, dpre, res):
        return (_step_matmul(h_prev, dpre),)


class _GRU(_Cell):
    def weights(self, dtype):
        cell = self.cell
        kernel, bias, rec = super().weights(dtype)
        if cell.use_bias and cell.reset_after:  # bias (2, 3 units): input, recurrent
            return kernel, bias[0], rec + (bias[1],)
        return kernel, bias, rec

    def step(self, xp, states, rec, keep=None):
        (h,) = states
        units = self.cell.units
        xz, xr, xh = ops.split(xp, 3, axis=-1)
        res: dict[str, Any] = {}
        if self.cell.reset_after:
            inner = ops.matmul(h, rec[0])
            if keep is not None:
                inner, h = keep * inner, keep * h
            if len(rec) > 1:
                inner = inner + rec[1]
            rz, rr, rh = ops.split(inner, 3, axis=-1)
            pz, pr = xz + rz, xr + rr
            z, r = self.ract(pz), self.ract(pr)
            ph = xh + r * rh
            res["rh"] = rh
        else:
            inner = ops.matmul(h, rec[0][:, : 2 * units])
            if keep is not None:
                inner, h = keep * inner, keep * h
            rz, rr = ops.split(inner, 2, axis=-1)
            pz, pr = xz + rz, xr + rr
            z, r = self.ract(pz), self.ract(pr)
            rh_in = r * h
            ph = xh + ops.matmul(rh_in, rec[0][:, 2 * units :])
            res["rh_in"] = rh_in
        hh = self.act(ph)
        h_new = z * h + (1.0 - z) * hh
        res.update(z=z, r=r, hh=hh)
        if self.save_pre:
            res.update(pz=pz, pr=pr, ph=ph)
        return (h_new,), res

    def back(self, d_new, res, prev, rec, keep=None):
        (dh,) = d_new
        (h_prev,) = prev
        r = res
        units = self.cell.units
        Ut = rec[0]  # the transposed recurrent kernel (3 units, units)
        dph = dh * (1.0 - r["z"]) * _derivative(self.act, r["hh"], r.get("ph"))
        dz = dh * (h_prev - r["hh"]) * _derivative(self.ract, r["z"], r.get("pz"))
        dh_prev = dh * r["z"]
        if self.cell.reset_after:
            dr = dph * r["rh"] * _derivative(self.ract, r["r"], r.get("pr"))
            dxp = ops.concatenate([dz, dr, dph], axis=-1)
            dinner = ops.concatenate([dz, dr, dph * r["r"]], axis=-1)
            if keep is None:
                return dxp, dinner, (dh_prev + ops.matmul(dinner, Ut),)
            return dxp, dinner, (keep * dh_prev + ops.matmul(keep * dinner, Ut),)
        d_rh_in = ops.matmul(dph, Ut[2 * units :])
        dr = d_rh_in * h_prev * _derivative(self.ract, r["r"], r.get("pr"))
        dzr = ops.concatenate([dz, dr], axis=-1)
        dxp = ops.concatenate([dzr, dph], axis=-1)
        if keep is None:
            dh_prev = dh_prev + d_rh_in * r["r"] + ops.matmul(dzr, Ut[: 2 * units])
        else:
            dh_prev = keep * (dh_prev + d_rh_in * r["r"]) + ops.matmul(keep * dzr, Ut[: 2 * units])
        return dxp, dxp, (dh_prev,)

    def rec_grads(self, h_prev, dpre, res):
        if self.cell.reset_after:
            out = (_step_matmul(h_prev, dpre),)
            if self.cell.use_bias:
                out += (ops.sum(dpre, axis=(0, 1)),)
            return out
        units = self.cell.units
        d_zr = _step_matmul(h_prev, dpre[..., : 2 * units])
        d_h = _step_matmul(res["rh_in"], dpre[..., 2 * units :])
        return (ops.concatenate([d_zr, d_h], axis=1),)


class _SimpleRNN(_Cell):
    def step(self, xp, states, rec, keep=None):
        (h,) = states
        hU = ops.matmul(h, rec[0])
        pre = xp + (hU if keep is None else keep * hU)
        h_new = self.act(pre)
        res = {"h": h_new}
        if self.save_pre:
            res["pre"] = pre
        return (h_new,), res

    def back(self, d_new, res, prev, rec, keep=None):
        (dh,) = d_new
        da = dh * _derivative(self.act, res["h"], res.get("pre"))
        return da, da, (ops.matmul(da if keep is None else keep * da, rec[0]),)

    def rec_grads(self, h_prev, dpre, res):
        return (_step_matmul(h_prev, dpre),)


#: The maths of each cell kind of :data:`keraseq.fused_rule.CELLS`.
_CELLS = dict(zip(fused_rule.CELLS, (_LSTM, _GRU, _SimpleRNN)))


def _step_matmul(a, b):
    """``sum_t a[t]^T @ b[t]`` for time-major ``(S, B, m)`` and ``(S, B, n)``: ONE matmul."""
    m, n = a.shape[-1], b.shape[-1]
    return ops.matmul(ops.transpose(ops.reshape(a, (-1, m))), ops.reshape(b, (-1, n)))


# ------------------------------------------------------------------------------ the loop
def run(layer, sequences, initial_state, mask, training: bool = False, resets=None):
    """The recurrent loop of ``layer`` over ``sequences`` ``(B, S, F)`` from ``initial_state``
    (a list of ``(B, units)`` tensors), with the optional ``(B, S)`` mask: what the layer's
    ``inner_loop`` returns, ``(last_output, outputs (B, S, units), final states)``.

    ``resets`` (optional, ``(B, S)`` booleans): where true, that row's state is set to zeros
    (the layer's default initial state) before that step; no gradient flows back through a
    reset. A masked step keeps the state it starts from (zeros after a reset there) and
    outputs its ``h`` (or zeros with ``zero_output_for_mask``), as Keras's loop does.

    Only for a layer :func:`why_not` accepts; called inside the layer's ``call`` (its input
    dropout mask is the one Keras drew for this call)."""
    cell = layer.cell
    kind = _CELLS[type(cell)](cell)
    dtype = layer.compute_dtype
    x = ops.cast(sequences, dtype)
    if training and 0.0 < cell.dropout < 1.0:
        dp_mask = cell.get_dropout_mask(sequences[:, 0, :])
        x = x * ops.expand_dims(ops.cast(dp_mask, dtype), 1)
    kernel, bias, rec = kind.weights(dtype)
    # Time-major (S, B, G): the (narrow) input is transposed, not its projection.
    xp = ops.matmul(ops.transpose(x, (1, 0, 2)), kernel)
    if bias is not None:
        xp = xp + bias
    states0 = [ops.cast(s, dtype) for s in tree.flatten(initial_state)][: kind.n_states]
    if tree.is_nested(mask):
        mask = mask[0]
    m = None
    if mask is not None:
        m = ops.cast(ops.expand_dims(ops.transpose(ops.cast(mask, "bool"), (1, 0)), -1), dtype)
    r = None  # per step and row: 0.0 before a reset, else 1.0 (the states are multiplied by it)
    if resets is not None:
        kept = ops.logical_not(ops.cast(resets, "bool"))
        r = ops.cast(ops.expand_dims(ops.transpose(kept, (1, 0)), -1), dtype)
    zero_output = bool(layer.zero_output_for_mask)
    loop = _Loop(kind, zero_output, m is not None, r is not None)
    args = [xp, *rec, *states0] + [a for a in (m, r) if a is not None]
    if training:
        flat = _backend().custom_vjp(loop.forward, loop.backward)(*args)
    else:
        flat = loop.forward(*args, save=False)[0]
    outs, finals = flat[0], list(flat[1:])
    outputs = ops.transpose(outs, (1, 0, 2))
    return outs[-1], outputs, finals


class _Loop:
    """The time loops of one call: :meth:`forward` (with what the backward needs, when
    ``save``) and :meth:`backward`, over the flat arguments
    ``xp, *rec, *states0[, mask][, resets]``."""

    def __init__(self, kind: _Cell, zero_output: bool, masked: bool, reset: bool = False):
        self.kind, self.zero_output, self.masked, self.reset = kind, zero_output, masked, reset

    def unpack(self, args):
        n_rec = len(args) - 1 - self.kind.n_states - int(self.masked) - int(self.reset)
        xp, rec = args[0], tuple(args[1 : 1 + n_rec])
        at = 1 + n_rec + self.kind.n_states
        states = tuple(args[1 + n_rec : at])
        m = args[at] if self.masked else None
        r = args[at + int(self.masked)] if self.reset else None
        return xp, rec, states, m, r

    @staticmethod
    def joined(head: tuple, m, r) -> tuple:
        """The scanned sequences: ``head``, then the mask and the resets where given."""
        return head + tuple(a for a in (m, r) if a is not None)

    def split(self, xs, n_head: int) -> tuple:
        """One step of :meth:`joined`'s sequences: ``(*head, mask or None, resets or None)``."""
        rest = list(xs[n_head:])
        m_t = rest.pop(0) if self.masked else None
        r_t = rest.pop(0) if self.reset else None
        return (*xs[:n_head], m_t, r_t)

    def forward(self, *args, save: bool = True):
        xp, rec, states0, m, r = self.unpack(args)
        kind, zero_output = self.kind, self.zero_output

        def body(states, xs):
            xp_t, m_t, r_t = self.split(xs, 1)
            kept = r_t  # a reset: this row starts again from zeros (inside the cell's maths)
            if r_t is not None and m_t is not None:  # a masked step holds the reset states
                states, kept = tuple(s * r_t for s in states), None
            raw, res = kind.step(xp_t, states, rec, kept)
            if m_t is None:
                new, out = raw, raw[0]
            else:
                keep = m_t > 0.5
                new = tuple(ops.where(keep, a, b) for a, b in zip(raw, states))
                out = ops.where(keep, raw[0], ops.zeros_like(raw[0])) if zero_output else new[0]
            separate = m_t is not None and zero_output  # else the output is the new h
            ys = {"out": out} if separate or not save else {}
            if save:
                ys.update(res=res, states=new)
            return new, ys

        finals, ys = _backend().time_scan(body, states0, self.joined((xp,), m, r))
        flat = [ys["out"] if "out" in ys else ys["states"][0], *finals]
        if not save:
            return flat, None
        return flat, (args, ys["res"], ys["states"])

    def backward(self, saved, cts):
        args, res, states = saved
        xp, rec, states0, m, r = self.unpack(args)
        kind, zero_output = self.kind, self.zero_output
        d_outs = cts[0]
        d_finals = tuple(cts[1:])
        # The states each step started from: the initial ones, then those of steps 0..S-2
        # (zeros where a reset falls).
        prev = tuple(
            ops.concatenate([ops.expand_dims(s0, 0), s[:-1]], axis=0)
            for s0, s in zip(states0, states)
        )
        if r is not None:
            prev = tuple(p * r for p in prev)
        rec_t = tuple(ops.transpose(r) if len(r.shape) == 2 else r for r in rec)

        def body(d_states, xs):
            d_out, res_t, prev_t, m_t, r_t = self.split(xs, 3)
            d_h = d_states[0]
            if m_t is None:
                d_raw = (d_h + d_out,) + d_states[1:]
                through = None
            else:
                keep = m_t > 0.5
                zero = ops.zeros_like(d_h)
                d_new_h = d_h if zero_output else d_h + d_out
                d_raw_h = d_new_h + d_out if zero_output else d_new_h
                d_raw = (ops.where(keep, d_raw_h, zero),) + tuple(
                    ops.where(keep, d, zero) for d in d_states[1:]
                )
                through = (ops.where(keep, zero, d_new_h),) + tuple(
                    ops.where(keep, zero, d) for d in d_states[1:]
                )
            # no gradient crosses a reset: inside the cell's backward, or here when masked
            dxp_t, dpre_t, d_prev = kind.back(
                d_raw, res_t, prev_t, rec_t, r_t if through is None else None
            )
            if through is not None:
                d_prev = tuple(a + b for a, b in zip(d_prev, through))
                if r_t is not None:
                    d_prev = tuple(d * r_t for d in d_prev)
            ys = (dxp_t,) if dpre_t is dxp_t else (dxp_t, dpre_t)
            return tuple(d_prev), ys

        xs = self.joined((d_outs, res, prev), m, r)
        d_states0, ys = _backend().time_scan(body, d_finals, xs, reverse=True)
        dxp = ys[0]
        dpre = ys[-1]
        d_rec = kind.rec_grads(prev[0], dpre, res)
        grads = [dxp, *d_rec, *d_states0]
        grads += [ops.zeros_like(a) for a in (m, r) if a is not None]
        return grads
