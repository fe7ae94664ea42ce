"""Keras layers shipped with keraseq.

What lives here: :class:`WinsorNorm`, a per-feature winsorising standardisation layer whose
statistics are learnt by a streaming :meth:`WinsorNorm.adapt` over in-memory or out-of-core
arrays (``numpy.ndarray``, ``numpy.memmap``, ``h5py.Dataset``) and saved with the model.

What does not live here: training and windowing (``trainer.py``, ``windows.py``), model
utilities (``utils.py``) and data helpers (``data.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
from keras import ops

__all__ = ["WinsorNorm"]

_BIG = float(np.finfo(np.float32).max)
# radix digit widths (bits) of the exact streaming selection, fewest passes first
_DIGIT_SCHEDULES: tuple[tuple[int, ...], ...] = (
    (16, 16),
    (11, 11, 10),
    (8, 8, 8, 8),
    (6, 6, 6, 6, 4, 4),
    (4,) * 8,
)
_SIGN = np.uint32(0x80000000)
_LOW31 = np.uint32(0x7FFFFFFF)


def _to_keys(x: np.ndarray) -> np.ndarray:
    """float32 → uint32 keys whose unsigned order is the float order (NaN excluded by caller)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return np.where(u >= _SIGN, ~u, u | _SIGN)


def _from_keys(k: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_to_keys`."""
    k = np.asarray(k, dtype=np.uint32)
    u = np.where(k >= _SIGN, k & _LOW31, ~k).astype(np.uint32)
    return u.view(np.float32)


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """NumPy's linear interpolation of ``np.quantile(method="linear")``, in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(invalid="ignore"):
        diff = b - a
        out = np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)
    return np.where(t == 0, a, out)


def _streaming_stats(
    chunks: Callable[[], Iterator[np.ndarray]],
    n_features: int,
    lower: float,
    upper: float,
    max_memory: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-feature ``(low, high, mean, std)`` from ``chunks()`` (a fresh iterator of float32
    ``(rows, F)`` blocks per pass): exact NaN-aware quantiles by radix selection on the float
    bit patterns (one pass per digit), then the clipped mean/std in float64 (one more pass)."""
    low, high, counts = _exact_quantiles(chunks, n_features, lower, upper, max_memory)
    mean, std = _clipped_moments(chunks, n_features, low, high)
    empty = counts == 0
    low = np.where(empty, 0.0, low).astype(np.float32)
    high = np.where(empty, 0.0, high).astype(np.float32)
    mean = np.where(empty | ~np.isfinite(mean), 0.0, mean).astype(np.float32)
    std = std.astype(np.float32)
    std = np.where(empty | ~np.isfinite(std) | (std == 0), 1.0, std).astype(np.float32)
    return low, high, mean, std


def _digit_schedule(n_features: int, max_memory: int) -> tuple[int, ...]:
    """The digit widths of the fewest passes whose four int64 histograms fit ``max_memory``."""
    for widths in _DIGIT_SCHEDULES:
        if 4 * n_features * (1 << max(widths)) * 8 <= max_memory:
            return widths
    return _DIGIT_SCHEDULES[-1]


def _exact_quantiles(
    chunks: Callable[[], Iterator[np.ndarray]],
    n_features: int,
    lower: float,
    upper: float,
    max_memory: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(low, high, counts)``: the ``lower``/``upper`` quantiles of each feature as
    ``np.nanquantile(method="linear")`` gives them, found exactly by narrowing down, digit by
    digit of the keys, the four order statistics they interpolate (``x_(k)``, ``x_(k+1)`` per
    quantile); ``counts``: the values that are not NaN, per feature."""
    prefix = np.zeros((4, n_features), dtype=np.uint64)  # key bits already fixed, per target
    done_bits = 0
    for level, bits in enumerate(_digit_schedule(n_features, max_memory)):
        shift = 32 - done_bits - bits
        if level == 0:
            hist = _first_digit_histogram(chunks, n_features, bits, shift)
            counts = hist.sum(axis=1)
            resid, frac = _order_statistics(counts, lower, upper)
            hist4 = np.broadcast_to(hist, (4,) + hist.shape)
        else:
            hist4 = _next_digit_histograms(chunks, prefix, n_features, bits, shift)
        resid, prefix = _narrowed(hist4, resid, prefix, bits)
        done_bits += bits
    order = _from_keys(prefix.astype(np.uint32))  # (4, F): x_(k), x_(k+1) for lower, upper
    low = _lerp(order[0], order[1], frac[0]).astype(np.float32)
    high = _lerp(order[2], order[3], frac[1]).astype(np.float32)
    return low, high, counts


def _first_digit_histogram(chunks, n_features: int, bits: int, shift: int) -> np.ndarray:
    """``(F, 2**bits)``: per feature, how many values have each leading digit of their key."""
    n_bins = 1 << bits
    feat = np.arange(n_features, dtype=np.int64)
    hist = np.zeros(n_features * n_bins, dtype=np.int64)
    for x in chunks():
        valid = ~np.isnan(x)
        digit = (_to_keys(x) >> np.uint32(shift)).astype(np.int64)
        idx = (feat * n_bins + digit)[valid]
        hist += np.bincount(idx, minlength=n_features * n_bins)
    return hist.reshape(n_features, n_bins)


def _order_statistics(counts: np.ndarray, lower: float, upper: float):
    """``(resid, frac)``: the ranks of ``x_(k)``, ``x_(k+1)`` of each quantile (4, F) and the
    interpolation weight between them (2, F)."""
    resid = np.zeros((4,) + counts.shape, dtype=np.int64)  # rank among the prefix matches
    frac = np.zeros((2,) + counts.shape)
    for i, q in enumerate((lower, upper)):
        h = np.maximum(counts - 1, 0) * q
        k = np.floor(h).astype(np.int64)
        frac[i] = h - k
        resid[2 * i] = k
        resid[2 * i + 1] = np.minimum(k + 1, np.maximum(counts - 1, 0))
    return resid, frac


def _next_digit_histograms(chunks, prefix, n_features: int, bits: int, shift: int) -> np.ndarray:
    """``(4, F, 2**bits)``: per target, the histogram of the next digit of the keys that
    match its prefix (targets with equal prefixes share one)."""
    n_bins = 1 << bits
    mask = np.uint32(n_bins - 1)
    feat = np.arange(n_features, dtype=np.int64)
    alias = list(range(4))
    for j in range(4):
        for i in range(j):
            if alias[i] == i and np.array_equal(prefix[i], prefix[j]):
                alias[j] = i
                break
    own = [j for j in range(4) if alias[j] == j]
    hist = np.zeros((4, n_features * n_bins), dtype=np.int64)
    for x in chunks():
        valid = ~np.isnan(x)
        keys = _to_keys(x)
        high = (keys >> np.uint32(shift + bits)).astype(np.uint64)
        digit = (keys >> np.uint32(shift) & mask).astype(np.int64)
        flat = feat * n_bins + digit
        for j in own:
            match = valid & (high == prefix[j])
            hist[j] += np.bincount(flat[match], minlength=n_features * n_bins)
    for j in range(4):
        if alias[j] != j:
            hist[j] = hist[alias[j]]
    return hist.reshape(4, n_features, n_bins)


def _narrowed(hist4: np.ndarray, resid: np.ndarray, prefix: np.ndarray, bits: int):
    """``(resid, prefix)`` one digit further: each target's digit is the bin holding its
    rank; its rank becomes the rank within that bin."""
    cum = np.cumsum(hist4, axis=-1)
    d = np.minimum((cum <= resid[..., None]).sum(axis=-1), hist4.shape[-1] - 1)
    below = (
        np.take_along_axis(cum, d[..., None], -1) - np.take_along_axis(hist4, d[..., None], -1)
    )[..., 0]
    return resid - below, (prefix << np.uint64(bits)) | d.astype(np.uint64)


def _clipped_moments(chunks, n_features: int, low: np.ndarray, high: np.ndarray):
    """The clipped mean and (population) std of each feature, NaN ignored, merged chunk by
    chunk (Chan et al.) in float64."""
    n = np.zeros(n_features)
    mean = np.zeros(n_features)
    m2 = np.zeros(n_features)
    lo64, hi64 = low.astype(np.float64), high.astype(np.float64)
    for x in chunks():
        valid = ~np.isnan(x)
        c = np.clip(x.astype(np.float64), lo64, hi64)
        c = np.where(valid, c, 0.0)
        nb = valid.sum(axis=0).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mb = np.where(nb > 0, c.sum(axis=0) / np.maximum(nb, 1), 0.0)
            m2b = (np.where(valid, c - mb, 0.0) ** 2).sum(axis=0)
            tot = n + nb
            delta = mb - mean
            mean = np.where(tot > 0, mean + delta * nb / np.maximum(tot, 1), 0.0)
            m2 = m2 + m2b + delta**2 * n * nb / np.maximum(tot, 1)
        n = tot
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.sqrt(m2 / np.maximum(n, 1))
    return mean, std


@keras.saving.register_keras_serializable(package="keraseq")
class WinsorNorm(keras.layers.Layer):
    """Per-feature winsorising standardisation: clip to quantiles, standardise, NaN → 0.

    For each feature (the last axis), ``x`` is clipped to ``[low, high]`` (the ``lower`` and
    ``upper`` quantiles of the data given to :meth:`adapt`, ignoring NaN), then standardised
    with the mean and standard deviation of the *clipped* data (NaN ignored); NaN inputs become
    ``0`` (the mean) after scaling. The statistics are the non-trainable weights ``low``,
    ``high``, ``mean`` and ``std``, so they are saved and loaded with the model. Before
    :meth:`adapt` the layer only maps NaN to 0. A feature with zero spread gets ``std = 1``
    (it maps to 0). ``call`` uses ``keras.ops`` only and runs under ``tf.function`` and XLA.

    Args:
        lower: the lower quantile level, ``0 <= lower < upper``.
        upper: the upper quantile level, ``lower < upper <= 1``.

    Example:
        >>> import keras, numpy as np
        >>> x = np.random.default_rng(0).normal(size=(50, 20, 3)).astype("float32")
        >>> x[0, 0, 0] = 1e6; x[1, 2, 1] = np.nan
        >>> norm = WinsorNorm().adapt(x)
        >>> y = np.asarray(norm(x))
        >>> bool(abs(y.mean()) < 1e-4 and np.isfinite(y).all() and y[1, 2, 1] == 0)
        True
    """

    def __init__(self, lower: float = 0.01, upper: float = 0.99, **kwargs: Any):
        super().__init__(**kwargs)
        lower, upper = float(lower), float(upper)
        if not (0.0 <= lower < upper <= 1.0):
            raise ValueError(
                f"WinsorNorm: need 0 <= lower < upper <= 1, got lower={lower}, upper={upper}."
            )
        self.lower = lower
        self.upper = upper
        self.supports_masking = True

    # ------------------------------------------------------------------------------- build
    def build(self, input_shape: tuple) -> None:
        n_features = input_shape[-1]
        if n_features is None:
            raise ValueError(
                f"WinsorNorm: the last (feature) axis must be known, input shape {input_shape}."
            )
        n_features = int(n_features)
        const = keras.initializers.Constant
        self.low = self.add_weight(
            name="low", shape=(n_features,), initializer=const(-_BIG), trainable=False
        )
        self.high = self.add_weight(
            name="high", shape=(n_features,), initializer=const(_BIG), trainable=False
        )
        self.mean = self.add_weight(
            name="mean", shape=(n_features,), initializer="zeros", trainable=False
        )
        self.std = self.add_weight(
            name="std", shape=(n_features,), initializer="ones", trainable=False
        )
        self.built = True

    # -------------------------------------------------------------------------------- call
    def call(self, inputs: Any) -> Any:
        x = ops.cast(inputs, self.compute_dtype)
        low = ops.cast(self.low, x.dtype)
        high = ops.cast(self.high, x.dtype)
        mean = ops.cast(self.mean, x.dtype)
        std = ops.cast(self.std, x.dtype)
        y = (ops.minimum(ops.maximum(x, low), high) - mean) / std
        return ops.where(ops.isnan(x), ops.zeros_like(y), y)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return tuple(input_shape)

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        return mask

    # ------------------------------------------------------------------------------- adapt
    def adapt(
        self, data: Any, batch_size: int | None = None, max_memory: int = 64 * 2**20
    ) -> WinsorNorm:
        """Learn ``low``, ``high``, ``mean``, ``std`` from ``data`` of shape ``(N, T, F)`` or
        ``(N, F)``, streamed in blocks of ``batch_size`` rows along axis 0.

        ``data`` may be a ``numpy.ndarray``, a ``numpy.memmap``, an ``h5py.Dataset`` or any
        array-like with ``.shape`` and slicing; only one block of rows is in memory at a time
        (``batch_size=None`` picks blocks of about 4 M values). NaN values are ignored.

        Algorithm and accuracy: the data are read as float32 (float64 data are rounded to
        float32 first). The quantiles are computed *exactly* by a streaming radix selection:
        float32 values are mapped to order-preserving 32-bit keys and each pass histograms
        one digit of the keys of every feature (2 passes of 16 bits when
        ``4 * F * 2**16 * 8 <= max_memory`` bytes, else 3 passes of 11/11/10 bits, etc.),
        narrowing down to the exact order statistics ``x_(k)`` and ``x_(k+1)`` that
        ``np.nanquantile(method="linear")`` interpolates; outliers and ties do not affect
        this. ``low``/``high`` thus equal ``np.nanquantile`` of the float32 data up to the final
        rounding to float32 (half an ulp). One more pass accumulates the clipped mean and
        variance in float64 (chunk-wise merged), so ``mean``/``std`` are the float64 values
        rounded to float32 (relative error about 1e-7). ``std`` is the population standard
        deviation (``ddof=0``, as ``np.nanstd``). Total: 3 passes over the data (4+ for very
        many features). Returns the layer.

        Example:
            >>> import numpy as np
            >>> x = np.arange(1000, dtype="float32").reshape(100, 10, 1)
            >>> norm = WinsorNorm(0.1, 0.9).adapt(x, batch_size=7)
            >>> float(norm.low.numpy()[0]), float(norm.high.numpy()[0])
            (99.9000015258789, 899.0999755859375)
        """
        if not (hasattr(data, "shape") and hasattr(data, "__getitem__")):
            data = np.asarray(data)
        shape = tuple(int(s) for s in data.shape)
        if len(shape) < 2:
            raise ValueError(
                f"WinsorNorm.adapt: `data` must have shape (N, T, F) or (N, F), got {shape}."
            )
        n_features = shape[-1]
        if not self.built:
            self.build((None,) * (len(shape) - 1) + (n_features,))
        elif int(self.low.shape[0]) != n_features:
            raise ValueError(
                f"WinsorNorm.adapt: the layer was built for {int(self.low.shape[0])} features, "
                f"`data` has {n_features} (shape {shape})."
            )
        row = max(1, int(np.prod(shape[1:])))
        if batch_size is None:
            batch_size = max(1, (1 << 22) // row)
        batch_size = int(batch_size)
        if batch_size < 1:
            raise ValueError(f"WinsorNorm.adapt: batch_size must be >= 1, got {batch_size}.")
        n_rows = shape[0]

        def chunks() -> Iterator[np.ndarray]:
            for start in range(0, n_rows, batch_size):
                block = np.asarray(data[start : start + batch_size], dtype=np.float32)
                yield block.reshape(-1, n_features)

        low, high, mean, std = _streaming_stats(
            chunks, n_features, self.lower, self.upper, int(max_memory)
        )
        self.low.assign(low)
        self.high.assign(high)
        self.mean.assign(mean)
        self.std.assign(std)
        return self

    # ------------------------------------------------------------------------------ config
    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"lower": self.lower, "upper": self.upper})
        return config

    @classmethod
    def from_config(cls, config: dict) -> WinsorNorm:
        return cls(**config)
