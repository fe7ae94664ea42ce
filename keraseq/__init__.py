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
import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from .backend import name as _backend_name  # noqa: E402

if _backend_name() == "jax":
    # Asks JAX for one CPU device per core before JAX starts (see backend/jax.py).
    from .backend import jax as _jax_backend  # noqa: E402,F401

from . import callbacks  # noqa: E402
from .estimator import Estimator, NonFiniteLossError  # noqa: E402
from .classifier import Classifier  # noqa: E402
from .inputs import SliceTuple, from_channels_first  # noqa: E402
from .losses import seqloss  # noqa: E402
from .model_selection import TimeSplit  # noqa: E402
from .text import (BitsPerToken, Perplexity, Vocabulary, batchify, bits_per_token,  # noqa: E402
                   generate)

__version__ = "0.1.0"
__all__ = ["Estimator", "Classifier", "NonFiniteLossError", "SliceTuple", "TimeSplit",
           "from_channels_first", "seqloss", "batchify", "Vocabulary", "BitsPerToken",
           "Perplexity", "bits_per_token", "generate", "__version__"]
