"""Calibration: the threshold from held-out normal errors, the fence that leaves anomalies hiding
among them out, and a summary of their distribution."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from anomaly_contract.artifact import CalibrationStats

if TYPE_CHECKING:  # pragma: no cover
    pass

CALIBRATION_QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999)
# Tukey's "far out" fence: Q3 + 3 IQR. On log errors it lies ~4.7 standard deviations above the
# median of a log-normal, so it leaves out about one row in a million of a clean distribution.
OUTLIER_FENCE_IQR = 3.0


def outlier_fence(errors: np.ndarray, k: float = OUTLIER_FENCE_IQR) -> float:
    """The error above which a calibration row counts as an anomaly among the normal rows.

    Tukey's upper fence ``Q3 + k * IQR`` computed on log errors (reconstruction errors are
    heavy-tailed and log-normal-ish) and mapped back; infinite when ``k <= 0`` or the quartiles
    coincide (no spread to measure against).
    """
    if k <= 0 or errors.size == 0:
        return math.inf
    logs = np.log(np.maximum(np.asarray(errors, dtype=np.float64), 1e-12))
    q1, q3 = np.percentile(logs, [25, 75])
    if not q3 > q1:
        return math.inf
    return float(np.exp(q3 + k * (q3 - q1)))


def calibrate(
    errors: np.ndarray, percentile: float, bins: int = 50, *, fence: float = math.inf
) -> tuple[float, CalibrationStats]:
    """Threshold = the ``percentile`` of held-out normal errors; also summarise their distribution.

    Errors above ``fence`` (suspected anomalies among the normal rows) are left out of the
    percentile but kept in the summary, which describes what live normal traffic looks like. The
    histogram uses log-spaced edges because reconstruction errors are heavy-tailed; the worker bins
    live errors on the same edges to measure drift.
    """
    errors = np.asarray(errors, dtype=np.float64)
    if errors.size == 0:
        raise ValueError("no calibration errors")
    if not 0.0 < percentile < 100.0:
        raise ValueError(f"percentile must be in (0, 100), got {percentile}")
    inside = errors[errors <= fence]
    threshold = float(np.percentile(inside if inside.size else errors, percentile))
    lo = max(float(errors.min()), 1e-12)
    hi = max(float(errors.max()), lo * 10)
    edges = np.geomspace(lo, hi * 1.0001, bins + 1)
    counts, _ = np.histogram(np.clip(errors, edges[0], edges[-1]), bins=edges)
    stats = CalibrationStats(
        n=int(errors.size),
        mean=float(errors.mean()),
        std=float(errors.std()),
        quantiles={str(q): float(np.quantile(errors, q)) for q in CALIBRATION_QUANTILES},
        histogram_edges=edges.tolist(),
        histogram_counts=counts.astype(int).tolist(),
    )
    return threshold, stats


def fingerprint_arrays(arrays: Sequence[np.ndarray], names: Sequence[str]) -> str:
    """A content hash of the training data: same data, same fingerprint."""
    import hashlib

    h = hashlib.sha256()
    h.update(json.dumps(list(names)).encode())
    for a in arrays:
        a = np.ascontiguousarray(a, dtype=np.float64)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return "sha256:" + h.hexdigest()
