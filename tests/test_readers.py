"""The readers (``keraseq/readers/``): one face for every kind of source.

Each epoch of an :class:`ArrayReader` reads every row of its block exactly once, in
minibatches of the batch size padded with masked zero rows, the same from an ``ndarray``, a
``memmap`` and an ``h5py.Dataset``; a :class:`PipelineReader` yields a pipeline's batches in
the same shape, each padded to the first batch's size; ``reader_for`` picks between them.
"""

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keraseq.readers import (
    ArrayReader,
    BatchSource,
    PipelineReader,
    read_validation,
    reader_for,
)


def _rows_read(reader, rng=None):
    """Every real row's first feature, per minibatch, and the padding checked."""
    seen = []
    for batch in reader.epoch(rng):
        (x,) = batch.arrays[0]
        assert x.shape[0] == reader.batch_size
        assert batch.rows_mask.tolist() == [1.0] * batch.n_real + [0.0] * (
            reader.batch_size - batch.n_real
        )
        assert not x[batch.n_real :].any()  # padding: zero rows
        seen.append(x[: batch.n_real, 0, 0].astype(int).tolist())
    return seen


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 23),
    batch=st.integers(1, 9),
    lo_frac=st.floats(0, 0.5),
    shuffle=st.booleans(),
)
def test_an_epoch_reads_every_row_of_its_block_once(n, batch, lo_frac, shuffle):
    x = np.arange(n, dtype=np.float64)[:, None, None] * np.ones((1, 3, 2))
    lo = int(lo_frac * n)
    reader = ArrayReader([(x,)], [np.float32], batch, rows=(lo, n))
    assert reader.n_steps == -(-(n - lo) // batch) == len(reader)
    rng = np.random.default_rng(0) if shuffle else None
    seen = _rows_read(reader, rng)
    assert len(seen) == reader.n_steps
    flat = [r for rows in seen for r in rows]
    assert sorted(flat) == list(range(lo, n))
    assert all(rows == sorted(rows) for rows in seen)  # h5py reads increasing rows
    if not shuffle:
        assert flat == list(range(lo, n))
    batch_ = next(reader.epoch())
    assert batch_.arrays[0][0].dtype == np.float32


def test_arrays_memmap_and_h5_read_the_same_minibatches(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(11, 4, 3)).astype(np.float32)
    y = rng.integers(0, 5, size=(11, 4, 1)).astype(np.int64)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.float32, x.shape)
    mm[:] = x
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"], f["y"] = x, y
    with h5py.File(tmp_path / "d.h5", "r") as f:
        sources = {"ram": (x, y), "memmap": (mm, y), "h5": (f["x"], f["y"])}
        epochs = {}
        for name, (a, b) in sources.items():
            reader = reader_for([(a,), (b,), None], [np.float32, None, np.float32], 4)
            epochs[name] = [
                (batch.arrays, batch.n_real, batch.rows.tolist())
                for batch in reader.epoch(np.random.default_rng(3))
            ]
    for name in ("memmap", "h5"):
        for (arrays, n_real, rows), (ref, ref_n, ref_rows) in zip(
            epochs[name], epochs["ram"], strict=True
        ):
            assert (n_real, rows) == (ref_n, ref_rows)
            assert arrays[2] is None and ref[2] is None
            for got, want in zip(arrays[:2], ref[:2], strict=True):
                np.testing.assert_array_equal(got[0], want[0])
                assert got[0].dtype == want[0].dtype
    assert epochs["ram"][0][0][1][0].dtype == np.int64  # dtype None keeps the labels' dtype


def test_global_batch_reads_this_ranks_share_of_each_minibatch():
    x = np.arange(10.0)[:, None, None]
    reader = ArrayReader([(x,)], [None], 4, global_batch=4)
    assert reader.n_steps == 3
    assert _rows_read(reader) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_pipeline_batches_are_padded_to_the_first_batchs_size():
    batches = [
        (np.full((3, 2, 1), k, np.float64), np.zeros((n, 2, 1))) for k, n in ((1, 3), (2, 3))
    ]
    batches.append((np.full((2, 2, 1), 3.0), np.zeros((2, 2, 1))))
    reader = reader_for(BatchSource(batches), [np.float32, np.float32, np.float32], 3)
    assert isinstance(reader, PipelineReader) and reader.n_steps == 3
    got = list(reader.epoch())
    assert [b.n_real for b in got] == [3, 3, 2]
    last = got[-1]
    assert last.arrays[0][0][:, 0, 0].tolist() == [3.0, 3.0, 0.0]
    assert last.rows_mask.tolist() == [1.0, 1.0, 0.0] and last.rows is None
    assert last.arrays[0][0].dtype == np.float32
    assert [a is None for a in last.arrays] == [False, False, True, True, True, True]


def test_pipeline_batch_larger_than_the_first_is_refused_by_name():
    batches = [(np.zeros((2, 2, 1)), np.zeros((2, 2, 1))), (np.zeros((3, 2, 1)),) * 2]
    reader = PipelineReader(BatchSource(batches), [None, None, None], 2)
    with pytest.raises(ValueError, match="batch 1 of the dataset has 3 series, more than"):
        list(reader.epoch())


def test_read_validation_joins_a_pipelines_batches():
    batches = [(np.full((2, 3, 1), k), np.zeros((2, 3, 1)), np.ones(2)) for k in range(3)]
    x, y, w = read_validation(iter(batches))
    assert x.shape == (6, 3, 1) and x[:, 0, 0].tolist() == [0, 0, 1, 1, 2, 2]
    assert w.shape == (6,)
    arrays = (np.zeros((2, 3, 1)), np.zeros((2, 3, 1)))
    assert read_validation(arrays) is arrays  # arrays pass through
