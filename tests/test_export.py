"""``Estimator.export``: the streaming step as a SavedModel, served by TensorFlow alone.

Each case fits a small model, exports it, and serves the export in a fresh process that cannot
import Keras or keraseq (``tests/serving/serve_stream.py``): a series streamed through
``step`` in pieces of any lengths (random partitions, and one step at a time) equals
``est.predict`` streamed over the same pieces with ``reset=False``, and the whole series; the
flat ``serving_default`` signature equals ``predict``; the final states equal the kept ones.
"""

import itertools
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from keraseq import Classifier, Estimator
from keraseq.export import StreamSignature, check_streamable
from keraseq.utils import states
from keraseq.windows import StateCarry

SERVE = os.path.join(os.path.dirname(__file__), "serving", "serve_stream.py")
T = 11


def _seq(*layers, features=3):
    return keras.Sequential([keras.Input((None, features)), *layers])


def lstm():
    return _seq(keras.layers.LSTM(6, return_sequences=True), keras.layers.Dense(2))


def gru():
    return _seq(
        keras.layers.GRU(5, return_sequences=True, reset_after=False), keras.layers.Dense(1)
    )


def stacked():
    return _seq(
        keras.layers.Conv1D(4, 3, padding="causal", activation="tanh"),
        keras.layers.LSTM(6, return_sequences=True),
        keras.layers.GRU(5, return_sequences=True),
        keras.layers.SimpleRNN(4, return_sequences=True),
        keras.layers.Dense(1),
    )


def two_inputs():
    a, b = keras.Input((None, 2), name="prices"), keras.Input((None, 3), name="volumes")
    h = keras.layers.LSTM(5, return_sequences=True)(keras.layers.Concatenate()([a, b]))
    g = keras.layers.GRU(4, return_sequences=True)(b)
    level, spread = keras.layers.Dense(1, name="level"), keras.layers.Dense(2, name="spread")
    return keras.Model((a, b), [level(h), spread(g)])


def dict_inputs():
    a, b = keras.Input((None, 2), name="a"), keras.Input((None, 3), name="b")
    h = keras.layers.GRU(5, return_sequences=True)(keras.layers.Concatenate()([a, b]))
    return keras.Model({"b": b, "a": a}, keras.layers.Dense(1)(h))  # Keras orders them a, b


def per_series():
    return _seq(keras.layers.LSTM(6), keras.layers.Dense(1))


def tokens():
    return keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(9, 4, mask_zero=True),
            keras.layers.LSTM(6, return_sequences=True),
            keras.layers.Dense(9, activation="softmax"),
        ]
    )


def _data(kind, rng, n=4):
    if kind == "tokens":
        x = rng.integers(1, 9, size=(n, T)).astype("int32")
        x[0, 7:] = 0  # a padded row: masked steps hold their state
        return (x,), np.roll(x, -1, axis=1) % 9
    x3 = rng.normal(size=(n, T, 3)).astype("float32")
    if kind in ("two_inputs", "dict_inputs"):
        x2 = rng.normal(size=(n, T, 2)).astype("float32")
        y1 = np.cumsum(x2[..., :1], axis=1) / 5
        if kind == "dict_inputs":
            return (x2, x3), y1
        return (x2, x3), (y1, x3[..., :2])
    if kind == "per_series":
        return (x3,), x3.sum(axis=(1, 2))[:, None] / 10
    out = 2 if kind == "lstm" else 1
    return (x3,), np.cumsum(x3[..., :out], axis=1) / 5


MODELS = {
    "lstm": lstm,
    "gru": gru,
    "stacked": stacked,
    "two_inputs": two_inputs,
    "dict_inputs": dict_inputs,
    "per_series": per_series,
    "tokens": tokens,
}


def _x(kind, xs):
    if kind == "dict_inputs":
        return {"a": xs[0], "b": xs[1]}
    return xs[0] if len(xs) == 1 else xs


def _partitions(rng):
    """Piece boundaries: three random partitions of 0..T, and one step at a time."""
    parts = []
    for _ in range(3):
        cuts = sorted(rng.choice(np.arange(1, T), size=rng.integers(1, 5), replace=False))
        parts.append([0, *map(int, cuts), T])
    parts.append(list(range(T + 1)))
    return parts


def _serve(tmp_path, case, est, kind, xs, partitions):
    """Export ``est`` and serve it in a process without Keras; the result arrays."""
    path = tmp_path / case
    est.export(path)
    job = {
        f"{case}/path": str(path),
        f"{case}/n_inputs": len(xs),
        f"{case}/kind": {"dict_inputs": "dict", "two_inputs": "tuple"}.get(kind, "one"),
        f"{case}/keys": np.array(["a", "b"] if kind == "dict_inputs" else []),
        f"{case}/input_keys": np.array(
            {"dict_inputs": ["a", "b"], "two_inputs": ["prices", "volumes"]}.get(kind, ["x"])
        ),
        f"{case}/cuts": np.array([c for p in partitions for c in (*p, -1)]),
    }
    job.update({f"{case}/x{k}": a for k, a in enumerate(xs)})
    np.savez(tmp_path / "job.npz", **job)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, SERVE, str(tmp_path / "job.npz"), str(tmp_path / "result.npz")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(np.load(tmp_path / "result.npz"))


#: make test-full serves every model of MODELS on both backends (make test keeps the export's
#: refusals: a served stream costs a SavedModel and a subprocess, 32 s; since 2026-12-07).
KINDS = [pytest.param(k, marks=[pytest.mark.backend, pytest.mark.slow]) for k in MODELS]


@pytest.mark.parametrize("kind", KINDS)
def test_served_stream_equals_predict(tmp_path, kind):
    rng = np.random.default_rng(len(kind))
    keras.utils.set_random_seed(1)
    xs, y = _data(kind, rng)
    make = Classifier if kind == "tokens" else Estimator
    est = make(MODELS[kind](), epochs=2, batch_size=2, seq_len=4, verbose=0)
    est.fit(_x(kind, xs), y)
    partitions = _partitions(rng)
    got = _serve(tmp_path, kind, est, kind, xs, partitions)
    proba = est.predict_proba if kind == "tokens" else est.predict

    def flat(y):
        return list(y) if isinstance(y, (tuple, list)) else [y]

    whole = flat(proba(_x(kind, xs)))
    for p, bounds in enumerate(partitions):
        pieces = []
        for i, (lo, hi) in enumerate(itertools.pairwise(bounds)):
            expected = flat(proba(_x(kind, tuple(a[:, lo:hi] for a in xs)), reset=(i == 0)))
            for j, e in enumerate(expected):
                np.testing.assert_allclose(got[f"{kind}/{p}/{i}/y{j}"], e, atol=1e-5, rtol=0)
            pieces.append([got[f"{kind}/{p}/{i}/y{j}"] for j in range(len(expected))])
        # The served final states are the ones predict keeps, in the model's call order.
        served = [got[f"{kind}/{p}/state/{key}"] for key in state_keys(est)]
        for s_, k_ in zip(served, states(est), strict=True):
            np.testing.assert_allclose(s_, k_, atol=1e-5, rtol=0)
        if kind != "per_series":  # the pieces put together are the whole series
            for j, w in enumerate(whole):
                joined = np.concatenate([piece[j] for piece in pieces], axis=1)
                np.testing.assert_allclose(joined, w, atol=1e-5, rtol=0)
        else:
            np.testing.assert_allclose(pieces[-1][0], whole[0], atol=1e-5, rtol=0)
    # The flat signature: the outputs keyed "y", or by the model's output names.
    signature = {k.split("/")[-1]: v for k, v in got.items() if "/signature/" in k}
    names = ["level", "spread"] if kind == "two_inputs" else ["y"]
    for o, w in zip([signature[k] for k in names], whole, strict=True):
        np.testing.assert_allclose(o, w, atol=1e-5, rtol=0)


def state_keys(est):
    """The exported states' names, in the order of the states ``predict`` keeps."""
    sig = StreamSignature.of(est.model_, StateCarry(est.model_, fused=False), est.n_outputs_)
    return [key for keys in sig.state_keys for key in keys]


def test_export_refuses_what_cannot_stream(tmp_path):
    """Attention, pooling over time and backward RNNs are refused at export with the layer's
    name; an estimator that was never fitted raises scikit-learn's NotFittedError."""
    with pytest.raises(NotFittedError, match="export"):
        Estimator(lstm()).export(tmp_path / "never")
    x = keras.Input((None, 3))
    attended = keras.layers.MultiHeadAttention(2, 4, name="attn")(x, x)
    with pytest.raises(ValueError, match="'attn' .*MultiHeadAttention.*mixes the time steps"):
        check_streamable(keras.Model(x, keras.layers.Dense(1)(attended)))
    pooled = _seq(keras.layers.LSTM(4), keras.layers.Dense(1))
    check_streamable(pooled)  # a last-step output streams
    backward = _seq(keras.layers.Bidirectional(keras.layers.GRU(3), name="both"))
    with pytest.raises(ValueError, match="'both' .*runs backwards"):
        check_streamable(backward)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6, 3)).astype("float32")
    est = Estimator(
        _seq(keras.layers.GlobalAveragePooling1D(name="mean"), keras.layers.Dense(1)),
        epochs=1,
        verbose=0,
    ).fit(x, x[:, 0, :1])
    with pytest.raises(ValueError, match="'mean'"):
        est.export(tmp_path / "mean")
    assert not (tmp_path / "mean").exists()
    rows = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    tabular = Estimator(rows, epochs=1, verbose=0).fit(x[:, 0], x[:, 0, :1])
    with pytest.raises(ValueError, match="tabular rows"):
        tabular.export(tmp_path / "rows")


@pytest.mark.slow  # make test-full
def test_export_of_a_loaded_and_an_unpickled_estimator(tmp_path):
    """An estimator loaded from its ``.keras`` file, or unpickled, exports the same step."""
    import pickle

    import tensorflow as tf

    rng = np.random.default_rng(3)
    xs, y = _data("gru", rng)
    keras.utils.set_random_seed(2)
    est = Estimator(gru(), epochs=1, batch_size=2, seq_len=4, verbose=0).fit(xs[0], y)
    est.save(tmp_path / "est.keras")
    for k, other in enumerate(
        [Estimator.load(tmp_path / "est.keras"), pickle.loads(pickle.dumps(est))]
    ):
        other.export(tmp_path / f"export{k}")
        served = tf.saved_model.load(str(tmp_path / f"export{k}"))
        states = served.initial_states(len(y))
        y1, states = served.step(xs[0][:, :6], states)
        y2, _ = served.step(xs[0][:, 6:], states)
        np.testing.assert_allclose(
            np.concatenate([y1, y2], axis=1), est.predict(xs[0]), atol=1e-5, rtol=0
        )
