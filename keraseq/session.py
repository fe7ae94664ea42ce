"""A model ready to run window by window (:class:`Session`), and the two ways one is built.

What lives here: :class:`Layout` (what a fit reads off the model and the data, which the
compiled steps are built for and the fitted record keeps), :func:`assemble` (the one way a
session is put together from a layout), :func:`prepare` (one fit's model, optimizer and
compiled steps: the model's inputs, windows and outputs checked against the data, its state
shapes probed, the compiled steps of an earlier fit of the same architecture reused
(``reuse.py``) or built, the weights broadcast from rank 0 under MPI), :func:`rebuild` (the
session of a loaded or unpickled model, from the layout its fit left), :func:`build_steps`
(the backend's compiled step functions for an objective), :func:`probe`, :func:`device_for`
and the Keras metrics of a fit (:func:`metric`). What does not: the epoch loop
(``trainer.py``), the window loops (``backend/``), the data checks themselves (``checks.py``),
the fitted record and its serial form (``fitted.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from . import distributed as dist
from . import reuse
from .backend import StepFunctions
from .backend import current as _backend
from .checks import FitData, check_model_inputs, check_windows, step_features
from .inputs import as_model_input
from .lengths import note_probed_masks
from .losses import build_objective
from .model_facts import ModelFacts, facts_of
from .readers import read_rows
from .selfcheck import window_check
from .windows import StateCarry

if TYPE_CHECKING:
    from .hyperparams import Settings

__all__ = [
    "Session",
    "Builders",
    "Layout",
    "assemble",
    "prepare",
    "rebuild",
    "build_steps",
    "probe",
    "device_for",
    "output_names",
    "metric",
    "metric_shapes",
]


@dataclass(frozen=True)
class Layout:
    """What a fit reads off the model and the data: what its compiled steps are built for,
    and what the fitted record keeps (``fitted.py``) to build them again after loading."""

    n_features: int  #: ``n_features_in_``: the width of a step of ``x`` (1 for token ids)
    n_outputs: int  #: the number of targets
    out_shapes: list  #: per output, its shape per window without the batch
    per_series: bool  #: targets per series (N, F_out), not per step
    state_specs: list  #: per RNN call, the per-series (shape, dtype) of its states
    seq_len: int | None  #: the windows of the compiled steps (``None``: whole series)


@dataclass(frozen=True)
class Builders:
    """How a fit gets what it does not continue: ``new_model()`` and ``new_optimizer()``
    build fresh ones (not called on a warm fit); ``check_outputs(out_shapes, ys, window,
    per_series)`` checks the model's outputs against the targets (a subclass of the face adds
    its own checks)."""

    new_model: Callable[[], keras.Model]
    new_optimizer: Callable[[], Any]
    check_outputs: Callable


@dataclass
class Session:
    """A model ready to run window by window: what ``predict``, ``score`` and a warm ``fit``
    need. Put together by :func:`assemble`, from :func:`prepare` (a fit) or :func:`rebuild`
    (after loading/unpickling)."""

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
    #: the windows' self-check ran on this model (``selfcheck.py``): by fit, or by a predict
    windows_checked: bool = False

    @property
    def facts(self) -> ModelFacts:
        """What the model says about its data and windows, read once per model."""
        return facts_of(self.model)

    @property
    def layout(self) -> Layout:
        """The layout this session was assembled from."""
        return Layout(
            n_features=self.n_features,
            n_outputs=self.n_outputs,
            out_shapes=list(self.out_shapes),
            per_series=self.per_series,
            state_specs=self.state_specs,
            seq_len=self.seq_len,
        )


def assemble(
    layout: Layout,
    model: keras.Model,
    optimizer: Any,
    carry: StateCarry,
    steps: StepFunctions,
    comm: Any,
    device: str | None,
    *,
    train_metrics: list | None = None,
    windows_checked: bool = False,
) -> Session:
    """The one way a :class:`Session` is put together, by :func:`prepare` and :func:`rebuild`:
    a model, its optimizer, state carry and compiled steps, for ``layout``."""
    return Session(
        model=model,
        optimizer=optimizer,
        carry=carry,
        steps=steps,
        comm=comm,
        device=device,
        state_specs=layout.state_specs,
        per_series=layout.per_series,
        seq_len=layout.seq_len,
        out_shapes=list(layout.out_shapes),
        n_features=layout.n_features,
        n_outputs=layout.n_outputs,
        train_metrics=train_metrics if train_metrics is not None else [],
        windows_checked=windows_checked,
    )


def device_for(setting, comm) -> str | None:
    """The device to run on: ``"auto"`` = the backend's choice for this rank."""
    return _backend().default_device(comm) if setting == "auto" else setting


def output_names(model, n_outputs) -> list[str]:
    names = list(getattr(model, "output_names", None) or [])
    return names if len(names) == n_outputs else [f"output_{k}" for k in range(n_outputs)]


def build_steps(
    layout: Layout,
    model,
    opt,
    carry,
    *,
    p: Settings,
    comm,
    loss,
    device,
    jit,
    metrics: list | None = None,
    val_metrics: list | None = None,
):
    """Compiled step functions for training ``model`` with ``opt`` on windows of
    ``layout.seq_len`` (and, when ``val_metrics`` is given, for validation); ``p``: the
    resolved hyper-parameters (``loss_weights``, ``sync_every``)."""
    per_series = layout.per_series
    objective = build_objective(
        model, loss, output_names(model, len(layout.out_shapes)), p.loss_weights, per_series
    )
    backend = _backend()
    allreduce = backend.graph_allreduce(comm, device) if comm.size > 1 else None
    if allreduce is not None:
        path, advice = allreduce.path(jit)
        dist.announce_allreduce(path, advice, comm)
    steps = backend.build_step_functions(
        model,
        carry,
        layout.state_specs,
        objective,
        opt,
        metrics if metrics is not None else [],
        layout.seq_len,
        per_series,
        jit,
        allreduce,
        sync_every=p.sync_every,
    )
    val_steps = None
    if val_metrics is not None:
        val_steps = backend.build_step_functions(
            model,
            carry,
            layout.state_specs,
            objective,
            None,
            val_metrics,
            layout.seq_len,
            per_series,
            jit,
        )
    return steps, val_steps


def rebuild(layout: Layout, model: keras.Model, loss, p: Settings, distributed: Any) -> Session:
    """The session of a fitted model after loading or unpickling, from the ``layout`` its fit
    left: the optimizer the model was compiled with, a new state carry, the communicator of
    ``distributed`` and the compiled steps. ``p``: the resolved hyper-parameters."""
    comm = dist.get_comm(distributed)
    device = device_for(p.device, comm)
    carry = StateCarry(model, fused=p.fused_rnn)
    jit = _backend().jit_for(model, p.jit_compile)
    carry.compiled_with(jit)
    steps, _ = build_steps(
        layout, model, model.optimizer, carry, p=p, comm=comm, loss=loss, device=device, jit=jit
    )
    return assemble(layout, model, model.optimizer, carry, steps, comm, device)


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
            out, states = _backend().shapes_of(model, call, as_model_input(model, window))
        except Exception as exc:
            raise ValueError(
                f"the model cannot be called on a window of `x` with shape "
                f"{[w.shape for w in window]}: {exc}"
            ) from exc
        # Keras drops a mask at a layer without mask support: then no recurrent layer
        # sees it (lengths.mask_reaches_rnn reads this for a model without a layer graph).
        note_probed_masks(model, any(carry.model_masks) or not carry.model_masks)
    specs = [[(tuple(int(d) for d in st.shape[1:]), st.dtype) for st in call] for call in states]
    outs = keras.tree.flatten(out)
    return specs, [tuple(o.shape[1:]) for o in outs], s


def prepare(
    p: Settings,
    loss,
    data: FitData,
    comm,
    model: keras.Model,
    build: Builders,
    *,
    warm: Session | None = None,
    previous: Session | None = None,
) -> tuple[Session, Any, list]:
    """Model, optimizer, probe, metrics and compiled steps (every rank identical); returns
    the session, the validation steps and metrics.

    The compiled steps of a finished fit of the same architecture and settings are reused
    (``reuse.py``): the new model's initial weights and a fresh optimizer state are loaded
    into the objects they were compiled for."""
    if p.random_state is not None and warm is not None:  # (a new model: seeded by fit)
        keras.utils.set_random_seed(int(p.random_state))
    device = device_for(p.device, comm)
    backend = _backend()
    with backend.device_scope(device):
        # A warm fit (warm_start, partial_fit) continues the model that an earlier fit (or a
        # predict) checked with these windows: not again (on JAX the check compiles a program,
        # ~0.14 s of each partial_fit call of a small model).
        done = warm is not None and warm.windows_checked and warm.seq_len == p.seq_len
        carry, layout, window, checked = _checked_model(
            p, model, data, comm, build.check_outputs, windows_checked=done
        )
        opt = warm.optimizer if warm is not None else build.new_optimizer()
        # Multiply-adds per window, roughly: what decides XLA or not ("auto") on TensorFlow.
        work = min(p.batch_size, int(data.xs[0].shape[0])) * window * model.count_params()
        jit = backend.jit_for(
            model,
            p.jit_compile,
            work=work,
            distributed=comm.size > 1,
            fused=p.fused_rnn,
        )
        carry.compiled_with(jit)
        key = reuse.key_of(model, opt, _reuse_settings(p, loss, data, comm, device, jit, layout))
        entry = _reusable(key, model, opt, comm, warm, previous)
        if entry is not None:
            model, opt, carry = entry.model, entry.optimizer, entry.carry
            metrics, val_metrics = entry.metrics, entry.val_metrics
        else:
            opt, metrics, val_metrics = _compiled(
                p, model, opt, data.ys, layout.out_shapes, comm, warm
            )
        if comm.size > 1:
            dist.broadcast_variables(model.variables + opt.variables, comm)
    if entry is None:
        # Building checks the loss against the outputs: before any fitted state is returned.
        steps, val_steps = build_steps(
            layout,
            model,
            opt,
            carry,
            p=p,
            comm=comm,
            loss=loss,
            device=device,
            jit=jit,
            metrics=metrics,
            val_metrics=val_metrics if data.val is not None else None,
        )
        entry = reuse.Entry(key, model, opt, carry, steps, metrics, val_steps, val_metrics)
        reuse.register(key, entry)
    session = assemble(
        layout,
        model,
        opt,
        carry,
        entry.steps,
        comm,
        device,
        train_metrics=metrics,
        windows_checked=checked,
    )
    reuse.own(entry, session)
    return session, entry.val_steps, val_metrics


def _reusable(key, model, opt, comm, warm, previous) -> reuse.Entry | None:
    """The compiled steps of a finished fit to train with instead of compiling (``None``:
    none); for a new fit, with this fit's initial weights and optimizer state loaded."""
    entry = reuse.take(key, previous=warm or previous, model=model if warm is not None else None)
    if entry is not None and warm is None and not _load_initial(entry, model, opt, comm):
        return None
    return entry


def _checked_model(
    p: Settings, model, data: FitData, comm, check_outputs, windows_checked: bool = False
):
    """``(carry, layout, window, checked)``: the model's inputs and windows checked against
    the data (``checked``: the windows' self-check compared windows; not run again when
    ``windows_checked``), its states and outputs probed on one series of this rank (the
    :class:`Layout`), and its outputs checked against the targets."""
    xs = data.xs
    check_model_inputs(model, xs)
    check_windows(
        model,
        p.seq_len,
        int(xs[0].shape[1]),
        data.lengths is not None or (data.val is not None and data.val[3] is not None),
    )
    own, end = dist.shard(int(xs[0].shape[0]), comm)
    carry = StateCarry(model, fused=p.fused_rnn)
    state_specs, out_shapes, window = probe(
        model, carry, xs, p.seq_len, row=min(own, int(xs[0].shape[0]) - 1)
    )
    check_outputs(out_shapes, data.ys, window, per_series=data.per_series)
    # (after the probe, which warms the backend's eager calls that the check also uses)
    checked = windows_checked or window_check(
        model, xs, p.seq_len, p.window_check, (own, end), data.lengths, comm
    )
    layout = Layout(
        n_features=step_features(xs[0]),
        n_outputs=len(data.ys),
        out_shapes=out_shapes,
        per_series=data.per_series,
        state_specs=state_specs,
        seq_len=p.seq_len,
    )
    return carry, layout, window, checked


def _reuse_settings(p, loss, data, comm, device, jit, layout: Layout) -> dict:
    """What the compiled steps depend on beyond the model and optimizer (the reuse key)."""
    return {
        "loss": reuse.describe(loss),
        "metrics": reuse.describe(p.metrics),
        "loss_weights": reuse.describe(p.loss_weights),
        "seq_len": p.seq_len,
        "per_series": data.per_series,
        "jit": jit,
        "sync_every": p.sync_every,
        "fused_rnn": p.fused_rnn,
        "ranks": [comm.rank, comm.size],
        "device": device,
        "validation": data.val is not None,
        "state_specs": repr(layout.state_specs),
        "out_shapes": layout.out_shapes,
    }


def _compiled(p: Settings, model, opt, ys, out_shapes, comm, warm):
    """``(optimizer, metrics, validation metrics)`` of a model that reuses no compiled
    steps: the optimizer wrapped for MPI, compiled into a new model (its loss scaling under
    mixed precision, as ``model.fit``), built; fresh metrics for training and validation."""
    if comm.size > 1:
        opt = dist.DistributedOptimizer(opt, comm=comm)
    if warm is None:
        model.compile(optimizer=opt)
        if isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer):
            opt = model.optimizer  # mixed_float16: compile's loss scaling, as model.fit
    opt.build(model.trainable_variables)
    metrics, val_metrics = (
        [metric(m, *metric_shapes(k, ys, out_shapes)) for k, m in enumerate(p.metrics or [])]
        for _ in range(2)
    )
    return opt, metrics, val_metrics


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
