"""A character language model, truncated BPTT's classic workload: keraseq against its peers.

The corpus is the source of a few standard-library modules (``keraseq.datasets.
load_stdlib_text``: ~640,000 characters, no download), the first 90 % for training and the
last 10 % for validation, each cut into 32 parallel streams (``keraseq.text.batchify``,
PyTorch's ``batchify``). Every system trains the same model, Embedding(V, 32) + LSTM(128) +
Dense(V) logits with the sparse cross-entropy, with Adam (lr 2e-3, Keras's betas and
epsilon 1e-7), over windows of 50 characters along the streams, the state carried from
window to window and reset at each epoch, one update per window:

- ``keraseq[tensorflow]``, ``keraseq[jax]``: ``Estimator(batch_size=32, seq_len=50).fit``
  under ``KERAS_BACKEND=tensorflow`` / ``jax``, with the default ``fused_rnn=True`` (Keras's
  LSTM runs in keraseq's fused loop; on JAX a minibatch's rows split over one JAX CPU device
  per core);
- ``keraseq[tensorflow]-unfused``, ``keraseq[jax]-unfused``: the same with ``fused_rnn=False``
  (Keras's own LSTM loop inside keraseq: the baseline of the fused gain);
  ``keraseq[jax]-1dev`` (not in the default set): ``keraseq[jax]`` with
  ``KERASEQ_CPU_DEVICES=1``, one JAX CPU device;
- ``jax hand loop`` (system ``jax``): the model written by hand in JAX like bench_peers.py's
  hand loop: Keras's LSTM cell (gate order i, f, c, o) in a ``lax.scan`` over the steps of a
  window, the sparse softmax cross-entropy (mean over the window), ``jax.value_and_grad`` and
  Keras's Adam formula (no weight decay) per window in a ``lax.scan`` over the windows, the
  state carried with ``stop_gradient``, parameters and optimizer state donated: one
  ``jax.jit`` call for all the full windows of an epoch and one for the shorter last window;
  validation logits from one jitted forward over the whole validation streams; on JAX's
  default single CPU device;
- ``tf fused loop``, ``jax fused loop``: keraseq's fused LSTM maths written out by hand, with
  no autodiff and no Keras (:func:`run_fused_hand`), one compiled call per epoch like the JAX
  hand loop: on TensorFlow ``tf.function(jit_compile=True)`` (``tf fused loop (graph)``, not in
  the default set: a plain graph), on JAX ``jax.jit`` on one CPU device. The same program on
  both backends: TensorFlow's compiler against JAX's, and keraseq against the best each
  backend does with the same maths;
- ``keras loop``: Keras's own recipe on TensorFlow: a ``stateful=True`` copy of the model with
  ``batch_shape=(32, None)``, ``reset_states`` per epoch and ``train_on_batch`` per window.
  (Not on JAX: Keras 3.15's jitted JAX train step reads a stateful RNN's state as the
  constant it was traced with and drops the new one, so every window starts from zeros.)
  On TensorFlow Keras updates an ``Embedding`` from its sparse gradient (``tf.IndexedSlices``)
  and Adam's second moment then sums the squares of a repeated character's gradients instead
  of squaring their sum (not Adam's formula; keraseq, Keras on JAX and PyTorch apply the
  formula). ``keras loop (one-hot)`` is the same loop with the embedding written as one-hot @
  the same matrix (the same function and initial weights, a dense gradient): Adam's update.
- ``torch``: PyTorch's ``examples/word_language_model`` idiom (time-major ``(T, B)`` data,
  ``nn.Embedding`` + ``nn.LSTM`` + ``nn.Linear``, ``repackage_hidden`` at each window,
  ``optimizer.step()`` per window), with torch's default threads, and again with
  ``torch.set_num_threads(1)`` (``torch-1t``). On a busy machine torch's multi-threaded
  kernels can stall for seconds per window; a torch epoch therefore stops after the window
  that passes ``--max-epoch-s`` and its time is extrapolated to the whole epoch (marked ``*``).

Every system starts from the same initial weights (Keras's initializers, seed 0, saved once
and loaded by each worker; PyTorch gets them transposed, its second LSTM bias zero), so the
validation bits per character of keraseq, the JAX hand loop and the Keras loop are
comparable. Each system runs in a fresh process per round; the order rotates from round to
round (interleaved).

Reported: the median steady epoch (every epoch after the first, pooled over rounds), the
cores busy (CPU seconds of the whole process / wall seconds, the median over steady epochs),
the first epoch's extra time (tracing, compilation), the validation bits/char after training
(from the last round), and the columns ``vs keraseq[..]``: this system's time / the fused
keraseq[tensorflow]'s or keraseq[jax]'s (> 1 = keraseq faster). Then bench_peers.py's summary
ratios, the other system's median s/epoch over the named keraseq's: ``fused gain: keraseq[B]
vs keraseq[B]-unfused`` (unfused / fused, per backend), ``keraseq[jax] / torch (n threads)``,
``keraseq[jax] / torch (1 thread)`` (and ``keraseq[jax]-1dev / torch (1 thread)`` when run),
``keraseq[jax] / jax hand loop`` (issue 29's target >= 1.0), ``keraseq[tensorflow] / torch``,
keraseq on each backend against that backend's fused program by hand, and ``jax fused loop /
tf fused loop`` (one program, two compilers). Then generation (the two fused
keraseq systems): the median latency of one step, ``Estimator.predict(token, reset=False)``
against a stateful Keras copy of the fitted model called directly, eagerly (``model(token)``)
and through its compiled predict function (``model.predict_on_batch(token)``), with batch 1,
per backend. (On JAX ``predict_on_batch`` of a stateful model does not carry the state, for
the reason above: its latency is shown, its text would be wrong.)

Usage::

    python benchmarks/bench_lm.py                     # 640k chars, 3 epochs, 2 rounds
    python benchmarks/bench_lm.py --chars 200000 --epochs 2 --rounds 1 --systems torch,keraseq[jax]
    python benchmarks/bench_lm.py --systems jax,keraseq[jax],keraseq[jax]-unfused,keraseq[jax]-1dev
    python benchmarks/bench_lm.py --systems "keraseq[tensorflow],tf fused loop,jax fused loop"

Needs torch for the PyTorch row (the ``bench`` extra); a system that cannot run gets a
"not available (<reason>)" row and the run goes on.
"""

import argparse
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

from peer_ratios import ratio_lines  # this folder: sys.path[0] of a script

HERE = os.path.abspath(__file__)
SYSTEMS = [
    "keraseq[tensorflow]",
    "keraseq[jax]",
    "keraseq[tensorflow]-unfused",
    "keraseq[jax]-unfused",
    "jax",
    "keras loop",
    "keras loop (one-hot)",
    "torch",
    "torch-1t",
    "tf fused loop",
    "jax fused loop",
]
BACKEND = {
    "keraseq[tensorflow]": "tensorflow",
    "keraseq[jax]": "jax",
    "keraseq[tensorflow]-unfused": "tensorflow",
    "keraseq[jax]-unfused": "jax",
    "keraseq[jax]-1dev": "jax",
    "jax": "jax",  # the hand loop: Keras never built; KERASEQ_CPU_DEVICES=1 (JAX's default)
    "keras loop": "tensorflow",
    "keras loop (one-hot)": "tensorflow",
    "torch": "tensorflow",
    "torch-1t": "tensorflow",
    "tf fused loop": "tensorflow",
    "tf fused loop (graph)": "tensorflow",
    "jax fused loop": "jax",
    "init": "tensorflow",
}
LABELS = {"jax": "jax hand loop"}  # the others are shown by their system name
FUSED = ("keraseq[tensorflow]", "keraseq[jax]")  # the `vs keraseq[..]` columns
STREAMS, WINDOW, EMB, UNITS, LR, EPS = 32, 50, 32, 128, 2e-3, 1e-7
BETA1, BETA2 = 0.9, 0.999  # keras.optimizers.Adam's defaults
GEN_STEPS, GEN_WARMUP = 100, 10


def corpus(chars):
    """(train x, train y, val x, val y, V): ids as 32 streams of next-character pairs."""
    from keraseq.datasets import load_stdlib_text
    from keraseq.text import Vocabulary, batchify

    text = load_stdlib_text(max_chars=chars)
    vocab = Vocabulary(text)
    ids = vocab.encode(text)
    cut = int(0.9 * len(ids))
    x, y = batchify(ids[:cut], STREAMS)
    xv, yv = batchify(ids[cut:], STREAMS)
    return x, y, xv, yv, len(vocab)


def build(V, stateful_batch=None, one_hot=False):
    import keras

    inp = (
        keras.Input(batch_shape=(stateful_batch, None), dtype="int32")
        if stateful_batch
        else keras.Input((None,), dtype="int32")
    )
    if one_hot:  # the Embedding as one-hot @ matrix: the same function, weights and gradient
        return keras.Sequential(
            [
                inp,
                keras.layers.Lambda(lambda t: keras.ops.one_hot(t, V)),
                keras.layers.Dense(EMB, use_bias=False),
                keras.layers.LSTM(UNITS, return_sequences=True, stateful=True),
                keras.layers.Dense(V),
            ]
        )
    return keras.Sequential(
        [
            inp,
            keras.layers.Embedding(V, EMB),
            keras.layers.LSTM(UNITS, return_sequences=True, stateful=bool(stateful_batch)),
            keras.layers.Dense(V),
        ]
    )


def keras_loss():
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def keras_adam():
    import keras

    return keras.optimizers.Adam(LR, epsilon=EPS)


def stateful_run(model, xs, window=WINDOW):
    """Logits of a stateful Keras model over whole streams, window by window."""
    import numpy as np

    for layer in model.layers:
        if getattr(layer, "stateful", False):
            layer.reset_states()
    return np.concatenate(
        [np.asarray(model(xs[:, s : s + window])) for s in range(0, xs.shape[1], window)], axis=1
    )


# --------------------------------------------------------------------------------- workers
def run_init(args):
    import keras
    import numpy as np

    V = corpus(args.chars)[4]
    keras.utils.set_random_seed(0)
    np.savez(args.init, *build(V).get_weights())
    return {}


def load_init(path):
    import numpy as np

    with np.load(path) as f:
        return [f[f"arr_{k}"] for k in range(len(f.files))]


def generation_latency(est, weights, V):
    """Median seconds of one generation step: keraseq streaming predict vs the Keras model."""
    import numpy as np

    from keraseq.text import sample

    rng = np.random.default_rng(0)
    est.predict(np.zeros((1, 5), np.int32))
    tok = np.zeros((1, 1), np.int32)
    kq = []
    for _k in range(GEN_WARMUP + GEN_STEPS):
        t0 = time.perf_counter()
        out = est.predict(tok, reset=False)
        kq.append(time.perf_counter() - t0)
        tok = sample(out[:, -1], 1.0, rng)[:, None].astype(np.int32)
    model = build(V, stateful_batch=1)
    model.set_weights(weights)
    model(np.zeros((1, 5), np.int32))
    out = []
    for call in (lambda t: np.asarray(model(t)), model.predict_on_batch):
        tok, times = np.zeros((1, 1), np.int32), []
        for _k in range(GEN_WARMUP + GEN_STEPS):
            t0 = time.perf_counter()
            pred = call(tok)
            times.append(time.perf_counter() - t0)
            tok = sample(pred[:, -1], 1.0, rng)[:, None].astype(np.int32)
        out.append(statistics.median(times[GEN_WARMUP:]))
    return statistics.median(kq[GEN_WARMUP:]), out[0], out[1]


def run_keraseq(args):
    import keras

    sys.path.insert(0, os.path.dirname(HERE))
    from epoch_timer import EpochTimer

    from keraseq import Estimator, bits_per_token

    x, y, xv, yv, V = corpus(args.chars)
    model = build(V)
    model.set_weights(load_init(args.init))
    timer = EpochTimer()
    # fused_rnn left out when fused: a keraseq without the keyword still runs
    extra = {"fused_rnn": False} if args.worker.endswith("-unfused") else {}
    est = Estimator(
        model,
        keras_loss(),
        keras_adam(),
        epochs=args.epochs,
        batch_size=STREAMS,
        seq_len=WINDOW,
        shuffle=False,
        verbose=0,
        **extra,
    )
    est.fit(x, y, callbacks=[timer])
    bits = bits_per_token(yv, est.predict(xv), from_logits=True)
    res = {"times": timer.times, "cpu": timer.cpu, "bits": bits, "backend": keras.backend.backend()}
    if res["backend"] == "jax":
        import jax

        res["devices"] = len(jax.devices())
    if args.generation:
        res["gen_keraseq"], res["gen_keras"], res["gen_keras_pob"] = generation_latency(
            est, est.model_.get_weights(), V
        )
    return res


def run_keras_loop(args, one_hot=False):
    import keras

    from keraseq import bits_per_token

    x, y, xv, yv, V = corpus(args.chars)
    model = build(V, stateful_batch=STREAMS, one_hot=one_hot)
    model.set_weights(load_init(args.init))
    model.compile(keras_adam(), keras_loss())
    times, cpu = [], []
    for _ in range(args.epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        for layer in model.layers:
            if getattr(layer, "stateful", False):
                layer.reset_states()
        for s in range(0, x.shape[1], WINDOW):
            loss = model.train_on_batch(x[:, s : s + WINDOW], y[:, s : s + WINDOW])
        float(loss)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    bits = bits_per_token(yv, stateful_run(model, xv), from_logits=True)
    return {"times": times, "cpu": cpu, "bits": bits, "backend": keras.backend.backend()}


def run_torch(args, threads=None):
    import numpy as np
    import torch
    from torch import nn

    if threads:
        torch.set_num_threads(threads)

    from keraseq import bits_per_token

    x, y, xv, yv, V = corpus(args.chars)
    emb, kernel, rec, bias, dk, db = load_init(args.init)

    class RNNModel(nn.Module):  # word_language_model's RNNModel, LSTM, no dropout, untied
        def __init__(self):
            super().__init__()
            self.encoder = nn.Embedding(V, EMB)
            self.rnn = nn.LSTM(EMB, UNITS)
            self.decoder = nn.Linear(UNITS, V)

        def forward(self, inp, hidden):
            output, hidden = self.rnn(self.encoder(inp), hidden)
            return self.decoder(output), hidden

    model = RNNModel()
    with torch.no_grad():  # Keras's initial weights: gate order i, f, c(g), o is PyTorch's too
        model.encoder.weight.copy_(torch.from_numpy(emb))
        model.rnn.weight_ih_l0.copy_(torch.from_numpy(kernel.T.copy()))
        model.rnn.weight_hh_l0.copy_(torch.from_numpy(rec.T.copy()))
        model.rnn.bias_ih_l0.copy_(torch.from_numpy(bias))
        model.rnn.bias_hh_l0.zero_()
        model.decoder.weight.copy_(torch.from_numpy(dk.T.copy()))
        model.decoder.bias.copy_(torch.from_numpy(db))
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, eps=EPS)
    criterion = nn.CrossEntropyLoss()
    # word_language_model's layout: (T, B) time-major; data[i:i+bptt] and targets.
    data = torch.from_numpy(np.ascontiguousarray(x.T).astype(np.int64))
    targets = torch.from_numpy(np.ascontiguousarray(y.T).astype(np.int64))

    def init_hidden(bsz):
        return (torch.zeros(1, bsz, UNITS), torch.zeros(1, bsz, UNITS))

    def repackage_hidden(h):
        return tuple(v.detach() for v in h)

    times, cpu, cut = [], [], False
    for _ in range(args.epochs):
        model.train()
        t0, c0 = time.perf_counter(), time.process_time()
        hidden = init_hidden(STREAMS)
        for i in range(0, data.size(0), WINDOW):
            if time.perf_counter() - t0 > args.max_epoch_s:
                cut = True  # pathologically slow: extrapolate from the windows done
                break
            inp, target = data[i : i + WINDOW], targets[i : i + WINDOW]
            hidden = repackage_hidden(hidden)
            optimizer.zero_grad()
            output, hidden = model(inp, hidden)
            loss = criterion(output.view(-1, V), target.reshape(-1))
            loss.backward()
            optimizer.step()
        float(loss)
        scale = data.size(0) / min(i + WINDOW, data.size(0))
        times.append((time.perf_counter() - t0) * scale)
        cpu.append((time.process_time() - c0) * scale)
    model.eval()
    with torch.no_grad():
        hidden, outs = init_hidden(STREAMS), []
        val = torch.from_numpy(np.ascontiguousarray(xv.T).astype(np.int64))
        for i in range(0, val.size(0), WINDOW):
            output, hidden = model(val[i : i + WINDOW], hidden)
            outs.append(output.numpy())
    logits = np.concatenate(outs, axis=0).transpose(1, 0, 2)
    return {
        "times": times,
        "cpu": cpu,
        "bits": bits_per_token(yv, logits, from_logits=True),
        "threads": torch.get_num_threads(),
        "extrapolated": cut,
    }


def window_parts(x, y, as_array) -> list:
    """The windows of an epoch for the hand loops' one call per epoch: ``[(xs, ys)]`` of the
    full windows, ``(n, WINDOW, B)`` int32 each, and a second pair for a shorter last window
    (its own call); ``as_array`` makes each the backend's array."""
    import numpy as np

    def windows(a, start, stop):  # (B, L) -> ((stop - start) / WINDOW, WINDOW, B)
        a = a[:, start:stop]
        a = a.reshape(a.shape[0], -1, min(WINDOW, stop - start)).transpose(1, 2, 0)
        return as_array(a.astype(np.int32))

    L = x.shape[1]
    full = L - L % WINDOW
    parts = [(windows(x, 0, full), windows(y, 0, full))] if full else []
    if full < L:
        parts.append((windows(x, full, L), windows(y, full, L)))
    return parts


def run_epochs(epochs, train, params, state, parts, zeros):
    """The hand loops' epochs: ``train(params, state, h, c, xs, ys) -> (params, state, h, c,
    loss sum)`` over each of ``parts``, the state reset to ``zeros`` at each epoch. Returns
    ``(params, state, wall seconds, CPU seconds)``, one time per epoch."""
    times, cpu = [], []
    for _ in range(epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        h, c, total = zeros, zeros, 0.0
        for xs, ys in parts:
            params, state, h, c, lsum = train(params, state, h, c, xs, ys)
            total = total + lsum
        float(total)  # waits for the last window
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return params, state, times, cpu


def run_jax(args):
    """The LM by hand in JAX: one ``jax.jit`` call runs every window of the epoch."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from keraseq import bits_per_token

    x, y, xv, yv, V = corpus(args.chars)
    emb, kernel, rec, bias, dk, db = load_init(args.init)  # Keras's layout: (in, out) kernels
    params = {"e": emb, "k": kernel, "r": rec, "b": bias, "dk": dk, "db": db}
    params = jax.tree_util.tree_map(jnp.asarray, params)
    opt_state = (
        jax.tree_util.tree_map(jnp.zeros_like, params),  # m
        jax.tree_util.tree_map(jnp.zeros_like, params),  # v (own buffers: donated)
        jnp.zeros((), "float32"),  # step count
    )

    def forward(p, h, c, xw):  # xw: (window, B) int ids, time-major
        def cell(hc, xt):  # Keras's LSTM cell, gate order i, f, c, o
            h, c = hc
            z = xt @ p["k"] + h @ p["r"] + p["b"]
            i, f, g, o = jnp.split(z, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        (h, c), hs = lax.scan(cell, (h, c), p["e"][xw])
        return hs @ p["dk"] + p["db"], h, c  # logits (window, B, V)

    def window_loss(p, h, c, xw, yw):  # sparse softmax cross-entropy, mean over the window
        logits, h, c = forward(p, h, c, xw)
        logp = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(logp, yw[..., None], axis=-1)
        return jnp.mean(nll), (h, c)

    def adam(p, g, state):  # keras.optimizers.Adam.update_step
        m, v, t = state
        t = t + 1
        lr_t = LR * jnp.sqrt(1 - BETA2**t) / (1 - BETA1**t)
        m = jax.tree_util.tree_map(lambda m, g: m + (g - m) * (1 - BETA1), m, g)
        v = jax.tree_util.tree_map(lambda v, g: v + (g * g - v) * (1 - BETA2), v, g)
        p = jax.tree_util.tree_map(lambda p, m, v: p - lr_t * m / (jnp.sqrt(v) + EPS), p, m, v)
        return p, (m, v, t)

    grad_fn = jax.value_and_grad(window_loss, has_aux=True)

    # windows (n, window, B): lax.scan over them, forward + backward + Adam per window
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train(p, state, h, c, xs, ys):
        def step(carry, xy):
            p, state, h, c = carry
            (loss, (h, c)), g = grad_fn(p, h, c, *xy)
            p, state = adam(p, g, state)
            return (p, state, lax.stop_gradient(h), lax.stop_gradient(c)), loss

        (p, state, h, c), losses = lax.scan(step, (p, state, h, c), (xs, ys))
        return p, state, h, c, jnp.sum(losses)

    zeros = jnp.zeros((STREAMS, UNITS), "float32")
    params, opt_state, times, cpu = run_epochs(
        args.epochs, train, params, opt_state, window_parts(x, y, jnp.asarray), zeros
    )

    @jax.jit
    def logits_of(p, xs):  # the whole validation streams in one scan, state carried
        out, _, _ = forward(p, zeros, zeros, xs.T)
        return out.transpose(1, 0, 2)

    logits = np.asarray(logits_of(params, jnp.asarray(xv.astype(np.int32))))
    return {
        "times": times,
        "cpu": cpu,
        "bits": bits_per_token(yv, logits, from_logits=True),
        "devices": len(jax.devices()),
    }


def run_fused_hand(args):
    """The LM by hand with keraseq's fused LSTM loop written out, on TensorFlow or JAX.

    The same maths as keraseq's fused loop (``keraseq/fused.py``) and the same program shape
    as the JAX hand loop (one compiled call runs every full window of the epoch, the windows
    in a loop inside it): per window the input projection ``x @ kernel + bias`` of all the
    steps in one matmul, a forward time loop that carries ``h @ recurrent_kernel`` and saves
    the gates, the logits and the softmax cross-entropy's gradient, a reverse time loop of
    pre-activation gradients, then every weight gradient as one matmul over the window (the
    embedding's a segment sum), and Keras's Adam. No autodiff: the gradients are written out.
    ``tf fused loop``: ``tf.function(jit_compile=True)``, the loops ``tf.while_loop`` over
    ``TensorArray``s (a plain graph, ``jit_compile=False``, as ``tf fused loop (graph)``);
    ``jax fused loop``: ``jax.jit``, the loops ``lax.scan``, on one JAX CPU device."""
    import numpy as np

    from keraseq import bits_per_token

    x, y, xv, yv, V = corpus(args.chars)
    init = load_init(args.init)
    tf_side = args.worker.startswith("tf")
    if tf_side:
        import tensorflow as tf

        N = _TFOps(tf)
        compile_ = functools.partial(tf.function, jit_compile=not args.worker.endswith("(graph)"))
    else:
        import jax
        import jax.numpy as jnp

        N = _JaxOps(jax, jnp)
        compile_ = jax.jit
    F32 = "float32"
    names = ("e", "k", "r", "b", "dk", "db")
    params = {k: N.array(a) for k, a in zip(names, init)}
    state = (
        {k: N.zeros(a.shape) for k, a in zip(names, init)},
        {k: N.zeros(a.shape) for k, a in zip(names, init)},
        N.array(np.zeros((), F32)),
    )

    def dot(a, b):  # (S, B, m) @ (m, n) -> (S, B, n), as one 2-D matmul
        s = a.shape
        return N.reshape(N.matmul(N.reshape(a, (-1, s[-1])), b), (s[0], s[1], b.shape[-1]))

    def tdot(a, b):  # sum over steps and rows of a[s, b]^T b[s, b]: ONE matmul
        return N.matmul(
            N.transpose(N.reshape(a, (-1, a.shape[-1]))), N.reshape(b, (-1, b.shape[-1]))
        )

    def forward(p, h0, c0, xw):  # xw: (S, B) ids, time-major
        e = N.take(p["e"], xw)
        xp = dot(e, p["k"]) + p["b"]

        def step(hc, xp_t):  # Keras's LSTM cell, gate order i, f, c, o
            h, c = hc
            zi, zf, zg, zo = N.split(xp_t + N.matmul(h, p["r"]), 4)
            i, f, g, o = N.sigmoid(zi), N.sigmoid(zf), N.tanh(zg), N.sigmoid(zo)
            c = f * c + i * g
            tc = N.tanh(c)
            h = o * tc
            return (h, c), (h, c, i, f, g, o, tc)

        (h, c), saved = N.scan(step, (h0, c0), xp)
        return e, saved, h, c

    def window(p, st, h0, c0, xw, yw):
        e, (H, C, i, f, g, o, tc), h, c = forward(p, h0, c0, xw)
        S, B = xw.shape
        logits = dot(H, p["dk"]) + p["db"]
        top = N.max(logits)
        lse = top + N.log(N.sum(N.exp(logits - top)))
        onehot = N.one_hot(yw, V)
        loss = N.mean(lse[..., 0] - N.sum(logits * onehot)[..., 0])
        dlog = (N.exp(logits - lse) - onehot) / (S * B)
        dH = dot(dlog, N.transpose(p["dk"]))
        H_prev = N.concat([h0[None], H[:-1]], 0)
        C_prev = N.concat([c0[None], C[:-1]], 0)
        rT = N.transpose(p["r"])

        def back(d, xs):
            dh_next, dc_next = d
            dH_t, i, f, g, o, tc, c_prev = xs
            dh = dH_t + dh_next
            dc = dc_next + dh * o * (1.0 - tc * tc)
            dz = N.concat(
                [
                    dc * g * i * (1.0 - i),
                    dc * c_prev * f * (1.0 - f),
                    dc * i * (1.0 - g * g),
                    dh * tc * o * (1.0 - o),
                ],
                -1,
            )
            return (N.matmul(dz, rT), dc * f), dz

        zeros = N.zeros_like(h0)
        _, dZ = N.scan(back, (zeros, zeros), (dH, i, f, g, o, tc, C_prev), reverse=True)
        de = N.segment_sum(N.reshape(dot(dZ, N.transpose(p["k"])), (-1, EMB)), xw, V)
        grads = {
            "e": de,
            "k": tdot(e, dZ),
            "r": tdot(H_prev, dZ),
            "b": N.sum(dZ, (0, 1)),
            "dk": tdot(H, dlog),
            "db": N.sum(dlog, (0, 1)),
        }
        p, st = adam(p, grads, st)
        return p, st, h, c, loss

    def adam(p, g, st):  # keras.optimizers.Adam.update_step
        m, v, t = st
        t = t + 1.0
        lr_t = LR * N.sqrt(1.0 - BETA2**t) / (1.0 - BETA1**t)
        m = {k: m[k] + (g[k] - m[k]) * (1.0 - BETA1) for k in m}
        v = {k: v[k] + (g[k] * g[k] - v[k]) * (1.0 - BETA2) for k in v}
        p = {k: p[k] - lr_t * m[k] / (N.sqrt(v[k]) + EPS) for k in p}
        return p, (m, v, t)

    @compile_
    def train(p, st, h, c, xs, ys):
        def step(carry, xy):
            p, st, h, c = carry
            p, st, h, c, loss = window(p, st, h, c, *xy)
            return (p, st, h, c), loss

        (p, st, h, c), losses = N.scan(step, (p, st, h, c), (xs, ys))
        return p, st, h, c, N.sum(losses, 0)

    zeros = N.zeros((STREAMS, UNITS))
    params, state, times, cpu = run_epochs(
        args.epochs, train, params, state, window_parts(x, y, N.array), zeros
    )

    @compile_
    def logits_of(p, xs):
        _, (H, *_), _, _ = forward(p, zeros, zeros, N.transpose(xs))
        return dot(H, p["dk"]) + p["db"]

    logits = np.asarray(logits_of(params, N.array(xv.astype(np.int32)))).transpose(1, 0, 2)
    return {"times": times, "cpu": cpu, "bits": bits_per_token(yv, logits, from_logits=True)}


class _TFOps:
    """The few array operations of :func:`run_fused_hand`, on TensorFlow."""

    def __init__(self, tf):
        self.tf = tf
        for name in ("sigmoid", "tanh", "exp", "log", "sqrt", "matmul", "transpose", "reshape"):
            setattr(self, name, getattr(tf.math if name in ("exp", "log", "sqrt") else tf, name))

    def array(self, a):
        return self.tf.convert_to_tensor(a)

    def zeros(self, shape):
        return self.tf.zeros(shape, "float32")

    def zeros_like(self, a):
        return self.tf.zeros_like(a)

    def take(self, table, ids):
        return self.tf.gather(table, ids)

    def split(self, z, n):
        return self.tf.split(z, n, axis=-1)

    def concat(self, parts, axis):
        return self.tf.concat(parts, axis)

    def max(self, a):  # over the last axis, kept
        return self.tf.reduce_max(a, axis=-1, keepdims=True)

    def sum(self, a, axis=-1):
        return self.tf.reduce_sum(a, axis=axis, keepdims=axis == -1)

    def mean(self, a):
        return self.tf.reduce_mean(a)

    def one_hot(self, ids, depth):
        return self.tf.one_hot(ids, depth, dtype="float32")

    def segment_sum(self, rows, ids, n):
        return self.tf.math.unsorted_segment_sum(rows, self.tf.reshape(ids, (-1,)), n)

    def scan(self, body, init, xs, reverse=False):
        """``lax.scan`` written as a ``tf.while_loop`` over ``TensorArray``s."""
        tf = self.tf
        flat = tf.nest.flatten(xs)
        n = int(flat[0].shape[0])
        ins = [tf.TensorArray(a.dtype, size=n, element_shape=a.shape[1:]).unstack(a) for a in flat]
        # the outputs' structure: one trace of the body (not run)
        spec = tf.nest.map_structure(
            lambda t: tf.TensorSpec(t.shape, t.dtype),
            body(init, tf.nest.pack_sequence_as(xs, [a[0] for a in flat]))[1],
        )
        outs = [
            tf.TensorArray(s.dtype, size=n, element_shape=s.shape) for s in tf.nest.flatten(spec)
        ]

        def step(k, carry, outs):
            i = n - 1 - k if reverse else k
            carry, ys = body(carry, tf.nest.pack_sequence_as(xs, [ta.read(i) for ta in ins]))
            return k + 1, carry, [ta.write(i, y) for ta, y in zip(outs, tf.nest.flatten(ys))]

        _, carry, outs = tf.while_loop(
            lambda k, *_: k < n, step, (tf.constant(0), init, outs), maximum_iterations=n
        )
        return carry, tf.nest.pack_sequence_as(spec, [ta.stack() for ta in outs])


class _JaxOps:
    """The same operations on JAX."""

    def __init__(self, jax, jnp):
        self.jax, self.jnp = jax, jnp
        self.sigmoid = jax.nn.sigmoid
        for name in ("tanh", "exp", "log", "sqrt", "matmul", "transpose", "reshape", "zeros_like"):
            setattr(self, name, getattr(jnp, name))

    def array(self, a):
        return self.jnp.asarray(a)

    def zeros(self, shape):
        return self.jnp.zeros(shape, "float32")

    def take(self, table, ids):
        return table[ids]

    def split(self, z, n):
        return self.jnp.split(z, n, axis=-1)

    def concat(self, parts, axis):
        return self.jnp.concatenate(parts, axis)

    def max(self, a):
        return self.jnp.max(a, axis=-1, keepdims=True)

    def sum(self, a, axis=-1):
        return self.jnp.sum(a, axis=axis, keepdims=axis == -1)

    def mean(self, a):
        return self.jnp.mean(a)

    def one_hot(self, ids, depth):
        return self.jax.nn.one_hot(ids, depth, dtype="float32")

    def segment_sum(self, rows, ids, n):
        return self.jax.ops.segment_sum(rows, ids.reshape(-1), n)

    def scan(self, body, init, xs, reverse=False):
        return self.jax.lax.scan(body, init, xs, reverse=reverse)


def worker(args):
    fn = {
        "init": run_init,
        "keras loop": run_keras_loop,
        "keras loop (one-hot)": lambda a: run_keras_loop(a, one_hot=True),
        "torch": run_torch,
        "torch-1t": lambda a: run_torch(a, threads=1),
        "jax": run_jax,
        "tf fused loop": run_fused_hand,
        "tf fused loop (graph)": run_fused_hand,
        "jax fused loop": run_fused_hand,
    }.get(args.worker, run_keraseq)
    print("RESULT " + json.dumps(fn(args)), flush=True)


# ---------------------------------------------------------------------------------- parent
def launch(system, args, generation=False):
    cmd = [
        sys.executable,
        HERE,
        "--worker",
        system,
        "--chars",
        str(args.chars),
        "--epochs",
        str(args.epochs),
        "--init",
        args.init,
        "--max-epoch-s",
        str(args.max_epoch_s),
    ]
    cmd += ["--generation"] if generation else []
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND=BACKEND[system])
    if system.endswith("-1dev") or system in ("jax", "jax fused loop"):
        # one JAX CPU device: keraseq[jax]-1dev; the hand loop (importing keraseq for its corpus
        # would otherwise ask JAX for one device per core, which the hand loop does not use)
        env["KERASEQ_CPU_DEVICES"] = "1"
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout} s"}
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    lines = [ln.strip() for ln in (out.stderr or out.stdout).splitlines() if ln.strip()]
    msg = lines[-1] if lines else f"exit status {out.returncode}"
    return {"error": msg if len(msg) <= 120 else msg[:117] + "..."}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--chars", type=int, default=640_000)
    ap.add_argument("--epochs", type=int, default=3, help="per run; the first includes compiling")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per worker")
    ap.add_argument(
        "--max-epoch-s",
        type=float,
        default=30.0,
        help="a torch epoch stops after the window that passes this many seconds "
        "and its time is extrapolated (marked *)",
    )
    ap.add_argument("--json", default=None, help="also write the raw results to this file")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--init", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--generation", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    systems = [s for s in args.systems.split(",") if s]
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        args.init = os.path.join(tmp, "init.npz")
        res = launch("init", args)
        if "error" in res:
            raise SystemExit(f"could not build the initial weights: {res['error']}")
        results = {s: [] for s in systems}
        errors = {s: [] for s in systems}
        for rnd in range(args.rounds):
            order = systems[rnd % len(systems) :] + systems[: rnd % len(systems)]
            for s in order:
                if errors[s] and not results[s]:
                    continue
                res = launch(s, args, generation=s in FUSED and rnd == 0)
                (errors if "error" in res else results)[s].append(res.get("error", res))
                print(
                    f"  [round {rnd + 1}] {LABELS.get(s, s)}: "
                    + (
                        ", ".join(f"{t:.2f}" for t in res["times"]) + " s, "
                        f"{res['bits']:.4f} bits/char"
                        if "times" in res
                        else res["error"]
                    )
                    + (f" ({res['devices']} JAX device(s))" if "devices" in res else ""),
                    flush=True,
                )
    x, _, xv, _, V = corpus(args.chars)
    n_win = math.ceil(x.shape[1] / WINDOW)
    print(
        f"\nchar LM: {args.chars} chars, V={V}, Embedding({V},{EMB})+LSTM({UNITS})+Dense({V}), "
        f"Adam {LR}, {STREAMS} streams x {x.shape[1]} steps, windows of {WINDOW} "
        f"({n_win} updates/epoch); {args.rounds} round(s) x {args.epochs - 1} steady epoch(s); "
        f"{os.cpu_count()} cores"
    )
    stats = {}
    for s in systems:
        runs = results[s]
        steady = [t for r in runs for t in r["times"][1:]]
        if steady:
            first = [r["times"][0] - statistics.median(r["times"][1:]) for r in runs]
            stats[s] = {
                "median": statistics.median(steady),
                "first": statistics.median(first),
                "bits": runs[-1]["bits"],
                "mark": "*" if any(r.get("extrapolated") for r in runs) else " ",
                "threads": runs[-1].get("threads"),
                "rounds": [statistics.median(r["times"][1:]) for r in runs if len(r["times"]) > 1],
                # cores busy: CPU seconds / wall seconds of the steady epochs
                "cores": statistics.median(
                    c / t for r in runs for c, t in zip(r.get("cpu", [])[1:], r["times"][1:])
                )
                if all(r.get("cpu") for r in runs)
                else None,
            }
    kq = [s for s in systems if s in FUSED and s in stats]  # the fused keraseq columns

    def label(s):
        if s == "torch" and stats.get(s, {}).get("threads"):
            return f"torch ({stats[s]['threads']} threads)"
        return LABELS.get(s, s)

    head = (
        f"{'system':28s} {'s/epoch':>8s} {'cores':>5s} {'1st-epoch extra':>15s} "
        f"{'val bits/char':>13s} " + " ".join(f"{'vs ' + k:>22s}" for k in kq)
    )
    print(head + "\n" + "-" * len(head))
    for s in systems:
        if s not in stats:
            print(f"{label(s):28s} not available ({errors[s][-1] if errors[s] else 'no result'})")
            continue
        st = stats[s]
        ratios = " ".join(f"{st['median'] / stats[k]['median']:21.2f}x" for k in kq)
        bits = f"{st['bits']:13.4f}" if st["mark"] == " " else f"{'(cut)':>13s}"
        cores = f"{st['cores']:5.2f}" if st["cores"] is not None else f"{'?':>5s}"
        print(
            f"{label(s):28s} {st['median']:7.2f}{st['mark']} {cores} {st['first']:15.2f} {bits} "
            f"{ratios}"
        )
    print(
        "(vs keraseq[..] = this system's median s/epoch / keraseq's: > 1 = keraseq faster; "
        "cores = CPU seconds / wall seconds of a steady epoch, every thread of the process; "
        "* = epochs cut at --max-epoch-s and extrapolated)"
    )
    for ref in ("keras loop", "keras loop (one-hot)"):
        for k in kq:
            if ref in stats:
                print(
                    f"{k} bits/char - {ref} bits/char = "
                    f"{stats[k]['bits'] - stats[ref]['bits']:+.4f} (target: within 0.02)"
                )
    for line in ratio_lines(stats, systems):
        print(line)
    print(f"\ngeneration, one step (batch 1), median of {GEN_STEPS}:")
    for s in kq:
        gen = [r for r in results[s] if "gen_keraseq" in r]
        if gen:
            a, b, c = gen[0]["gen_keraseq"], gen[0]["gen_keras"], gen[0]["gen_keras_pob"]
            print(
                f"  {s}: predict(reset=False) {1e3 * a:.2f} ms; Keras model(x) {1e3 * b:.2f} ms"
                f" ({b / a:.2f}x keraseq's); predict_on_batch {1e3 * c:.2f} ms "
                f"({c / a:.2f}x keraseq's)"
            )
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "errors": errors, "stats": stats}, f, indent=1)


if __name__ == "__main__":
    main()
