"""Latency of one streaming step: the exported SavedModel against keraseq's and Keras's calls.

A model of the realistic size of ``bench_peers.py`` (LSTM(128) on 32 features, Dense(1)) is
fitted for one epoch and exported (``Estimator.export``); then one new observation per stream
(a window of one step) is pushed through, for 1 and for 64 streams, by:

- ``served.step``: the export loaded with ``tf.saved_model.load``, states passed explicitly;
- ``signature``: the same export's flat ``serving_default`` signature (what TF Serving calls);
- ``predict(reset=False)``: ``est.predict`` continuing its kept states;
- ``keras predict_on_batch``: Keras's compiled predict on the model (from zero states: no
  streaming, Keras's own cost per call);
- ``keras model(x)``: the Keras model called eagerly, ``model(x, training=False)``, as a
  server without keraseq would call it (from zero states too).

Each system runs ``--calls`` calls per round, the rounds interleaved (``--rounds``), after
warm-up calls; reported: the median per-call time in microseconds over rounds and each
system's ratio to ``served.step``. One process per backend (the export on JAX goes through
jax2tf; the served graph is TensorFlow's in both).

    python benchmarks/bench_export.py                       # both backends
    python benchmarks/bench_export.py --backends jax --calls 300
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.abspath(__file__)
FEATURES, UNITS = 32, 128


def worker(args) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from keraseq import Estimator

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = keras.Sequential(
        [
            keras.Input((None, FEATURES)),
            keras.layers.LSTM(UNITS, return_sequences=True),
            keras.layers.Dense(1),
        ]
    )
    x = rng.normal(size=(64, 40, FEATURES)).astype("float32")
    est = Estimator(model, epochs=1, batch_size=32, seq_len=20, verbose=0).fit(x, x[..., :1])
    path = os.path.join(tempfile.mkdtemp(), "stream")
    est.export(path)
    served = tf.saved_model.load(path)
    signature = served.signatures["serving_default"]
    result = {}
    for streams in (1, 64):
        x1 = rng.normal(size=(streams, 1, FEATURES)).astype("float32")
        states = served.initial_states(tf.constant(streams))
        est.predict(x1)  # starts the kept states
        box = {"states": states, "x": tf.constant(x1)}

        def step(box=box):
            _, box["states"] = served.step(box["x"], box["states"])

        flat = dict(box["states"], x=tf.constant(x1))

        def sig(flat=flat):
            signature(**flat)

        def predict(x1=x1):
            est.predict(x1, reset=False)

        def on_batch(x1=x1):
            model.predict_on_batch(x1)

        def direct(x1=x1):
            model(x1, training=False)

        systems = {
            "served.step": step,
            "signature": sig,
            "predict(reset=False)": predict,
            "keras predict_on_batch": on_batch,
            "keras model(x)": direct,
        }
        for fn in systems.values():
            for _ in range(10):
                fn()
        times = {name: [] for name in systems}
        for _ in range(args.rounds):
            for name, fn in systems.items():
                start = time.perf_counter()
                for _ in range(args.calls):
                    fn()
                times[name].append((time.perf_counter() - start) / args.calls * 1e6)
        result[streams] = {name: statistics.median(t) for name, t in times.items()}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="tensorflow,jax")
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return
    print(f"One streaming step (a new observation per stream), LSTM({UNITS}), {FEATURES} features;")
    print(f"median us per call over {args.rounds} interleaved rounds of {args.calls} calls\n")
    for backend in args.backends.split(","):
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        cmd = [sys.executable, HERE, "--worker", "--calls", str(args.calls)]
        cmd += ["--rounds", str(args.rounds)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
        if done.returncode or not lines:
            print(done.stdout[-2000:], done.stderr[-4000:])
            raise SystemExit(f"{backend} worker failed")
        result = json.loads(lines[-1][len("RESULT ") :])
        print(f"keraseq[{backend}]")
        print(f"{'streams':>8} | " + " | ".join(f"{name:>24}" for name in result["1"]))
        for streams, row in result.items():
            base = row["served.step"]
            cells = [f"{us:9.0f} us ({us / base:5.2f}x)" for us in row.values()]
            print(f"{streams:>8} | " + " | ".join(f"{c:>24}" for c in cells))
        print()


if __name__ == "__main__":
    main()
