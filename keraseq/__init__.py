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

__version__ = "0.1.0"  # the one version source: pyproject.toml reads it (setuptools dynamic)

_BACKEND_DEFAULTED = "KERAS_BACKEND" not in _os.environ
_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

#: The package each Keras backend needs, and the keraseq extra that installs it.
_BACKEND_PACKAGES = {"tensorflow": ("tensorflow", "TensorFlow"), "jax": ("jax", "JAX")}


def _check_backend_installed() -> None:
    """Raise a clear ImportError, naming the extra, when the chosen backend is not installed.

    Keras would fail later inside its own import with ``No module named 'tensorflow'``; the
    backend is the user's choice (``KERAS_BACKEND``, TensorFlow when unset), as in Keras.
    """
    backend = _os.environ["KERAS_BACKEND"]
    if backend not in _BACKEND_PACKAGES:
        return  # keraseq.backend.current() names the supported backends
    package, label = _BACKEND_PACKAGES[backend]
    if _importlib_util.find_spec(package) is None:
        unset = " (the default when KERAS_BACKEND is unset)" if _BACKEND_DEFAULTED else ""
        other = "jax" if backend == "tensorflow" else "tensorflow"
        raise ImportError(
            f"keraseq runs on the Keras backend KERAS_BACKEND={backend!r}{unset}, but {label} is "
            f"not installed: pip install 'keraseq[{backend}]' (or set KERAS_BACKEND={other} "
            f"and pip install 'keraseq[{other}]')"
        )


_check_backend_installed()

from ._startup import tensorflow_startup_log as _startup_log  # noqa: E402

# TensorFlow loads here (through Keras): its start-up lines held to TF_CPP_MIN_LOG_LEVEL.
with _startup_log():
    from .backend import name as _backend_name

    if _backend_name() == "jax":
        # Asks JAX for one CPU device per core before JAX starts (see backend/jax/devices.py).
        from .backend import jax as _jax_backend  # noqa: F401

    from . import callbacks as callbacks
    from .classifier import Classifier
    from .estimator import Estimator, NonFiniteLossError
    from .inputs import SliceTuple, from_channels_first
    from .losses import seqloss
    from .model_selection import TimeSplit
    from .text import BitsPerToken, Perplexity, Vocabulary, batchify, bits_per_token, generate

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
