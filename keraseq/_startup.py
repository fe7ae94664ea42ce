"""TensorFlow's start-up lines on stderr, held to ``TF_CPP_MIN_LOG_LEVEL`` while keraseq imports.

What lives here: :func:`tensorflow_startup_log`, the context in which ``keraseq/__init__.py``
imports Keras (and so TensorFlow). TensorFlow (2.20, 2.21) prints a few C++ lines while its
libraries load ("oneDNN custom operations are on", "Could not find cuda drivers", absl's
"All log messages before absl::InitializeLog() is called are written to STDERR"), before its
log is initialised, so ``TF_CPP_MIN_LOG_LEVEL`` does not hold them back. While keraseq imports
them, file descriptor 2 goes to a temporary file; then every line at or above the level is
written back to the real stderr, in order, and the rest are dropped. Nothing changes when the
level is unset or 0, or TensorFlow was loaded before keraseq. What does not live here:
TensorFlow's Python-side logging (``backend/tensorflow.py`` filters its retracing warning).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

__all__ = ["tensorflow_startup_log", "filtered"]

#: absl's line prefix: severity (I, W, E, F), then ``mmdd hh:mm:ss.micros thread file:line]``.
_RECORD = re.compile(r"^([IWEF])\d{4} ")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def filtered(text: str, level: int) -> str:
    """``text`` (stderr lines) without absl records below ``level`` (with their continuation
    lines) and, from level 1, without absl's banner; any other line is kept.

    Example:
        >>> print(filtered(
        ...     "I0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on.\\n"
        ...     "E0000 00:00:1.0 1 x.cc:1] a real error\\n"
        ...     "Traceback (most recent call last):\\n", 1), end="")
        E0000 00:00:1.0 1 x.cc:1] a real error
        Traceback (most recent call last):
    """
    kept, dropping = [], False
    for line in text.splitlines(keepends=True):
        record = _RECORD.match(line)
        if record is not None:
            dropping = _SEVERITY[record.group(1)] < level
        elif line.rstrip("\n") == _BANNER:
            dropping = level >= 1
        elif not line.startswith((" ", "\t")) and not _continues(line):
            dropping = False  # a line of its own (not the tail of a dropped record)
        if not dropping:
            kept.append(line)
    return "".join(kept)


def _continues(line: str) -> bool:
    """The second line of TensorFlow's CPU-feature record ("To enable the following
    instructions: ... rebuild TensorFlow with the appropriate compiler flags.")."""
    return line.startswith("To enable the following instructions")


def _level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") or 0)
    except ValueError:
        return 0


@contextlib.contextmanager
def tensorflow_startup_log() -> Iterator[None]:
    """Hold stderr's file descriptor while TensorFlow loads; write back what
    ``TF_CPP_MIN_LOG_LEVEL`` lets through (see the module docstring)."""
    level = _level()
    if level <= 0 or "tensorflow" in sys.modules:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr: nothing to hold
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = filtered(held.read().decode("utf-8", "replace"), level)
            if kept:
                os.write(2, kept.encode("utf-8"))
