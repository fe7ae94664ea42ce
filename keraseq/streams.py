"""The streaming states a fitted estimator keeps between ``predict`` calls.

What lives here: :class:`StreamStates` (the final state of every series after ``predict``,
which ``predict(..., reset=False)`` continues from), :func:`kept_states` (those states, or the
error when there are none) and their flat list form (:func:`flat_states`,
:func:`stream_from_flat`: what ``keraseq.utils.states`` and saved files hold, checked against
the fitted model's state specs). What does not: the fitted record whose ``state_specs`` they
are checked against (``fitted.py``), running the windows (``inference.py``).

Example:
    >>> import numpy as np
    >>> kept = stream_from_flat([np.zeros((2, 4))], [[((4,), "float32")]])
    >>> [s.shape for s in flat_states(kept)]
    [(2, 4)]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["StreamStates", "kept_states", "flat_states", "stream_from_flat"]


class StreamStates:
    """The final recurrent state of every series after the last ``predict``: what
    ``predict(..., reset=False)`` continues from. One is created by each ``fit`` (and by
    loading/unpickling); ``predict`` fills it and never rebinds an estimator attribute, so
    the estimator's ``__dict__`` is the same before and after ``predict`` (scikit-learn's
    contract)."""

    __slots__ = ("states",)

    def __init__(self, states=None):
        self.states = states

    def __getstate__(self):
        return {"states": self.states}

    def __setstate__(self, state):
        self.states = state["states"]


def kept_states(stream: StreamStates) -> list:
    """The states ``predict(..., reset=False)`` continues from; an error when there are none."""
    if stream.states is None:
        raise ValueError(
            "`reset=False` continues the series of the previous `predict`, "
            "but there is none (or `fit` ran since); call predict with "
            "reset=True first"
        )
    return stream.states


def flat_states(stream: StreamStates | None) -> list[np.ndarray]:
    """The final state of every series after the last ``predict`` (flat list, leading N)."""
    states = None if stream is None else stream.states
    if states is None:
        raise ValueError("no states kept: call `predict` first")
    return [np.array(s) for call in states for s in call]


def stream_from_flat(flat: Sequence[np.ndarray], state_specs) -> StreamStates:
    """Kept states from the flat list :func:`flat_states` gives, checked against the fitted
    model's ``state_specs`` (per RNN call, the per-series (shape, dtype) of its states)."""
    specs = [s for call in state_specs for s in call]
    if len(flat) != len(specs):
        raise ValueError(f"expected {len(specs)} state arrays, got {len(flat)}")
    n = int(np.shape(flat[0])[0]) if flat else 0
    out, k = [], 0
    for call in state_specs:
        group = []
        for shape, _ in call:
            a = np.asarray(flat[k], np.float32)
            if a.shape != (n,) + tuple(shape):
                raise ValueError(f"state {k} has shape {a.shape}; expected {(n,) + shape}")
            group.append(a.copy())
            k += 1
        out.append(group)
    return StreamStates(out)
