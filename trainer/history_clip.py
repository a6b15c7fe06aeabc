"""The history clip of a windowed fit: the per-channel bounds, in key standard deviations, to
which a window's rows before the scored ones are clipped before the network sees them
(`anomaly_contract.series.clip_history`; why, in the README's "The history clip").

``auto`` learns them from the training rows (normalised with their keys' statistics): each
channel's 0.1 % and 99.9 % quantiles, widened by half a standard deviation. A history within
what training showed is then shown as it is, and only values beyond it (spikes, a stuck
sensor's far value) are held at the bound. A number Z clips every channel to +-Z; ``None``
clips nothing, as before the clip existed.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from anomaly_contract.errors import ConfigError

HistoryClipOption = Literal["auto"] | float | None

# Chosen on both generated families, six draws each (README, "The history clip"): the bounds
# of what training showed, so a family with heavy normal excursions (machines-ar, whose learnt
# bounds are ~ +-4) keeps them, and one without (machines, ~ +-2.7) clips early.
QUANTILE = 0.999
MARGIN = 0.5
DEFAULT_HISTORY_CLIP: HistoryClipOption = "auto"


def history_clip_option(value: str | None) -> HistoryClipOption:
    """``--history-clip`` as `fit_series_model` takes it: auto (also when absent), off, or Z > 0."""
    if value is None or value == "auto":
        return "auto"
    if value in ("off", "0"):
        return None
    try:
        z = float(value)
    except ValueError:
        z = math.nan
    if not (math.isfinite(z) and z > 0):
        raise ConfigError(f"--history-clip must be auto, off or a positive number, got {value!r}")
    return z


def history_bounds(
    option: HistoryClipOption, train_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """The bounds (low, high), each (C,), for ``option``; ``train_rows`` (rows, C) are the
    training rows normalised per key (what ``auto`` learns from)."""
    if option is None:
        return None
    channels = train_rows.shape[1]
    if option != "auto":
        z = float(option)
        if not (math.isfinite(z) and z > 0):
            raise ConfigError(f"the history clip must be a positive number of deviations, got {z}")
        return np.full(channels, -z), np.full(channels, z)
    low = np.quantile(train_rows, 1.0 - QUANTILE, axis=0) - MARGIN
    high = np.quantile(train_rows, QUANTILE, axis=0) + MARGIN
    # a channel that never left one side of its mean still gets a bound on the other
    return np.minimum(low, -MARGIN), np.maximum(high, MARGIN)
