"""The windows' self-check: does a layer of this model mix time steps behind keraseq's back?

keraseq carries what crosses a window border for the layers it knows (recurrent states, the
left context of causal convolutions) and warns about the ones it knows it cannot carry
(attention, pooling over time, non-causal convolutions: ``model_facts.window_bound_layers``). Any
other layer that mixes time steps, a ``Lambda(cumsum)`` or a custom layer that subtracts the
series mean, would train and predict silently differently with windows. No list of classes
can know them, so keraseq measures it: before training (and before a windowed ``predict`` of
a model not yet checked) it runs each layer of the model's graph on a few series, whole and
cut into its first windows, and compares (a layer that differs from itself from one call to
the next, as Monte Carlo dropout does, is not judged).

How, and what it costs: the graph runs on at most :data:`ROWS` series and their first
:data:`WINDOWS` whole windows. Each layer is checked in isolation: it gets the same inputs
whole and cut into windows (stacked on the batch axis, each window left-padded to the whole
length, so that one call serves both), and its outputs must agree (a layer with a time axis:
the windows' own steps side by side; without: the last window's). The recurrent layers, causal
convolutions, the layers already warned about and any nested model holding one of them are not
run: their outputs are deterministic stand-ins of the right shape, so a recurrent model's check
costs one call of each of its other layers (on JAX one small compiled program, as eager JAX
compiles every operation for its shapes). A model without a graph (subclassed) is not
checked.

What lives here: :func:`first_mixing_layer` and :func:`window_check` (the warning or error).
What does not: the rules for known classes (``checks.check_windows``), the carry
(``windows.py``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import keras
import numpy as np
from keras import tree

from .model_facts import window_bound_layers
from .readers import read_rows
from .windows import find_causal_convs

__all__ = ["Mixing", "first_mixing_layer", "window_check"]

#: Series and windows the check looks at.
ROWS, WINDOWS = 4, 3
#: Agreement expected of a window-invariant layer, relative to its outputs' scale, by dtype.
_TOLERANCE = {"float64": 1e-9, "float32": 1e-4}
_LOW_PRECISION = 2e-2


class Mixing(NamedTuple):
    """A layer whose outputs on windows differ from its outputs on the whole series."""

    layer: str  #: its name
    kind: str  #: its class
    difference: float  #: the largest absolute difference
    scale: float  #: the largest absolute output on the whole series
    steps: int  #: the steps compared (the first windows)
    rows: int  #: the series compared


def _graph(model):
    """The functional graph that runs ``model`` (a Sequential's inner Functional), or None."""
    graph = getattr(model, "_functional", None) if isinstance(model, keras.Sequential) else model
    return graph if hasattr(graph, "_nodes_by_depth") and getattr(graph, "inputs", None) else None


def _opaque_layers(model) -> set[int]:
    """Layers not run by the check (ids): recurrent, carried or already warned about, and
    nested models holding one."""
    layers = list(model._flatten_layers(include_self=False, recursive=True))
    # (the layers of a graph are checked; a nested model holding an opaque layer is opaque)
    skipped = {
        id(layer)
        for layer in layers
        if isinstance(layer, (keras.layers.RNN, keras.layers.Bidirectional))
    }
    skipped |= {id(layer) for layer in find_causal_convs(model) + window_bound_layers(model)}
    for layer in layers:
        if any(
            id(sub) in skipped for sub in layer._flatten_layers(include_self=False, recursive=True)
        ):
            skipped.add(id(layer))
    return skipped


def _is_time(symbolic) -> bool:
    """A symbolic tensor with a time axis: rank >= 2 and an open axis 1 (the model's
    ``Input((None, ...))``)."""
    shape = getattr(symbolic, "shape", None)
    return shape is not None and len(shape) >= 2 and shape[1] is None


def _stand_in(symbolic, batch: int, steps: int) -> Any:
    """A deterministic stand-in for the output of a layer the check does not run: varied
    values (a sine of the position; no random numbers, so it traces into one program)."""
    shape = list(symbolic.shape)
    if shape and shape[0] is None:
        shape[0] = batch
    if len(shape) >= 2 and shape[1] is None:
        shape[1] = steps
    if any(d is None for d in shape):
        return None
    dtype = keras.backend.standardize_dtype(symbolic.dtype)
    if np.dtype(dtype).kind in "iub":
        return keras.ops.zeros(shape, dtype)
    size = int(np.prod(shape))
    wave = keras.ops.sin(keras.ops.arange(size, dtype="float32") * 0.7371 + 0.3)
    return keras.ops.cast(keras.ops.reshape(wave, shape), dtype)


def _with_windows(sym, value, n: int, windows: int):
    """``value`` (the whole series, ``(n, S, ...)``) followed on the batch axis by its
    ``windows`` windows, each left-padded with zeros to ``S`` steps: ``(n + n * windows, S,
    ...)``; row ``n + r * windows + w`` holds window ``w`` of series ``r`` in its last
    ``S / windows`` steps. A tensor without a time axis is repeated per window instead. One
    batch, one shape: one call of the layer for both (a per-step layer cannot see the
    padding; a layer that mixes steps sees the window alone, as keraseq's windows do)."""
    if sym is None or not hasattr(sym, "shape") or not hasattr(value, "shape"):
        return value
    shape = tuple(value.shape)
    if _is_time(sym):
        length = shape[1] // windows
        cut = keras.ops.reshape(value, (n * windows, length) + shape[2:])
        pad = keras.ops.zeros((n * windows, shape[1] - length) + shape[2:], value.dtype)
        return keras.ops.concatenate([value, keras.ops.concatenate([pad, cut], 1)], 0)
    if len(shape) >= 1:
        return keras.ops.concatenate([value, keras.ops.repeat(value, windows, axis=0)], 0)
    return value


def _split(sym, out, n: int, windows: int):
    """A layer's output on :func:`_with_windows`' batch as ``(whole, windowed)``, both shaped
    like the whole series' output: the windows' own steps side by side (with a time axis),
    or the last window's output (without)."""
    whole, rest = out[:n], out[n:]
    rest = np.reshape(rest, (n, windows) + tuple(rest.shape[1:]))
    if _is_time(sym):
        length = rest.shape[2] // windows
        rest = rest[:, :, rest.shape[2] - length :]
        return whole, np.reshape(rest, (n, windows * length) + tuple(rest.shape[3:]))
    return whole, rest[:, -1]


def _tolerance(dtype) -> float:
    return _TOLERANCE.get(keras.backend.standardize_dtype(dtype), _LOW_PRECISION)


def _differ(a: np.ndarray, b: np.ndarray) -> tuple[float, float] | None:
    """``(difference, scale)`` when ``a`` (windows) is not ``b`` (whole) within the dtype's
    tolerance, else ``None``."""
    if a.shape != b.shape:
        return None
    if np.dtype(b.dtype).kind != "f":
        return None if np.array_equal(a, b) else (math.inf, 1.0)
    diff = float(np.max(np.abs(a.astype(np.float64) - b), initial=0.0))
    scale = float(np.max(np.abs(b), initial=0.0))
    return None if diff <= _tolerance(b.dtype) * max(1.0, scale) else (diff, scale)


def _run(graph, opaque, xs, n: int, steps: int, windows: int) -> list:
    """Every checked layer's outputs on the combined batch (:func:`_with_windows`), in the
    graph's order: ``[(node, [outputs])]``. Each layer gets the whole series' values of its
    inputs (so each is judged alone); the layers in ``opaque`` give stand-ins."""
    values: dict[int, Any] = dict(zip((id(s) for s in graph.inputs), xs))
    done = []
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            layer = node.operation
            if not layer or node.is_input:
                continue
            if any(id(t) not in values for t in node.input_tensors):
                continue  # downstream of a stand-in that could not be made
            if id(layer) in opaque:
                for sym in node.outputs:
                    made = _stand_in(sym, n, steps)
                    if made is not None:
                        values[id(sym)] = made
                continue
            args, kwargs = node.arguments.fill_in(values)
            kwargs = {k: v for k, v in kwargs.items() if k != "training"}
            if not any(_is_time(t) for t in node.input_tensors):
                outs = tree.flatten(layer(*args, **kwargs))  # no time axis: nothing to cut
                values.update((id(sym), out) for sym, out in zip(node.outputs, outs))
                continue
            sym_kwargs = {k: v for k, v in node.arguments.kwargs.items() if k != "training"}
            both = lambda s, v: _with_windows(s, v, n, windows)
            outs = tree.flatten(
                layer(
                    *tree.map_structure(both, node.arguments.args, args),
                    **tree.map_structure(both, sym_kwargs, kwargs),
                )
            )
            values.update((id(sym), out[:n]) for sym, out in zip(node.outputs, outs))
            done.append((node, outs))
    return done


def _compiled_run(graph, opaque, xs, n, steps, windows) -> list:
    """:func:`_run` as one XLA program on JAX (eager, each operation compiles for its own
    shapes: ~10x the time), eagerly elsewhere; eagerly too where the program cannot be traced
    (a layer that draws random numbers and updates its seed)."""
    if keras.backend.backend() == "jax":
        import jax

        nodes: list = []

        def traced(inputs):
            with keras.StatelessScope():  # a seed update stays in the trace, not the model
                found = _run(graph, opaque, inputs, n, steps, windows)
            nodes[:] = [node for node, _ in found]
            return [outs for _, outs in found]

        try:
            outs = jax.jit(traced)(list(xs))
            return list(zip(nodes, outs))
        except Exception:  # a layer that cannot be traced: run it eagerly
            pass
    with keras.StatelessScope():  # nothing of the user's model changes (seed states)
        return _run(graph, opaque, xs, n, steps, windows)


def first_mixing_layer(model, xs, seq_len: int) -> Mixing | None:
    """The first layer (in the graph's order) of ``model`` whose outputs on the series ``xs``
    (a tuple of ``(n, S, ...)`` arrays, ``S`` a multiple of ``seq_len``, at least two windows)
    cut into windows of ``seq_len`` differ from its outputs on the whole ``S`` steps; ``None``
    when every layer agrees or the model has no graph.

    Example:
        >>> import keras, numpy as np
        >>> m = keras.Sequential([keras.Input((None, 2)),
        ...     keras.layers.Lambda(lambda t: keras.ops.cumsum(t, axis=1), name="running_sum"),
        ...     keras.layers.LSTM(3, return_sequences=True)])
        >>> first_mixing_layer(m, (np.ones((2, 9, 2), "float32"),), 3).layer
        'running_sum'
    """
    graph = _graph(model)
    if graph is None:
        return None
    n, steps = int(xs[0].shape[0]), int(xs[0].shape[1])
    windows = steps // seq_len
    if windows < 2 or steps % seq_len:
        raise ValueError(f"the check needs whole windows: {steps} steps, seq_len={seq_len}")
    xs = [keras.ops.convert_to_tensor(a) for a in xs]
    found = _compiled_run(graph, _opaque_layers(model), xs, n, steps, windows)
    for node, outs in found:
        for sym, out in zip(node.outputs, outs):
            whole, windowed = _split(sym, keras.ops.convert_to_numpy(out), n, windows)
            differs = _differ(windowed, whole)
            if differs is not None and _repeats(node, xs, n, steps, windows, graph, model):
                layer = node.operation
                return Mixing(layer.name, type(layer).__name__, *differs, steps, n)
    return None


def _repeats(node, xs, n, steps, windows, graph, model) -> bool:
    """Whether ``node``'s layer gives the same outputs when the check runs again (eagerly): a
    layer that draws random numbers at every call (Monte Carlo dropout, noise) differs from
    itself, which says nothing about windows."""
    with keras.StatelessScope():  # one scope: the second run draws after the first
        runs = [
            dict(_run(graph, _opaque_layers(model), xs, n, steps, windows)).get(node)
            for _ in range(2)
        ]
    if runs[0] is None or runs[1] is None:
        return False
    for a, b in zip(*runs):
        a, b = keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        if _differ(a, b) is not None:
            return False
    return True


def sample(xs, lo: int, hi: int, seq_len: int, lengths=None) -> tuple | None:
    """The series and steps the check looks at: up to :data:`ROWS` of this rank's rows
    ``[lo, hi)`` (with ``lengths``: the longest of them), their first :data:`WINDOWS`
    whole windows (at most); ``None`` when fewer than two whole windows would be compared
    (a series shorter than ``2 * seq_len``)."""
    t = int(xs[0].shape[1])
    rows = np.arange(lo, min(hi, lo + 64))
    if rows.size == 0:
        return None
    steps = min(t, WINDOWS * seq_len)
    if lengths is not None:
        own = np.asarray(lengths)[rows]
        order = np.argsort(-own, kind="stable")[:ROWS]
        rows = np.sort(rows[order])
        steps = min(steps, int(own[order].min()))
    else:
        rows = rows[:ROWS]
    steps -= steps % seq_len  # whole windows only
    if steps < 2 * seq_len:
        return None
    return tuple(np.asarray(read_rows(a, rows))[:, :steps] for a in xs)


def window_check(model, xs, seq_len, mode: str, rows, lengths=None, comm=None) -> bool:
    """Warn (``mode="warn"``) or raise ``ValueError`` (``"raise"``, on every rank under MPI)
    when a layer of ``model`` mixes time steps across the windows of ``seq_len``, checked on
    this rank's ``rows = (lo, hi)`` of ``xs``; nothing for ``"off"``, no windows
    (``seq_len`` None or >= T) or a model without a graph. Returns whether windows were
    compared, under MPI on every rank (then a later ``predict`` or warm fit need not check
    again; the ranks agree, so none of them waits in the check's collective alone)."""
    from . import distributed as dist

    t = int(xs[0].shape[1])
    if mode == "off" or seq_len is None or seq_len >= t:
        return False
    series = sample(xs, rows[0], rows[1], seq_len, lengths)
    found = None
    if series is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras's input-structure notes
            found = first_mixing_layer(model, series, seq_len)
    message = None
    if found is not None:
        message = (
            f"layer {found.layer!r} ({found.kind}) mixes time steps: on the first "
            f"{found.steps} steps of {found.rows} series its outputs cut into windows of "
            f"seq_len={seq_len} differ from its outputs on those steps whole by up to "
            f"{found.difference:.3g} (outputs up to {found.scale:.3g}), and keraseq does "
            f"not carry what it computes across windows, so training and predictions with "
            f"windows differ from the whole-series model. Use seq_len=None (or >= T={t}), "
            f"or make the layer per-step; window_check='off' silences this"
        )

    def strict():
        if message is not None:
            raise ValueError(message)

    if mode == "raise":
        if comm is not None:
            dist.agree(comm, strict)
        else:
            strict()
    elif message is not None:
        warnings.warn(message, UserWarning, stacklevel=4)
    compared = series is not None
    if comm is not None and comm.size > 1:  # every rank's answer: they skip the check together
        compared = not dist.max_over_ranks(int(not compared), comm)
    return compared
