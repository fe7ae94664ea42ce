"""Out-of-core training, measured side by side.

1. Throughput: ``fit`` from an HDF5 file in the page cache against the same data in memory
   (shuffled minibatches; ratio of steady epoch times; target >= 0.95x).
2. Memory: peak RSS of ``fit`` (1 epoch) + ``predict(out=h5)`` over a 4 GB HDF5 file
   (N=2000, T=1000, F=500) minus the same job over a 40 MB file (N=20), each in its own
   subprocess (``resource.getrusage``); target < 200 MB.

Usage: python benchmarks/bench_io.py [--skip-rss] [--folder /tmp/keraseq_io]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.abspath(__file__)


def make_file(path, n, t, f, block=50):
    import h5py
    import numpy as np

    if os.path.exists(path):
        return
    rng = np.random.default_rng(0)
    with h5py.File(path + ".tmp", "w") as h:
        x = h.create_dataset("x", (n, t, f), "float32", chunks=(1, t, f))
        y = h.create_dataset("y", (n, t, 1), "float32", chunks=(1, t, 1))
        for i in range(0, n, block):
            xb = rng.normal(size=(min(block, n - i), t, f)).astype("float32")
            x[i : i + len(xb)] = xb
            y[i : i + len(xb)] = xb[..., :1].cumsum(1) / 30
    os.replace(path + ".tmp", path)


def job(path):
    """fit 1 epoch + predict(out=h5) on ``path``; print peak RSS (MB) as JSON."""
    import h5py
    import keras

    from keraseq import Estimator

    keras.utils.set_random_seed(0)
    with h5py.File(path, "r") as f:
        x, y = f["x"], f["y"]
        model = keras.Sequential(
            [
                keras.Input((None, x.shape[-1])),
                keras.layers.LSTM(8, return_sequences=True),
                keras.layers.Dense(1),
            ]
        )
        est = Estimator(model, "mse", "adam", epochs=1, batch_size=32, seq_len=100, verbose=0)
        t0 = time.perf_counter()
        est.fit(x, y)
        out_path = path + ".pred.h5"
        with h5py.File(out_path, "w") as o:
            out = o.create_dataset("yhat", (x.shape[0], x.shape[1], 1), "float32")
            est.predict(x, out=out)
        os.remove(out_path)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"rss_mb": rss, "seconds": time.perf_counter() - t0}))


def run_job(path):
    out = subprocess.run([sys.executable, HERE, "--job", path], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(out.stderr[-3000:])


def throughput(folder, epochs=4):
    import h5py
    import keras

    from keraseq import Estimator

    n, t, f = 512, 200, 32
    path = os.path.join(folder, "throughput.h5")
    make_file(path, n, t, f)
    with h5py.File(path, "r") as h:
        x_mem, y_mem = h["x"][...], h["y"][...]

    sys.path.insert(0, os.path.dirname(HERE))
    from epoch_timer import EpochTimer as Timer

    def run(x, y):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((None, f)),
                keras.layers.LSTM(64, return_sequences=True),
                keras.layers.Dense(1),
            ]
        )
        timer = Timer()
        Estimator(
            model,
            "mse",
            "adam",
            epochs=epochs,
            batch_size=32,
            seq_len=20,
            verbose=0,
            random_state=0,
        ).fit(x, y, callbacks=[timer])
        return min(timer.times[1:])

    mem, disk = [], []
    with h5py.File(path, "r") as h:
        for _ in range(2):  # interleaved
            mem.append(run(x_mem, y_mem))
            disk.append(run(h["x"], h["y"]))
    print(f"throughput: LSTM(64), N={n}, T={t}, F={f}, batch 32, seq_len 20, shuffled")
    print(f"  in memory      {min(mem):.3f} s/epoch")
    print(f"  HDF5 (cached)  {min(disk):.3f} s/epoch")
    print(f"  ratio HDF5 / memory throughput = {min(mem) / min(disk):.3f}   (target >= 0.95)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--job")
    ap.add_argument("--folder", default="/tmp/keraseq_io")
    ap.add_argument("--skip-rss", action="store_true")
    args = ap.parse_args()
    if args.job:
        return job(args.job)
    os.makedirs(args.folder, exist_ok=True)
    throughput(args.folder)
    if args.skip_rss:
        return
    small, big = os.path.join(args.folder, "small.h5"), os.path.join(args.folder, "big.h5")
    make_file(small, 20, 1000, 500)
    make_file(big, 2000, 1000, 500)
    r_small, r_big = run_job(small), run_job(big)
    gb = os.path.getsize(big) / 2**30
    print("peak RSS, fit 1 epoch + predict(out=h5), LSTM(8), F=500, T=1000, batch 32:")
    print(
        f"  {os.path.getsize(small) / 2**20:.0f} MB file (N=20):   {r_small['rss_mb']:.0f} MB "
        f"({r_small['seconds']:.1f} s)"
    )
    print(f"  {gb:.1f} GB file (N=2000):  {r_big['rss_mb']:.0f} MB ({r_big['seconds']:.1f} s)")
    print(f"  difference = {r_big['rss_mb'] - r_small['rss_mb']:.0f} MB   (target < 200 MB)")


if __name__ == "__main__":
    main()
