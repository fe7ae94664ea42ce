"""Bad input: a clear ValueError/TypeError naming the argument, raised before any training step,
with the user's arrays left untouched."""

from __future__ import annotations

import collections

import h5py
import keras
import numpy as np
import pytest
from conftest import lstm_model

from keraseq import Estimator

N, T, F = 12, 20, 3

# Errors raised before any training step (keraseq's checks, not a backend's): make test runs
# them on JAX, make test-full on both.
pytestmark = pytest.mark.tf_in_full


def make_data(n=N, t=T, f=F, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, t, f)).astype("float32")
    y = np.cumsum(x[..., :1], axis=1).astype("float32") / 5.0
    return x, y


class Recorder(keras.callbacks.Callback):
    """Records every training event: none may happen when the input is rejected."""

    def __init__(self):
        super().__init__()
        self.events = []

    def on_train_begin(self, logs=None):
        self.events.append("train_begin")

    def on_train_batch_begin(self, batch, logs=None):
        self.events.append("batch")


def estimator(model=None, **kw):
    params = dict(epochs=1, batch_size=4, seq_len=5, shuffle=False, verbose=0, jit_compile=False)
    params.update(kw)
    return Estimator(model if model is not None else lstm_model(), "mse", "adam", **params)


def copies(*arrays):
    return [None if a is None else np.array(a, copy=True) for a in arrays]


def assert_unchanged(originals, arrays):
    for before, after in zip(originals, arrays):
        if before is None:
            continue
        np.testing.assert_array_equal(np.asarray(after), before)


def assert_fit_rejected(est, exc, match, x, y, **kwargs):
    """fit raises ``exc`` matching ``match``; no training event, no ``model_``, inputs intact."""
    arrays = [x, y, kwargs.get("sample_weight")]
    before = copies(*[a if isinstance(a, np.ndarray) else None for a in arrays])
    recorder = Recorder()
    weights_before = (
        [w.copy() for w in est.model.get_weights()] if isinstance(est.model, keras.Model) else None
    )
    with pytest.raises(exc, match=match):
        est.fit(x, y, callbacks=[recorder], **kwargs)
    assert recorder.events == []
    assert not hasattr(est, "model_")
    assert_unchanged(before, arrays)
    if weights_before is not None:
        for a, b in zip(weights_before, est.model.get_weights()):
            np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def fitted():
    x, y = make_data()
    return estimator(lstm_model(), epochs=1).fit(x, y)


# ----------------------------------------------------------------------------- shapes of x / y
def test_n_mismatch_names_y():
    x, y = make_data()
    assert_fit_rejected(estimator(), ValueError, r"`y`.*N=11", x, y[:11])


def test_t_mismatch_names_y():
    x, y = make_data()
    assert_fit_rejected(estimator(), ValueError, r"`y`.*T=19", x, y[:, :19])


@pytest.mark.parametrize("shape", [(N, T), (N,), (N, T, F, 1)], ids=["rank2", "rank1", "rank4"])
def test_wrong_rank_of_x(shape):
    _, y = make_data()
    x = np.ones(shape, np.float32)
    assert_fit_rejected(estimator(), ValueError, rf"`x`.*rank {len(shape)}", x, y)


@pytest.mark.parametrize("shape", [(N,), (N, T, 1, 1)], ids=["rank1", "rank4"])
def test_wrong_rank_of_y(shape):
    x, _ = make_data()
    y = np.ones(shape, np.float32)
    assert_fit_rejected(estimator(), ValueError, rf"`y`.*rank {len(shape)}", x, y)


def test_feature_size_unlike_the_model_input():
    x, y = make_data(f=4)  # the model was built with Input((None, 3))
    assert_fit_rejected(estimator(lstm_model(features=3)), ValueError, r"`x`.*F=4.*3", x, y)


def test_feature_size_unlike_the_fit_in_predict(fitted):
    x, _ = make_data(f=4)
    before = x.copy()
    with pytest.raises(ValueError, match=r"`x`.*F=4"):
        fitted.predict(x)
    np.testing.assert_array_equal(x, before)


def test_y_features_unlike_the_model_output():
    x, _ = make_data()
    y = np.ones((N, T, 3), np.float32)  # the model's Dense gives 1
    assert_fit_rejected(estimator(), ValueError, r"`y`.*F_out=3", x, y)


def test_per_series_y_with_a_sequence_model():
    x, _ = make_data()
    y = np.ones((N, 1), np.float32)  # the model returns sequences
    assert_fit_rejected(estimator(), ValueError, r"`y`.*per-series", x, y)


# --------------------------------------------------------------------------- NaN / Inf values
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["x", "y"])
def test_non_finite_values(where, value):
    x, y = make_data()
    (x if where == "x" else y)[7, 3, 0] = value
    assert_fit_rejected(estimator(), ValueError, rf"`{where}`.*NaN or Inf.*row 7", x, y)


def test_non_finite_sample_weight_and_validation_data():
    x, y = make_data()
    w = np.ones(N, np.float32)
    w[2] = np.nan
    assert_fit_rejected(
        estimator(), ValueError, r"`sample_weight`.*NaN or Inf", x, y, sample_weight=w
    )
    xv, yv = make_data(n=5)
    xv[1, 0, 0] = np.inf
    assert_fit_rejected(
        estimator(), ValueError, r"validation_data.*x.*NaN or Inf", x, y, validation_data=(xv, yv)
    )


def test_non_finite_x_in_predict(fitted):
    x, _ = make_data()
    x[3, 3, 1] = np.nan
    with pytest.raises(ValueError, match=r"`x`.*NaN or Inf"):
        fitted.predict(x)


def test_non_finite_rejected_in_h5py_input(tmp_path):
    x, y = make_data()
    x[9, 19, 2] = np.nan
    with h5py.File(tmp_path / "d.h5", "w") as fh:
        fh["x"], fh["y"] = x, y
        assert_fit_rejected(estimator(), ValueError, r"`x`.*NaN or Inf.*row 9", fh["x"], fh["y"])
        np.testing.assert_array_equal(fh["x"][...], x)


# ----------------------------------------------------------------------------------- empty
@pytest.mark.parametrize(
    "which,shape",
    [("x", (0, T, F)), ("x", (N, 0, F)), ("y", (0, T, 1))],
    ids=["x_no_series", "x_no_steps", "y_no_series"],
)
def test_empty_arrays(which, shape):
    x, y = make_data()
    if which == "x":
        x = np.ones(shape, np.float32)
    else:
        y = np.ones(shape, np.float32)
    assert_fit_rejected(estimator(), ValueError, rf"`{which}`.*empty", x, y)


def test_empty_tuple_of_inputs():
    _, y = make_data()
    assert_fit_rejected(estimator(), ValueError, r"`x`.*empty", (), y)


# ---------------------------------------------------------------------- hyper-parameters
@pytest.mark.parametrize("name", ["seq_len", "batch_size", "epochs"])
@pytest.mark.parametrize(
    "value,exc",
    [(0, ValueError), (-3, ValueError), (2.5, TypeError), ("8", TypeError), (4.0, TypeError)],
    ids=["zero", "negative", "float", "str", "integral_float"],
)
def test_bad_hyper_parameter(name, value, exc):
    x, y = make_data()
    assert_fit_rejected(estimator(**{name: value}), exc, rf"`{name}`", x, y)


@pytest.mark.parametrize("value,exc", [(0, ValueError), (-1, ValueError), (1.5, TypeError)])
def test_bad_epochs_given_to_fit(value, exc):
    x, y = make_data()
    assert_fit_rejected(estimator(), exc, r"`epochs`", x, y, epochs=value)


def test_bad_predict_batch_size(fitted):
    x, _ = make_data()
    with pytest.raises(ValueError, match=r"`batch_size`"):
        fitted.predict(x, batch_size=0)
    with pytest.raises(TypeError, match=r"`batch_size`"):
        fitted.predict(x, batch_size=2.5)


# -------------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("which", ["x", "y"])
@pytest.mark.parametrize("kind", ["str", "object"])
def test_non_numeric_dtype(which, kind):
    x, y = make_data()
    a = x if which == "x" else y
    bad = a.astype(str) if kind == "str" else a.astype(object)
    if kind == "object":  # numbers in an object array are numbers (scikit-learn's rule) ...
        bad.flat[0] = {"not": "a number"}  # ... but not a dict
    if which == "x":
        assert_fit_rejected(estimator(), TypeError, r"`x`.*dtype", bad, y)
    else:
        assert_fit_rejected(estimator(), TypeError, r"`y`.*dtype", x, bad)


# ------------------------------------------------------------ tuples unlike the model's I/O
def two_in_two_out():
    keras.utils.set_random_seed(0)
    a, b = keras.Input((None, 2), name="a"), keras.Input((None, 3), name="b")
    h = keras.layers.LSTM(4, return_sequences=True)(keras.layers.Concatenate()([a, b]))
    return keras.Model(
        [a, b], [keras.layers.Dense(1, name="p")(h), keras.layers.Dense(2, name="q")(h)]
    )


def two_io_data():
    rng = np.random.default_rng(0)
    xs = (
        rng.normal(size=(N, T, 2)).astype("float32"),
        rng.normal(size=(N, T, 3)).astype("float32"),
    )
    ys = (np.ones((N, T, 1), np.float32), np.ones((N, T, 2), np.float32))
    return xs, ys


def test_too_many_inputs():
    x, y = make_data()
    assert_fit_rejected(estimator(), ValueError, r"1 input.*`x` has 2", (x, x.copy()), y)


def test_too_few_inputs():
    xs, ys = two_io_data()
    assert_fit_rejected(estimator(two_in_two_out()), ValueError, r"2 input.*`x` has 1", xs[0], ys)


def test_too_few_outputs():
    xs, ys = two_io_data()
    assert_fit_rejected(estimator(two_in_two_out()), ValueError, r"2 output.*`y` has 1", xs, ys[0])


def test_too_many_outputs():
    x, y = make_data()
    assert_fit_rejected(estimator(), ValueError, r"1 output.*`y` has 2", x, (y, y.copy()))


def test_inputs_with_different_n():
    xs, ys = two_io_data()
    assert_fit_rejected(
        estimator(two_in_two_out()), ValueError, r"`x\[1\]`", (xs[0], xs[1][:-1]), ys
    )


def test_loss_dict_with_an_unknown_output_name():
    xs, ys = two_io_data()
    est = Estimator(
        two_in_two_out(),
        {"p": "mse", "nope": "mae"},
        "adam",
        epochs=1,
        batch_size=4,
        seq_len=5,
        verbose=0,
        jit_compile=False,
    )
    assert_fit_rejected(est, ValueError, r"`loss`.*nope", xs, ys)


# ---------------------------------------------------------------------------------- spec
def test_spec_with_a_missing_field():
    x, y = make_data()
    est = Estimator(lstm_model(), "mse", "adam", dict(epochs=1, batch_size=4), verbose=0)
    assert_fit_rejected(est, ValueError, r"`spec`.*missing.*seq_len", x, y)


def test_spec_with_an_unknown_field():
    x, y = make_data()
    Spec = collections.namedtuple("Spec", "epochs batch_size seq_len learning_rate")
    est = Estimator(lstm_model(), "mse", "adam", Spec(1, 4, 5, 0.1), verbose=0)
    assert_fit_rejected(est, ValueError, r"`spec`.*unknown.*learning_rate", x, y)


def test_spec_of_an_unusable_type():
    x, y = make_data()
    est = Estimator(lstm_model(), "mse", "adam", 42, verbose=0)
    assert_fit_rejected(est, TypeError, r"`spec`", x, y)


# ------------------------------------------------------------------------------- out=
@pytest.mark.parametrize("shape", [(N, T - 1, 1), (N + 1, T, 1), (N, T)], ids=["T", "N", "rank"])
def test_out_of_the_wrong_shape(fitted, shape):
    x, _ = make_data()
    out = np.full(shape, 7.0, np.float32)
    with pytest.raises(ValueError, match=r"`out`.*shape"):
        fitted.predict(x, out=out)
    assert (out == 7.0).all()


def test_out_of_an_int_dtype(fitted):
    x, _ = make_data()
    out = np.full((N, T, 1), 7, np.int32)
    with pytest.raises(TypeError, match=r"`out`.*dtype"):
        fitted.predict(x, out=out)
    assert (out == 7).all()


def test_out_read_only(fitted):
    x, _ = make_data()
    out = np.zeros((N, T, 1), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match=r"`out`"):
        fitted.predict(x, out=out)


def test_out_tuple_length_unlike_the_outputs(fitted):
    x, _ = make_data()
    outs = (np.zeros((N, T, 1), np.float32), np.zeros((N, T, 1), np.float32))
    with pytest.raises(ValueError, match=r"`out`.*2"):
        fitted.predict(x, out=outs)
    assert not outs[0].any() and not outs[1].any()


# ------------------------------------------------------------------------ predict before fit
@pytest.mark.parametrize("method", ["predict", "score", "save"])
def test_use_before_fit(method, tmp_path):
    x, y = make_data()
    est = estimator()
    call = {
        "predict": lambda: est.predict(x),
        "score": lambda: est.score(x, y),
        "save": lambda: est.save(tmp_path / "e.keras"),
    }[method]
    with pytest.raises(ValueError, match=r"not fitted.*`fit`"):
        call()
    assert not (tmp_path / "e.keras").exists()


# ----------------------------------------------------------------------------- sample_weight
@pytest.mark.parametrize(
    "shape", [(N + 1,), (N, T + 1), (N - 1, T), (N, T, 1)], ids=["N+1", "T+1", "N-1_T", "rank3"]
)
def test_sample_weight_of_the_wrong_shape(shape):
    x, y = make_data()
    w = np.ones(shape, np.float32)
    assert_fit_rejected(estimator(), ValueError, r"`sample_weight`", x, y, sample_weight=w)


def test_per_step_sample_weight_with_per_series_targets():
    x, _ = make_data()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, F)), keras.layers.LSTM(4), keras.layers.Dense(1)])
    y = np.ones((N, 1), np.float32)
    assert_fit_rejected(
        estimator(model),
        ValueError,
        r"`sample_weight`.*\(N,\)",
        x,
        y,
        sample_weight=np.ones((N, T), np.float32),
    )


# --------------------------------------------------------------------------- reset=False
def test_reset_false_without_a_previous_predict():
    x, y = make_data()
    est = estimator(lstm_model(), epochs=1).fit(x, y)  # fit keeps no streaming state
    with pytest.raises(ValueError, match=r"reset=False"):
        est.predict(x, reset=False)


def test_reset_false_after_fit_forgets_the_old_predict(fitted):
    x, y = make_data()
    fitted.predict(x)
    fitted.fit(x, y)
    with pytest.raises(ValueError, match=r"reset=False"):
        fitted.predict(x, reset=False)


def test_reset_false_with_other_series(fitted):
    x, _ = make_data()
    fitted.predict(x)
    with pytest.raises(ValueError, match=r"reset=False.*N=5"):
        fitted.predict(x[:5], reset=False)
    # the kept states are still those of the N series: continuing them works
    assert fitted.predict(x[:, :4], reset=False).shape == (N, 4, 1)


# ------------------------------------------------------------------------ model / optimizer
def test_model_that_is_not_a_keras_model():
    x, y = make_data()
    est = Estimator("lstm", "mse", "adam", epochs=1, batch_size=4, seq_len=5, verbose=0)
    with pytest.raises(TypeError, match=r"`model`"):
        est.fit(x, y)
    assert not hasattr(est, "model_")


def test_bad_optimizer():
    x, y = make_data()
    est = Estimator(lstm_model(), "mse", 3.0, epochs=1, batch_size=4, seq_len=5, verbose=0)
    assert_fit_rejected(est, TypeError, r"`optimizer`", x, y)
