"""The documentation site: built strictly, every public name documented, and what a reader sees
in a browser (headless Chromium: the landing page and an API page).

Slow (``make test-full``, which CI runs): builds the whole site (~30 s). Skips only when the
docs extra (``pip install -e ".[docs]"``) or Debian's ``chromium`` is missing; CI installs both
(``make test-full`` installs the extra, ``.ci/run`` installs chromium).
"""

import html.parser
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DOCS_EXTRA = all(
    importlib.util.find_spec(m)
    for m in ("mkdocs", "material", "mkdocstrings_handlers", "mkdocs_jupyter")
)


class _Text(html.parser.HTMLParser):
    """The text a reader sees: no scripts, styles or tags; plus <title> and the headings."""

    def __init__(self):
        super().__init__()
        self.parts, self.headings, self.title, self._stack = [], [], "", []

    def handle_starttag(self, tag, attrs):
        self._stack.append(tag)

    def handle_endtag(self, tag):
        while self._stack and self._stack.pop() != tag:
            pass

    def handle_data(self, data):
        where = set(self._stack)
        if where & {"script", "style"}:
            return
        if "title" in where:
            self.title += data
        if where & {"h1", "h2"}:
            self.headings.append(data.strip())
        self.parts.append(data)

    @property
    def text(self):
        return " ".join(" ".join(self.parts).split())


def chromium(*args, tmp_path):
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def seen(url, tmp_path):
    out = chromium("--dump-dom", url, tmp_path=tmp_path)
    assert out.returncode == 0 and "<html" in out.stdout, out.stderr[-2000:]
    parser = _Text()
    parser.feed(out.stdout)
    return parser


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The site, built with ``--strict`` (any broken link or warning fails); needs the docs extra
    only, so it runs wherever ``make test-full`` runs, Chromium or not."""
    if not DOCS_EXTRA:
        pytest.skip('the docs extra is not installed (pip install -e ".[docs]"; CI has it)')
    out_dir = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    check = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "check_api_docs.py"), str(out_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    return out_dir


@pytest.fixture(scope="module")
def site(built):
    if not CHROMIUM:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; CI has it)")
    return built


def test_site_builds_strictly_with_every_public_name(built):
    assert (built / "index.html").exists() and (built / "api" / "index.html").exists()
    assert (built / "performance" / "fused.html").exists()


def test_landing_page_reads_well(site, tmp_path):
    page = seen((site / "index.html").as_uri(), tmp_path)
    assert page.title.strip().startswith("keraseq")
    assert "keraseq" in page.headings
    for words in (
        "truncated backpropagation through time",
        "Getting started",
        "User guide",
        "API reference",
        "pip install",
    ):
        assert words in page.text, words
    shot = tmp_path / "index.png"
    out = chromium(
        "--window-size=1280,900",
        f"--screenshot={shot}",
        (site / "index.html").as_uri(),
        tmp_path=tmp_path,
    )
    assert out.returncode == 0 and shot.exists(), out.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (900, 1280)
    # a styled page, not a blank one: the Material header's colour and dark text are there
    dark = (pixels.mean(axis=-1) < 0.35).mean()
    assert 0.01 < dark < 0.5, dark
    assert np.unique(pixels.reshape(-1, 3).round(2), axis=0).shape[0] > 20


def test_api_page_shows_signatures_and_docstrings(site, tmp_path):
    page = seen((site / "api" / "index.html").as_uri(), tmp_path)
    text = page.text
    assert "Estimator" in page.headings and "Classifier" in page.headings
    # the rendered signature of Estimator (tokens are spans: compared without spaces), and
    # its docstring's first line and parameters
    assert 'Estimator(model:Any,loss:Any="mse",optimizer:Any="adam"' in "".join(text.split())
    assert "Fit, predict and score a Keras sequence model with truncated BPTT." in text
    assert "seq_len" in text and "window length for truncated BPTT" in text
    assert ":class:" not in text and ":func:" not in text  # Sphinx roles rendered as code
    utils = seen((site / "api" / "utils.html").as_uri(), tmp_path).text
    assert "net2vec" in utils and ">>>" in utils  # an example, rendered as code


def test_notebook_page_shows_stored_outputs(site, tmp_path):
    """Rendered as stored (not executed at build): the outputs saved in the notebook show."""
    text = seen((site / "tutorials" / "01_quickstart.html").as_uri(), tmp_path).text
    assert "x: (256, 100, 10) y: (256, 100, 1) (N, T, F)" in text  # a stored print output
    assert "seqloss(mse) : 0.516405463218689" in text
