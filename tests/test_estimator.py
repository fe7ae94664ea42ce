"""The Estimator as a user drives it: fit/predict/save on real (tiny) TensorFlow models.

Every test checks a number a user relies on (a loss, equal weights, equal predictions, a shape),
against an independent computation where one exists: the model run on the whole sequence, a fit
on a subset of the data, a manual NumPy evaluation, a reloaded file.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import pickle
import types
import warnings

import h5py
import keras
import numpy as np
import pytest
from conftest import lstm_model, split_between_backends
from keras import ops

from keraseq import Estimator, NonFiniteLossError, seqloss


# ------------------------------------------------------------------------------------ helpers
def make_data(n=24, t=25, f=3, seed=0):
    """x ~ N(0, 1); y = running sum of the first feature (needs memory), scaled."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, t, f)).astype("float32")
    y = (np.cumsum(x[..., :1], axis=1) / 5.0).astype("float32")
    return x, y


def assert_weights_close(a, b, atol):
    a, b = a.get_weights(), b.get_weights()
    assert len(a) == len(b)
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=0, atol=atol)


def max_weight_diff(a, b):
    return max(float(np.max(np.abs(u - v))) for u, v in zip(a.get_weights(), b.get_weights()))


def full_run(model, x):
    """The model on the whole sequence at once (no windows): what carried windows must equal."""
    out = model(x if not isinstance(x, tuple) else list(x), training=False)
    if isinstance(out, (list, tuple)):
        return tuple(np.asarray(o) for o in out)
    return np.asarray(out)


class BatchCounter(keras.callbacks.Callback):
    """Minibatches per epoch, as Keras callbacks see them."""

    def __init__(self):
        super().__init__()
        self.per_epoch = []

    def on_epoch_begin(self, epoch, logs=None):
        self.per_epoch.append(0)

    def on_train_batch_end(self, batch, logs=None):
        self.per_epoch[-1] += 1


def small(model, **kw):
    """An estimator with quiet, deterministic, fast-compiling defaults."""
    params = dict(
        epochs=1,
        batch_size=8,
        seq_len=10,
        shuffle=False,
        random_state=0,
        verbose=0,
        jit_compile=False,
    )
    params.update(kw)
    loss = params.pop("loss", "mse")
    opt = params.pop("optimizer", None) or keras.optimizers.Adam(0.01)
    return Estimator(model, loss, opt, **params)


def multi_io_model(seed=0):
    keras.utils.set_random_seed(seed)
    a = keras.Input((None, 2), name="a")
    b = keras.Input((None, 3), name="b")
    h = keras.layers.Concatenate()([a, b])
    h = keras.layers.LSTM(6, return_sequences=True)(h)
    level = keras.layers.Dense(1, name="level")(h)
    slope = keras.layers.Dense(2, name="slope")(h)
    return keras.Model([a, b], [level, slope])


def multi_io_data(n=20, t=22, seed=1):
    rng = np.random.default_rng(seed)
    xa = rng.normal(size=(n, t, 2)).astype("float32")
    xb = rng.normal(size=(n, t, 3)).astype("float32")
    y1 = (np.cumsum(xa[..., :1] + xb[..., :1], axis=1) / 5.0).astype("float32")
    y2 = np.concatenate([2.0 * xa[..., 1:2], xb[..., 1:2] - xb[..., 2:3]], -1).astype("float32")
    return (xa, xb), (y1, y2)


# --------------------------------------------------------------------------- shared estimators
@pytest.fixture(scope="module")
def single():
    """A fitted one-input, one-output LSTM estimator (T = 25 with seq_len 10: a short window)."""
    x, y = make_data()
    est = small(lstm_model(), epochs=3).fit(x, y)
    return est, x, y


@pytest.fixture(scope="module")
def multi():
    """A fitted two-input, two-output estimator (loss given as a list)."""
    (xa, xb), (y1, y2) = multi_io_data()
    est = small(
        multi_io_model(),
        loss=["mse", "mae"],
        epochs=4,
        batch_size=8,
        seq_len=8,
        optimizer=keras.optimizers.SGD(0.05),
    ).fit((xa, xb), (y1, y2))
    return est, (xa, xb), (y1, y2)


# ------------------------------------------------------------------------------- state carry
@pytest.mark.tf_in_full  # make test: on JAX; make test-full: on both
def test_state_carry_beats_reset_windows():
    """y_t = running sum of x since the series start (memory of T >> seq_len). With keraseq's
    carry the LSTM can integrate across windows; when every window starts from a zero state
    (the same data cut into seq_len pieces treated as separate series) it cannot know the
    offset accumulated before the window, whatever it learns. Both runs make the same number
    of updates, each on batch_size x seq_len values, with the same optimizer."""
    n, t, s, b = 32, 30, 5, 8
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, t, 1)).astype("float32")
    y = (np.cumsum(x, axis=1) / np.sqrt(t)).astype("float32")

    def fit(xx, yy):
        return Estimator(
            lstm_model(features=1, units=8),
            "mse",
            keras.optimizers.Adam(0.01),
            epochs=30,
            batch_size=b,
            seq_len=s,
            shuffle=True,
            random_state=0,
            verbose=0,
        ).fit(xx, yy)  # default jit_compile: the XLA path

    carry = fit(x, y)
    # reset emulation: N*T/S series of length S; batch_size b -> T/S times more minibatches
    # of one window each = the same number of updates per epoch as the carried run.
    reset = fit(x.reshape(n * t // s, s, 1), y.reshape(n * t // s, s, 1))

    assert (n // b) * (t // s) == (n * t // s) // b  # updates per epoch: 24 and 24
    carry_loss, reset_loss = carry.history_["loss"][-1], reset.history_["loss"][-1]
    # the reset model cannot beat the variance of the offset it never sees
    floor = np.mean(
        [np.mean(np.cumsum(x, axis=1)[:, k * s - 1] ** 2) / t if k else 0.0 for k in range(t // s)]
    )
    assert reset_loss > 0.8 * floor
    assert carry_loss < 0.5 * reset_loss, (carry_loss, reset_loss)
    # and the carried predictions on the whole series are good as well
    mse = float(np.mean((carry.predict(x) - y) ** 2))
    assert mse < 0.5 * reset_loss


# ------------------------------------------------------------------ multi-input / multi-output
def test_multi_input_multi_output_predict_shapes(multi):
    est, (xa, xb), (y1, y2) = multi
    pred = est.predict((xa, xb))
    assert isinstance(pred, tuple) and len(pred) == 2
    assert pred[0].shape == y1.shape == (20, 22, 1)
    assert pred[1].shape == y2.shape == (20, 22, 2)
    # carried windows equal the whole sequence in one call
    full = full_run(est.model_, (xa, xb))
    for p, f in zip(pred, full):
        np.testing.assert_allclose(p, f, rtol=0, atol=1e-5)
    assert est.history_["loss"][-1] < est.history_["loss"][0]
    assert est.n_outputs_ == 2


@pytest.mark.tf_in_full  # make test: on JAX (2026-12-07: make test's 10 minutes)
def test_multi_output_loss_dict_equals_list(multi):
    est_list, x, y = multi
    est_dict = small(
        multi_io_model(),
        loss={"level": "mse", "slope": "mae"},
        epochs=4,
        batch_size=8,
        seq_len=8,
        optimizer=keras.optimizers.SGD(0.05),
    ).fit(x, y)
    assert_weights_close(est_dict.model_, est_list.model_, atol=1e-6)
    # the dict is per output: swapping the losses trains something else
    est_swap = small(
        multi_io_model(),
        loss={"level": "mae", "slope": "mse"},
        epochs=4,
        batch_size=8,
        seq_len=8,
        optimizer=keras.optimizers.SGD(0.05),
    ).fit(x, y)
    assert max_weight_diff(est_swap.model_, est_list.model_) > 1e-4


# ------------------------------------------------------------------------------ sample_weight
@pytest.mark.parametrize(
    "per_step", split_between_backends({"weights_N": False, "weights_NT": True})
)
def test_zero_sample_weight_equals_fitting_the_rest(per_step):
    """Keras's convention: weighted sum / number of elements. Weight 2 on the first half and 0
    on the second half is then exactly the mean loss of the first half alone."""
    x, y = make_data(n=20, t=20)
    w = np.r_[np.full(10, 2.0), np.zeros(10)].astype("float32")
    if per_step:
        w = np.repeat(w[:, None], x.shape[1], axis=1)
    opt = lambda: keras.optimizers.SGD(0.1)
    weighted = small(lstm_model(), optimizer=opt(), epochs=2, batch_size=32).fit(
        x, y, sample_weight=w
    )
    half = small(lstm_model(), optimizer=opt(), epochs=2, batch_size=32).fit(x[:10], y[:10])
    assert_weights_close(weighted.model_, half.model_, atol=1e-6)
    plain = small(lstm_model(), optimizer=opt(), epochs=2, batch_size=32).fit(x, y)
    assert max_weight_diff(weighted.model_, plain.model_) > 1e-4


def test_sample_weight_changes_training():
    x, y = make_data(n=20, t=20)
    w = np.random.default_rng(3).uniform(0.1, 3.0, size=20).astype("float32")
    weighted = small(
        lstm_model(), optimizer=keras.optimizers.SGD(0.1), epochs=2, batch_size=32
    ).fit(x, y, sample_weight=w)
    plain = small(lstm_model(), optimizer=keras.optimizers.SGD(0.1), epochs=2, batch_size=32).fit(
        x, y
    )
    assert max_weight_diff(weighted.model_, plain.model_) > 1e-4


# ---------------------------------------------------------------------- per-series targets
@pytest.mark.backend
def test_per_series_targets():
    x, _ = make_data(n=32, t=25)
    y = np.stack([x[..., 0].sum(1) / 5.0, x[..., 1].mean(1) * 3.0], axis=-1).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, 3)), keras.layers.LSTM(8), keras.layers.Dense(2)])
    est = small(model, epochs=15, batch_size=8, seq_len=10).fit(x, y)
    pred = est.predict(x)
    assert pred.shape == (32, 2)
    loss = est.history_["loss"]
    assert loss[-1] < 0.7 * loss[0], loss
    # the last window's output, with the state carried over all windows = the full run
    np.testing.assert_allclose(pred, full_run(est.model_, x), rtol=0, atol=1e-5)
    # score: R^2 per output, averaged (sklearn's uniform average)
    r2 = 1 - ((y - pred) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)
    np.testing.assert_allclose(est.score(x, y), r2.mean(), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------- partial minibatch
@pytest.mark.tf_in_full  # make test: on JAX (its 10 minutes, 2026-12-07)
def test_partial_last_minibatch_is_trained():
    x, y = make_data(n=25, t=20)
    counter = BatchCounter()
    sgd = lambda: keras.optimizers.SGD(0.1)
    est = small(lstm_model(), optimizer=sgd(), epochs=2, batch_size=10).fit(
        x, y, callbacks=[counter]
    )
    assert counter.per_epoch == [3, 3]
    # series 24 (alone with 20..23 in the short last minibatch) affects the fitted weights
    x2 = x.copy()
    x2[24] = -x2[24] + 1.0
    est2 = small(lstm_model(), optimizer=sgd(), epochs=2, batch_size=10).fit(x2, y)
    assert max_weight_diff(est.model_, est2.model_) > 1e-5
    # and the short minibatch is the mean over its 5 real series (padding is masked out):
    # one epoch on all 25 == one epoch on the first 20, then one minibatch on the last 5
    once = small(lstm_model(), optimizer=sgd(), epochs=1, batch_size=10).fit(x, y)
    split = (
        small(lstm_model(), optimizer=sgd(), epochs=1, batch_size=10, warm_start=True)
        .fit(x[:20], y[:20])
        .fit(x[20:], y[20:])
    )
    assert_weights_close(once.model_, split.model_, atol=1e-6)


# ---------------------------------------------------------------------------------- callbacks
def test_early_stopping_stops_before_epochs():
    x, y = make_data(n=16, t=20)
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=1, min_delta=1e3)
    est = small(lstm_model(), epochs=10).fit(x, y, callbacks=[stop])
    assert len(est.history_["loss"]) == 2 < 10
    assert est.n_epochs_ == 2


@pytest.mark.tf_in_full
def test_checkpoint_csvlogger_lr_scheduler_history(tmp_path):
    x, y = make_data(n=16, t=20)
    ckpt = tmp_path / "ck.keras"
    log = tmp_path / "log.csv"
    # lr 0.05 in the first epoch, 0 afterwards: the later epochs must not move the weights
    schedule = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.05 if epoch == 0 else 0.0)
    callbacks = [
        keras.callbacks.ModelCheckpoint(str(ckpt)),
        keras.callbacks.CSVLogger(str(log)),
        schedule,
        keras.callbacks.TerminateOnNaN(),
    ]
    est = small(lstm_model(), optimizer=keras.optimizers.SGD(0.5), epochs=7, jit_compile=True).fit(
        x, y, callbacks=callbacks, epochs=3
    )  # fit's epochs wins
    # history_: a plain dict of lists of floats, one per epoch
    assert type(est.history_) is dict
    assert len(est.history_["loss"]) == 3 and est.n_epochs_ == 3
    for key, values in est.history_.items():
        assert type(values) is list and all(type(v) is float for v in values), key
    # the scheduler drives the optimizer of the compiled step
    assert float(ops.convert_to_numpy(est.optimizer_.learning_rate)) == 0.0
    one = small(lstm_model(), optimizer=keras.optimizers.SGD(0.05), epochs=1, jit_compile=True).fit(
        x, y
    )
    assert_weights_close(est.model_, one.model_, atol=1e-6)
    assert max_weight_diff(est.model_, lstm_model()) > 1e-4
    # CSVLogger: a header and one row per epoch
    with open(log) as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    np.testing.assert_allclose([float(r["loss"]) for r in rows], est.history_["loss"], rtol=1e-6)
    # ModelCheckpoint: a .keras file that plain Keras loads and that predicts like model_
    assert ckpt.exists()
    loaded = keras.saving.load_model(str(ckpt))
    np.testing.assert_allclose(full_run(loaded, x), full_run(est.model_, x), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------- validation
@pytest.mark.backend
def test_validation_loss_and_metrics_equal_manual_evaluation():
    x, y = make_data(n=20, t=23)
    xv, yv = make_data(n=13, t=23, seed=7)
    est = small(lstm_model(), epochs=2, seq_len=10, metrics=["mae"], predict_batch_size=5).fit(
        x, y, validation_data=(xv, yv)
    )
    assert set(est.history_) >= {"loss", "mae", "val_loss", "val_mae"}
    for key in ("loss", "mae", "val_loss", "val_mae"):
        assert len(est.history_[key]) == 2
    pred = est.predict(xv)
    np.testing.assert_allclose(
        est.history_["val_loss"][-1], np.mean((pred - yv) ** 2), rtol=0, atol=1e-5
    )
    np.testing.assert_allclose(
        est.history_["val_mae"][-1], np.mean(np.abs(pred - yv)), rtol=0, atol=1e-5
    )


# -------------------------------------------------------------------------------- predict out
def test_predict_into_ndarray_memmap_h5py(single, tmp_path):
    est, x, _ = single
    expected = est.predict(x)
    assert expected.shape == (24, 25, 1) and expected.dtype == np.float32

    arr = np.full(expected.shape, np.nan, np.float32)
    assert est.predict(x, out=arr) is arr
    np.testing.assert_allclose(arr, expected, rtol=0, atol=1e-6)

    mm = np.memmap(tmp_path / "out.dat", dtype="float32", mode="w+", shape=expected.shape)
    assert est.predict(x, out=mm) is mm
    np.testing.assert_allclose(np.asarray(mm), expected, rtol=0, atol=1e-6)

    with h5py.File(tmp_path / "out.h5", "w") as fh:
        ds = fh.create_dataset("yhat", shape=expected.shape, dtype="float32")
        assert est.predict(x, out=ds) is ds
        np.testing.assert_allclose(ds[...], expected, rtol=0, atol=1e-6)


def test_predict_reads_memmap_and_h5py_inputs(single, tmp_path):
    est, x, _ = single
    expected = est.predict(x)
    mm = np.memmap(tmp_path / "x.dat", dtype="float32", mode="w+", shape=x.shape)
    mm[:] = x
    np.testing.assert_allclose(est.predict(mm), expected, rtol=0, atol=1e-6)
    with h5py.File(tmp_path / "x.h5", "w") as fh:
        ds = fh.create_dataset("x", data=x)
        np.testing.assert_allclose(est.predict(ds), expected, rtol=0, atol=1e-6)


def test_predict_into_tuple_of_outs(multi, tmp_path):
    est, x, _ = multi
    expected = est.predict(x)
    with h5py.File(tmp_path / "out.h5", "w") as fh:
        outs = (
            np.zeros(expected[0].shape, np.float32),
            fh.create_dataset("slope", shape=expected[1].shape, dtype="float64"),
        )
        got = est.predict(x, out=outs)
        assert got is outs or (isinstance(got, tuple) and all(a is b for a, b in zip(got, outs)))
        np.testing.assert_allclose(outs[0], expected[0], rtol=0, atol=1e-6)
        np.testing.assert_allclose(outs[1][...], expected[1], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------- streaming
@pytest.mark.parametrize(
    "t1", split_between_backends({"t1_multiple_of_seq_len": 10, "t1_not_multiple": 13})
)
def test_streaming_predict_equals_whole_predict(single, t1):
    est, x, _ = single
    whole = est.predict(x)
    np.testing.assert_allclose(whole, full_run(est.model_, x), rtol=0, atol=1e-5)
    first = est.predict(x[:, :t1])
    second = est.predict(x[:, t1:], reset=False)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole, rtol=0, atol=1e-5)
    # a third chunk continues from the second one
    a = est.predict(x[:, :7])
    b = est.predict(x[:, 7 : t1 + 5], reset=False)
    c = est.predict(x[:, t1 + 5 :], reset=False)
    np.testing.assert_allclose(np.concatenate([a, b, c], axis=1), whole, rtol=0, atol=1e-5)
    # reset=True (the default) starts over
    np.testing.assert_allclose(
        est.predict(x[:, t1:]), full_run(est.model_, x[:, t1:]), rtol=0, atol=1e-5
    )


def test_predict_batch_size_does_not_matter(single):
    est, x, _ = single
    expected = est.predict(x)
    for batch_size in (5, 7, 100):
        np.testing.assert_allclose(
            est.predict(x, batch_size=batch_size), expected, rtol=0, atol=1e-6
        )
    # the hyper-parameter predict_batch_size as well (training used batch_size 8)
    est.set_params(predict_batch_size=3)
    try:
        np.testing.assert_allclose(est.predict(x), expected, rtol=0, atol=1e-6)
    finally:
        est.set_params(predict_batch_size=None)


@pytest.mark.tf_in_full
# ------------------------------------------------------------------------------- save / load
@pytest.mark.backend
def test_save_load_roundtrip_and_continue_fit(tmp_path):
    x, y = make_data(n=16, t=20)
    est = small(
        lstm_model(), epochs=3, batch_size=8, seq_len=10, predict_batch_size=7, warm_start=True
    ).fit(x, y)
    path = tmp_path / "e.keras"
    est.save(path)

    loaded = Estimator.load(path)
    np.testing.assert_allclose(loaded.predict(x), est.predict(x), rtol=0, atol=1e-6)
    params, got = est.get_params(), loaded.get_params()
    assert set(got) == set(params)
    for key, value in params.items():
        if key in ("model", "optimizer"):
            continue
        assert got[key] == value, key
    assert loaded.history_ == est.history_

    plain = keras.saving.load_model(str(path))  # no keraseq objects needed
    np.testing.assert_allclose(full_run(plain, x), full_run(est.model_, x), rtol=0, atol=1e-6)

    # its optimizer parameter is the model's optimizer's config without its state: a pickle
    # of the loaded estimator is quiet (Keras warned on unpickling the state carried twice)
    assert loaded.optimizer is not loaded.model_.optimizer and not loaded.optimizer.built
    assert loaded.optimizer.get_config() == loaded.model_.optimizer.get_config()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # what Keras's warning is
        again = pickle.loads(pickle.dumps(loaded))
    np.testing.assert_allclose(again.predict(x), est.predict(x), rtol=0, atol=1e-6)

    # the loaded estimator continues training exactly like the original (optimizer state kept)
    loaded.fit(x, y, epochs=1)
    est.fit(x, y, epochs=1)
    assert_weights_close(loaded.model_, est.model_, atol=1e-5)
    assert len(loaded.history_["loss"]) == 4


@pytest.mark.tf_in_full
def test_save_load_keeps_metrics(tmp_path):
    x, y = make_data(n=16, t=20)
    est = small(lstm_model(), epochs=1, metrics=["mae"]).fit(x, y)
    est.save(tmp_path / "m.keras")
    loaded = Estimator.load(tmp_path / "m.keras")
    assert loaded.get_params()["metrics"] == est.get_params()["metrics"] == ["mae"]
    loaded.fit(x, y, epochs=1)
    assert "mae" in loaded.history_


def test_streaming_state_survives_save(single, tmp_path):
    est, x, _ = single
    whole = est.predict(x)
    first = est.predict(x[:, :12])
    est.save(tmp_path / "s.keras")
    loaded = Estimator.load(tmp_path / "s.keras")
    second = loaded.predict(x[:, 12:], reset=False)
    np.testing.assert_allclose(np.concatenate([first, second], 1), whole, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------- user-stateful model
@pytest.mark.backend
def test_user_stateful_model_trains_and_predicts_any_batch():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input(batch_shape=(4, None, 3)),
            keras.layers.LSTM(6, return_sequences=True, stateful=True),
            keras.layers.Dense(1),
        ]
    )
    x, y = make_data(n=18, t=20)
    est = small(model, epochs=4, batch_size=8).fit(x, y)  # 8, 8 and 2 series, not 4
    assert np.isfinite(est.history_["loss"]).all()
    assert est.history_["loss"][-1] < est.history_["loss"][0]
    pred = est.predict(x[:10], batch_size=3)
    assert pred.shape == (10, 20, 1)
    # the same weights in a plain (non-stateful) model, run on the whole sequence
    keras.utils.set_random_seed(0)
    plain = keras.Sequential(
        [keras.Input((None, 3)), keras.layers.LSTM(6, return_sequences=True), keras.layers.Dense(1)]
    )
    plain.set_weights(est.model_.get_weights())
    np.testing.assert_allclose(pred, full_run(plain, x[:10]), rtol=0, atol=1e-5)
    # the user's layer is still stateful afterwards
    assert est.model_.layers[0].stateful and model.layers[0].stateful


@pytest.mark.tf_in_full  # make test: on JAX (its 10 minutes, 2026-12-07)
def test_user_stateful_model_trains_to_the_weights_of_its_plain_twin():
    """Keras 3.15 on JAX does not carry a stateful layer's state across ``train_on_batch``
    calls (examples/keras_stateful_train_on_batch.py); keraseq carries it itself, on both
    backends: ``stateful=True`` changes nothing."""

    def model(stateful):
        keras.utils.set_random_seed(0)
        return keras.Sequential(
            [
                keras.Input(batch_shape=(4, None, 3)) if stateful else keras.Input((None, 3)),
                keras.layers.GRU(5, return_sequences=True, stateful=stateful),
                keras.layers.Dense(1),
            ]
        )

    x, y = make_data(n=8, t=20)
    kw = dict(epochs=2, batch_size=4, shuffle=False, random_state=0)
    a = small(model(True), **kw).fit(x, y)
    b = small(model(False), **kw).fit(x, y)
    for wa, wb in zip(a.model_.get_weights(), b.model_.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=0, atol=1e-6)
    assert a.history_["loss"] == pytest.approx(b.history_["loss"], rel=1e-6)
    np.testing.assert_allclose(a.predict(x), b.predict(x), rtol=0, atol=1e-6)


# --------------------------------------------------------------- bidirectional and stacked
def bidirectional_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((None, 3)),
            keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True)),
            keras.layers.Dense(1),
        ]
    )


def stacked_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((None, 3)),
            keras.layers.LSTM(6, return_sequences=True),
            keras.layers.GRU(4, return_sequences=True),
            keras.layers.Dense(1),
        ]
    )


@pytest.mark.parametrize(
    "build",
    split_between_backends(
        {"bidirectional": bidirectional_model, "stacked_lstm_gru": stacked_model}
    ),
)
def test_bidirectional_and_stacked_train_and_predict(build):
    x, y = make_data(n=16, t=25)
    if build is bidirectional_model:  # windows would restart the backward pass: refused
        with pytest.raises(
            ValueError, match="'bidirectional[_0-9]*' \\(Bidirectional\\) runs backwards"
        ):
            small(build(), epochs=6).fit(x, y)
    est = small(
        build(), epochs=6, **({"seq_len": None} if build is bidirectional_model else {})
    ).fit(x, y)
    loss = est.history_["loss"]
    assert np.isfinite(loss).all() and loss[-1] < loss[0]
    pred = est.predict(x)
    assert pred.shape == (16, 25, 1) and np.isfinite(pred).all()
    if build is stacked_model:  # both layers carry their state: equals the whole-sequence run
        np.testing.assert_allclose(pred, full_run(est.model_, x), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------- seqloss
@pytest.mark.tf_in_full  # make test: on JAX; make test-full: on both
def test_seqloss_mse_equals_keras_mse():
    x, y = make_data(n=20, t=25)  # batch 8: minibatches of 8, 8, 4; windows 10, 10, 5
    sgd = lambda: keras.optimizers.SGD(0.1)
    a = small(lstm_model(), optimizer=sgd(), epochs=2).fit(x, y)
    b = small(
        lstm_model(), loss=seqloss(keras.losses.mean_squared_error), optimizer=sgd(), epochs=2
    ).fit(x, y)
    assert_weights_close(a.model_, b.model_, atol=1e-5)
    assert b.history_["loss"][-1] < b.history_["loss"][0]
    # with whole windows only, the reported epoch losses agree too
    x20, y20 = x[:, :20], y[:, :20]
    a = small(lstm_model(), optimizer=sgd(), epochs=2).fit(x20, y20)
    b = small(
        lstm_model(), loss=seqloss(keras.losses.mean_squared_error), optimizer=sgd(), epochs=2
    ).fit(x20, y20)
    np.testing.assert_allclose(b.history_["loss"], a.history_["loss"], rtol=1e-5)


@pytest.mark.backend
def test_reported_loss_is_the_mean_over_time_steps_with_a_short_last_window():
    """With learning rate 0 the epoch's reported loss and metric are those of the initial
    model on the training data: the mean over all N x T values, whatever the windows (10, 10
    and a short one of 3) and minibatches (8, 8 and a short one of 4), for a Keras loss, a
    Keras metric and seqloss(mse) alike."""
    x, y = make_data(n=20, t=23)
    model = lstm_model()
    pred = full_run(model, x)
    mse, mae = float(np.mean((pred - y) ** 2)), float(np.mean(np.abs(pred - y)))
    est = small(model, optimizer=keras.optimizers.SGD(0.0), epochs=1, metrics=["mae"]).fit(x, y)
    np.testing.assert_allclose(est.history_["loss"][0], mse, rtol=1e-5)
    np.testing.assert_allclose(est.history_["mae"][0], mae, rtol=1e-5)
    est = small(
        model,
        loss=seqloss(keras.losses.mean_squared_error),
        optimizer=keras.optimizers.SGD(0.0),
        epochs=1,
    ).fit(x, y)
    np.testing.assert_allclose(est.history_["loss"][0], mse, rtol=1e-5)


@pytest.mark.backend
def test_custom_callable_loss_trains():
    x, y = make_data(n=16, t=25)
    calls = []

    def window_mae(model, xw, yw):
        calls.append(tuple(xw.shape))
        return ops.mean(ops.abs(model(xw) - yw))

    est = small(lstm_model(), loss=window_mae, epochs=5).fit(x, y)
    loss = est.history_["loss"]
    assert loss[-1] < 0.9 * loss[0], loss
    assert calls and all(c[1] <= 10 for c in calls)  # the callable sees windows, not series
    mae = float(np.mean(np.abs(est.predict(x) - y)))
    assert abs(mae - loss[-1]) < 0.5 * loss[-1]


# ------------------------------------------------------------------------------ non-finite
@pytest.mark.backend
def test_nan_during_training_raises_and_keeps_finite_weights():
    x, y = make_data(n=16, t=20)
    x = x * 100.0
    est = small(lstm_model(), optimizer=keras.optimizers.SGD(1e12), epochs=5)
    with pytest.raises(NonFiniteLossError, match=r"epoch \d+.*minibatch \d+"):
        est.fit(x, y)
    for w in est.model_.get_weights():
        assert np.isfinite(w).all()


@pytest.mark.backend
def test_nan_from_the_loss_raises_with_epoch_and_minibatch():
    """A Keras loss that turns NaN once a prediction passes 1 (sqrt of a negative)."""
    x, y = make_data(n=16, t=20)
    x = np.abs(x)
    y = np.full_like(y, 50.0)

    def sqrt_gap(yt, yp):  # NaN once the prediction overshoots 1
        return ops.mean(ops.square(yt - yp), axis=-1) + ops.mean(ops.sqrt(1.0 - yp), axis=-1)

    est = small(lstm_model(), loss=sqrt_gap, optimizer=keras.optimizers.SGD(0.5), epochs=20)
    with pytest.raises(NonFiniteLossError) as info:
        est.fit(x, y)
    message = str(info.value)
    assert "epoch" in message and "minibatch" in message
    for w in est.model_.get_weights():
        assert np.isfinite(w).all()


# ---------------------------------------------------------------------------------- rebatch
def test_rebatch_small_n_trains():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 40, 3)).astype("float32")
    y = (2.0 * x[..., :1] - x[..., 1:2]).astype("float32")
    counter = BatchCounter()
    est = small(
        lstm_model(),
        epochs=25,
        batch_size=8,
        seq_len=10,
        rebatch=True,
        optimizer=keras.optimizers.Adam(0.02),
    ).fit(x, y, callbacks=[counter])
    assert counter.per_epoch == [1] * 25
    loss = est.history_["loss"]
    assert np.isfinite(loss).all() and loss[-1] < 0.5 * loss[0], loss
    pred = est.predict(x)
    assert pred.shape == (2, 40, 1)
    np.testing.assert_allclose(pred, full_run(est.model_, x), rtol=0, atol=1e-5)


# -------------------------------------------------------------------------------------- spec
@dataclasses.dataclass
class SpecDC:
    epochs: int
    batch_size: int
    seq_len: int


SpecNT = collections.namedtuple("SpecNT", "epochs batch_size seq_len")


@pytest.mark.parametrize(
    "spec",
    [
        dict(epochs=2, batch_size=6, seq_len=7),
        SpecDC(2, 6, 7),
        SpecNT(2, 6, 7),
        types.SimpleNamespace(epochs=2, batch_size=6, seq_len=7),
        dict(epochs=2, batchsize=6, seqsize=7),  # the FluxUtils.jl spelling
    ],
    ids=["dict", "dataclass", "namedtuple", "object", "seed_names"],
)
def test_spec_forms_fill_hyper_parameters(spec):
    est = Estimator(lstm_model(), "mse", "adam", spec)
    params = est._resolved()  # fit resolves the spec; __init__ stores what it is given
    assert (params.epochs, params.batch_size, params.seq_len) == (2, 6, 7)


@pytest.mark.tf_in_full
def test_spec_equals_keywords():
    x, y = make_data(n=14, t=20)
    opt = lambda: keras.optimizers.Adam(0.01)
    common = dict(shuffle=False, random_state=0, verbose=0, jit_compile=False)
    by_spec = Estimator(lstm_model(), "mse", opt(), SpecNT(2, 6, 7), **common).fit(x, y)
    by_kw = Estimator(lstm_model(), "mse", opt(), epochs=2, batch_size=6, seq_len=7, **common).fit(
        x, y
    )
    assert_weights_close(by_spec.model_, by_kw.model_, atol=0)
    assert by_spec.history_ == by_kw.history_
    # a keyword given explicitly wins over the spec
    assert (
        Estimator(lstm_model(), "mse", "adam", dict(epochs=2, batch_size=6, seq_len=7), epochs=5)
        ._resolved()
        .epochs
        == 5
    )
