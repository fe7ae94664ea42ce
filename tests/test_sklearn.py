"""scikit-learn compatibility on 3-D sequence data: clone, search, CV, pickling, Classifier."""
import pickle
import warnings

import joblib
import keras
import numpy as np
import pytest
import sklearn.utils.estimator_checks as checks
from sklearn.base import clone, is_classifier, is_regressor
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import (GridSearchCV, RandomizedSearchCV, StratifiedKFold,
                                     cross_val_score, cross_validate)
from sklearn.utils.estimator_checks import parametrize_with_checks

from keraseq import Classifier, Estimator, SliceTuple


def regressor(**kw):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, 2)), keras.layers.GRU(4, return_sequences=True),
                              keras.layers.Dense(1)])
    params = dict(epochs=2, batch_size=8, seq_len=4, verbose=0, jit_compile=False,
                  random_state=0, shuffle=False)
    params.update(kw)
    return Estimator(model, "mse", keras.optimizers.Adam(0.01), **params)


def classifier(per_step=False, **kw):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, 2)),
                              keras.layers.GRU(6, return_sequences=per_step),
                              keras.layers.Dense(3, activation="softmax")])
    params = dict(epochs=6, batch_size=8, seq_len=6, verbose=0, jit_compile=False,
                  random_state=0)
    params.update(kw)
    return Classifier(model, optimizer=keras.optimizers.Adam(0.03), **params)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(36, 12, 2)).astype("float32")
    y = (x[..., :1].cumsum(1) / 3).astype("float32")
    score = x[:, :, 0].sum(1)
    labels = np.array(["low", "mid", "high"])[np.digitize(score, np.quantile(score, [1 / 3, 2 / 3]))]
    return x, y, labels


@pytest.mark.backend
def test_clone_keeps_params_and_initial_weights(data):
    x, y, _ = data
    est = Estimator(regressor().model, "mse", "adam", dict(epochs=3, batch_size=5, seq_len=4),
                    verbose=0, jit_compile=False, random_state=1).fit(x, y)
    copy = clone(est)
    params, copied = est.get_params(deep=False), copy.get_params(deep=False)
    for key in ("epochs", "batch_size", "seq_len", "spec", "loss", "verbose"):
        assert copied[key] == params[key], key
    assert copied["epochs"] is None and copied["spec"]["epochs"] == 3  # stored as given
    assert copy._resolved()["epochs"] == 3 and copy._resolved()["seq_len"] == 4  # from spec
    assert not hasattr(copy, "model_")
    for a, b in zip(copy.model.get_weights(), est.model.get_weights()):
        np.testing.assert_array_equal(a, b)  # every CV fold starts from the same weights
    a = copy.fit(x, y).model_.get_weights()
    b = clone(est).fit(x, y).model_.get_weights()
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_nested_optimizer_params():
    est = regressor()
    params = est.get_params(deep=True)
    assert params["optimizer__learning_rate"] == pytest.approx(0.01)
    old = est.optimizer
    est.set_params(optimizer__learning_rate=0.2, seq_len=7)
    assert est.optimizer is not old and float(old.learning_rate) == pytest.approx(0.01)
    assert est.get_params()["optimizer__learning_rate"] == pytest.approx(0.2)
    assert est.seq_len == 7
    with pytest.raises(ValueError, match="Invalid optimizer parameter"):
        est.set_params(optimizer__nope=1)
    with pytest.raises(ValueError, match="Invalid parameter 'nope'"):
        est.set_params(nope=1)


def test_grid_search_over_seq_len_and_learning_rate_refits(data):
    x, y, _ = data
    grid = {"seq_len": [3, 12], "optimizer__learning_rate": [0.001, 0.05]}
    search = GridSearchCV(regressor(epochs=3), grid, cv=2).fit(x, y)
    assert set(search.best_params_) == set(grid)
    scores = search.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores)) and search.best_score_ == scores.max()
    assert search.best_params_["optimizer__learning_rate"] == 0.05  # 0.001 barely moves
    assert search.best_estimator_.predict(x).shape == y.shape  # refitted on everything
    rs = RandomizedSearchCV(regressor(), {"seq_len": [2, 4, 6]}, n_iter=2, cv=2,
                            random_state=0).fit(x, y)
    assert rs.best_params_["seq_len"] in (2, 4, 6)


def test_cross_validation_on_3d_and_multi_input_data(data):
    x, y, _ = data
    scores = cross_val_score(regressor(), x, y, cv=3)
    assert scores.shape == (3,) and np.all(np.isfinite(scores))
    result = cross_validate(regressor(), x, y, cv=2, return_train_score=True)
    assert np.all(np.isfinite(result["test_score"])) and np.all(np.isfinite(result["train_score"]))
    # two inputs: a SliceTuple is split by series like one array
    keras.utils.set_random_seed(0)
    a, b = keras.Input((None, 2)), keras.Input((None, 1))
    h = keras.layers.GRU(4, return_sequences=True)(keras.layers.Concatenate()([a, b]))
    two = Estimator(keras.Model([a, b], keras.layers.Dense(1)(h)), "mse", "adam", epochs=1,
                    batch_size=8, seq_len=4, verbose=0, jit_compile=False)
    scores = cross_val_score(two, SliceTuple(x, x[..., :1] * 2), y, cv=3)
    assert np.all(np.isfinite(scores))


def test_fitted_attributes_tags_and_unfitted_errors(data):
    x, y, _ = data
    est = regressor()
    assert is_regressor(est) and not is_classifier(est)
    tags = est.__sklearn_tags__()
    assert tags.input_tags.three_d_array and not tags.input_tags.two_d_array
    with pytest.raises(NotFittedError, match="not fitted yet"):
        est.predict(x)
    assert est.fit(x, y) is est
    assert est.n_features_in_ == 2 and est.n_outputs_ == 1 and est.__sklearn_is_fitted__()
    assert est.score(x, y) == pytest.approx(
        1 - ((est.predict(x) - y) ** 2).sum() / ((y - y.mean()) ** 2).sum(), rel=1e-6)


def test_partial_fit_and_warm_start(data):
    x, y, _ = data
    twice = regressor(epochs=1)
    twice.partial_fit(x, y)
    twice.partial_fit(x, y)
    assert len(twice.history_["loss"]) == 2
    once = regressor(epochs=2).fit(x, y)
    for a, b in zip(twice.model_.get_weights(), once.model_.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(twice.history_["loss"], once.history_["loss"], rtol=1e-6)
    warm = regressor(epochs=1, warm_start=True)
    warm.fit(x, y).fit(x, y)
    for a, b in zip(warm.model_.get_weights(), once.model_.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    cold = regressor(epochs=1)
    first = [w.copy() for w in cold.fit(x, y).model_.get_weights()]
    for a, b in zip(cold.fit(x, y).model_.get_weights(), first):
        np.testing.assert_array_equal(a, b)  # without warm_start, fit starts over


@pytest.mark.parametrize("dump", [pytest.param("pickle", marks=pytest.mark.backend), "joblib"])
def test_pickle_round_trip(data, dump, tmp_path):
    x, y, _ = data
    est = regressor().fit(x, y)
    est.predict(x[:, :7])  # keep streaming states
    if dump == "pickle":
        loaded = pickle.loads(pickle.dumps(est))
    else:
        joblib.dump(est, tmp_path / "e.joblib")
        loaded = joblib.load(tmp_path / "e.joblib")
    assert loaded.get_params(deep=False)["seq_len"] == 4
    assert np.abs(loaded.predict(x[:, 7:], reset=False) - est.predict(x[:, 7:], reset=False)).max() == 0
    assert np.abs(loaded.predict(x) - est.predict(x)).max() == 0
    assert est.predict(x).shape == y.shape  # the original still works after being pickled
    # the optimizer state travelled too: continuing gives the same weights
    loaded.set_params(warm_start=True).fit(x, y)
    est.set_params(warm_start=True).fit(x, y)
    for a, b in zip(loaded.model_.get_weights(), est.model_.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_classifier_with_string_labels_in_stratified_cv(data):
    x, _, labels = data
    clf = classifier()
    assert is_classifier(clf)
    scores = cross_val_score(clf, x, labels, cv=StratifiedKFold(3))
    assert np.all((scores >= 0) & (scores <= 1))
    clf.fit(x, labels)
    assert list(clf.classes_) == ["high", "low", "mid"]
    proba = clf.predict_proba(x)
    assert proba.shape == (36, 3)
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-5)
    pred = clf.predict(x)
    assert pred.dtype.kind == "U" and set(pred) <= set(labels)
    np.testing.assert_array_equal(pred, clf.classes_[proba.argmax(1)])
    assert clf.score(x, labels) == pytest.approx(np.mean(pred == labels))
    assert clf.score(x, labels) > 0.6  # well above chance (1/3)
    assert clf.score(x, np.full(36, "other")) == 0.0  # unknown labels are misses
    with pytest.raises(ValueError, match="not seen in fit"):
        clf.partial_fit(x, np.full(36, "other"))


def test_classifier_per_time_step_labels(data):
    x, _, _ = data
    step_labels = np.where(x[..., 0] > 0, 1, 0) + np.where(x[..., 1] > 1, 1, 0)  # 0, 1, 2
    clf = classifier(per_step=True).fit(x, step_labels)
    assert clf.predict_proba(x).shape == (36, 12, 3)
    pred = clf.predict(x)
    assert pred.shape == (36, 12)
    assert clf.score(x, step_labels) == pytest.approx(np.mean(pred == step_labels))
    assert clf.score(x, step_labels) > 0.6


# --- scikit-learn's own checks ---------------------------------------------------------------
# scikit-learn skips every data check for an estimator whose tags say it takes 3-D, not 2-D,
# input, so parametrize_with_checks runs only what applies; we add the API checks that need no
# data, and assert that the 2-D data checks fail for exactly the documented reason.
NOT_APPLICABLE = {
    name: "fits on 2-D X (n_samples, n_features); keraseq needs (N, T, F) sequences"
    for name in ("check_estimators_overwrite_params", "check_dont_overwrite_parameters",
                 "check_estimators_pickle", "check_n_features_in", "check_fit_check_is_fitted",
                 "check_fit2d_1sample")
}
API_CHECKS = ("check_no_attributes_set_in_init", "check_get_params_invariance",
              "check_set_params", "check_parameters_default_constructible",
              "check_estimator_repr", "check_estimator_cloneable", "check_valid_tag_types",
              "check_estimators_unfitted", "check_mixin_order",
              "check_do_not_raise_errors_in_init_or_set_params", "check_estimator_sparse_tag",
              "check_requires_y_none")


@parametrize_with_checks([regressor(), classifier()],
                         expected_failed_checks=lambda est: NOT_APPLICABLE)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


@pytest.mark.parametrize("make", [regressor, classifier])
def test_sklearn_api_checks(make):
    for name in API_CHECKS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            getattr(checks, name)(type(make()).__name__, make())


@pytest.mark.parametrize("name", sorted(NOT_APPLICABLE))
def test_listed_checks_fail_only_because_of_2d_input(name):
    # (check_fit2d_1sample re-raises our ValueError as an AssertionError quoting it)
    with pytest.raises((ValueError, AssertionError), match=r"rank 2\); expected \(N, T, F\)"):
        getattr(checks, name)("Estimator", regressor())
