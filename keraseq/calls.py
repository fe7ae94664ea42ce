"""Windows per compiled call: a long minibatch trained in chunks of windows.

What lives here: ``windows_per_call`` ("auto": :func:`auto_windows`, about
:data:`CALL_SECONDS` of training per call), :func:`chunk_windows` (the windows per call of a
fit, agreed over the ranks) and :func:`calls_of` (the compiled calls of one minibatch, each a
step of the progress bar and callbacks, the states and accumulators handed from call to
call). What does not: the epoch loop that makes the calls (``epochs.py``), the tensors of a
minibatch (``feeding.py``), the window programs (``backend/``).

Example:
    >>> from keraseq.calls import auto_windows, windows_of
    >>> import numpy as np
    >>> windows_of((np.zeros((4, 100, 1)),), 30), auto_windows(1e6) >= 64
    (4, True)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from . import distributed as dist
from .backend import StepFunctions
from .backend import current as _backend

if TYPE_CHECKING:
    from .session import Session

__all__ = ["auto_windows", "windows_of", "chunk_windows", "calls_of", "CALL_SECONDS"]

#: ``windows_per_call="auto"``: the seconds of work one compiled call aims at. Long enough that
#: a call's fixed cost (about a millisecond on TensorFlow, less on JAX: argument conversion,
#: dispatch, one result transfer, the callbacks; benchmarks/bench_chunks.py) is lost in it
#: (~0.1 %), short enough that the progress bar, callbacks, ``stop_training`` and Ctrl-C act
#: every second or so.
CALL_SECONDS = 1.0
#: The rough cost of one window on a CPU, to turn ``CALL_SECONDS`` into windows:
#: ``WINDOW_SECONDS + work / WORK_PER_SECOND`` seconds for ``work`` = rows x window steps x
#: weights (the multiply-adds of the forward pass, roughly; training does ~3x that). Fitted to
#: the steady epochs of ``benchmarks/bench_cores.py`` on this project's 2-core CPU machine
#: (one device, XLA): 0.14-0.19 ms per window at the seed size (0.17 M), 1.5 ms at 13 M,
#: 3.0 ms at 32 M, 10 ms at the realistic size (106 M); ``benchmarks/bench_chunks.py`` prints
#: the measured time per window next to this estimate.
WINDOW_SECONDS = 1.5e-4
WORK_PER_SECOND = 1e10
#: Fewest windows per call ("auto"): a faster device (a GPU) runs windows faster than the CPU
#: estimate; at least this many keeps its calls' fixed cost small there too.
MIN_WINDOWS_PER_CALL = 64


def auto_windows(work: float) -> int:
    """``windows_per_call="auto"``: the windows of about :data:`CALL_SECONDS` of training."""
    per_window = WINDOW_SECONDS + work / WORK_PER_SECOND
    return max(MIN_WINDOWS_PER_CALL, int(CALL_SECONDS / per_window))


def windows_of(xs, seq_len) -> int:
    """Windows of a minibatch of the arrays ``xs`` (a short tail counts as one)."""
    t = int(xs[0].shape[1])
    return max(1, math.ceil(t / (t if seq_len is None else min(seq_len, t))))


def chunk_windows(p, session: Session, xs, comm) -> int | None:
    """Windows per compiled call (a multiple of ``sync_every``, the same on every rank), or
    ``None`` when each minibatch is one call (it has no more windows than that): then
    training runs exactly as without chunks."""
    setting = p.windows_per_call
    if session.steps.chunk_start is None:
        return None
    if setting == "auto":
        rows = min(p.batch_size, int(xs[0].shape[0]))
        t = int(xs[0].shape[1])
        window = t if p.seq_len is None else min(p.seq_len, t)
        setting = auto_windows(rows * window * session.model.count_params())
    k = 1 if session.per_series else p.sync_every
    chunk = dist.max_over_ranks(math.ceil(setting / k) * k, comm)
    return None if windows_of(xs, p.seq_len) <= chunk else chunk


def calls_of(tensors, chunk, steps: StepFunctions, seq_len, comm, device, multiple=1):
    """The compiled calls of one minibatch: ``(arguments of steps.train, final)`` pairs.

    One call (``chunk`` None), or the chunks ``[0, chunk), [chunk, 2 chunk), ...`` of its
    windows (up to the runtime window count ``n_win`` of unequal lengths), evened out in
    whole multiples of ``multiple`` (``sync_every``). The caller puts
    each call's returned states and accumulators into the arguments (``args[-2]``, the last
    entry of ``args[-1]``) before the next one is drawn. Under MPI every rank makes the same
    number of calls (a rank whose series end sooner runs empty ones: the in-program
    Allreduce of the per-series update comes with the last)."""
    if chunk is None:
        yield list(tensors) + [None], True
        return
    backend = _backend()
    x, y, w, m, tm, n_win = tensors
    windows = windows_of(x, seq_len) if n_win is None else int(backend.to_numpy(n_win))
    n_calls = max(1, math.ceil(windows / chunk))
    if comm.size > 1:
        n_calls = dist.max_over_ranks(n_calls, comm)
    # Calls of even size (100 windows in calls of at most 93: 50 + 50, not 93 + 7), whole
    # multiples of ``sync_every`` as ``chunk`` is.
    chunk = min(chunk, math.ceil(math.ceil(windows / n_calls) / multiple) * multiple)
    with backend.device_scope(device):
        h0, acc = steps.chunk_start(x, tm)
    for k in range(n_calls):
        first = k * chunk
        final = k == n_calls - 1
        args = [
            x,
            y,
            w,
            m,
            tm,
            backend.to_tensor(np.int32(min(windows, first + chunk))),
            h0,
            (backend.to_tensor(np.int32(first)), backend.to_tensor(np.bool_(final)), acc),
        ]
        yield args, final
        h0, acc = args[-2], args[-1][2]
