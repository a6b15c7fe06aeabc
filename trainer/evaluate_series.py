"""Offline use of a windowed model: score rows per key, evaluate with event-wise recall.

Scores come from `anomaly_contract.series.SeriesModel.score_rows`, which gives what the worker
gives for the same rows of each key in the same order. Rows that do not yet close a window of
their key (warming) have no score and are never flagged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TextIO

import numpy as np

from anomaly_contract import artifact
from anomaly_contract.errors import DataError
from anomaly_contract.series import SeriesRowScores
from anomaly_contract.windows import WindowIndex
from trainer.data_series import SeriesData, load_series
from trainer.evaluate import classification_metrics


def load_model_series(
    source: str,
    bundle: artifact.ModelBundle,
    *,
    key_column: str | None = None,
    time_column: str | None = None,
    label_column: str | None = None,
) -> SeriesData:
    """DATA read for a windowed model: its channels, and its key and time columns unless the
    flags name others."""
    params = bundle.manifest.series
    assert params is not None
    return load_series(
        source,
        key_column=key_column or params.key_column,
        time_column=time_column or params.time_column,
        label_column=label_column,
        features=list(bundle.manifest.feature_names),
    )


def score_series(bundle: artifact.ModelBundle, data: SeriesData) -> SeriesRowScores:
    """Per-row scores of ``data`` (NaN while a key warms)."""
    try:
        return bundle.series.score_rows(data.x, data.keys, data.times)
    except ValueError as exc:
        raise DataError(f"{data.source}: {exc}") from None


def write_series_scores(out: TextIO, result: SeriesRowScores, ids: Sequence[Any] | None) -> None:
    """One JSON object per input row, in input order; warming rows have ``"score": null``."""
    flags = result.is_anomaly
    for i, score in enumerate(result.scores):
        warming = bool(result.warming[i])
        rec = {
            "row": i,
            "id": ids[i] if ids is not None else None,
            "key": str(result.keys[i]),
            "score": None if warming else float(score),
            "threshold": None if warming else float(result.thresholds[i]),
            "is_anomaly": bool(flags[i]),
        }
        out.write(json.dumps(rec, default=_plain) + "\n")


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else str(value)


def labelled_ranges(labels: np.ndarray, index: WindowIndex) -> list[np.ndarray]:
    """The anomalous ranges: maximal runs of labelled rows of one key in time order (row
    numbers into the input), whatever the label value."""
    in_time_order = np.lexsort((index.position, index.key_codes))
    flagged = np.asarray(labels)[in_time_order] != 0
    codes = index.key_codes[in_time_order]
    starts = flagged & ~np.concatenate(([False], flagged[:-1] & (codes[1:] == codes[:-1])))
    range_of = np.cumsum(starts) - 1
    ranges = range_of[flagged]
    rows = in_time_order[flagged]
    bounds = np.flatnonzero(np.diff(ranges)) + 1
    return [part for part in np.split(rows, bounds) if part.size]


def event_metrics(result: SeriesRowScores, labels: np.ndarray) -> dict[str, Any]:
    """Event-wise recall (share of labelled ranges with at least one flagged row) and the
    normal-row false-positive rate (flagged share of the scored label-0 rows)."""
    flags = result.is_anomaly
    ranges = labelled_ranges(labels, result.index)
    found = sum(bool(flags[rows].any()) for rows in ranges)
    normal = (np.asarray(labels) == 0) & ~result.warming
    return {
        "events": len(ranges),
        "events_found": int(found),
        "event_recall": float(found / len(ranges)) if ranges else None,
        "normal_fpr": float(flags[normal].mean()) if normal.any() else None,
        "warming_rows": int(result.warming.sum()),
    }


def evaluate_series(
    bundle: artifact.ModelBundle, data: SeriesData, labels: np.ndarray
) -> tuple[dict[str, Any], SeriesRowScores]:
    """Row-wise metrics on the scored rows (the score relative to its key's threshold, so one
    threshold of 1 holds for every key), plus the event-wise ones."""
    result = score_series(bundle, data)
    scored = ~result.warming
    if not scored.any():
        raise DataError(f"{data.source}: no row closes a window of W={bundle.series.window}")
    relative = result.scores[scored] / np.maximum(result.thresholds[scored], 1e-12)
    metrics = classification_metrics(labels[scored], relative, 1.0)
    metrics["threshold"] = "per key"
    metrics.update(event_metrics(result, labels))
    metrics["version"] = bundle.version
    metrics["window"] = bundle.series.window
    return metrics, result


def format_series_metrics(m: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    cm = m["confusion_matrix"]
    return "\n".join(
        [
            f"model {m['version']}  window {m['window']}  thresholds per key  scored rows "
            f"{m['rows']} (warming {m['warming_rows']})  anomalies {m['anomalies']}  "
            f"flagged {m['flagged']}",
            f"precision {f(m['precision'])}  recall {f(m['recall'])}  f1 {f(m['f1'])}",
            f"roc_auc   {f(m['roc_auc'])}  pr_auc {f(m['pr_auc'])}",
            f"event recall {f(m['event_recall'])} ({m['events_found']} of {m['events']} "
            f"labelled ranges)  normal-row FPR {f(m['normal_fpr'])}",
            f"confusion matrix: tn {cm['tn']}  fp {cm['fp']}  fn {cm['fn']}  tp {cm['tp']}",
        ]
    )
