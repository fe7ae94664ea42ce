"""Keras and scikit-learn conventions, honoured exactly (issue 15).

Metrics resolve as ``compile`` resolves them, epochs continue across warm fits as in
``model.fit(initial_epoch=...)``, ``__init__`` stores what it is given (scikit-learn's contract,
checked with scikit-learn's own checks), the architecture can be tuned through a
model-building function, and constructor callbacks survive ``clone``.
"""
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.utils import estimator_checks as checks

import keras
from keraseq import Classifier, Estimator


def gru(units=4, features=2, outputs=1, per_series=False, softmax=False, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((None, features)), keras.layers.GRU(units, return_sequences=not per_series),
        keras.layers.Dense(outputs, activation="softmax" if softmax else None)])


def data(n=24, t=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, t, 2)).astype("float32")
    return x, (np.cumsum(x[..., :1], 1) / 3).astype("float32")


# ---------------------------------------------------------------------------------- metrics
@pytest.mark.parametrize("name", ["accuracy", "acc"])
def test_accuracy_resolves_like_compile_and_logs_what_model_fit_logs(name):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 8, 2)).astype("float32")
    labels = (x[:, -1, 0] > 0).astype(int)
    model = gru(per_series=True, outputs=2, softmax=True)
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    reference.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy",
                      metrics=[name])
    history = reference.fit(x, labels, batch_size=8, epochs=2, shuffle=False, verbose=0).history
    clf = Classifier(model, optimizer=keras.optimizers.SGD(0.1), epochs=2, batch_size=8,
                     shuffle=False, verbose=0, metrics=[name]).fit(x, labels)
    for key in ("loss", name):
        np.testing.assert_allclose(clf.history_[key], history[key], rtol=1e-6, atol=1e-7)
    assert clf.history_[name][-1] > 0.0  # was Keras's exact-match Accuracy: always 0.0


# ----------------------------------------------------------------------------------- epochs
def test_partial_fit_continues_the_epoch_count_for_schedulers_and_history():
    x, y = data()
    seen = []
    schedule = keras.callbacks.LearningRateScheduler(
        lambda epoch: seen.append(epoch) or 1e-2 * 0.5 ** epoch)
    est = Estimator(gru(), "mse", keras.optimizers.SGD(1e-2), batch_size=8, verbose=0,
                    callbacks=[schedule])
    for _ in range(3):
        est.partial_fit(x, y)
    assert seen == [0, 1, 2]
    assert est.history_["learning_rate"] == pytest.approx([1e-2, 5e-3, 2.5e-3])
    assert len(est.history_["loss"]) == 3 and est.n_epochs_ == 3
    assert float(est.optimizer_.learning_rate.numpy()) == pytest.approx(2.5e-3)


def test_initial_epoch_has_keras_meaning_and_warm_fits_add_up():
    x, y = data()
    kw = dict(batch_size=8, seq_len=3, random_state=0, verbose=0)
    four = Estimator(gru(), "mse", "adam", epochs=4, **kw).fit(x, y)
    warm = Estimator(gru(), "mse", "adam", epochs=2, warm_start=True, **kw)
    warm.fit(x, y).fit(x, y)
    for a, b in zip(four.model_.get_weights(), warm.model_.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert warm.history_["loss"] == four.history_["loss"] and warm.n_epochs_ == 4
    # fit(epochs=4, initial_epoch=2) after two epochs: epochs 2 and 3, as model.fit
    again = Estimator(gru(), "mse", "adam", epochs=2, warm_start=True, **kw).fit(x, y)
    again.fit(x, y, epochs=4, initial_epoch=2)
    for a, b in zip(four.model_.get_weights(), again.model_.get_weights()):
        np.testing.assert_array_equal(a, b)


# -------------------------------------------------------------------- the estimator contract
def test_explicit_keywords_win_over_spec_resolved_at_fit():
    x, y = data()
    spec = dict(epochs=5, batch_size=8, seq_len=3)
    est = Estimator(gru(), "mse", "adam", spec, epochs=1, verbose=0)
    assert est.epochs == 1 and est.batch_size is None  # stored as given
    est.fit(x, y)
    assert len(est.history_["loss"]) == 1  # epochs=1 was explicit
    assert Estimator(gru(), "mse", "adam", spec, verbose=0).fit(x, y).n_epochs_ == 5
    est.set_params(seq_len=None)
    assert clone(est).get_params()["seq_len"] is None  # used to raise "Cannot clone object"


@pytest.mark.parametrize("cls", [Estimator, Classifier])
@pytest.mark.parametrize("check", [
    checks.check_get_params_invariance, checks.check_set_params,
    checks.check_parameters_default_constructible, checks.check_no_attributes_set_in_init,
], ids=lambda c: getattr(c, "__name__", str(c)))
def test_scikit_learn_contract_checks(cls, check):
    # run explicitly: the 3-D input tag makes parametrize_with_checks skip them
    check(cls.__name__, cls(gru(), verbose=0))


def test_fit_does_not_overwrite_parameters():
    """scikit-learn's check_estimators_overwrite_params, on (N, T, F) data."""
    x, y = data()
    est = Estimator(gru(), "mse", "adam", dict(epochs=2, batch_size=8, seq_len=3), verbose=0,
                    metrics=["mae"], callbacks=[keras.callbacks.TerminateOnNaN()])
    before = {k: v for k, v in est.get_params(deep=False).items()}
    est.fit(x, y)
    after = est.get_params(deep=False)
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert after[key] is value, key


def test_model_builder_parameters_are_searched_and_callbacks_survive_clone():
    x, y = data(n=16)

    def build(units=2, depth=1):
        keras.utils.set_random_seed(0)
        layers = [keras.layers.GRU(units, return_sequences=True) for _ in range(depth)]
        return keras.Sequential([keras.Input((None, 2)), *layers, keras.layers.Dense(1)])

    class Count(keras.callbacks.Callback):
        epochs = 0

        def on_epoch_end(self, epoch, logs=None):
            type(self).epochs += 1

    est = Estimator(build, "mse", "adam", epochs=2, batch_size=8, seq_len=3, verbose=0,
                    callbacks=[Count()], model__units=2)
    search = GridSearchCV(est, {"model__units": [2, 6], "model__depth": [1, 2]}, cv=2).fit(x, y)
    best = search.best_estimator_
    assert best.model_.layers[0].units == search.best_params_["model__units"]
    assert len(best.model_.layers) == search.best_params_["model__depth"] + 1
    assert Count.epochs == 2 * (4 * 2 + 1)  # every fit of every clone ran the callback
    assert est.get_params()["model__units"] == 2 and est.callbacks[0].__class__ is Count
    with pytest.raises(TypeError, match=r"\['units'\].*model__<name>"):
        Estimator(build, units=3).fit(x, y)  # stored by __init__ (sklearn), refused by fit
    with pytest.raises(ValueError, match="model__ parameters.*function"):
        Estimator(build(), verbose=0, model__units=3).fit(x, y)


def test_tensor_inputs_equal_numpy():
    import tensorflow as tf
    x, y = data(n=8)
    a = Estimator(gru(), "mse", "adam", batch_size=4, random_state=0, verbose=0).fit(x, y)
    b = Estimator(gru(), "mse", "adam", batch_size=4, random_state=0, verbose=0).fit(
        tf.constant(x), keras.ops.convert_to_tensor(y))
    for wa, wb in zip(a.model_.get_weights(), b.model_.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    np.testing.assert_array_equal(a.predict(x), b.predict(tf.constant(x)))
