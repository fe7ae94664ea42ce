"""Per-row state resets (``resets=``): a reset anywhere (inside a window too) gives exactly what
Keras gives on the pieces run as separate series; no gradient crosses it; windows, streaming,
lengths, masks, ragged lists, HDF5, validation data, the classifier and the errors.

TensorFlow == JAX with resets: ``tests/test_backends.py``; K ranks == one process:
``tests/mpi/`` (``test_mpi.py``); the cost: ``benchmarks/bench_resets.py``.
"""

from __future__ import annotations

import itertools
import os
import warnings

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import keraseq
from keraseq import Classifier, Estimator
from keraseq.text import batchify

F = 3
#: `make test-full` only, on both backends (`make test`, 10 minutes, keeps the property on JAX
#: and the gradient test on TensorFlow, both through the fused loop)
FULL = [pytest.mark.backend, pytest.mark.slow]


def _model(layer, outputs=2, seed=0, mask_value=None):
    """``layer`` (a kind for :func:`_rnn`, or a layer) between an input and a Dense, with
    weights drawn from ``seed`` (the layers are made after seeding: equal models)."""
    keras.utils.set_random_seed(seed)
    layer = _rnn(layer) if isinstance(layer, str) else layer
    front = [keras.Input((None, F))]
    if mask_value is not None:
        front.append(keras.layers.Masking(mask_value))
    return keras.Sequential(front + [layer, keras.layers.Dense(outputs)])


def _rnn(kind, **kw):
    if kind == "stacked":  # Keras's own loop with nested states
        cells = [keras.layers.LSTMCell(3), keras.layers.GRUCell(4)]
        return keras.layers.RNN(keras.layers.StackedRNNCells(cells), return_sequences=True)
    return getattr(keras.layers, kind)(4, return_sequences=True, **kw)


def _pieces(model, x_row, starts):
    """Keras's whole-series outputs of ``x_row`` (T, F) cut at ``starts``, each piece its own
    series from zero states."""
    bounds = [0] + [s for s in starts if s > 0] + [x_row.shape[0]]
    outs = [np.asarray(model(x_row[None, a:b]))[0] for a, b in itertools.pairwise(bounds) if b > a]
    return np.concatenate(outs, axis=0)


@pytest.mark.tf_in_full
@pytest.mark.property
@settings(
    max_examples=int(os.environ.get("KERASEQ_RESETS_EXAMPLES", "2")),  # test-full: 6
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(
    kind=st.sampled_from(["LSTM", "GRU", "SimpleRNN", "stacked"]),
    fused=st.booleans(),
    t=st.integers(5, 23),
    seq_len=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_a_reset_anywhere_gives_what_keras_gives_on_the_pieces(kind, fused, t, seq_len, seed):
    rng = np.random.default_rng(seed)
    n = 3
    x = rng.normal(size=(n, t, F)).astype("float32")
    resets = rng.random((n, t)) < 0.25
    resets[2] = False  # one row without resets
    est = Estimator(_model(kind), seq_len=seq_len, fused_rnn=fused, verbose=0)
    est.fit(x, x[..., :2], epochs=1, resets=resets)
    pred = est.predict(x, resets=resets)
    for row in range(n):
        want = _pieces(est.model_, x[row], list(np.flatnonzero(resets[row])))
        np.testing.assert_allclose(pred[row], want, atol=2e-5, err_msg=f"row {row}")
    # Streaming: two predict calls with the state kept honour the resets of each piece.
    cut = t // 2
    first = est.predict(x[:, :cut], resets=resets[:, :cut])
    rest = est.predict(x[:, cut:], reset=False, resets=resets[:, cut:])
    np.testing.assert_allclose(np.concatenate([first, rest], 1), pred, atol=2e-5)


@pytest.mark.parametrize(
    "kind, fused",
    [
        pytest.param("LSTM", True, id="lstm-fused", marks=pytest.mark.jax_in_full),
        pytest.param("GRU", False, id="gru-keras", marks=FULL),
        pytest.param("stacked", True, id="stacked", marks=FULL),
    ],
)
def test_no_gradient_crosses_a_reset(kind, fused):
    """With the loss only after the resets, the steps before them change nothing: the weights
    after training are bit-identical whatever those steps hold (and differ without resets)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 20, F)).astype("float32")
    y = rng.normal(size=(4, 20, 2)).astype("float32")
    at = np.array([9, 6, 13, 10])
    resets = np.arange(20)[None] == at[:, None]
    weight = (np.arange(20)[None] >= at[:, None]).astype("float32")
    noisy = x + (np.arange(20)[None, :, None] < at[:, None, None]) * 3.0

    def fit(xx, use_resets):
        est = Estimator(_model(kind), seq_len=6, fused_rnn=fused, shuffle=False, verbose=0)
        est.fit(xx, y, sample_weight=weight, epochs=2, resets=resets if use_resets else None)
        return est.model_.get_weights()

    clean, changed = fit(x, True), fit(noisy, True)
    for a, b in zip(clean, changed):
        np.testing.assert_array_equal(a, b)
    unreset = fit(noisy, False)
    assert max(np.abs(a - b).max() for a, b in zip(clean, unreset)) > 1e-4


@pytest.mark.parametrize(
    "kind, kw, mask_value",
    [
        pytest.param("LSTM", {}, None, id="lstm", marks=FULL),
        pytest.param("LSTM", {}, 0.0, id="lstm-masked", marks=FULL),
        pytest.param("GRU", {}, None, id="gru", marks=FULL),
        pytest.param("GRU", {"reset_after": False}, None, id="gru-reset-before", marks=FULL),
        pytest.param("SimpleRNN", {}, 0.0, id="simple-rnn-masked", marks=FULL),
    ],
)
def test_the_fused_loop_and_keras_loop_train_alike_with_resets(kind, kw, mask_value):
    """keraseq's fused loop (the reset inside the cell's maths and its written-out backward)
    and Keras's cell loop give the same training and predictions; with a mask, a reset on a
    masked step (Masking) holds (the state restarts there and stays)."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 17, F)).astype("float32")
    x[:, 4:6] = 0.0  # masked steps with Masking(0.0); resets fall on them too
    resets = rng.random((5, 17)) < 0.3
    resets[:, 4] = True
    runs = []
    for fused in (True, False):
        keras.utils.set_random_seed(0)
        layer = getattr(keras.layers, kind)(4, return_sequences=True, **kw)
        est = Estimator(
            _model(layer, mask_value=mask_value),
            seq_len=5,
            fused_rnn=fused,
            shuffle=False,
            verbose=0,
        )
        est.fit(x, x[..., :2], epochs=2, resets=resets)
        runs.append((est.model_.get_weights(), est.predict(x, resets=resets), est.rnn_paths_))
    assert runs[0][2] != runs[1][2]  # (the two loops did run)
    for a, b in zip(runs[0][0], runs[1][0]):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(runs[0][1], runs[1][1], atol=1e-5)


@pytest.mark.backend
@pytest.mark.slow
def test_a_reset_on_a_masked_step_holds():
    """A reset on the masked step 4 (Masking): from the next real step on, every row is the
    piece [6:] run alone."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 17, F)).astype("float32")
    x[:, 4:6] = 0.0
    est = Estimator(_model("GRU", mask_value=0.0), seq_len=4, verbose=0)
    est.fit(x, x[..., :2], epochs=1)
    only = np.zeros((5, 17), bool)
    only[:, 4] = True
    pred = est.predict(x, resets=only)
    np.testing.assert_allclose(pred[:, 6:], np.asarray(est.model_(x[:, 6:])), atol=2e-5)


@pytest.mark.backend
@pytest.mark.slow
def test_resets_with_lengths_ragged_lists_and_validation_data():
    rng = np.random.default_rng(3)
    lengths = np.array([12, 7, 9, 12])
    x = rng.normal(size=(4, 12, F)).astype("float32")
    y = rng.normal(size=(4, 12, 2)).astype("float32")
    resets = rng.random((4, 12)) < 0.3
    past = np.arange(12)[None] >= lengths[:, None]

    def fit(split=0.0, **kw):
        est = Estimator(_model("GRU"), seq_len=5, shuffle=False, validation_split=split, verbose=0)
        return est.fit(epochs=2, **kw)

    padded = fit(x=x, y=y, lengths=lengths, resets=resets & ~past)
    # resets past a series' length are padding: ignored
    noisy = fit(x=x, y=y, lengths=lengths, resets=resets | past)
    for a, b in zip(padded.model_.get_weights(), noisy.model_.get_weights()):
        np.testing.assert_array_equal(a, b)
    # a ragged list of series with a list of per-series flags: the same fit
    ragged = fit(
        x=[x[k, :n] for k, n in enumerate(lengths)],
        y=[y[k, :n] for k, n in enumerate(lengths)],
        resets=[resets[k, :n] for k, n in enumerate(lengths)],
    )
    for a, b in zip(padded.model_.get_weights(), ragged.model_.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # validation data with resets (a 5-tuple) and validation_split carry them
    val = fit(x=x, y=y, validation_data=(x, y, None, lengths, resets))
    assert np.isfinite(val.history_["val_loss"]).all()
    assert val.score(x, y, lengths=lengths, resets=resets) != val.score(x, y, lengths=lengths)
    split = fit(x=x, y=y, resets=resets, split=0.5)
    assert len(split.history_["val_loss"]) == 2


@pytest.mark.backend
@pytest.mark.slow
def test_resets_from_hdf5_and_memmap_train_as_from_memory(tmp_path):
    import h5py

    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 10, F)).astype("float32")
    y = rng.normal(size=(6, 10, 2)).astype("float32")
    resets = rng.random((6, 10)) < 0.3
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"], f["y"], f["r"] = x, y, resets
    mm = np.lib.format.open_memmap(tmp_path / "r.npy", "w+", np.uint8, resets.shape)
    mm[:] = resets
    mm.flush()
    runs = []
    with h5py.File(tmp_path / "d.h5", "r") as f:
        for r in (resets, f["r"], np.load(tmp_path / "r.npy", mmap_mode="r")):
            est = Estimator(_model("LSTM"), seq_len=4, batch_size=4, shuffle=False, verbose=0)
            est.fit(f["x"], f["y"], epochs=1, resets=r)
            runs.append((est.model_.get_weights(), est.predict(f["x"], resets=r)))
    for other in runs[1:]:
        for a, b in zip(runs[0][0], other[0]):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(runs[0][1], other[1])


@pytest.mark.backend
@pytest.mark.slow
def test_a_classifier_per_series_with_resets():
    """Per-series labels: the label of a series whose last piece starts at a reset is that
    piece's alone (what the model says on it run alone)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(8, 15, F)).astype("float32")
    labels = rng.integers(0, 3, 8)
    resets = np.zeros((8, 15), bool)
    resets[:, 11] = True
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((None, F)), keras.layers.LSTM(4), keras.layers.Dense(3, "softmax")]
    )
    clf = Classifier(model, seq_len=4, verbose=0)
    clf.fit(x, labels, epochs=1, resets=resets)
    proba = clf.predict_proba(x, resets=resets)
    np.testing.assert_allclose(proba, np.asarray(clf.model_(x[:, 11:])), atol=2e-5)
    # score: the accuracy of the labels the model gives the last pieces alone
    alone = clf.classes_[np.argmax(np.asarray(clf.model_(x[:, 11:])), axis=1)]
    assert clf.score(x, labels, resets=resets) == pytest.approx(np.mean(alone == labels))


def test_bad_resets_are_named_before_any_training_step():
    x = np.zeros((4, 6, F), "float32")
    y = np.zeros((4, 6, 2), "float32")
    est = Estimator(_model("GRU"), seq_len=3, verbose=0)
    with pytest.raises(ValueError, match=r"`resets` has shape \(4, 5\); expected .*\(4, 6\)"):
        est.fit(x, y, resets=np.zeros((4, 5), bool))
    with pytest.raises(TypeError, match="`resets` has dtype float32; expected booleans"):
        est.fit(x, y, resets=np.zeros((4, 6), "float32"))
    bad = np.zeros((4, 6), "int64")
    bad[2, 3] = 2
    with pytest.raises(ValueError, match="`resets` holds 2 at row 2, step 3"):
        est.fit(x, y, resets=bad)
    assert not hasattr(est, "model_")  # nothing trained
    with pytest.raises(ValueError, match=r"`validation_data resets` has shape \(4, 2\)"):
        est.fit(x, y, validation_data=(x, y, None, None, np.zeros((4, 2), bool)))
    with pytest.raises(ValueError, match="`rebatch=True` cannot be combined with `resets`"):
        Estimator(_model("GRU"), seq_len=3, rebatch=True, batch_size=8, verbose=0).fit(
            x, y, resets=np.zeros((4, 6), bool)
        )
    backwards = keras.layers.Bidirectional(keras.layers.GRU(2, return_sequences=True))
    with pytest.raises(ValueError, match=r"`resets`: layer '.*' runs backwards in time"):
        Estimator(_model(backwards), verbose=0).fit(x, y, resets=np.zeros((4, 6), bool))
    with pytest.raises(ValueError, match="`resets` with a dataset"):
        est.fit(((x, y) for _ in range(2)), resets=np.zeros((4, 6), bool))
    untouched = np.zeros((4, 6), "int64")
    untouched[1, 2] = 1
    before = untouched.copy()
    est.fit(x, y, epochs=1, resets=untouched)
    np.testing.assert_array_equal(untouched, before)  # not mutated
    with pytest.raises(ValueError, match=r"`resets` has shape \(4, 3\)"):
        est.predict(x, resets=np.zeros((4, 3), bool))


def test_a_causal_convolution_is_warned_that_its_context_crosses_resets():
    conv = keras.layers.Conv1D(4, 3, padding="causal")
    model = keras.Sequential([keras.Input((None, F)), conv, _rnn("GRU"), keras.layers.Dense(2)])
    x = np.zeros((4, 6, F), "float32")
    with pytest.warns(UserWarning, match=r"causal Conv1D '.*' sees the 2 steps before each"):
        Estimator(model, seq_len=3, verbose=0).fit(x, x[..., :2], resets=np.zeros((4, 6), bool))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no resets: no warning
        Estimator(_model("GRU"), seq_len=3, verbose=0).fit(x, x[..., :2])


def test_batchify_documents_returns_the_resets_at_their_starts():
    docs = [[1, 2, 3, 4], [10, 11, 12], [20, 21], [30, 31, 32, 33, 34]]  # 14 tokens
    x, y, resets = batchify([np.array(d) for d in docs], n_streams=2)
    assert x.tolist() == [[1, 2, 3, 4, 10, 11], [20, 21, 30, 31, 32, 33]]
    assert y.tolist() == [[2, 3, 4, 10, 11, 12], [21, 30, 31, 32, 33, 34]]
    # a document starts at x's steps 0, 4 (row 0) and 0, 2 (row 1; step 0 starts a stream)
    assert resets.astype(int).tolist() == [[1, 0, 0, 0, 1, 0], [1, 0, 1, 0, 0, 0]]
    with pytest.raises(ValueError, match=r"`tokens\[1\]` is empty"):
        batchify([np.arange(3), np.arange(0)], n_streams=1)
    assert keraseq.text.batchify(np.arange(10), 3)[0].shape == (3, 2)  # one sequence: (x, y)


@pytest.mark.backend
@pytest.mark.slow
def test_pipelines_bring_their_resets_in_the_batches():
    """Batches ``(x, y, sample_weight, resets)`` (a generator, tf.data) train as the arrays
    with ``resets=`` do; a validation pipeline and ``predict`` on a pipeline read them too."""
    import tensorflow as tf

    rng = np.random.default_rng(6)
    x = rng.normal(size=(8, 10, F)).astype("float32")
    y = rng.normal(size=(8, 10, 2)).astype("float32")
    resets = rng.random((8, 10)) < 0.3

    def fit(data, steps=None, **kw):
        est = Estimator(
            _model("GRU"), seq_len=4, batch_size=4, shuffle=False, steps_per_epoch=steps, verbose=0
        )
        return est.fit(data, epochs=2, **kw)

    arrays = fit(x, y=y, resets=resets)
    batches = [(x[k : k + 4], y[k : k + 4], None, resets[k : k + 4]) for k in (0, 4)]
    generator = fit(itertools.cycle(batches), steps=2)
    ds = tf.data.Dataset.from_tensor_slices((x, y, np.ones((8, 10), "float32"), resets))
    tf_data = fit(ds.batch(4))
    for other in (generator, tf_data):
        for a, b in zip(arrays.model_.get_weights(), other.model_.get_weights()):
            np.testing.assert_allclose(a, b, atol=1e-6)
    val = fit(x, y=y, resets=resets, validation_data=iter(batches))
    assert np.isfinite(val.history_["val_loss"]).all()
    np.testing.assert_allclose(
        arrays.predict(iter(batches)), arrays.predict(x, resets=resets), atol=1e-6
    )
    bad = [(x[:4], y[:4], None, resets[:4, :3])]
    with pytest.raises(ValueError, match=r"`resets of batch 0` has shape \(4, 3\)"):
        fit(iter(bad))
