"""Keras layers' inference maths in NumPy (float64, channels-last), one function per layer kind.

Each op takes the batch ``h`` (n, ...), the layer's weights (float64) and its settings (the
JSON-safe subset of the Keras config that `anomaly_contract.layer_engine` keeps), and returns
the next batch. They follow Keras 3's definitions: "same" padding puts the odd pixel after
(TensorFlow's rule), max pooling never pools padding, LSTM gates are ordered i, f, c, o.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from anomaly_contract.engines import ACTIVATIONS

Op = Callable[[np.ndarray, list[np.ndarray], dict[str, Any]], np.ndarray]


def _activate(h: np.ndarray, name: str) -> np.ndarray:
    fn = ACTIVATIONS[name]
    return h if fn is None else fn(h)


def _same_padding(size: int, window: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's "same": the odd one goes after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def dense(h: np.ndarray, weights: list[np.ndarray], cfg: dict[str, Any]) -> np.ndarray:
    """Dense on the last axis (also what TimeDistributed(Dense) computes)."""
    kernel, bias = weights
    return _activate(h @ kernel + bias, cfg["activation"])


def conv(h: np.ndarray, weights: list[np.ndarray], cfg: dict[str, Any]) -> np.ndarray:
    """Conv1D or Conv2D with stride 1: a sum of one matrix product per kernel offset (no
    im2col copy, so memory stays at one output batch)."""
    kernel, bias = weights
    spatial = kernel.ndim - 2
    sizes = h.shape[1 : 1 + spatial]
    ksizes = kernel.shape[:spatial]
    if cfg["padding"] == "same":
        pads = [(0, 0), *(_same_padding(s, k, 1) for s, k in zip(sizes, ksizes, strict=True))]
        h = np.pad(h, [*pads, (0, 0)])
        out_sizes = sizes
    else:
        out_sizes = tuple(s - k + 1 for s, k in zip(sizes, ksizes, strict=True))
    out = np.zeros((h.shape[0], *out_sizes, kernel.shape[-1]), dtype=np.float64)
    for offset in np.ndindex(*ksizes):
        window = tuple(slice(o, o + s) for o, s in zip(offset, out_sizes, strict=True))
        out += h[(slice(None), *window)] @ kernel[offset]
    out += bias
    return _activate(out, cfg["activation"])


def max_pool(h: np.ndarray, weights: list[np.ndarray], cfg: dict[str, Any]) -> np.ndarray:
    """MaxPooling1D/2D; "same" pads with -inf so a border window takes its real values only."""
    pool, strides = cfg["pool_size"], cfg["strides"]
    axes = tuple(range(1, 1 + len(pool)))
    if cfg["padding"] == "same":
        pads = [
            _same_padding(h.shape[a], p, s) for a, p, s in zip(axes, pool, strides, strict=True)
        ]
        h = np.pad(h, [(0, 0), *pads, (0, 0)], constant_values=-np.inf)
    windows = sliding_window_view(h, tuple(pool), axis=axes)
    step = (slice(None), *(slice(None, None, s) for s in strides))
    return windows[step].max(axis=tuple(range(-len(pool), 0)))


def up_sample(h: np.ndarray, weights: list[np.ndarray], cfg: dict[str, Any]) -> np.ndarray:
    """UpSampling1D/2D, nearest neighbour: each step or pixel repeated ``size`` times."""
    for axis, size in enumerate(cfg["size"], start=1):
        h = np.repeat(h, size, axis=axis)
    return h


def crop(h: np.ndarray, weights: list[np.ndarray], cfg: dict[str, Any]) -> np.ndarray:
    """Cropping1D/2D: ``cropping`` is one (before, after) pair per spatial axis."""
    window = tuple(slice(b, h.shape[a] - e) for a, (b, e) in enumerate(cfg["cropping"], start=1))
    return h[(slice(None), *window)]


def flatten(h: np.ndarray, weights: list[np.ndarray], cfg: dict[str, Any]) -> np.ndarray:
    return h.reshape(h.shape[0], -1)


def reshape(h: np.ndarray, weights: list[np.ndarray], cfg: dict[str, Any]) -> np.ndarray:
    return h.reshape(h.shape[0], *cfg["target_shape"])


def repeat_vector(h: np.ndarray, weights: list[np.ndarray], cfg: dict[str, Any]) -> np.ndarray:
    return np.repeat(h[:, None, :], cfg["n"], axis=1)


def lstm(h: np.ndarray, weights: list[np.ndarray], cfg: dict[str, Any]) -> np.ndarray:
    """LSTM from zero state: ``c = f*c + i*g``, ``h = o*act(c)``; the input projection of
    every step is one matrix product, the recurrence one per step."""
    kernel, recurrent, bias = weights
    units = recurrent.shape[0]
    projected = h @ kernel + bias  # (n, T, 4 units)
    state = np.zeros((h.shape[0], units), dtype=np.float64)
    cell = np.zeros_like(state)
    outputs = []
    for t in range(projected.shape[1]):
        z = projected[:, t] + state @ recurrent
        gate_in = _activate(z[:, :units], cfg["recurrent_activation"])
        gate_forget = _activate(z[:, units : 2 * units], cfg["recurrent_activation"])
        candidate = _activate(z[:, 2 * units : 3 * units], cfg["activation"])
        gate_out = _activate(z[:, 3 * units :], cfg["recurrent_activation"])
        cell = gate_forget * cell + gate_in * candidate
        state = gate_out * _activate(cell.copy(), cfg["activation"])
        outputs.append(state)
    return np.stack(outputs, axis=1) if cfg["return_sequences"] else state


OPS: dict[str, Op] = {
    "dense": dense,
    "conv": conv,
    "max_pool": max_pool,
    "up_sample": up_sample,
    "crop": crop,
    "flatten": flatten,
    "reshape": reshape,
    "repeat_vector": repeat_vector,
    "lstm": lstm,
}
