"""Token ids and sparse labels out of the model's range: a clear ValueError naming the argument,
the value, the row and the step, before any step trains on them (issue 30). Without the
check TensorFlow's compiled gather clamps (or zeroes) an id and JAX's clamps it: a silent
wrong answer."""

import h5py
import keras
import numpy as np
import pytest

from keraseq import Estimator
from keraseq.text import generate

V, CLASSES = 12, 5


def token_model(out=CLASSES, mask_zero=False, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(V, 4, mask_zero=mask_zero, name="emb"),
            keras.layers.LSTM(6, return_sequences=True),
            keras.layers.Dense(out),
        ]
    )


def tokens(n=8, t=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(1, V, size=(n, t))
    y = rng.integers(0, CLASSES, size=(n, t))
    return x, y


SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def est(loss=SCCE, **kw):
    kw = dict(dict(epochs=1, batch_size=4, seq_len=4, verbose=0, random_state=0), **kw)
    return Estimator(token_model, loss, "adam", **kw)


def untouched(e):
    assert not hasattr(e, "model_")  # nothing fitted: raised before any step


@pytest.mark.parametrize("bad", [V, -1, 10 * V])
def test_token_id_outside_the_embedding_is_refused_before_any_step(bad):
    x, y = tokens()
    x[5, 7] = bad
    e = est()
    with pytest.raises(ValueError) as info:
        e.fit(x, y)
    assert str(info.value) == (
        f"`x` holds token id {bad} at row 5, step 7: the Embedding 'emb' that reads "
        f"it has input_dim={V}, so ids must lie in [0, {V})"
    )
    untouched(e)


@pytest.mark.parametrize(
    "loss",
    [
        SCCE,
        "sparse_categorical_crossentropy",
        keras.losses.sparse_categorical_crossentropy,
    ],
    ids=["instance", "name", "function"],
)
def test_label_outside_the_output_classes_is_refused(loss):
    x, y = tokens()
    y[6, 2] = CLASSES
    e = est(loss)
    with pytest.raises(ValueError, match=r"^`y` holds label 5 at row 6, step 2: output '") as info:
        e.fit(x, y)
    assert f"has {CLASSES} classes, so its loss (" in str(info.value)
    assert f"needs labels in [0, {CLASSES})" in str(info.value)
    untouched(e)


def test_per_series_labels_name_the_row_only():
    keras.utils.set_random_seed(0)
    model = lambda: keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(V, 4),
            keras.layers.LSTM(6),
            keras.layers.Dense(3),
        ]
    )
    x, _ = tokens()
    y = np.array([0, 1, 2, 0, 1, 2, 7, 0])
    with pytest.raises(ValueError, match=r"^`y` holds label 7 at row 6: output '.*' has 3 classes"):
        Estimator(model, SCCE, epochs=1, batch_size=4, seq_len=4, verbose=0).fit(x, y)


@pytest.mark.backend
@pytest.mark.slow  # make test-full, both backends (make test's 10 minutes, 2026-12-07)
def test_ignore_class_and_padding_past_lengths_are_allowed():
    x, y = tokens()
    y[0, 3] = -1  # ignore_class
    ignore = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)
    est(ignore).fit(x, y)
    # past a series' length: padding, never trained on (any value)
    lengths = np.full(8, 12)
    lengths[2] = 6
    x2, y2 = tokens()
    x2[2, 6:], y2[2, 6:] = -7, 99
    val = (x2, y2, None, lengths)
    e = est().fit(x2, y2, lengths=lengths, validation_data=val)
    # the same fit as with padding 0 (TensorFlow's gather would turn -7 and 99 into NaN)
    x0, y0 = x2.copy(), y2.copy()
    x0[2, 6:], y0[2, 6:] = 0, 0
    zero = est().fit(x0, y0, lengths=lengths, validation_data=(x0, y0, None, lengths))
    assert np.isfinite(e.history_["val_loss"]).all()
    assert e.history_ == zero.history_
    for a, b in zip(e.model_.get_weights(), zero.model_.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert x2[2, 6] == -7 and y2[2, 6] == 99  # the user's arrays untouched
    y2[2, 5] = 99  # ... but the last real step is checked
    with pytest.raises(ValueError, match="`y` holds label 99 at row 2, step 5"):
        est().fit(x2, y2, lengths=lengths)


def test_other_losses_and_float_targets_are_not_checked():
    x, _ = tokens()
    y = np.random.default_rng(0).normal(size=(8, 12, CLASSES)) * 100  # values, not labels
    e = est("mse").fit(x, y)
    assert np.isfinite(e.history_["loss"]).all()


def test_validation_data_multi_input_and_the_input_named():
    tok = keras.Input((None,), dtype="int32", name="tok")
    feat = keras.Input((None, 2), name="feat")
    emb = keras.layers.Embedding(V, 3, name="emb")(tok)
    h = keras.layers.GRU(4, return_sequences=True)(keras.layers.Concatenate()([feat, emb]))
    model = keras.Model([feat, tok], keras.layers.Dense(CLASSES, name="cls")(h))
    x, y = tokens()
    f = np.zeros((8, 12, 2), "float32")
    vx = x.copy()
    vx[1, 0] = V + 3
    e = Estimator(model, SCCE, epochs=1, batch_size=4, seq_len=4, verbose=0)
    with pytest.raises(ValueError) as info:
        e.fit({"feat": f, "tok": x}, y, validation_data=((f, vx), y))
    assert str(info.value).startswith(
        f"`validation_data x[1]` holds token id {V + 3} at row 1, step 0: the Embedding 'emb'"
    )


def test_hdf5_rows_are_checked_before_the_first_step(tmp_path):
    x, y = tokens(n=40)
    x[33, 11] = V
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"], f["y"] = x, y
    match = f"`x` holds token id {V} at row 33, step 11"
    with h5py.File(tmp_path / "d.h5", "r") as f, pytest.raises(ValueError, match=match):
        est().fit(f["x"], f["y"])


@pytest.mark.backend
def test_predict_score_and_generate_refuse_ids_outside_the_vocabulary(tmp_path):
    x, y = tokens()
    e = est().fit(x, y)
    bad = x.copy()
    bad[3, 4] = V
    with pytest.raises(ValueError, match=f"^`x` holds token id {V} at row 3, step 4: the Embed"):
        e.predict(bad)
    # a loaded model, not yet self-checked: the ids are checked before its layers run
    e.save(tmp_path / "e.keras")
    with pytest.raises(ValueError, match=f"^`x` holds token id {V} at row 3, step 4: the Embed"):
        Estimator.load(tmp_path / "e.keras").predict(bad)
    with pytest.raises(ValueError, match=f"^`prompt` holds token id {V} at row 0, step 2"):
        generate(e, [1, 2, V], length=3)
    with pytest.raises(ValueError, match="^`prompt` holds token id -1 at row 1, step 0"):
        generate(e, [[1, 2], [-1, 3]], length=3)
    assert generate(e, [1, 2, V - 1], length=3).shape == (3,)


@pytest.mark.backend
def test_a_pipeline_batch_is_checked_before_its_step():
    x, y = tokens(n=12)
    x[9, 1] = V  # in the third batch of four series
    batches = [(x[k : k + 4], y[k : k + 4]) for k in (0, 4, 8)]
    e = est()
    with pytest.raises(
        ValueError,
        match=f"^`x` holds token id {V} at row 1, step 1 of the dataset's batch 2: the Embed",
    ):
        e.fit(batches)
