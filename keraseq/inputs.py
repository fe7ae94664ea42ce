"""``SliceTuple``: several arrays that share N, indexable by rows, for scikit-learn tools.

What lives here: the container that lets ``GridSearchCV``, ``cross_val_score`` and friends
split a multi-input ``x`` (or multi-output ``y``) by series, as skorch's ``SliceDict`` does
for dicts. What does not: validation of the arrays (``validation.py``).
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

__all__ = ["SliceTuple"]


class SliceTuple:
    """A tuple of arrays sharing the leading axis N; ``st[rows]`` slices every array.

    scikit-learn sees an object of length N with ``shape == (N,)``; keraseq sees the tuple
    of arrays (one per model input or output).

    Example:
        >>> import numpy as np
        >>> from keraseq import SliceTuple
        >>> st = SliceTuple(np.zeros((10, 5, 2)), np.ones((10, 5, 3)))
        >>> len(st), st[[0, 3]].arrays[1].shape
        (10, (2, 5, 3))
    """

    def __init__(self, *arrays: Any):
        if not arrays:
            raise ValueError("SliceTuple needs at least one array")
        n = {int(np.shape(a)[0]) for a in arrays}
        if len(n) != 1:
            raise ValueError(f"SliceTuple arrays must share N, got leading sizes {sorted(n)}")
        self.arrays = tuple(arrays)

    @property
    def shape(self) -> tuple[int]:
        return (int(np.shape(self.arrays[0])[0]),)

    @property
    def ndim(self) -> int:
        return 1

    def __len__(self) -> int:
        return self.shape[0]

    def __iter__(self) -> Iterator:
        return iter(self.arrays)

    def __getitem__(self, rows) -> "SliceTuple":
        return SliceTuple(*(np.asarray(a)[rows] for a in self.arrays))

    def __repr__(self) -> str:
        shapes = ", ".join(str(tuple(np.shape(a))) for a in self.arrays)
        return f"SliceTuple({shapes})"
