"""TensorFlow and JAX agree: the same model weights and data give the same keraseq results.

A Keras backend is chosen once per process, so each backend runs in its own subprocess (this
file run as a script, ``worker``): it builds every case's model from weights drawn in NumPy
(the same numbers on both backends), fits a few TBPTT updates with keraseq and predicts, and
saves the estimator (``Estimator.save``) and its model (``model_.save``). Then each backend
loads the other's files and predicts. Cases are drawn by hypothesis (several cases in one
example, so that one pair of subprocesses serves them all): per-step targets over windows
with a short tail, unequal lengths (``lengths=``) with per-step and per-series targets, and
token ids padded with 0 into ``Embedding(mask_zero=True)`` with sparse labels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
PRED_ATOL = 1e-5  # same weights, same data -> same predictions
WEIGHT_ATOL = 1e-4  # after a few TBPTT updates


# --------------------------------------------------------------------------------- the worker
def _model(case):
    import keras

    layer = getattr(keras.layers, case["cell"])
    front = [keras.Input((None, case["features"]))]
    if case.get("tokens"):  # token ids padded with 0, read through Embedding(mask_zero=True)
        front = [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(case["features"] + 2, 3, mask_zero=True),
        ]
    model = keras.Sequential(
        front
        + [
            layer(case["units"], return_sequences=case["kind"] == "step"),
            # token ids: logits over the vocabulary, ids in [0, features + 2) (a label past the
            # last logit is undefined: NaN on TensorFlow's XLA, garbage on JAX)
            keras.layers.Dense(case["features"] + 2 if case.get("tokens") else case["outputs"]),
        ]
    )
    rng = np.random.default_rng(case["seed"])
    model.set_weights(
        [(rng.normal(size=w.shape) * 0.4).astype("float32") for w in model.get_weights()]
    )
    return model


def _data(case):
    rng = np.random.default_rng(case["seed"] + 1)
    n, t, f = case["n"], case["t"], case["features"]
    x = rng.normal(size=(n, t, f)).astype("float32")
    y = rng.normal(size=(n, t, case["outputs"])).astype("float32")
    lengths = rng.integers(1, t + 1, n) if case["lengths"] else None
    if lengths is not None:
        lengths[0] = t  # one full-length series
    if case["kind"] == "series":
        y = y[np.arange(n), (lengths - 1) if lengths is not None else t - 1]
    if case.get("tokens"):  # ids in [1, V), 0 after each length; next-id labels (N, T)
        x = rng.integers(1, f + 2, size=(n, t)).astype("int32")
        x[np.arange(t)[None, :] >= lengths[:, None]] = 0
        y, lengths = np.roll(x, -1, axis=1), None  # the lengths: read from the padding
    resets = rng.random((n, t)) < 0.2 if case.get("resets") else None  # (inside windows too)
    return x, y, lengths, resets


def _loss(case):
    import keras

    return (
        keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if case.get("tokens")
        else "mse"
    )


def _work(out_dir: Path, cases: list, other: Path) -> None:
    """Fit, predict and save every case into ``out_dir``; then, once the other backend's
    worker (side by side, into ``other``) has saved its files, load them and predict."""
    import keras

    from keraseq import Estimator

    for k, case in enumerate(cases):
        x, y, lengths, resets = _data(case)
        model = _model(case)
        w0 = model.get_weights()
        est = Estimator(
            model,
            _loss(case),
            keras.optimizers.Adam(0.01),
            epochs=2,
            batch_size=case["batch"],
            seq_len=case["seq_len"],
            shuffle=False,
            verbose=0,
        ).fit(x, y, lengths=lengths, resets=resets)
        trained = est.model_.get_weights()
        pred_trained = est.predict(x, lengths=lengths, resets=resets)
        est.model_.set_weights(w0)  # the initial weights: predictions from equal weights
        pred_initial = est.predict(x, lengths=lengths, resets=resets)
        est.model_.set_weights(trained)
        est.save(out_dir / f"est_{k}.keras")
        est.model_.save(out_dir / f"model_{k}.keras")
        np.savez(
            out_dir / f"case_{k}.npz",
            pred_initial=pred_initial,
            pred_trained=pred_trained,
            **{f"w{j}": w for j, w in enumerate(trained)},
        )
    (out_dir / "saved").touch()
    deadline = time.monotonic() + 600  # (the test kills this worker when the other one fails)
    while not (other / "saved").exists():
        assert time.monotonic() < deadline, f"no files from the other backend in {other}"
        time.sleep(0.1)
    results = {}
    for k, case in enumerate(cases):
        x, _, lengths, resets = _data(case)
        saved = np.load(other / f"case_{k}.npz")
        est = Estimator.load(other / f"est_{k}.keras")
        model = keras.saving.load_model(other / f"model_{k}.keras")
        plain = lengths is None and resets is None
        whole = np.asarray(model.predict(x, verbose=0)) if plain else None
        results[k] = {
            "est_predict": float(
                np.abs(est.predict(x, lengths=lengths, resets=resets) - saved["pred_trained"]).max()
            ),
            "model_predict": None
            if whole is None
            else float(np.abs(whole - saved["pred_trained"]).max()),
        }
    report = {"backend": keras.backend.backend(), "loaded": results}
    (out_dir / "done.json").write_text(json.dumps(report))


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "worker":
    _work(Path(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text()), Path(sys.argv[4]))
    sys.exit(0)


# ---------------------------------------------------------------------------------- the tests
# (Imported only here: the workers above, this file run as a script, need neither.)
import pytest  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

BACKENDS = ("tensorflow", "jax")


def _launch(backend, out_dir, cases_file, other):
    env = dict(
        os.environ,
        KERAS_BACKEND=backend,
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(HERE), "worker", str(out_dir), str(cases_file), str(other)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run_all(procs, timeout=900):
    """Wait for every process (they run side by side, each waiting for the other's files);
    when one fails, end the others and fail with its stderr."""
    deadline = time.monotonic() + timeout
    while any(proc.poll() is None for proc in procs.values()):
        failed = [name for name, proc in procs.items() if proc.returncode not in (None, 0)]
        if failed or time.monotonic() > deadline:
            for proc in procs.values():
                proc.kill()
        time.sleep(0.2)
    for name, proc in procs.items():
        _, err = proc.communicate()
        assert proc.returncode == 0, f"{name} worker failed:\n{err[-4000:]}"


def _shape():
    return st.fixed_dictionaries(
        {
            "cell": st.sampled_from(["LSTM", "GRU", "SimpleRNN"]),
            "units": st.integers(1, 6),
            "features": st.integers(1, 4),
            "outputs": st.integers(1, 3),
            "n": st.integers(3, 9),
            "t": st.integers(3, 14),
            "window": st.integers(1, 16),  # seq_len: > t means the whole sequence
            "batch": st.integers(2, 6),
            "seed": st.integers(0, 2**16),
        }
    )


def _cases(shapes):
    """Five kinds: per-step targets (equal lengths), per-step and per-series with lengths,
    token ids (N, T) padded with 0 into Embedding(mask_zero=True) with labels (N, T), per-step
    targets with lengths and per-row state resets (``resets=``)."""
    cases = []
    for shape, (kind, lengths, tokens, resets) in zip(
        shapes,
        [
            ("step", False, False, False),
            ("step", True, False, False),
            ("series", True, False, False),
            ("step", True, True, False),
            ("step", True, False, True),
        ],
    ):
        case = dict(shape, kind=kind, lengths=lengths, tokens=tokens, resets=resets)
        window = case.pop("window")
        case["seq_len"] = window if window <= case["t"] else None
        cases.append(case)
    return cases


# Examples of five cases each; `make test-full` runs more (KERASEQ_BACKEND_EXAMPLES=2).
EXAMPLES = int(os.environ.get("KERASEQ_BACKEND_EXAMPLES", "1"))


@pytest.mark.property
@pytest.mark.slow  # make test-full (CI runs it, 2 examples): ~50 s of make test's 10 minutes
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=list(HealthCheck),
)
@given(shapes=st.lists(_shape(), min_size=5, max_size=5))
def test_tensorflow_and_jax_agree_and_read_each_others_files(shapes, tmp_path_factory):
    cases = _cases(shapes)
    root = tmp_path_factory.mktemp("backends")
    cases_file = root / "cases.json"
    cases_file.write_text(json.dumps(cases))
    # Each backend (side by side) fits, predicts and saves, then loads the other's files.
    other = dict(zip(BACKENDS, BACKENDS[::-1]))
    _run_all({b: _launch(b, root / b, cases_file, root / other[b]) for b in BACKENDS})
    for k, case in enumerate(cases):
        tf_, jx = (np.load(root / b / f"case_{k}.npz") for b in BACKENDS)
        where = f"case {k}: {case}"
        diff = np.abs(tf_["pred_initial"] - jx["pred_initial"]).max()
        assert diff <= PRED_ATOL, f"{where}: predictions from equal weights differ by {diff}"
        n_w = len([f for f in tf_.files if f.startswith("w")])
        assert n_w == len([f for f in jx.files if f.startswith("w")]) and n_w > 0
        for j in range(n_w):
            diff = np.abs(tf_[f"w{j}"] - jx[f"w{j}"]).max()
            assert diff <= WEIGHT_ATOL, f"{where}: weight {j} differs by {diff} after fit"
        diff = np.abs(tf_["pred_trained"] - jx["pred_trained"]).max()
        assert diff <= WEIGHT_ATOL, f"{where}: predictions after fit differ by {diff}"
    # Each backend loaded the other's .keras files and predicted what the other predicted.
    for b in BACKENDS:
        report = json.loads((root / b / "done.json").read_text())
        assert report["backend"] == b
        for k, r in report["loaded"].items():
            assert r["est_predict"] <= PRED_ATOL, (b, cases[int(k)], r)
            if r["model_predict"] is not None:
                assert r["model_predict"] <= PRED_ATOL, (b, cases[int(k)], r)


@pytest.mark.slow  # make test-full; CI's make wheel-test checks the same on the [jax] wheel
def test_keraseq_imports_and_trains_on_jax_without_tensorflow(tmp_path):
    """The JAX path never imports TensorFlow (a GPU machine may have JAX alone)."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'tensorflow' or name.startswith('tensorflow.'):\n"
        "            raise ImportError('tensorflow is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np, keras\n"
        "import keraseq, keraseq.utils, keraseq.distributed, keraseq._mpi_xla\n"
        "from keraseq import Estimator\n"
        "from keraseq.backend import current\n"
        "assert current().NAME == 'jax'\n"
        "x = np.random.default_rng(0).normal(size=(6, 9, 2)).astype('float32')\n"
        "m = keras.Sequential([keras.Input((None, 2)), keras.layers.GRU(3, "
        "return_sequences=True), keras.layers.Dense(1)])\n"
        "est = Estimator(m, 'mse', 'adam', batch_size=4, seq_len=4, verbose=0)"
        ".fit(x, x[..., :1])\n"
        "assert est.predict(x).shape == (6, 9, 1)\n"
        "g = keraseq.utils.net2grad(m, x, x[..., :1], 'mse')\n"
        "assert g.shape == keraseq.utils.net2vec(m).shape and np.abs(g).sum() > 0\n"
        "print('TF-FREE', [k for k in sys.modules if k.split('.')[0] == 'tensorflow'])\n"
    )
    env = dict(os.environ, KERAS_BACKEND="jax")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "TF-FREE []" in out.stdout, out.stdout[-2000:]
