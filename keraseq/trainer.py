"""Training, the backend-free face of one fit: checked data -> a prepared session -> epochs.

What lives here: :func:`fit` (one ``Estimator.fit`` call once its hyper-parameters are
resolved: a pipeline's first batch standing for the data, the model built (or the warm one
taken), ``x``/``y`` keyed, unragged and split for validation, every check of ``check_fit``, the
session prepared (``session.py``), then the epochs run by :class:`~keraseq.epochs.EpochLoop`),
and ``global_batch_size`` turned into this rank's batch. It never looks back at the Estimator.
What does not live here: the scikit-learn face (``estimator.py``), data checks (``checks.py``),
building the optimizer and compiled steps (``session.py``), the epoch loop and validation
(``epochs.py``), reading minibatches (``readers/``), the window loops (``backend/``),
inference (``inference.py``), MPI (``distributed.py``).

Example (normally reached through ``Estimator.fit``):
    >>> import keras, numpy as np
    >>> from keraseq import Estimator
    >>> m = keras.Sequential([keras.Input((None, 2)), keras.layers.GRU(4, return_sequences=True),
    ...                       keras.layers.Dense(1)])
    >>> x = np.random.rand(8, 12, 2).astype("float32")
    >>> Estimator(m, epochs=1, batch_size=4, seq_len=6, verbose=0).fit(x, x[..., :1]).n_epochs_
    1
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from . import distributed as dist
from .backend import current as _backend
from .checks import FitData, check_fit
from .epochs import EpochLoop, NonFiniteLossError, Progress
from .inputs import keyed, split_validation
from .lengths import unragged
from .losses import is_window_loss
from .model_facts import facts_of
from .readers import as_dataset
from .resets import ragged_resets
from .session import Builders, Session, device_for, prepare
from .validation import check_positive_int

if TYPE_CHECKING:
    from .hyperparams import Settings

__all__ = ["fit", "FitRequest", "Builders", "Progress", "NonFiniteLossError"]


@dataclass(frozen=True)
class FitRequest:
    """One ``fit`` call's data, as the face hands it down (after scikit-learn's input rules):
    ``x`` arrays, a ragged list or a pipeline of batches, and what came with it."""

    x: Any
    y: Any = None
    sample_weight: Any = None
    validation_data: Any = None
    lengths: Any = None
    resets: Any = None
    callbacks: Any = None
    initial_epoch: int | None = None


def fit(
    p: Settings,
    loss,
    request: FitRequest,
    build: Builders,
    *,
    warm: Session | None = None,
    progress: Progress | None = None,
    previous: Session | None = None,
) -> tuple[Session, Progress]:
    """Train as ``Estimator.fit`` does; returns the fitted session and the progress.

    ``p``: the resolved hyper-parameters (``epochs`` already the count for this call);
    ``warm``/``progress``: the previous fit's, to continue from; ``previous``: this
    estimator's last session, whose compiled steps a new (not warm) fit may recycle. Nothing
    is returned (and no fitted state changes) when a check fails.
    """
    if p.steps_per_epoch is not None:
        check_positive_int(p.steps_per_epoch, "steps_per_epoch")
    dataset = as_dataset(request.x, p.steps_per_epoch)
    if dataset is None and p.steps_per_epoch is not None:
        raise ValueError(
            "`steps_per_epoch` counts the batches of a pipeline (tf.data, "
            "generator, PyDataset); with arrays an epoch is every series once"
        )
    with contextlib.ExitStack() as opened:
        if dataset is not None:
            opened.callback(dataset.close)  # an epoch opened to read the first batch, if unrun
            p, request = _first_batch(p, dataset, request, loss)
        comm = dist.get_comm(p.distributed)
        p = _rank_batch(p, comm, dataset)
        built = warm.model if warm is not None else _new_model(p, comm, build)
        data = _checked_data(p, loss, request, built, comm)
        session, val_steps, val_metrics = prepare(
            p, loss, data, comm, built, build, warm=warm, previous=previous
        )
        try:
            loop = EpochLoop(p, session, data, dataset, val_steps, val_metrics)
            progress = loop.run(
                request.callbacks, request.initial_epoch, warm is not None, progress or Progress()
            )
        except BaseException as exc:
            # Stopped mid-training (a non-finite loss, Ctrl-C, a failing callback): the caller
            # still gets the model as it is (for a non-finite loss, from before that update).
            try:
                exc.keraseq_session = session  # type: ignore[attr-defined]
            except AttributeError:
                pass
            raise
        return session, progress


def _first_batch(p: Settings, dataset, request: FitRequest, loss) -> tuple[Settings, FitRequest]:
    """Ready minibatches (a pipeline): the first one stands for the data in every check and
    probe of ``fit``; returns the settings with its batch size (no shuffling: the dataset
    orders its batches, ``PyDataset.on_epoch_end``) and the request with its ``(x, y,
    sample_weight)``."""
    if request.y is not None or request.sample_weight is not None or request.lengths is not None:
        raise ValueError(
            "`x` is a dataset of (x, y[, sample_weight]) batches: pass "
            "y=None (the targets are in the batches)"
        )
    if request.resets is not None:
        raise ValueError(
            "`resets` with a dataset: put each batch's resets in the batches, as "
            "(x, y, sample_weight, resets) tuples (sample_weight may be None)"
        )
    if p.validation_split or p.group_by_length:
        raise ValueError(
            "validation_split and group_by_length need arrays; a dataset "
            "brings its own batches (use validation_data)"
        )
    if is_window_loss(loss):
        raise ValueError(
            "a dataset of batches needs a Keras loss (its last batch is padded with masked rows)"
        )
    x, y, sample_weight = dataset.first()[:3]
    first = x
    while isinstance(first, (tuple, list, dict)) and first:
        first = next(iter(first.values())) if isinstance(first, dict) else first[0]
    p = replace(p, batch_size=int(np.shape(first)[0]), shuffle=False)
    return p, replace(request, x=x, y=y, sample_weight=sample_weight)


def _new_model(p: Settings, comm, build: Builders) -> keras.Model:
    """The model of a new fit, built first: its input specs and output layouts decide how
    ``x`` and ``y`` are read (token ids, step shapes, per step or per series, sparse labels)."""
    if p.random_state is not None:
        keras.utils.set_random_seed(int(p.random_state))
    with _backend().device_scope(device_for(p.device, comm)):
        return build.new_model()


def _checked_data(p: Settings, loss, request: FitRequest, built: keras.Model, comm) -> FitData:
    """The request's data keyed by the model's names, unragged, split for validation and
    checked (``check_fit``)."""
    x, y, w, lengths, resets = (
        request.x,
        request.y,
        request.sample_weight,
        request.lengths,
        request.resets,
    )
    if isinstance(x, dict) or isinstance(y, dict):  # keyed by the model's input/output names
        x, y = keyed(x, built, "x"), keyed(y, built, "y")
    x, y, w, lengths = unragged(x, y, w, lengths, facts_of(built).step_rank)
    if isinstance(resets, list):  # per-series flags next to a ragged x
        first = x[0] if isinstance(x, (tuple, list)) else x
        resets = ragged_resets(resets, lengths, int(np.shape(first)[1]))
    x, y, w, lengths, validation_data, resets = split_validation(
        x, y, w, lengths, p.validation_split, request.validation_data, resets
    )
    return check_fit(
        x,
        y,
        w,
        lengths,
        validation_data,
        loss,
        p.metrics,
        p.rebatch,
        comm,
        model=built,
        resets=resets,
    )


def _rank_batch(p: Settings, comm, dataset) -> Settings:
    """``p`` with ``batch_size`` this rank's share of ``global_batch_size``, when set:
    checked to divide by the number of ranks, refused where a rank's minibatches are not
    cut from the one order of all rows (a pipeline, ``group_by_length``, ``rebatch``)."""
    g = p.global_batch_size
    if g is None:
        return p
    for name, used in (
        ("x as a pipeline", dataset is not None),
        ("group_by_length=True", p.group_by_length),
        ("rebatch=True", p.rebatch),
    ):
        if used:
            raise ValueError(
                f"`global_batch_size` splits each minibatch of the rows of `x` over the ranks; "
                f"it does not combine with {name} (use `batch_size`, per rank)"
            )
    if g % comm.size:
        raise ValueError(
            f"`global_batch_size`={g} does not split evenly over {comm.size} MPI ranks; "
            f"use a multiple of {comm.size}"
        )
    return replace(p, batch_size=g // comm.size)
