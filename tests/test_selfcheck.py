"""The windows' self-check (issue 30): a layer that mixes time steps without being one keraseq
knows (a running sum, centring over the series) is named before training instead of training
silently wrong; it never fires on the window-invariant models keraseq supports."""

import functools
import warnings

import keras
import numpy as np
import pytest

from keraseq import Estimator
from keraseq.selfcheck import first_mixing_layer


@keras.saving.register_keras_serializable(package="test_selfcheck")
class Centre(keras.layers.Layer):
    """Subtracts the mean over the series: what a window sees is not the series."""

    def call(self, t):
        return t - keras.ops.mean(t, axis=1, keepdims=True)


def front(kind):
    if kind == "cumsum":
        return keras.layers.Lambda(lambda t: keras.ops.cumsum(t, axis=1), name="running_sum")
    return Centre(name="centre")


def mixing_model(kind, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((None, 3)),
            front(kind),
            keras.layers.LSTM(4, return_sequences=True),
            keras.layers.Dense(1),
        ]
    )


def series(n=16, t=24, f=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, t, f)).astype("float32")
    return x, (x[..., :1].cumsum(1) / 5).astype("float32")


def mixing_warnings(record):
    return [str(w.message) for w in record if "mixes time steps" in str(w.message)]


@pytest.mark.tf_in_full  # both on JAX in make test (2026-12-07 budget)
@pytest.mark.parametrize("kind,layer", [("cumsum", "running_sum"), ("centre", "centre")])
def test_a_layer_mixing_time_steps_is_named_before_training(kind, layer):
    x, y = series()
    model = functools.partial(mixing_model, kind)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        est = Estimator(model, epochs=1, batch_size=8, seq_len=5, verbose=0)
        est.fit(x, y)
        if kind == "cumsum":  # (one case: make test's budget)
            est.partial_fit(x, y)  # continues the checked model: not checked (nor warned) again
    found = mixing_warnings(record)
    assert len(found) == 1, found
    kind_name = "Lambda" if kind == "cumsum" else "Centre"
    assert found[0].startswith(
        f"layer '{layer}' ({kind_name}) mixes time steps: on the first 15 steps of 4 series "
        f"its outputs cut into windows of seq_len=5 differ"
    )
    assert "window_check='off'" in found[0]
    # what it warns about is real: the windowed predict is not the model's whole-series output
    whole = keras.ops.convert_to_numpy(est.model_(x))
    assert np.abs(est.predict(x) - whole).max() > 0.05
    if kind == "cumsum":
        with warnings.catch_warnings(record=True) as record:  # a new fit: a new model, checked
            warnings.simplefilter("always")
            est.fit(x, y)
        assert len(mixing_warnings(record)) == 1
    # "raise": the same finding as an error before any step, nothing fitted
    strict = Estimator(model, seq_len=5, window_check="raise", verbose=0)
    with pytest.raises(ValueError, match=f"^layer '{layer}' \\({kind_name}\\) mixes time steps"):
        strict.fit(x, y)
    assert not hasattr(strict, "model_")
    # "off", or no windows: silent
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        Estimator(model, seq_len=5, window_check="off", verbose=0).fit(x, y)
        Estimator(model, seq_len=None, verbose=0).fit(x, y)
    assert mixing_warnings(record) == []


def test_a_loaded_model_is_checked_at_its_first_windowed_predict(tmp_path):
    x, y = series()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = Estimator(mixing_model("centre"), seq_len=6, verbose=0).fit(x, y)
    est.save(tmp_path / "e.keras")
    loaded = Estimator.load(tmp_path / "e.keras")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        loaded.predict(x[:, :6])  # one window: nothing to compare
        assert mixing_warnings(record) == []
        loaded.predict(x)
        loaded.predict(x)  # checked once
    assert len(mixing_warnings(record)) == 1
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        est.predict(x)  # fit checked it
    assert mixing_warnings(record) == []


def test_window_check_is_validated():
    x, y = series()
    with pytest.raises(ValueError, match="`window_check` must be 'warn', 'raise' or 'off'"):
        Estimator(mixing_model("centre"), seq_len=5, window_check=True).fit(x, y)


class MonteCarloDropout(keras.layers.Dropout):
    """Random at every call: it differs from itself, which says nothing about windows."""

    def call(self, inputs, training=None):
        return super().call(inputs, training=True)


def _functional_two_inputs():
    tok = keras.Input((None,), dtype="int32")
    feat = keras.Input((None, 2))
    emb = keras.layers.Embedding(9, 3, mask_zero=True)(tok)
    h = keras.layers.Concatenate()([emb, feat])
    h = keras.layers.GRU(4, return_sequences=True)(h)
    h = keras.layers.LayerNormalization()(h)
    return keras.Model([tok, feat], keras.layers.Dense(2)(h))


#: Window-invariant models keraseq supports: (builder, inputs (n, T, ...)).
INVARIANT = {
    "stacked": lambda: keras.Sequential(
        [
            keras.Input((None, 3)),
            keras.layers.Dense(5, activation="tanh"),
            keras.layers.LSTM(4, return_sequences=True),
            keras.layers.Dropout(0.3),
            keras.layers.GRU(3, return_sequences=True),
            keras.layers.BatchNormalization(),
            keras.layers.TimeDistributed(keras.layers.Dense(2)),
        ]
    ),
    "masking": lambda: keras.Sequential(
        [
            keras.Input((None, 3)),
            keras.layers.Masking(0.0),
            keras.layers.SimpleRNN(4, return_sequences=True),
            keras.layers.Dense(1),
        ]
    ),
    "per_series": lambda: keras.Sequential(
        [keras.Input((None, 3)), keras.layers.LSTM(4), keras.layers.Dense(2)]
    ),
    "causal_conv": lambda: keras.Sequential(
        [
            keras.Input((None, 3)),
            keras.layers.Conv1D(4, 3, padding="causal", dilation_rate=2),
            keras.layers.LSTM(4, return_sequences=True),
            keras.layers.Dense(1),
        ]
    ),
    "convlstm": lambda: keras.Sequential(
        [
            keras.Input((None, 5, 2)),
            keras.layers.ConvLSTM1D(3, 3, padding="same", return_sequences=True),
            keras.layers.TimeDistributed(keras.layers.Flatten()),
            keras.layers.Dense(1),
        ]
    ),
    "two_inputs": _functional_two_inputs,
    "mc_dropout": lambda: keras.Sequential(
        [
            keras.Input((None, 3)),
            MonteCarloDropout(0.5),
            keras.layers.LSTM(4, return_sequences=True),
            keras.layers.Dense(1),
        ]
    ),
}


def _inputs(kind, n=3, t=12):
    rng = np.random.default_rng(1)
    if kind == "convlstm":
        return (rng.normal(size=(n, t, 5, 2)).astype("float32"),)
    if kind == "two_inputs":
        tok = rng.integers(0, 9, size=(n, t))
        return (tok, rng.normal(size=(n, t, 2)).astype("float32"))
    x = rng.normal(size=(n, t, 3)).astype("float32")
    if kind == "masking":
        x[1, 7:] = 0.0
    return (x,)


@pytest.mark.backend
@pytest.mark.parametrize("kind", list(INVARIANT))
@pytest.mark.parametrize("seq_len", [1, 4, 5])
def test_never_fires_on_window_invariant_models(kind, seq_len):
    keras.utils.set_random_seed(0)
    model = INVARIANT[kind]()
    before = [keras.ops.convert_to_numpy(v) for v in model.variables]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert first_mixing_layer(model, _inputs(kind, t=3 * seq_len), seq_len) is None
    # nothing of the model changed (a dropout's seed state included)
    for a, v in zip(before, model.variables):
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(v))


def test_a_time_mixing_layer_after_the_recurrent_layer_is_found_too():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((None, 3)),
            keras.layers.LSTM(4, return_sequences=True),
            keras.layers.Dense(4),
            Centre(name="late_centre"),
            keras.layers.Dense(1),
        ]
    )
    found = first_mixing_layer(model, _inputs("stacked"), 4)
    assert found is not None and (found.layer, found.kind) == ("late_centre", "Centre")
    assert found.steps == 12 and found.rows == 3 and found.difference > 0.01
