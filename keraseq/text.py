"""Language modelling: one long token sequence trained as parallel streams, scored, sampled.

Truncated BPTT's classic workload (Zaremba et al. 2014; PyTorch's
``examples/word_language_model``; char-rnn) is one long text. It is cut into ``B`` parallel
streams, each stream a series of next-token pairs, and an :class:`~keraseq.Estimator` with
``batch_size=B`` and ``seq_len=S`` runs windows of ``S`` steps along all streams at once, the
recurrent state carried from window to window.

What lives here:

- :class:`Vocabulary` — tokens (characters, words) to integer ids and back;
- :func:`batchify` — the token ids as ``B`` streams of next-token pairs ``(x, y)``, ``(B, T)``;
- :class:`BitsPerToken` and :class:`Perplexity` — Keras metrics for ``metrics=`` (in
  ``Estimator``, ``model.compile`` alike), and :func:`bits_per_token`, the same number from
  arrays of predictions;
- :func:`sample` and :func:`generate` — text generation, one step per
  ``Estimator.predict(..., reset=False)`` call.

What does not: training and the windows (``Estimator.fit``), streaming prediction
(``Estimator.predict``), data sets (``keraseq.datasets.load_stdlib_text`` reads a corpus).

Example:
    >>> import numpy as np
    >>> from keraseq.text import Vocabulary, batchify, bits_per_token
    >>> text = "hello world, hello"
    >>> vocab = Vocabulary(text)
    >>> len(vocab), vocab.decode(vocab.encode("low"))
    (9, 'low')
    >>> x, y = batchify(vocab.encode(text), n_streams=2)
    >>> x.shape, vocab.decode(x[0]), vocab.decode(y[0])
    ((2, 8), 'hello wo', 'ello wor')
    >>> round(bits_per_token(np.array([0, 1]), np.full((2, 4), 0.25)), 6)  # uniform over 4
    2.0
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from .ranges import check_ranges, model_ranges
from .resets import document_starts

if TYPE_CHECKING:
    from .estimator import Estimator

__all__ = [
    "Vocabulary",
    "batchify",
    "BitsPerToken",
    "Perplexity",
    "bits_per_token",
    "sample",
    "generate",
]

_LN2 = math.log(2.0)


# ---------------------------------------------------------------------------------- vocabulary
class Vocabulary:
    """Tokens to integer ids ``0 .. len(vocab) - 1`` and back (the sorted unique tokens).

    Parameters:
        tokens: the tokens of a corpus: a string (its characters) or any iterable of hashable,
            sortable tokens (e.g. a list of words).

    ``encode`` raises ``ValueError`` naming the tokens it has no id for; build the vocabulary
    from the whole corpus (training and validation text), as char-rnn does.

    Example:
        >>> v = Vocabulary("abracadabra")
        >>> v.tokens, v.encode("cab").tolist(), v.decode([4, 0])
        (['a', 'b', 'c', 'd', 'r'], [2, 0, 1], 'ra')
        >>> Vocabulary("a b a".split()).decode([1, 0], sep=" ")
        'b a'
    """

    def __init__(self, tokens: Iterable[Hashable]):
        self.tokens: list = sorted(set(tokens))
        if not self.tokens:
            raise ValueError("`tokens` is empty: a vocabulary needs at least one token")
        self._index = {tok: k for k, tok in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens)"

    def encode(self, tokens: Iterable[Hashable], dtype: Any = np.int32) -> np.ndarray:
        """The ids of ``tokens`` (a string: its characters) as a 1-D integer array."""
        index = self._index
        tokens = tokens if isinstance(tokens, str) else list(tokens)
        try:
            return np.fromiter((index[t] for t in tokens), dtype=dtype)
        except KeyError:
            unknown = sorted({repr(t) for t in tokens if t not in index})
            raise ValueError(
                f"`tokens` holds {len(unknown)} token(s) not in the vocabulary: "
                f"{', '.join(unknown[:10])}; build the Vocabulary from the whole "
                f"corpus"
            ) from None

    def decode(self, ids: Iterable[int], sep: str = "") -> str:
        """The tokens of ``ids`` (1-D) joined by ``sep`` (characters: ``""``)."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise ValueError(
                f"`ids` must be a 1-D array of integer ids, got shape {ids.shape} "
                f"and dtype {ids.dtype}"
            )
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise ValueError(
                f"`ids` must lie in [0, {len(self)}), got values in [{ids.min()}, {ids.max()}]"
            )
        return sep.join(str(self.tokens[k]) for k in ids.tolist())


# ------------------------------------------------------------------------------------ streams
def batchify(
    tokens: Sequence[int] | np.ndarray | Sequence[np.ndarray], n_streams: int
) -> tuple[np.ndarray, ...]:
    """Cut one long sequence of token ids into ``n_streams`` parallel streams of next-token pairs.

    PyTorch's ``word_language_model`` ``batchify`` (Zaremba et al. 2014): the sequence of
    length ``L`` is trimmed to ``B * (L // B)`` tokens (the rest is dropped) and stream ``b``
    is the contiguous piece ``tokens[b * M : (b + 1) * M]``, ``M = L // B``. The inputs are
    each stream but its last token, the targets each stream but its first, so ``y[b, t]`` is
    the token after ``x[b, t]``.

    Documents: ``tokens`` a list of 1-D arrays (one per document: files, articles,
    sessions) are laid end to end in that order and cut the same way, and the resets at
    their starts come back too: ``resets[b, t]`` is True where ``x[b, t]`` is a document's
    first token (and at ``t = 0``), for ``fit(x, y, resets=resets)``: the recurrent state
    then restarts at each document (``docs/guide/language_model.md``). The target of a
    document's last token is the next document's first (end each document with a separator
    token for the model to learn where documents end).

    Parameters:
        tokens: 1-D integer token ids (e.g. :meth:`Vocabulary.encode` of a text), or a list
            of such arrays, one per document.
        n_streams: ``B``, the number of streams (the minibatch: ``Estimator(batch_size=B)``
            runs windows along all streams at once, the state carried along each stream).

    Returns:
        ``(x, y)``, two new ``(B, M - 1)`` arrays of the dtype of ``tokens``; for documents
        ``(x, y, resets)``, ``resets`` a boolean ``(B, M - 1)``.

    Example:
        >>> x, y = batchify(np.arange(10), n_streams=3)   # streams 0-2, 3-5, 6-8; 9 dropped
        >>> x.tolist(), y.tolist()
        ([[0, 1], [3, 4], [6, 7]], [[1, 2], [4, 5], [7, 8]])
        >>> x, y, resets = batchify([np.arange(3), np.arange(10, 15)], n_streams=1)
        >>> x.tolist(), resets.astype(int).tolist()
        ([[0, 1, 2, 10, 11, 12, 13]], [[1, 0, 0, 1, 0, 0, 0]])
    """
    if isinstance(n_streams, bool) or not isinstance(n_streams, numbers.Integral) or n_streams < 1:
        raise ValueError(f"`n_streams` must be a positive integer, got {n_streams!r}")
    documents = isinstance(tokens, (list, tuple)) and any(np.ndim(d) == 1 for d in tokens)
    if documents:
        docs = [np.asarray(d) for d in tokens]
        for k, d in enumerate(docs):
            if d.ndim != 1:
                raise ValueError(
                    f"`tokens[{k}]` has shape {d.shape}; each document must be a 1-D "
                    f"sequence of token ids"
                )
            if d.size == 0:
                raise ValueError(f"`tokens[{k}]` is empty; every document needs a token")
        ids = np.concatenate(docs)
    else:
        ids = np.asarray(tokens)
    if ids.ndim != 1:
        raise ValueError(
            f"`tokens` must be one sequence of token ids, shape (L,); got shape {ids.shape}"
        )
    if ids.dtype.kind not in "iu":
        raise TypeError(
            f"`tokens` must hold integer token ids, got dtype {ids.dtype} "
            f"(encode a text with keraseq.text.Vocabulary)"
        )
    per_stream = ids.shape[0] // int(n_streams)
    if per_stream < 2:
        raise ValueError(
            f"`tokens` has {ids.shape[0]} tokens: too few for {n_streams} streams "
            f"of at least 2 tokens (one next-token pair) each"
        )
    streams = ids[: per_stream * int(n_streams)].reshape(int(n_streams), per_stream)
    x, y = streams[:, :-1].copy(), streams[:, 1:].copy()
    if not documents:
        return x, y
    starts = document_starts([len(d) for d in docs], int(n_streams), per_stream)
    return x, y, starts[:, :-1].copy()


# ------------------------------------------------------------------------------------ metrics
def _squeezed(y_true, y_pred):
    """Integer ids ``(..., 1)`` (Keras's sparse convention) as ``(...)``."""
    if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == 1:
        y_true = keras.ops.squeeze(y_true, -1)
    return y_true


def _nats(y_true, y_pred, from_logits=False):
    return keras.losses.sparse_categorical_crossentropy(
        _squeezed(y_true, y_pred), y_pred, from_logits=from_logits
    )


def _bits(y_true, y_pred, from_logits=False):
    return _nats(y_true, y_pred, from_logits) / _LN2


@keras.saving.register_keras_serializable(package="keraseq")
class BitsPerToken(keras.metrics.MeanMetricWrapper):
    """Mean cross-entropy of the next token in bits (bits per character for a character
    model): ``sparse_categorical_crossentropy / ln 2``, averaged over the tokens.

    ``y_true`` holds integer ids ``(..., )`` or ``(..., 1)``, ``y_pred`` the probabilities
    (``from_logits=False``) or logits over the vocabulary ``(..., V)``. Use it in
    ``Estimator(metrics=[...])`` (logged as ``bits_per_token``, ``val_bits_per_token`` with
    ``validation_data``) or in ``model.compile(metrics=[...])``. A uniform guess over ``V``
    tokens scores ``log2(V)``.

    Example:
        >>> import numpy as np
        >>> m = BitsPerToken(from_logits=True)
        >>> m.update_state(np.array([1, 1]), np.log(np.array([[0.5, 0.5], [0.75, 0.25]])))
        >>> round(float(m.result()), 6)   # (1 + 2) / 2
        1.5
    """

    def __init__(self, from_logits: bool = False, name: str = "bits_per_token", dtype: Any = None):
        super().__init__(_bits, name=name, dtype=dtype, from_logits=from_logits)
        self.from_logits = from_logits

    def get_config(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "from_logits": self.from_logits}

    @classmethod
    def from_config(cls, config: dict) -> BitsPerToken:
        return cls(**config)


@keras.saving.register_keras_serializable(package="keraseq")
class Perplexity(keras.metrics.MeanMetricWrapper):
    """Perplexity of the next token: ``exp`` of the mean cross-entropy in nats (``2 **``
    bits per token), as ``keras_hub.metrics.Perplexity`` defines it.

    The same inputs as :class:`BitsPerToken`; the mean is over every token seen since the
    last reset (not a mean of per-batch perplexities). Logged as ``perplexity``.

    Example:
        >>> import numpy as np
        >>> m = Perplexity()
        >>> m.update_state(np.array([0, 2]), np.full((2, 4), 0.25))
        >>> round(float(m.result()), 4)   # a uniform guess over 4 tokens
        4.0
    """

    def __init__(self, from_logits: bool = False, name: str = "perplexity", dtype: Any = None):
        super().__init__(_nats, name=name, dtype=dtype, from_logits=from_logits)
        self.from_logits = from_logits

    def result(self):
        return keras.ops.exp(super().result())

    def get_config(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "from_logits": self.from_logits}

    @classmethod
    def from_config(cls, config: dict) -> Perplexity:
        return cls(**config)


def _log_probs(y_pred: np.ndarray, from_logits: bool) -> np.ndarray:
    z = np.asarray(y_pred, np.float64)
    if not from_logits:
        with np.errstate(divide="ignore"):
            z = np.log(z)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def bits_per_token(y_true, y_pred, from_logits: bool = False, sample_weight=None) -> float:
    """Mean cross-entropy of the next token in bits, from arrays (float64, in NumPy).

    ``y_true``: integer ids ``(...)`` or ``(..., 1)``; ``y_pred``: probabilities or (with
    ``from_logits=True``) logits ``(..., V)``, e.g. ``Estimator.predict`` of the inputs;
    ``sample_weight`` (``(...)``) weighs the tokens. Perplexity is ``2 ** bits_per_token``.

    Example:
        >>> import numpy as np
        >>> round(bits_per_token(np.array([[0, 1]]), np.array([[[0.5, 0.5], [0.75, 0.25]]])), 6)
        1.5
    """
    yp = np.asarray(y_pred)
    yt = np.asarray(y_true)
    if yt.ndim == yp.ndim and yt.shape[-1:] == (1,):
        yt = yt[..., 0]
    if yt.shape != yp.shape[:-1]:
        raise ValueError(
            f"`y_true` has shape {np.shape(y_true)}; expected {yp.shape[:-1]} "
            f"(or {yp.shape[:-1] + (1,)}) for `y_pred` of shape {yp.shape}"
        )
    if yt.dtype.kind not in "iu":
        if not np.all(np.mod(yt, 1) == 0):
            raise TypeError(f"`y_true` must hold integer token ids, got dtype {yt.dtype}")
        yt = yt.astype(np.int64)
    if yt.size and (yt.min() < 0 or yt.max() >= yp.shape[-1]):
        raise ValueError(
            f"`y_true` ids must lie in [0, {yp.shape[-1]}), got values in [{yt.min()}, {yt.max()}]"
        )
    nll = -np.take_along_axis(_log_probs(yp, from_logits), yt[..., None], axis=-1)[..., 0]
    if sample_weight is None:
        return float(nll.mean() / _LN2)
    w = np.broadcast_to(np.asarray(sample_weight, np.float64), nll.shape)
    return float((w * nll).sum() / w.sum() / _LN2)


# --------------------------------------------------------------------------------- generation
def sample(
    y_pred,
    temperature: float = 1.0,
    rng: np.random.Generator | None = None,
    from_logits: bool = True,
) -> np.ndarray:
    """One token id per row of ``y_pred`` ``(n, V)`` (logits, or probabilities with
    ``from_logits=False``).

    ``temperature`` 0 takes the most likely token; otherwise the token is drawn from
    ``softmax(log p / temperature)`` (below 1: more conservative, above 1: more diverse) by
    inverse transform of one ``rng.random()`` per row, so a seeded ``rng`` gives the same
    tokens on every backend.

    Example:
        >>> import numpy as np
        >>> sample(np.array([[0.0, 3.0, 1.0]]), temperature=0).tolist()
        [1]
    """
    z = np.asarray(y_pred, np.float64)
    if z.ndim != 2:
        raise ValueError(f"`y_pred` must have shape (n, V), got {z.shape}")
    if not (isinstance(temperature, numbers.Real) and temperature >= 0):
        raise ValueError(f"`temperature` must be a number >= 0, got {temperature!r}")
    logp = _log_probs(z, from_logits)
    if temperature == 0:
        return logp.argmax(axis=-1)
    rng = np.random.default_rng() if rng is None else rng
    p = np.exp(_log_probs(logp / float(temperature), True))
    u = rng.random(p.shape[0])[:, None]
    cdf = np.cumsum(p, axis=-1)
    return np.minimum((cdf < u * cdf[:, -1:]).sum(axis=-1), p.shape[-1] - 1)


def generate(
    estimator: Estimator,
    prompt: Sequence[int] | np.ndarray,
    length: int,
    temperature: float = 1.0,
    random_state: int | np.random.Generator | None = None,
    from_logits: bool = True,
) -> np.ndarray:
    """Continue ``prompt`` by ``length`` tokens sampled from a fitted next-token model.

    The prompt runs through ``estimator.predict`` (windows, state carried), then each new
    token is one ``estimator.predict(token, reset=False)`` call that continues the state:
    streaming inference, one step per call. The model outputs next-token logits
    (``from_logits=True``, e.g. ``Dense(V)``) or probabilities (``Dense(V, "softmax")``)
    per step; tokens are drawn by :func:`sample` with ``temperature`` (0: greedy) from one
    ``numpy.random.default_rng(random_state)``, so a seed gives the same text each time.
    The estimator's streaming states (``predict(..., reset=False)``) are replaced by those
    of the generated sequences.

    Parameters:
        estimator: a fitted :class:`~keraseq.Estimator` whose model maps token ids ``(n, t)``
            (``keras.Input((None,), dtype="int32")``) to next-token outputs ``(n, t, V)``.
        prompt: ids ``(t0,)`` or ``(n, t0)`` (``n`` continuations at once), ``t0 >= 1``.
        length: how many tokens to generate.

    Returns:
        the new ids only, ``(length,)`` or ``(n, length)`` (``int64``).

    Example:
        >>> import keras, numpy as np
        >>> from keraseq import Estimator
        >>> from keraseq.text import batchify, generate
        >>> keras.utils.set_random_seed(0)
        >>> model = keras.Sequential([keras.Input((None,), dtype="int32"),
        ...                           keras.layers.Embedding(5, 4),
        ...                           keras.layers.LSTM(8, return_sequences=True),
        ...                           keras.layers.Dense(5)])
        >>> x, y = batchify(np.tile(np.arange(5), 40), n_streams=4)
        >>> est = Estimator(model, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        ...                 "adam", epochs=1, batch_size=4, seq_len=10, verbose=0)
        >>> est = est.fit(x, y)
        >>> new = generate(est, [0, 1, 2], length=6, random_state=0)
        >>> new.shape, bool(np.all(new == generate(est, [0, 1, 2], length=6, random_state=0)))
        ((6,), True)
    """
    if not hasattr(estimator, "model_"):
        raise ValueError("`estimator` is not fitted: call fit before generate")
    if isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < 0:
        raise ValueError(f"`length` must be an integer >= 0, got {length!r}")
    ids = np.asarray(prompt)
    single = ids.ndim == 1
    if single:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[1] < 1:
        raise ValueError(
            f"`prompt` must be token ids of shape (t0,) or (n, t0) with t0 >= 1, "
            f"got shape {np.shape(prompt)}"
        )
    if ids.dtype.kind not in "iu":
        raise TypeError(f"`prompt` must hold integer token ids, got dtype {ids.dtype}")
    check_ranges(model_ranges(estimator.model_), (ids,), None, name="prompt")
    rng = (
        random_state
        if isinstance(random_state, np.random.Generator)
        else np.random.default_rng(random_state)
    )
    out = np.zeros((ids.shape[0], int(length)), np.int64)
    if length == 0:
        return out[0] if single else out
    pred = estimator.predict(ids, reset=True)
    for k in range(int(length)):
        out[:, k] = sample(np.asarray(pred)[:, -1], temperature, rng, from_logits)
        if k + 1 < length:
            pred = estimator.predict(out[:, k : k + 1], reset=False)
    return out[0] if single else out
