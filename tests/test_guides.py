"""Every Python block of the README, getting started and the user guide runs as written.

The blocks of a page run in order as one program (a page is read top to bottom: a later block
may use what an earlier one made), in an empty folder, with the installed keraseq; a block
marked ``<!-- mpirun -np K -->`` just above it is a program of its own, run under ``mpirun``
with K ranks. Shell blocks (installs, ``make``) are not run here. In make test-full (a few
minutes: the language-model page trains three epochs on 640,000 characters).
"""

import re
import shutil
import sys
from pathlib import Path

import pytest
from conftest import mpi_env, run_mpi

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", ROOT / "docs" / "getting-started.md"]
PAGES += sorted((ROOT / "docs" / "guide").glob("*.md"))
MPIRUN = shutil.which("mpirun", path=str(Path(sys.executable).parent)) or shutil.which("mpirun")
BLOCK = re.compile(r"(?:<!-- mpirun -np (\d+) -->\n)?```python\n(.*?)```", re.S)


def blocks(page: Path) -> list[tuple[int | None, str]]:
    """``(ranks or None, code)`` of every Python block of ``page``, in order."""
    return [(int(k) if k else None, code) for k, code in BLOCK.findall(page.read_text())]


def _run(cmd, cwd, what):
    done, _ = run_mpi(cmd, cwd=cwd, env=mpi_env(), timeout=900)
    assert done.returncode == 0, f"{what} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def test_every_page_with_code_is_covered():
    """The pages this test runs hold the blocks the issue names (a page without blocks is
    fine; a marker that the pattern misses would leave a block unrun)."""
    for page in PAGES:
        text = page.read_text()
        assert text.count("```python") == len(blocks(page)), page
        assert text.count("<!-- mpirun") == sum(k is not None for k, _ in blocks(page)), page
    assert sum(len(blocks(p)) for p in PAGES) >= 14


@pytest.mark.slow  # make test-full
@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)], ids=lambda p: p.stem)
def test_the_python_blocks_of_a_page_run_as_written(page, tmp_path):
    plain = "\n".join(code for k, code in blocks(page) if k is None)
    if plain:
        (tmp_path / "page.py").write_text(plain)
        _run([sys.executable, "page.py"], tmp_path, f"{page.name}'s blocks")
    for n, (ranks, code) in enumerate(blocks(page)):
        if ranks is not None:
            assert MPIRUN, "mpirun not found: install keraseq[mpi]"
            (tmp_path / f"mpi_{n}.py").write_text(code)
            cmd = [MPIRUN, "-np", str(ranks), "--oversubscribe", sys.executable, f"mpi_{n}.py"]
            _run(cmd, tmp_path, f"{page.name}'s block {n} under mpirun")
