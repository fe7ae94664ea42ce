"""The bounded-memory copy behind ``h5concat(..., virtual=False)``: HDF5 data block by block.

What lives here: :func:`iter_blocks` (selections tiling an array, each within a memory budget,
aligned to the source's chunks), :func:`create_copy_target` (an empty destination dataset with
the first source's storage: chunks, filters, fill value), :func:`copy_blocks` and
:func:`copy_data` (every source into its slot of each target, one source file open at a time).
What does not: planning the combined file and the virtual datasets (``data.py``). Like
``data.py`` it imports nothing from the rest of ``keraseq`` (only ``numpy`` and ``h5py``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

import h5py

__all__ = ["iter_blocks", "fillvalue", "create_copy_target", "copy_blocks", "copy_data"]


def iter_blocks(
    shape: tuple[int, ...],
    itemsize: int,
    block_bytes: int,
    chunks: tuple[int, ...] | None = None,
) -> Iterator[tuple[slice, ...]]:
    """Yield selections that tile an array of ``shape``, each at most ``block_bytes``.

    Blocks run along axis 0 (whole trailing dimensions per block) whenever a
    single index of axis 0 fits the budget; otherwise the split moves to the
    first axis whose trailing "rows" fit (a block is never smaller than one
    element).  When the source is chunked, block extents along the split axis
    are rounded down to a multiple of its chunk size where possible.

    >>> [s[0] for s in iter_blocks((5, 2), itemsize=4, block_bytes=16)]
    [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    if not shape or math.prod(shape) == 0:
        if not shape:
            yield ()
        return
    block_bytes = max(int(block_bytes), 1)
    ndim = len(shape)
    row_bytes = [itemsize * math.prod(shape[k + 1 :]) for k in range(ndim)]
    k = next((k for k in range(ndim) if row_bytes[k] <= block_bytes), ndim - 1)
    step = min(max(1, block_bytes // row_bytes[k]), shape[k])
    if chunks is not None and chunks[k] <= step:
        step -= step % chunks[k]
    outer = itertools.product(*(range(n) for n in shape[:k]))
    tail = (slice(None),) * (ndim - k - 1)
    for idx in outer:
        head = tuple(slice(i, i + 1) for i in idx)
        for start in range(0, shape[k], step):
            yield head + (slice(start, min(start + step, shape[k])),) + tail


def fillvalue(dset: h5py.Dataset) -> Any:
    """The dataset's fill value where it is a plain number, else None (default)."""
    return dset.fillvalue if dset.dtype.kind in "biufc" else None


def create_copy_target(
    out: h5py.File, path: str, first: h5py.Dataset, shape: tuple[int, ...]
) -> h5py.Dataset:
    """Create the (empty) destination dataset with the first source's storage."""
    if first.chunks is None:  # contiguous / compact / virtual first source
        return out.create_dataset(path, shape=shape, dtype=first.dtype, fillvalue=fillvalue(first))
    maxshape = tuple(None if m is None else n for m, n in zip(first.maxshape, shape))
    # Copying the creation property list keeps every filter (including
    # plugin filters h5py has no name for), fill value and fill time.
    return out.create_dataset(
        path,
        shape=shape,
        dtype=first.dtype,
        chunks=first.chunks,
        maxshape=maxshape,
        dcpl=first.id.get_create_plist(),
    )


def copy_blocks(
    src: h5py.Dataset, dst: h5py.Dataset, ax: int, offset: int, block_bytes: int
) -> None:
    """Copy ``src`` into ``dst`` at ``offset`` along ``ax``, one bounded block at a time."""
    for sel in iter_blocks(src.shape, src.dtype.itemsize, block_bytes, src.chunks):
        start, stop, _ = sel[ax].indices(src.shape[ax])
        dst[sel[:ax] + (slice(offset + start, offset + stop),) + sel[ax + 1 :]] = src[sel]


def copy_data(sources, targets: dict[str, h5py.Dataset], axes, block_bytes: int) -> None:
    """Copy mode: one source open at a time; each copies into its slot of every target."""
    offsets = dict.fromkeys(targets, 0)
    for src in sources:
        with h5py.File(src, "r") as f:
            for path, dset in targets.items():
                ax = axes[path]
                copy_blocks(f[path], dset, ax, offsets[path], block_bytes)
                offsets[path] += f[path].shape[ax]
