"""What ``fit --feedback`` changes in a fit: labels, the training rows, the threshold, the manifest.

- **Confirmed** rows count as labelled anomalies: left out of training and of calibration, and
  scored with the held-out rows (they give the metrics, like a label column's anomalies).
- **False-positive** rows are normal rows the previous model flagged. They all train the network
  (not a random 70 % of them: the network should learn that this is normal). They calibrate the
  threshold through one rule, not through the percentile: the threshold is raised, if need be,
  to just above the highest false-positive error under the published network, so that none of
  them is flagged again, but never above the lowest confirmed anomaly's error ("where
  possible": a confirmed anomaly that scores below a false positive cannot be told from it by a
  threshold, and recall goes first). In the percentile they would bias it: they are a sample
  picked from the tail (measured: 18 false positives among 133 calibration rows lifted the p99
  from 0.33 to 1.19, above a confirmed anomaly's error of 0.64).
- A label column wins over feedback: a row it labels anomalous stays out even if an analyst
  called its event a false positive.
- Windowed fits (`trainer.fit_series`) apply the same by windows: a window ending at a confirmed
  row is labelled, one ending at a false positive trains, and its key's threshold is raised over
  it (`raise_key_thresholds`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from anomaly_contract.artifact import FeedbackSummary
from trainer.feedback import FeedbackLabels

if TYPE_CHECKING:  # pragma: no cover
    import keras

    from anomaly_contract.artifact import Manifest
    from anomaly_contract.key_thresholds import KeyThresholds
    from trainer.data_series import SeriesData
    from trainer.fit_series import WindowInputs, WindowParts

# A threshold raised over a false positive's error sits this much above it (relative): the
# worker's NumPy or ONNX scores agree with the trainer's to ~1e-5 relative, not exactly.
RAISE_MARGIN = 1e-4


def merge_labels(
    labels: np.ndarray | None, feedback: FeedbackLabels | None, n_rows: int
) -> np.ndarray | None:
    """The label column with confirmed rows added as anomalies (label 1)."""
    if feedback is None or not feedback.confirmed.any():
        return labels
    merged = np.zeros(n_rows, np.int64) if labels is None else np.asarray(labels, np.int64).copy()
    merged[feedback.confirmed & (merged == 0)] = 1
    return merged


def false_positive_rows(labels: np.ndarray | None, feedback: FeedbackLabels | None) -> np.ndarray:
    """Row numbers of false positives that are normal rows (the label column agrees)."""
    if feedback is None:
        return np.zeros(0, np.int64)
    normal = feedback.false_positive if labels is None else feedback.false_positive & (labels == 0)
    return np.flatnonzero(normal)


def raised_threshold(
    threshold: float, false_positive_errors: np.ndarray, confirmed_errors: np.ndarray
) -> float:
    """At least just above the highest false-positive error, capped just under the lowest
    confirmed anomaly's error; never lower than ``threshold``."""
    if false_positive_errors.size == 0:
        return threshold
    target = float(np.max(false_positive_errors)) * (1.0 + RAISE_MARGIN)
    if confirmed_errors.size:
        target = min(target, float(np.min(confirmed_errors)) * (1.0 - RAISE_MARGIN))
    return max(threshold, target)


def feedback_summary(
    feedback: FeedbackLabels,
    *,
    threshold_before: float,
    threshold_after: float,
    false_positive_above: int,
) -> FeedbackSummary:
    """The manifest's ``feedback`` section."""
    return feedback.counts.model_copy(
        update={
            "false_positive_rows_above": false_positive_above,
            "threshold_before": threshold_before if threshold_after != threshold_before else None,
        }
    )


def feedback_note(summary: FeedbackSummary, threshold: float) -> str:
    """One sentence for the manifest's notes and the report."""
    moved = (
        f"; the threshold was raised from {summary.threshold_before:.6g} to {threshold:.6g} so "
        "that false positives fall under it"
        if summary.threshold_before is not None
        else ""
    )
    return (
        f"feedback from {summary.source}: {summary.confirmed} confirmed ids "
        f"({summary.confirmed_rows} rows, left out of training), {summary.false_positive} false "
        f"positives ({summary.false_positive_rows} rows, trained on as normal and calibrated "
        f"on; {summary.false_positive_rows_above} still above the threshold), "
        f"{summary.unresolved} unresolved, {summary.skipped} unusable records skipped{moved}"
    )


def false_positive_windows(
    parts: WindowParts, data: SeriesData, feedback: FeedbackLabels | None
) -> np.ndarray:
    """Windows ending at a false-positive row and holding no labelled row."""
    if feedback is None:
        return np.zeros(0, np.int64)
    index = parts.index
    labelled = np.zeros(data.n_rows, bool) if data.labels is None else data.labels != 0
    clean = ~labelled[index.rows].any(axis=1)
    return np.flatnonzero(feedback.false_positive[index.end_rows] & clean)


def confirmed_windows(parts: WindowParts, feedback: FeedbackLabels) -> np.ndarray:
    """The held-out labelled windows that end at a confirmed row."""
    return parts.labelled[feedback.confirmed[parts.index.end_rows[parts.labelled]]]


def raise_key_thresholds(
    thresholds: KeyThresholds,
    inputs: WindowInputs,
    model: keras.Model,
    fp_windows: np.ndarray,
    confirmed: np.ndarray,
    window_keys: np.ndarray,
) -> tuple[KeyThresholds, list[str], int]:
    """Each key's threshold raised over its false-positive windows' scores (`raised_threshold`,
    capped by its confirmed windows); the keys raised, and false-positive windows still above."""
    if fp_windows.size == 0:
        return thresholds, [], 0
    fp_scores = inputs.scores(model, fp_windows)
    confirmed_scores = inputs.scores(model, confirmed) if confirmed.size else np.zeros(0)
    per_key = dict(thresholds.per_key)
    raised: list[str] = []
    for key in np.unique(window_keys[fp_windows]):
        before = thresholds.threshold(str(key))
        after = raised_threshold(
            before,
            fp_scores[window_keys[fp_windows] == key],
            confirmed_scores[window_keys[confirmed] == key],
        )
        if after > before:
            per_key[str(key)] = after
            raised.append(str(key))
    updated = replace(thresholds, per_key=per_key)
    above = int((fp_scores > updated.thresholds_for(window_keys[fp_windows])).sum())
    return updated, raised, above


def with_series_feedback(
    manifest: Manifest,
    feedback: FeedbackLabels | None,
    threshold: float,
    raised: list[str],
    false_positive_above: int,
) -> Manifest:
    """A windowed model's manifest with its ``feedback`` section and note (the keys ``raised``
    by `raise_key_thresholds` named); ``manifest`` itself without feedback."""
    if feedback is None:
        return manifest
    summary = feedback_summary(
        feedback,
        threshold_before=1.0,
        threshold_after=1.0,
        false_positive_above=false_positive_above,
    )
    note = feedback_note(summary, threshold)
    if raised:
        note += (
            f"; the thresholds of {len(raised)} keys ({', '.join(raised[:5])}"
            f"{' ...' if len(raised) > 5 else ''}) were raised over their false positives"
        )
    notes = [*manifest.notes, note]
    return manifest.model_copy(update={"feedback": summary, "notes": notes})
