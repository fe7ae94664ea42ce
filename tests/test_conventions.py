"""Keras and scikit-learn conventions, honoured exactly (issue 15).

Metrics resolve as ``compile`` resolves them, epochs continue across warm fits as in
``model.fit(initial_epoch=...)``, ``__init__`` stores what it is given (scikit-learn's contract,
checked with scikit-learn's own checks), the architecture can be tuned through a
model-building function, and constructor callbacks survive ``clone``.
"""

import keras
import numpy as np
import pytest
from conftest import split_between_backends
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.utils import estimator_checks as checks

from keraseq import Classifier, Estimator


def gru(units=4, features=2, outputs=1, per_series=False, softmax=False, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((None, features)),
            keras.layers.GRU(units, return_sequences=not per_series),
            keras.layers.Dense(outputs, activation="softmax" if softmax else None),
        ]
    )


def data(n=24, t=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, t, 2)).astype("float32")
    return x, (np.cumsum(x[..., :1], 1) / 3).astype("float32")


# ---------------------------------------------------------------------------------- metrics
@pytest.mark.parametrize("name", split_between_backends({"accuracy": "accuracy", "acc": "acc"}))
def test_accuracy_resolves_like_compile_and_logs_what_model_fit_logs(name):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 8, 2)).astype("float32")
    labels = (x[:, -1, 0] > 0).astype(int)
    model = gru(per_series=True, outputs=2, softmax=True)
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    reference.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy", metrics=[name])
    history = reference.fit(x, labels, batch_size=8, epochs=2, shuffle=False, verbose=0).history
    clf = Classifier(
        model,
        optimizer=keras.optimizers.SGD(0.1),
        epochs=2,
        batch_size=8,
        shuffle=False,
        verbose=0,
        metrics=[name],
    ).fit(x, labels)
    for key in ("loss", name):
        np.testing.assert_allclose(clf.history_[key], history[key], rtol=1e-6, atol=1e-7)
    assert clf.history_[name][-1] > 0.0  # was Keras's exact-match Accuracy: always 0.0


# ----------------------------------------------------------------------------------- epochs
def test_partial_fit_continues_the_epoch_count_for_schedulers_and_history():
    x, y = data()
    seen = []
    schedule = keras.callbacks.LearningRateScheduler(
        lambda epoch: seen.append(epoch) or 1e-2 * 0.5**epoch
    )
    est = Estimator(
        gru(), "mse", keras.optimizers.SGD(1e-2), batch_size=8, verbose=0, callbacks=[schedule]
    )
    for _ in range(3):
        est.partial_fit(x, y)
    assert seen == [0, 1, 2]
    assert est.history_["learning_rate"] == pytest.approx([1e-2, 5e-3, 2.5e-3])
    assert len(est.history_["loss"]) == 3 and est.n_epochs_ == 3
    assert float(est.optimizer_.learning_rate.numpy()) == pytest.approx(2.5e-3)


@pytest.mark.tf_in_full
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
@pytest.mark.parametrize(
    "check",
    [
        checks.check_get_params_invariance,
        checks.check_set_params,
        checks.check_parameters_default_constructible,
        checks.check_no_attributes_set_in_init,
    ],
    ids=lambda c: getattr(c, "__name__", str(c)),
)
def test_scikit_learn_contract_checks(cls, check):
    # run explicitly: the 3-D input tag makes parametrize_with_checks skip them
    check(cls.__name__, cls(gru(), verbose=0))


def test_fit_does_not_overwrite_parameters():
    """scikit-learn's check_estimators_overwrite_params, on (N, T, F) data."""
    x, y = data()
    est = Estimator(
        gru(),
        "mse",
        "adam",
        dict(epochs=2, batch_size=8, seq_len=3),
        verbose=0,
        metrics=["mae"],
        callbacks=[keras.callbacks.TerminateOnNaN()],
    )
    before = dict(est.get_params(deep=False).items())
    est.fit(x, y)
    after = est.get_params(deep=False)
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert after[key] is value, key


@pytest.mark.tf_in_full
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

    est = Estimator(
        build,
        "mse",
        "adam",
        epochs=2,
        batch_size=8,
        seq_len=3,
        verbose=0,
        callbacks=[Count()],
        model__units=2,
    )
    grid = [{"model__units": [6], "model__depth": [2]}, {"model__units": [2], "model__depth": [1]}]
    search = GridSearchCV(est, grid, cv=2).fit(x, y)
    best = search.best_estimator_
    assert best.model_.layers[0].units == search.best_params_["model__units"]
    assert len(best.model_.layers) == search.best_params_["model__depth"] + 1
    assert Count.epochs == 2 * (2 * 2 + 1)  # every fit of every clone ran the callback
    assert est.get_params()["model__units"] == 2 and est.callbacks[0].__class__ is Count
    with pytest.raises(TypeError, match=r"\['units'\].*model__<name>"):
        Estimator(build, units=3).fit(x, y)  # stored by __init__ (sklearn), refused by fit
    with pytest.raises(ValueError, match="model__ parameters.*function"):
        Estimator(build(), verbose=0, model__units=3).fit(x, y)


@pytest.mark.tf_in_full
# ----------------------------------------------------------------------------- class weights
@pytest.mark.parametrize("per_step", [False, True], ids=["per_series", "per_step"])
@pytest.mark.parametrize("class_weight", ["balanced", {"a": 3.0, "b": 0.5}])
def test_class_weight_equals_the_explicit_sample_weight(per_step, class_weight):
    from sklearn.utils.class_weight import compute_class_weight

    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 7, 2)).astype("float32")
    labels = np.where(x[..., 0] > 0.6, "a", np.where(x[..., 0] < -0.6, "c", "b"))
    if not per_step:
        labels = labels[:, -1]
    classes = np.unique(labels)
    per_class = (
        compute_class_weight("balanced", classes=classes, y=labels.ravel())
        if class_weight == "balanced"
        else np.array([class_weight.get(c, 1.0) for c in classes])
    )
    w = rng.uniform(0.5, 1.5, size=30).astype("float32")
    explicit = per_class[np.searchsorted(classes, labels)] * (w[:, None] if per_step else w)
    kw = dict(
        optimizer=keras.optimizers.Adam(0.01),
        epochs=2,
        batch_size=8,
        seq_len=3,
        random_state=0,
        verbose=0,
    )
    model = lambda: gru(per_series=not per_step, outputs=3, softmax=True)
    a = Classifier(model(), class_weight=class_weight, **kw).fit(x, labels, sample_weight=w)
    b = Classifier(model(), **kw).fit(x, labels, sample_weight=explicit)
    for wa, wb in zip(a.model_.get_weights(), b.model_.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=0, atol=1e-6)
    assert a.get_params()["class_weight"] == class_weight
    with pytest.raises(ValueError, match=r"`class_weight` names classes \['z'\]"):
        Classifier(model(), class_weight={"z": 2.0}, **kw).fit(x, labels)


@pytest.mark.tf_in_full
# ------------------------------------------------------------------------------ validation
def test_validation_split_is_the_last_fraction_like_keras(tmp_path):
    h5py = pytest.importorskip("h5py")
    x, y = data(n=20)
    kw = dict(epochs=2, batch_size=4, seq_len=3, random_state=0, verbose=0)
    a = Estimator(gru(), "mse", "adam", validation_split=0.25, **kw).fit(x, y)
    b = Estimator(gru(), "mse", "adam", **kw).fit(x[:15], y[:15], validation_data=(x[15:], y[15:]))
    assert a.history_ == b.history_ and "val_loss" in a.history_
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"], f["y"] = x, y
    with h5py.File(tmp_path / "d.h5", "r") as f:  # split lazily, same result
        c = Estimator(gru(), "mse", "adam", validation_split=0.25, **kw).fit(f["x"], f["y"])
    assert c.history_ == a.history_
    with pytest.raises(ValueError, match="validation_split"):
        Estimator(gru(), validation_split=1.5, verbose=0).fit(x, y)


@pytest.mark.slow
def test_time_split_trains_on_the_past_and_scores_the_future():
    from sklearn.model_selection import cross_val_score

    from keraseq import TimeSplit

    x, y = data(n=8, t=40)
    cv = TimeSplit(n_splits=3, horizon=8)
    xf, yf = cv.wrap(x, y)
    folds = list(cv.split(xf))
    assert [(xf[tr].shape[1], xf[te].shape[1], xf[te].keraseq_score_from) for tr, te in folds] == [
        (16, 24, 16),
        (24, 32, 24),
        (32, 40, 32),
    ]
    scores = cross_val_score(
        Estimator(
            gru(), "mse", "adam", epochs=1, batch_size=4, seq_len=4, random_state=0, verbose=0
        ),
        xf,
        yf,
        cv=cv,
    )
    # each fold's score is R² on its future steps only, the past run through for the state
    tr, te = folds[0]
    est = Estimator(
        gru(), "mse", "adam", epochs=1, batch_size=4, seq_len=4, random_state=0, verbose=0
    ).fit(xf[tr], yf[tr])
    pred = est.predict(x[:, :24])
    from sklearn.metrics import r2_score

    expected = r2_score(y[:, 16:24].reshape(-1, 1), pred[:, 16:].reshape(-1, 1))
    assert scores[0] == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="per time step"):
        cv.wrap(x, y[:, 0])
    # GridSearchCV's refit trains on all of every series
    search = GridSearchCV(
        Estimator(
            gru(), "mse", "adam", epochs=1, batch_size=4, seq_len=4, random_state=0, verbose=0
        ),
        {"seq_len": [4, 8]},
        cv=cv,
    ).fit(xf, yf)
    assert search.best_estimator_.predict(x).shape == y.shape


@pytest.mark.tf_in_full
def test_dict_inputs_and_outputs_keyed_by_the_models_names():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(12, 6, 2)).astype("float32")
    b = rng.normal(size=(12, 6, 3)).astype("float32")
    keras.utils.set_random_seed(0)
    ia, ib = keras.Input((None, 2), name="prices"), keras.Input((None, 3), name="volumes")
    h = keras.layers.GRU(4, return_sequences=True)(keras.layers.Concatenate()([ia, ib]))
    model = keras.Model(
        [ia, ib], [keras.layers.Dense(1, name="level")(h), keras.layers.Dense(2, name="spread")(h)]
    )
    y1, y2 = a[..., :1], b[..., :2]
    kw = dict(batch_size=4, seq_len=3, random_state=0, verbose=0)
    by_tuple = Estimator(model, "mse", "adam", **kw).fit((a, b), (y1, y2))
    by_dict = Estimator(model, "mse", "adam", **kw).fit(
        {"volumes": b, "prices": a}, {"spread": y2, "level": y1}
    )
    for wa, wb in zip(by_tuple.model_.get_weights(), by_dict.model_.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    for pa, pb in zip(by_tuple.predict((a, b)), by_dict.predict({"prices": a, "volumes": b})):
        np.testing.assert_array_equal(pa, pb)
    with pytest.raises(ValueError, match=r"inputs are \['prices', 'volumes'\] \(missing"):
        by_dict.predict({"prices": a})


@pytest.mark.tf_in_full
def test_pydataset_and_list_of_batches_equal_the_array_path():
    x, y = data(n=22)
    w = np.linspace(0.5, 1.5, 22).astype("float32")

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epochs_seen = 0

        def __len__(self):
            return 3

        def __getitem__(self, i):
            rows = slice(8 * i, 8 * i + 8)  # 8, 8, 6 series: the array path's minibatches
            return x[rows], y[rows], w[rows]

        def on_epoch_end(self):
            self.epochs_seen += 1

    kw = dict(
        epochs=2, batch_size=8, seq_len=4, shuffle=False, random_state=0, verbose=0, metrics=["mae"]
    )
    arrays = Estimator(gru(), "mse", "adam", **kw).fit(x, y, sample_weight=w)
    ds = Batches()
    batches = Estimator(gru(), "mse", "adam", **kw).fit(ds)
    as_list = Estimator(gru(), "mse", "adam", **kw).fit([ds[i] for i in range(3)])
    for other in (batches, as_list):
        for a, b in zip(arrays.model_.get_weights(), other.model_.get_weights()):
            np.testing.assert_array_equal(a, b)
        assert other.history_ == arrays.history_
    assert ds.epochs_seen == 2
    # (the same rows per block: XLA:CPU's results may differ in the last bit with the row count)
    np.testing.assert_array_equal(batches.predict(ds), arrays.predict(x, batch_size=8))
    with pytest.raises(ValueError, match="y=None"):
        Estimator(gru(), verbose=0).fit(ds, y)


def test_channels_first_layout_of_sktime_and_aeon():
    from keraseq import from_channels_first

    x = np.arange(2 * 3 * 5, dtype="float32").reshape(2, 3, 5)  # (N, channels, T)
    out = from_channels_first(x)
    assert out.shape == (2, 5, 3) and out[1, 4, 2] == x[1, 2, 4]
    ragged = from_channels_first([x[0, :, :2], x[1]])
    assert [a.shape for a in ragged] == [(2, 3), (5, 3)]
    with pytest.raises(ValueError, match=r"expected \(N, channels, T\)"):
        from_channels_first(x[0])
