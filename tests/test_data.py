"""Tests for keraseq.data (h5concat and its command line)."""

from __future__ import annotations

import doctest
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import keraseq.data as kdata
from keraseq.data import h5concat
from keraseq.h5copy import iter_blocks

REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

# Extents along the concatenation axis of the three sources.
SIZES = (3, 1, 4)


def _x_shape(axis: int, n: int) -> tuple[int, ...]:
    shape = [5, 4, 3]  # (N, T, F)
    shape[axis] = n
    return tuple(shape)


def _y_shape(axis: int, n: int) -> tuple[int, ...]:
    shape = [6, 2]
    shape[axis if axis >= 0 else axis + 2] = n  # -1 is axis 1 for rank 2
    return tuple(shape)


def make_sources(tmp_path: Path, axis: int, *, chunked: bool = False) -> list[str]:
    """Three files with /x (N,T,F) float32 and /grp/y int32, varying along ``axis``."""
    rng = np.random.default_rng(abs(axis) + 10 * chunked)
    paths = []
    for i, n in enumerate(SIZES):
        path = tmp_path / f"src{i}.h5"
        x = rng.standard_normal(_x_shape(axis, n)).astype("float32")
        y = rng.integers(-1000, 1000, size=_y_shape(axis, n)).astype("int32")
        with h5py.File(path, "w") as f:
            if chunked:
                chunks = tuple(min(c, d) for c, d in zip((1, 2, 3), x.shape))
                f.create_dataset(
                    "x",
                    data=x,
                    chunks=chunks,
                    compression="gzip",
                    compression_opts=4,
                    shuffle=True,
                    maxshape=(None, 4, 3) if axis == 0 else None,
                )
                f.create_dataset("grp/y", data=y, chunks=(1, 1), compression="gzip")
            else:
                f["x"] = x
                f["grp/y"] = y
        paths.append(str(path))
    return paths


def expected(srcs: list[str], name: str, axis: int) -> np.ndarray:
    arrays = []
    for src in srcs:
        with h5py.File(src, "r") as f:
            arrays.append(f[name][()])
    return np.concatenate(arrays, axis=axis)


def assert_concat(dst, srcs, axis: int, virtual: bool) -> None:
    with h5py.File(dst, "r") as f:
        for name in ("x", "grp/y"):
            want = expected(srcs, name, axis)
            got = f[name]
            assert got.is_virtual == virtual
            assert got.dtype == want.dtype
            assert got.shape == want.shape
            np.testing.assert_array_equal(got[()], want)


def write(path, **datasets) -> str:
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            f[name.replace("__", "/")] = value
    return str(path)


# ---------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("virtual", [True, False], ids=["virtual", "copy"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_equals_numpy_concatenate(tmp_path, axis, virtual):
    srcs = make_sources(tmp_path, axis)
    dst = tmp_path / "out.h5"
    h5concat(dst, srcs, axis=axis, virtual=virtual)
    assert_concat(dst, srcs, axis, virtual)


@pytest.mark.parametrize("virtual", [True, False], ids=["virtual", "copy"])
@pytest.mark.parametrize("axis", [0, -1])
def test_chunked_gzip_sources(tmp_path, axis, virtual):
    srcs = make_sources(tmp_path, axis, chunked=True)
    dst = tmp_path / "out.h5"
    h5concat(dst, srcs, axis=axis, virtual=virtual)
    assert_concat(dst, srcs, axis, virtual)
    if not virtual:  # storage of the first source is kept
        with h5py.File(dst, "r") as f:
            x = f["x"]
            assert x.chunks == (1, 2, 3)
            assert x.compression == "gzip" and x.compression_opts == 4
            assert x.shuffle
            assert x.maxshape == ((None, 4, 3) if axis == 0 else x.shape)
            assert f["grp/y"].chunks == (1, 1) and f["grp/y"].compression == "gzip"


def test_single_source_and_repeated_source(tmp_path):
    src = write(tmp_path / "a.h5", x=np.arange(12.0).reshape(4, 3))
    h5concat(tmp_path / "one.h5", [src], virtual=False)
    h5concat(tmp_path / "twice.h5", [src, src], axis=1)
    with h5py.File(tmp_path / "one.h5", "r") as f:
        np.testing.assert_array_equal(f["x"][()], np.arange(12.0).reshape(4, 3))
    with h5py.File(tmp_path / "twice.h5", "r") as f:
        np.testing.assert_array_equal(f["x"][()], np.tile(np.arange(12.0).reshape(4, 3), 2))


def test_zero_length_part(tmp_path):
    a = write(tmp_path / "a.h5", x=np.ones((2, 3), "float32"))
    b = write(tmp_path / "b.h5", x=np.ones((0, 3), "float32"))
    for virtual in (True, False):
        h5concat(tmp_path / "out.h5", [b, a, b], virtual=virtual)
        with h5py.File(tmp_path / "out.h5", "r") as f:
            np.testing.assert_array_equal(f["x"][()], np.ones((2, 3), "float32"))


def test_strings(tmp_path):
    dt = h5py.string_dtype()
    a = write(tmp_path / "a.h5", s=np.array(["a", "bc"], dtype=object).astype(dt))
    b = write(tmp_path / "b.h5", s=np.array(["déf"], dtype=object).astype(dt))
    for virtual in (True, False):
        h5concat(tmp_path / "out.h5", [a, b], virtual=virtual)
        with h5py.File(tmp_path / "out.h5", "r") as f:
            assert h5py.check_string_dtype(f["s"].dtype).encoding == "utf-8"
            assert f["s"].asstr()[()].tolist() == ["a", "bc", "déf"]


@pytest.mark.parametrize("virtual", [True, False], ids=["virtual", "copy"])
def test_attributes_and_links_from_first_source(tmp_path, virtual):
    srcs = []
    for i in range(2):
        path = tmp_path / f"s{i}.h5"
        with h5py.File(path, "w") as f:
            f.attrs["rate"] = 100.0 + i
            f.attrs["names"] = np.array([b"a", b"b"], dtype="S1")
            f.attrs["note"] = f"source {i}"
            g = f.create_group("grp")
            g.attrs["unit"] = "m/s"
            g["y"] = np.full((2, 2), i, dtype="int16")
            g["y"].attrs["scale"] = np.array([1, 2, 3], dtype="int8")
            f["x"] = np.zeros((i + 1, 2), "float32")
            f["alias"] = h5py.SoftLink("/x")
            f.create_group("empty")
            if i == 1:
                f.attrs["only_second"] = 1
        srcs.append(str(path))
    dst = tmp_path / "out.h5"
    h5concat(dst, srcs, virtual=virtual)
    with h5py.File(dst, "r") as f:
        assert f.attrs["rate"] == 100.0
        assert f.attrs["note"] == "source 0"
        assert "only_second" not in f.attrs
        assert f.attrs["names"].dtype == np.dtype("S1")
        assert f["grp"].attrs["unit"] == "m/s"
        scale = f["grp/y"].attrs["scale"]
        assert scale.dtype == np.int8 and scale.tolist() == [1, 2, 3]
        assert "empty" in f
        assert isinstance(f.get("alias", getlink=True), h5py.SoftLink)
        assert f["alias"].shape == (3, 2)
        np.testing.assert_array_equal(f["grp/y"][()], [[0, 0], [0, 0], [1, 1], [1, 1]])


# ---------------------------------------------------------------------------
# virtual source paths
# ---------------------------------------------------------------------------


def test_virtual_paths_relative_in_same_folder_and_folder_movable(tmp_path):
    folder = tmp_path / "bundle"
    (folder / "parts").mkdir(parents=True)
    srcs = [
        write(folder / "a.h5", x=np.arange(3)),
        write(folder / "parts" / "b.h5", x=np.arange(3, 5)),
    ]
    h5concat(folder / "all.h5", srcs)
    with h5py.File(folder / "all.h5", "r") as f:
        names = [m.file_name for m in f["x"].virtual_sources()]
    assert names == ["a.h5", os.path.join("parts", "b.h5")]
    moved = shutil.move(str(folder), str(tmp_path / "elsewhere"))
    cwd = os.getcwd()
    os.chdir(tmp_path)  # relative names resolve against the file's folder, not the cwd
    try:
        with h5py.File(os.path.join(moved, "all.h5"), "r") as f:
            np.testing.assert_array_equal(f["x"][()], np.arange(5))
    finally:
        os.chdir(cwd)


def test_virtual_paths_absolute_outside_folder(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    src = write(tmp_path / "in" / "a.h5", x=np.arange(3))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:  # relative input spelling is resolved at call time
        h5concat(os.path.join("out", "all.h5"), [os.path.join("in", "a.h5")])
    finally:
        os.chdir(cwd)
    with h5py.File(tmp_path / "out" / "all.h5", "r") as f:
        assert [m.file_name for m in f["x"].virtual_sources()] == [os.path.abspath(src)]
        np.testing.assert_array_equal(f["x"][()], np.arange(3))


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------


def _raises(match_all, dst, srcs, **kw):
    with pytest.raises(ValueError) as info:
        h5concat(dst, srcs, **kw)
    msg = str(info.value)
    for part in match_all:
        assert part in msg, (part, msg)
    assert not os.path.exists(dst), "dst must not be written when validation fails"
    return msg


def test_shape_mismatch(tmp_path):
    a = write(tmp_path / "a.h5", grp__x=np.zeros((2, 4, 3), "float32"))
    b = write(tmp_path / "b.h5", grp__x=np.zeros((2, 5, 3), "float32"))
    msg = _raises([b, "/grp/x", "(2, 4, 3)", "(2, 5, 3)"], tmp_path / "o.h5", [a, b], axis=0)
    assert "shape" in msg
    h5concat(tmp_path / "ok.h5", [a, b], axis=-2)  # fine along the differing axis


def test_rank_mismatch(tmp_path):
    a = write(tmp_path / "a.h5", x=np.zeros((2, 3)))
    b = write(tmp_path / "b.h5", x=np.zeros((2, 3, 1)))
    _raises([b, "/x", "(2, 3)", "(2, 3, 1)"], tmp_path / "o.h5", [a, b])


def test_dtype_mismatch(tmp_path):
    a = write(tmp_path / "a.h5", x=np.zeros((2, 3), "float32"))
    b = write(tmp_path / "b.h5", x=np.zeros((2, 3), "float64"))
    _raises([b, "/x", "float32", "float64", "dtype"], tmp_path / "o.h5", [a, b], virtual=False)


def test_missing_dataset(tmp_path):
    a = write(tmp_path / "a.h5", x=np.zeros(2), grp__y=np.zeros(2))
    b = write(tmp_path / "b.h5", x=np.zeros(2))
    _raises(["/grp/y", b, "missing"], tmp_path / "o.h5", [a, b])
    # present only in a later source: the first one lacks it
    _raises(["/grp/y", b, "missing"], tmp_path / "o.h5", [b, a])
    # a group where the others have a dataset
    c = write(tmp_path / "c.h5", x__inner=np.zeros(2), grp__y=np.zeros(2))
    _raises(["/x", c, "group"], tmp_path / "o.h5", [a, c])


@pytest.mark.parametrize("axis", [3, -4])
def test_axis_out_of_range(tmp_path, axis):
    a = write(tmp_path / "a.h5", x=np.zeros((2, 3, 4)))
    _raises(["/x", a, str(axis), "axis"], tmp_path / "o.h5", [a, a], axis=axis)


def test_axis_out_of_range_for_lower_rank_dataset(tmp_path):
    a = write(tmp_path / "a.h5", x=np.zeros((2, 3, 4)), y=np.zeros(2))
    _raises(["/y", "rank 1"], tmp_path / "o.h5", [a, a], axis=2)
    _raises(["/s", "rank 0"], tmp_path / "o.h5", [write(tmp_path / "s.h5", s=1.0)])


def test_empty_srcs(tmp_path):
    _raises(["source"], tmp_path / "o.h5", [])


def test_dst_is_a_source(tmp_path):
    a = write(tmp_path / "a.h5", x=np.arange(3))
    b = write(tmp_path / "b.h5", x=np.arange(3))
    before = Path(b).read_bytes()
    for dst in (b, tmp_path / "." / "b.h5"):
        with pytest.raises(ValueError, match="source"):
            h5concat(dst, [a, b])
    assert Path(b).read_bytes() == before


def test_bad_argument_types(tmp_path):
    a = write(tmp_path / "a.h5", x=np.arange(3))
    with pytest.raises(TypeError):
        h5concat(tmp_path / "o.h5", a)  # a single name, not a list
    with pytest.raises(TypeError):
        h5concat(tmp_path / "o.h5", [a], axis=1.5)


def test_missing_source_file(tmp_path):
    a = write(tmp_path / "a.h5", x=np.arange(3))
    with pytest.raises(OSError):
        h5concat(tmp_path / "o.h5", [a, str(tmp_path / "nope.h5")])
    assert not (tmp_path / "o.h5").exists()


# ---------------------------------------------------------------------------
# copy mode memory bound
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_copy_small_blocks_same_result_and_bounded_reads(tmp_path, axis, monkeypatch):
    srcs = make_sources(tmp_path, axis, chunked=(axis == 0))
    budget = 40  # bytes: < one (T, F) float32 row of /x, so blocks split further
    reads = []
    original = h5py.Dataset.__getitem__

    def spy(self, sel, *a, **kw):
        out = original(self, sel, *a, **kw)
        if self.file.filename in srcs:
            reads.append(np.asarray(out).nbytes)
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    dst = tmp_path / "out.h5"
    h5concat(dst, srcs, axis=axis, virtual=False, block_bytes=budget)
    monkeypatch.undo()
    assert reads and max(reads) <= budget
    assert_concat(dst, srcs, axis, virtual=False)


@pytest.mark.parametrize(
    "shape,itemsize,budget,chunks",
    [
        ((10, 4, 3), 4, 64 * 2**20, None),  # all at once
        ((10, 4, 3), 4, 100, None),  # 2 rows per block
        ((10, 4, 3), 4, 100, (3, 4, 3)),  # rounded down to a chunk multiple (<= 2 rows -> 2)
        ((10, 4, 3), 4, 200, (3, 4, 3)),  # 4 rows -> 3 (chunk aligned)
        ((3, 4, 3), 4, 20, None),  # a row is too big: split inside axis 1
        ((2, 3), 8, 1, None),  # budget below one element: one element per block
        ((7,), 2, 5, None),
    ],
)
def test_iter_blocks_tiles_within_budget(shape, itemsize, budget, chunks):
    seen = np.zeros(shape, dtype=int)
    for sel in iter_blocks(shape, itemsize, budget, chunks):
        block = seen[sel]
        assert block.size * itemsize <= max(budget, itemsize)
        seen[sel] += 1
    assert (seen == 1).all()
    if chunks is not None and budget == 200:
        starts = [s[0].start for s in iter_blocks(shape, itemsize, budget, chunks)]
        assert starts == [0, 3, 6, 9]


def test_default_block_is_64_mib():
    assert kdata.DEFAULT_BLOCK_BYTES == 64 * 2**20


# ---------------------------------------------------------------------------
# command line and docs
# ---------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "keraseq.data", "concat", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.mark.parametrize("copy", [False, True], ids=["virtual", "copy"])
def test_cli(tmp_path, copy):
    srcs = make_sources(tmp_path, -1)
    dst = str(tmp_path / "cli.h5")
    res = _cli(dst, *srcs, "--axis", "-1", *(["--copy"] if copy else []))
    assert res.returncode == 0, res.stderr
    assert_concat(dst, srcs, -1, virtual=not copy)


def test_cli_errors(tmp_path):
    a = write(tmp_path / "a.h5", x=np.zeros((2, 3)))
    b = write(tmp_path / "b.h5", x=np.zeros((2, 4)))
    res = _cli(str(tmp_path / "o.h5"), a, b, "--axis", "0")
    assert res.returncode == 2
    assert "/x" in res.stderr and b in res.stderr and "error" in res.stderr
    res = _cli(str(tmp_path / "o.h5"))  # no inputs: argparse usage error
    assert res.returncode == 2
    res = _cli(str(tmp_path / "o.h5"), str(tmp_path / "missing.h5"))
    assert res.returncode == 2 and "error" in res.stderr


def test_main_in_process(tmp_path, capsys):
    a = write(tmp_path / "a.h5", x=np.zeros((2, 3)))
    argv = ["concat", str(tmp_path / "o.h5"), a, a, "--axis", "1", "--copy", "--block-mb", "0.001"]
    assert kdata.main(argv) == 0
    with h5py.File(tmp_path / "o.h5", "r") as f:
        assert f["x"].shape == (2, 6) and not f["x"].is_virtual
    assert kdata.main(["concat", str(tmp_path / "o.h5"), a, "--axis", "5"]) == 2
    assert "axis" in capsys.readouterr().err


def test_docstring_examples():
    result = doctest.testmod(kdata, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
