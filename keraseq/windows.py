"""Truncated backpropagation through time: the state carry between windows.

What lives here: :class:`StateCarry`, which makes every Keras ``RNN`` layer of a plain
(non-stateful, any batch size) model start a window from the state the previous window ended in
(and a causal ``Conv1D`` from its left context), written with ``keras.ops`` only, so the same
carry runs inside TensorFlow graphs and JAX traces.

What does not live here: the compiled window loops (one module per backend in
``keraseq/backend/``), the epoch loop (``trainer.py``), reading the data (``readers/``) and MPI
(``distributed.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops, tree
from keras.src import backend as keras_backend  # its rnn loop: Keras's RNN.inner_loop uses it

from . import fused as _fused

__all__ = ["StateCarry", "find_rnn_layers", "find_causal_convs", "carries_masked_output"]


def find_causal_convs(model: keras.Model) -> list:
    """Every ``Conv1D(padding="causal")`` inside ``model``: keraseq carries its left context."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.Conv1D)
        and layer.padding == "causal"
        and layer.data_format == "channels_last"
        and tuple(layer.strides) == (1,)
    ]


def find_rnn_layers(model: keras.Model) -> list:
    """Every ``keras.layers.RNN`` inside ``model`` (recursively, Bidirectional halves included)."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.RNN)
    ]


class StateCarry:
    """Thread recurrent states through successive calls of a Keras model.

    While active (``with carry:``), each RNN layer call that would start from its default
    (zero) initial state starts instead from ``carry.feed(states)``'s entry for that call, and the
    state it ends in is collected (``carry.collected()``), in call order. A layer given an
    explicit ``initial_state`` by the model's own code is left alone. Layers the user made
    ``stateful=True`` are run as non-stateful while active (their fixed batch size no longer
    matters) and restored on exit.

    It patches the layer *instances* (``get_initial_state`` and ``inner_loop``). With
    ``fused=True`` (the default) a standard ``LSTM``, ``GRU`` or ``SimpleRNN`` runs keraseq's
    fused loop (``fused.py``: the same maths, the input projection of a window in one matmul,
    the weight gradients as single matmuls); :attr:`paths` says, per layer, which loop it took.
    Any other layer, and every layer with ``fused=False``, runs Keras's own ``inner_loop``
    (cuDNN or XLA's loop for ``LSTM``/``GRU`` as Keras chooses).

    Example:
        >>> import keras, numpy as np
        >>> gru = keras.layers.GRU(3, return_sequences=True)
        >>> m = keras.Sequential([keras.Input((None, 2)), gru])
        >>> carry = StateCarry(m)
        >>> x = np.random.rand(4, 6, 2).astype("float32")
        >>> with carry:
        ...     carry.feed(None); y1 = m(x[:, :3]); s = carry.collected()
        ...     carry.feed(s); y2 = m(x[:, 3:])
        >>> bool(np.allclose(np.concatenate([y1, y2], 1), m(x), atol=1e-5))
        True
    """

    def __init__(self, model: keras.Model, fused: bool = True):
        self.layers = find_rnn_layers(model)
        self.use_fused = bool(fused)
        #: Whether the window programs compile with XLA (see :meth:`compiled_with`).
        self.xla = True
        #: Per RNN layer name, its loop: ``"fused"``, or ``"keras (<why>)"`` (set here, by
        #: :meth:`compiled_with`, and again as each layer is called).
        self.paths: dict[str, str] = {layer.name: self._path(layer) for layer in self.layers}
        self.convs = find_causal_convs(model)
        self._incoming: list | None = None
        self._outgoing: list = []
        self._depth = 0
        self._saved_stateful: list[bool] = []
        #: (batch, window) boolean mask of the real time steps of the current window, or None.
        self.window_mask = None
        #: (batch, window) booleans: the steps before which a row's recurrent states restart
        #: from their initial ones (``resets=``), or None.
        self.window_resets = None
        #: Per RNN call since the last :meth:`feed`: whether the model passed it a mask.
        self.model_masks: list[bool] = []
        #: Per call since the last :meth:`feed` (RNN or causal convolution): its layer's name,
        #: in the order of :meth:`collected`.
        self.call_layers: list[str] = []

    # -- protocol used by the step functions -------------------------------------------------
    def feed(self, states: Sequence[Sequence[Any]] | None) -> None:
        """Set the states the next model call starts from (``None``: default zero states)."""
        self._incoming = None if states is None else list(states)
        self._outgoing = []
        self.model_masks = []
        self.call_layers = []

    def collected(self) -> list[list[Any]]:
        """The final states of the RNN calls since the last :meth:`feed`, in call order."""
        return list(self._outgoing)

    # -- context manager: patch / unpatch ------------------------------------------------------
    def __enter__(self) -> StateCarry:
        self._depth += 1
        if self._depth == 1:
            self._saved_stateful = [layer.stateful for layer in self.layers]
            for layer in self.layers:
                self._patch(layer)
            for layer in self.convs:
                self._patch_conv(layer)
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0:
            for layer, stateful in zip(self.layers, self._saved_stateful):
                for name in ("get_initial_state", "inner_loop", "_keraseq_default"):
                    if name in layer.__dict__:
                        object.__delattr__(layer, name)
                object.__setattr__(layer, "stateful", stateful)
            for layer in self.convs:
                for name in ("call", "_compute_causal_padding"):
                    if name in layer.__dict__:
                        object.__delattr__(layer, name)

    def why_not_fused(self, layer) -> str | None:
        """Why ``layer`` keeps Keras's loop (``None``: it runs the fused one)."""
        return _fused.why_not(layer, self.xla) if self.use_fused else "fused_rnn=False"

    def compiled_with(self, xla: bool) -> None:
        """Tell the carry whether the programs compile with XLA (on TensorFlow without XLA
        every layer keeps Keras's loop)."""
        self.xla = bool(xla)
        self.paths = {layer.name: self._path(layer) for layer in self.layers}

    def _path(self, layer) -> str:
        reason = self.why_not_fused(layer)
        return "fused" if reason is None else f"keras ({reason})"

    def _run_loop(
        self,
        layer,
        keras_loop,
        sequences,
        initial_state,
        mask,
        training=False,
        reset_to=None,
        default=True,
    ):
        """One call's recurrent loop: keraseq's fused loop where
        :func:`keraseq.fused.why_not` allows it (and ``fused`` is on), else Keras's.

        With :attr:`window_resets` set, a row's states restart from ``reset_to`` (the states
        the call would start from without the carry: the layer's ``get_initial_state`` when
        ``default``, else the model's own) before each step marked there: in the fused loop
        for a ``default`` (zero) state, else in Keras's cell loop
        (:func:`_cell_loop_with_resets`)."""
        self.paths[layer.name] = path = self._path(layer)
        resets = self.window_resets
        if resets is not None and (path != "fused" or not default):
            return _cell_loop_with_resets(
                layer, sequences, initial_state, mask, training, resets, reset_to, default
            )
        if path != "fused":
            return keras_loop(
                sequences=sequences, initial_state=initial_state, mask=mask, training=training
            )
        return _fused.run(layer, sequences, initial_state, mask, training, resets)

    def _patch(self, layer) -> None:
        carry = self
        orig_init = layer.get_initial_state  # bound methods of the class
        keras_loop = layer.inner_loop

        def run_loop(**kwargs):
            return carry._run_loop(layer, keras_loop, **kwargs)

        def get_initial_state(batch_size):
            object.__setattr__(layer, "_keraseq_default", True)
            return orig_init(batch_size)

        def inner_loop(sequences, initial_state, mask, training=False):
            if not layer.__dict__.get("_keraseq_default", False):
                # The model's own initial state: a reset restarts from it.
                return run_loop(
                    sequences=sequences,
                    initial_state=initial_state,
                    mask=mask,
                    training=training,
                    reset_to=initial_state,
                    default=False,
                )
            object.__setattr__(layer, "_keraseq_default", False)
            carry.model_masks.append(mask is not None)  # did the model's own mask get here?
            if carry.window_mask is not None:  # lengths given to keraseq: mask the padding
                window_mask = ops.cast(carry.window_mask, "bool")
                mask = (
                    window_mask
                    if mask is None
                    else ops.logical_and(ops.cast(mask, "bool"), window_mask)
                )
            index = len(carry._outgoing)
            reset_to = initial_state  # the layer's default (zero) state
            if carry._incoming is not None:
                if index >= len(carry._incoming):
                    raise RuntimeError(
                        "keraseq: the model called its recurrent layers more often in this "
                        "window than in the first one; state carry needs the same call order "
                        "in every window."
                    )
                flat_default = tree.flatten(initial_state)
                flat = [ops.cast(s, d.dtype) for s, d in zip(carry._incoming[index], flat_default)]
                initial_state = tree.pack_sequence_as(initial_state, flat)
            last, outputs, states = run_loop(
                sequences=sequences,
                initial_state=initial_state,
                mask=mask,
                training=training,
                reset_to=reset_to,
            )
            if mask is not None and carries_masked_output(layer):
                last, outputs = _masked_output_from_state(layer, mask, initial_state, last, outputs)
            carry._outgoing.append(list(tree.flatten(states)))
            carry.call_layers.append(layer.name)
            return last, outputs, states

        object.__setattr__(layer, "stateful", False)
        object.__setattr__(layer, "get_initial_state", get_initial_state)
        object.__setattr__(layer, "inner_loop", inner_loop)

    def _patch_conv(self, layer) -> None:
        """A causal ``Conv1D`` starts a window from the last ``(kernel_size - 1) *
        dilation_rate`` inputs of the previous one (zeros at a sequence's start, as Keras's
        causal padding), like a streaming convolution: that context is one more state."""
        carry = self
        orig_call = layer.call  # the bound method of the class
        left = layer.dilation_rate[0] * (layer.kernel_size[0] - 1)

        def call(inputs, *args, **kwargs):
            index = len(carry._outgoing)
            if carry._incoming is not None and index < len(carry._incoming):
                context = ops.cast(carry._incoming[index][0], inputs.dtype)
            else:
                context = ops.zeros_like(inputs[:, :1]) * ops.zeros((1, left, 1), inputs.dtype)
            full = ops.concatenate([context, inputs], axis=1)
            carry._outgoing.append([full[:, ops.shape(full)[1] - left :]])
            carry.call_layers.append(layer.name)
            return orig_call(full, *args, **kwargs)

        object.__setattr__(layer, "_compute_causal_padding", lambda: [[0, 0], [0, 0], [0, 0]])
        object.__setattr__(layer, "call", call)


def _cell_loop_with_resets(
    layer, sequences, initial_state, mask, training, resets, reset_to, default=False
):
    """Keras's loop of ``layer``'s cell (``backend.rnn``, as ``RNN.inner_loop`` runs it) with
    per-row resets: before a step where ``resets`` (B, S) is true, that row's states are
    ``reset_to``'s. The mask is applied here too (a masked step keeps the states it starts
    from, so a reset there holds; it outputs zeros with ``zero_output_for_mask``, else the
    first state, as Keras's JAX loop does), so that a reset on a masked step is not undone.
    Returns what ``inner_loop`` returns: ``(last_output, outputs, final states)``.

    Few operations per step (a TensorFlow graph without XLA runs each one by one): a reset to
    the ``default`` state of Keras's cells (zeros) is one product per state, by a ``(B, 1)``
    factor computed before the loop."""
    cell = layer.cell
    kwargs = {}
    if isinstance(cell, keras.layers.Layer) and cell._call_has_training_arg:
        kwargs["training"] = training
    if not tree.is_nested(initial_state):
        initial_state, reset_to = [initial_state], [reset_to]
    flat0 = tree.flatten(initial_state)
    targets = [ops.cast(t, s.dtype) for t, s in zip(tree.flatten(reset_to), flat0)]
    to_zeros = default and _zero_initial_state(cell)
    zero_output = bool(layer.zero_output_for_mask)
    dtype = flat0[0].dtype
    kept = ops.expand_dims(ops.cast(ops.logical_not(ops.cast(resets, "bool")), dtype), -1)
    inputs = [sequences, kept]
    if mask is not None:
        inputs.append(ops.expand_dims(ops.cast(mask, dtype), -1))

    def rows(factor, like):  # a (B, 1) factor against a (B, ...) tensor
        rank = len(like.shape)
        return factor if rank == 2 else ops.reshape(factor, (-1,) + (1,) * (rank - 1))

    def step(step_inputs, states):
        x_t, kept_t = step_inputs[0], step_inputs[1]
        flat = tree.flatten(states)
        if to_zeros:
            flat = [s * rows(kept_t, s) for s in flat]
        else:
            restart = kept_t < 0.5
            flat = [ops.where(rows(restart, s), t, s) for s, t in zip(flat, targets)]
        states = tree.pack_sequence_as(states, flat)
        output, new_states = cell(x_t, states, **kwargs)
        if not tree.is_nested(new_states):
            new_states = [new_states]
        if mask is None:
            return output, new_states
        real = step_inputs[2] > 0.5
        new_flat = [ops.where(rows(real, s), n, s) for s, n in zip(flat, tree.flatten(new_states))]
        first = states[-1][0] if tree.is_nested(states[0]) else states[0]
        held = ops.zeros_like(output) if zero_output else ops.cast(first, output.dtype)
        output = ops.where(rows(real, output), output, held)
        return output, tree.pack_sequence_as(new_states, new_flat)

    return keras_backend.rnn(
        step,
        inputs,
        initial_state,
        go_backwards=layer.go_backwards,
        mask=None,
        unroll=layer.unroll,
        input_length=sequences.shape[1],
        return_all_outputs=layer.return_sequences,
    )


def _zero_initial_state(cell) -> bool:
    """Whether ``cell``'s ``get_initial_state`` is zeros: Keras's own cells, and a stack of
    them (a subclass may start elsewhere)."""
    if type(cell) is keras.layers.StackedRNNCells:
        return all(_zero_initial_state(c) for c in cell.cells)
    return type(cell) in _OUTPUT_IS_STATE


#: Cells whose output at a step is their first state (``h``), so the output a masked step
#: repeats can be carried across windows with the state.
_OUTPUT_IS_STATE = (keras.layers.SimpleRNNCell, keras.layers.GRUCell, keras.layers.LSTMCell)


def carries_masked_output(layer) -> bool:
    """True when keraseq can continue ``layer``'s masked outputs across windows exactly.

    Over a whole sequence, a masked Keras RNN repeats at a masked step the output of the last
    real step (``zero_output_for_mask=False``), and its ``return_sequences=False`` output is
    that of the last real step; a window that starts (or is all) padding would instead start
    from zeros. For the built-in cells that output is the first state, which keraseq carries.
    """
    return (
        isinstance(getattr(layer, "cell", None), _OUTPUT_IS_STATE)
        and not layer.zero_output_for_mask
        and not layer.go_backwards
    )


def _masked_output_from_state(layer, mask, initial_state, last, outputs):
    """Outputs of masked steps before a window's first real step: the carried ``h``
    (what the same steps give over the whole sequence), not Keras's zeros."""
    h_in = tree.flatten(initial_state)[0]
    mask = ops.cast(mask, "bool")
    any_real = ops.any(mask, axis=1, keepdims=True)  # (B, 1)
    last = ops.where(any_real, last, ops.cast(h_in, last.dtype))
    if layer.return_sequences:
        seen = ops.cumsum(ops.cast(mask, "int32"), axis=1) > 0  # (B, S)
        outputs = ops.where(seen[:, :, None], outputs, ops.cast(h_in, outputs.dtype)[:, None])
    return last, outputs
