"""keraseq: an sklearn-style Estimator with truncated BPTT and MPI data parallelism for Keras 3.

Public API (everything else is internal):

- :class:`Estimator` — ``fit`` / ``predict`` / ``score`` for sequence models ``(N, T, F)``.
- :class:`Classifier` — the same for labels per series or per time step.
- :class:`SliceTuple` — several input arrays that scikit-learn can index by rows.
- :func:`from_channels_first` — sktime's / aeon's ``(N, channels, T)`` as ``(N, T, channels)``.
- :func:`seqloss` — a window loss from a per-time-step loss.
- :class:`TimeSplit` — cross-validation along the time axis (train on the past, score the future).
- :mod:`keraseq.text` — language models: :func:`batchify` (one long token sequence as ``B``
  streams), :class:`Vocabulary`, the metrics :class:`BitsPerToken` and :class:`Perplexity`,
  :func:`bits_per_token`, :func:`generate` (sampling by streaming ``predict``).
- :mod:`keraseq.callbacks` — ``BackupAndRestore`` with atomic writes.
- :mod:`keraseq.distributed` — MPI: ``DistributedOptimizer``, ``BroadcastWeightsCallback``.
- :mod:`keraseq.utils` — model utilities; :mod:`keraseq.data` — ``h5concat``;
  :mod:`keraseq.layers` — ``WinsorNorm``.
"""

import importlib.util as _importlib_util
import os as _os
import sys as _sys
from typing import TYPE_CHECKING as _TYPE_CHECKING

__version__ = "0.1.0"  # the one version source: pyproject.toml reads it (setuptools dynamic)

_BACKEND_DEFAULTED = "KERAS_BACKEND" not in _os.environ
_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

#: The package each Keras backend needs, and the keraseq extra that installs it.
_BACKEND_PACKAGES = {"tensorflow": ("tensorflow", "TensorFlow"), "jax": ("jax", "JAX")}


def _missing_backend() -> str | None:
    """The ImportError's message when the chosen backend is not installed, naming the extra;
    else ``None``.

    Keras would fail later inside its own import with ``No module named 'tensorflow'``; the
    backend is the user's choice (``KERAS_BACKEND``, TensorFlow when unset), as in Keras.
    """
    backend = _os.environ["KERAS_BACKEND"]
    if backend not in _BACKEND_PACKAGES:
        return None  # keraseq.backend.current() names the supported backends
    package, label = _BACKEND_PACKAGES[backend]
    if _importlib_util.find_spec(package) is not None:
        return None
    unset = " (the default when KERAS_BACKEND is unset)" if _BACKEND_DEFAULTED else ""
    other = "jax" if backend == "tensorflow" else "tensorflow"
    return (
        f"keraseq runs on the Keras backend KERAS_BACKEND={backend!r}{unset}, but {label} is "
        f"not installed: pip install 'keraseq[{backend}]' (or set KERAS_BACKEND={other} "
        f"and pip install 'keraseq[{other}]')"
    )


def _run_as_a_script() -> bool:
    """Whether Python is locating one of keraseq's own modules to run it as ``__main__``
    (``python -m keraseq.data ...``): ``sys.argv[0]`` is ``"-m"`` until the module is found
    (Python's documentation of ``-m``), and ``sys.orig_argv`` names the module."""
    if getattr(_sys, "argv", [])[:1] != ["-m"]:
        return False
    argv = list(getattr(_sys, "orig_argv", []))
    for i, arg in enumerate(argv[1:], 1):  # (argv[0]: the interpreter)
        if arg == "-m":
            return i + 1 < len(argv) and argv[i + 1].startswith("keraseq.")
        if arg.startswith("-m"):  # -mkeraseq.data
            return arg[2:].startswith("keraseq.")
    return False


def _load() -> None:
    """Import the public API into this namespace, and with it Keras (so TensorFlow or JAX).

    ``import keraseq`` calls it, except in two cases, where the first use of a public name
    does (``__getattr__`` below): Python runs one of keraseq's modules as a script (``python
    -m keraseq.data``: that module imports only what it needs, numpy and h5py), or the chosen
    backend is not installed (``keraseq.data`` works on a machine that only prepares data;
    ``from keraseq import Estimator`` raises the ImportError naming the extra)."""
    global Classifier, Estimator, NonFiniteLossError, SliceTuple
    global from_channels_first, seqloss, TimeSplit
    global BitsPerToken, Perplexity, Vocabulary, batchify, bits_per_token, generate
    missing = _missing_backend()
    if missing is not None:
        raise ImportError(missing)
    from ._startup import tensorflow_startup_log

    # TensorFlow loads here (through Keras): its start-up lines held to TF_CPP_MIN_LOG_LEVEL.
    with tensorflow_startup_log():
        from .backend import name as backend_name

        if backend_name() == "jax":
            # Asks JAX for one CPU device per core before JAX starts (backend/jax/devices.py).
            from .backend import jax as _jax_backend  # noqa: F401

        # (not `from . import callbacks`: that would ask __getattr__ below, which calls this)
        import keraseq.callbacks  # noqa: F401  (the import sets the attribute `callbacks`)

        from .classifier import Classifier
        from .estimator import Estimator, NonFiniteLossError
        from .inputs import SliceTuple, from_channels_first
        from .losses import seqloss
        from .model_selection import TimeSplit
        from .text import BitsPerToken, Perplexity, Vocabulary, batchify, bits_per_token, generate


if _TYPE_CHECKING:  # what static tools (mypy, the API pages) read; at run time: _load()
    from . import callbacks as callbacks
    from .classifier import Classifier
    from .estimator import Estimator, NonFiniteLossError
    from .inputs import SliceTuple, from_channels_first
    from .losses import seqloss
    from .model_selection import TimeSplit
    from .text import BitsPerToken, Perplexity, Vocabulary, batchify, bits_per_token, generate


def __getattr__(name: str):
    """A public name before :func:`_load` ran (see there): load, then answer."""
    if name in __all__ or name == "callbacks":
        _load()
        return globals()[name]
    raise AttributeError(f"module 'keraseq' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | {"callbacks"})


__all__ = [
    "Estimator",
    "Classifier",
    "NonFiniteLossError",
    "SliceTuple",
    "TimeSplit",
    "from_channels_first",
    "seqloss",
    "batchify",
    "Vocabulary",
    "BitsPerToken",
    "Perplexity",
    "bits_per_token",
    "generate",
    "__version__",
]

if not _run_as_a_script() and _missing_backend() is None:
    _load()
