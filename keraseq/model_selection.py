"""Cross-validation along the time axis: train on a series' past, score on its future.

What lives here: :class:`TimeSplit`, a scikit-learn splitter (``cv=``) whose folds cut every
series at a time ``t_k``: fit on steps ``[0, t_k)``, score on ``[t_k, t_k + horizon)`` with the
state carried through ``[0, t_k)`` first. What does not: splits by series (scikit-learn's own
``KFold``/``GroupKFold`` on ``x``'s rows do that) and the scoring itself (``inference.py``).

Why: scikit-learn's splitters pick *rows*, i.e. whole series. Cutting one long series into
pieces and splitting those by rows leaks the future into training (a piece after the test
piece is trained on). Here every fold trains strictly before it scores.

Example:
    >>> import numpy as np
    >>> from keraseq import TimeSplit
    >>> x = np.zeros((4, 100, 2)); y = np.zeros((4, 100, 1))
    >>> cv = TimeSplit(n_splits=3, horizon=10)
    >>> xf, yf = cv.wrap(x, y)
    >>> [(xf[tr].shape, xf[te].shape, xf[te].keraseq_score_from) for tr, te in cv.split(xf)]
    [((4, 70, 2), (4, 80, 2), 70), ((4, 80, 2), (4, 90, 2), 80), ((4, 90, 2), (4, 100, 2), 90)]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["TimeSplit", "TimeFolds", "whole"]


def whole(value: Any) -> Any:
    """The full arrays behind :class:`TimeFolds` (``GridSearchCV`` refits on all of ``xf``);
    anything else unchanged."""
    return value.array if isinstance(value, TimeFolds) else value


class ScoredFrom(np.ndarray):
    """An ndarray of a test fold: ``keraseq_score_from`` steps of history come first, which
    ``score`` runs through (carrying the state) but does not score."""

    keraseq_score_from = 0

    def __array_finalize__(self, obj):
        self.keraseq_score_from = getattr(obj, "keraseq_score_from", 0)


class TimeFolds:
    """The rows scikit-learn indexes for :class:`TimeSplit`: for each fold, its training part
    (every series cut to ``[0, t_k)``) and its test part (``[0, t_k + horizon)``, scored
    from ``t_k``). Made by :meth:`TimeSplit.wrap`; indexing returns plain arrays."""

    def __init__(self, array: Any, cuts: list[int], horizon: int):
        self.array, self.cuts, self.horizon = array, list(cuts), int(horizon)
        self.n = int(array.shape[0])

    @property
    def shape(self) -> tuple[int]:
        return (self.n * len(self.cuts) * 2,)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, tuple):  # scikit-learn indexes as X[rows, ...]
            if any(r is not Ellipsis for r in rows[1:]):
                raise IndexError("TimeFolds is indexed by rows only")
            rows = rows[0]
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        blocks = np.unique(rows // self.n)
        if len(blocks) != 1:
            raise IndexError("TimeFolds rows come from TimeSplit.split: one fold part at a time")
        fold, test = divmod(int(blocks[0]), 2)
        cut = self.cuts[fold]
        series = rows % self.n
        stop = cut + self.horizon if test else cut
        out = np.asarray(self.array[np.sort(series)])[:, :stop]
        if not test:
            return out
        scored = out.view(ScoredFrom)
        scored.keraseq_score_from = cut
        return scored


class TimeSplit:
    """Folds along the time axis, usable as ``cv=`` in scikit-learn's model selection.

    Fold ``k`` trains on steps ``[0, t_k)`` of every series and scores on
    ``[t_k, t_k + horizon)``; the cuts ``t_k`` are the last ``n_splits`` multiples of
    ``horizon`` before T (as scikit-learn's ``TimeSeriesSplit``, on the time axis). Pass the
    arrays through :meth:`wrap` first: ``xf, yf = cv.wrap(x, y)``, then
    ``cross_val_score(est, xf, yf, cv=cv)`` or ``GridSearchCV(est, grid, cv=cv).fit(xf, yf)``.
    Targets must be per time step (N, T, F_out) or per-step labels (N, T).
    """

    def __init__(self, n_splits: int = 3, horizon: int | None = None):
        self.n_splits = n_splits
        self.horizon = horizon

    def _cuts(self, t: int) -> tuple[list[int], int]:
        k = int(self.n_splits)
        if k < 1:
            raise ValueError(f"`n_splits` must be >= 1, got {self.n_splits}")
        horizon = int(self.horizon) if self.horizon is not None else t // (k + 1)
        first = t - k * horizon
        if horizon < 1 or first < 1:
            raise ValueError(
                f"TimeSplit(n_splits={k}, horizon={self.horizon}) does not fit "
                f"T={t} steps: it needs T > n_splits * horizon"
            )
        return [first + i * horizon for i in range(k)], horizon

    def wrap(self, x: Any, y: Any) -> tuple[TimeFolds, TimeFolds]:
        """``x`` (N, T, F) and per-step ``y`` (N, T, ...) as the rows :meth:`split` indexes."""
        t = int(x.shape[1])
        if np.ndim(y) < 2 or int(np.shape(y)[1]) != t:
            raise ValueError(
                f"TimeSplit needs targets per time step (N, T={t}, ...); got "
                f"`y` of shape {np.shape(y)}"
            )
        cuts, horizon = self._cuts(t)
        return TimeFolds(x, cuts, horizon), TimeFolds(y, cuts, horizon)

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        return int(self.n_splits)

    def split(self, X: TimeFolds, y: Any = None, groups: Any = None) -> Iterator:
        if not isinstance(X, TimeFolds):
            raise TypeError("TimeSplit.split needs the arrays from TimeSplit.wrap(x, y)")
        n, series = X.n, np.arange(X.n)
        for fold in range(len(X.cuts)):
            yield series + 2 * fold * n, series + (2 * fold + 1) * n
