"""The fitted record (``keraseq/fitted.py``): its serial form, and estimators saved and pickled
before it (issue 31) that still load and predict the numbers they predicted then.

The old files are fixtures written by ``tests/data/make_legacy_fitted.py`` with keraseq at
commit 8ae752b (the fitted schema as private attributes; no format number in
``keraseq.json``), on TensorFlow, with the predictions they gave then."""

import json
import pickle
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import split_between_backends

from keraseq import Classifier, Estimator
from keraseq.fitted import FORMAT, FittedRecord
from keraseq.session import Layout

DATA = Path(__file__).parent / "data" / "legacy_fitted"
ATTRIBUTES = json.loads((DATA / "attributes.json").read_text())["cases"]
CLASSES = {"sequence": Estimator, "classifier": Classifier, "rows": Estimator}


def test_the_record_round_trips_through_json():
    record = FittedRecord(
        Layout(3, 2, [(10, 1), (4,)], False, [[((8,), "float32"), ((8,), "float32")]], 10),
        rows=False,
        flat_y=True,
        history={"loss": [0.5, 0.25]},
        n_epochs=2,
        shuffle_seed=7,
        classes=np.array(["down", "up"]),
    )
    back = FittedRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert back.layout.out_shapes == [(10, 1), (4,)]
    dtype = keras.backend.standardize_dtype
    assert [[(s, dtype(d)) for s, d in call] for call in back.layout.state_specs] == [
        [((8,), "float32"), ((8,), "float32")]
    ]
    for name in ("n_features", "n_outputs", "per_series", "seq_len"):
        assert getattr(back.layout, name) == getattr(record.layout, name), name
    for name in ("rows", "flat_y", "history", "n_epochs", "shuffle_seed"):
        assert getattr(back, name) == getattr(record, name), name
    assert back.classes.dtype == record.classes.dtype and back.classes.tolist() == ["down", "up"]
    with pytest.raises(ValueError, match=f"format 3; this keraseq reads format {FORMAT}"):
        FittedRecord.from_dict(dict(record.to_dict(), format=3))


def _load(name: str, how: str):
    if how == "keras":
        return CLASSES[name].load(DATA / f"{name}.keras")
    return pickle.loads((DATA / f"{name}.pkl").read_bytes())


def _check_attributes(est, name: str, how: str) -> None:
    expected = ATTRIBUTES[name]
    assert est.n_features_in_ == expected["n_features_in_"]
    assert est.n_outputs_ == expected["n_outputs_"]
    assert [list(s) for s in est.n_outputs_shapes_] == expected["n_outputs_shapes_"]
    assert est.history_ == expected["history_"]
    if how == "pickle":
        assert est.n_epochs_ == expected["n_epochs_"]
    else:  # the files of that version did not keep it
        assert not hasattr(est, "n_epochs_")
    if "classes_" in expected:
        assert est.classes_.tolist() == expected["classes_"]


@pytest.mark.parametrize(  # make test: .keras on TensorFlow, pickle on JAX
    "how", split_between_backends({"keras": "keras", "pickle": "pickle"})
)
def test_a_sequence_estimator_of_the_format_before_the_record(how, tmp_path):
    """Its kept streaming states continue, it predicts as then, and it continues training
    from its epoch count as that version did (a file: from 0; a pickle: from n_epochs_)."""
    expected = np.load(DATA / "sequence.npz")
    x = expected["x"]
    est = _load("sequence", how)
    _check_attributes(est, "sequence", how)
    np.testing.assert_allclose(est.predict(x[:, 6:], reset=False), expected["rest"], atol=1e-5)
    np.testing.assert_allclose(est.predict(x), expected["whole"], atol=1e-5)
    # written again in today's format, it reads back the same
    est.predict(x[:, :6])
    est.save(tmp_path / "again.keras")
    for again in (Estimator.load(tmp_path / "again.keras"), pickle.loads(pickle.dumps(est))):
        np.testing.assert_allclose(
            again.predict(x[:, 6:], reset=False), expected["rest"], atol=1e-5
        )
        assert again.history_ == est.history_
    est.partial_fit(x, x[..., :1].cumsum(1))
    assert len(est.history_["loss"]) == len(ATTRIBUTES["sequence"]["history_"]["loss"]) + 1
    assert est.n_epochs_ == (ATTRIBUTES["sequence"]["n_epochs_"] if how == "pickle" else 0) + 1


@pytest.mark.parametrize(  # make test: .keras on TensorFlow, pickle on JAX
    "how", split_between_backends({"keras": "keras", "pickle": "pickle"})
)
@pytest.mark.parametrize("name", ["classifier", "rows"])
def test_a_classifier_and_a_tabular_estimator_of_the_format_before_the_record(name, how):
    expected = np.load(DATA / f"{name}.npz")
    est = _load(name, how)
    assert type(est) is CLASSES[name]
    _check_attributes(est, name, how)
    if name == "classifier":
        proba = est.predict_proba(expected["x"])
        np.testing.assert_allclose(proba, expected["proba"], atol=1e-5)
        assert est.predict(expected["x"]).tolist() == est.classes_[proba.argmax(-1)].tolist()
    else:
        pred = est.predict(expected["x"])
        assert pred.shape == expected["pred"].shape == (len(expected["x"]),)  # y was 1-D
        np.testing.assert_allclose(pred, expected["pred"], atol=1e-5)
