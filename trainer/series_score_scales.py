"""The series score rules (``--series-score``) and the per-channel error scales they learn.

``mean`` averages a window's element errors over channels and needs no scales. ``channel_max``
takes the largest channel error over that channel's scale, a quantile of its errors on the
calibration windows pooled over keys (`fit_channel_scales`); ``channel_max_per_key`` gives keys
with enough validation windows scales of their own (`fit_key_channel_scales`). The scales are
applied per window's key (`scales_for_keys`, as `SeriesModel` applies them) and stored in the
manifest (`manifest_scales`: ``channel_scales``, ``key_channel_scales``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

from anomaly_contract.errors import ConfigError
from anomaly_contract.key_thresholds import default_min_windows
from anomaly_contract.series import channel_errors

SeriesScore = Literal["mean", "channel_max", "channel_max_per_key"]
SERIES_SCORES: tuple[SeriesScore, ...] = ("mean", "channel_max", "channel_max_per_key")
# Measured (README, "Series quality", 2026-12-02, 3 seeds): channel_max_per_key is ahead on
# machines-ar (event recall at 2 % FPR 0.973 against 0.941), level on machines (0.976 against
# 0.981) and raises the normal-row FPR at p99 thresholds on both (6.1 % against 4.4 %, 3.4 %
# against 1.8 %); pooled channel_max is level with the mean on both. So the mean stays.
DEFAULT_SERIES_SCORE: SeriesScore = "mean"
# "channel_max" divides each channel's error by this quantile of its calibration errors (pooled
# over keys): the channels' tails then line up, so no one channel's noise sets the max.
CHANNEL_SCALE_QUANTILE = 0.99
# "channel_max_per_key": each key's own quantile of its validation windows' errors (not the
# calibration windows': the thresholds are fitted there, and scales fitted on the same windows
# would make them look tamer than new data). A lower quantile than the pooled one, because a
# key has ~100s of windows, not ~10,000s; keys with fewer than the windows that quantile needs
# (`default_min_windows`) and unseen keys use the pooled quantile of every key's windows.
KEY_CHANNEL_SCALE_QUANTILE = 0.90


def check_series_score(series_score: str) -> None:
    """Refuse a ``--series-score`` that is none of `SERIES_SCORES`."""
    if series_score not in SERIES_SCORES:
        raise ConfigError(
            f"--series-score must be mean, channel-max or channel-max-per-key, got {series_score!r}"
        )


def fit_channel_scales(
    per_channel: np.ndarray, quantile: float = CHANNEL_SCALE_QUANTILE
) -> np.ndarray:
    """One scale a channel: the ``quantile`` of its errors (n, C) on the calibration windows,
    floored so a channel rebuilt perfectly does not divide by zero."""
    scales = np.quantile(np.asarray(per_channel, dtype=np.float64), quantile, axis=0)
    floor = max(float(np.max(scales)) * 1e-6, 1e-12)
    return np.maximum(scales, floor)


def fit_key_channel_scales(
    per_channel: np.ndarray, keys: np.ndarray, quantile: float = KEY_CHANNEL_SCALE_QUANTILE
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The pooled scales and each key's own (`fit_channel_scales` of its windows ``(n, C)``),
    for keys with at least `default_min_windows` windows at that quantile."""
    pooled = fit_channel_scales(per_channel, quantile)
    needed = default_min_windows(quantile * 100.0)
    key_column = np.asarray(keys, dtype=object)
    own: dict[str, np.ndarray] = {}
    for key in np.unique(key_column):
        rows = key_column == key
        if int(rows.sum()) >= needed:
            own[str(key)] = np.maximum(
                fit_channel_scales(per_channel[rows], quantile), pooled * 1e-6
            )
    return pooled, own


def fit_series_score_scales(
    series_score: SeriesScore,
    element_errors: Callable[[np.ndarray], np.ndarray],
    validation: np.ndarray,
    calibration: np.ndarray,
    window_keys: np.ndarray,
    score_steps: int,
) -> tuple[np.ndarray | None, dict[str, np.ndarray] | None]:
    """The ``(channel_scales, key_channel_scales)`` ``series_score`` needs, both None for the mean.

    ``element_errors`` gives the selected windows' element errors (n, W, C) of the trained
    network; ``validation`` and ``calibration`` are window numbers, ``window_keys`` every
    window's key and ``score_steps`` the last rows a score reads.
    """
    if series_score == "channel_max":
        per_channel = channel_errors(element_errors(calibration), score_steps)
        return fit_channel_scales(per_channel), None
    if series_score == "channel_max_per_key":
        per_channel = channel_errors(element_errors(validation), score_steps)
        return fit_key_channel_scales(per_channel, window_keys[validation])
    return None, None


def scales_for_keys(
    channel_scales: np.ndarray | None,
    key_channel_scales: dict[str, np.ndarray] | None,
    keys: np.ndarray,
) -> np.ndarray | None:
    """The channel scales of windows of ``keys`` (n, C): a key's own, else the pooled ones;
    the pooled (C,) alone when no key has its own, None for the mean score."""
    if channel_scales is None or not key_channel_scales:
        return channel_scales
    return np.stack([key_channel_scales.get(str(k), channel_scales) for k in keys]).reshape(
        len(keys), -1
    )


def manifest_scales(
    channel_scales: np.ndarray | None, key_channel_scales: dict[str, np.ndarray] | None
) -> tuple[Literal["mean", "channel_max"], list[float] | None, dict[str, list[float]] | None]:
    """``SeriesParams``' ``score``, ``channel_scales`` and ``key_channel_scales`` as stored."""
    score: Literal["mean", "channel_max"] = "mean" if channel_scales is None else "channel_max"
    pooled = None if channel_scales is None else [float(v) for v in channel_scales]
    own = (
        None
        if key_channel_scales is None
        else {k: [float(v) for v in s] for k, s in sorted(key_channel_scales.items())}
    )
    return score, pooled, own


def series_score_note(
    score_steps: int,
    channel_scales: np.ndarray | None,
    key_channel_scales: dict[str, np.ndarray] | None,
) -> str | None:
    """The manifest's note on how the scales were learnt; None for the mean score."""
    if key_channel_scales is not None:
        return (
            "score: the largest channel error of the last "
            f"{score_steps} row(s), each channel's over its p{KEY_CHANNEL_SCALE_QUANTILE * 100:g} "
            f"on the key's validation windows ({len(key_channel_scales)} keys have their "
            "own key_channel_scales, the rest use the pooled channel_scales)"
        )
    if channel_scales is not None:
        return (
            "score: the largest channel error of the last "
            f"{score_steps} row(s), each channel's over its p{CHANNEL_SCALE_QUANTILE * 100:g} on "
            "the calibration windows (channel_scales)"
        )
    return None
