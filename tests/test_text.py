"""Language modelling (keraseq.text): batchify against PyTorch's definition, metrics against
the hand computation, LM training with windows against Keras's own stateful ``train_on_batch``
loop, and generation against stepping a stateful Keras model by hand."""

from __future__ import annotations

import doctest
import math

import keras
import numpy as np
import pytest

import keraseq.text as ktext
from keraseq import (
    BitsPerToken,
    Estimator,
    Perplexity,
    Vocabulary,
    batchify,
    bits_per_token,
    generate,
)
from keraseq.text import sample

V, B, S = 7, 4, 10


def lm_model(stateful_batch=None, units=8, seed=0):
    """Embedding + LSTM + Dense(V) logits over token ids ``(N, T)``."""
    keras.utils.set_random_seed(seed)
    inp = (
        keras.Input(batch_shape=(stateful_batch, None), dtype="int32")
        if stateful_batch
        else keras.Input((None,), dtype="int32")
    )
    return keras.Sequential(
        [
            inp,
            keras.layers.Embedding(V, 4),
            keras.layers.LSTM(units, return_sequences=True, stateful=bool(stateful_batch)),
            keras.layers.Dense(V),
        ]
    )


def corpus(n=4 * 41 + 3, seed=0):
    """A tiny token sequence with structure (a noisy counter mod V)."""
    rng = np.random.default_rng(seed)
    return ((np.arange(n) + (rng.random(n) < 0.2)) % V).astype(np.int32)


LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# ------------------------------------------------------------------------------- batchify
def test_batchify_is_pytorchs_streams_of_next_token_pairs():
    tokens = np.arange(100, 123, dtype=np.int64)  # 23 tokens, 5 streams of 4, 3 dropped
    before = tokens.copy()
    x, y = batchify(tokens, 5)
    assert x.shape == y.shape == (5, 3) and x.dtype == np.int64
    # PyTorch: data.narrow(0, 0, nbatch * bsz).view(bsz, -1).t() -> column b is stream b;
    # get_batch: x = source[i:i+bptt], y = source[i+1:i+1+bptt].
    per = 23 // 5
    for b in range(5):
        assert x[b].tolist() == tokens[b * per : (b + 1) * per - 1].tolist()
        assert y[b].tolist() == tokens[b * per + 1 : (b + 1) * per].tolist()
    x[:] = -1
    np.testing.assert_array_equal(tokens, before)  # new arrays: input never touched
    x, y = batchify([3, 1, 4, 1, 5], 1)  # a list works, one stream
    assert x.tolist() == [[3, 1, 4, 1]] and y.tolist() == [[1, 4, 1, 5]]


@pytest.mark.parametrize(
    "tokens, n, exc, match",
    [
        (
            np.zeros((4, 5), np.int32),
            2,
            ValueError,
            r"`tokens` must be one sequence.*\(L,\).*\(4, 5\)",
        ),
        (np.zeros(10, np.float32), 2, TypeError, r"`tokens` must hold integer.*float32"),
        (np.arange(5), 3, ValueError, r"`tokens` has 5 tokens: too few for 3 streams"),
        (np.arange(10), 0, ValueError, r"`n_streams` must be a positive integer, got 0"),
        (np.arange(10), 2.0, ValueError, r"`n_streams` must be a positive integer"),
        (np.arange(10), True, ValueError, r"`n_streams` must be a positive integer"),
    ],
)
def test_batchify_bad_input(tokens, n, exc, match):
    with pytest.raises(exc, match=match):
        batchify(tokens, n)


def test_vocabulary_round_trip_and_unknown_tokens():
    text = "to be or not to be"
    vocab = Vocabulary(text)
    assert vocab.tokens == sorted(set(text)) and len(vocab) == 7
    ids = vocab.encode(text)
    assert ids.dtype == np.int32 and vocab.decode(ids) == text
    assert [vocab.tokens[k] for k in ids] == list(text)
    with pytest.raises(ValueError, match=r"2 token\(s\) not in the vocabulary: '!', '\?'"):
        vocab.encode("be!?")
    with pytest.raises(ValueError, match=r"`ids` must lie in \[0, 7\)"):
        vocab.decode([0, 7])
    words = Vocabulary(text.split())
    assert words.decode(words.encode(text.split()), sep=" ") == text


def _run_examples(names):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for t in doctest.DocTestFinder().find(ktext) if t.examples and t.name in names]
    assert len(tests) == len(names), [t.name for t in tests]
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


FIT_EXAMPLES = {"keraseq.text.generate"}  # fits a model: ~30 s on a busy 2-core machine


def test_module_examples_run():
    names = {t.name for t in doctest.DocTestFinder().find(ktext) if t.examples}
    _run_examples(names - FIT_EXAMPLES)


@pytest.mark.slow
def test_generate_example_runs():
    _run_examples(FIT_EXAMPLES)


# -------------------------------------------------------------------------------- metrics
def _hand_bits(ids, probs):
    return float(
        np.mean(
            [
                -math.log2(probs[i, t, ids[i, t]])
                for i in range(ids.shape[0])
                for t in range(ids.shape[1])
            ]
        )
    )


@pytest.mark.backend
@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("trailing_one", [True, False])
def test_bits_and_perplexity_equal_the_hand_computation(from_logits, trailing_one):
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(3, 5, V))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    ids = rng.integers(0, V, size=(3, 5))
    expected = _hand_bits(ids, probs)
    y_pred = logits if from_logits else probs
    y_true = ids[..., None] if trailing_one else ids
    assert bits_per_token(y_true, y_pred, from_logits=from_logits) == pytest.approx(
        expected, rel=1e-12
    )
    bits, ppl = BitsPerToken(from_logits=from_logits), Perplexity(from_logits=from_logits)
    for m in (bits, ppl):  # two updates: a running mean of tokens
        m.update_state(y_true[:1], y_pred[:1].astype("float32"))
        m.update_state(y_true[1:], y_pred[1:].astype("float32"))
    assert float(bits.result()) == pytest.approx(expected, rel=1e-5)
    assert float(ppl.result()) == pytest.approx(2.0**expected, rel=1e-5)
    w = rng.random((3, 5))
    hand_w = float(
        np.sum(w * -np.log2(np.take_along_axis(probs, ids[..., None], -1)[..., 0])) / w.sum()
    )
    assert bits_per_token(y_true, y_pred, from_logits, w) == pytest.approx(hand_w, rel=1e-12)
    copy = BitsPerToken.from_config(bits.get_config())
    assert (copy.name, copy.from_logits) == ("bits_per_token", from_logits)


def test_bits_per_token_bad_input():
    with pytest.raises(ValueError, match=r"`y_true` has shape \(2, 3\); expected \(2, 4\)"):
        bits_per_token(np.zeros((2, 3), int), np.zeros((2, 4, V)))
    with pytest.raises(ValueError, match=r"`y_true` ids must lie in \[0, 7\)"):
        bits_per_token(np.full((2,), V), np.ones((2, V)) / V)


# ----------------------------------------------------------------------- training the LM
def reset_states(model):
    for layer in model.layers:
        if getattr(layer, "stateful", False):
            layer.reset_states()


def one_hot_model(stateful_batch, seed=0):
    """``lm_model`` with the Embedding written as one-hot @ kernel (the same function and
    gradient). Keras's TensorFlow optimizers update an Embedding from its sparse gradient
    (``tf.IndexedSlices``), and Adam's second moment then adds the squares of the gradients of
    a repeated token instead of squaring their sum (``ops.square`` of the slices): not Adam's
    formula; this form makes Keras's own loop compute Adam's update on both backends."""
    keras.utils.set_random_seed(seed)
    emb = lm_model(seed=seed).layers[0].get_weights()[0]
    model = keras.Sequential(
        [
            keras.Input(batch_shape=(stateful_batch, None), dtype="int32"),
            keras.layers.Lambda(lambda t: keras.ops.one_hot(t, V)),
            keras.layers.Dense(4, use_bias=False),
            keras.layers.LSTM(8, return_sequences=True, stateful=True),
            keras.layers.Dense(V),
        ]
    )
    model.set_weights(lm_model(seed=seed).get_weights())
    np.testing.assert_array_equal(model.layers[1].get_weights()[0], emb)
    return model


def keras_stateful_loop(tokens, epochs, optimizer, one_hot=False):
    """Keras's own truncated BPTT: a stateful model, train_on_batch per window, reset per
    epoch (char-rnn / word_language_model in Keras).

    Keras 3.15 on JAX drops a stateful RNN's new state inside ``train_on_batch`` (its state
    variables are not among the model's non-trainable variables, so the assignment in the
    stateless train step is lost, and a jitted step reads the zeros it was traced with): on JAX
    the step runs without ``jit`` and the state each window leaves is computed by a forward call
    before the update and set after it. On TensorFlow ``train_on_batch`` leaves that same state
    itself."""
    x, y = batchify(tokens, B)
    model = one_hot_model(B) if one_hot else lm_model(stateful_batch=B)
    model.compile(optimizer, LOSS, jit_compile=keras.backend.backend() != "jax")
    rnn = [layer for layer in model.layers if getattr(layer, "stateful", False)]
    for _ in range(epochs):
        reset_states(model)
        for s in range(0, x.shape[1], S):
            xw, yw = x[:, s : s + S], y[:, s : s + S]
            before = [[np.asarray(v) for v in layer.states] for layer in rnn]
            model(xw)  # the state this window leaves
            after = [[np.asarray(v) for v in layer.states] for layer in rnn]
            for layer, values in zip(rnn, before):
                for v, a in zip(layer.states, values):
                    v.assign(a)
            model.train_on_batch(xw, yw)
            for layer, values in zip(rnn, after):
                for v, a in zip(layer.states, values):
                    v.assign(a)
    return model


OPTIMIZERS = {
    "sgd": lambda: keras.optimizers.SGD(0.5, momentum=0.9),
    "adam": lambda: keras.optimizers.Adam(2e-2),
}


@pytest.mark.parametrize(
    "opt",
    [  # make test: SGD on TensorFlow (its JAX run and Adam on both: make test-full)
        pytest.param("sgd", marks=pytest.mark.jax_in_full),
        pytest.param("adam", marks=[pytest.mark.backend, pytest.mark.slow]),
    ],
)
def test_lm_windows_equal_kerass_stateful_train_on_batch_loop(opt):
    tokens = corpus()
    x, y = batchify(tokens, B)  # (4, 41): windows 10,10,10,10,1
    est = Estimator(
        lm_model(),
        LOSS,
        OPTIMIZERS[opt](),
        epochs=2,
        batch_size=B,
        seq_len=S,
        shuffle=False,
        verbose=0,
        metrics=[BitsPerToken(from_logits=True), Perplexity(from_logits=True)],
    )
    est.fit(x, y)
    ref = keras_stateful_loop(tokens, 2, OPTIMIZERS[opt](), one_hot=opt == "adam")
    for a, b in zip(est.model_.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    h = est.history_
    assert h["perplexity"][-1] == pytest.approx(2.0 ** h["bits_per_token"][-1], rel=1e-5)
    # Validation bits: windowed streaming predict == the stateful model run over each stream.
    xv, yv = batchify(corpus(seed=1), B)
    logits = est.predict(xv)
    reset_states(ref)
    ref_logits = np.concatenate(
        [np.asarray(ref(xv[:, s : s + S])) for s in range(0, xv.shape[1], S)], axis=1
    )
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-4)
    bits = bits_per_token(yv, logits, from_logits=True)
    assert bits == pytest.approx(bits_per_token(yv, ref_logits, from_logits=True), abs=1e-5)


# ---------------------------------------------------------------------------- generation
def step_by_hand(model_weights, prompts, length, temperature, seed):
    """Stepping a stateful Keras copy directly, one token per call, with the same sampler."""
    model = lm_model(stateful_batch=prompts.shape[0])
    model.set_weights(model_weights)
    rng = np.random.default_rng(seed)
    logits = np.asarray(model(prompts))[:, -1]
    out = []
    for _ in range(length):
        tok = sample(logits, temperature, rng)
        out.append(tok)
        logits = np.asarray(model(tok[:, None].astype(np.int32)))[:, -1]
    return np.stack(out, axis=1)


@pytest.fixture(scope="module")
def fitted():
    x, y = batchify(corpus(), B)
    est = Estimator(
        lm_model(),
        LOSS,
        "adam",
        epochs=1,
        batch_size=B,
        seq_len=S,
        shuffle=False,
        verbose=0,
        metrics=[BitsPerToken(from_logits=True), Perplexity(from_logits=True)],
    )
    return est.fit(x, y), x


@pytest.mark.jax_in_full  # make test: on TensorFlow (2026-12-07: make test's 10 minutes)
def test_metrics_survive_save_load_and_generation_continues_alike(fitted, tmp_path):
    est, x = fitted
    path = tmp_path / "lm.keras"
    est.save(path)
    loaded = Estimator.load(path)
    assert [(type(m), m.name, m.from_logits) for m in loaded.metrics] == [
        (BitsPerToken, "bits_per_token", True),
        (Perplexity, "perplexity", True),
    ]
    np.testing.assert_array_equal(
        generate(loaded, x[0, :4], 6, random_state=3), generate(est, x[0, :4], 6, random_state=3)
    )


@pytest.mark.backend
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_generation_is_seeded_and_equals_stepping_keras_by_hand(fitted, temperature):
    est, x = fitted
    prompts = x[:2, :5]
    new = generate(est, prompts, length=8, temperature=temperature, random_state=7)
    assert new.shape == (2, 8) and new.min() >= 0 and new.max() < V
    np.testing.assert_array_equal(new, generate(est, prompts, 8, temperature, random_state=7))
    np.testing.assert_array_equal(
        new, step_by_hand(est.model_.get_weights(), prompts, 8, temperature, seed=7)
    )
    one = generate(est, prompts[0], 8, temperature, random_state=7)
    assert one.shape == (8,)
    if temperature == 0:
        np.testing.assert_array_equal(one, new[0])  # greedy: rows are independent


def test_sample_temperature_and_errors():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([[0.7, 0.2, 0.1]]))
    draws = np.concatenate([sample(logits, 1.0, rng) for _ in range(4000)])
    np.testing.assert_allclose(np.bincount(draws, minlength=3) / 4000, [0.7, 0.2, 0.1], atol=0.03)
    cold = np.concatenate([sample(logits, 0.25, rng) for _ in range(2000)])
    p = np.array([0.7, 0.2, 0.1]) ** 4
    np.testing.assert_allclose(np.bincount(cold, minlength=3) / 2000, p / p.sum(), atol=0.03)
    assert sample(np.array([[0.1, 0.6, 0.3]]), 0, from_logits=False).tolist() == [1]
    with pytest.raises(ValueError, match=r"`temperature` must be a number >= 0, got -1"):
        sample(logits, -1)
    with pytest.raises(ValueError, match=r"`y_pred` must have shape \(n, V\), got \(3,\)"):
        sample(logits[0])


def test_generate_bad_input():
    with pytest.raises(ValueError, match="`estimator` is not fitted"):
        generate(Estimator(lm_model()), [0, 1], 3)
    est = Estimator(lm_model())
    est.model_ = est.model
    with pytest.raises(
        ValueError,
        match=r"`prompt` must be token ids of shape \(t0,\) or "
        r"\(n, t0\) with t0 >= 1, got shape \(0,\)",
    ):
        generate(est, [], 3)
    with pytest.raises(TypeError, match=r"`prompt` must hold integer token ids, got dtype float"):
        generate(est, [0.5], 3)
    with pytest.raises(ValueError, match=r"`length` must be an integer >= 0, got -2"):
        generate(est, [0], -2)


def test_stdlib_corpus_is_the_modules_source():
    import argparse
    import inspect as inspect_module

    from keraseq.datasets import load_stdlib_text

    text = load_stdlib_text(("argparse", "inspect"))
    with (
        open(argparse.__file__, encoding="utf-8") as f1,
        open(inspect_module.__file__, encoding="utf-8") as f2,
    ):
        assert text == f1.read() + f2.read()
    assert load_stdlib_text(max_chars=1000) == load_stdlib_text()[:1000]
    with pytest.raises(ValueError, match=r"`modules`: 'sys' has no Python source file"):
        load_stdlib_text(("sys",))
