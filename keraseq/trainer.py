"""The backend-free training loop: epochs, minibatches, callbacks, history, validation.

What lives here: :func:`fit` (one ``Estimator.fit`` call once its hyper-parameters are
resolved: checked data -> model, optimizer and compiled steps -> epochs of minibatches, with
Keras's ``CallbackList``, progress bar and ``History``, validation after each epoch,
non-finite losses, ``BackupAndRestore`` resumes, warm starts), :class:`Session` (a fitted
model ready to run: what ``predict``/``score`` and the next warm fit need) and
:func:`build_steps`. It calls the compiled window loops of the current backend
(``keraseq.backend.current()``) once per minibatch and never looks back at the Estimator.
What does not live here: the scikit-learn face (``estimator.py``), data checks
(``checks.py``), reading minibatches (``batches.py``), the window loops (``backend/``),
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
import math
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from . import distributed as dist
from . import reuse
from .backend import StepFunctions
from .backend import current as _backend
from .batches import (
    DatasetReader,
    MinibatchReader,
    as_dataset,
    minibatch_plan,
    predict_batch_size,
    read_rows,
    x_dtype,
    y_dtype,
)
from .checks import (
    FitData,
    check_fit,
    check_model_inputs,
    check_windows,
    keyed,
    split_validation,
    step_features,
    step_rank,
    unragged,
)
from .lengths import grouped_plan, input_mask_rule, series_lengths, time_mask, windows_needed
from .losses import build_objective, is_window_loss
from .validation import check_positive_int
from .windows import StateCarry

__all__ = ["fit", "Session", "build_steps", "NonFiniteLossError", "device_for"]


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or Inf loss or gradient; the weights are those before it."""


@dataclass
class Session:
    """A model ready to run window by window: what ``predict``, ``score`` and a warm ``fit``
    need. Built by :func:`fit` (or rebuilt after loading/unpickling by :func:`build_steps`)."""

    model: keras.Model
    optimizer: Any
    carry: StateCarry
    steps: StepFunctions
    comm: Any
    device: str | None
    state_specs: list  #: per RNN call, the per-series (shape, dtype) of its states
    per_series: bool  #: targets per series (N, F_out)
    seq_len: int | None  #: the windows of the compiled steps
    out_shapes: list  #: per output, its shape per window without the batch
    n_features: int
    n_outputs: int
    train_metrics: list = field(default_factory=list)  #: the metrics the train step updates


@dataclass
class Progress:
    """What a fit leaves for the next warm fit: history, epochs done, the shuffle seed."""

    history: dict = field(default_factory=dict)
    n_epochs: int = 0
    shuffle_seed: int | None = None


def device_for(setting, comm) -> str | None:
    """The device to run on: ``"auto"`` = the backend's choice for this rank."""
    return _backend().default_device(comm) if setting == "auto" else setting


def output_names(model, n_outputs) -> list[str]:
    names = list(getattr(model, "output_names", None) or [])
    return names if len(names) == n_outputs else [f"output_{k}" for k in range(n_outputs)]


def build_steps(
    model,
    opt,
    carry,
    state_specs,
    per_series,
    p,
    comm,
    metrics,
    loss,
    n_outputs,
    device,
    jit,
    val_metrics=None,
):
    """Compiled step functions for training (and, when asked, for validation)."""
    objective = build_objective(
        model, loss, output_names(model, n_outputs), p["loss_weights"], per_series
    )
    backend = _backend()
    allreduce = backend.graph_allreduce(comm, device) if comm.size > 1 else None
    steps = backend.build_step_functions(
        model,
        carry,
        state_specs,
        objective,
        opt,
        metrics,
        p["seq_len"],
        per_series,
        jit,
        allreduce,
        sync_every=p["sync_every"],
    )
    val_steps = None
    if val_metrics is not None:
        val_steps = backend.build_step_functions(
            model, carry, state_specs, objective, None, val_metrics, p["seq_len"], per_series, jit
        )
    return steps, val_steps


def probe(model, carry, xs, seq_len, row=0):
    """One eager call on one series' first window: state shapes and output structure.

    ``row`` is a series of this rank's own block (under MPI a rank reads no other rows)."""
    t = int(xs[0].shape[1])
    s = t if seq_len is None else min(seq_len, t)
    window = tuple(
        np.asarray(read_rows(a, slice(row, row + 1)))[:, :s].astype(
            np.float32 if a.dtype.kind == "f" else np.int32
        )
        for a in xs
    )

    def call(w):
        carry.feed(None)
        return model(w, training=False), carry.collected()

    _backend().release_eager_kernels()  # once per fit: what earlier models left in the backend
    with carry:
        try:  # shapes only: traced, not run, where the backend can (no compile kept)
            out, states = _backend().shapes_of(
                model, call, window[0] if len(window) == 1 else window
            )
        except Exception as exc:
            raise ValueError(
                f"the model cannot be called on a window of `x` with shape "
                f"{[w.shape for w in window]}: {exc}"
            ) from exc
        # Keras drops a mask at a layer without mask support: then no recurrent layer
        # sees it and the padding is computed over, which keraseq must follow.
        object.__setattr__(
            model, "_keraseq_mask_reaches_rnn", any(carry.model_masks) or not carry.model_masks
        )
    specs = [[(tuple(int(d) for d in st.shape[1:]), st.dtype) for st in call] for call in states]
    outs = keras.tree.flatten(out)
    return specs, [tuple(o.shape[1:]) for o in outs], s


def fit(
    p: dict,
    loss,
    x,
    y,
    sample_weight,
    validation_data,
    callbacks,
    lengths,
    initial_epoch,
    *,
    new_model: Callable[[], keras.Model],
    new_optimizer: Callable[[], Any],
    check_outputs: Callable,
    warm: Session | None = None,
    progress: Progress | None = None,
    previous: Session | None = None,
) -> tuple[Session, Progress]:
    """Train as ``Estimator.fit`` does; returns the fitted session and the progress.

    ``p``: the resolved hyper-parameters (``epochs`` already the count for this call);
    ``new_model()``/``new_optimizer()`` build fresh ones (not called on a warm fit);
    ``check_outputs(out_shapes, ys, window, per_series)`` checks the model's outputs against the
    targets (a subclass adds its own checks); ``warm``/``progress``: the previous fit's, to
    continue from; ``previous``: this estimator's last session, whose compiled steps a new
    (not warm) fit may recycle. Nothing is returned (and no fitted state changes) when a check fails.
    """  # noqa: E501
    p = dict(p)
    if p.get("steps_per_epoch") is not None:
        check_positive_int(p["steps_per_epoch"], "steps_per_epoch")
    dataset = as_dataset(x, p.get("steps_per_epoch"))
    if dataset is None and p.get("steps_per_epoch") is not None:
        raise ValueError(
            "`steps_per_epoch` counts the batches of a pipeline (tf.data, "
            "generator, PyDataset); with arrays an epoch is every series once"
        )
    with contextlib.ExitStack() as opened:
        if dataset is not None:
            opened.callback(dataset.close)  # an epoch opened to read the first batch, if unrun
            x, y, sample_weight = _first_batch(p, dataset, y, sample_weight, lengths, loss)
        return _fit(
            p,
            loss,
            x,
            y,
            sample_weight,
            validation_data,
            callbacks,
            lengths,
            initial_epoch,
            new_model,
            new_optimizer,
            check_outputs,
            warm,
            progress,
            previous,
            dataset,
        )


def _first_batch(p, dataset, y, sample_weight, lengths, loss):
    """Ready minibatches (a pipeline): the first one stands for the data in every check and
    probe of ``fit``; returns its ``(x, y, sample_weight)``."""
    if y is not None or sample_weight is not None or lengths is not None:
        raise ValueError(
            "`x` is a dataset of (x, y[, sample_weight]) batches: pass "
            "y=None (the targets are in the batches)"
        )
    if p["validation_split"] or p["group_by_length"]:
        raise ValueError(
            "validation_split and group_by_length need arrays; a dataset "
            "brings its own batches (use validation_data)"
        )
    if is_window_loss(loss):
        raise ValueError(
            "a dataset of batches needs a Keras loss (its last batch is padded with masked rows)"
        )
    x, y, sample_weight = dataset.first()
    first = x
    while isinstance(first, (tuple, list, dict)) and first:
        first = next(iter(first.values())) if isinstance(first, dict) else first[0]
    p["batch_size"] = int(np.shape(first)[0])
    p["shuffle"] = False  # the dataset orders its batches (PyDataset.on_epoch_end)
    return x, y, sample_weight


def _fit(
    p,
    loss,
    x,
    y,
    sample_weight,
    validation_data,
    callbacks,
    lengths,
    initial_epoch,
    new_model,
    new_optimizer,
    check_outputs,
    warm,
    progress,
    previous,
    dataset,
):
    comm = dist.get_comm(p["distributed"])
    # The model first: its input specs and output layouts decide how x and y are read
    # (token ids, step shapes, targets per step or per series, sparse labels).
    if warm is not None:
        built = warm.model
    else:
        if p["random_state"] is not None:
            keras.utils.set_random_seed(int(p["random_state"]))
        with _backend().device_scope(device_for(p["device"], comm)):
            built = new_model()
    if isinstance(x, dict) or isinstance(y, dict):  # keyed by the model's input/output names
        x, y = keyed(x, built, "x"), keyed(y, built, "y")
    x, y, sample_weight, lengths = unragged(x, y, sample_weight, lengths, step_rank(built))
    x, y, sample_weight, lengths, validation_data = split_validation(
        x, y, sample_weight, lengths, p["validation_split"], validation_data
    )
    data = check_fit(
        x,
        y,
        sample_weight,
        lengths,
        validation_data,
        loss,
        p["metrics"],
        p["rebatch"],
        comm,
        model=built,
    )
    session, val_steps, val_metrics = _prepare(
        p, loss, data, comm, warm, built, new_model, new_optimizer, check_outputs, previous
    )
    try:
        progress = _epochs(
            p,
            session,
            data,
            dataset,
            val_steps,
            val_metrics,
            callbacks,
            initial_epoch,
            warm is not None,
            progress or Progress(),
        )
    except BaseException as exc:
        # Stopped mid-training (a non-finite loss, Ctrl-C, a failing callback): the caller
        # still gets the model as it is (for a non-finite loss, from before that update).
        try:
            exc.keraseq_session = session
        except AttributeError:
            pass
        raise
    return session, progress


def _prepare(
    p,
    loss,
    data: FitData,
    comm,
    warm,
    built,
    new_model,
    new_optimizer,
    check_outputs,
    previous=None,
):
    """Model, optimizer, probe, metrics and compiled steps (every rank identical).

    The compiled steps of a finished fit of the same architecture and settings are reused
    (``reuse.py``): the new model's initial weights and a fresh optimizer state are loaded
    into the objects they were compiled for."""
    xs, ys = data.xs, data.ys
    if p["random_state"] is not None and warm is not None:  # (a new model: seeded by fit)
        keras.utils.set_random_seed(int(p["random_state"]))
    device = device_for(p["device"], comm)
    backend = _backend()
    with backend.device_scope(device):
        model = warm.model if warm is not None else (built or new_model())
        check_model_inputs(model, xs)
        check_windows(
            model,
            p["seq_len"],
            int(xs[0].shape[1]),
            data.lengths is not None or (data.val is not None and data.val[3] is not None),
        )
        carry = StateCarry(model)
        own = dist.shard(int(xs[0].shape[0]), comm)[0]
        state_specs, out_shapes, window = probe(
            model, carry, xs, p["seq_len"], row=min(own, int(xs[0].shape[0]) - 1)
        )
        check_outputs(out_shapes, ys, window, per_series=data.per_series)
        opt = warm.optimizer if warm is not None else new_optimizer()
        # Multiply-adds per window, roughly: what decides XLA or not ("auto") on TensorFlow.
        work = min(p["batch_size"], int(xs[0].shape[0])) * window * model.count_params()
        jit = backend.jit_for(model, p["jit_compile"], work=work, distributed=comm.size > 1)
        key = reuse.key_of(
            model,
            opt,
            {
                "loss": reuse.describe(loss),
                "metrics": reuse.describe(p["metrics"]),
                "loss_weights": reuse.describe(p["loss_weights"]),
                "seq_len": p["seq_len"],
                "per_series": data.per_series,
                "jit": jit,
                "sync_every": p["sync_every"],
                "ranks": [comm.rank, comm.size],
                "device": device,
                "validation": data.val is not None,
                "state_specs": repr(state_specs),
                "out_shapes": out_shapes,
            },
        )
        entry = reuse.take(
            key, previous=warm or previous, model=model if warm is not None else None
        )
        if entry is not None and warm is None and not _load_initial(entry, model, opt, comm):
            entry = None
        if entry is not None:
            model, opt, carry = entry.model, entry.optimizer, entry.carry
            metrics, val_metrics = entry.metrics, entry.val_metrics
        else:
            if comm.size > 1:
                opt = dist.DistributedOptimizer(opt, comm=comm)
            if warm is None:
                model.compile(optimizer=opt)
                if isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer):
                    opt = model.optimizer  # mixed_float16: compile's loss scaling, as model.fit
            opt.build(model.trainable_variables)
            metrics, val_metrics = (
                [
                    metric(m, *metric_shapes(k, ys, out_shapes))
                    for k, m in enumerate(p["metrics"] or [])
                ]
                for _ in range(2)
            )
        if comm.size > 1:
            dist.broadcast_variables(model.variables + opt.variables, comm)
    if entry is not None:
        steps, val_steps = entry.steps, entry.val_steps
    else:
        # Building checks the loss against the outputs: before any fitted state is returned.
        steps, val_steps = build_steps(
            model,
            opt,
            carry,
            state_specs,
            data.per_series,
            p,
            comm,
            metrics,
            loss,
            len(out_shapes),
            device,
            jit,
            val_metrics if data.val is not None else None,
        )
        entry = reuse.Entry(key, model, opt, carry, steps, metrics, val_steps, val_metrics)
        reuse.register(key, entry)
    session = Session(
        model,
        opt,
        carry,
        steps,
        comm,
        device,
        state_specs,
        data.per_series,
        p["seq_len"],
        out_shapes,
        step_features(xs[0]),
        len(ys),
        metrics,
    )
    reuse.own(entry, session)
    return session, val_steps, val_metrics


def _load_initial(entry, model, fresh_opt, comm) -> bool:
    """Load ``model``'s weights and ``fresh_opt``'s initial state into a reused entry's
    model and optimizer (False when their variables do not line up)."""
    target = entry.model
    weights = model.get_weights()
    if len(weights) != len(target.weights):
        return False
    if isinstance(entry.optimizer, keras.optimizers.LossScaleOptimizer):
        fresh_opt = keras.optimizers.LossScaleOptimizer(fresh_opt)
    fresh_opt.build(target.trainable_variables)
    if len(fresh_opt.variables) != len(entry.optimizer.variables) or any(
        tuple(a.shape) != tuple(b.shape)
        for a, b in zip(fresh_opt.variables, entry.optimizer.variables)
    ):
        return False
    target.set_weights(weights)
    for var, fresh in zip(entry.optimizer.variables, fresh_opt.variables):
        var.assign(fresh.value if hasattr(fresh, "value") else fresh)
    return True


def _epochs(
    p,
    session: Session,
    data: FitData,
    dataset,
    val_steps,
    val_metrics,
    callbacks,
    initial_epoch,
    warm: bool,
    progress: Progress,
) -> Progress:
    """The epoch loop (numbered as in ``model.fit``)."""
    model, opt, comm, carry = session.model, session.optimizer, session.comm, session.carry
    steps, metrics, backend = session.steps, session.train_metrics, _backend()
    xs, ys, ws, lengths = data.xs, data.ys, data.ws, data.lengths
    # Data for training (rebatch reshapes in memory; it is for small N).
    if p["rebatch"] and p["batch_size"] > int(xs[0].shape[0]):
        xs, ys, ws, rebatch_mask = rebatch(xs, ys, ws, p["batch_size"], p["seq_len"])
    else:
        rebatch_mask = None
    n = int(xs[0].shape[0])
    lo, hi = dist.shard(n, comm)
    n_steps = dist.max_over_ranks(math.ceil((hi - lo) / p["batch_size"]), comm)
    if dataset is not None:  # under MPI each rank brings its own dataset
        lo, hi = 0, n
        n_steps = dataset_steps(dataset, comm)
    rule = input_mask_rule(model)
    masked = rule is not None or lengths is not None
    if p["group_by_length"]:
        row_lengths = series_lengths(xs, lengths, rule, lo, hi)

        def plan_of(shuffle, epoch_rng):
            return grouped_plan(lo, hi, p["batch_size"], n_steps, row_lengths, shuffle, epoch_rng)
    else:

        def plan_of(shuffle, epoch_rng):
            return minibatch_plan(lo, hi, p["batch_size"], n_steps, shuffle, epoch_rng)

    # Epochs are numbered as in model.fit: a warm fit (warm_start, partial_fit) continues
    # the count, so schedulers, loggers and BackupAndRestore see the true epoch; an
    # explicit initial_epoch has Keras's meaning (run epochs initial_epoch .. epochs - 1).
    if initial_epoch is not None:
        first = check_positive_int(initial_epoch + 1, "initial_epoch") - 1
        last = p["epochs"]
    else:
        first = progress.n_epochs if warm else 0
        last = first + p["epochs"]
    shuffle_seed = progress.shuffle_seed
    if not warm or shuffle_seed is None:
        # One seed per estimator (rank 0's under MPI); epoch e shuffles with (seed, e),
        # so a resumed or continued run shuffles exactly like an uninterrupted one.
        seed = (
            p["random_state"]
            if p["random_state"] is not None
            else int(np.random.default_rng().integers(2**31))
        )
        shuffle_seed = dist.broadcast_object(int(seed), comm)
    # Chunks of windows (``windows_per_call``): each compiled call is one step of the bar
    # and of the callbacks; ``chunk`` is None when every minibatch is one call (as always
    # before), else the windows per call (the same on every rank).
    chunk = chunk_windows(p, session, xs, comm)
    calls = 1 if chunk is None else math.ceil(windows_of(xs, p["seq_len"]) / chunk)
    cb = callback_list(
        list(p["callbacks"] or []) + list(callbacks or []),
        model,
        p,
        None if n_steps is None else n_steps * calls,
        comm,
        epochs=last,
    )
    history = progress.history if warm else {}
    model.stop_training = False
    model._initial_epoch = None
    cb.on_train_begin()
    # A BackupAndRestore callback (rank 0 only under MPI) may have restored the weights,
    # the optimizer state and the epoch to start from: every rank takes rank 0's.
    start = dist.broadcast_object(int(model._initial_epoch or first), comm)
    model._initial_epoch = None
    if comm.size > 1:
        dist.broadcast_variables(model.variables + opt.variables, comm)
    epoch = start - 1
    logs = {}
    for epoch in range(start, last):
        epoch_rng = np.random.default_rng([shuffle_seed, epoch]) if p["shuffle"] else None
        cb.on_epoch_begin(epoch)
        if p["random_state"] is not None:
            reseed(model, int(p["random_state"]), epoch)
        for m in metrics:
            m.reset_state()
        if dataset is not None:
            reader = DatasetReader(
                dataset,
                n_steps,
                p["batch_size"],
                [x_dtype(xs, model), y_dtype(model), np.float32],
                comm,
                standardizer(model, ys),
            )
        else:
            reader = MinibatchReader(
                [
                    xs,
                    ys,
                    ws,
                    (rebatch_mask,) if rebatch_mask is not None else None,
                    (lengths,) if lengths is not None else None,
                ],
                plan_of(p["shuffle"], epoch_rng),
                p["batch_size"],
                [x_dtype(xs, model), y_dtype(model), np.float32, np.float32, np.int64],
                pad=not steps.exact_rows,
                fallback_row=lo if hi > lo else 0,
            )
        total = np.zeros(2)
        call = 0  # the callbacks' step: one per compiled call
        for step, (batch, rows_mask, n_real) in enumerate(reader):
            bx, by, bw, bt, bl = batch
            tensors = batch_tensors(
                bx, by, bw, rows_mask, session.per_series, bt, bl, rule, masked, p["seq_len"], comm
            )
            for args, final in calls_of(
                tensors,
                chunk,
                steps,
                p["seq_len"],
                comm,
                session.device,
                1 if session.per_series else p["sync_every"],
            ):
                cb.on_train_batch_begin(call)
                with carry, backend.device_scope(session.device), uninterrupted():
                    # Ctrl-C waits for the call to end and its update to be in place.
                    out = steps.train(*args)
                    result = out if chunk is None else out[0]
                    result = backend.to_numpy(result).tolist()
                if chunk is not None:
                    args[-2], args[-1] = out[1], (args[-1][0], args[-1][1], out[2])
                loss_sum, count, bad = result
                bad = int(bad)
                if bad >= 0:
                    raise NonFiniteLossError(
                        f"non-finite loss or gradient at epoch {epoch + 1}, minibatch "
                        f"{step + 1}, window {bad + 1}"
                        f"{'' if comm.size == 1 else ' (on some rank)'}; the weights are those "
                        f"from before that update. Lower the learning rate, clip gradients "
                        f"(optimizer clipnorm=...) or check the data"
                    )
                # Logged like model.fit: the mean of the minibatch losses weighted by their
                # number of series (a minibatch's loss: the mean over its unmasked elements);
                # inside a minibatch, with the mean of its windows trained so far.
                loss_sum, count, rows = dist.allreduce_sum(
                    np.array([loss_sum, count, n_real]), comm
                )
                minibatch = np.array([loss_sum, count])  # (the sums so far: see calls_of)
                done = total + (
                    [minibatch[0] / minibatch[1] * rows, rows]
                    if minibatch[1]
                    else [0.0, rows if final else 0.0]
                )
                if final:
                    total = done
                logs = {"loss": done[0] / max(done[1], 1.0)}
                logs.update(dist.metric_results(metrics, comm))
                cb.on_train_batch_end(call, logs)
                call += 1
                if comm.size > 1:  # a callback that stops one rank stops all (no hang)
                    model.stop_training = bool(dist.max_over_ranks(int(model.stop_training), comm))
                if model.stop_training:
                    break
            if model.stop_training:
                break
        if data.val is not None:
            logs.update(
                {
                    f"val_{k}": v
                    for k, v in evaluate(session, val_steps, data.val, val_metrics, p).items()
                }
            )
        cb.on_epoch_end(epoch, logs)
        if comm.size > 1:
            model.stop_training = bool(dist.max_over_ranks(int(model.stop_training), comm))
        if model.stop_training:
            break
    # As model.fit: exponential moving averages (use_ema) become the weights.
    opt.finalize_variable_values(model.trainable_variables)
    cb.on_train_end(logs)
    # Keras's own History (it also holds what callbacks add, e.g. learning_rate).
    for key, values in model.history.history.items():
        history.setdefault(key, []).extend(float(v) for v in values)
    return Progress(history, epoch + 1, shuffle_seed)


def dataset_steps(dataset, comm) -> int | None:
    """Minibatches per epoch of a pipeline: the most over the ranks (each brings its own),
    or ``None`` when some rank's count is unknown (then the ranks agree step by step)."""
    count = dataset.num_batches
    if dist.max_over_ranks(int(count is None), comm):
        return None
    return dist.max_over_ranks(int(count), comm)


def standardizer(model, ys):
    """A pipeline batch ``(x, y, w)`` as ``fit`` checked the first one: dicts in the model's
    input/output order, sparse labels with their trailing axis of 1."""

    def standardize(bx, by, bw):
        bx, by = keyed(bx, model, "x"), keyed(by, model, "y")
        by = tuple(by) if isinstance(by, (tuple, list)) else (by,)
        by = tuple(
            np.asarray(a)[..., None] if np.ndim(a) == ys[k].ndim - 1 else a
            for k, a in enumerate(by)
        )
        return bx, by, bw

    return standardize


def evaluate(session: Session, steps, data, metrics, p) -> dict[str, float]:
    """Loss and metrics of ``data = (xs, ys, ws, lengths)`` (validation after an epoch)."""
    xs, ys, ws, lengths = data
    comm, backend = session.comm, _backend()
    rule = input_mask_rule(session.model)
    for m in metrics:
        m.reset_state()
    batch = predict_batch_size(p, xs, None)
    lo, hi = dist.shard(int(xs[0].shape[0]), comm)
    n_steps = dist.max_over_ranks(math.ceil((hi - lo) / batch), comm)
    reader = MinibatchReader(
        [xs, ys, ws, (lengths,) if lengths is not None else None],
        minibatch_plan(lo, hi, batch, n_steps, False, None),
        batch,
        [x_dtype(xs, session.model), y_dtype(session.model), np.float32, np.int64],
        fallback_row=lo if hi > lo else 0,
    )
    masked = rule is not None or lengths is not None
    total = np.zeros(2)
    for (bx, by, bw, bl), rows_mask, _ in reader:
        # No collective inside evaluate's window loop: ranks need not agree on windows.
        tensors = batch_tensors(
            bx, by, bw, rows_mask, session.per_series, None, bl, rule, masked, p["seq_len"], None
        )
        with session.carry, backend.device_scope(session.device):
            loss_sum, count = steps.evaluate(*tensors, None)
        total += np.array([float(loss_sum), float(count)])
    total = dist.allreduce_sum(total, comm)
    out = {"loss": total[0] / max(total[1], 1.0)}
    out.update(dist.metric_results(metrics, comm))
    return out


# ----------------------------------------------------------------------- chunks of windows
#: ``windows_per_call="auto"``: the seconds of work one compiled call aims at. Long enough that
#: a call's fixed cost (about a millisecond on TensorFlow, less on JAX: argument conversion,
#: dispatch, one result transfer, the callbacks; benchmarks/bench_chunks.py) is lost in it
#: (~0.1 %), short enough that the progress bar, callbacks, ``stop_training`` and Ctrl-C act
#: every second or so.
CALL_SECONDS = 1.0
#: The rough cost of one window on a CPU, to turn ``CALL_SECONDS`` into windows:
#: ``WINDOW_SECONDS + work / WORK_PER_SECOND`` seconds for ``work`` = rows x window steps x
#: weights (the multiply-adds of the forward pass, roughly; training does ~3x that). Fitted to
#: the steady epochs of ``benchmarks/bench_cores.py`` on this project's 2-core CPU machine
#: (one device, XLA): 0.14-0.19 ms per window at the seed size (0.17 M), 1.5 ms at 13 M,
#: 3.0 ms at 32 M, 10 ms at the realistic size (106 M); ``benchmarks/bench_chunks.py`` prints
#: the measured time per window next to this estimate.
WINDOW_SECONDS = 1.5e-4
WORK_PER_SECOND = 1e10
#: Fewest windows per call ("auto"): a faster device (a GPU) runs windows faster than the CPU
#: estimate; at least this many keeps its calls' fixed cost small there too.
MIN_WINDOWS_PER_CALL = 64


def auto_windows(work: float) -> int:
    """``windows_per_call="auto"``: the windows of about :data:`CALL_SECONDS` of training."""
    per_window = WINDOW_SECONDS + work / WORK_PER_SECOND
    return max(MIN_WINDOWS_PER_CALL, int(CALL_SECONDS / per_window))


def windows_of(xs, seq_len) -> int:
    """Windows of a minibatch of the arrays ``xs`` (a short tail counts as one)."""
    t = int(xs[0].shape[1])
    return max(1, math.ceil(t / (t if seq_len is None else min(seq_len, t))))


def chunk_windows(p, session: Session, xs, comm) -> int | None:
    """Windows per compiled call (a multiple of ``sync_every``, the same on every rank), or
    ``None`` when each minibatch is one call (it has no more windows than that): then
    training runs exactly as without chunks."""
    setting = p.get("windows_per_call", "auto")
    if session.steps.chunk_start is None:
        return None
    if setting == "auto":
        rows = min(p["batch_size"], int(xs[0].shape[0]))
        t = int(xs[0].shape[1])
        window = t if p["seq_len"] is None else min(p["seq_len"], t)
        setting = auto_windows(rows * window * session.model.count_params())
    k = 1 if session.per_series else p["sync_every"]
    chunk = dist.max_over_ranks(math.ceil(setting / k) * k, comm)
    return None if windows_of(xs, p["seq_len"]) <= chunk else chunk


def calls_of(tensors, chunk, steps: StepFunctions, seq_len, comm, device, multiple=1):
    """The compiled calls of one minibatch: ``(arguments of steps.train, final)`` pairs.

    One call (``chunk`` None), or the chunks ``[0, chunk), [chunk, 2 chunk), ...`` of its
    windows (up to the runtime window count ``n_win`` of unequal lengths), evened out in
    whole multiples of ``multiple`` (``sync_every``). The caller puts
    each call's returned states and accumulators into the arguments (``args[-2]``, the last
    entry of ``args[-1]``) before the next one is drawn. Under MPI every rank makes the same
    number of calls (a rank whose series end sooner runs empty ones: the in-program
    Allreduce of the per-series update comes with the last)."""
    if chunk is None:
        yield list(tensors) + [None], True
        return
    backend = _backend()
    x, y, w, m, tm, n_win = tensors
    windows = windows_of(x, seq_len) if n_win is None else int(backend.to_numpy(n_win))
    n_calls = max(1, math.ceil(windows / chunk))
    if comm.size > 1:
        n_calls = dist.max_over_ranks(n_calls, comm)
    # Calls of even size (100 windows in calls of at most 93: 50 + 50, not 93 + 7), whole
    # multiples of ``sync_every`` as ``chunk`` is.
    chunk = min(chunk, math.ceil(math.ceil(windows / n_calls) / multiple) * multiple)
    with backend.device_scope(device):
        h0, acc = steps.chunk_start(x, tm)
    for k in range(n_calls):
        first = k * chunk
        final = k == n_calls - 1
        args = [
            x,
            y,
            w,
            m,
            tm,
            backend.to_tensor(np.int32(min(windows, first + chunk))),
            h0,
            (backend.to_tensor(np.int32(first)), backend.to_tensor(np.bool_(final)), acc),
        ]
        yield args, final
        h0, acc = args[-2], args[-1][2]


class uninterrupted:
    """Ctrl-C (SIGINT) inside the block is held until it ends, then raised: a compiled call
    and the assignment of its results (JAX donates the old variable buffers) either both
    happen or neither starts, so an interrupted fit keeps valid, up-to-date weights. Only in
    the main thread (elsewhere Python delivers no signals)."""

    def __enter__(self):
        self.pending, self.installed = False, False
        try:
            self.previous = signal.signal(signal.SIGINT, self._hold)
            self.installed = True
        except ValueError:  # not the main thread
            pass
        return self

    def _hold(self, signum, frame):
        self.pending = True

    def __exit__(self, exc_type, exc, tb):
        if not self.installed:
            return False
        # (None: a handler set from C, which Python cannot put back; its default then.)
        signal.signal(
            signal.SIGINT, signal.default_int_handler if self.previous is None else self.previous
        )
        if self.pending and exc_type is None:
            if callable(self.previous):
                self.previous(signal.SIGINT, None)
            elif self.previous != signal.SIG_IGN:
                raise KeyboardInterrupt
        return False


# ------------------------------------------------------------------------------- minibatches
def batch_tensors(
    bx, by, bw, rows_mask, per_series, rebatch_mask, bl, rule, masked, seq_len, agree_comm
):
    """A read minibatch as the step functions take it: ``(x, y, weights or None, mask,
    time mask or None, windows to run or None)``.

    With unequal lengths (``masked``) the time mask marks each row's real steps and the
    window count stops at the minibatch's longest series; ``agree_comm`` (under MPI, when the
    window loop holds an Allreduce per window) makes every rank run the same count."""
    to_tensor = _backend().to_tensor
    t = bx[0].shape[1]
    weights = None if bw is None else (to_tensor(_weights(bw[0], per_series, t)),)
    mask = _mask(rows_mask, t, per_series, rebatch_mask)
    tm = n_win = None
    if masked:
        tm = time_mask(bx, None if bl is None else bl[0], rule)
        if tm is None:
            tm = np.ones((len(rows_mask), t), np.float32)
        tm = tm * rows_mask[:, None]
        if not per_series:
            mask = mask * tm
        n_win = windows_needed(tm, seq_len)
        if agree_comm is not None and agree_comm.size > 1 and not per_series:
            n_win = dist.max_over_ranks(n_win, agree_comm)
        tm, n_win = to_tensor(tm), to_tensor(np.int32(n_win))
    return (
        tuple(to_tensor(a) for a in bx),
        tuple(to_tensor(a) for a in by),
        weights,
        (to_tensor(mask),),
        tm,
        n_win,
    )


def _weights(w, per_series, t):
    """Sample weights as the window loop wants them: (B,) per series, (B, T) per step."""
    w = np.asarray(w, np.float32)
    if not per_series and w.ndim == 1:
        w = np.repeat(w[:, None], t, axis=1)
    return w


def _mask(rows_mask, t, per_series, rebatch_mask):
    if per_series:
        return rows_mask
    mask = np.repeat(rows_mask[:, None], t, axis=1)
    if rebatch_mask is not None:
        mask = mask * rebatch_mask[0]
    return mask


def rebatch(xs, ys, ws, batch_size, seq_len):
    """Cut each series into contiguous time pieces so that N * pieces fills ``batch_size``."""
    n, t = int(xs[0].shape[0]), int(xs[0].shape[1])
    s = seq_len or t
    k = max(1, min(batch_size // n, math.ceil(t / s)))
    length = math.ceil(math.ceil(t / k) / s) * s
    k = math.ceil(t / length)

    def cut(a):
        a = np.asarray(a)
        pad = k * length - t
        if pad:
            a = np.concatenate([a, np.zeros((a.shape[0], pad) + a.shape[2:], a.dtype)], axis=1)
        return a.reshape((a.shape[0], k, length) + a.shape[2:]).reshape(
            (a.shape[0] * k, length) + a.shape[2:]
        )

    mask = cut(np.ones((n, t), np.float32))
    if ws is not None:
        w = np.asarray(ws[0], np.float32)
        w = np.repeat(w[:, None], t, axis=1) if w.ndim == 1 else w
        ws = (cut(w),)
    return tuple(cut(a) for a in xs), tuple(cut(a) for a in ys), ws, mask


# ------------------------------------------------------------------- callbacks and metrics
def callback_list(callbacks, model, p, n_steps, comm, epochs=None):
    callbacks = list(callbacks or [])
    if comm.rank != 0:
        callbacks = [c for c in callbacks if not isinstance(c, dist.ROOT_ONLY_CALLBACKS)]
    verbose = p["verbose"] if comm.rank == 0 else 0
    return keras.callbacks.CallbackList(
        callbacks,
        add_history=True,
        add_progbar=verbose != 0,
        model=model,
        verbose=verbose,
        epochs=p["epochs"] if epochs is None else epochs,
        steps=n_steps,
    )


def reseed(model, random_state: int, epoch: int) -> None:
    """Set every random-number generator of the model (Dropout, recurrent dropout, noise
    layers) from ``(random_state, epoch)`` alone, so that an epoch draws the same masks
    whether the run was resumed (``BackupAndRestore`` saves no generator state) or not."""
    for k, layer in enumerate(model._flatten_layers(include_self=True, recursive=True)):
        for j, generator in enumerate(getattr(layer, "_seed_generators", [])):
            seed = (random_state * 1_000_003 + epoch * 7_919 + k * 31 + j) % (2**31 - 1)
            generator.state.assign(np.array([seed, 0]).astype(generator.state.dtype))


def metric(spec, y_true_shape=None, y_pred_shape=None) -> keras.metrics.Metric:
    """A fresh Keras ``Metric`` from a name, a function or a ``Metric`` (copied).

    ``"accuracy"``/``"acc"`` resolve as ``compile`` resolves them for the output's shapes
    (binary, sparse categorical or categorical accuracy)."""
    if isinstance(spec, keras.metrics.Metric):
        return spec.__class__.from_config(spec.get_config())
    if isinstance(spec, str) and spec.lower() in ("accuracy", "acc") and y_pred_shape:
        from types import SimpleNamespace

        from keras.src.trainers.compile_utils import get_metric

        return get_metric(
            spec,
            SimpleNamespace(shape=tuple(y_true_shape)),
            SimpleNamespace(shape=tuple(y_pred_shape)),
        )
    fn = keras.metrics.get(spec)
    if isinstance(fn, keras.metrics.Metric):
        config = fn.get_config()
        if isinstance(spec, str):
            config["name"] = spec  # logged under the name the user wrote, as in model.fit
        return fn.__class__.from_config(config)
    name = spec if isinstance(spec, str) else getattr(fn, "__name__", "metric")
    return keras.metrics.MeanMetricWrapper(fn, name=name)


def metric_shapes(k, ys, out_shapes):
    """(y_true shape, y_pred shape) of the output metric ``k`` is computed on (as in the
    window loops: metric k on output k modulo the number of outputs)."""
    out = k % len(out_shapes)
    return tuple(ys[out].shape), (None,) + tuple(out_shapes[out])
