"""Real data sets for the tutorials (``notebooks/``), loaded from files installed by a wheel.

What lives here: loaders that read a real data set from files an optional dependency already
ships, so that a tutorial runs offline and in a few milliseconds. What does not live here:
synthetic data (the notebooks make their own), downloads from the network, and the Mauna Loa
CO2 series of ``examples/demo.py`` and notebook 02 (it comes from ``statsmodels``).

:func:`load_japanese_vowels`: a classification data set of *unequal-length* multivariate series.
Nine male speakers each uttered the Japanese vowels /ae/ in succession; every utterance is a
series of 12 LPC cepstrum coefficients, one row per analysis frame, 7 to 29 frames long
(Kudo, Toyama & Shimbo 1999, UCI Machine Learning Repository; UEA multivariate archive,
Bagnall et al. 2018). The task is to tell the speaker: 9 classes, 270 training series and
370 test series, with the archive's fixed train/test split.

The data come from the files that the ``sktime`` wheel ships
(``sktime/datasets/data/JapaneseVowels/JapaneseVowels_{TRAIN,TEST}.ts``), so nothing is
downloaded at run time. ``sktime`` is an optional dependency (the ``demo`` and ``test``
extras): ``pip install "keraseq[demo]"`` or ``pip install "sktime>=1.2"``. It is only looked
for when a loader is called, and never imported: the package's folder is located with
:func:`importlib.util.find_spec` and the ``.ts`` text files are parsed here with numpy, so
loading does not depend on sktime's own loaders (or pandas). ``data_dir=`` points the loader at
a folder that holds the two ``.ts`` files instead.

This module is not imported by ``import keraseq``; import it as ``keraseq.datasets``.

:func:`load_stdlib_text`: a text corpus for character language models (notebook 07,
``benchmarks/bench_lm.py``): the source code of a few modules of Python's standard library
(``argparse``, ``inspect``, ``typing``, ``pydoc``, ``difflib``, ``enum``, ``dataclasses``:
about 670,000 characters of code, comments and docstrings in Python 3.11), read from the
``.py`` files every CPython installation ships. Nothing is downloaded; the exact text follows
the running Python's version.

    >>> from keraseq.datasets import load_japanese_vowels
    >>> x_train, y_train, x_test, y_test = load_japanese_vowels()
    >>> len(x_train), x_train[0].shape, y_train[:3]
    (270, (20, 12), array([0, 0, 0]))
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

__all__ = [
    "load_japanese_vowels",
    "japanese_vowels_dir",
    "read_ts",
    "load_stdlib_text",
    "STDLIB_MODULES",
]

N_FEATURES = 12
N_CLASSES = 9


def japanese_vowels_dir() -> Path:
    """The folder of the installed ``sktime`` package that holds the Japanese Vowels files."""
    spec = importlib.util.find_spec("sktime")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "keraseq.datasets reads Japanese Vowels from the files shipped in the sktime "
            'wheel, and sktime is not installed: pip install "keraseq[demo]" or '
            'pip install "sktime>=1.2" (or pass data_dir= to a folder holding '
            "JapaneseVowels_TRAIN.ts and JapaneseVowels_TEST.ts)"
        )
    for root in spec.submodule_search_locations:
        folder = Path(root) / "datasets" / "data" / "JapaneseVowels"
        if (folder / "JapaneseVowels_TRAIN.ts").is_file():
            return folder
    raise FileNotFoundError(
        f"no datasets/data/JapaneseVowels folder in the installed sktime "
        f"({list(spec.submodule_search_locations)})"
    )


def read_ts(path: str | os.PathLike) -> tuple[list[np.ndarray], list[str]]:
    """Read a multivariate ``.ts`` file (sktime / UEA text format) with class labels.

    Returns one float32 array of shape ``(T_i, n_dimensions)`` per case (time along axis 0,
    no padding) and the class label of each case as a string.
    """
    xs: list[np.ndarray] = []
    labels: list[str] = []
    in_data = False
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                if line.lower().startswith("@data"):
                    in_data = True
                continue
            *dims, label = line.split(":")
            channels = [np.array(d.split(","), dtype=np.float64) for d in dims]
            if len({len(c) for c in channels}) != 1:
                raise ValueError(f"{path}: dimensions of one case differ in length")
            xs.append(np.stack(channels, axis=1).astype(np.float32))
            labels.append(label.strip())
    if not in_data:
        raise ValueError(f"{path}: no @data section")
    return xs, labels


def load_japanese_vowels(
    data_dir: str | os.PathLike | None = None,
) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray], np.ndarray]:
    """Load Japanese Vowels with the archive's train/test split.

    Returns ``(x_train, y_train, x_test, y_test)``: ``x_*`` are lists of float32 arrays of
    shape ``(T_i, 12)`` with ``7 <= T_i <= 29`` (unequal lengths, no padding); ``y_*`` are
    int64 arrays of speaker labels ``0..8`` (the files' labels ``1..9`` minus one).
    270 training and 370 test series.
    """
    folder = Path(data_dir) if data_dir is not None else japanese_vowels_dir()
    out: list = []
    for split in ("TRAIN", "TEST"):
        xs, labels = read_ts(folder / f"JapaneseVowels_{split}.ts")
        y = np.array([int(float(s)) for s in labels], dtype=np.int64) - 1
        if any(x.shape[1] != N_FEATURES for x in xs) or y.min() < 0 or y.max() >= N_CLASSES:
            raise ValueError(f"unexpected contents in {folder}/JapaneseVowels_{split}.ts")
        out += [xs, y]
    return out[0], out[1], out[2], out[3]


STDLIB_MODULES = ("argparse", "inspect", "typing", "pydoc", "difflib", "enum", "dataclasses")
"""The standard-library modules whose source :func:`load_stdlib_text` reads, in this order."""


def load_stdlib_text(
    modules: tuple[str, ...] | list[str] = STDLIB_MODULES, max_chars: int | None = None
) -> str:
    """The source code of standard-library ``modules``, concatenated (a character corpus).

    Each module's ``.py`` file is located with :func:`importlib.util.find_spec` (without
    importing it) and read as UTF-8; the texts are joined in the order given, and the result
    is cut to its first ``max_chars`` characters when given.

        >>> text = load_stdlib_text(max_chars=1000)
        >>> len(text), text.startswith("# Author: Steven J. Bethard")
        (1000, True)
    """
    parts = []
    for name in modules:
        spec = importlib.util.find_spec(name)
        origin = getattr(spec, "origin", None)
        if origin is None or not str(origin).endswith(".py"):
            raise ValueError(
                f"`modules`: {name!r} has no Python source file here (found {origin!r})"
            )
        parts.append(Path(origin).read_text(encoding="utf-8"))
        if max_chars is not None and sum(map(len, parts)) >= max_chars:
            break
    text = "".join(parts)
    return text if max_chars is None else text[: int(max_chars)]


if __name__ == "__main__":
    x_train, y_train, x_test, y_test = load_japanese_vowels()
    for name, xs, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        lengths = [len(x) for x in xs]
        print(
            f"{name}: {len(xs)} series, lengths {min(lengths)}..{max(lengths)}, "
            f"{xs[0].shape[1]} features, classes {np.bincount(y).tolist()}"
        )
