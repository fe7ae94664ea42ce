"""Tests of keraseq.layers.WinsorNorm against a NumPy reference.

Reference: per feature, ``np.nanquantile`` (linear) of the float32 data computed in float64,
clip, ``np.nanmean``/``np.nanstd`` of the clipped data, standardise, NaN → 0.

Tolerances: ``adapt`` selects the exact order statistics, so ``low``/``high`` differ from the
reference only by the final rounding to float32 (half an ulp, relative 6e-8) -> rtol 1e-6.
``mean``/``std`` are accumulated in float64 and rounded to float32 (relative ~1e-7), and
``call`` works in float32: the clipped standardised values are O(1..10), so a few float32
roundings of |x - mean| / std give absolute errors below ~1e-6 -> atol 1e-5, rtol 1e-5.
"""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from keraseq.layers import WinsorNorm


def reference(x: np.ndarray, lower=0.01, upper=0.99):
    """Independent NumPy computation of WinsorNorm's statistics and output."""
    x64 = np.asarray(x, dtype=np.float32).astype(np.float64)
    flat = x64.reshape(-1, x64.shape[-1])
    low = np.nanquantile(flat, lower, axis=0)
    high = np.nanquantile(flat, upper, axis=0)
    clipped = np.clip(flat, low, high)
    mean = np.nanmean(clipped, axis=0)
    std = np.nanstd(clipped, axis=0)
    y = (np.clip(x64, low, high) - mean) / std
    return np.where(np.isnan(x64), 0.0, y), (low, high, mean, std)


def messy_data(n=40, t=25, f=4, seed=0):
    """Heavy tails, gross outliers, NaNs, ties and very different scales per feature."""
    rng = np.random.default_rng(seed)
    x = rng.standard_t(df=2, size=(n, t, f)) * np.array([1.0, 1e3, 1e-3, 5.0])[:f]
    x[..., 3 % f] = np.round(x[..., 3 % f])  # many ties
    x[rng.random(x.shape) < 0.003] = 1e9  # outliers
    x[rng.random(x.shape) < 0.003] = -1e7
    x[rng.random(x.shape) < 0.05] = np.nan  # missing values
    return x.astype(np.float32)


def stats(layer):
    return [
        np.asarray(layer.low),
        np.asarray(layer.high),
        np.asarray(layer.mean),
        np.asarray(layer.std),
    ]


def check_against_reference(layer, x, lower=0.01, upper=0.99):
    y_ref, (low, high, mean, std) = reference(x, lower, upper)
    got = stats(layer)
    np.testing.assert_allclose(got[0], low, rtol=1e-6)
    np.testing.assert_allclose(got[1], high, rtol=1e-6)
    assert np.all(np.abs(got[2] - mean) <= 1e-5 * np.abs(mean) + 1e-6 * std)  # relative to scale
    np.testing.assert_allclose(got[3], std, rtol=1e-5)
    y = np.asarray(layer(x))
    assert y.dtype == np.float32 and np.isfinite(y).all()
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)


def test_matches_numpy_reference_on_ndarray():
    x = messy_data()
    layer = WinsorNorm().adapt(x, batch_size=7)  # 7 does not divide 40
    check_against_reference(layer, x)
    assert np.all(np.isnan(x) <= (np.asarray(layer(x)) == 0))  # NaN -> 0


def test_matches_numpy_reference_on_h5py_dataset(tmp_path):
    x = messy_data(seed=1)
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=x, chunks=(4, 25, 4))
    with h5py.File(path, "r") as f:
        layer = WinsorNorm(lower=0.05, upper=0.9).adapt(f["x"], batch_size=6)
    check_against_reference(layer, x, 0.05, 0.9)


def test_two_dimensional_data_and_other_quantiles():
    x = messy_data(n=300, t=1, f=3, seed=2)[:, 0, :]  # (N, F)
    layer = WinsorNorm(lower=0.0, upper=0.75).adapt(x)
    check_against_reference(layer, x, 0.0, 0.75)


def test_streams_rows_without_loading_everything(tmp_path):
    x = messy_data(n=50, seed=3)
    mm = np.memmap(tmp_path / "x.dat", dtype=np.float32, mode="w+", shape=x.shape)
    mm[:] = x
    mm.flush()

    class Recorder:  # records every slice read
        shape, reads = x.shape, []

        def __getitem__(self, key):
            self.reads.append(key.stop - key.start)
            return mm[key]

    layer = WinsorNorm().adapt(Recorder(), batch_size=8)
    assert max(Recorder.reads) <= 8
    assert len(Recorder.reads) == 3 * 7  # 3 passes of ceil(50 / 8)
    check_against_reference(layer, x)


def test_low_memory_schedules_give_the_same_exact_quantiles():
    x = messy_data(seed=4)
    full = stats(WinsorNorm().adapt(x))
    for budget in (4 * 4 * 2**11 * 8, 4 * 4 * 2**8 * 8, 1):  # 3, 4 and 8 radix passes
        small = stats(WinsorNorm().adapt(x, max_memory=budget))
        np.testing.assert_array_equal(small[0], full[0])
        np.testing.assert_array_equal(small[1], full[1])
        np.testing.assert_allclose(small[2:], full[2:], rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    x=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=9),
        elements=st.one_of(
            st.floats(-(2.0**100), 2.0**100, width=32),
            st.just(np.nan),
            st.sampled_from([0.0, -0.0, 1.0, -1.0]),
        ),
    ),
    q=st.tuples(st.floats(0, 0.5), st.floats(0.5, 1)).filter(lambda q: q[0] < q[1]),
    batch=st.integers(1, 5),
)
def test_quantiles_are_exact_property(x, q, batch):
    layer = WinsorNorm(*q).adapt(x, batch_size=batch)
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    for i, level in enumerate(q):
        col_ok = ~np.all(np.isnan(flat), axis=0)
        ref = np.zeros(flat.shape[1])
        if col_ok.any():
            ref[col_ok] = np.nanquantile(flat[:, col_ok], level, axis=0)
        got = stats(layer)[i]
        np.testing.assert_allclose(got, ref.astype(np.float32), rtol=1e-6, atol=0)


def test_edge_cases_constant_and_all_nan_features_and_defaults():
    x = np.random.default_rng(5).normal(size=(10, 6, 3)).astype(np.float32)
    x[..., 1] = 7.0
    x[..., 2] = np.nan
    fresh = WinsorNorm()  # before adapt: NaN -> 0 only
    y0 = np.asarray(fresh(x))
    np.testing.assert_array_equal(y0[..., :2], x[..., :2])
    assert (y0[..., 2] == 0).all()
    layer = WinsorNorm().adapt(x)
    y = np.asarray(layer(x))
    assert np.isfinite(y).all() and (y[..., 1:] == 0).all()
    np.testing.assert_allclose(stats(layer)[3][1:], 1.0)
    with pytest.raises(ValueError, match="lower"):
        WinsorNorm(lower=0.9, upper=0.1)
    with pytest.raises(ValueError, match="features"):
        layer.adapt(np.zeros((4, 5, 2), np.float32))


def test_call_under_tf_function_and_xla():
    x = messy_data(seed=6)
    layer = WinsorNorm().adapt(x)
    eager = np.asarray(layer(x))
    graph = tf.function(
        layer, jit_compile=True, input_signature=[tf.TensorSpec((None, None, 4), tf.float32)]
    )
    np.testing.assert_allclose(np.asarray(graph(x)), eager, rtol=1e-6, atol=1e-6)


def test_save_and_load_keras_file(tmp_path):
    x = messy_data(seed=7)
    keras.utils.set_random_seed(0)
    norm = WinsorNorm(lower=0.02, upper=0.97, name="wn")
    model = keras.Sequential(
        [
            keras.Input((None, 4)),
            norm,
            keras.layers.GRU(3, return_sequences=True),
            keras.layers.Dense(1),
        ]
    )
    norm.adapt(x)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    wn = loaded.get_layer("wn")
    assert isinstance(wn, WinsorNorm) and (wn.lower, wn.upper) == (0.02, 0.97)
    for a, b in zip(stats(norm), stats(wn)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    assert len(norm.trainable_weights) == 0 and len(norm.non_trainable_weights) == 4
    clone = WinsorNorm.from_config(norm.get_config())
    assert clone.get_config() == norm.get_config()
