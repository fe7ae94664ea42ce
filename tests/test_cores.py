"""What keraseq does with the cores of one machine.

JAX: a minibatch's rows split over the JAX CPU devices, with the gradients summed over
devices per update, train to the weights of the one-device program. TensorFlow:
``jit_compile="auto"`` runs large windows as a plain graph (intra-op threads) on several cores.
"""

import os

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keraseq import Estimator

pytestmark = pytest.mark.backend
on_jax = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="rows over CPU devices is the JAX backend's (TensorFlow runs a minibatch on one "
    "device: its graph threads or mpirun use the cores there)",
)
on_tf = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="XLA or not is TensorFlow's choice (JAX always compiles)",
)


@pytest.fixture
def kj():
    import jax

    from keraseq.backend.jax import rows as kj

    assert len(jax.devices("cpu")) >= 2  # conftest asks for two (KERASEQ_CPU_DEVICES)
    rule = kj.MIN_WORK_PER_DEVICE
    yield kj
    kj.MIN_WORK_PER_DEVICE = rule


def fit_both(kj, make, x, y, **params):
    """The same fit on one device and with its rows split; returns both estimators and the
    number of split training calls."""
    fit_params = params.pop("_fit", {})
    out = []
    for rule in (10**18, 0):
        kj.MIN_WORK_PER_DEVICE = rule
        before = kj.split_calls[0]
        est = Estimator(make(), verbose=0, random_state=0, **params)
        out.append((est.fit(x, y, **fit_params), kj.split_calls[0] - before))
    (one, n_one), (split, n_split) = out
    assert n_one == 0
    return one, split, n_split


def weights(est):
    return np.concatenate([w.ravel() for w in est.model_.get_weights()])


CASE = st.fixed_dictionaries(
    {
        "cell": st.sampled_from(["LSTM", "GRU", "SimpleRNN"]),
        "units": st.integers(2, 6),
        "features": st.integers(1, 3),
        "t": st.integers(3, 14),
        "batch": st.sampled_from([2, 4, 6]),
        "n": st.integers(4, 13),
        "per_series": st.booleans(),
        "lengths": st.booleans(),
        "sync_every": st.sampled_from([1, 2]),
        "weights": st.booleans(),
        "seed": st.integers(0, 2**16),
    }
)


@on_jax
@pytest.mark.property
@settings(
    max_examples=int(os.environ.get("KERASEQ_ROWS_EXAMPLES", "1")),  # test-full: 8
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(case=CASE, data=st.data())
def test_rows_split_over_devices_train_to_the_one_device_weights(kj, case, data):
    rng = np.random.default_rng(case["seed"])
    n, t, f = case["n"], case["t"], case["features"]
    seq_len = data.draw(st.sampled_from([None] + list(range(1, t + 1))), label="seq_len")
    x = rng.normal(size=(n, t, f)).astype("float32")
    y = rng.normal(size=(n, 2) if case["per_series"] else (n, t, 2)).astype("float32")
    fit = {}
    if case["lengths"]:
        lengths = rng.integers(1, t + 1, n)
        lengths[0] = t
        fit["lengths"] = lengths
    if case["weights"]:
        fit["sample_weight"] = rng.random(n).astype("float32") + 0.5

    def make():
        keras.utils.set_random_seed(case["seed"])
        layer = getattr(keras.layers, case["cell"])
        return keras.Sequential(
            [
                keras.Input((None, f)),
                layer(case["units"], return_sequences=not case["per_series"]),
                keras.layers.Dense(2),
            ]
        )

    one, split, n_split = fit_both(
        kj,
        make,
        x,
        y,
        seq_len=seq_len,
        batch_size=case["batch"],
        epochs=2,
        sync_every=case["sync_every"],
        metrics=["mae"],
        _fit=fit,
    )
    assert n_split > 0  # the split program ran (and full minibatches used it)
    np.testing.assert_allclose(weights(split), weights(one), rtol=1e-5, atol=1e-5)
    for key in ("loss", "mae"):
        np.testing.assert_allclose(split.history_[key], one.history_[key], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(split.predict(x), one.predict(x), rtol=1e-5, atol=1e-5)


def small_case(*layers):
    """Eight series of 6 steps, and a builder of the model ``Input -> layers -> Dense(1)``."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 6, 2)).astype("float32")
    y = rng.normal(size=(8, 6, 1)).astype("float32")

    def make():
        keras.utils.set_random_seed(1)
        return keras.Sequential(
            [keras.Input((None, 2))] + [layer() for layer in layers] + [keras.layers.Dense(1)]
        )

    return x, y, make


@on_jax
def test_dropout_rows_differ_by_device_and_the_seed_state_advances_as_on_one_device(kj):
    x, y, make = small_case(lambda: keras.layers.LSTM(4, return_sequences=True, dropout=0.5))
    one, split, n_split = fit_both(kj, make, x, y, seq_len=3, batch_size=4, epochs=2)
    assert n_split > 0
    seeds = lambda est: [v.numpy() for v in est.model_.non_trainable_variables]
    assert [s.tolist() for s in seeds(split)] == [s.tolist() for s in seeds(one)]
    # Reproducible with the same seed; not the one-device weights (other masks per row).
    again = Estimator(make(), seq_len=3, batch_size=4, epochs=2, verbose=0, random_state=0).fit(
        x, y
    )
    np.testing.assert_array_equal(weights(again), weights(split))
    assert np.abs(weights(split) - weights(one)).max() > 1e-4


@on_jax
def test_batch_statistics_keep_the_rows_on_one_device(kj):
    """A layer whose training output mixes rows (BatchNormalization) is never split."""
    x, y, make = small_case(
        keras.layers.BatchNormalization, lambda: keras.layers.LSTM(4, return_sequences=True)
    )
    one, split, n_split = fit_both(kj, make, x, y, seq_len=3, batch_size=4, epochs=1)
    assert n_split == 0
    np.testing.assert_array_equal(weights(split), weights(one))


@on_jax
@pytest.mark.parametrize("per_series", [False, True], ids=["per_step", "per_series"])
def test_predict_split_over_devices_equals_one_device_with_streaming(kj, per_series):
    """Inference rows are independent (BatchNormalization uses its moving statistics):
    predict splits them, also continuing the states of a first chunk (``reset=False``)."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 12, 2)).astype("float32")
    lengths = rng.integers(3, 13, 10)
    y = rng.normal(size=(10, 1) if per_series else (10, 12, 1)).astype("float32")
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((None, 2)),
            keras.layers.BatchNormalization(),
            keras.layers.GRU(5, return_sequences=not per_series),
            keras.layers.Dense(1),
        ]
    )
    kj.MIN_WORK_PER_DEVICE = 10**18
    est = Estimator(model, seq_len=4, batch_size=5, epochs=1, verbose=0).fit(x, y, lengths=lengths)
    out = {}
    for rule in (10**18, 0):
        kj.MIN_WORK_PER_DEVICE = rule
        before = kj.split_calls[0]
        whole = est.predict(x, lengths=lengths, batch_size=10)
        first = est.predict(x[:, :5], batch_size=10)
        second = est.predict(x[:, 5:], reset=False, batch_size=10)
        out[rule] = (whole, first, second, kj.split_calls[0] - before)
    (w1, f1, s1, n1), (w2, f2, s2, n2) = out[10**18], out[0]
    assert n1 == 0 and n2 == 3
    for a, b in ((w1, w2), (f1, f2), (s1, s2)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


class MonteCarloDropout(keras.layers.Dropout):
    """Dropout in inference too (Keras 3 lets the outer ``training=False`` override a
    ``training=True`` given when a functional model is built, so this needs a subclass)."""

    def call(self, inputs, training=None):
        return super().call(inputs, training=True)


@on_jax
def test_monte_carlo_dropout_in_a_split_predict_draws_other_masks_per_device(kj):
    model = keras.Sequential(
        [
            keras.Input((None, 2)),
            keras.layers.LSTM(6, return_sequences=True),
            MonteCarloDropout(0.5),
            keras.layers.Dense(1),
        ]
    )
    x = np.random.default_rng(0).normal(size=(5, 8, 2)).astype("float32")
    x = np.concatenate([x, x])  # rows i and i + 5 are the same series, on different devices
    est = Estimator(model, seq_len=4, batch_size=10, epochs=1, verbose=0).fit(x, x[..., :1])
    kj.MIN_WORK_PER_DEVICE = 0
    before = kj.split_calls[0]
    out = est.predict(x, batch_size=10)
    assert kj.split_calls[0] == before + 1
    assert np.abs(out[:5] - out[5:]).max() > 1e-3  # not the same masks on both devices


@on_jax
def test_the_rule_splits_only_where_the_work_pays(kj):
    kj.MIN_WORK_PER_DEVICE = 4_000_000
    assert kj.row_replicas(20, 170_200) == 1  # the seed workload
    assert kj.row_replicas(64, 105_678_080) == 2  # the realistic one, on two devices
    assert kj.row_replicas(63, 105_678_080) == 1  # rows that do not split evenly (2 devices)
    assert kj.row_replicas(1, 10**12) == 1


@on_tf
def test_auto_runs_large_windows_as_a_graph_on_several_cores(monkeypatch):
    from keraseq.backend import tensorflow as backend

    model = keras.Sequential([keras.Input((None, 2)), keras.layers.LSTM(3), keras.layers.Dense(1)])
    monkeypatch.setattr(backend.common, "usable_cores", lambda: 2)
    big = backend.GRAPH_MIN_WORK
    assert backend.jit_for(model, "auto", work=big - 1) is True
    assert backend.jit_for(model, "auto", work=big) is False
    assert backend.jit_for(model, "auto", work=big, distributed=True) is True  # MPI: XLA
    assert backend.jit_for(model, True, work=big) is True  # an explicit choice is kept
    monkeypatch.setattr(backend.common, "usable_cores", lambda: 1)
    assert backend.jit_for(model, "auto", work=big) is True
    # keraseq's fused loop is faster under XLA than Keras's loop in a graph (1.5-1.6x): large
    # windows stay with XLA when every recurrent layer takes it, not when one cannot.
    monkeypatch.setattr(backend.common, "usable_cores", lambda: 2)
    assert backend.jit_for(model, "auto", work=big, fused=True) is True
    dropout = keras.Sequential(
        [keras.Input((None, 2)), keras.layers.GRU(3, recurrent_dropout=0.1), keras.layers.Dense(1)]
    )
    assert backend.jit_for(dropout, "auto", work=big, fused=True) is False


@on_tf
@pytest.mark.slow  # five fits, each a new program: make test-full (make test's 10 minutes)
def test_fit_hands_the_graph_rule_the_work_of_its_windows(monkeypatch):
    """fit hands the rule the work of its windows: rows x window steps x weights."""
    from keraseq.backend import tensorflow as backend

    model = keras.Sequential([keras.Input((None, 2)), keras.layers.LSTM(3), keras.layers.Dense(1)])
    seen = []
    build = backend.build_step_functions

    def spy(*args, **kwargs):
        seen.append(args[8])  # jit_compile
        return build(*args, **kwargs)

    monkeypatch.setattr(backend, "build_step_functions", spy)
    monkeypatch.setattr(backend.common, "usable_cores", lambda: 2)
    x = np.zeros((6, 8, 2), "float32")
    y = np.zeros((6, 1), "float32")
    work = 4 * 5 * model.count_params()

    def fit(**settings):
        return Estimator(
            keras.models.clone_model(model),
            batch_size=4,
            seq_len=5,
            epochs=1,
            verbose=0,
            **settings,
        ).fit(x, y)

    for threshold, expected in ((work, False), (work + 1, True)):
        monkeypatch.setattr(backend, "GRAPH_MIN_WORK", threshold)
        est = fit(fused_rnn=False)
        assert seen[-1] is expected
        assert set(est.rnn_paths_.values()) == {"keras (fused_rnn=False)"}

    # The fused loop runs under XLA, for large windows too; in a plain graph
    # (jit_compile=False) every layer keeps Keras's loop, faster there, and rnn_paths_ says why.
    for threshold in (work + 1, work):
        monkeypatch.setattr(backend, "GRAPH_MIN_WORK", threshold)
        est = fit()
        assert seen[-1] is True
        assert set(est.rnn_paths_.values()) == {"fused"}
    est = fit(jit_compile=False)
    assert seen[-1] is False
    (path,) = est.rnn_paths_.values()
    assert path.startswith("keras (a TensorFlow graph without XLA")
