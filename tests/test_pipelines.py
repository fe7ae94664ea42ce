"""Pipelines as model.fit takes them: tf.data, generators, iterators and iterables of
``(x, y[, sample_weight])`` batches (``steps_per_epoch`` for endless ones), read through
Keras's own data adapters; the same result as the same minibatches passed as arrays."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
from sklearn.base import clone

from keraseq import Estimator

N, T, F, B = 22, 10, 3, 8  # minibatches of 8, 8 and 6 series


def data(n=N, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, T, F)).astype("float32")
    y = (np.cumsum(x[..., :1], 1) / 3).astype("float32")
    w = np.linspace(0.5, 1.5, n).astype("float32")
    return x, y, w


def gru(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((None, F)), keras.layers.GRU(4, return_sequences=True), keras.layers.Dense(1)]
    )


def batches(x, y, w):
    return [(x[k : k + B], y[k : k + B], w[k : k + B]) for k in range(0, len(x), B)]


KW = dict(
    batch_size=B,
    seq_len=4,
    shuffle=False,
    random_state=0,
    verbose=0,
    metrics=["mae"],
    jit_compile=False,
)


def assert_same_fit(a, b):
    for u, v in zip(a.model_.get_weights(), b.model_.get_weights(), strict=True):
        np.testing.assert_allclose(u, v, rtol=0, atol=1e-6)
    for key in a.history_:
        np.testing.assert_allclose(a.history_[key], b.history_[key], rtol=1e-6)


class Reiterable:
    """An iterable (not an iterator) of batches, without a length."""

    def __init__(self, items):
        self.items = items

    def __iter__(self):
        return iter(self.items)


@pytest.fixture(scope="module")
def arrays_fit():
    x, y, w = data()
    return Estimator(gru(), "mse", "adam", epochs=2, **KW).fit(x, y, sample_weight=w)


def _tf_data(x, y, w):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, y, w)).batch(B)


@pytest.mark.tf_in_full  # every case on JAX in make test (its TensorFlow run: 2026-12-07 budget)
@pytest.mark.parametrize("kind", ["tf.data", "list", "iterable"])
def test_reiterable_pipelines_equal_the_array_path(kind, arrays_fit):
    x, y, w = data()
    source = {
        "tf.data": lambda: _tf_data(x, y, w),
        "list": lambda: batches(x, y, w),
        "iterable": lambda: Reiterable(batches(x, y, w)),
    }[kind]()
    est = Estimator(gru(), "mse", "adam", epochs=2, **KW).fit(source)
    assert_same_fit(est, arrays_fit)
    np.testing.assert_allclose(est.predict(source), arrays_fit.predict(x), rtol=0, atol=1e-6)


@pytest.mark.tf_in_full
@pytest.mark.backend
def test_endless_generator_with_steps_per_epoch_equals_the_array_path(arrays_fit):
    """An endless generator cycling over the minibatches, 3 steps per epoch (the iterator
    runs on across epochs, as model.fit's); a one-epoch generator and an iterator too."""
    x, y, w = data()
    endless = (b for b in itertools.cycle(batches(x, y, w)))
    est = Estimator(gru(), "mse", "adam", epochs=2, steps_per_epoch=3, **KW).fit(endless)
    assert_same_fit(est, arrays_fit)
    assert est.get_params()["steps_per_epoch"] == 3
    assert clone(est).steps_per_epoch == 3 and not hasattr(clone(est), "model_")
    one = Estimator(gru(), "mse", "adam", epochs=1, **KW)
    ref = Estimator(gru(), "mse", "adam", epochs=1, **KW).fit(x, y, sample_weight=w)
    assert_same_fit(one.fit(b for b in batches(x, y, w)), ref)
    assert_same_fit(
        Estimator(gru(), "mse", "adam", epochs=1, **KW).fit(iter(batches(x, y, w))), ref
    )
    pred = one.predict((bx,) for bx, _, _ in batches(x, y, w))
    np.testing.assert_allclose(pred, ref.predict(x), rtol=0, atol=1e-6)


@pytest.mark.tf_in_full
def test_tf_data_repeated_with_steps_per_epoch_and_token_ids():
    """tf.data of token ids with sparse next-token labels (B, T), repeated forever."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.integers(1, 7, size=(16, 12)).astype("int32")
    y = np.roll(x, -1, 1)

    def lm():
        keras.utils.set_random_seed(0)
        return keras.Sequential(
            [
                keras.Input((None,), dtype="int32"),
                keras.layers.Embedding(7, 3),
                keras.layers.LSTM(4, return_sequences=True),
                keras.layers.Dense(7),
            ]
        )

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    kw = dict(epochs=2, batch_size=8, seq_len=5, shuffle=False, verbose=0)
    ref = Estimator(lm(), loss, "adam", **kw).fit(x, y)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
    est = Estimator(lm(), loss, "adam", steps_per_epoch=2, **kw).fit(ds)
    assert_same_fit(est, ref)


def test_pipeline_errors_are_named():
    x, y, w = data()
    est = Estimator(gru(), "mse", "adam", **KW)
    with pytest.raises(TypeError, match=r"`x` is a builtins.object.*tf.data.Dataset"):
        est.fit(object())
    with pytest.raises(TypeError, match=r"`x` is a builtins.object"):
        est.fit(object(), y)
    with pytest.raises(ValueError, match=r"y=None"):
        est.fit(_tf_data(x, y, w), y)
    with pytest.raises(ValueError, match=r"`steps_per_epoch`.*pipeline"):
        Estimator(gru(), steps_per_epoch=2, **KW).fit(x, y)
    with pytest.raises(ValueError, match=r"batch 0 of the dataset.*\(x, y\)"):
        est.fit(iter([(x[:4],)]))
    with pytest.raises(ValueError, match=r"empty"):
        est.fit(b for b in [])
    with pytest.raises(TypeError, match=r"`steps_per_epoch`"):
        Estimator(gru(), steps_per_epoch=1.5, **KW).fit(iter(batches(x, y, w)))
    assert not hasattr(est, "model_")
    # a batch larger than the first (the minibatch size) is refused by name, as it is read
    # (under MPI on every rank: tests/test_mpi.py)
    first, larger = (x[:3], y[:3]), (x[3:8], y[3:8])
    with pytest.raises(
        ValueError,
        match=r"batch 1 of the dataset has 5 series, more than the "
        r"first batch's 3; the first batch must be the largest",
    ):
        Estimator(gru(), "mse", "adam", **KW).fit([first, larger])


@pytest.mark.tf_in_full  # make test: tf.data on JAX; both on both in test-full (its 10 minutes)
@pytest.mark.parametrize("kind", [pytest.param("generator", marks=pytest.mark.slow), "tf.data"])
def test_validation_data_as_a_pipeline_equals_the_arrays(kind):
    """``validation_data`` as ``model.fit`` takes it: a finite dataset or generator of
    ``(x, y[, sample_weight])`` batches is read once and validates as the same arrays do, for
    the Estimator and the Classifier (whose labels it encodes)."""
    x, y, w = data()
    vx, vy, vw = data(n=13, seed=1)
    val = _tf_data(vx, vy, vw) if kind == "tf.data" else iter(batches(vx, vy, vw))
    a = Estimator(gru(), "mse", "adam", epochs=2, **KW).fit(x, y, validation_data=(vx, vy, vw))
    b = Estimator(gru(), "mse", "adam", epochs=2, **KW).fit(x, y, validation_data=val)
    assert "val_loss" in b.history_ and "val_mae" in b.history_
    assert_same_fit(a, b)


@pytest.mark.tf_in_full
def test_validation_data_pipeline_of_labels_for_the_classifier():
    from keraseq import Classifier

    x, _, _ = data()
    labels = np.array(["up", "down"])[(x[:, -1, 0] > 0).astype(int)]
    vx, _, _ = data(n=13, seed=1)
    vlabels = np.array(["up", "down"])[(vx[:, -1, 0] > 0).astype(int)]

    def model():
        keras.utils.set_random_seed(0)
        return keras.Sequential(
            [keras.Input((None, F)), keras.layers.GRU(4), keras.layers.Dense(2)]
        )

    kw = dict(KW, metrics=["accuracy"])
    a = Classifier(model(), epochs=2, **kw).fit(x, labels, validation_data=(vx, vlabels))
    gen = ((vx[k : k + 5], vlabels[k : k + 5]) for k in range(0, 13, 5))
    b = Classifier(model(), epochs=2, **kw).fit(x, labels, validation_data=gen)
    assert a.history_["val_loss"] == b.history_["val_loss"]


def test_validation_data_pipeline_with_unequal_batches_is_refused_by_name():
    x, y, w = data()
    gen = iter([(x[:4], y[:4]), (x[4:8, :5], y[4:8, :5])])
    est = Estimator(gru(), "mse", "adam", epochs=1, **KW)
    with pytest.raises(ValueError, match=r"`validation_data`: its batches must agree"):
        est.fit(x, y, validation_data=gen)
