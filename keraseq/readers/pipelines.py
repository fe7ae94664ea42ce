"""Minibatches that come ready from a pipeline, read as ``model.fit`` reads them.

What lives here: :class:`BatchSource` (a ``tf.data.Dataset``, ``keras.utils.PyDataset``,
generator, iterator, other iterable, torch ``DataLoader`` or grain dataset of ``(x, y[,
sample_weight[, resets]])`` batches, read through Keras's own ``EpochIterator`` and data
adapters), :class:`PipelineReader` (its batches as :class:`~keraseq.readers.arrays.
ArrayReader`'s minibatches: padded to the first batch's size, checked as they are read, the
MPI ranks agreeing on each step) and :func:`read_validation` (a validation pipeline read once into
arrays). What does not:
arrays (``arrays.py``), the checks of the first batch (``checks.py``, through ``trainer.fit``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from .. import distributed as dist
from ..inputs import is_pipeline
from .arrays import Minibatch, pad_rows

__all__ = [
    "BatchSource",
    "PipelineReader",
    "as_dataset",
    "dataset_batch",
    "read_validation",
]


def as_dataset(value, steps_per_epoch: int | None = None) -> BatchSource | None:
    """A :class:`BatchSource` when ``value`` is a source of ready minibatches as
    ``model.fit`` takes them: a ``tf.data.Dataset``, a ``keras.utils.PyDataset``, a Python
    generator or iterator, any other iterable (a list included) of ``(x, y[,
    sample_weight])`` batches, a torch ``DataLoader`` or a grain dataset; ``None`` for arrays,
    tuples/dicts of arrays and ragged lists of series."""
    if not is_pipeline(value):
        return None
    return BatchSource(value, steps_per_epoch)


def dataset_batch(item, index: int):
    """One batch of a dataset as ``(x, y, sample_weight or None, resets or None)`` (Keras's
    rule, ``keras.utils.unpack_x_y_sample_weight``: a tuple of 1 to 3; and keraseq's
    ``(x, y, sample_weight, resets)``, ``sample_weight`` possibly ``None``: the batch's
    per-row state resets, a boolean ``(B, T)``)."""
    if isinstance(item, list) and len(item) in (2, 3, 4):
        item = tuple(item)
    if not isinstance(item, tuple) or len(item) not in (2, 3, 4):
        raise ValueError(
            f"batch {index} of the dataset is a {type(item).__name__}"
            f"{' of ' + str(len(item)) if isinstance(item, tuple) else ''}; "
            f"expected a tuple (x, y), (x, y, sample_weight) or (x, y, sample_weight, "
            f"resets) of arrays (B, T, ...): keraseq needs the targets in the batches"
        )
    x, y = item[0], item[1]
    w = item[2] if len(item) >= 3 else None
    r = item[3] if len(item) == 4 else None
    return x, y, w, r


def read_validation(value):
    """``validation_data`` as arrays: a pipeline (a ``tf.data.Dataset``, a
    ``keras.utils.PyDataset``, a generator or iterator of ``(x, y[, sample_weight])`` batches)
    is read once, to its end, and its batches joined along the rows; anything else (a tuple of
    arrays) is returned as it is. Validation after each epoch then evaluates these arrays (the
    loss and metrics of every batch, as Keras's evaluation of a finite dataset gives them).
    The batches must agree in everything but their number of rows.

    Example:
        >>> import numpy as np
        >>> batches = ((np.ones((2, 3, 1)), np.zeros((2, 3, 1))) for _ in range(3))
        >>> x, y = read_validation(batches)
        >>> x.shape, y.shape
        ((6, 3, 1), (6, 3, 1))
    """
    if value is None or isinstance(value, (tuple, list)) or not is_pipeline(value):
        return value
    import keras

    batches = list(BatchSource(value).epoch())
    if not batches:
        raise ValueError("`validation_data` is an empty dataset: it yields no batch")

    def join(*arrays):
        try:
            return np.concatenate([np.asarray(a) for a in arrays], axis=0)
        except ValueError as exc:
            shapes = sorted({tuple(np.shape(a)) for a in arrays})
            raise ValueError(
                f"`validation_data`: its batches must agree in all but their rows to be "
                f"evaluated together; got shapes {shapes} ({exc})"
            ) from None

    parts = []
    for k, name in ((0, "x"), (1, "y"), (2, "sample_weight"), (3, "resets")):
        items = [b[k] for b in batches]
        if k >= 2 and all(item is None for item in items):
            parts.append(None)
            continue
        if any(item is None for item in items):
            raise ValueError(f"`validation_data`: some batches have a {name}, some not")
        parts.append(keras.tree.map_structure(join, *items))
    x, y, w, r = parts
    return (x, y) if w is None and r is None else (x, y, w) if r is None else (x, y, w, None, r)


class BatchSource:
    """Ready minibatches read as ``model.fit`` reads them: through Keras's own
    ``EpochIterator`` and data adapters (``keras/src/trainers/data_adapters``), so epochs,
    ``steps_per_epoch`` (an endless source: that many batches per epoch, the iterator kept
    across epochs), ``PyDataset.on_epoch_begin/on_epoch_end`` and a source that runs out
    behave as in ``model.fit``. Batches come back as NumPy.

    Example:
        >>> import numpy as np
        >>> batches = ((np.ones((2, 3, 1)), np.zeros((2, 3, 1))) for _ in range(4))
        >>> src = BatchSource(batches)
        >>> src.first()[0].shape, src.num_batches, sum(1 for _ in src.epoch())
        ((2, 3, 1), None, 4)
    """

    def __init__(self, value, steps_per_epoch: int | None = None):
        import keras
        from keras.src.trainers.data_adapters import data_adapter_utils
        from keras.src.trainers.data_adapters.data_adapter import DataAdapter
        from keras.src.trainers.epoch_iterator import EpochIterator

        class _Iterable(DataAdapter):  # a list or other re-iterable of batches
            def __init__(self, batches):
                self.batches = batches

            def get_numpy_iterator(self):
                return data_adapter_utils.get_numpy_iterator(iter(self.batches))

            @property
            def num_batches(self):
                return len(self.batches) if hasattr(self.batches, "__len__") else None

            batch_size = has_partial_batch = partial_batch_size = None

        self.value = value
        source = value
        if hasattr(value, "__next__") and not hasattr(value, "gi_frame"):
            source = (item for item in value)  # any iterator: as a generator
        import types

        from keras.src.trainers.data_adapters import (
            is_grain_dataset,
            is_tf_dataset,
            is_torch_dataloader,
        )

        if not (
            isinstance(source, (keras.utils.PyDataset, types.GeneratorType))
            or is_tf_dataset(source)
            or is_torch_dataloader(source)
            or is_grain_dataset(source)
        ):
            source = _Iterable(source)
        try:
            self.iterator = EpochIterator(source, steps_per_epoch=steps_per_epoch)
        except ValueError as exc:  # e.g. an empty generator: Keras's message
            raise ValueError(f"`x`: {exc}") from None
        self._pending = None
        self._first = None

    def close(self) -> None:
        """Close an epoch that :meth:`first` opened and no :meth:`epoch` continued."""
        if self._pending is not None:
            self._pending.close()
        self._pending = self._first = None

    @property
    def num_batches(self) -> int | None:
        """Batches per epoch (``steps_per_epoch``, the source's length, or ``None`` when it
        is unknown until the source runs out)."""
        return self.iterator.num_batches

    def first(self):
        """The first batch ``(x, y, sample_weight, resets)``, read by starting the first epoch
        (which :meth:`epoch` then continues: no batch is read twice, nothing is skipped)."""
        if self._first is None:
            self._pending = self.items()
            try:
                item = next(self._pending)
            except StopIteration:
                raise ValueError("`x` is an empty dataset: it yields no batch") from None
            self._first = dataset_batch(item, 0)
        return self._first

    def epoch(self):
        """The batches of one epoch (the first epoch's first batch included)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            yield self._first
            yield from (dataset_batch(item, k) for k, item in enumerate(pending, 1))
            return
        for k, item in enumerate(self.items()):
            yield dataset_batch(item, k)

    def items(self):
        """The raw items of one epoch, as Keras's ``EpochIterator`` yields them."""
        import warnings

        finished = False
        try:
            with warnings.catch_warnings():
                if self.iterator.steps_per_epoch is None:  # running out ends an epoch
                    warnings.filterwarnings("ignore", message="Your input ran out of data")
                for _, _, data in self.iterator:
                    yield from data
            finished = True
        finally:
            if not finished:  # stopped early: close the epoch as Keras does
                self.iterator.data_adapter.on_epoch_end()


class PipelineReader:
    """The minibatches of one pass over a :class:`BatchSource`, as
    :class:`~keraseq.readers.arrays.ArrayReader` yields them: ``Minibatch([xs, ys, ws, None,
    None, resets], rows_mask, n_real, None)``, every batch padded with masked rows to
    ``batch_size`` (the first batch's size), so one compiled program serves all.

    :attr:`n_steps`: the most batches per epoch of any rank's source (a rank whose own source
    has fewer yields one masked row for each missing batch); ``None`` when some rank's count
    is unknown: then the epoch runs until the source runs out, and under MPI (``comm``) until
    every rank's has (the ranks agree on each step: no rank hangs). Constructing a reader is
    collective under MPI. ``standardize(x, y, w)`` turns a batch into tuples of arrays as
    ``fit`` checked them (``epochs.standardizer``). Each batch is checked before it is yielded:
    at most the first batch's rows, then ``inspect(xs, ys, step)`` (raising ``ValueError``;
    under MPI every rank raises, the others naming the rank that failed, none hangs).
    ``resets``: every batch is ``(x, y, sample_weight, resets)`` (on any rank's first batch:
    on all), each batch's resets checked as it is read."""

    def __init__(
        self,
        source: BatchSource,
        dtypes: Sequence,
        batch_size: int,
        comm=None,
        *,
        standardize=None,
        inspect=None,
        resets: bool = False,
    ):
        comm = comm if comm is not None else dist.get_comm(False)
        self.source, self.batch_size, self.dtypes, self.comm = source, batch_size, dtypes, comm
        self.standardize, self.inspect, self.resets = standardize, inspect, resets
        count = source.num_batches
        self.n_steps: int | None = None
        if not dist.max_over_ranks(int(count is None), comm):
            self.n_steps = dist.max_over_ranks(int(count), comm)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.n_steps or 0

    def _arrays(self, value, dtype) -> tuple | None:
        if value is None:
            return None
        items = value if isinstance(value, (tuple, list)) else (value,)
        out = []
        for a in items:
            a = np.asarray(a)
            if dtype is not None and a.dtype != dtype:
                a = a.astype(dtype)
            out.append(a)
        return tuple(out)

    def epoch(self, rng: np.random.Generator | None = None) -> Iterator[Minibatch]:
        """The batches of one epoch (``rng`` is unused: the pipeline orders its batches)."""
        batches = self.source.epoch()
        step = 0
        try:
            while self.n_steps is None or step < self.n_steps:
                item: Any = next(batches, None)
                if self.n_steps is None:
                    more = int(item is not None)
                    if dist.max_over_ranks(more, self.comm) == 0:
                        return
                past_end = item is None
                yield self._minibatch(self.source.first() if past_end else item, step, past_end)
                step += 1
            next(batches, None)  # lets Keras's EpochIterator close the epoch its own way
        finally:
            batches.close()

    def _minibatch(self, item, step: int, past_end: bool) -> Minibatch:
        """One batch standardized, checked (every rank takes part; one past its source's end
        checks nothing) and padded."""
        x, y, w, r = item
        if self.standardize is not None:
            x, y, w = self.standardize(x, y, w)
        groups = [self._arrays(v, d) for v, d in zip((x, y, w), self.dtypes)]
        xs = groups[0]
        assert xs is not None  # every batch has inputs
        n_real = 0 if past_end else int(xs[0].shape[0])
        # (first: under MPI every check runs on every rank, so a batch too large on one
        # rank raises on all, none waits for the others)
        checks: list[Callable[[], Any]] = [
            functools.partial(_batch_rows, n_real, self.batch_size, step)
        ]
        if self.inspect is not None:
            checks.append(functools.partial(self.inspect, xs, groups[1], step))
        if self.resets:
            n_t = (int(xs[0].shape[0]), int(xs[0].shape[1]))
            checks.append(functools.partial(_batch_resets, r, n_t, step))
        checked: list = []

        def check(checks=checks, checked=checked, past_end=past_end):
            if not past_end:
                checked[:] = [c() for c in checks]

        dist.agree(self.comm, check) if self.comm.size > 1 else check()
        if self.resets:
            groups.append((np.asarray(r, bool) if past_end else checked[-1],))
        groups += [None] * (4 - len(groups))
        rows = max(n_real, 1)  # (past the end: one masked row of the first batch)
        padded = [
            None if group is None else tuple(pad_rows(a[:rows], self.batch_size) for a in group)
            for group in groups
        ]
        mask = np.zeros(self.batch_size, np.float32)
        mask[:n_real] = 1.0
        return Minibatch(padded[:3] + [None, None, padded[3]], mask, n_real, None)


def _batch_rows(n_real: int, batch_size: int, step: int) -> None:
    """A pipeline batch has at most the first batch's rows (the minibatch size)."""
    if n_real > batch_size:
        raise ValueError(
            f"batch {step} of the dataset has {n_real} series, more than the first "
            f"batch's {batch_size}; the first batch must be the largest"
        )


def _batch_resets(resets, n_t: tuple[int, int], step: int):
    """A pipeline batch's resets checked (``keraseq/resets.py``) as a boolean ``(B, T)``."""
    from ..resets import check_resets

    if resets is None:
        raise ValueError(
            f"batch {step} of the dataset has no resets but the first batch has; every "
            f"batch must be (x, y, sample_weight, resets)"
        )
    return np.asarray(check_resets(resets, n_t[0], n_t[1], f"resets of batch {step}"), bool)
