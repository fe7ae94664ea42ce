"""The tutorials in ``notebooks/`` run top to bottom, and the committed copies keep their outputs.

Each notebook is re-executed in a fresh Jupyter kernel (nbclient, kernel ``python3``) with a
temporary working directory, so nothing is written into the repository. The committed
notebooks are also checked for executed outputs, because they are read on a code host without
being run.

To refresh the committed outputs after changing a notebook or keraseq::

    .venv/bin/python tests/test_notebooks.py                 # every notebook
    .venv/bin/python tests/test_notebooks.py 02_forecasting_real_data.ipynb
"""

import re
import sys
import tempfile
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
CELL_TIMEOUT = 300  # seconds per cell

# TensorFlow's C++ start-up lines (printed before its log honours TF_CPP_MIN_LOG_LEVEL).
STARTUP_NOISE = re.compile(
    r"absl::InitializeLog|oneDNN custom operations|Could not find cuda drivers|"
    r"cpu_feature_guard|^[IWE]\d{4} \d\d:\d\d:\d\d",
    re.M,
)

# A code cell with one of these must have produced at least one output.
_PRINTS = re.compile(r"\bprint\(|plt\.show\(|\bdisplay\(|\.summary\(|^%%writefile", re.M)


def execute(path: Path, cwd: Path):
    """Run the notebook at ``path`` in a fresh kernel with working directory ``cwd``."""
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute()
    return nb


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _uses_mpirun(path: Path) -> bool:
    return any("mpirun" in c.source for c in _code_cells(nbformat.read(path, as_version=4)))


#: Executed by `make test-full` (CI runs it too), to keep `make test` within its time budget.
SLOW = {
    "01_quickstart.ipynb",
    "02_forecasting_real_data.ipynb",
    "03_distributed_mpi.ipynb",
    "04_big_data_hdf5.ipynb",
    "05_sklearn_model_selection.ipynb",
    "06_unequal_lengths.ipynb",
    "07_language_model.ipynb",
}


def _params():
    return [
        pytest.param(
            p,
            id=p.name,
            marks=([pytest.mark.mpi] if _uses_mpirun(p) else [])
            + ([pytest.mark.slow] if p.name in SLOW else []),
        )
        for p in PATHS
    ]


def test_there_are_notebooks():
    names = [p.name for p in PATHS]
    assert len(names) >= 4, names
    assert all(re.match(r"\d\d_\w+\.ipynb$", n) for n in names), names


@pytest.mark.parametrize("path", _params())
def test_notebook_runs(path, tmp_path):
    before = sorted(p.name for p in NOTEBOOKS.iterdir())
    try:
        execute(path, tmp_path)
    except nbclient.exceptions.CellExecutionError as exc:
        pytest.fail(f"{path.name} failed:\n{str(exc)[-4000:]}", pytrace=False)
    assert sorted(p.name for p in NOTEBOOKS.iterdir()) == before, "files left in notebooks/"
    assert list(tmp_path.iterdir()) == [], "the notebook left files in its working directory"


@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
def test_committed_notebook_has_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    cells = _code_cells(nb)
    assert cells and nb.cells[0].cell_type == "markdown", "a notebook starts with a title"
    counts = [c.execution_count for c in cells]
    assert counts == list(range(1, len(cells) + 1)), (
        f"not executed top to bottom in one kernel: execution counts {counts}"
    )
    images = 0
    for k, cell in enumerate(cells):
        head = cell.source.splitlines()[0] if cell.source else ""
        kinds = [o.output_type for o in cell.outputs]
        assert "error" not in kinds, f"code cell {k} ({head!r}) has an error output"
        if _PRINTS.search(cell.source):
            assert cell.outputs, f"code cell {k} ({head!r}) prints or plots but has no output"
        text = "".join(
            str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
            for o in cell.outputs
        )
        noise = STARTUP_NOISE.search(text)
        assert noise is None, (
            f"code cell {k} ({head!r}) shows TensorFlow's start-up line {noise.group(0)!r}: "
            f"set TF_CPP_MIN_LOG_LEVEL and import keraseq before Keras (issue 32)"
        )
        for machine_path in ("/tmp/", "/root/", "/home/", str(NOTEBOOKS.parent) + "/"):
            assert machine_path not in text, (
                f"code cell {k} ({head!r}) prints a path of the machine it ran on"
            )
        has_image = any("image/png" in o.get("data", {}) for o in cell.outputs)
        if "plt.show(" in cell.source:
            assert has_image, f"code cell {k} ({head!r}) plots but has no image output"
        images += has_image
    assert images >= 1, "a tutorial shows at least one plot"


def main(argv):
    """Re-execute notebooks (all, or the names given) and save them with their outputs."""
    chosen = [NOTEBOOKS / name for name in argv] or PATHS
    for path in chosen:
        with tempfile.TemporaryDirectory() as cwd:
            start = time.perf_counter()
            nb = execute(path, Path(cwd))
        nbformat.write(nb, path)
        print(f"{path.name}: executed in {time.perf_counter() - start:.0f} s, saved")


if __name__ == "__main__":
    main(sys.argv[1:])
