"""Packaging: the backend is an extra (``keraseq[tensorflow]`` / ``keraseq[jax]``), and a missing
backend package is a clear ImportError at the public API's first use (``from keraseq import
Estimator``) naming the extra to install; ``keraseq.data`` needs neither Keras nor a backend.

The wheel itself (built, installed with ``[jax]`` alone in a fresh venv, trained without
TensorFlow) is checked by ``.ci/wheel-jax`` (``make wheel-test``, run by CI).
"""

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def import_without(package: str, backend: str | None) -> subprocess.CompletedProcess:
    """``from keraseq import Estimator`` in a fresh interpreter where ``package`` cannot be
    imported."""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    if backend is not None:
        env["KERAS_BACKEND"] = backend
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    code = f"import sys; sys.modules[{package!r}] = None; from keraseq import Estimator"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "backend, package, extra",
    [
        ("tensorflow", "tensorflow", "keraseq[tensorflow]"),
        (None, "tensorflow", "keraseq[tensorflow]"),  # TensorFlow is the default, as in Keras
        ("jax", "jax", "keraseq[jax]"),
    ],
)
def test_missing_backend_names_the_extra(backend, package, extra):
    out = import_without(package, backend)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: keraseq runs on the Keras backend"), out.stderr[-2000:]
    assert f"pip install '{extra}'" in last
    assert ("default when KERAS_BACKEND is unset" in last) == (backend is None)


def test_the_data_module_needs_neither_keras_nor_a_backend(tmp_path):
    """A machine that only prepares data: ``python -m keraseq.data`` and ``keraseq.data``'s
    ``h5concat`` run where Keras, TensorFlow and JAX cannot be imported; the public API's
    first use there names the extra."""
    import h5py
    import numpy as np

    srcs = []
    for i in range(2):
        srcs.append(str(tmp_path / f"part{i}.h5"))
        with h5py.File(srcs[-1], "w") as f:
            f["x"] = np.full((2, 3), i, dtype="float32")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(
        "import sys\nfor name in ('keras', 'tensorflow', 'jax'):\n    sys.modules[name] = None\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), str(ROOT)])

    def run(*args):
        return subprocess.run(
            [sys.executable, *args], env=env, capture_output=True, text=True, timeout=120
        )

    cli = run("-m", "keraseq.data", "concat", str(tmp_path / "cli.h5"), *srcs, "--copy")
    assert cli.returncode == 0, cli.stderr[-2000:]
    with h5py.File(tmp_path / "cli.h5") as f:
        np.testing.assert_array_equal(f["x"][:], [[0] * 3] * 2 + [[1] * 3] * 2)
    code = (
        "import sys, keraseq.data\n"
        f"keraseq.data.h5concat({str(tmp_path / 'api.h5')!r}, {srcs!r})\n"
        "assert sys.modules['keras'] is None  # (the sitecustomize's block, never replaced)\n"
        "assert 'Estimator' in dir(keraseq)\n"
        "from keraseq import Estimator\n"
    )
    api = run("-c", code)
    assert (tmp_path / "api.h5").exists(), api.stderr[-2000:]
    last = api.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: keraseq runs on the Keras backend"), api.stderr[-2000:]
    assert "pip install 'keraseq[tensorflow]'" in last


@pytest.mark.slow  # a subprocess importing Keras: make test-full (make test's 10 min)
def test_other_backend_missing_is_fine():
    """A JAX user needs no TensorFlow (and the reverse): only the chosen backend is required."""
    out = import_without("tensorflow", "jax")
    assert out.returncode == 0, out.stderr[-2000:]


def test_one_version_source():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "keraseq.__version__"
    tree = ast.parse((ROOT / "keraseq" / "__init__.py").read_text())
    version = next(
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["__version__"]
    )
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]|rc|\.dev|\.post)?\d*", version), version
    # the installed metadata (pip install -e .) is built from it
    assert importlib.metadata.version("keraseq") == version


def test_backends_are_extras_and_test_pulls_both():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = " ".join(project["dependencies"])
    assert "tensorflow" not in deps and "jax" not in deps
    extras = project["optional-dependencies"]
    assert any(r.startswith("tensorflow") for r in extras["tensorflow"])
    assert any(r.startswith("jax") for r in extras["jax"])
    assert {r.split(">")[0] for r in extras["test"]} >= {"tensorflow", "jax"}
    assert project["license"] == "MIT"


def test_the_public_names_are_loaded_and_read_by_static_tools_alike():
    """``keraseq/__init__.py`` names its public API three times: the imports of ``_load`` (run
    at ``import keraseq``), its ``global`` statement (all but the submodule ``callbacks``, which
    its import sets), and the ``if TYPE_CHECKING`` imports that mypy and the API pages read.
    All three and ``__all__`` name the same objects."""
    import keraseq

    tree = ast.parse((ROOT / "keraseq" / "__init__.py").read_text())
    load = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_load")
    static = next(n for n in tree.body if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.dump(n))

    def imported(node):
        names = {  # `import keraseq.callbacks` as `callbacks`
            alias.name.removeprefix("keraseq.")
            for sub in ast.walk(node)
            if isinstance(sub, ast.Import)
            for alias in sub.names
        }
        return names | {
            alias.asname or alias.name
            for sub in ast.walk(node)
            if isinstance(sub, ast.ImportFrom) and sub.module != "backend" and sub.level == 1
            for alias in sub.names
            if not (alias.asname or alias.name).startswith("_")
        } - {"tensorflow_startup_log"}

    declared = {n for g in ast.walk(load) if isinstance(g, ast.Global) for n in g.names}
    public = set(keraseq.__all__) - {"__version__"} | {"callbacks"}
    assert imported(load) == imported(static) == declared | {"callbacks"} == public
    assert keraseq.callbacks is sys.modules["keraseq.callbacks"]
    for name in keraseq.__all__:
        obj = getattr(keraseq, name)
        if name != "__version__":
            assert getattr(sys.modules[obj.__module__], name) is obj, name
