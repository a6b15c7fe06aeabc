"""Score a batch of decoded rows with a loaded model: pure arrays in, arrays out.

`ModelBundle.score` runs the model's compiled inference function once for the whole batch
(``model.predict`` costs tens of milliseconds per call whatever the batch size, so it is never used
here). Top features are ranked only for the rows that become events.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anomaly_contract.artifact import ModelBundle


@dataclass(frozen=True)
class BatchScores:
    """Scores of one batch; ``finite`` is False where the error overflowed (the row is rejected)."""

    scores: np.ndarray  # (n,) float64
    feature_errors: np.ndarray  # (n, n_features) float32
    threshold: float
    finite: np.ndarray  # (n,) bool
    is_anomaly: np.ndarray  # (n,) bool, False where not finite

    @property
    def n_anomalies(self) -> int:
        return int(self.is_anomaly.sum())


def score_batch(bundle: ModelBundle, x: np.ndarray) -> BatchScores:
    """Score raw rows ``(n, n_features)`` in one inference call."""
    result = bundle.score(x)
    finite = np.isfinite(result.scores)
    threshold = float(bundle.threshold)
    return BatchScores(
        scores=result.scores,
        feature_errors=result.feature_errors,
        threshold=threshold,
        finite=finite,
        is_anomaly=(result.scores > threshold) & finite,
    )


def top_features(
    feature_errors: np.ndarray, names: list[str], k: int
) -> list[list[tuple[str, float]]]:
    """The ``k`` features with the largest reconstruction error, per row, largest first."""
    n, f = feature_errors.shape
    k = min(k, f)
    if n == 0 or k <= 0:
        return [[] for _ in range(n)]
    if k < f:
        part = np.argpartition(-feature_errors, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(f), (n, f))
    vals = np.take_along_axis(feature_errors, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    return [
        [(names[j], float(e)) for j, e in zip(idx_row, val_row, strict=True)]
        for idx_row, val_row in zip(idx.tolist(), vals.tolist(), strict=True)
    ]
