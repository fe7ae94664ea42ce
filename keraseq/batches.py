"""Minibatches over the series axis N: planning, lazy reading, padding and prefetch.

What lives here: :class:`MinibatchReader`, which reads the rows of one minibatch from each
array (``numpy.ndarray``, ``numpy.memmap`` or ``h5py.Dataset``) with one slice per array,
pads a short minibatch to the fixed batch size (padded rows are masked out of the loss, so one
compiled graph serves every minibatch), and reads minibatch ``i + 1`` in a background thread
while ``i`` trains; and minibatches that come ready from a pipeline as ``model.fit`` takes
them (:class:`BatchSource` over Keras's own data adapters, read by :class:`DatasetReader`).
What does not: validation (``validation.py``) and the window loop (``backend/``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .inputs import is_pipeline
from .validation import check_positive_int

__all__ = [
    "MinibatchReader",
    "DatasetReader",
    "BatchSource",
    "as_dataset",
    "is_pipeline",
    "read_validation",
    "read_rows",
    "minibatch_plan",
    "global_plan",
]


def read_rows(array, index: np.ndarray | slice) -> np.ndarray:
    """Rows of ``array`` as an in-memory ndarray, reading only those rows.

    ``index`` is a slice or sorted row indices (h5py needs increasing indices).
    """
    if isinstance(index, slice):
        return np.asarray(array[index])
    if len(index) and np.all(np.diff(index) == 1):
        return np.asarray(array[int(index[0]) : int(index[-1]) + 1])
    if isinstance(array, np.ndarray):
        return array[index]
    # h5py's point selection (``dataset[list]``) is ~30x slower than reading the runs of
    # consecutive rows as slices (measured: 20 ms against 0.65 ms for 32 of 512 rows).
    # Filled in place, run by run, so at most one run is held twice in memory.
    breaks = np.flatnonzero(np.diff(index) != 1) + 1
    out = np.empty((len(index),) + tuple(array.shape[1:]), array.dtype)
    k = 0
    for run in np.split(np.asarray(index), breaks):
        out[k : k + len(run)] = array[int(run[0]) : int(run[-1]) + 1]
        k += len(run)
    return out


def minibatch_plan(
    lo: int, hi: int, batch_size: int, n_steps: int, shuffle: bool, rng: np.random.Generator | None
) -> list[np.ndarray]:
    """Row indices of each of ``n_steps`` minibatches over rows ``[lo, hi)``.

    Rows are visited once each; a block with fewer rows than ``n_steps * batch_size`` gets
    short or empty minibatches at the end (the reader pads them with masked rows). With
    ``shuffle``, rows are permuted within the block and each minibatch's indices are sorted.
    """
    rows = np.arange(lo, hi)
    if shuffle and rng is not None:
        rows = rng.permutation(rows)
    plan = []
    for step in range(n_steps):
        chunk = rows[step * batch_size : (step + 1) * batch_size]
        plan.append(np.sort(chunk) if shuffle else chunk)
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


class MinibatchReader:
    """Iterate over padded minibatches of several arrays that share the leading axis N.

    ``groups`` is a sequence of tuples of arrays (e.g. ``(xs, ys, ws)``; ``None`` entries stay
    ``None``). Each item yielded is ``(groups_batch, mask_rows, n_real)`` where every array has
    exactly ``batch_size`` rows (when ``pad``), ``mask_rows`` is 1.0 for real rows and 0.0 for
    padding, and ``n_real`` is the number of real rows.

    Example:
        >>> import numpy as np
        >>> x = np.arange(10.0).reshape(5, 2, 1)
        >>> r = MinibatchReader([(x,)], minibatch_plan(0, 5, 2, 3, False, None), 2, [np.float32])
        >>> [int(n) for _, _, n in r]
        [2, 2, 1]
    """

    def __init__(
        self,
        groups: Sequence[tuple | None],
        plan: list[np.ndarray],
        batch_size: int,
        dtypes: Sequence,
        pad: bool = True,
        fallback_row: int = 0,
        prefetch: bool = True,
    ):
        self.groups = groups
        self.plan = plan
        self.batch_size = batch_size
        self.dtypes = dtypes
        self.pad = pad
        self.fallback_row = fallback_row
        self.prefetch = prefetch

    def __len__(self) -> int:
        return len(self.plan)

    def _read(self, index: np.ndarray):
        n_real = len(index)
        if n_real == 0:
            # A rank with no rows left still takes part in the step: one masked row
            # (its gradient contributes nothing; see the backend window loops).
            index = np.array([self.fallback_row])
        size = self.batch_size if self.pad else len(index)
        out: list[tuple | None] = []
        for group, dtype in zip(self.groups, self.dtypes):
            if group is None:
                out.append(None)
                continue
            arrays = []
            for a in group:
                rows = read_rows(a, index)
                if dtype is not None and rows.dtype != dtype:
                    rows = rows.astype(dtype)
                if rows.shape[0] < size:
                    pad = np.zeros((size - rows.shape[0],) + rows.shape[1:], rows.dtype)
                    rows = np.concatenate([rows, pad], axis=0)
                arrays.append(rows)
            out.append(tuple(arrays))
        mask = np.zeros(size, np.float32)
        mask[:n_real] = 1.0
        return out, mask, n_real

    def __iter__(self) -> Iterator:
        if not self.prefetch or len(self.plan) < 2:
            for index in self.plan:
                yield self._read(index)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="keraseq-prefetch") as pool:
            future = pool.submit(self._read, self.plan[0])
            for step in range(len(self.plan)):
                item = future.result()
                if step + 1 < len(self.plan):
                    future = pool.submit(self._read, self.plan[step + 1])
                yield item


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


class DatasetReader:
    """Minibatches read from a :class:`BatchSource`, shaped like :class:`MinibatchReader`'s:
    ``([xs, ys, ws, None, None, resets], mask_rows, n_real)``, every batch padded with masked
    rows to ``batch_size`` (the first batch's size), so one compiled graph serves all.

    ``n_steps`` batches per epoch (a rank whose own source has fewer yields one masked row
    for each missing batch); ``None`` when unknown: until the source runs out, and under MPI
    (``comm``) until every rank's has (the ranks agree on each step: no rank hangs).
    ``standardize(x, y, w)`` turns a batch into tuples of arrays as ``fit`` checked them
    (dict keys, sparse labels). ``inspect(xs, ys, step)`` checks each batch before it is
    yielded (raising ``ValueError``; under MPI every rank raises, none hangs). ``resets``:
    every batch is ``(x, y, sample_weight, resets)`` (on any rank's first batch: on all),
    each batch's resets checked as it is read."""

    def __init__(
        self,
        source: BatchSource,
        n_steps: int | None,
        batch_size: int,
        dtypes: Sequence,
        comm=None,
        standardize=None,
        inspect=None,
        resets: bool = False,
    ):
        self.source, self.n_steps, self.batch_size = source, n_steps, batch_size
        self.dtypes, self.comm, self.standardize = dtypes, comm, standardize
        self.inspect, self.resets = inspect, resets

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

    def __iter__(self) -> Iterator:
        from . import distributed as dist

        batches = self.source.epoch()
        several = self.comm is not None and self.comm.size > 1
        step = 0
        try:
            while self.n_steps is None or step < self.n_steps:
                item: Any = next(batches, None)
                if self.n_steps is None:
                    more = int(item is not None)
                    if (dist.max_over_ranks(more, self.comm) if several else more) == 0:
                        return
                past_end = item is None
                x, y, w, r = self.source.first() if past_end else item
                if self.standardize is not None:
                    x, y, w = self.standardize(x, y, w)
                groups = [self._arrays(v, d) for v, d in zip((x, y, w), self.dtypes)]
                xs = groups[0]
                assert xs is not None  # every batch has inputs
                checks: list[Callable[[], Any]] = []
                if self.inspect is not None:
                    checks.append(functools.partial(self.inspect, xs, groups[1], step))
                if self.resets:
                    n_t = (int(xs[0].shape[0]), int(xs[0].shape[1]))
                    checks.append(functools.partial(_batch_resets, r, n_t, step))
                checked: list = []
                if checks:  # every rank takes part (one past its source's end checks nothing)

                    def check(checks=checks, checked=checked, past_end=past_end):
                        if not past_end:
                            checked[:] = [c() for c in checks]

                    dist.agree(self.comm, check) if several else check()
                if self.resets:
                    groups.append((checked[-1] if checked else np.asarray(r, bool),))
                groups += [None] * (4 - len(groups))
                n_real = 0 if past_end else int(xs[0].shape[0])
                if n_real > self.batch_size:
                    raise ValueError(
                        f"batch {step} of the dataset has {n_real} series, more "
                        f"than the first batch's {self.batch_size}; the first "
                        f"batch must be the largest"
                    )
                padded: list[tuple | None] = []
                for group in groups:
                    if group is None:
                        padded.append(None)
                        continue
                    rows = max(n_real, 1)
                    padded.append(
                        tuple(
                            np.concatenate(
                                [
                                    a[:rows],
                                    np.zeros((self.batch_size - rows,) + a.shape[1:], a.dtype),
                                ]
                            )
                            if rows < self.batch_size
                            else a[:rows]
                            for a in group
                        )
                    )
                mask = np.zeros(self.batch_size, np.float32)
                mask[:n_real] = 1.0
                yield padded[:3] + [None, None, padded[3]], mask, n_real
                step += 1
            next(batches, None)  # lets Keras's EpochIterator close the epoch its own way
        finally:
            batches.close()


def _batch_resets(resets, n_t: tuple[int, int], step: int):
    """A pipeline batch's resets checked (``keraseq/resets.py``) as a boolean ``(B, T)``."""
    from .resets import check_resets

    if resets is None:
        raise ValueError(
            f"batch {step} of the dataset has no resets but the first batch has; every "
            f"batch must be (x, y, sample_weight, resets)"
        )
    return np.asarray(check_resets(resets, n_t[0], n_t[1], f"resets of batch {step}"), bool)


def x_dtype(xs, model=None):
    """float32 for float inputs (float64 for a model computing in float64, as Keras feeds it);
    ``None`` (keep the dtype) when an input holds integers."""
    if not all(a.dtype.kind == "f" for a in xs):
        return None
    return y_dtype(model)


def y_dtype(model=None):
    """The dtype targets and float inputs are read in: float64 when a layer of ``model``
    computes in float64 (``model.fit`` hands float64 data to such a model unrounded), else
    float32."""
    layers = [] if model is None else model._flatten_layers(include_self=True, recursive=True)
    return (
        np.float64
        if any(getattr(layer, "compute_dtype", None) == "float64" for layer in layers)
        else np.float32
    )


def pad_rows(a, size):
    """``a`` with zero rows appended up to ``size`` rows."""
    a = np.asarray(a)
    if a.shape[0] < size:
        a = np.concatenate([a, np.zeros((size - a.shape[0],) + a.shape[1:], a.dtype)])
    return a


def predict_batch_size(p, xs, batch_size):
    """The given size, else ``predict_batch_size``, else the multiple of the training
    ``batch_size`` nearest below 256 series and below ~64 MB of ``x`` (out-of-core data;
    at least ``batch_size``). A multiple of the training batch: with 33 series of
    (1000, 500) per minibatch against 32, XLA:CPU's predict took 590 MB more memory."""
    given = check_positive_int(batch_size, "batch_size", allow_none=True)
    if given or p["predict_batch_size"]:
        return given or p["predict_batch_size"]
    row_bytes = sum(int(np.prod(a.shape[1:])) * 4 for a in xs)
    rows = min(256, (64 * 2**20) // max(1, row_bytes))
    return p["batch_size"] * max(1, rows // p["batch_size"])
