"""Minibatch plans: which rows of ``x`` each minibatch of an epoch reads.

What lives here: :func:`minibatch_plan` (this rank's block of rows, cut in order or shuffled),
:func:`global_plan` (``global_batch_size``: each minibatch cut from one order of all rows and
split over the ranks); the length-grouped plan is ``keraseq.lengths.grouped_plan``. A plan is
a list of sorted row-index arrays, one per minibatch, empty ones at the end for a rank with
fewer rows. What does not: reading the rows (``arrays.py``), the number of minibatches per
epoch (the reader's ``n_steps``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["minibatch_plan", "global_plan"]


def minibatch_plan(
    lo: int, hi: int, batch_size: int, n_steps: int, shuffle: bool, rng: np.random.Generator | None
) -> list[np.ndarray]:
    """Row indices of each of ``n_steps`` minibatches over rows ``[lo, hi)``.

    Rows are visited once each; a block with fewer rows than ``n_steps * batch_size`` gets
    short or empty minibatches at the end (the reader pads them with masked rows). With
    ``shuffle``, rows are permuted within the block and each minibatch's indices are sorted.

    Example:
        >>> [p.tolist() for p in minibatch_plan(0, 5, 2, 4, False, None)]
        [[0, 1], [2, 3], [4], []]
    """
    rows = np.arange(lo, hi)
    if shuffle and rng is not None:
        rows = rng.permutation(rows)
    plan = []
    for step in range(n_steps):
        part = rows[step * batch_size : (step + 1) * batch_size]
        plan.append(np.sort(part) if shuffle else part)
    return plan


def global_plan(
    n: int, global_batch: int, comm, n_steps: int, shuffle: bool, rng: np.random.Generator | None
) -> list[np.ndarray]:
    """This rank's row indices of each of ``n_steps`` global minibatches of ``global_batch``
    rows over all ``n`` rows (``global_batch_size``): minibatch ``s`` is rows ``s *
    global_batch ...`` of one order of all rows (a permutation, the same on every rank, with
    ``shuffle``), and rank ``r`` of ``K`` takes its ``r``-th ``global_batch / K`` of them. So
    the union over ranks, and the update, is the same for any ``K`` (the last minibatch may
    leave some ranks short or empty: the reader pads them with masked rows).

    Example:
        >>> from types import SimpleNamespace
        >>> second_of_two = SimpleNamespace(rank=1, size=2)
        >>> [p.tolist() for p in global_plan(10, 4, second_of_two, 3, False, None)]
        [[2, 3], [6, 7], []]
    """
    rows = rng.permutation(n) if shuffle and rng is not None else np.arange(n)
    share = global_batch // comm.size
    plan = []
    for step in range(n_steps):
        part = rows[step * global_batch : (step + 1) * global_batch]
        part = part[comm.rank * share : (comm.rank + 1) * share]
        plan.append(np.sort(part) if shuffle else part)
    return plan
