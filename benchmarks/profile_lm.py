"""Where keraseq[jax]'s time goes on the character LM: a ``jax.profiler`` trace, parsed.

Trains ``bench_lm.py``'s model (Embedding + LSTM(128) + Dense, 32 streams, windows of 50) with
``Estimator.fit`` on JAX for three epochs, traces the third, and prints XLA's operations grouped
by how often they ran: once per time step of a window (the time loops' bodies), once per window
and device (the window's own operations, the time loops as a whole, the ``psum`` of the
gradients over the CPU devices), with the total and the mean time of each. The figures of
``docs/performance/fused.md`` ("Where the time goes") come from it.

Usage::

    KERAS_BACKEND=jax python benchmarks/profile_lm.py                # 200k characters
    KERAS_BACKEND=jax python benchmarks/profile_lm.py --chars 640000 --top 40
    KERAS_BACKEND=jax python benchmarks/profile_lm.py --unfused       # fused_rnn=False

Keep the machine otherwise idle: each operation's time is wall time on its thread.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keraseq  # noqa: F401  (before Keras: its start-up lines follow TF_CPP_MIN_LOG_LEVEL)


def trace_epoch(args, out_dir):
    import bench_lm as lm
    import jax
    import keras

    from keraseq import Estimator

    x, y, _, _, vocab = lm.corpus(args.chars)
    keras.utils.set_random_seed(0)
    times = []

    class Trace(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()
            if epoch == 2:
                jax.profiler.start_trace(out_dir, create_perfetto_trace=True)

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)
            if epoch == 2:
                jax.profiler.stop_trace()

    Estimator(
        lm.build(vocab),
        lm.keras_loss(),
        lm.keras_adam(),
        epochs=3,
        batch_size=lm.STREAMS,
        seq_len=lm.WINDOW,
        shuffle=False,
        verbose=0,
        fused_rnn=not args.unfused,
    ).fit(x, y, callbacks=[Trace()])
    # each device runs the program of every full window of the streams once (a shorter last
    # window runs its own), and the time loops' bodies once per step of those windows
    devices = len(jax.devices())
    windows = x.shape[1] // lm.WINDOW * devices
    return times, devices, windows, windows * lm.WINDOW


def xla_operations(out_dir):
    """``{name: (count, total µs)}`` of the trace's XLA operations (not Python's, not the
    ``end:`` markers of asynchronous ones)."""
    path = sorted(glob.glob(os.path.join(out_dir, "**", "*.trace.json.gz"), recursive=True))[-1]
    with gzip.open(path) as f:
        events = json.load(f)["traceEvents"]
    count, total = collections.Counter(), collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or name.startswith(("$", "end:", "ThunkExecutor")):
            continue
        count[name] += 1
        total[name] += e["dur"]
    return {n: (count[n], total[n]) for n in count}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chars", type=int, default=200_000)
    ap.add_argument("--top", type=int, default=15, help="operations listed per group")
    ap.add_argument("--unfused", action="store_true", help="fused_rnn=False")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as out_dir:
        times, devices, windows, steps = trace_epoch(args, out_dir)
        ops = xla_operations(out_dir)
    by_count = collections.defaultdict(list)
    for name, (n, us) in ops.items():
        by_count[n].append((us, name))
    print(
        f"epochs {', '.join(f'{t:.2f}' for t in times)} s (the third traced); {devices} device(s); "
        f"{windows} window runs (windows x devices), {steps} step runs"
    )
    # (the time loops are among the window's operations: "while.N", their steps below)
    for label, n in (("per window and device", windows), ("per time step", steps)):
        rows = sorted(by_count[n], reverse=True)
        each = sum(us for us, _ in rows) / n / 1e3
        print(f"\n{label}: {len(rows)} operations, {each:.3f} ms in all per run")
        for us, name in rows[: args.top]:
            print(f"  {us / n:9.1f} µs  {name}")


if __name__ == "__main__":
    main()
