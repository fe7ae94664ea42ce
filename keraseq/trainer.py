"""The backend-free training loop: epochs, minibatches, callbacks, history, validation.

What lives here: :func:`fit` (one ``Estimator.fit`` call once its hyper-parameters are
resolved: checked data -> a prepared session (``session.py``) -> :class:`EpochLoop`, the
epochs of minibatches with Keras's ``CallbackList``, progress bar and ``History``, validation
after each epoch, non-finite losses, ``BackupAndRestore`` resumes, warm starts), the chunks of
windows of one compiled call, and turning a read minibatch into the step functions'
arguments. It calls the compiled window loops of the current backend
(``keraseq.backend.current()``) once per call and never looks back at the Estimator.
What does not live here: the scikit-learn face (``estimator.py``), data checks
(``checks.py``), building the model, optimizer and compiled steps (``session.py``), reading
minibatches (``batches.py``), the window loops (``backend/``), inference (``inference.py``),
MPI (``distributed.py``).

Example (normally reached through ``Estimator.fit``):
    >>> import keras, numpy as np
    >>> from keraseq import Estimator
    >>> m = keras.Sequential([keras.Input((None, 2)), keras.layers.GRU(4, return_sequences=True),
    ...                       keras.layers.Dense(1)])
    >>> x = np.random.rand(8, 12, 2).astype("float32")
    >>> Estimator(m, epochs=1, batch_size=4, seq_len=6, verbose=0).fit(x, x[..., :1]).n_epochs_
    1
"""

from __future__ import annotations

import contextlib
import math
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from . import distributed as dist
from .backend import StepFunctions
from .backend import current as _backend
from .batches import (
    DatasetReader,
    MinibatchReader,
    as_dataset,
    global_plan,
    minibatch_plan,
    predict_batch_size,
    x_dtype,
    y_dtype,
)
from .callbacks import BackupAndRestore
from .checks import (
    FitData,
    check_fit,
    keyed,
    split_validation,
    step_rank,
    unragged,
)
from .lengths import (
    grouped_plan,
    input_mask_rule,
    real_steps,
    series_lengths,
    time_mask,
    windows_needed,
)
from .losses import is_window_loss
from .ranges import Ranges, check_ranges, clear_padding
from .resets import check_model_for_resets, ragged_resets
from .session import Session, build_steps, device_for, prepare
from .validation import check_positive_int

__all__ = ["fit", "Session", "build_steps", "NonFiniteLossError", "device_for", "EpochLoop"]


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or Inf loss or gradient; the weights are those before it."""


@dataclass
class Progress:
    """What a fit leaves for the next warm fit: history, epochs done, the shuffle seed."""

    history: dict = field(default_factory=dict)
    n_epochs: int = 0
    shuffle_seed: int | None = None


def fit(
    p: dict,
    loss,
    x,
    y,
    sample_weight,
    validation_data,
    callbacks,
    lengths,
    initial_epoch,
    *,
    new_model: Callable[[], keras.Model],
    new_optimizer: Callable[[], Any],
    check_outputs: Callable,
    warm: Session | None = None,
    progress: Progress | None = None,
    previous: Session | None = None,
    resets=None,
) -> tuple[Session, Progress]:
    """Train as ``Estimator.fit`` does; returns the fitted session and the progress.

    ``p``: the resolved hyper-parameters (``epochs`` already the count for this call);
    ``new_model()``/``new_optimizer()`` build fresh ones (not called on a warm fit);
    ``check_outputs(out_shapes, ys, window, per_series)`` checks the model's outputs against the
    targets (a subclass adds its own checks); ``warm``/``progress``: the previous fit's, to
    continue from; ``previous``: this estimator's last session, whose compiled steps a new
    (not warm) fit may recycle. Nothing is returned (and no fitted state changes) when a check
    fails.
    """
    p = dict(p)
    if p.get("steps_per_epoch") is not None:
        check_positive_int(p["steps_per_epoch"], "steps_per_epoch")
    dataset = as_dataset(x, p.get("steps_per_epoch"))
    if dataset is None and p.get("steps_per_epoch") is not None:
        raise ValueError(
            "`steps_per_epoch` counts the batches of a pipeline (tf.data, "
            "generator, PyDataset); with arrays an epoch is every series once"
        )
    with contextlib.ExitStack() as opened:
        if dataset is not None:
            opened.callback(dataset.close)  # an epoch opened to read the first batch, if unrun
            x, y, sample_weight = _first_batch(p, dataset, y, sample_weight, lengths, loss)
            if resets is not None:
                raise ValueError(
                    "`resets` with a dataset: put each batch's resets in the batches, as "
                    "(x, y, sample_weight, resets) tuples (sample_weight may be None)"
                )
        return _fit(
            p,
            loss,
            x,
            y,
            sample_weight,
            validation_data,
            callbacks,
            lengths,
            initial_epoch,
            new_model,
            new_optimizer,
            check_outputs,
            warm,
            progress,
            previous,
            dataset,
            resets,
        )


def _first_batch(p, dataset, y, sample_weight, lengths, loss):
    """Ready minibatches (a pipeline): the first one stands for the data in every check and
    probe of ``fit``; returns its ``(x, y, sample_weight)``."""
    if y is not None or sample_weight is not None or lengths is not None:
        raise ValueError(
            "`x` is a dataset of (x, y[, sample_weight]) batches: pass "
            "y=None (the targets are in the batches)"
        )
    if p["validation_split"] or p["group_by_length"]:
        raise ValueError(
            "validation_split and group_by_length need arrays; a dataset "
            "brings its own batches (use validation_data)"
        )
    if is_window_loss(loss):
        raise ValueError(
            "a dataset of batches needs a Keras loss (its last batch is padded with masked rows)"
        )
    x, y, sample_weight = dataset.first()[:3]
    first = x
    while isinstance(first, (tuple, list, dict)) and first:
        first = next(iter(first.values())) if isinstance(first, dict) else first[0]
    p["batch_size"] = int(np.shape(first)[0])
    p["shuffle"] = False  # the dataset orders its batches (PyDataset.on_epoch_end)
    return x, y, sample_weight


def _fit(
    p,
    loss,
    x,
    y,
    sample_weight,
    validation_data,
    callbacks,
    lengths,
    initial_epoch,
    new_model,
    new_optimizer,
    check_outputs,
    warm,
    progress,
    previous,
    dataset,
    resets=None,
):
    comm = dist.get_comm(p["distributed"])
    p = _rank_batch(p, comm, dataset)
    # The model first: its input specs and output layouts decide how x and y are read
    # (token ids, step shapes, targets per step or per series, sparse labels).
    if warm is not None:
        built = warm.model
    else:
        if p["random_state"] is not None:
            keras.utils.set_random_seed(int(p["random_state"]))
        with _backend().device_scope(device_for(p["device"], comm)):
            built = new_model()
    if isinstance(x, dict) or isinstance(y, dict):  # keyed by the model's input/output names
        x, y = keyed(x, built, "x"), keyed(y, built, "y")
    x, y, sample_weight, lengths = unragged(x, y, sample_weight, lengths, step_rank(built))
    if isinstance(resets, list):  # per-series flags next to a ragged x
        first = x[0] if isinstance(x, (tuple, list)) else x
        resets = ragged_resets(resets, lengths, int(np.shape(first)[1]))
    x, y, sample_weight, lengths, validation_data, resets = split_validation(
        x, y, sample_weight, lengths, p["validation_split"], validation_data, resets
    )
    data = check_fit(
        x,
        y,
        sample_weight,
        lengths,
        validation_data,
        loss,
        p["metrics"],
        p["rebatch"],
        comm,
        model=built,
        resets=resets,
    )
    session, val_steps, val_metrics = prepare(
        p, loss, data, comm, warm, built, new_model, new_optimizer, check_outputs, previous
    )
    try:
        loop = EpochLoop(p, session, data, dataset, val_steps, val_metrics)
        progress = loop.run(callbacks, initial_epoch, warm is not None, progress or Progress())
    except BaseException as exc:
        # Stopped mid-training (a non-finite loss, Ctrl-C, a failing callback): the caller
        # still gets the model as it is (for a non-finite loss, from before that update).
        try:
            exc.keraseq_session = session
        except AttributeError:
            pass
        raise
    return session, progress


def _rank_batch(p: dict, comm, dataset) -> dict:
    """``p`` with ``batch_size`` this rank's share of ``global_batch_size``, when set:
    checked to divide by the number of ranks, refused where a rank's minibatches are not
    cut from the one order of all rows (a pipeline, ``group_by_length``, ``rebatch``)."""
    g = p.get("global_batch_size")
    if g is None:
        return p
    for name, used in (
        ("x as a pipeline", dataset is not None),
        ("group_by_length=True", p["group_by_length"]),
        ("rebatch=True", p["rebatch"]),
    ):
        if used:
            raise ValueError(
                f"`global_batch_size` splits each minibatch of the rows of `x` over the ranks; "
                f"it does not combine with {name} (use `batch_size`, per rank)"
            )
    if g % comm.size:
        raise ValueError(
            f"`global_batch_size`={g} does not split evenly over {comm.size} MPI ranks; "
            f"use a multiple of {comm.size}"
        )
    return dict(p, batch_size=g // comm.size)


class EpochLoop:
    """The epochs of one fit over a prepared session (numbered as in ``model.fit``): each a
    pass over the minibatches of this rank's rows (or of a pipeline), each minibatch one
    compiled call or a few (``windows_per_call``), with Keras's callbacks, progress bar and
    ``History``, validation after the epoch, and the non-finite and ``stop_training`` checks.
    Its state (the minibatch plan, the callbacks' step, the logs) lives on the instance for
    the length of one :meth:`run`."""

    def __init__(self, p, session: Session, data: FitData, dataset, val_steps, val_metrics):
        self.p, self.session, self.data, self.dataset = p, session, data, dataset
        self.val_steps, self.val_metrics = val_steps, val_metrics
        comm = session.comm
        xs, ys, ws = data.xs, data.ys, data.ws
        # Data for training (rebatch reshapes in memory; it is for small N).
        self.rebatch_mask = None
        if p["rebatch"] and p["batch_size"] > int(xs[0].shape[0]):
            xs, ys, ws, self.rebatch_mask = rebatch(xs, ys, ws, p["batch_size"], p["seq_len"])
        self.xs, self.ys, self.ws, self.lengths = xs, ys, ws, data.lengths
        self.resets = data.resets
        n = int(xs[0].shape[0])
        self.lo, self.hi = dist.shard(n, comm)
        # Minibatches per epoch (``None``: a pipeline whose count some rank does not know).
        self.n_steps: int | None = dist.max_over_ranks(
            math.ceil((self.hi - self.lo) / p["batch_size"]), comm
        )
        if p["global_batch_size"] is not None:  # each minibatch cut from all rows' one order
            self.lo, self.hi = 0, n
            self.n_steps = math.ceil(n / p["global_batch_size"])
        self.dataset_resets = False  # batches (x, y, sample_weight, resets), on any rank
        if dataset is not None:  # under MPI each rank brings its own dataset
            self.lo, self.hi = 0, n
            self.n_steps = dataset_steps(dataset, comm)
            first_resets = int(dataset.first()[3] is not None)
            self.dataset_resets = bool(dist.max_over_ranks(first_resets, comm))
            if self.dataset_resets:
                check_model_for_resets(session.model)
        self.rule = input_mask_rule(session.model)
        self.masked = self.rule is not None or self.lengths is not None
        self.row_lengths = None
        if p["group_by_length"]:
            self.row_lengths = series_lengths(xs, self.lengths, self.rule, self.lo, self.hi)
        self.chunk: int | None = None  # windows per compiled call (set by run)
        self.logs: dict = {}
        self.total = np.zeros(2)  # this epoch's (loss x series, series) of whole minibatches
        self.call = 0  # the callbacks' step: one per compiled call

    def run(self, callbacks, initial_epoch, warm: bool, progress: Progress) -> Progress:
        """Train the epochs; returns what the next warm fit continues from."""
        model, comm = self.session.model, self.session.comm
        first, last = self._epoch_range(initial_epoch, warm, progress)
        shuffle_seed = self._shuffle_seed(warm, progress)
        # Chunks of windows (``windows_per_call``): each compiled call is one step of the bar
        # and of the callbacks; ``chunk`` is None when every minibatch is one call (as always
        # before), else the windows per call (the same on every rank).
        self.chunk = chunk_windows(self.p, self.session, self.xs, comm)
        cb = self._callbacks(callbacks, last)
        history = progress.history if warm else {}
        model.stop_training = False
        model._initial_epoch = None
        cb.on_train_begin()
        # A BackupAndRestore callback (rank 0 only under MPI) may have restored the weights,
        # the optimizer state and the epoch to start from: every rank takes rank 0's.
        start = dist.broadcast_object(int(model._initial_epoch or first), comm)
        model._initial_epoch = None
        if comm.size > 1:
            dist.broadcast_variables(model.variables + self.session.optimizer.variables, comm)
        epoch = start - 1
        for epoch in range(start, last):
            self._epoch(cb, epoch, shuffle_seed)
            if comm.size > 1:
                model.stop_training = bool(dist.max_over_ranks(int(model.stop_training), comm))
            if model.stop_training:
                break
        # As model.fit: exponential moving averages (use_ema) become the weights.
        self.session.optimizer.finalize_variable_values(model.trainable_variables)
        cb.on_train_end(self.logs)
        # Keras's own History (it also holds what callbacks add, e.g. learning_rate).
        for key, values in model.history.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        return Progress(history, epoch + 1, shuffle_seed)

    def _epoch_range(self, initial_epoch, warm: bool, progress: Progress) -> tuple[int, int]:
        """``(first, last)``: a warm fit (``warm_start``, ``partial_fit``) continues the
        count, so schedulers, loggers and ``BackupAndRestore`` see the true epoch; an explicit
        ``initial_epoch`` has Keras's meaning (run epochs ``initial_epoch .. epochs - 1``)."""
        if initial_epoch is not None:
            return check_positive_int(initial_epoch + 1, "initial_epoch") - 1, self.p["epochs"]
        first = progress.n_epochs if warm else 0
        return first, first + self.p["epochs"]

    def _shuffle_seed(self, warm: bool, progress: Progress) -> int | None:
        """One seed per estimator (rank 0's under MPI); epoch e shuffles with (seed, e), so a
        resumed or continued run shuffles exactly like an uninterrupted one."""
        if warm and progress.shuffle_seed is not None:
            return progress.shuffle_seed
        p = self.p
        seed = (
            p["random_state"]
            if p["random_state"] is not None
            else int(np.random.default_rng().integers(2**31))
        )
        return dist.broadcast_object(int(seed), self.session.comm)

    def _callbacks(self, callbacks, last: int):
        """Keras's ``CallbackList``: the estimator's callbacks, then ``fit``'s; one step per
        compiled call."""
        calls = (
            1
            if self.chunk is None
            else math.ceil(windows_of(self.xs, self.p["seq_len"]) / self.chunk)
        )
        return callback_list(
            list(self.p["callbacks"] or []) + list(callbacks or []),
            self.session.model,
            self.p,
            None if self.n_steps is None else self.n_steps * calls,
            self.session.comm,
            epochs=last,
        )

    def _epoch(self, cb, epoch: int, shuffle_seed) -> None:
        """One epoch: its minibatches, then validation; ``self.logs`` holds its logs."""
        p, model = self.p, self.session.model
        epoch_rng = np.random.default_rng([shuffle_seed, epoch]) if p["shuffle"] else None
        cb.on_epoch_begin(epoch)
        if p["random_state"] is not None:
            reseed(model, int(p["random_state"]), epoch)
        for m in self.session.train_metrics:
            m.reset_state()
        self.total = np.zeros(2)
        self.call = 0  # the callbacks' step: one per compiled call
        for step, (batch, rows_mask, n_real) in enumerate(self._reader(epoch_rng)):
            self._minibatch(cb, epoch, step, batch, rows_mask, n_real)
            if model.stop_training:
                break
        if self.data.val is not None:
            results = evaluate(
                self.session, self.val_steps, self.data.val, self.val_metrics, p, self.data.ranges
            )
            self.logs.update({f"val_{k}": v for k, v in results.items()})
        cb.on_epoch_end(epoch, self.logs)

    def _reader(self, epoch_rng):
        """This epoch's minibatches: ``(batch, rows_mask, n_real)`` with ``batch`` the arrays
        ``(x, y, w, rebatch mask, lengths)`` (a pipeline's batches as it yields them)."""
        p, model = self.p, self.session.model
        if self.dataset is not None:
            return DatasetReader(
                self.dataset,
                self.n_steps,
                p["batch_size"],
                [x_dtype(self.xs, model), y_dtype(model), np.float32],
                self.session.comm,
                standardizer(model, self.ys),
                self._inspect if self.data.ranges else None,
                resets=bool(self.dataset_resets),
            )
        assert self.n_steps is not None  # in-memory arrays: always counted
        if p["group_by_length"]:
            plan = grouped_plan(
                self.lo,
                self.hi,
                p["batch_size"],
                self.n_steps,
                self.row_lengths,
                p["shuffle"],
                epoch_rng,
            )
        elif p["global_batch_size"] is not None:
            plan = global_plan(
                self.hi,
                p["global_batch_size"],
                self.session.comm,
                self.n_steps,
                p["shuffle"],
                epoch_rng,
            )
        else:
            plan = minibatch_plan(
                self.lo, self.hi, p["batch_size"], self.n_steps, p["shuffle"], epoch_rng
            )
        return MinibatchReader(
            [
                self.xs,
                self.ys,
                self.ws,
                (self.rebatch_mask,) if self.rebatch_mask is not None else None,
                (self.lengths,) if self.lengths is not None else None,
                (self.resets,) if self.resets is not None else None,
            ],
            plan,
            p["batch_size"],
            [x_dtype(self.xs, model), y_dtype(model), np.float32, np.float32, np.int64, np.bool_],
            pad=not self.session.steps.exact_rows,
            fallback_row=self.lo if self.hi > self.lo else 0,
        )

    def _inspect(self, xs, ys, step: int) -> None:
        """A pipeline's batch checked as it is read, before its step: its token ids and sparse
        labels (arrays are checked whole before the first step, by ``check_fit``)."""
        check_ranges(self.data.ranges, xs, ys, where=f" of the dataset's batch {step}")

    def _minibatch(self, cb, epoch: int, step: int, batch, rows_mask, n_real) -> None:
        """One minibatch: its compiled calls, each a step of the callbacks."""
        p, session = self.p, self.session
        bx, by, bw, bt, bl, br = batch
        if bl is not None and self.data.ranges:
            bx, by = clear_padding(self.data.ranges, bx, by, bl[0])
        tensors = batch_tensors(
            bx,
            by,
            bw,
            rows_mask,
            session.per_series,
            bt,
            bl,
            self.rule,
            self.masked,
            p["seq_len"],
            session.comm,
            br,
        )
        multiple = 1 if session.per_series else p["sync_every"]
        calls = calls_of(
            tensors, self.chunk, session.steps, p["seq_len"], session.comm, session.device, multiple
        )
        for args, final in calls:
            cb.on_train_batch_begin(self.call)
            loss_sum, count, bad = self._train_call(args)
            if int(bad) >= 0:
                raise _non_finite(epoch, step, int(bad), session.comm)
            self._log(loss_sum, count, n_real, final)
            cb.on_train_batch_end(self.call, self.logs)
            self.call += 1
            if session.comm.size > 1:  # a callback that stops one rank stops all (no hang)
                stop = dist.max_over_ranks(int(session.model.stop_training), session.comm)
                session.model.stop_training = bool(stop)
            if session.model.stop_training:
                break

    def _train_call(self, args) -> list:
        """One compiled call of ``steps.train``: ``[loss_sum, count, bad window]``; a chunk's
        states and accumulators go into ``args`` for the next call."""
        session, backend = self.session, _backend()
        with session.carry, backend.device_scope(session.device), uninterrupted():
            # Ctrl-C waits for the call to end and its update to be in place.
            out = session.steps.train(*args)
            result = out if self.chunk is None else out[0]
            result = backend.to_numpy(result).tolist()
        if self.chunk is not None:
            args[-2], args[-1] = out[1], (args[-1][0], args[-1][1], out[2])
        return result

    def _log(self, loss_sum, count, n_real, final: bool) -> None:
        """The logs after a call, as ``model.fit`` logs: the mean of the minibatch losses
        weighted by their number of series (a minibatch's loss: the mean over its unmasked
        elements); inside a minibatch, with the mean of its windows trained so far."""
        comm = self.session.comm
        loss_sum, count, rows = dist.allreduce_sum(np.array([loss_sum, count, n_real]), comm)
        minibatch = np.array([loss_sum, count])  # (the sums so far: see calls_of)
        done = self.total + (
            [minibatch[0] / minibatch[1] * rows, rows]
            if minibatch[1]
            else [0.0, rows if final else 0.0]
        )
        if final:
            self.total = done
        self.logs = {"loss": done[0] / max(done[1], 1.0)}
        self.logs.update(dist.metric_results(self.session.train_metrics, comm))


def _non_finite(epoch: int, step: int, bad: int, comm) -> NonFiniteLossError:
    return NonFiniteLossError(
        f"non-finite loss or gradient at epoch {epoch + 1}, minibatch "
        f"{step + 1}, window {bad + 1}"
        f"{'' if comm.size == 1 else ' (on some rank)'}; the weights are those "
        f"from before that update. Lower the learning rate, clip gradients "
        f"(optimizer clipnorm=...) or check the data"
    )


def dataset_steps(dataset, comm) -> int | None:
    """Minibatches per epoch of a pipeline: the most over the ranks (each brings its own),
    or ``None`` when some rank's count is unknown (then the ranks agree step by step)."""
    count = dataset.num_batches
    if dist.max_over_ranks(int(count is None), comm):
        return None
    return dist.max_over_ranks(int(count), comm)


def standardizer(model, ys):
    """A pipeline batch ``(x, y, w)`` as ``fit`` checked the first one: dicts in the model's
    input/output order, sparse labels with their trailing axis of 1."""

    def standardize(bx, by, bw):
        bx, by = keyed(bx, model, "x"), keyed(by, model, "y")
        by = tuple(by) if isinstance(by, (tuple, list)) else (by,)
        by = tuple(
            np.asarray(a)[..., None] if np.ndim(a) == ys[k].ndim - 1 else a
            for k, a in enumerate(by)
        )
        return bx, by, bw

    return standardize


def evaluate(
    session: Session, steps, data, metrics, p, ranges: Ranges | None = None
) -> dict[str, float]:
    """Loss and metrics of ``data = (xs, ys, ws, lengths, resets)`` (validation after an
    epoch); ``ranges``: the bounds whose out-of-range padding is cleared
    (:func:`clear_padding`)."""
    xs, ys, ws, lengths, resets = data
    comm, backend = session.comm, _backend()
    rule = input_mask_rule(session.model)
    for m in metrics:
        m.reset_state()
    batch = predict_batch_size(p, xs, None)
    lo, hi = dist.shard(int(xs[0].shape[0]), comm)
    n_steps = dist.max_over_ranks(math.ceil((hi - lo) / batch), comm)
    reader = MinibatchReader(
        [
            xs,
            ys,
            ws,
            (lengths,) if lengths is not None else None,
            (resets,) if resets is not None else None,
        ],
        minibatch_plan(lo, hi, batch, n_steps, False, None),
        batch,
        [x_dtype(xs, session.model), y_dtype(session.model), np.float32, np.int64, np.bool_],
        fallback_row=lo if hi > lo else 0,
    )
    masked = rule is not None or lengths is not None
    total = np.zeros(2)
    for (bx, by, bw, bl, br), rows_mask, _ in reader:
        if bl is not None and ranges:  # (None or empty: nothing to clear)
            bx, by = clear_padding(ranges, bx, by, bl[0])
        # No collective inside evaluate's window loop: ranks need not agree on windows.
        tensors = batch_tensors(
            bx,
            by,
            bw,
            rows_mask,
            session.per_series,
            None,
            bl,
            rule,
            masked,
            p["seq_len"],
            None,
            br,
        )
        with session.carry, backend.device_scope(session.device):
            loss_sum, count = steps.evaluate(*tensors, None)
        total += np.array([float(loss_sum), float(count)])
    total = dist.allreduce_sum(total, comm)
    out = {"loss": total[0] / max(total[1], 1.0)}
    out.update(dist.metric_results(metrics, comm))
    return out


# ----------------------------------------------------------------------- chunks of windows
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
    setting = p.get("windows_per_call", "auto")
    if session.steps.chunk_start is None:
        return None
    if setting == "auto":
        rows = min(p["batch_size"], int(xs[0].shape[0]))
        t = int(xs[0].shape[1])
        window = t if p["seq_len"] is None else min(p["seq_len"], t)
        setting = auto_windows(rows * window * session.model.count_params())
    k = 1 if session.per_series else p["sync_every"]
    chunk = dist.max_over_ranks(math.ceil(setting / k) * k, comm)
    return None if windows_of(xs, p["seq_len"]) <= chunk else chunk


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


class uninterrupted:
    """Ctrl-C (SIGINT) inside the block is held until it ends, then raised: a compiled call
    and the assignment of its results (JAX donates the old variable buffers) either both
    happen or neither starts, so an interrupted fit keeps valid, up-to-date weights. Only in
    the main thread (elsewhere Python delivers no signals)."""

    def __enter__(self):
        self.pending, self.installed = False, False
        try:
            self.previous = signal.signal(signal.SIGINT, self._hold)
            self.installed = True
        except ValueError:  # not the main thread
            pass
        return self

    def _hold(self, signum, frame):
        self.pending = True

    def __exit__(self, exc_type, exc, tb):
        if not self.installed:
            return False
        # (None: a handler set from C, which Python cannot put back; its default then.)
        signal.signal(
            signal.SIGINT, signal.default_int_handler if self.previous is None else self.previous
        )
        if self.pending and exc_type is None:
            if callable(self.previous):
                self.previous(signal.SIGINT, None)
            elif self.previous != signal.SIG_IGN:
                raise KeyboardInterrupt
        return False


# ------------------------------------------------------------------------------- minibatches
def batch_tensors(
    bx, by, bw, rows_mask, per_series, rebatch_mask, bl, rule, masked, seq_len, agree_comm, br=None
):
    """A read minibatch as the step functions take it: ``(x, y, weights or None, mask,
    time mask or None, windows to run or None)``.

    With unequal lengths (``masked``) the time mask marks each row's real steps and the
    window count stops at the minibatch's longest series; ``agree_comm`` (under MPI, when the
    window loop holds an Allreduce per window) makes every rank run the same count. With
    resets (``br``, the minibatch's ``(resets,)``) the time mask is integer marks holding
    them (:func:`keraseq.lengths.time_mask`)."""
    to_tensor = _backend().to_tensor
    t = bx[0].shape[1]
    weights = None if bw is None else (to_tensor(_weights(bw[0], per_series, t)),)
    mask = _mask(rows_mask, t, per_series, rebatch_mask)
    tm = n_win = None
    if masked or br is not None:
        tm = time_mask(bx, None if bl is None else bl[0], rule, None if br is None else br[0])
        if tm is None:
            tm = np.ones((len(rows_mask), t), np.float32)
        tm = np.where(rows_mask[:, None] > 0, tm, 0).astype(tm.dtype)
        if not per_series:
            mask = mask * real_steps(tm)
        if tm.dtype != np.int8:  # (int8: resets, no padding: every window runs)
            n_win = windows_needed(tm, seq_len)
            if agree_comm is not None and agree_comm.size > 1 and not per_series:
                n_win = dist.max_over_ranks(n_win, agree_comm)
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


# ------------------------------------------------------------------------------ callbacks
def callback_list(callbacks, model, p, n_steps, comm, epochs=None):
    callbacks = list(callbacks or [])
    for c in callbacks:
        if isinstance(c, BackupAndRestore):  # what its backups record of this run
            c.run = {
                "ranks": comm.size,
                "batch_size": p["batch_size"],
                "global_batch_size": p.get("global_batch_size"),
            }
    if comm.rank != 0:
        callbacks = [c for c in callbacks if not isinstance(c, dist.ROOT_ONLY_CALLBACKS)]
    verbose = p["verbose"] if comm.rank == 0 else 0
    return keras.callbacks.CallbackList(
        callbacks,
        add_history=True,
        add_progbar=verbose != 0,
        model=model,
        verbose=verbose,
        epochs=p["epochs"] if epochs is None else epochs,
        steps=n_steps,
    )


def reseed(model, random_state: int, epoch: int) -> None:
    """Set every random-number generator of the model (Dropout, recurrent dropout, noise
    layers) from ``(random_state, epoch)`` alone, so that an epoch draws the same masks
    whether the run was resumed (``BackupAndRestore`` saves no generator state) or not."""
    for k, layer in enumerate(model._flatten_layers(include_self=True, recursive=True)):
        for j, generator in enumerate(getattr(layer, "_seed_generators", [])):
            seed = (random_state * 1_000_003 + epoch * 7_919 + k * 31 + j) % (2**31 - 1)
            generator.state.assign(np.array([seed, 0]).astype(generator.state.dtype))
