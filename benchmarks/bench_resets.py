"""Per-row state resets (``resets=``): their cost on the character LM, and what they change.

The workload is ``bench_lm.py``'s: Embedding(V, 32) + LSTM(128) + Dense(V) logits, Adam (lr
2e-3), 32 streams, windows of 50 characters, on the source of the standard-library modules of
``keraseq.datasets.STDLIB_MODULES`` (~640,000 characters). Here each module is a document: the
first 90 % of every module, laid end to end, is the training text, the last 10 % the
validation text, each cut into 32 streams by ``keraseq.text.batchify`` given the list of
documents, which returns the resets at the documents' starts. Two systems per backend, in one
process per backend, their epochs alternating (``partial_fit``, one epoch per call, the order
swapped every epoch: each pair of epochs meets the same load on a shared machine), the same
initial weights (seed 0):

- ``plain``: ``fit(x, y)``, the state carried across documents;
- ``resets``: ``fit(x, y, resets=resets)``, the state restarting at each document's start
  (inside a window wherever the start falls).

Reported per backend: the median steady epoch (every epoch after the first) of each, the
median of the paired ratios ``resets / plain`` (the target: at most 1.05), and the validation
bits per character after ``--epochs`` epochs, each model evaluated as it was trained (with
resets at the validation documents' starts, or without): over every character, and over the
first 64 characters of each document that starts inside a stream (where the state carried
from the previous document differs most; a stream's first characters start from zeros in
both).

    python benchmarks/bench_resets.py                 # both backends, 8 epochs each
    python benchmarks/bench_resets.py --backends jax --epochs 12
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.abspath(__file__)
STREAMS, WINDOW, EMB, UNITS, LR = 32, 50, 32, 128, 2e-3
HEAD = 64  # "first characters of a document"


def corpus():
    """(x, y, resets, xv, yv, resets_v, V): 90 % / 10 % of every module as documents."""
    from keraseq.datasets import STDLIB_MODULES, load_stdlib_text
    from keraseq.text import Vocabulary, batchify

    texts = [load_stdlib_text((name,)) for name in STDLIB_MODULES]
    vocab = Vocabulary("".join(texts))
    docs = [vocab.encode(t) for t in texts]
    cut = [int(0.9 * len(d)) for d in docs]
    x, y, r = batchify([d[:c] for d, c in zip(docs, cut)], STREAMS)
    xv, yv, rv = batchify([d[c:] for d, c in zip(docs, cut)], STREAMS)
    return x, y, r, xv, yv, rv, len(vocab)


def build(V):
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(V, EMB),
            keras.layers.LSTM(UNITS, return_sequences=True),
            keras.layers.Dense(V),
        ]
    )


def bits_of(est, xv, yv, rv, use):
    """Validation bits per character: over all characters, and over the first HEAD
    characters after each document start inside a stream."""
    import numpy as np

    logits = est.predict(xv, resets=rv if use else None)
    top = logits.max(-1, keepdims=True)
    log_p = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    bits = -np.take_along_axis(log_p, yv[..., None], -1)[..., 0] / np.log(2.0)
    since = np.full(rv.shape, HEAD, np.int64)  # a stream's first steps: not a document start
    for t in range(1, rv.shape[1]):
        since[:, t] = np.where(rv[:, t], 0, since[:, t - 1] + 1)
    head = since < HEAD
    return float(bits.mean()), float(bits[head].mean()), int(head.sum())


def worker(epochs: int) -> dict:
    """Both systems in one process, their epochs alternating (``partial_fit``, one epoch per
    call; the order swaps every epoch), so each pair of epochs meets the same machine load."""
    import time

    import keras

    from keraseq import Estimator

    x, y, r, xv, yv, rv, V = corpus()
    ests = {
        system: Estimator(
            build(V),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            keras.optimizers.Adam(LR),
            batch_size=STREAMS,
            seq_len=WINDOW,
            shuffle=False,
            verbose=0,
            random_state=0,
        )
        for system in ("plain", "resets")
    }
    times: dict[str, list] = {"plain": [], "resets": []}
    for e in range(epochs):
        for system in ("plain", "resets") if e % 2 == 0 else ("resets", "plain"):
            t0 = time.perf_counter()
            ests[system].partial_fit(x, y, resets=r if system == "resets" else None)
            times[system].append(time.perf_counter() - t0)
    out = {"times": times, "backend": keras.backend.backend(), "documents": int(r[:, 1:].sum())}
    for system, est in ests.items():
        out[system] = bits_of(est, xv, yv, rv, system == "resets")
    return out


def launch(backend: str, epochs: int) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, HERE, "--worker", "both", "--epochs", str(epochs)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"the worker on {backend} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", default="tensorflow,jax")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.epochs)))
        return
    print(f"{'backend':<11} {'system':<7} {'s/epoch':>8} {'first':>7} {'bits':>7} {'head':>7}")
    for backend in args.backends.split(","):
        res = launch(backend, args.epochs)
        times = res["times"]
        for system in ("plain", "resets"):
            bits, head, n_head = res[system]
            print(
                f"{backend:<11} {system:<7} {statistics.median(times[system][1:]):>8.3f} "
                f"{times[system][0]:>7.2f} {bits:>7.4f} {head:>7.4f}"
            )
        ratios = [b / a for a, b in zip(times["plain"][1:], times["resets"][1:])]
        print(
            f"{backend:<11} resets / plain: {statistics.median(ratios):.3f} (median of "
            f"{len(ratios)} paired steady epochs, range {min(ratios):.3f}-{max(ratios):.3f}; "
            f"{res['documents']} document starts inside the training streams, {n_head} "
            f"validation characters in 'head')"
        )


if __name__ == "__main__":
    main()
