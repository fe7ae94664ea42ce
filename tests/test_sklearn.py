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
from sklearn.model_selection import (
    GridSearchCV,
    RandomizedSearchCV,
    StratifiedKFold,
    cross_val_score,
    cross_validate,
)

from keraseq import Classifier, Estimator, SliceTuple


def regressor(**kw):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((None, 2)), keras.layers.GRU(4, return_sequences=True), keras.layers.Dense(1)]
    )
    params = dict(
        epochs=2,
        batch_size=8,
        seq_len=4,
        verbose=0,
        jit_compile=False,
        random_state=0,
        shuffle=False,
    )
    params.update(kw)
    return Estimator(model, "mse", keras.optimizers.Adam(0.01), **params)


def classifier(per_step=False, **kw):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((None, 2)),
            keras.layers.GRU(6, return_sequences=per_step),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    params = dict(epochs=6, batch_size=8, seq_len=6, verbose=0, jit_compile=False, random_state=0)
    params.update(kw)
    return Classifier(model, optimizer=keras.optimizers.Adam(0.03), **params)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(36, 12, 2)).astype("float32")
    y = (x[..., :1].cumsum(1) / 3).astype("float32")
    score = x[:, :, 0].sum(1)
    labels = np.array(["low", "mid", "high"])[
        np.digitize(score, np.quantile(score, [1 / 3, 2 / 3]))
    ]
    return x, y, labels


@pytest.mark.tf_in_full
@pytest.mark.backend
def test_clone_keeps_params_and_initial_weights(data):
    x, y, _ = data
    est = Estimator(
        regressor().model,
        "mse",
        "adam",
        dict(epochs=3, batch_size=5, seq_len=4),
        verbose=0,
        jit_compile=False,
        random_state=1,
    ).fit(x, y)
    copy = clone(est)
    params, copied = est.get_params(deep=False), copy.get_params(deep=False)
    for key in ("epochs", "batch_size", "seq_len", "spec", "loss", "verbose"):
        assert copied[key] == params[key], key
    assert copied["epochs"] is None and copied["spec"]["epochs"] == 3  # stored as given
    assert copy._resolved().epochs == 3 and copy._resolved().seq_len == 4  # from spec
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


@pytest.mark.tf_in_full
def test_grid_search_over_seq_len_and_learning_rate_refits(data):
    x, y, _ = data
    grid = {"seq_len": [3, 12], "optimizer__learning_rate": [0.001, 0.05]}
    search = GridSearchCV(regressor(epochs=3), grid, cv=2).fit(x, y)
    assert set(search.best_params_) == set(grid)
    scores = search.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores)) and search.best_score_ == scores.max()
    assert search.best_params_["optimizer__learning_rate"] == 0.05  # 0.001 barely moves
    assert search.best_estimator_.predict(x).shape == y.shape  # refitted on everything
    rs = RandomizedSearchCV(
        regressor(), {"seq_len": [2, 4, 6]}, n_iter=2, cv=2, random_state=0
    ).fit(x, y)
    best = int(np.argmax(rs.cv_results_["mean_test_score"]))
    assert rs.best_params_ == rs.cv_results_["params"][best]
    assert rs.best_params_["seq_len"] in (2, 4, 6)


@pytest.mark.tf_in_full
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
    two = Estimator(
        keras.Model([a, b], keras.layers.Dense(1)(h)),
        "mse",
        "adam",
        epochs=1,
        batch_size=8,
        seq_len=4,
        verbose=0,
        jit_compile=False,
    )
    scores = cross_val_score(two, SliceTuple(x, x[..., :1] * 2), y, cv=3)
    assert np.all(np.isfinite(scores))


@pytest.mark.tf_in_full
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
        1 - ((est.predict(x) - y) ** 2).sum() / ((y - y.mean()) ** 2).sum(), rel=1e-6
    )


@pytest.mark.tf_in_full
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


@pytest.mark.tf_in_full  # both on JAX in make test (2026-12-07 budget)
@pytest.mark.parametrize("dump", ["pickle", "joblib"])
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
    assert (
        np.abs(loaded.predict(x[:, 7:], reset=False) - est.predict(x[:, 7:], reset=False)).max()
        == 0
    )
    assert np.abs(loaded.predict(x) - est.predict(x)).max() == 0
    assert est.predict(x).shape == y.shape  # the original still works after being pickled
    # the optimizer state travelled too: continuing gives the same weights
    loaded.set_params(warm_start=True).fit(x, y)
    est.set_params(warm_start=True).fit(x, y)
    for a, b in zip(loaded.model_.get_weights(), est.model_.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # both backends: make test-full (2026-12-07: make test's 10 minutes)
@pytest.mark.backend
def test_classifier_with_string_labels_in_stratified_cv(data):
    x, _, labels = data
    clf = classifier()
    assert is_classifier(clf)
    cv = cross_validate(
        clf, x, labels, cv=StratifiedKFold(3), return_estimator=True, return_indices=True
    )
    for score, fitted, test in zip(
        cv["test_score"], cv["estimator"], cv["indices"]["test"], strict=True
    ):  # each fold's score is the accuracy of that fold's model on its held-out series
        assert score == pytest.approx(np.mean(fitted.predict(x[test]) == labels[test]))
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


@pytest.mark.tf_in_full
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
# The full suite runs on tabular estimators (a model whose input is (F,), so the tags say 2-D
# data): one builder per estimator, told the data's width by `fit`, as each check brings data
# of its own width. The models compute in float64, as scikit-learn's data are (a float32 model
# predicts float32, as model.predict; see docs/guide/sklearn_checks.md).
def build_rows(n_features_in_, n_outputs_, units=8):
    return keras.Sequential(
        [
            keras.Input((n_features_in_,), dtype="float64"),
            keras.layers.Dense(units, activation="relu", dtype="float64"),
            keras.layers.Dense(n_outputs_, dtype="float64"),
        ]
    )


def build_rows_classifier(n_features_in_, n_classes_, units=8):
    return keras.Sequential(
        [
            keras.Input((n_features_in_,), dtype="float64"),
            keras.layers.Dense(units, activation="relu", dtype="float64"),
            keras.layers.Dense(n_classes_, activation="softmax", dtype="float64"),
        ]
    )


#: The optimizer as its config dict: scikit-learn's check_estimators_overwrite_params compares
#: joblib.hash of every parameter before and after fit, and the hash of a Keras optimizer
#: object changes with Keras's global state (any fit changes it; keraseq trains a copy).
CHECK_PARAMS = dict(
    optimizer={"class_name": "Adam", "config": {"learning_rate": 0.05}},
    epochs=2,
    batch_size=16,
    verbose=0,
    jit_compile=False,
    random_state=0,
)
#: The checks a minibatch SGD learner fails by its nature, with scikit-learn's own reason for
#: its SGD estimators (SGDRegressor, SGDClassifier, Perceptron).
EXPECTED_FAILED = {
    "check_sample_weight_equivalence_on_dense_data": (
        "sample_weight is not equivalent to removing/repeating samples (minibatch SGD: a "
        "weight scales a sample's gradient within its minibatch, a repeat adds a sample to "
        "the minibatches; scikit-learn marks its SGD estimators so)"
    ),
}


def tabular_regressor():
    return Estimator(build_rows, "mse", **CHECK_PARAMS)


def tabular_classifier():
    return Classifier(build_rows_classifier, **CHECK_PARAMS)


#: Run by `make test` (the checks of issue 25's fixes and one training check per estimator);
#: `make test-full` runs every check (the whole suite takes ~3 min on 2 cores).
FAST_CHECKS = {
    "check_estimator_cloneable",
    "check_estimators_empty_data_messages",
    "check_complex_data",
    "check_estimator_sparse_array",
    "check_estimator_sparse_matrix",
    "check_estimator_sparse_tag",
    "check_all_zero_sample_weights_error",
    "check_dict_unchanged",
    "check_fit2d_predict1d",
    "check_n_features_in_after_fitting",
    "check_fit1d",
    "check_requires_y_none",
    "check_regressors_train",
    "check_classifiers_train",
    "check_estimators_unfitted",
    "check_no_attributes_set_in_init",
}


def _check_cases():
    """scikit-learn's checks as parametrize_with_checks yields them, the ones outside
    FAST_CHECKS marked slow; expected failures marked xfail (strict) with their reason."""
    from functools import partial

    from sklearn.utils.estimator_checks import estimator_checks_generator

    cases = []
    for est in (tabular_regressor(), tabular_classifier()):
        for item in estimator_checks_generator(
            est, expected_failed_checks=EXPECTED_FAILED, mark="xfail", xfail_strict=True
        ):
            values, marks = (
                (item.values, list(item.marks)) if hasattr(item, "marks") else (item, [])
            )
            check = values[1]
            name = check.func.__name__ if isinstance(check, partial) else check.__name__
            options = dict((check.keywords if isinstance(check, partial) else {}).items())
            if name not in FAST_CHECKS or options:
                marks.append(pytest.mark.slow)
            label = name + (
                "(" + ",".join(f"{k}={v}" for k, v in options.items()) + ")" if options else ""
            )
            cases.append(pytest.param(*values, marks=marks, id=f"{type(est).__name__}-{label}"))
    return cases


@pytest.mark.parametrize("estimator, check", _check_cases())
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        check(estimator)


# Sequence estimators (input (None, F)): the tags say 3-D data, so scikit-learn skips its data
# checks, which build 2-D X; the API checks that need no data run here, and the 2-D data
# checks fail for exactly the documented reason.
NOT_APPLICABLE = (
    "check_estimators_overwrite_params",
    "check_dont_overwrite_parameters",
    "check_estimators_pickle",
    "check_n_features_in",
    "check_fit_check_is_fitted",
    "check_fit2d_1sample",
)
API_CHECKS = (
    "check_no_attributes_set_in_init",
    "check_get_params_invariance",
    "check_set_params",
    "check_parameters_default_constructible",
    "check_estimator_repr",
    "check_estimator_cloneable",
    "check_valid_tag_types",
    "check_estimators_unfitted",
    "check_mixin_order",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_estimator_sparse_tag",
    "check_requires_y_none",
)


@pytest.mark.tf_in_full
@pytest.mark.parametrize("make", [regressor, classifier])
def test_sklearn_api_checks_on_sequence_estimators(make):
    tags = make().__sklearn_tags__()
    assert tags.input_tags.three_d_array and not tags.input_tags.two_d_array
    for name in API_CHECKS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            getattr(checks, name)(type(make()).__name__, make())


@pytest.mark.parametrize("name", sorted(NOT_APPLICABLE))
def test_2d_checks_on_a_sequence_model_fail_only_because_of_2d_input(name):
    # (check_fit2d_1sample re-raises our ValueError as an AssertionError quoting it)
    with pytest.raises((ValueError, AssertionError), match=r"rank 2\); expected \(N, T, F\)"):
        getattr(checks, name)("Estimator", regressor())


# --- tabular data, the builder's data facts, scikit-learn's input rules ----------------------
def rows_model(features=3, units=5, outputs=1):
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [keras.Input((features,)), keras.layers.Dense(units, "tanh"), keras.layers.Dense(outputs)]
    )


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 3)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5]) + 0.1).astype("float32")
    return x, y


@pytest.mark.backend
def test_tabular_rows_train_as_the_same_model_on_series_of_one_step(rows):
    x, y = rows
    params = dict(epochs=3, batch_size=8, verbose=0, shuffle=False, jit_compile=False)
    est = Estimator(rows_model(), "mse", "adam", **params).fit(x, y)
    tags = est.__sklearn_tags__()
    assert tags.input_tags.two_d_array and not tags.input_tags.three_d_array
    pred = est.predict(x)
    assert pred.shape == (40,) and est.n_features_in_ == 3
    # the wrapper adds no weights: the fitted model is the user's, as Keras predicts it
    inner = est.model_.layers[-1]
    np.testing.assert_allclose(pred, inner.predict(x, verbose=0)[:, 0], rtol=1e-6, atol=1e-6)
    # the same as the user reshaping by hand: (N, 1, F) into Reshape -> model, y as (N, 1)
    keras.utils.set_random_seed(1)
    by_hand = keras.Sequential([keras.Input((1, 3)), keras.layers.Reshape((3,)), rows_model()])
    ref = Estimator(by_hand, "mse", "adam", **params).fit(x[:, None, :], y[:, None])
    for a, b in zip(est.model_.get_weights(), ref.model_.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(pred, ref.predict(x[:, None, :])[:, 0])
    assert est.score(x, y) == pytest.approx(
        1 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum(), rel=1e-5
    )
    two = Estimator(rows_model(outputs=2), "mse", "adam", **params).fit(x, np.c_[y, -y])
    assert two.predict(x).shape == (40, 2)  # y (N, 2): predictions (N, 2)


@pytest.mark.tf_in_full
def test_tabular_estimator_saves_and_pickles(rows, tmp_path):
    x, y = rows
    est = Estimator(
        rows_model(), "mse", "adam", epochs=1, batch_size=8, verbose=0, jit_compile=False
    ).fit(x, y)
    loaded = Estimator.load(_save(est, tmp_path / "rows.keras"))
    np.testing.assert_array_equal(loaded.predict(x), est.predict(x))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(est)).predict(x), est.predict(x))


def test_tabular_rows_out_of_core_equal_in_memory(rows, tmp_path):
    import h5py

    x, y = rows
    with h5py.File(tmp_path / "rows.h5", "w") as f:
        f["x"] = x
    params = dict(epochs=1, batch_size=8, verbose=0, shuffle=False, jit_compile=False)
    ref = Estimator(rows_model(), **params).fit(x, y)
    with h5py.File(tmp_path / "rows.h5", "r") as f:
        est = Estimator(rows_model(), **params).fit(f["x"], y)  # read row by row
        np.testing.assert_array_equal(est.predict(f["x"]), ref.predict(x))
    for a, b in zip(est.model_.get_weights(), ref.model_.get_weights()):
        np.testing.assert_array_equal(a, b)


def _save(est, path):
    est.save(path)
    return path


WIDTHS_SEEN = []


def build_from_data(n_features_in_, n_outputs_, units=4):
    WIDTHS_SEEN.append((n_features_in_, n_outputs_))
    return keras.Sequential(
        [
            keras.Input((n_features_in_,)),
            keras.layers.Dense(units, "tanh"),
            keras.layers.Dense(n_outputs_),
        ]
    )


@pytest.mark.tf_in_full
def test_builder_receives_the_data_widths_in_a_search_over_two_widths(rows):
    from sklearn.feature_selection import SelectKBest, f_regression
    from sklearn.pipeline import Pipeline

    x, y = rows
    x = np.c_[x, np.random.default_rng(0).normal(size=(40, 2))].astype("float32")  # F = 5
    net = Estimator(
        build_from_data,
        "mse",
        "adam",
        epochs=2,
        batch_size=8,
        verbose=0,
        jit_compile=False,
        model__units=3,
    )
    pipe = Pipeline([("select", SelectKBest(f_regression)), ("net", net)])
    WIDTHS_SEEN.clear()
    search = GridSearchCV(pipe, {"select__k": [2, 5]}, cv=2).fit(x, y)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    k = search.best_params_["select__k"]
    assert [(2, 1), (2, 1), (5, 1), (5, 1), (k, 1)] == WIDTHS_SEEN  # 2 folds each, refit
    best = search.best_estimator_.named_steps["net"]
    assert best.n_features_in_ == k and best.model_.layers[-1].input_shape == (None, k)
    assert best.model_.layers[-1].layers[0].units == 3  # model__units still reaches it
    # three targets: n_outputs_ is y's width (SciKeras's meaning)
    wide = clone(net).fit(x, np.c_[y, y, y])
    assert WIDTHS_SEEN[-1] == (5, 3) and wide.predict(x).shape == (40, 3)


def test_builder_meta_dict_and_classes(data):
    x, _, labels = data
    seen = {}

    def build(meta, n_classes_, classes_):
        seen.update(meta, n=n_classes_, classes=list(classes_))
        return keras.Sequential(
            [
                keras.Input((None, meta["n_features_in_"])),
                keras.layers.GRU(3),
                keras.layers.Dense(n_classes_, "softmax"),
            ]
        )

    Classifier(build, epochs=1, batch_size=12, verbose=0, jit_compile=False).fit(x, labels)
    assert seen["n"] == 3 and seen["classes"] == ["high", "low", "mid"]
    assert seen["X_shape_"] == (36, 12, 2) and seen["n_features_in_"] == 2
    assert seen["n_outputs_"] == 1 and seen["n_outputs_expected_"] == 1


@pytest.mark.tf_in_full
def test_sklearn_input_rules_in_its_words(data, rows):
    import scipy.sparse

    x, y, _ = data
    est = regressor(epochs=1).fit(x, y)
    with pytest.raises(
        ValueError,
        match=r"X has 3 features, but Estimator is expecting 2 "
        r"features as input",
    ):
        est.predict(np.zeros((4, 12, 3), np.float32))
    with pytest.raises(ValueError, match=r"X has 3 features, but Estimator is expecting 2"):
        est.score(np.zeros((4, 12, 3), np.float32), y[:4])
    with pytest.raises(ValueError, match=r"X has 3 features, but Estimator is expecting 2"):
        est.partial_fit(np.zeros((4, 12, 3), np.float32), y[:4])
    with pytest.raises(ValueError, match=r"Sample weights must contain at least one non-zero"):
        regressor().fit(x, y, sample_weight=np.zeros(36))
    with pytest.raises(ValueError, match=r"Complex data not supported"):
        regressor().fit(x + 1j, y)
    xr, yr = rows
    tab = Estimator(rows_model(), epochs=1, batch_size=8, verbose=0, jit_compile=False)
    with pytest.raises(TypeError, match=r"sparse data is not supported"):
        tab.fit(scipy.sparse.csr_matrix(xr), yr)
    with pytest.raises(
        ValueError,
        match=r"0 feature\(s\) \(shape=\(40, 0\)\) while a "
        r"minimum of 1 is required",
    ):
        tab.fit(xr[:, :0], yr)
    tab.fit(xr, yr)
    with pytest.raises(ValueError, match=r"Reshape your data"):
        tab.predict(xr[0])
    with pytest.raises(ValueError, match=r"X has 2 features, but Estimator is expecting 3"):
        tab.predict(xr[:, :2])


@pytest.mark.tf_in_full
def test_predict_leaves_the_estimators_dict_unchanged_and_streams(data):
    x, y, _ = data
    est = regressor(epochs=1).fit(x, y)
    before = dict(vars(est))
    whole_run = est.predict(x)
    first = est.predict(x[:, :5])
    assert vars(est) == before  # the kept states live in an object that fit created
    rest = est.predict(x[:, 5:], reset=False)  # continues from the states of x[:, :5]
    assert vars(est) == before
    np.testing.assert_allclose(np.concatenate([first, rest], 1), whole_run, atol=1e-5)
    fresh = est.predict(x[:, 5:])  # reset=True: zero states, x alone decides
    assert np.abs(fresh - rest).max() > 1e-3
