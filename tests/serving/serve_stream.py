"""Serve exported streaming steps with TensorFlow alone (run by tests/test_export.py).

Usage: python serve_stream.py JOB.npz RESULT.npz. ``JOB.npz`` holds, per case ``c``:
``c/path`` (the SavedModel), ``c/x<k>`` (the inputs, in the model's input order),
``c/n_inputs``, ``c/kind`` (``one``, ``tuple`` or ``dict``), ``c/keys`` (a dict input's
names), ``c/input_keys`` (the inputs' names in the flat signature) and ``c/cuts`` (the piece
boundaries of each partition, each ended by -1). Writes, per case, partition and
piece, every output and the final states. Keras and keraseq cannot be imported here.
"""

import itertools
import sys

sys.modules["keras"] = None  # an import of either fails: serving needs TensorFlow alone
sys.modules["keraseq"] = None

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def main(job_path, result_path):
    job = np.load(job_path, allow_pickle=False)
    cases = sorted({k.split("/")[0] for k in job.files})
    result = {}
    for case in cases:
        served = tf.saved_model.load(str(job[f"{case}/path"]))
        kind = str(job[f"{case}/kind"])
        keys = [str(k) for k in job[f"{case}/keys"]]
        xs = [job[f"{case}/x{k}"] for k in range(int(job[f"{case}/n_inputs"]))]
        cuts = [int(c) for c in job[f"{case}/cuts"]]
        partitions, current = [], []
        for c in cuts:
            if c < 0:
                partitions.append(current)
                current = []
            else:
                current.append(c)
        for p, bounds in enumerate(partitions):
            states = served.initial_states(tf.constant(xs[0].shape[0], tf.int32))
            for i, (lo, hi) in enumerate(itertools.pairwise(bounds)):
                pieces = [tf.constant(a[:, lo:hi]) for a in xs]
                if kind == "one":
                    x = pieces[0]
                elif kind == "dict":
                    x = dict(zip(keys, pieces))
                else:
                    x = tuple(pieces)
                y, states = served.step(x, states)
                for j, out in enumerate(tf.nest.flatten(y)):
                    result[f"{case}/{p}/{i}/y{j}"] = out.numpy()
            for name, s in states.items():
                result[f"{case}/{p}/state/{name}"] = s.numpy()
        # The flat signature TF Serving calls: the whole series from the initial states.
        inputs = dict(zip([str(k) for k in job[f"{case}/input_keys"]], map(tf.constant, xs)))
        inputs.update(served.initial_states(tf.constant(xs[0].shape[0], tf.int32)))
        for name, value in served.signatures["serving_default"](**inputs).items():
            result[f"{case}/signature/{name}"] = value.numpy()
    assert "keras" not in sys.modules or sys.modules["keras"] is None
    np.savez(result_path, **result)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
