"""Writes the fixtures of ``tests/test_fitted.py``: estimators fitted, saved (``.keras``)
and pickled by keraseq as it was before the fitted record (commit 8ae752b, issue 31: the
fitted schema kept as private attributes, no format number in ``keraseq.json``), with the
predictions they gave then. A test loads them with today's keraseq and predicts the same
numbers. Run it with that keraseq on the path, on TensorFlow:

    git archive 8ae752b keraseq | tar -x -C /tmp/keraseq-8ae752b
    PYTHONPATH=/tmp/keraseq-8ae752b KERAS_BACKEND=tensorflow python tests/data/make_legacy_fitted.py

The three estimators cover every fitted attribute of that format: a sequence regressor with
kept streaming states (``n_epochs_``, the shuffle seed), a ``Classifier`` with string labels
(``classes_``), and a tabular regressor (rows ``(N, F)`` and 1-D ``y``).
"""

import json
import os
import pickle
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

import keraseq
from keraseq import Classifier, Estimator

HERE = Path(__file__).resolve().parent / "legacy_fitted"
QUIET = dict(verbose=0, jit_compile=False, random_state=0)


def sequence():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((None, 2)), keras.layers.LSTM(4, return_sequences=True), keras.layers.Dense(1)]
    )
    x = np.random.default_rng(0).normal(size=(6, 10, 2)).astype("float32")
    est = Estimator(model, "mse", "adam", epochs=2, batch_size=3, seq_len=5, **QUIET)
    est.fit(x, x[..., :1].cumsum(1))
    whole = est.predict(x)
    first = est.predict(x[:, :6])  # kept streaming states: saved and pickled with it
    return est, x, {"whole": whole, "first": first}, lambda e: e.predict(x[:, 6:], reset=False)


def classifier():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((None, 2)), keras.layers.GRU(4), keras.layers.Dense(2, activation="softmax")]
    )
    x = np.random.default_rng(1).normal(size=(8, 6, 2)).astype("float32")
    labels = np.where(x[:, :, 0].mean(1) > 0, "up", "down")
    clf = Classifier(model, epochs=2, batch_size=4, seq_len=3, **QUIET).fit(x, labels)
    return clf, x, {"proba": clf.predict_proba(x)}, None


def rows():
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(5, "tanh"), keras.layers.Dense(1)]
    )
    x = np.random.default_rng(3).normal(size=(12, 3)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5]) + 0.1).astype("float32")
    est = Estimator(model, "mse", "adam", epochs=2, batch_size=4, **QUIET).fit(x, y)
    return est, x, {"pred": est.predict(x)}, None


def attributes(est) -> dict:
    """The public fitted attributes, as JSON."""
    out = {
        "history_": est.history_,
        "n_epochs_": est.n_epochs_,
        "n_features_in_": int(est.n_features_in_),
        "n_outputs_": int(est.n_outputs_),
        "n_outputs_shapes_": [list(s) for s in est.n_outputs_shapes_],
    }
    if hasattr(est, "classes_"):
        out["classes_"] = est.classes_.tolist()
    return out


def main():
    HERE.mkdir(exist_ok=True)
    meta = {"keraseq": keraseq.__version__, "keras": keras.__version__, "cases": {}}
    for name, make in (("sequence", sequence), ("classifier", classifier), ("rows", rows)):
        est, x, expected, after_save = make()
        est.save(HERE / f"{name}.keras")
        (HERE / f"{name}.pkl").write_bytes(pickle.dumps(est))
        if after_save is not None:  # what the kept states continue into
            expected["rest"] = after_save(est)
        np.savez(HERE / f"{name}.npz", x=x, **expected)
        meta["cases"][name] = attributes(est)
    (HERE / "attributes.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
