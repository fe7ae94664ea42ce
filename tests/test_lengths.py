"""Unequal-length series: windows change nothing, padding is never learnt from, nor computed.

The invariant: for models of Keras RNN layers, with a ``Masking`` layer or with lengths given
to keraseq, ``predict`` and the loss ``fit`` reports are those of Keras on the whole sequence
(``model.predict`` / ``model.evaluate``; for explicit lengths, each series alone), whatever
``seq_len`` cuts the series into windows.
"""

import os

import keras
import numpy as np
import pytest
from conftest import split_between_backends, stateful_reference
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keraseq import Classifier, Estimator
from keraseq.lengths import grouped_plan, pad_ragged, windows_needed

CELLS = {"LSTM": keras.layers.LSTM, "GRU": keras.layers.GRU, "SimpleRNN": keras.layers.SimpleRNN}


def make_model(cell, depth, per_series, masking, features=3, outputs=2, seed=1):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((None, features))]
    if masking:
        layers.append(keras.layers.Masking(0.0))
    for k in range(depth):
        last = k == depth - 1
        layers.append(CELLS[cell](4, return_sequences=not (last and per_series)))
    layers.append(keras.layers.Dense(outputs))
    return keras.Sequential(layers)


def frozen(model, seq_len, batch_size, **kw):
    """An estimator whose one epoch of fit changes nothing (SGD with rate 0)."""
    return Estimator(
        model,
        "mse",
        keras.optimizers.SGD(0.0),
        epochs=1,
        batch_size=batch_size,
        seq_len=seq_len,
        shuffle=False,
        verbose=0,
        **kw,
    )


def padded_data(rng, n, t, per_series, features=3, outputs=2):
    lengths = rng.integers(1, t + 1, n)
    lengths[rng.integers(n)] = t  # one series fills T
    x = rng.normal(size=(n, t, features)).astype("float32")
    x[np.arange(t)[None, :] >= lengths[:, None]] = 0.0
    y = rng.normal(size=(n, outputs) if per_series else (n, t, outputs)).astype("float32")
    return x, y, lengths


CASE = st.fixed_dictionaries(
    {
        "cell": st.sampled_from(sorted(CELLS)),
        "depth": st.integers(1, 2),
        "per_series": st.booleans(),
        "n": st.integers(1, 6),
        "t": st.integers(2, 13),
        "seed": st.integers(0, 2**16),
        "source": st.sampled_from(["masking", "lengths"]),
    }
)


@pytest.mark.tf_in_full  # make test: on JAX (2026-12-07: make test's 10 minutes)
@pytest.mark.property
@settings(
    max_examples=int(os.environ.get("KERASEQ_LENGTHS_EXAMPLES", "2")),  # test-full: 8
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(case=CASE, data=st.data())
def test_windows_equal_the_whole_sequence(case, data):
    rng = np.random.default_rng(case["seed"])
    n, t, per_series = case["n"], case["t"], case["per_series"]
    seq_len = data.draw(st.integers(1, t), label="seq_len")
    batch = data.draw(st.integers(1, n), label="batch_size")
    x, y, lengths = padded_data(rng, n, t, per_series)
    masking = case["source"] == "masking"
    model = make_model(case["cell"], case["depth"], per_series, masking)
    if masking:
        # Keras's own answer on the whole padded sequence.
        ref = model.predict(x, verbose=0)
        keras_model = keras.models.clone_model(model)
        keras_model.set_weights(model.get_weights())
        keras_model.compile(loss="mse")
        ref_loss = keras_model.evaluate(x, y, batch_size=batch, verbose=0)
        est = frozen(model, seq_len, batch).fit(x, y)
        pred = est.predict(x)
        np.testing.assert_allclose(pred, ref, rtol=0, atol=1e-5)  # padded steps included
        assert abs(est.history_["loss"][0] - ref_loss) < 1e-5 * max(1, ref_loss)
        # Streaming: the second chunk continues each series from its last real step.
        cut = data.draw(st.integers(1, t - 1), label="cut")
        first = est.predict(x[:, :cut])
        second = est.predict(x[:, cut:], reset=False)
        joined = np.concatenate([first, second], 1) if not per_series else second
        np.testing.assert_allclose(joined, ref, rtol=0, atol=1e-5)
    else:
        # Lengths given to keraseq (a ragged list): each series alone is the reference.
        xs = [x[i, : lengths[i]] for i in range(n)]
        ys = y if per_series else [y[i, : lengths[i]] for i in range(n)]
        refs = [model.predict(a[None], verbose=0)[0] for a in xs]
        est = frozen(model, seq_len, batch).fit(xs, ys)
        pred = est.predict(xs)
        for k in range(n):
            np.testing.assert_allclose(pred[k], refs[k], rtol=0, atol=1e-5)
        # Keras's rule for the logged loss: per minibatch the mean over its real elements,
        # then the mean over minibatches weighted by their number of series.
        errors = [np.mean((r - yy) ** 2, -1) for r, yy in zip(refs, ys)]
        batches = [range(k, min(n, k + batch)) for k in range(0, n, batch)]
        ref_loss = (
            sum(
                len(b) * np.concatenate([np.atleast_1d(errors[i]) for i in b]).mean()
                for b in batches
            )
            / n
        )
        assert abs(est.history_["loss"][0] - ref_loss) < 1e-5 * max(1, ref_loss)


@pytest.mark.parametrize(
    "per_series", split_between_backends({"per_step": False, "per_series": True})
)
def test_whole_sequence_fit_equals_keras_fit_with_masking(per_series):
    """seq_len=None: keraseq's updates are model.fit's, the masked loss included."""
    rng = np.random.default_rng(3)
    x, y, _ = padded_data(rng, 12, 9, per_series)
    model = make_model("GRU", 1, per_series, True)
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    reference.compile(loss="mse", optimizer=keras.optimizers.Adam(0.01))
    reference.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    est = Estimator(
        model,
        "mse",
        keras.optimizers.Adam(0.01),
        epochs=2,
        batch_size=4,
        seq_len=None,
        shuffle=False,
        verbose=0,
    ).fit(x, y)
    for a, b in zip(est.model_.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("cell", ["LSTM", pytest.param("GRU", marks=pytest.mark.slow)])
def test_windowed_fit_on_padded_series_equals_keras_stateful_train_on_batch(cell):
    """An outside reference for windows over padding (issue 31): Keras's own truncated BPTT, a
    stateful copy with the same ``Masking`` layer trained window by window with
    ``train_on_batch`` (states reset per minibatch), from the same weights, gives the weights
    keraseq's windowed fit gives. (TensorFlow: Keras's JAX trainer does not carry a stateful
    layer's state between ``train_on_batch`` calls.)"""
    rng = np.random.default_rng(8)
    x, y, _ = padded_data(rng, 8, 13, False)
    batch, seq_len = 4, 4
    model = make_model(cell, 2, False, True)

    def stateful(b):
        layers = [keras.Input(batch_shape=(b, None, 3)), keras.layers.Masking(0.0)]
        layers += [CELLS[cell](4, return_sequences=True, stateful=True) for _ in range(2)]
        return keras.Sequential([*layers, keras.layers.Dense(2)])

    reference = stateful_reference(
        stateful, x, y, batch, seq_len, keras.optimizers.SGD(0.1), "mse", model.get_weights(), 2
    )
    est = Estimator(
        model,
        "mse",
        keras.optimizers.SGD(0.1),
        epochs=2,
        batch_size=batch,
        seq_len=seq_len,
        shuffle=False,
        verbose=0,
    ).fit(x, y)
    moved = 0.0
    for ours, theirs, start in zip(
        est.model_.get_weights(), reference.get_weights(), model.get_weights(), strict=True
    ):
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-6)
        moved = max(moved, float(np.abs(theirs - start).max()))
    assert moved > 1e-2  # it trained: the agreement is not that of two untouched models


@pytest.mark.parametrize(  # make test: per series on JAX (10 minutes, 2026-12-07)
    "per_series",
    split_between_backends({"per_step": False, "per_series": True}, full=("per_step",)),
)
def test_extra_padding_changes_nothing(per_series):
    """Padding the same series to 3x the length adds windows that are padding for every row:
    they are skipped (no update, no Adam step), so training ends with identical weights."""
    rng = np.random.default_rng(4)
    x, y, lengths = padded_data(rng, 10, 12, per_series)
    longer = np.concatenate([x, np.zeros((10, 24, 3), np.float32)], 1)
    y_longer = y if per_series else np.concatenate([y, np.zeros((10, 24, 2), np.float32)], 1)
    fits = []
    for xx, yy in ((x, y), (longer, y_longer)):
        fits.append(
            Estimator(
                make_model("LSTM", 1, per_series, True),
                "mse",
                keras.optimizers.Adam(0.01),
                epochs=2,
                batch_size=4,
                seq_len=5,
                shuffle=True,
                random_state=0,
                verbose=0,
            ).fit(xx, yy)
        )
    for a, b in zip(fits[0].model_.get_weights(), fits[1].model_.get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert fits[0].history_["loss"] == pytest.approx(fits[1].history_["loss"], rel=1e-6)
    assert fits[0].optimizer_.iterations.numpy() == fits[1].optimizer_.iterations.numpy()


@pytest.mark.backend
def test_sample_weight_and_metrics_ignore_padding():
    rng = np.random.default_rng(5)
    x, y, lengths = padded_data(rng, 8, 10, False)
    w = rng.uniform(0.5, 2.0, size=8).astype("float32")
    model = make_model("GRU", 1, False, True)
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    reference.compile(loss="mse", weighted_metrics=["mae"])
    # (Keras needs the per-series weights spelled out per step next to a (N, T) mask.)
    ref = reference.evaluate(
        x, y, sample_weight=np.repeat(w[:, None], 10, 1), batch_size=8, verbose=0, return_dict=True
    )
    est = frozen(model, 3, 8, metrics=["mae"]).fit(x, y, sample_weight=w)
    assert est.history_["loss"][0] == pytest.approx(ref["loss"], rel=1e-5)
    assert est.history_["mae"][0] == pytest.approx(ref["mae"], rel=1e-5)
    # R² over real steps only: equal to sklearn's on the real (series, step) pairs.
    from sklearn.metrics import r2_score

    pred = est.predict(x)
    real = np.arange(10)[None, :] < lengths[:, None]
    assert est.score(x, y, lengths=lengths) == pytest.approx(
        r2_score(y[real], pred[real]), abs=1e-6
    )


@pytest.mark.tf_in_full
def test_padded_arrays_with_lengths_equal_the_ragged_list():
    rng = np.random.default_rng(6)
    x, y, lengths = padded_data(rng, 9, 11, False)
    x[np.arange(11)[None, :] >= lengths[:, None]] = 7.0  # padding value is irrelevant
    xs = [x[i, : lengths[i]] for i in range(9)]
    ys = [y[i, : lengths[i]] for i in range(9)]
    kw = dict(epochs=2, batch_size=4, seq_len=4, random_state=0, verbose=0)
    a = Estimator(make_model("LSTM", 1, False, False), "mse", "adam", **kw).fit(xs, ys)
    b = Estimator(make_model("LSTM", 1, False, False), "mse", "adam", **kw).fit(
        x, y, lengths=lengths
    )
    for wa, wb in zip(a.model_.get_weights(), b.model_.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    pa, pb = a.predict(xs), b.predict(x, lengths=lengths)
    assert isinstance(pa, list) and [p.shape for p in pa] == [(int(n), 2) for n in lengths]
    for k in range(9):
        np.testing.assert_array_equal(pa[k], pb[k, : lengths[k]])


@pytest.mark.tf_in_full
def test_out_of_core_padded_h5_with_lengths_equals_memory(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(7)
    x, y, lengths = padded_data(rng, 10, 12, True)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"], f["y"] = x, y
    kw = dict(epochs=2, batch_size=4, seq_len=5, random_state=0, verbose=0, group_by_length=True)
    mem = Estimator(make_model("GRU", 1, True, False), "mse", "adam", **kw).fit(
        x, y, lengths=lengths
    )
    with h5py.File(tmp_path / "d.h5", "r") as f:
        disk = Estimator(make_model("GRU", 1, True, False), "mse", "adam", **kw).fit(
            f["x"], f["y"], lengths=lengths
        )
        pred = disk.predict(f["x"], lengths=lengths)
    for a, b in zip(mem.model_.get_weights(), disk.model_.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(pred, mem.predict(x, lengths=lengths), rtol=0, atol=1e-6)


# ------------------------------------------------------------------- length-aware batching
def test_grouped_plan_visits_every_row_once_with_similar_lengths():
    rng = np.random.default_rng(0)
    lengths = np.exp(rng.normal(3, 1, 500)).astype(int) + 1
    plans = [
        grouped_plan(0, 500, 16, 32, lengths, True, np.random.default_rng(s)) for s in (1, 1, 2)
    ]
    for plan in plans:
        assert len(plan) == 32
        assert sorted(np.concatenate(plan).tolist()) == list(range(500))
    assert all(np.array_equal(a, b) for a, b in zip(plans[0], plans[1]))  # deterministic
    assert not all(np.array_equal(a, b) for a, b in zip(plans[0], plans[2]))  # reshuffled
    grouped = sum(lengths[b].max() for b in plans[0] if len(b))
    random = sum(lengths[b].max() for b in np.array_split(rng.permutation(500), 32))
    assert grouped < 0.5 * random, (grouped, random)  # padding mostly gone


@pytest.mark.tf_in_full
def test_group_by_length_trains_deterministically_and_skips_windows():
    rng = np.random.default_rng(8)
    x, y, lengths = padded_data(rng, 20, 30, False)
    kw = dict(epochs=2, batch_size=5, seq_len=4, random_state=3, verbose=0, group_by_length=True)
    a = Estimator(make_model("GRU", 1, False, True), "mse", "adam", **kw).fit(x, y)
    b = Estimator(make_model("GRU", 1, False, True), "mse", "adam", **kw).fit(x, y)
    for wa, wb in zip(a.model_.get_weights(), b.model_.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    assert windows_needed(np.array([[1, 1, 0, 0, 0, 0]], np.float32), 2) == 1
    assert windows_needed(np.array([[1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]]), 2) == 2
    assert windows_needed(np.zeros((2, 6)), 4) == 1


# ------------------------------------------------------------------------- Classifier, CV
@pytest.mark.slow  # make test-full on both backends (make test's 10 minutes; test_sklearn's
@pytest.mark.backend  # cross-validations and the ragged classifier cases stay in make test)
def test_classifier_on_ragged_series_with_sklearn_cross_validation():
    from sklearn.base import clone
    from sklearn.model_selection import cross_validate

    rng = np.random.default_rng(9)
    xs = [rng.normal(size=(int(n), 2)).astype("float32") for n in rng.integers(3, 15, 30)]
    # The label is read at each series' last real step, which padding of the others follows.
    labels = np.array(["up" if a[-1, 0] > 0 else "down" for a in xs])
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((None, 2)), keras.layers.GRU(8), keras.layers.Dense(2, activation="softmax")]
    )
    clf = Classifier(
        model,
        optimizer=keras.optimizers.Adam(0.02),
        epochs=25,
        batch_size=8,
        seq_len=4,
        random_state=0,
        verbose=0,
    )
    clf.fit(xs, labels)
    assert clf.score(xs, labels) > 0.8
    cv = cross_validate(
        clone(clf).set_params(epochs=3),
        xs,
        labels,
        cv=3,
        return_estimator=True,
        return_indices=True,
    )
    assert cv["test_score"].shape == (3,)
    for score, fitted, test in zip(
        cv["test_score"], cv["estimator"], cv["indices"]["test"], strict=True
    ):  # each fold's score is the accuracy of that fold's model on its held-out series
        held = [xs[i] for i in test]
        assert score == pytest.approx(np.mean(fitted.predict(held) == labels[test]))
    # per-step labels of unequal lengths: a list per series; accuracy over real steps
    steps = [np.where(a[:, 0] > 0, "hi", "lo") for a in xs]
    keras.utils.set_random_seed(0)
    per_step = keras.Sequential(
        [
            keras.Input((None, 2)),
            keras.layers.GRU(8, return_sequences=True),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    clf2 = Classifier(
        per_step,
        optimizer=keras.optimizers.Adam(0.02),
        epochs=15,
        batch_size=8,
        seq_len=5,
        random_state=0,
        verbose=0,
    ).fit(xs, steps)
    pred = clf2.predict(xs)
    assert [p.shape for p in pred] == [a.shape[:1] for a in xs]
    assert list(clf2.classes_) == ["hi", "lo"]
    assert clf2.score(xs, steps) > 0.9


# ------------------------------------------------------------------- refusals and errors
@pytest.mark.parametrize(
    "layer",
    split_between_backends(
        {
            "bidirectional": keras.layers.Bidirectional(
                keras.layers.LSTM(3, return_sequences=True), name="bi"
            ),
            "go_backwards": keras.layers.GRU(
                3, go_backwards=True, return_sequences=True, name="back"
            ),
        }
    ),
)
def test_backward_layers_are_refused_with_windows(layer):
    model = keras.Sequential([keras.Input((None, 3)), layer, keras.layers.Dense(1)])
    x = np.ones((4, 10, 3), "float32")
    y = np.ones((4, 10, 1), "float32")
    with pytest.raises(ValueError, match="runs backwards in time.*seq_len=None"):
        Estimator(model, seq_len=5, verbose=0).fit(x, y)
    est = Estimator(model, seq_len=None, verbose=0).fit(x, y)  # the whole sequence is fine
    # predict keeps fit's windows: a later set_params(seq_len=) changes the next fit only
    np.testing.assert_allclose(
        est.set_params(seq_len=4).predict(x), est.model_.predict(x, verbose=0), rtol=0, atol=1e-5
    )
    with pytest.raises(ValueError, match="runs backwards"):
        est.fit(x, y)


def test_masking_keraseq_cannot_read_needs_lengths():
    inp = keras.Input((None, 3))
    h = keras.layers.Dense(3)(inp)
    h = keras.layers.Masking(0.0, name="late_mask")(h)
    out = keras.layers.LSTM(2)(h)
    model = keras.Model(inp, out)
    x = np.ones((4, 10, 3), "float32")
    with pytest.raises(ValueError, match="'late_mask'.*pass `lengths`"):
        Estimator(model, seq_len=4, verbose=0).fit(x, np.ones((4, 2), "float32"))


def test_bad_lengths_are_named():
    x = np.ones((4, 6, 3), "float32")
    y = np.ones((4, 6, 1), "float32")
    est = Estimator(make_model("GRU", 1, False, False, outputs=1), seq_len=3, verbose=0)
    with pytest.raises(ValueError, match=r"`lengths` has shape \(3,\); expected .*\(4,\)"):
        est.fit(x, y, lengths=[1, 2, 3])
    with pytest.raises(ValueError, match=r"`lengths` must lie in \[1, T=6\]"):
        est.fit(x, y, lengths=[1, 2, 3, 7])
    with pytest.raises(ValueError, match=r"`y\[1\]` has 3 time steps but `x\[1\]` has 4"):
        est.fit([np.ones((2, 3)), np.ones((4, 3))], [np.ones((2, 1)), np.ones((3, 1))])
    with pytest.raises(ValueError, match="`lengths` is given by the ragged `x`"):
        est.fit([np.ones((2, 3)), np.ones((4, 3))], np.ones((2, 1)), lengths=[2, 4])
    seqs = [np.ones((2, 3)), np.ones((4, 3))]
    copies = [s.copy() for s in seqs]
    pad_ragged(seqs, "x")
    assert all(np.array_equal(a, b) for a, b in zip(seqs, copies))  # nothing mutated


def test_whether_a_mask_reaches_the_recurrent_layers_is_read_from_the_graph():
    """Issue 31: keraseq's rule for a mask dropped before the recurrent layers (Keras drops it
    at a layer without mask support) is read from the model's graph, before any fit, and
    nothing is written onto the model; a model without a graph answers from what the probe
    saw."""
    from keraseq.lengths import input_mask_rule, mask_reaches_rnn

    def seq(*layers):
        return keras.Sequential([keras.Input((None, 3)), *layers])

    kept = seq(keras.layers.Masking(), keras.layers.LSTM(2))
    dropped = seq(keras.layers.Masking(), keras.layers.Conv1D(2, 1), keras.layers.LSTM(2))
    x = keras.Input((None, 3))
    both = keras.Model(
        x, keras.layers.Bidirectional(keras.layers.GRU(2))(keras.layers.Masking()(x))
    )
    assert mask_reaches_rnn(kept) and mask_reaches_rnn(both) and not mask_reaches_rnn(dropped)
    assert input_mask_rule(kept) is not None and input_mask_rule(dropped) is None
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(4, 6, 3)).astype("float32")
    xs[0, 4:] = 0.0  # padding that the Conv1D computes over, as Keras does
    est = Estimator(dropped, epochs=1, seq_len=3, verbose=0).fit(xs, xs[:, 0, :2])
    for model in (dropped, est.model_):  # nothing written onto the models
        assert not any(k.startswith("_keraseq") for k in vars(model))
    assert not mask_reaches_rnn(est.model_)
