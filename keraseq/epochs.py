"""The epochs of one fit: minibatches, compiled calls, Keras callbacks, validation.

What lives here: :class:`EpochLoop` (the epochs of one fit over a prepared session, numbered as
in ``model.fit``: each a pass of the reader (``readers/``) over this rank's rows or a
pipeline, each minibatch one compiled call or a few (``calls.py``), with Keras's
``CallbackList``, progress bar and ``History``, the non-finite and ``stop_training`` checks),
:func:`evaluate` (validation after an epoch), Ctrl-C held during a call
(:class:`uninterrupted`) and the per-epoch reseeding of the model's random generators.
What does not: preparing the data and session (``trainer.py``), reading minibatches
(``readers/``), their tensors (``feeding.py``), the window programs (``backend/``).

Example (normally reached through ``Estimator.fit``; ``est.history_`` is its ``History``):
    >>> import keras, numpy as np
    >>> from keraseq import Estimator
    >>> m = keras.Sequential([keras.Input((None, 2)), keras.layers.GRU(4, return_sequences=True),
    ...                       keras.layers.Dense(1)])
    >>> x = np.random.rand(8, 12, 2).astype("float32")
    >>> est = Estimator(m, epochs=2, batch_size=4, seq_len=6, validation_split=0.25, verbose=0)
    >>> sorted(est.fit(x, x[..., :1]).history_)
    ['loss', 'val_loss']
"""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass, field

import keras
import numpy as np

from . import distributed as dist
from .backend import current as _backend
from .callbacks import BackupAndRestore
from .calls import calls_of, chunk_windows, windows_of
from .checks import FitData
from .feeding import Feed, batch_tensors, rebatch
from .inputs import keyed
from .ranges import Ranges, check_ranges
from .readers import (
    ArrayReader,
    Minibatch,
    PipelineReader,
    predict_batch_size,
    x_dtype,
    y_dtype,
)
from .resets import check_model_for_resets
from .session import Session
from .validation import check_positive_int

__all__ = ["EpochLoop", "Progress", "NonFiniteLossError", "evaluate", "uninterrupted", "reseed"]


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or Inf loss or gradient; the weights are those before it."""


@dataclass
class Progress:
    """What a fit leaves for the next warm fit: history, epochs done, the shuffle seed."""

    history: dict = field(default_factory=dict)
    n_epochs: int = 0
    shuffle_seed: int | None = None


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
        comm, model = session.comm, session.model
        xs, ys, ws = data.xs, data.ys, data.ws
        # Data for training (rebatch reshapes in memory; it is for small N).
        self.rebatch_mask = None
        if p.rebatch and p.batch_size > int(xs[0].shape[0]):
            xs, ys, ws, self.rebatch_mask = rebatch(xs, ys, ws, p.batch_size, p.seq_len)
        self.xs, self.ys = xs, ys
        rule = session.facts.mask_rule
        self.feed = Feed(
            session.per_series, p.seq_len, rule, data.lengths is not None, data.ranges, comm
        )
        dtypes = [x_dtype(xs, model), y_dtype(model), np.float32]
        self.dataset_resets = False  # batches (x, y, sample_weight, resets), on any rank
        self.reader: ArrayReader | PipelineReader
        if dataset is not None:  # under MPI each rank brings its own dataset
            self.dataset_resets = bool(
                dist.max_over_ranks(int(dataset.first()[3] is not None), comm)
            )
            if self.dataset_resets:
                check_model_for_resets(model)
            self.reader = PipelineReader(
                dataset,
                dtypes,
                p.batch_size,
                comm,
                standardize=standardizer(model, ys),
                inspect=self._inspect if data.ranges else None,
                resets=self.dataset_resets,
            )
        else:
            lengths, resets = data.lengths, data.resets
            self.reader = ArrayReader(
                [
                    xs,
                    ys,
                    ws,
                    (self.rebatch_mask,) if self.rebatch_mask is not None else None,
                    (lengths,) if lengths is not None else None,
                    (resets,) if resets is not None else None,
                ],
                dtypes + [np.float32, np.int64, np.bool_],
                p.batch_size,
                comm,
                global_batch=p.global_batch_size,
                by_length=(lengths, rule) if p.group_by_length else None,
                pad=not session.steps.exact_rows,
            )
        # Minibatches per epoch (``None``: a pipeline whose count some rank does not know).
        self.n_steps: int | None = self.reader.n_steps
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
            return check_positive_int(initial_epoch + 1, "initial_epoch") - 1, self.p.epochs
        first = progress.n_epochs if warm else 0
        return first, first + self.p.epochs

    def _shuffle_seed(self, warm: bool, progress: Progress) -> int | None:
        """One seed per estimator (rank 0's under MPI); epoch e shuffles with (seed, e), so a
        resumed or continued run shuffles exactly like an uninterrupted one."""
        if warm and progress.shuffle_seed is not None:
            return progress.shuffle_seed
        p = self.p
        seed = (
            p.random_state
            if p.random_state is not None
            else int(np.random.default_rng().integers(2**31))
        )
        return dist.broadcast_object(int(seed), self.session.comm)

    def _callbacks(self, callbacks, last: int):
        """Keras's ``CallbackList``: the estimator's callbacks, then ``fit``'s; one step per
        compiled call."""
        calls = (
            1 if self.chunk is None else math.ceil(windows_of(self.xs, self.p.seq_len) / self.chunk)
        )
        return callback_list(
            list(self.p.callbacks or []) + list(callbacks or []),
            self.session.model,
            self.p,
            None if self.n_steps is None else self.n_steps * calls,
            self.session.comm,
            epochs=last,
        )

    def _epoch(self, cb, epoch: int, shuffle_seed) -> None:
        """One epoch: its minibatches, then validation; ``self.logs`` holds its logs."""
        p, model = self.p, self.session.model
        epoch_rng = np.random.default_rng([shuffle_seed, epoch]) if p.shuffle else None
        cb.on_epoch_begin(epoch)
        if p.random_state is not None:
            reseed(model, int(p.random_state), epoch)
        for m in self.session.train_metrics:
            m.reset_state()
        self.total = np.zeros(2)
        self.call = 0  # the callbacks' step: one per compiled call
        for step, batch in enumerate(self.reader.epoch(epoch_rng)):
            self._minibatch(cb, epoch, step, batch)
            if model.stop_training:
                break
        if self.data.val is not None:
            results = evaluate(
                self.session, self.val_steps, self.data.val, self.val_metrics, p, self.data.ranges
            )
            self.logs.update({f"val_{k}": v for k, v in results.items()})
        cb.on_epoch_end(epoch, self.logs)

    def _inspect(self, xs, ys, step: int) -> None:
        """A pipeline's batch checked as it is read, before its step: its token ids and sparse
        labels (arrays are checked whole before the first step, by ``check_fit``)."""
        check_ranges(self.data.ranges, xs, ys, where=f" of the dataset's batch {step}")

    def _minibatch(self, cb, epoch: int, step: int, batch: Minibatch) -> None:
        """One minibatch: its compiled calls, each a step of the callbacks."""
        p, session = self.p, self.session
        tensors = batch_tensors(self.feed, batch)
        multiple = 1 if session.per_series else p.sync_every
        calls = calls_of(
            tensors, self.chunk, session.steps, p.seq_len, session.comm, session.device, multiple
        )
        for args, final in calls:
            cb.on_train_batch_begin(self.call)
            loss_sum, count, bad = self._train_call(args)
            if int(bad) >= 0:
                raise _non_finite(epoch, step, int(bad), session.comm)
            self._log(loss_sum, count, batch.n_real, final)
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


def callback_list(callbacks, model, p, n_steps, comm, epochs=None):
    callbacks = list(callbacks or [])
    for c in callbacks:
        if isinstance(c, BackupAndRestore):  # what its backups record of this run
            c.run = {
                "ranks": comm.size,
                "batch_size": p.batch_size,
                "global_batch_size": p.global_batch_size,
            }
    if comm.rank != 0:
        callbacks = [c for c in callbacks if not isinstance(c, dist.ROOT_ONLY_CALLBACKS)]
    verbose = p.verbose if comm.rank == 0 else 0
    return keras.callbacks.CallbackList(
        callbacks,
        add_history=True,
        add_progbar=verbose != 0,
        model=model,
        verbose=verbose,
        epochs=p.epochs if epochs is None else epochs,
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


def evaluate(
    session: Session, steps, data, metrics, p, ranges: Ranges | None = None
) -> dict[str, float]:
    """Loss and metrics of ``data = (xs, ys, ws, lengths, resets)`` (validation after an
    epoch); ``ranges``: the bounds whose out-of-range padding is cleared
    (``ranges.clear_padding``)."""
    xs, ys, ws, lengths, resets = data
    comm, backend = session.comm, _backend()
    rule = session.facts.mask_rule
    for m in metrics:
        m.reset_state()
    reader = ArrayReader(
        [
            xs,
            ys,
            ws,
            None,
            (lengths,) if lengths is not None else None,
            (resets,) if resets is not None else None,
        ],
        [x_dtype(xs, session.model), y_dtype(session.model), np.float32, None, np.int64, np.bool_],
        predict_batch_size(p, xs, None),
        comm,
    )
    # No collective inside evaluate's window loop: ranks need not agree on windows.
    feed = Feed(session.per_series, p.seq_len, rule, lengths is not None, ranges)
    total = np.zeros(2)
    for batch in reader.epoch():
        tensors = batch_tensors(feed, batch)
        with session.carry, backend.device_scope(session.device):
            loss_sum, count = steps.evaluate(*tensors, None)
        total += np.array([float(loss_sum), float(count)])
    total = dist.allreduce_sum(total, comm)
    out = {"loss": total[0] / max(total[1], 1.0)}
    out.update(dist.metric_results(metrics, comm))
    return out
