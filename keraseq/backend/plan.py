"""The window plan both backends compile: which windows of a minibatch run, in what order, with
which targets, masks and weights.

What lives here: :class:`WindowPlan`, written once with ``keras.ops`` for both backends.
It pads a short tail to a whole window when series have unequal lengths and bounds the loop
by the runtime window count. It chooses each window's targets (per step, or per series in the
window of each row's last real step), and hands every window to the backend's
``window_fn`` (``BaseSteps.loop``) with the state carried, and joins the windows' outputs of
``predict`` into one (:meth:`~WindowPlan.join_windows`). Each backend supplies its own
``while_`` loop, conditional and time slicing (``backend/tensorflow.py``,
``backend/jax/core.py``), the zero states come from ``backend/base.py``.

What does not live here: what a window does (forward, gradient, update: ``backend/base.py``),
the state carry itself (``windows.py``), the objectives (``losses.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from keras import ops

if TYPE_CHECKING:  # (``windows.py`` runs the fused loop, which asks for the backend)
    from ..windows import StateCarry


class WindowPlan:
    """The windows ``[0:S], [S:2S], ...`` of one minibatch.

    ``while_(bound, body, init, maximum)`` runs ``body(i, carry) -> carry`` for
    ``i = 0 .. bound - 1`` (``bound`` may be a traced value, at most ``maximum``);
    ``slice_time(a, start, length)`` is ``a[:, start:start + length]``; ``pad_time(a, extra)``
    appends ``extra`` zero steps; ``zero_states(x0)`` gives the zero states for the rows of
    ``x0``; ``cond(pred, true_fn, false_fn, operand)`` (only for chunks, see :meth:`run`) is
    the backend's traced conditional.

    Example (eager, with TensorFlow's or JAX's primitives):

        >>> import numpy as np
        >>> from keraseq.backend import current
        >>> b = current()
        >>> plan = WindowPlan(None, 4, False, b.while_loop, b.slice_time, b.pad_time,
        ...                   lambda x0: [])
        >>> plan.windows_of(10)  # window length, full windows, tail length
        (4, 2, 2)
    """

    def __init__(
        self,
        carry: StateCarry | None,
        seq_len: int | None,
        per_series: bool,
        while_: Callable,
        slice_time: Callable,
        pad_time: Callable,
        zero_states: Callable,
        cond: Callable | None = None,
    ):
        self.carry = carry
        self.seq_len = seq_len
        self.per_series = per_series
        self.while_ = while_
        self.slice_time = slice_time
        self.pad_time = pad_time
        self.zero_states = zero_states
        self.cond = cond

    def windows_of(self, T: int) -> tuple[int, int, int]:
        """(window length S, number of full windows, length of the short tail window)."""
        S = T if self.seq_len is None else min(self.seq_len, T)
        return S, T // S, T - (T // S) * S

    @staticmethod
    def end_windows(tm, S: int):
        """Per row, the index of the window holding its last real time step (0 if none)."""
        T = tm.shape[1]
        steps = ops.cast(ops.arange(1, T + 1), "float32")
        length = ops.max(ops.cast(WindowPlan.real(tm), "float32") * steps[None], axis=1)
        return ops.cast(ops.maximum(length - 1.0, 0.0), "int32") // S

    @staticmethod
    def padded(tm) -> bool:
        """Whether a time mask may mark padded steps: a float mask or int32 marks; not int8
        marks (resets on a minibatch without padding, :func:`keraseq.lengths.time_mask`) nor
        ``None``. Only with padding do the programs skip windows, pad a short tail and take
        per-series losses where each row ends."""
        return tm is not None and "int8" not in str(tm.dtype)

    @staticmethod
    def real(marks):
        """The real steps of a time mask: ``> 0`` of a float mask, bit 0 of integer marks."""
        if "int" in str(marks.dtype):
            return ops.equal(marks % 2, 1)
        return marks > 0

    def window_mask(self, tm, start, length):
        """Set the state carry's time mask for one window (``None``: every step is real) and,
        when ``tm`` holds integer marks (:func:`keraseq.lengths.time_mask` with resets), the
        steps before which a row's states restart."""
        assert self.carry is not None, "running windows needs the model's state carry"
        marks = None if tm is None else self.slice_time(tm, start, length)
        # (int8 marks: resets on a minibatch without padding, no mask to apply)
        self.carry.window_mask = self.real(marks) if self.padded(marks) else None
        resets = marks is not None and "int" in str(marks.dtype)
        self.carry.window_resets = marks > 1 if resets else None

    def run(
        self, x, y, w, m, tm, n_win, h0, window_fn: Callable, init: Any, first=None, final=None
    ):
        """Run ``window_fn`` over the windows of a minibatch; returns (final states, carry).

        ``window_fn(xw, yw, ww, mw, states, carry, has_loss) -> (new states, carry)``.
        ``tm`` (B, T) marks real time steps (``None``: all real; integer marks carry the
        resets too, see :func:`keraseq.lengths.time_mask`); then only the first ``n_win``
        windows run (later ones are padding for every row; a short tail window is
        padded to a full one) and, with per-series targets, each row's loss is taken in
        the window holding its last real step: every window is a loss window (``has_loss``).

        A chunk (``first`` given, a runtime int): only windows ``first .. n_win - 1`` of the
        loop run, from the states ``h0``, with the same window indices (targets, ends) as in
        the whole run; the window after the loop (a short tail, or the per-series loss window
        of equal lengths) runs when the runtime flag ``final`` is true. Chunks
        ``[0, c1), [c1, c2), ..., [ck, n)`` (the last one ``final``) run exactly the windows of
        one whole call, in order, in one compiled program whatever the chunk bounds.
        """
        T = x[0].shape[1]
        S, n_full, tail = self.windows_of(T)
        if self.padded(tm) and tail:
            # Pad the time axis to whole windows: the extra steps are masked like any padding
            # (the RNNs hold their state, no loss), so the short tail window joins the loop
            # and is skipped with the others when every row has ended before it.
            x, y, w, m, tm = self._pad_tail(x, y, w, m, tm, S - tail)
            T, n_full, tail = T + S - tail, n_full + 1, 0
        states = self.zero_states(x[0]) if h0 is None else h0
        ends = self.end_windows(tm, S) if (self.per_series and self.padded(tm)) else None
        arrays = (x, y, w, m, tm, ends)

        def window(index, start, length, c, is_last):
            return self._window(arrays, index, start, length, c, window_fn, is_last)

        # Full windows run in a loop: the program holds one copy of the window step. With
        # per-series targets of equal lengths the last window is the only one with a loss,
        # so it is peeled off the loop.
        loop_windows = n_full - (1 if (self.per_series and not tail and ends is None) else 0)
        c = (states, init)
        if loop_windows > 0:
            body = lambda i, c: window(i, i * S, S, c, False)
            if first is None:
                bound = loop_windows if n_win is None else ops.minimum(n_win, loop_windows)
                c = self.while_(bound, body, c, loop_windows)
            else:
                bound = ops.minimum(n_win, loop_windows) - first
                c = self.while_(bound, lambda j, c: body(first + j, c), c, loop_windows)
        if loop_windows < n_full + (1 if tail else 0):
            start = loop_windows * S
            length = T - start if tail and loop_windows == n_full else S
            last = lambda c: window(loop_windows, start, length, c, True)
            if first is None:
                c = last(c)
            else:
                assert self.cond is not None, "chunks need the backend's conditional"
                c = self.cond(final, last, lambda c: c, c)
        return c

    def join_windows(self, parts, ends):
        """One output from its windows' (each ``(n, B, ...)``): per step, ``(B, n*S, ...)``
        then the tail; per series, the last window's, or per row that of its last real
        step."""
        if not self.per_series:
            seq = []
            for p in parts:
                p = ops.moveaxis(p, 0, 1)
                batch = -1 if p.shape[0] is None else p.shape[0]
                seq.append(ops.reshape(p, (batch, p.shape[1] * p.shape[2]) + tuple(p.shape[3:])))
            return seq[0] if len(seq) == 1 else ops.concatenate(seq, axis=1)
        every = parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=0)
        if ends is None:
            return every[-1]
        index = ops.reshape(ends, (1, -1) + (1,) * (len(every.shape) - 2))
        return ops.take_along_axis(every, index, axis=0)[0]

    def _pad_tail(self, x, y, w, m, tm, extra: int):
        """The arrays with ``extra`` masked steps appended (per-series targets keep theirs)."""
        x = tuple(self.pad_time(a, extra) for a in x)
        tm = self.pad_time(tm, extra)
        if not self.per_series:
            y, w, m = (
                None if g is None else tuple(self.pad_time(a, extra) for a in g) for g in (y, w, m)
            )
        return x, y, w, m, tm

    def _cut(self, arrays, start, length):
        if arrays is None:
            return None
        return tuple(self.slice_time(a, start, length) for a in arrays)

    def _window(self, arrays, index, start, length, c, window_fn: Callable, is_last: bool):
        """One window: its inputs, targets, weights and loss mask cut out, ``window_fn`` run
        with the carry's time mask set; returns ``window_fn``'s (new states, carry)."""
        x, y, w, m, tm, ends = arrays
        per_series = self.per_series
        xw = self._cut(x, start, length)
        has_loss = not per_series or is_last or ends is not None
        if per_series:
            yw = y if has_loss else None
            ww = w[0] if (w is not None and has_loss) else None
            mw = m[0] if (m is not None and has_loss) else None
            if ends is not None:
                here = ops.cast(ops.equal(ends, index), "float32")
                mw = here if mw is None else mw * here
        else:
            yw = self._cut(y, start, length)
            ww = self._cut(w, start, length)[0] if w is not None else None
            mw = self._cut(m, start, length)[0] if m is not None else None
        self.window_mask(tm, start, length)
        try:
            return window_fn(xw, yw, ww, mw, *c, has_loss)
        finally:
            self.window_mask(None, start, length)
