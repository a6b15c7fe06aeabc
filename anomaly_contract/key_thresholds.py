"""Per-key thresholds: each series key is judged against its own calibration errors.

With one pooled percentile, the few keys whose series are hard to rebuild set the threshold and
the anomalies of easy keys fall under it (measured from outside: a windowed autoencoder's event
recall went from 0.16 pooled to 0.80 with a threshold per key). `fit_key_thresholds` takes the
``percentile`` of each key's own calibration window errors; a key with fewer than
``min_windows`` calibration windows (its percentile would be little more than its maximum), and
a key never seen in calibration, falls back to the pooled percentile of all keys' errors. The
result is JSON-able and stored with the model. NumPy only: the worker imports this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anomaly_contract.key_codes import KeyCodes, key_codes

THRESHOLDS_FORMAT = "key-percentile/1"
MIN_WINDOWS_FLOOR = 20


def default_min_windows(percentile: float) -> int:
    """Calibration windows a key needs for its own threshold: enough that about two of its
    errors lie above the percentile (``2 / (1 - p/100)``), and never fewer than 20."""
    return max(MIN_WINDOWS_FLOOR, math.ceil(2.0 / (1.0 - percentile / 100.0) - 1e-9))


@dataclass(frozen=True)
class KeyThresholds:
    """The pooled threshold and the per-key ones; ``windows`` counts each key's calibration
    windows (pooled keys included, so a reader sees why a key fell back)."""

    percentile: float
    min_windows: int
    pooled: float
    per_key: dict[str, float] = field(default_factory=dict)
    windows: dict[str, int] = field(default_factory=dict)

    def threshold(self, key: str) -> float:
        """The threshold for ``key``: its own, or the pooled one."""
        return self.per_key.get(key, self.pooled)

    def thresholds_for(
        self, keys: Sequence[str] | np.ndarray, coded: KeyCodes | None = None
    ) -> np.ndarray:
        """One threshold per entry of ``keys`` (vectorised over distinct keys; ``coded``:
        ``key_codes(keys)``, when the caller has it already)."""
        names, codes = coded if coded is not None else key_codes(keys)
        table = np.array([self.threshold(k) for k in names], dtype=np.float64)
        return table[codes] if names else np.zeros(0)

    def relative_scores(self, errors: np.ndarray, keys: Sequence[str] | np.ndarray) -> np.ndarray:
        """Errors divided by their key's threshold: one scale for all keys, anomalous above 1."""
        # A key whose calibration errors were all zero would divide by zero: floor it.
        return np.asarray(errors, dtype=np.float64) / np.maximum(self.thresholds_for(keys), 1e-12)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": THRESHOLDS_FORMAT,
            "percentile": self.percentile,
            "min_windows": self.min_windows,
            "pooled": self.pooled,
            "per_key": dict(sorted(self.per_key.items())),
            "windows": dict(sorted(self.windows.items())),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyThresholds:
        """The thresholds `to_json` described; ValueError for another format."""
        if data.get("format") != THRESHOLDS_FORMAT:
            raise ValueError(
                f"thresholds format {data.get('format')!r}, expected {THRESHOLDS_FORMAT}"
            )
        return cls(
            percentile=float(data["percentile"]),
            min_windows=int(data["min_windows"]),
            pooled=float(data["pooled"]),
            per_key={str(k): float(v) for k, v in data["per_key"].items()},
            windows={str(k): int(v) for k, v in data["windows"].items()},
        )


def fit_key_thresholds(
    errors: np.ndarray,
    keys: Sequence[str] | np.ndarray,
    percentile: float,
    min_windows: int | None = None,
) -> KeyThresholds:
    """Per-key ``percentile`` of calibration window ``errors`` (one key per error), pooled for
    keys with fewer than ``min_windows`` windows (default: `default_min_windows`)."""
    values = np.asarray(errors, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("no calibration errors")
    if not 0.0 < percentile < 100.0:
        raise ValueError(f"percentile must be in (0, 100), got {percentile}")
    needed = default_min_windows(percentile) if min_windows is None else int(min_windows)
    names, codes = np.unique(np.asarray(keys, dtype=object), return_inverse=True)
    codes = codes.reshape(-1)
    if codes.shape[0] != values.shape[0]:
        raise ValueError("keys must hold one value per error")
    counts = np.bincount(codes, minlength=len(names))
    by_key = np.argsort(codes, kind="stable")
    bounds = np.concatenate(([0], np.cumsum(counts)))
    per_key: dict[str, float] = {}
    for i, name in enumerate(names):
        if counts[i] >= needed:
            own = values[by_key[bounds[i] : bounds[i + 1]]]
            per_key[str(name)] = float(np.percentile(own, percentile))
    return KeyThresholds(
        percentile=float(percentile),
        min_windows=needed,
        pooled=float(np.percentile(values, percentile)),
        per_key=per_key,
        windows={str(name): int(counts[i]) for i, name in enumerate(names)},
    )
