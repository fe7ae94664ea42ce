"""A fitted model's streaming step, exported for serving: a TensorFlow SavedModel with the
recurrent state explicit.

What lives here: :func:`export` (what :meth:`keraseq.Estimator.export` runs), the rule for
which models can stream (:func:`check_streamable`) and the names the exported functions give
to inputs, outputs and states (:class:`StreamSignature`). The SavedModel is written by
Keras's own ``keras.export.ExportArchive`` (on JAX converted by ``jax2tf``, as Keras's
``model.export`` does it); the states are threaded by the same :class:`~keraseq.windows.StateCarry`
that ``predict`` uses, so a served stream continues exactly as ``predict(..., reset=False)``.
What does not: prediction in-process (``inference.py``), saving the estimator itself
(``persistence.py``).

The exported object (``tf.saved_model.load(path)``, no Keras or keraseq needed) has:

- ``initial_states(batch_size)``: a dict ``{state name: zeros (batch_size, ...)}``, the
  states every stream starts from (what ``predict`` starts from);
- ``step(x, states)`` -> ``(y, states)``: ``x`` a window of any length >= 1 of the model's
  inputs (a tensor, or a tuple / dict of them as the model takes them), ``y`` the model's
  outputs for those steps (per series: after the last step);
- ``serve(inputs)``, also the ``serving_default`` signature (TF Serving): the same step with
  one flat dict in and one out (input names and state names in; output names and state
  names out).

Example:
    >>> import keras, numpy as np, tempfile, tensorflow as tf
    >>> from keraseq import Estimator
    >>> m = keras.Sequential([keras.Input((None, 2)), keras.layers.GRU(4, return_sequences=True),
    ...                       keras.layers.Dense(1)])
    >>> x = np.random.rand(3, 8, 2).astype("float32")
    >>> est = Estimator(m, epochs=1, batch_size=3, seq_len=4, verbose=0).fit(x, x[..., :1])
    >>> path = tempfile.mkdtemp() + "/stream"
    >>> est.export(path)
    >>> served = tf.saved_model.load(path)
    >>> states = served.initial_states(3)
    >>> y1, states = served.step(x[:, :5], states)
    >>> y2, states = served.step(x[:, 5:], states)
    >>> bool(np.allclose(np.concatenate([y1, y2], 1), est.predict(x), atol=1e-5))
    True
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import tree

from .backend import name as _backend_name
from .inputs import as_model_input
from .model_facts import facts_of
from .session import Session, output_names
from .windows import StateCarry

__all__ = ["export", "check_streamable", "StreamSignature"]


def check_streamable(model) -> None:
    """Raise a ``ValueError`` naming the first layer of ``model`` whose outputs, run one
    piece of a series at a time, would not continue the whole series: a layer that mixes
    the steps of one call (attention, pooling over time, a non-causal or strided
    ``Conv1D``, ``Flatten``), one that runs backwards in time, or a recurrent layer with a
    custom cell behind a mask (keraseq carries masked outputs only for Keras's cells)."""
    facts = facts_of(model)
    if facts.specs is None:
        raise ValueError(
            "export needs a model with symbolic inputs (a Functional or Sequential model "
            "built from keras.Input) so that the step's input signature is known; this "
            f"{type(model).__name__} has none"
        )
    for layer in facts.window_bound:
        raise ValueError(
            f"cannot export a streaming step: layer {layer.name!r} ({type(layer).__name__}) "
            f"mixes the time steps of one call and carries nothing to the next, so a "
            f"stream served in pieces would not continue the series (only recurrent layers, "
            f"causal Conv1D and layers that act on each step alone can stream)"
        )
    for layer in facts.backward:
        raise ValueError(
            f"cannot export a streaming step: layer {layer.name!r} "
            f"({type(layer).__name__}) runs backwards in time, which a stream cannot do"
        )
    for layer in facts.not_carried if facts.masks else []:
        raise ValueError(
            f"cannot export a streaming step: layer {layer.name!r} has a "
            f"{type(layer.cell).__name__} cell behind a mask; keraseq carries the output "
            f"of masked steps across calls only for SimpleRNN/GRU/LSTM cells"
        )


def _key(name: str, taken: set) -> str:
    """``name`` as a signature key (letters, digits, ``_``), unique among ``taken``."""
    key = re.sub(r"[^A-Za-z0-9_]", "_", name) or "t"
    if not key[0].isalpha():
        key = "t" + key
    base, k = key, 1
    while key in taken:
        k += 1
        key = f"{base}_{k}"
    taken.add(key)
    return key


@dataclass(frozen=True)
class StreamSignature:
    """What the exported functions take and return, read off one call of the model."""

    input_keys: list  #: per model input (in its order), its key in the flat signature
    input_shapes: list  #: per model input, its shape per step (without batch and time)
    input_dtypes: list  #: per model input, its dtype
    output_keys: list  #: per (flattened) model output, its key (``"y"`` if one)
    output_struct: Any  #: the structure of the model's outputs (``tree`` packing)
    state_keys: list  #: per recurrent call, per state, its key (``"<layer>_state<j>"``)
    state_shapes: list  #: the same, each state's shape without the batch
    state_dtypes: list  #: the same, each state's dtype

    @classmethod
    def of(cls, model, carry: StateCarry, n_outputs: int) -> StreamSignature:
        specs = facts_of(model).specs
        if specs is None:
            raise ValueError("export needs a model with symbolic inputs (keras.Input)")
        taken: set = {"y"}
        struct = getattr(model, "_inputs_struct", None)
        if len(specs) == 1:
            names = ["x"]
        elif isinstance(struct, dict):  # the model's own keys, in its input order
            names = tree.flatten({k: k for k in struct})
        else:
            names = [getattr(s, "name", None) or f"input_{k}" for k, s in enumerate(specs)]
        input_keys = [_key(n, taken) for n in names]
        shapes = [tuple(int(d) for d in s.shape[2:]) for s in specs]
        dtypes = [str(s.dtype) for s in specs]
        x0 = [np.zeros((1, 1) + shape, dtype) for shape, dtype in zip(shapes, dtypes)]
        with carry:
            carry.feed(None)
            y0 = model(as_model_input(model, x0), training=False)
            states, layers = carry.collected(), list(carry.call_layers)
        outs = ["y"] if n_outputs == 1 else [_key(n, taken) for n in output_names(model, n_outputs)]
        state_keys = [
            [_key(f"{name}_state{j}", taken) for j in range(len(c))]
            for name, c in zip(layers, states)
        ]
        return cls(
            input_keys=input_keys,
            input_shapes=shapes,
            input_dtypes=dtypes,
            output_keys=outs,
            output_struct=y0,
            state_keys=state_keys,
            state_shapes=[[tuple(int(d) for d in s.shape[1:]) for s in c] for c in states],
            state_dtypes=[
                [str(keras.backend.standardize_dtype(s.dtype)) for s in c] for c in states
            ],
        )


def export(session: Session, path: str | os.PathLike, verbose: bool = False) -> None:
    """Write ``session``'s model as a SavedModel of its streaming step at ``path`` (see the
    module docstring); only rank 0 writes under MPI. Checks first
    (:func:`check_streamable`)."""
    import tensorflow as tf

    model = session.model
    check_streamable(model)
    path = os.fspath(path)
    if session.comm.rank != 0:
        return
    carry = StateCarry(model, fused=False)  # Keras's own cell loops: portable graph ops
    sig = StreamSignature.of(model, carry, session.n_outputs)
    flat_states = [
        (key, shape, dtype)
        for keys, shapes, dtypes in zip(sig.state_keys, sig.state_shapes, sig.state_dtypes)
        for key, shape, dtype in zip(keys, shapes, dtypes)
    ]

    def serve(inputs):
        xs = [inputs[k] for k in sig.input_keys]
        states = [[inputs[k] for k in keys] for keys in sig.state_keys]
        with carry:
            carry.feed(states)
            y = model(as_model_input(model, xs), training=False)
            new = carry.collected()
        out = dict(zip(sig.output_keys, tree.flatten(y)))
        for keys, call in zip(sig.state_keys, new):
            out.update(zip(keys, call))
        return out

    x_specs = [
        tf.TensorSpec((None, None) + shape, dtype, name=key)
        for key, shape, dtype in zip(sig.input_keys, sig.input_shapes, sig.input_dtypes)
    ]
    state_specs = {
        key: tf.TensorSpec((None,) + shape, dtype, name=key) for key, shape, dtype in flat_states
    }
    flat_spec = dict(zip(sig.input_keys, x_specs), **state_specs)
    kwargs = {}
    if _backend_name() == "jax":

        def poly(shape, timed):
            return (
                "("
                + ", ".join(["batch"] + (["time"] if timed else []) + [str(d) for d in shape])
                + ")"
            )

        shapes = {k: poly(s, True) for k, s in zip(sig.input_keys, sig.input_shapes)}
        shapes.update({key: poly(shape, False) for key, shape, _ in flat_states})
        kwargs["jax2tf_kwargs"] = {"polymorphic_shapes": [shapes]}

    archive = keras.export.ExportArchive()
    archive.track(model)
    served = archive.add_endpoint("serve", serve, input_signature=[flat_spec], **kwargs)

    @tf.function(input_signature=[tf.TensorSpec((), tf.int32, name="batch_size")])
    def initial_states(batch_size):
        return {
            key: tf.zeros(tf.concat([[batch_size], tf.constant(shape, tf.int32)], 0), dtype)
            for key, shape, dtype in flat_states
        }

    initial_states(tf.constant(1))
    archive.add_endpoint("initial_states", initial_states)

    @tf.function(input_signature=[as_model_input(model, x_specs), state_specs])
    def step(x, states):
        xs = tree.flatten(x)  # a dict's values in the model's input order, as Keras flattens it
        out = served(dict(zip(sig.input_keys, xs), **states))
        y = tree.pack_sequence_as(sig.output_struct, [out[k] for k in sig.output_keys])
        return y, {key: out[key] for key, _, _ in flat_states}

    trackable = getattr(archive, "_tf_trackable", None)
    if trackable is None:  # Keras's ExportArchive keeps its endpoints on this object
        raise RuntimeError("keraseq.export: this Keras version's ExportArchive is not supported")
    trackable.step = step  # a plain function of the SavedModel, not a signature (nested output)
    archive.write_out(path, verbose=verbose)
