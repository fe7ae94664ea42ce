"""Packaging: the backend is an extra (``keraseq[tensorflow]`` / ``keraseq[jax]``), and a missing
backend package is a clear ImportError at ``import keraseq`` naming the extra to install.

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
    """``import keraseq`` in a fresh interpreter where ``package`` cannot be imported."""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    if backend is not None:
        env["KERAS_BACKEND"] = backend
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    code = f"import sys; sys.modules[{package!r}] = None; import keraseq"
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
