"""A threshold from labelled events: precision and recall at every cut, and the one asked for.

Events carry the score the worker gave, so no data and no network are needed. Every event was
above the threshold that emitted it, so the labels say nothing about records below it: the
recall here is the share of *confirmed events* kept, and the proposal can raise a threshold (or
lower it to the lowest labelled score), not find anomalies the model never flagged.

Scores are compared *relative* to the version's threshold (for windowed models: to the event's
key's threshold), so a proposal is a factor: the new threshold is ``factor x`` the current one,
and a windowed model's per-key and pooled thresholds are all scaled by it (its keys keep their
relative levels; one factor is what the labels of a few keys can support).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anomaly_contract.errors import DataError


@dataclass(frozen=True)
class ThresholdCurve:
    """Candidate factors, high to low, each flagging one more distinct score than the last."""

    factors: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    flagged: np.ndarray  # events above each factor

    @property
    def f1(self) -> np.ndarray:
        total = self.precision + self.recall
        return np.where(total > 0, 2 * self.precision * self.recall / np.maximum(total, 1e-300), 0)


@dataclass(frozen=True)
class Proposal:
    """The chosen cut, and the current threshold's (factor 1) precision and recall."""

    factor: float
    precision: float
    recall: float
    current_precision: float
    current_recall: float


def threshold_curve(relative: np.ndarray, confirmed: np.ndarray) -> ThresholdCurve:
    """Precision and recall of flagging ``relative > factor`` for the labelled events (``confirmed``
    True: confirmed, False: false positive); DataError without both kinds."""
    relative = np.asarray(relative, np.float64)
    confirmed = np.asarray(confirmed, bool)
    n_confirmed, n_false = int(confirmed.sum()), int((~confirmed).sum())
    if n_confirmed == 0 or n_false == 0:
        raise DataError(
            f"not enough labels to choose a threshold: {n_confirmed} confirmed and {n_false} false-"
            "positive events of this model's network; both kinds are needed"
        )
    distinct = np.unique(relative)[::-1]  # high to low
    # A cut between each distinct score and the next lower one; the last flags every event
    # (at the current threshold, 1, when every event is above it).
    lower = np.append(distinct[1:], min(1.0, distinct[-1] * (1 - 1e-9)))
    factors = np.where(lower < distinct, (distinct + lower) / 2, lower)
    factors[-1] = lower[-1]
    flagged = (relative[None, :] > factors[:, None]).sum(axis=1)
    hits = ((relative[None, :] > factors[:, None]) & confirmed[None, :]).sum(axis=1)
    precision = hits / np.maximum(flagged, 1)
    return ThresholdCurve(factors, precision, hits / n_confirmed, flagged)


def propose(
    curve: ThresholdCurve,
    relative: np.ndarray,
    confirmed: np.ndarray,
    *,
    target_precision: float | None = None,
) -> Proposal:
    """The cut with the highest recall whose precision reaches ``target_precision`` (ties: the
    higher precision), or without a target the one with the highest F1 (ties: higher recall)."""
    if target_precision is not None:
        if not 0.0 < target_precision <= 1.0:
            raise DataError(f"--target-precision must lie in (0, 1], got {target_precision}")
        ok = np.flatnonzero(curve.precision >= target_precision)
        if ok.size == 0:
            raise DataError(
                f"no threshold reaches precision {target_precision:g} on these labels (the best "
                f"is {curve.precision.max():.3f}); lower --target-precision or use --max-f1"
            )
        order = np.lexsort((-curve.precision[ok], -curve.recall[ok]))
        best = int(ok[order[0]])
    else:
        order = np.lexsort((-curve.recall, -curve.f1))
        best = int(order[0])
    now = np.asarray(relative) > 1.0
    hits_now = int((now & np.asarray(confirmed, bool)).sum())
    return Proposal(
        factor=float(curve.factors[best]),
        precision=float(curve.precision[best]),
        recall=float(curve.recall[best]),
        current_precision=hits_now / max(int(now.sum()), 1),
        current_recall=hits_now / max(int(np.sum(confirmed)), 1),
    )
