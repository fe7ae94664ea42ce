"""Per-row state resets: streams with boundaries (documents, sessions, sensor restarts).

What lives here: the checks of the ``resets=`` argument of ``fit``, ``predict`` and ``score``
(a boolean ``(N, T)``: True at step t, that row's recurrent states restart from their initial
ones before step t), the ragged form (a list of ``(T_i,)`` flags next to a ragged ``x``), the
model checks (a layer that runs backwards cannot be reset; a causal convolution's context
crosses a reset: warned) and :func:`document_starts`, the resets of documents laid end to end.

What does not live here: how a reset is applied (``windows.py`` and ``fused.py``, inside the
compiled window loop, from the time marks of :func:`keraseq.lengths.time_mask`), how the rows
are read (``readers/``).

Example:
    >>> import numpy as np
    >>> r = check_resets([[0, 0, 1, 0]], n=1, t=4)
    >>> r.dtype, r.tolist()
    (dtype('bool'), [[False, False, True, False]])
    >>> document_starts([3, 2, 4], n_streams=1, per_stream=9).astype(int).tolist()
    [[1, 0, 0, 1, 0, 1, 0, 0, 0]]
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from .lengths import is_ragged
from .windows import find_causal_convs, find_rnn_layers

__all__ = ["check_resets", "ragged_resets", "check_model_for_resets", "document_starts"]

_BLOCK_ROWS = 4096  # rows of an out-of-core array checked per read


def check_resets(resets: Any, n: int, t: int, name: str = "resets"):
    """``resets`` as keraseq reads it: ``None``, or a boolean ``(n, t)`` array (an in-memory
    one converted; an ``h5py.Dataset`` or memmap checked block by block and read lazily).

    Raises a ``ValueError`` naming ``name`` for a wrong shape or a value other than 0/1, a
    ``TypeError`` for a dtype that is neither bool nor integer."""
    if resets is None:
        return None
    lazy = (
        hasattr(resets, "shape") and hasattr(resets, "dtype") and not isinstance(resets, np.ndarray)
    )
    a = resets if lazy or isinstance(resets, np.memmap) else np.asarray(resets)
    shape = tuple(a.shape)
    if shape != (n, t):
        raise ValueError(
            f"`{name}` has shape {shape}; expected one flag per series and step: ({n}, {t}) "
            f"(True at step t: that series' recurrent states restart before step t)"
        )
    kind = np.dtype(a.dtype).kind
    if kind not in "biu":
        raise TypeError(f"`{name}` has dtype {a.dtype}; expected booleans (or 0/1 integers)")
    if kind != "b":
        for start in range(0, n, _BLOCK_ROWS):
            block = np.asarray(a[start : start + _BLOCK_ROWS])
            bad = np.argwhere((block != 0) & (block != 1))
            if len(bad):
                row, step = int(bad[0][0]) + start, int(bad[0][1])
                raise ValueError(
                    f"`{name}` holds {block[tuple(bad[0])]} at row {row}, step {step}; "
                    f"expected booleans (or 0/1)"
                )
    if lazy or isinstance(a, np.memmap):
        return a
    return a.astype(bool, copy=True)


def ragged_resets(resets: Any, lengths: np.ndarray | None, t: int, name: str = "resets"):
    """A list of per-series flags ``(T_i,)`` next to a ragged ``x``, padded with False to
    ``(N, t)`` (each must have its series' length); anything else passes through."""
    if resets is None or not isinstance(resets, list) or not is_ragged(resets):
        return resets
    if lengths is None and len({np.shape(r) for r in resets}) == 1:
        return resets  # a list of equal rows: an ordinary array
    if lengths is None:
        raise ValueError(
            f"`{name}` is a list of per-series flags but `x` is not; pass a list of "
            f"(T_i, F) arrays as `x` too (or padded arrays with a (N, T) `{name}`)"
        )
    if len(resets) != len(lengths):
        raise ValueError(f"`{name}` has {len(resets)} series but `x` has {len(lengths)}")
    out = np.zeros((len(lengths), t), bool)
    for k, (flags, length) in enumerate(zip(resets, lengths)):
        flags = np.asarray(flags)
        if flags.shape != (int(length),):
            raise ValueError(
                f"`{name}[{k}]` has shape {flags.shape} but `x[{k}]` has {int(length)} "
                f"time steps; expected ({int(length)},)"
            )
        out[k, : int(length)] = check_resets(flags[None], 1, int(length), f"{name}[{k}]")[0]
    return out


def check_model_for_resets(model: keras.Model) -> None:
    """Refuse a recurrent layer that runs backwards (``go_backwards``, a ``Bidirectional``
    half: its state runs from the end, where a reset has no meaning); warn for a causal
    ``Conv1D``, whose left context crosses a reset (resets restart recurrent states only)."""
    for layer in find_rnn_layers(model):
        if layer.go_backwards:
            raise ValueError(
                f"`resets`: layer '{layer.name}' runs backwards in time "
                f"(go_backwards=True or a Bidirectional half); its state cannot restart at a "
                f"step. Use a forward recurrent layer with resets."
            )
    for conv in find_causal_convs(model):
        left = conv.dilation_rate[0] * (conv.kernel_size[0] - 1)
        if left:
            warnings.warn(
                f"`resets`: causal Conv1D '{conv.name}' sees the {left} steps before each "
                f"step, also across a reset (resets restart recurrent states only)",
                UserWarning,
                stacklevel=4,
            )


def document_starts(lengths: Sequence[int], n_streams: int, per_stream: int) -> np.ndarray:
    """``(n_streams, per_stream)`` booleans: True where a document starts, for documents of
    ``lengths`` laid end to end and cut into ``n_streams`` rows of ``per_stream`` steps (the
    first step of every row too: it starts a stream)."""
    starts = np.zeros(n_streams * per_stream, bool)
    at = np.concatenate([[0], np.cumsum(np.asarray(lengths, np.int64))[:-1]])
    starts[at[at < starts.size]] = True
    out = starts.reshape(n_streams, per_stream)
    out[:, 0] = True
    return out
