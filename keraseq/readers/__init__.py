"""Readers: the minibatches of one pass over the data, one module per kind of source.

As Keras's ``trainers/data_adapters/``: :func:`reader_for` picks the reader for what the user
passed, and every reader has the same face: :attr:`n_steps`, its minibatches per epoch (the
same on every MPI rank; ``None`` for a pipeline some rank cannot count), and ``epoch(rng)``,
which yields :class:`Minibatch` items (the groups of arrays padded to the batch size, the mask
of real rows, their number, their row indices). ``fit``'s epochs, validation after an epoch
and ``predict``/``score`` all read through it.

- ``arrays.py``: :class:`ArrayReader` over ``numpy.ndarray``, ``numpy.memmap`` and
  ``h5py.Dataset`` (ragged lists of series arrive padded), lazily, one slice per array,
  prefetching the next minibatch;
- ``pipelines.py``: :class:`PipelineReader` over a :class:`BatchSource` (``tf.data``,
  ``PyDataset``, generators, iterables, torch ``DataLoader``, grain), read through Keras's
  own data adapters, and ``read_validation`` (a validation pipeline read once into arrays);
- ``plans.py``: which rows each minibatch of arrays takes.

A new kind of source is one new module here with a reader of that face, and one branch in
:func:`reader_for`. What does not live here: the checks of the data (``checks.py``), turning a
minibatch into the compiled steps' tensors (``feeding.py``), windows per call (``calls.py``).

Example:
    >>> import numpy as np
    >>> from keraseq.readers import reader_for
    >>> x = np.zeros((5, 3, 1))
    >>> reader = reader_for([(x,)], [np.float32], batch_size=2)
    >>> reader.n_steps, [batch.n_real for batch in reader.epoch()]
    (3, [2, 2, 1])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..validation import check_positive_int
from .arrays import ArrayReader, Minibatch, pad_rows, read_rows, x_dtype, y_dtype
from .pipelines import BatchSource, PipelineReader, as_dataset, read_validation
from .plans import global_plan, minibatch_plan

if TYPE_CHECKING:
    from ..hyperparams import Settings

__all__ = [
    "reader_for",
    "ArrayReader",
    "PipelineReader",
    "Minibatch",
    "BatchSource",
    "as_dataset",
    "read_validation",
    "read_rows",
    "pad_rows",
    "x_dtype",
    "y_dtype",
    "minibatch_plan",
    "global_plan",
    "predict_batch_size",
]


def reader_for(
    data: BatchSource | Sequence[tuple | None],
    dtypes: Sequence,
    batch_size: int,
    comm=None,
    **options,
) -> ArrayReader | PipelineReader:
    """The reader of ``data``: a :class:`PipelineReader` for a :class:`BatchSource`, else an
    :class:`ArrayReader` over the groups of arrays ``data`` (``[xs, ys, ...]``, tuples of
    arrays sharing N, ``None`` for an absent group), each group read in its entry of
    ``dtypes``. ``options`` are the reader's own (``rows``, ``global_batch``, ``by_length``,
    ``pad``; ``standardize``, ``inspect``, ``resets``). Collective under MPI (``comm``): the
    ranks agree on the number of minibatches."""
    if isinstance(data, BatchSource):
        return PipelineReader(data, dtypes, batch_size, comm, **options)
    return ArrayReader(data, dtypes, batch_size, comm, **options)


def predict_batch_size(p: Settings, xs, batch_size: int | None) -> int:
    """Series per minibatch of ``predict``/``score``/validation: the given size, else
    ``predict_batch_size``, else the multiple of the training ``batch_size`` nearest below
    256 series and below ~64 MB of ``x`` (out-of-core data; at least ``batch_size``). A
    multiple of the training batch: with 33 series of (1000, 500) per minibatch against 32,
    XLA:CPU's predict took 590 MB more memory."""
    given = check_positive_int(batch_size, "batch_size", allow_none=True)
    if given is not None:
        return given
    if p.predict_batch_size is not None:
        return p.predict_batch_size
    row_bytes = sum(int(np.prod(a.shape[1:])) * 4 for a in xs)
    rows = min(256, (64 * 2**20) // max(1, row_bytes))
    return p.batch_size * max(1, rows // p.batch_size)
