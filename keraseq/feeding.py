"""A read minibatch fed to the compiled steps: its tensors, and rebatching.

What lives here: :func:`batch_tensors` (a minibatch's arrays as the step functions take them:
inputs, targets, sample weights per step or per series, the loss mask of real rows and steps,
the time marks of unequal lengths and resets, the windows to run) and :func:`rebatch` (few
long series cut into contiguous pieces to fill ``batch_size``). What does not: reading the
minibatch (``readers/``), the calls of one minibatch (``calls.py``), the window programs
(``backend/``).

Example:
    >>> import numpy as np
    >>> from keraseq.feeding import rebatch
    >>> xs, ys, ws, mask = rebatch((np.ones((1, 10, 2)),), (np.ones((1, 10, 1)),), None, 4, 3)
    >>> xs[0].shape, mask.shape
    ((4, 3, 2), (4, 3))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import distributed as dist
from .backend import current as _backend
from .lengths import real_steps, time_mask, windows_needed
from .ranges import Ranges, clear_padding
from .readers import Minibatch

__all__ = ["Feed", "batch_tensors", "rebatch"]


@dataclass(frozen=True)
class Feed:
    """How the minibatches of one pass become the steps' tensors: targets ``per_series`` or
    per step, the windows of ``seq_len``, the model's input mask ``rule`` and whether
    ``lengths`` were given (then each row's real steps are marked), the token-id and label
    ``ranges`` whose out-of-range padding is cleared, and ``agree_comm``: under MPI, when the
    window loop holds an Allreduce per window, every rank runs the same number of windows."""

    per_series: bool
    seq_len: int | None
    rule: Callable | None = None
    lengths: bool = False
    ranges: Ranges | None = None
    agree_comm: Any = None

    @property
    def masked(self) -> bool:
        """Some steps may be padding: the time mask marks the real ones."""
        return self.rule is not None or self.lengths


def batch_tensors(feed: Feed, batch: Minibatch) -> tuple:
    """A read minibatch, its groups ``(x, y, sample_weight, rebatch mask, lengths, resets)``,
    as the step functions take it: ``(x, y, weights or None, mask, time mask or None,
    windows to run or None)``.

    With unequal lengths (``feed.masked``) the time mask marks each row's real steps and the
    window count stops at the minibatch's longest series. With resets (the minibatch's
    ``(resets,)``) the time mask is integer marks holding them
    (:func:`keraseq.lengths.time_mask`)."""
    to_tensor = _backend().to_tensor
    bx, by, bw, rebatch_mask, bl, br = batch.arrays
    rows_mask, per_series = batch.rows_mask, feed.per_series
    if bl is not None and feed.ranges:  # (None or empty: nothing to clear)
        bx, by = clear_padding(feed.ranges, bx, by, bl[0])
    t = bx[0].shape[1]
    weights = None if bw is None else (to_tensor(_weights(bw[0], per_series, t)),)
    mask = _mask(rows_mask, t, per_series, rebatch_mask)
    tm = n_win = None
    if feed.masked or br is not None:
        tm = time_mask(bx, None if bl is None else bl[0], feed.rule, None if br is None else br[0])
        if tm is None:
            tm = np.ones((len(rows_mask), t), np.float32)
        tm = np.where(rows_mask[:, None] > 0, tm, 0).astype(tm.dtype)
        if not per_series:
            mask = mask * real_steps(tm)
        if tm.dtype != np.int8:  # (int8: resets, no padding: every window runs)
            n_win = windows_needed(tm, feed.seq_len)
            agree = feed.agree_comm
            if agree is not None and agree.size > 1 and not per_series:
                n_win = dist.max_over_ranks(n_win, agree)
            n_win = to_tensor(np.int32(n_win))
        tm = to_tensor(tm)
    return (
        tuple(to_tensor(a) for a in bx),
        tuple(to_tensor(a) for a in by),
        weights,
        (to_tensor(mask),),
        tm,
        n_win,
    )


def _weights(w, per_series, t):
    """Sample weights as the window loop wants them: (B,) per series, (B, T) per step."""
    w = np.asarray(w, np.float32)
    if not per_series and w.ndim == 1:
        w = np.repeat(w[:, None], t, axis=1)
    return w


def _mask(rows_mask, t, per_series, rebatch_mask):
    if per_series:
        return rows_mask
    mask = np.repeat(rows_mask[:, None], t, axis=1)
    if rebatch_mask is not None:
        mask = mask * rebatch_mask[0]
    return mask


def rebatch(xs, ys, ws, batch_size, seq_len):
    """Cut each series into contiguous time pieces so that N * pieces fills ``batch_size``."""
    n, t = int(xs[0].shape[0]), int(xs[0].shape[1])
    s = seq_len or t
    k = max(1, min(batch_size // n, math.ceil(t / s)))
    length = math.ceil(math.ceil(t / k) / s) * s
    k = math.ceil(t / length)

    def cut(a):
        a = np.asarray(a)
        pad = k * length - t
        if pad:
            a = np.concatenate([a, np.zeros((a.shape[0], pad) + a.shape[2:], a.dtype)], axis=1)
        return a.reshape((a.shape[0], k, length) + a.shape[2:]).reshape(
            (a.shape[0] * k, length) + a.shape[2:]
        )

    mask = cut(np.ones((n, t), np.float32))
    if ws is not None:
        w = np.asarray(ws[0], np.float32)
        w = np.repeat(w[:, None], t, axis=1) if w.ndim == 1 else w
        ws = (cut(w),)
    return tuple(cut(a) for a in xs), tuple(cut(a) for a in ys), ws, mask
