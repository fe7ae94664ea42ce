"""Compile once, not per fit: a new fit of the same architecture reuses the compiled window
loops of a finished one, with the same result as a fresh compile; a kept estimator is never
touched."""

import gc

import keras
import numpy as np
import pytest
from conftest import lstm_model
from sklearn.model_selection import GridSearchCV

from keraseq import Estimator, reuse


@pytest.fixture
def fresh_pool():
    reuse.clear()
    gc.collect()
    yield
    reuse.clear()


def _est(model, **kw):
    kw = {"epochs": 2, "batch_size": 8, "seq_len": 5, "verbose": 0, "random_state": 3, **kw}
    return Estimator(model, "mse", keras.optimizers.Adam(kw.pop("lr", 1e-3)), **kw)


def _weights(est):
    return [np.array(w) for w in est.model_.get_weights()]


@pytest.mark.jax_in_full  # make test: on TensorFlow (2026-12-07: make test's 10 minutes)
def test_reused_steps_give_the_fresh_compile_result(data, fresh_pool):
    x, y = data
    model = lstm_model()
    first = _weights(_est(model, lr=1e-3).fit(x, y))  # compiled; dropped: free
    before = reuse.stats()
    second = _est(model, lr=3e-3).fit(x, y)  # another learning rate: a variable, reused
    assert reuse.stats()["reused"] == before["reused"] + 1
    assert reuse.stats()["compiled"] == before["compiled"]
    reused = _weights(second)
    del second
    reuse.clear()
    fresh = _weights(_est(model, lr=3e-3).fit(x, y))  # compiled anew
    for a, b in zip(reused, fresh):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, fresh))
    assert [w.shape for w in model.get_weights()] == [w.shape for w in fresh]


@pytest.mark.tf_in_full  # the pool's logic (reuse.py), above the compiled step
def test_a_kept_estimator_is_never_overwritten(data, fresh_pool):
    x, y = data
    model = lstm_model()
    kept = _est(model).fit(x, y)
    weights, pred = _weights(kept), kept.predict(x)
    before = reuse.stats()
    other = _est(model, random_state=7).fit(x[::-1].copy(), y[::-1].copy())
    assert reuse.stats()["compiled"] == before["compiled"] + 1  # kept holds the first
    assert other.model_ is not kept.model_
    for a, b in zip(weights, _weights(kept)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(pred, kept.predict(x))


def test_refit_and_partial_fit_compile_once(data, fresh_pool):
    x, y = data
    est = _est(lstm_model())
    est.fit(x, y)
    compiled = reuse.stats()["compiled"]
    est.fit(x, y)  # a refit recycles its own previous fit
    for _ in range(3):
        est.partial_fit(x, y)  # warm: the same model, the same compiled steps
    assert reuse.stats()["compiled"] == compiled
    assert est.n_epochs_ == 2 + 3


@pytest.mark.slow  # the pool's logic (reuse.py), above the compiled step: make test-full on
@pytest.mark.backend  # both backends (make test's 10 minutes; the other reuse cases stay)
def test_other_settings_compile_anew(data, fresh_pool):
    x, y = data
    model = lstm_model()
    _est(model).fit(x, y)
    compiled = reuse.stats()["compiled"]
    Estimator(
        model,
        "mse",
        keras.optimizers.Adam(beta_1=0.8),
        epochs=1,
        batch_size=8,
        seq_len=5,
        verbose=0,
    ).fit(x, y)  # beta_1 is compiled in
    _est(model, seq_len=6).fit(x, y)
    _est(lstm_model(units=9)).fit(x, y)
    assert reuse.stats()["compiled"] == compiled + 3
    # use_cudnn is not in the config, but a GPU compiles another program for it
    other = keras.models.clone_model(model)
    other.layers[0].use_cudnn = False
    _est(other).fit(x, y)
    assert reuse.stats()["compiled"] == compiled + 4


@pytest.mark.tf_in_full  # the pool's logic (reuse.py), above the compiled step
def test_grid_search_compiles_once_per_architecture(data, fresh_pool):
    x, y = data
    grid = GridSearchCV(
        _est(lstm_model(), epochs=1),
        {"optimizer__learning_rate": [1e-3, 3e-3], "shuffle": [True, False]},
        cv=3,
    )
    before = reuse.stats()
    grid.fit(x, y)  # 12 fits and the refit
    assert reuse.stats()["compiled"] == before["compiled"] + 1
    assert reuse.stats()["reused"] == before["reused"] + 12
