"""Out-of-core data: fit, predict and score stream from h5py datasets and memmaps."""

import h5py
import keras
import numpy as np
import pytest
from sklearn.metrics import r2_score

from keraseq import Estimator


def model():
    keras.utils.set_random_seed(5)
    return keras.Sequential(
        [keras.Input((None, 3)), keras.layers.LSTM(6, return_sequences=True), keras.layers.Dense(2)]
    )


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(37, 21, 3)).astype("float32")
    y = np.stack([x[..., 0].cumsum(1), x[..., 1] - x[..., 2]], -1).astype("float32") / 4
    return x, y


def fit(x, y, shuffle):
    return Estimator(
        model(),
        "mse",
        keras.optimizers.Adam(0.01),
        epochs=2,
        batch_size=8,
        seq_len=5,
        shuffle=shuffle,
        random_state=3,
        verbose=0,
    ).fit(x, y)


class Recorder:
    """An array wrapper that records which rows were read, and how many elements at most."""

    def __init__(self, a):
        self.a, self.shape, self.dtype, self.ndim = a, a.shape, a.dtype, a.ndim
        self.largest_read = 0

    def __getitem__(self, key):
        out = np.asarray(self.a[key])
        self.largest_read = max(self.largest_read, out.size)
        return out


@pytest.mark.parametrize("shuffle", [False, True])
def test_fit_on_h5_and_memmap_equals_fit_in_memory(arrays, tmp_path, shuffle):
    x, y = arrays
    ref = fit(x, y, shuffle).model_.get_weights()
    with h5py.File(tmp_path / "d.h5", "w") as f:
        # chunked and compressed: one chunk holds 4 series
        f.create_dataset("x", data=x, chunks=(4, 21, 3), compression="gzip")
        f.create_dataset("y", data=y, chunks=(4, 21, 2), compression="gzip", shuffle=True)
    xm = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.float32, x.shape)
    xm[:] = x
    xm.flush()
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    with h5py.File(tmp_path / "d.h5", "r") as f:
        got_h5 = fit(f["x"], f["y"], shuffle).model_.get_weights()
    got_mm = fit(xm, y, shuffle).model_.get_weights()
    for a, b, c in zip(ref, got_h5, got_mm):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_minibatches_are_read_lazily(arrays, monkeypatch):
    """fit, predict and score never read more than one minibatch of rows at a time (the NaN
    scan's block, 64 MB by default, is shrunk to 8 series here to check it too)."""
    from keraseq import validation

    monkeypatch.setattr(validation, "_CHUNK_BYTES", 8 * 21 * 2 * 4)  # <= 8 series of x or y
    x, y = arrays
    rx, ry = Recorder(x), Recorder(y)
    est = Estimator(
        model(),
        "mse",
        "adam",
        epochs=1,
        batch_size=8,
        seq_len=5,
        verbose=0,
        jit_compile=False,
        predict_batch_size=8,
    ).fit(rx, ry)
    assert 0 < rx.largest_read <= 8 * 21 * 3 and 0 < ry.largest_read <= 8 * 21 * 2
    rx.largest_read = 0
    est.predict(rx)
    assert 0 < rx.largest_read <= 8 * 21 * 3
    ry.largest_read = rx.largest_read = 0
    est.score(rx, ry)
    assert 0 < rx.largest_read <= 8 * 21 * 3 and 0 < ry.largest_read <= 8 * 21 * 2


def test_nan_scan_streams_in_blocks(arrays, monkeypatch):
    from keraseq import validation

    x, y = arrays
    monkeypatch.setattr(validation, "_CHUNK_BYTES", 5 * 21 * 3 * 4)  # 5 series per block
    rx = Recorder(x.copy())
    rx.a[30, 4, 1] = np.nan
    with pytest.raises(ValueError, match=r"`x` contains NaN or Inf \(first at row 30\)"):
        Estimator(model(), "mse", "adam", verbose=0).fit(rx, y)
    assert rx.largest_read <= 5 * 21 * 3


@pytest.mark.backend
def test_predict_into_h5_equals_in_memory_and_score_equals_sklearn(arrays, tmp_path):
    x, y = arrays
    est = fit(x, y, False)
    expected = est.predict(x)
    with h5py.File(tmp_path / "o.h5", "w") as f:
        out = f.create_dataset("yhat", shape=expected.shape, dtype="float32", chunks=(3, 21, 2))
        assert est.predict(x, out=out, batch_size=5) is out
        np.testing.assert_allclose(out[...], expected, atol=1e-6)
    # far from zero (prices, CO2 levels): the streamed R^2 keeps its precision
    offset = y + 1e4
    w = np.random.default_rng(0).random(len(x))
    pred = est.predict(x)
    assert est.score(x, offset) == pytest.approx(
        r2_score(offset.reshape(-1, 2).astype("float64"), pred.reshape(-1, 2).astype("float64")),
        rel=1e-9,
    )
    assert est.score(x, y, w) == pytest.approx(
        r2_score(y.reshape(-1, 2), pred.reshape(-1, 2), sample_weight=np.repeat(w, 21)), rel=1e-6
    )
