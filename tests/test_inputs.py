"""Inputs as Keras reads them, decided from the model's input and output specs.

Token ids ``(N, T)`` into an integer ``Input((None,))`` + ``Embedding`` (``mask_zero`` read like
``Masking``), per-step sparse labels ``(N, T)`` next to per-series targets, per-step inputs of
any shape ``(N, T, *step_shape)`` (ConvLSTM1D/2D, their state carried across windows), and
the same through tuples, dicts, HDF5/memmap and ragged lists. The references are Keras's:
``model.predict``/``evaluate``/``fit`` on the whole sequence, and for windowed training a
stateful Keras model trained window by window with ``train_on_batch``.
"""

from __future__ import annotations

import warnings

import h5py
import keras
import numpy as np
import pytest
from conftest import split_between_backends, stateful_reference

from keraseq import Classifier, Estimator

V = 9  # vocabulary of the token-id cases
SPARSE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def token_model(
    mask_zero=True,
    per_series=False,
    seed=0,
    batch=None,
    stateful=False,
    cell="LSTM",
    activation=None,
    outputs=V,
):
    keras.utils.set_random_seed(seed)
    layer = getattr(keras.layers, cell)
    return keras.Sequential(
        [
            keras.Input((None,), dtype="int32", batch_size=batch),
            keras.layers.Embedding(V, 4, mask_zero=mask_zero),
            layer(6, return_sequences=not per_series, stateful=stateful),
            keras.layers.Dense(outputs, activation=activation),
        ]
    )


def token_data(n=10, t=13, seed=0, pad=True):
    """Token ids in [1, V) padded with 0 after a random length; next-token labels."""
    rng = np.random.default_rng(seed)
    x = rng.integers(1, V, size=(n, t)).astype("int32")
    lengths = np.full(n, t)
    if pad:
        lengths = rng.integers(2, t + 1, n)
        lengths[0] = t
        x[np.arange(t)[None, :] >= lengths[:, None]] = 0
    y = np.roll(x, -1, axis=1)
    y[:, -1] = 1
    return x, y, lengths


def frozen(model, seq_len, batch_size, loss=SPARSE, **kw):
    """An estimator whose fit changes nothing (SGD with rate 0)."""
    return Estimator(
        model,
        loss,
        keras.optimizers.SGD(0.0),
        epochs=1,
        batch_size=batch_size,
        seq_len=seq_len,
        shuffle=False,
        verbose=0,
        **kw,
    )


def twin(model):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def assert_weights_close(a, b, atol=1e-5):
    for u, v in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(u, v, rtol=0, atol=atol)


# ------------------------------------------------------------------------------ token ids
@pytest.mark.parametrize(
    "mask_zero,per_series",
    split_between_backends(  # each backend: a masked and an unmasked case, per step and series
        {
            "mask_zero-per_step": (True, False),
            "mask_zero-per_series": (True, True),
            "no_mask-per_series": (False, True),
            "no_mask-per_step": (False, False),
        },
        full=("mask_zero-per_step",),  # make test: 10 minutes (2026-12-07)
    ),
)
def test_token_ids_windows_equal_the_whole_sequence(mask_zero, per_series):
    """predict over windows == model.predict on the whole padded sequence; the loss fit
    reports == model.evaluate (padding skipped when masked); streaming continues."""
    x, y, lengths = token_data(pad=mask_zero)
    if per_series:
        y = x[np.arange(len(x)), lengths - 1] % 3  # (N,) integer labels of each series
    model = token_model(mask_zero, per_series)
    ref = model.predict(x, verbose=0)
    keras_model = twin(model)
    keras_model.compile(loss=SPARSE)
    ref_loss = keras_model.evaluate(x, y, batch_size=4, verbose=0)
    for seq_len in (4,):  # windows of 4, 4, 4 and a short last one of 1
        est = frozen(model, seq_len, 4).fit(x, y)
        np.testing.assert_allclose(est.predict(x), ref, rtol=0, atol=1e-5)
        assert est.history_["loss"][0] == pytest.approx(ref_loss, rel=1e-5)
    first = est.predict(x[:, :5])
    second = est.predict(x[:, 5:], reset=False)
    joined = second if per_series else np.concatenate([first, second], 1)
    np.testing.assert_allclose(joined, ref, rtol=0, atol=1e-5)


def sgd():
    """An optimizer linear in the gradient. (With Adam, Keras's model.fit on TensorFlow
    applies an Embedding's gradient as IndexedSlices and squares each slice before the
    duplicates of a token are summed: not the Adam of the dense gradient that keraseq
    and Keras on JAX apply.)"""
    return keras.optimizers.SGD(0.5, momentum=0.9)


@pytest.mark.parametrize("from_logits", split_between_backends({"logits": True, "softmax": False}))
def test_token_ids_whole_sequence_fit_equals_keras_fit(from_logits):
    """seq_len=None, Embedding(mask_zero=True), labels (N, T): model.fit's updates."""
    x, y, _ = token_data(n=12)
    model = token_model(activation=None if from_logits else "softmax")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
    reference = twin(model)
    reference.compile(loss=loss, optimizer=sgd())
    reference.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    est = Estimator(model, loss, sgd(), epochs=2, batch_size=4, shuffle=False, verbose=0).fit(x, y)
    assert_weights_close(est.model_, reference)


# The stateful references run on TensorFlow only: Keras's JAX trainer does not carry a
# stateful RNN's state from one train_on_batch call to the next as its TensorFlow trainer does
# (a plain float LSTM differs by 5e-2 there too). keraseq's windows on JAX are checked against
# a hand-written JAX reference (test_tbptt.py) and against TensorFlow (test_backends.py, token
# ids included). make test-full (make test's 10 minutes; test_text.py's LM vs Keras's stateful loop
# stays in make test).
@pytest.mark.slow
def test_token_ids_windowed_fit_equals_keras_stateful_train_on_batch():
    """Truncated BPTT on token ids: Keras's stateful loop from the same weights."""
    x, y, _ = token_data(n=8, t=12, pad=False)
    model = token_model(mask_zero=False)
    ref = stateful_reference(
        lambda b: token_model(False, batch=b, stateful=True),
        x,
        y,
        4,
        5,
        sgd(),
        SPARSE,
        model.get_weights(),
    )
    est = Estimator(
        model, SPARSE, sgd(), epochs=1, batch_size=4, seq_len=5, shuffle=False, verbose=0
    ).fit(x, y)
    assert_weights_close(est.model_, ref)


@pytest.mark.tf_in_full
def test_labels_with_a_trailing_axis_and_ragged_token_lists_agree():
    """(N, T) labels == (N, T, 1) labels; a list of 1-D token arrays == the padded array with
    mask_zero (lengths inferred from the padding)."""
    x, y, lengths = token_data(n=8)
    kw = dict(epochs=1, batch_size=4, seq_len=4, shuffle=False, verbose=0, jit_compile=False)
    fits = [
        Estimator(token_model(), SPARSE, keras.optimizers.Adam(0.01), **kw).fit(x, yy)
        for yy in (y, y[..., None])
    ]
    xs = [x[i, : lengths[i]] for i in range(len(x))]
    ys = [y[i, : lengths[i]] for i in range(len(x))]
    fits.append(Estimator(token_model(), SPARSE, keras.optimizers.Adam(0.01), **kw).fit(xs, ys))
    for other in fits[1:]:
        assert_weights_close(other.model_, fits[0].model_, atol=1e-6)
    preds = fits[2].predict(xs)
    assert [p.shape for p in preds] == [(int(n), V) for n in lengths]
    full = fits[0].predict(x)
    for k, p in enumerate(preds):
        np.testing.assert_allclose(p, full[k, : lengths[k]], rtol=0, atol=1e-6)


@pytest.mark.tf_in_full
def test_token_ids_from_hdf5_and_memmap_equal_memory(tmp_path):
    x, y, _ = token_data(n=8)
    kw = dict(
        epochs=1,
        batch_size=3,
        seq_len=4,
        shuffle=True,
        random_state=0,
        verbose=0,
        jit_compile=False,
    )
    mem = Estimator(token_model(), SPARSE, "adam", **kw).fit(x, y)
    mx = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", x.dtype, x.shape)
    my = np.lib.format.open_memmap(tmp_path / "y.npy", "w+", y.dtype, y.shape)
    mx[...], my[...] = x, y
    mm = Estimator(token_model(), SPARSE, "adam", **kw).fit(mx, my)
    with h5py.File(tmp_path / "d.h5", "w") as fh:
        fh["x"], fh["y"] = x, y
        h5 = Estimator(token_model(), SPARSE, "adam", **kw).fit(fh["x"], fh["y"])
        pred = h5.predict(fh["x"])
    for other in (mm, h5):
        assert_weights_close(other.model_, mem.model_, atol=1e-6)
    np.testing.assert_allclose(pred, mem.predict(x), rtol=0, atol=1e-6)


@pytest.mark.tf_in_full
def test_dict_of_token_ids_and_features_and_a_classifier():
    """Two named inputs (token ids and float features) as a dict; a Classifier of the series
    labels on token ids."""
    x, _, lengths = token_data(n=12)
    feats = np.random.default_rng(1).normal(size=x.shape + (2,)).astype("float32")
    keras.utils.set_random_seed(0)
    ids = keras.Input((None,), dtype="int32", name="ids")
    num = keras.Input((None, 2), name="num")
    h = keras.layers.Concatenate()([keras.layers.Embedding(V, 3)(ids), num])
    out = keras.layers.Dense(1)(keras.layers.GRU(4, return_sequences=True)(h))
    model = keras.Model([ids, num], out)
    y = feats[..., :1].cumsum(1)
    est = Estimator(
        model, "mse", "adam", epochs=1, batch_size=4, seq_len=5, verbose=0, jit_compile=False
    )
    est.fit({"num": feats, "ids": x}, y)
    np.testing.assert_allclose(
        est.predict({"ids": x, "num": feats}),
        est.model_.predict([x, feats], verbose=0),
        rtol=0,
        atol=1e-5,
    )
    labels = np.where(x[:, 0] > V // 2, "high", "low")
    clf = Classifier(
        token_model(per_series=True, outputs=2),
        loss=SPARSE,
        epochs=2,
        batch_size=4,
        seq_len=4,
        verbose=0,
        jit_compile=False,
    ).fit(x, labels)
    predicted = clf.predict(x)
    assert set(predicted) <= {"high", "low"}
    assert clf.score(x, labels) == pytest.approx(np.mean(predicted == labels))


def test_model_built_on_a_dict_is_called_with_a_dict():
    """A model whose inputs are a dict (keys not in Keras's sorted order) is trained and
    predicted through with a dict, as Keras's ``fit`` does: no "structure of `inputs`
    doesn't match" warning, the predictions Keras's."""
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    b, a = keras.Input((None, 3), name="b"), keras.Input((None, 2), name="a")
    h = keras.layers.GRU(4, return_sequences=True)(keras.layers.Concatenate()([a, b]))
    model = keras.Model({"b": b, "a": a}, keras.layers.Dense(1)(h))
    x = {"a": rng.normal(size=(6, 8, 2)).astype("float32")}
    x["b"] = rng.normal(size=(6, 8, 3)).astype("float32")
    est = Estimator(model, epochs=1, batch_size=3, seq_len=4, verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est.fit(x, x["a"][..., :1])
        pred = est.predict(x)
    assert not [w for w in caught if "match the expected structure" in str(w.message)]
    np.testing.assert_allclose(pred, est.model_.predict(x, verbose=0), rtol=0, atol=1e-5)


# --------------------------------------------------------------- per-step inputs of any shape
def conv1d_model(per_series=False, batch=None, stateful=False, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((None, 5, 2), batch_size=batch),
            keras.layers.ConvLSTM1D(
                3, 3, padding="same", return_sequences=not per_series, stateful=stateful
            ),
        ]
    )


def conv2d_model(per_series=False, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((None, 4, 4, 1)),
            keras.layers.ConvLSTM2D(2, 3, padding="same", return_sequences=not per_series),
        ]
    )


@pytest.mark.parametrize(
    "make,step,per_series",
    split_between_backends(  # each backend: a 1-D and a 2-D case, per step and per series
        {
            "ConvLSTM1D-per_step": (conv1d_model, (5, 2), False),
            "ConvLSTM1D-per_series": (conv1d_model, (5, 2), True),
            "ConvLSTM2D-per_series": (conv2d_model, (4, 4, 1), True),
            "ConvLSTM2D-per_step": (conv2d_model, (4, 4, 1), False),
        },
        full=("ConvLSTM1D-per_step",),  # make test: 10 minutes (2026-12-07)
    ),
)
def test_convlstm_windows_equal_the_whole_sequence(make, step, per_series):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 9) + step).astype("float32")
    model = make(per_series)
    ref = model.predict(x, verbose=0)
    y = rng.normal(size=ref.shape).astype("float32")
    keras_model = twin(model)
    keras_model.compile(loss="mse")
    ref_loss = keras_model.evaluate(x, y, batch_size=3, verbose=0)
    for seq_len in (4,):  # windows of 4, 4 and a short last one of 1
        est = frozen(model, seq_len, 3, loss="mse").fit(x, y)
        np.testing.assert_allclose(est.predict(x), ref, rtol=0, atol=1e-5)
        assert est.history_["loss"][0] == pytest.approx(ref_loss, rel=1e-5)
    assert np.isfinite(est.score(x, y))


@pytest.mark.slow  # make test-full (make test keeps ConvLSTM's windowed vs whole, 2026-12-07)
def test_convlstm1d_windowed_fit_equals_keras_stateful_train_on_batch():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 8, 5, 2)).astype("float32")
    y = rng.normal(size=(6, 8, 5, 3)).astype("float32")
    model = conv1d_model()
    ref = stateful_reference(
        lambda b: conv1d_model(batch=b, stateful=True),
        x,
        y,
        3,
        3,
        keras.optimizers.Adam(0.01),
        "mse",
        model.get_weights(),
    )
    est = Estimator(
        model,
        "mse",
        keras.optimizers.Adam(0.01),
        epochs=1,
        batch_size=3,
        seq_len=3,
        shuffle=False,
        verbose=0,
    ).fit(x, y)
    assert_weights_close(est.model_, ref)


# ------------------------------------------------------------------------------------ errors
def test_float_x_for_an_integer_input_is_named():
    x, y, _ = token_data()
    est = frozen(token_model(), 4, 4)
    with pytest.raises(TypeError, match=r"`x` has dtype float32.*integers.*\(N, T\) integer"):
        est.fit(x.astype("float32"), y)
    assert not hasattr(est, "model_")


def test_wrong_step_shape_is_named():
    x = np.zeros((4, 6, 4, 3, 1), "float32")
    est = frozen(conv2d_model(), 3, 2, loss="mse")
    with pytest.raises(ValueError, match=r"`x` has step shape \(4, 3, 1\).*\(4, 4, 1\)"):
        est.fit(x, np.zeros((4, 6, 4, 4, 2), "float32"))
    with pytest.raises(
        ValueError,
        match=r"`x` has shape \(4, 6, 16\) \(rank 3\); expected "
        r"\(N, T, 4, 4, 1\)",
    ):
        est.fit(np.zeros((4, 6, 16), "float32"), np.zeros((4, 6, 4, 4, 2), "float32"))


def test_targets_that_fit_no_output_are_named():
    x, y, _ = token_data()
    est = frozen(token_model(), 4, 4)
    with pytest.raises(ValueError, match=r"`y` has T=12 time steps but `x` has T=13"):
        est.fit(x, y[:, :12, None])
    with pytest.raises(
        ValueError,
        match=r"`y` has per-series targets \(10, 9\).*"
        r"\(10, 13, 9\).*\(10, 13\)",
    ):
        est.fit(x, np.zeros((10, 9), "float32"))
    with pytest.raises(ValueError, match=r"`y` has shape \(10,\) \(rank 1\)"):
        est.fit(x, y[:, 0])
    est = frozen(token_model(per_series=True), 4, 4)
    with pytest.raises(ValueError, match=r"`y` has targets per time step.*return_sequences"):
        est.fit(x, np.zeros((10, 13, 9), "float32"))
    est = frozen(token_model(per_series=True), 4, 4).fit(x, y[:, 0])
    with pytest.raises(ValueError, match=r"`y`.*integer labels.*Classifier"):
        est.score(x, y[:, 0])
