"""HDF5 data utilities for keraseq: combining many HDF5 files into one.

What lives here: :func:`h5concat`, which stacks every same-named dataset of several HDF5 files
along one axis into a new file, either as an HDF5 *virtual dataset* (no data copied) or as a
real, chunk-by-chunk copy with bounded memory; and :func:`main`, the command line
``python -m keraseq.data concat ...``.

What does not live here: nothing about models, training, batching or windowing of sequences:
this module only handles files. It deliberately imports nothing from the rest of ``keraseq``
(only ``numpy`` and ``h5py``), so it can be used, and its command line run, on a machine that
only prepares data.

Example:
    >>> import os, tempfile, numpy as np, h5py
    >>> from keraseq.data import h5concat
    >>> d = tempfile.mkdtemp()
    >>> for i in range(2):
    ...     with h5py.File(os.path.join(d, f"part{i}.h5"), "w") as f:
    ...         f["x"] = np.full((2, 3), i, dtype="float32")
    >>> parts = [os.path.join(d, f"part{i}.h5") for i in range(2)]
    >>> h5concat(os.path.join(d, "all.h5"), parts)
    >>> with h5py.File(os.path.join(d, "all.h5"), "r") as f:
    ...     f["x"].shape, f["x"].is_virtual
    ((4, 3), True)
"""

from __future__ import annotations

import argparse
import operator
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import h5py
import numpy as np

from .h5copy import copy_data, create_copy_target, fillvalue

__all__ = ["h5concat", "main", "DEFAULT_BLOCK_BYTES"]

PathLike = Union[str, "os.PathLike[str]"]

#: Default memory budget of one block read/written by ``h5concat(virtual=False)``.
DEFAULT_BLOCK_BYTES: int = 64 * 2**20
"""Memory budget of one block when :func:`h5concat` copies (``virtual=False``): 64 MiB."""


# ---------------------------------------------------------------------------
# Inventory of a source file
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _DsetInfo:
    """What :func:`h5concat` needs to know about one source dataset."""

    shape: tuple[int, ...] | None  # None for an HDF5 "empty" (null) dataset
    dtype: np.dtype
    chunks: tuple[int, ...] | None
    maxshape: tuple[int | None, ...] | None


def _kind_name(kind: str) -> str:
    return {
        "group": "a group",
        "softlink": "a soft link",
        "extlink": "an external link",
        "datatype": "a named datatype",
        "dataset": "a dataset",
    }[kind]


def _inventory(f: h5py.File) -> dict[str, tuple[str, Any]]:
    """Map every path of ``f`` to ``(kind, detail)``, in pre-order.

    Soft and external links are recorded, not followed; a group reachable
    through several hard links is descended into only once.
    """
    entries: dict[str, tuple[str, Any]] = {}
    seen_groups = {f["/"].id}

    def walk(group: h5py.Group) -> None:
        prefix = group.name.rstrip("/")
        for name in group:
            path = f"{prefix}/{name}"
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.SoftLink):
                entries[path] = ("softlink", link.path)
                continue
            if isinstance(link, h5py.ExternalLink):
                entries[path] = ("extlink", (link.filename, link.path))
                continue
            obj = group[name]
            if isinstance(obj, h5py.Dataset):
                entries[path] = (
                    "dataset",
                    _DsetInfo(obj.shape, obj.dtype, obj.chunks, obj.maxshape),
                )
            elif isinstance(obj, h5py.Group):
                entries[path] = ("group", None)
                if obj.id not in seen_groups:
                    seen_groups.add(obj.id)
                    walk(obj)
            else:  # h5py.Datatype
                entries[path] = ("datatype", None)

    walk(f["/"])
    return entries


def _same_dtype(a: np.dtype, b: np.dtype) -> bool:
    # h5py marks vlen str/bytes and string encodings in dtype metadata, which
    # numpy's == ignores.
    return a == b and dict(a.metadata or {}) == dict(b.metadata or {})


def _drop(shape: tuple[int, ...], ax: int) -> tuple[int, ...]:
    return shape[:ax] + shape[ax + 1 :]


def _check_dst_not_a_source(dst: str, srcs: Sequence[str]) -> None:
    dst_real = os.path.realpath(dst)
    for src in srcs:
        same = os.path.realpath(src) == dst_real
        if not same and os.path.exists(dst) and os.path.exists(src):
            same = os.path.samefile(dst, src)
        if same:
            raise ValueError(
                f"destination {dst!r} is also a source ({src!r}); "
                "write the concatenation to a new file"
            )


def _plan(
    srcs: Sequence[str], axis: int
) -> tuple[dict[str, tuple[str, Any]], dict[str, list[_DsetInfo]], dict[str, int]]:
    """Inventory all sources and validate them; nothing is written.

    Returns the first source's inventory, every dataset's per-source info and
    each dataset's normalised axis.
    """
    inventories = []
    for src in srcs:
        with h5py.File(src, "r") as f:
            inventories.append(_inventory(f))

    # Every dataset path of any source, the first source's order first.
    dset_paths: dict[str, int] = {}
    for i, inv in enumerate(inventories):
        for path, (kind, _) in inv.items():
            if kind == "dataset":
                dset_paths.setdefault(path, i)

    infos: dict[str, list[_DsetInfo]] = {}
    axes: dict[str, int] = {}
    for path, owner in dset_paths.items():
        for src, inv in zip(srcs, inventories):
            kind = inv.get(path, ("missing", None))[0]
            if kind != "dataset":
                what = ("it is " + _kind_name(kind)) if kind != "missing" else "no such path"
                raise ValueError(
                    f"dataset {path!r} is missing from {src!r} ({what} there; "
                    f"the dataset exists in {srcs[owner]!r}): every source must "
                    "hold the same datasets"
                )
        per_src = [inv[path][1] for inv in inventories]
        first = per_src[0]
        rank = 0 if first.shape is None else len(first.shape)
        ax = axis + rank if axis < 0 else axis
        if not 0 <= ax < rank:
            raise ValueError(
                f"axis {axis} is out of range for dataset {path!r} of rank {rank} "
                f"(shape {first.shape}) in {srcs[0]!r}"
            )
        for src, info in zip(srcs[1:], per_src[1:]):
            if not _same_dtype(info.dtype, first.dtype):
                raise ValueError(
                    f"dtype mismatch for dataset {path!r}: {srcs[0]!r} has "
                    f"{first.dtype}, {src!r} has {info.dtype}"
                )
            shape = info.shape or ()
            others, first_others = _drop(shape, ax), _drop(first.shape, ax)
            if len(shape) != rank or others != first_others:
                raise ValueError(
                    f"shape mismatch for dataset {path!r} (all dimensions but "
                    f"axis {ax} must agree): {srcs[0]!r} has {first.shape}, "
                    f"{src!r} has {info.shape}"
                )
        infos[path] = per_src
        axes[path] = ax
    return inventories[0], infos, axes


# ---------------------------------------------------------------------------
# Copy helpers
# ---------------------------------------------------------------------------


def _copy_attrs(src: h5py.HLObject, dst: h5py.HLObject) -> None:
    """Copy all attributes, keeping their HDF5 dtype and shape."""
    for name in src.attrs:
        aid = src.attrs.get_id(name)
        if h5py.check_dtype(ref=aid.dtype) is not None:
            warnings.warn(
                f"attribute {name!r} of {src.name!r} holds object references into "
                "the source file; not copied",
                stacklevel=3,
            )
            continue
        value = src.attrs[name]
        if isinstance(value, h5py.Empty):
            dst.attrs[name] = value
        else:
            dst.attrs.create(name, value, shape=aid.shape, dtype=aid.dtype)


def _vds_path(src: str, dst: str) -> str:
    """Source file name to store in a virtual dataset of ``dst``.

    Relative to ``dst``'s folder when ``src`` lies in that folder or below it
    (HDF5 resolves such names against the virtual file's own folder, so the
    folder can be moved as a whole), else absolute.
    """
    src_abs = os.path.abspath(src)
    try:
        rel = os.path.relpath(src_abs, os.path.dirname(os.path.abspath(dst)))
    except ValueError:  # e.g. another drive on Windows
        return src_abs
    if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
        return src_abs
    return rel


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def h5concat(
    dst: PathLike,
    srcs: Sequence[PathLike],
    axis: int = 0,
    virtual: bool = True,
    *,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> None:
    """Stack every same-named dataset of the HDF5 files ``srcs`` along ``axis`` into ``dst``.

    Datasets are found recursively in groups and matched by their full path (``/x``,
    ``/labels/y``, ...); dataset ``/p`` of ``dst`` equals
    ``numpy.concatenate([f[p] for f in srcs], axis=axis)``. The first source's attributes,
    groups, links and named datatypes are copied once (see ``docs/guide/big-data.md``).

    Args:
        dst: Output file; created, or overwritten if it exists. It must not be a source.
        srcs: Source files, in concatenation order (at least one).
        axis: Axis to stack along; negative values count from the end of each dataset's
            shape. All other dimensions, and the dtypes, must agree.
        virtual: ``True`` (default): HDF5 *virtual datasets* mapping the sources, nothing
            copied; **the sources must stay in place** (a missing one reads as zeros).
            ``False``: the data is copied block by block into real datasets, with the first
            source's chunks, filters and fill value.
        block_bytes: Memory budget of one block in copy mode (default 64 MiB).

    Raises:
        ValueError: ``srcs`` is empty; ``dst`` is one of ``srcs``; a dataset is missing from
            some source; dtypes or shapes (all dimensions but ``axis``) of a dataset
            disagree; ``axis`` is out of range for a dataset's rank. The message names the
            dataset and the file(s); ``dst`` is left untouched.
        OSError: A source cannot be opened, or ``dst`` cannot be written (a partly written
            ``dst`` is removed).

    Examples:
        >>> import os, tempfile, numpy as np, h5py
        >>> d = tempfile.mkdtemp()
        >>> srcs = []
        >>> for i in range(3):
        ...     srcs.append(os.path.join(d, f"s{i}.h5"))
        ...     with h5py.File(srcs[-1], "w") as f:
        ...         f["x"] = np.arange(6, dtype="float32").reshape(1, 2, 3) + i
        ...         f["meta/n"] = np.array([[i]])
        >>> h5concat(os.path.join(d, "time.h5"), srcs, axis=1, virtual=False)
        >>> with h5py.File(os.path.join(d, "time.h5"), "r") as f:
        ...     f["x"].shape, f["meta/n"][()].tolist()
        ((1, 6, 3), [[0, 1, 2]])
    """
    sources, dst_path, axis = _checked_arguments(dst, srcs, axis)
    first_inv, infos, axes = _plan(sources, axis)
    created = False
    try:
        with h5py.File(dst_path, "w") as out:
            created = True
            with h5py.File(sources[0], "r") as f0:
                _copy_structure(f0, out, first_inv)
                targets = {
                    path: _create_target(
                        out, f0[path], path, sources, per_src, axes[path], virtual, dst_path
                    )
                    for path, per_src in infos.items()
                }
            if not virtual:
                copy_data(sources, targets, axes, block_bytes)
    except BaseException:
        if created:  # never remove a file we could not even open
            try:
                os.remove(dst_path)
            except OSError:
                pass
        raise


def _checked_arguments(dst: PathLike, srcs: Sequence[PathLike], axis: int):
    """``(sources, dst_path, axis)``: the file names as strings and ``axis`` as an int."""
    if isinstance(srcs, (str, bytes, os.PathLike)):
        raise TypeError("srcs must be a sequence of file names, not a single name")
    sources: list[str] = [os.fspath(s) for s in srcs]
    dst_path = os.fspath(dst)
    if not sources:
        raise ValueError("h5concat needs at least one source file (srcs is empty)")
    if isinstance(axis, bool):
        raise TypeError("axis must be an int, not bool")
    axis = operator.index(axis)
    _check_dst_not_a_source(dst_path, sources)
    return sources, dst_path, axis


def _copy_structure(f0: h5py.File, out: h5py.File, first_inv: dict) -> None:
    """The first source's root attributes, groups, links and named datatypes, into ``out``."""
    _copy_attrs(f0["/"], out["/"])
    for path, (kind, detail) in first_inv.items():
        if kind == "group":
            _copy_attrs(f0[path], out.require_group(path))
        elif kind == "softlink":
            out[path] = h5py.SoftLink(detail)
        elif kind == "extlink":
            out[path] = h5py.ExternalLink(*detail)
        elif kind == "datatype":
            parent, name = path.rsplit("/", 1)
            f0.copy(f0[path], out.require_group(parent or "/"), name=name)


def _create_target(
    out: h5py.File,
    first: h5py.Dataset,
    path: str,
    sources: Sequence[str],
    per_src: list[_DsetInfo],
    ax: int,
    virtual: bool,
    dst_path: str,
) -> h5py.Dataset:
    """The output dataset ``path`` with the first source's attributes: a virtual one mapping
    the sources, or an empty one that :func:`~keraseq.h5copy.copy_data` fills."""
    # _plan refused null (shapeless) datasets: every shape here is a tuple
    dims = list(per_src[0].shape or ())
    dims[ax] = sum((info.shape or ())[ax] for info in per_src)
    shape = tuple(dims)
    if virtual:
        layout = _virtual_layout(first, path, shape, sources, per_src, ax, dst_path)
        dset = out.create_virtual_dataset(path, layout, fillvalue=fillvalue(first))
    else:
        dset = create_copy_target(out, path, first, shape)
    _copy_attrs(first, dset)
    return dset


def _virtual_layout(first, path, shape, sources, per_src, ax, dst_path) -> h5py.VirtualLayout:
    """Each source's dataset ``path`` mapped to its slot along ``ax``."""
    layout = h5py.VirtualLayout(shape=shape, dtype=first.dtype)
    offset = 0
    for src, info in zip(sources, per_src):
        n = (info.shape or ())[ax]
        if n:
            vsrc = h5py.VirtualSource(
                _vds_path(src, dst_path), name=path, shape=info.shape, dtype=info.dtype
            )
            layout[(slice(None),) * ax + (slice(offset, offset + n),)] = vsrc
        offset += n
    return layout


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (0 ok, 2 error).

    ``python -m keraseq.data concat OUT.h5 IN1.h5 IN2.h5 ... [--axis 0] [--copy]``

    >>> import os, tempfile, numpy as np, h5py
    >>> d = tempfile.mkdtemp()
    >>> ins = [os.path.join(d, n) for n in ("a.h5", "b.h5")]
    >>> for p in ins:
    ...     with h5py.File(p, "w") as f:
    ...         f["x"] = np.zeros((2, 5))
    >>> main(["concat", os.path.join(d, "out.h5"), *ins, "--axis", "-1", "--copy"])
    0
    """
    parser = argparse.ArgumentParser(
        prog="python -m keraseq.data",
        description="HDF5 data utilities of keraseq.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "concat",
        help="stack same-named datasets of several HDF5 files along an axis",
        description=(
            "Stack every same-named dataset of IN files along --axis into OUT. "
            "By default OUT holds virtual datasets referencing the inputs (which "
            "must then stay in place); --copy writes real data instead."
        ),
    )
    p.add_argument("out", metavar="OUT.h5", help="output file (overwritten)")
    p.add_argument("inputs", metavar="IN.h5", nargs="+", help="input files, in order")
    p.add_argument(
        "--axis",
        type=int,
        default=0,
        help="axis to stack along (default 0; negative counts from the end)",
    )
    p.add_argument(
        "--copy",
        action="store_true",
        help="copy the data instead of writing virtual datasets",
    )
    p.add_argument(
        "--block-mb",
        type=float,
        default=DEFAULT_BLOCK_BYTES / 2**20,
        help="memory budget per block with --copy, in MiB (default %(default)g)",
    )
    args = parser.parse_args(argv)
    try:
        h5concat(
            args.out,
            args.inputs,
            axis=args.axis,
            virtual=not args.copy,
            block_bytes=max(1, int(args.block_mb * 2**20)),
        )
    except (ValueError, TypeError, OSError) as exc:
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
