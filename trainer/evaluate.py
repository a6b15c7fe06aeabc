"""Offline use of a published model: score, evaluate against labels, encode, decode, denoise.

Scoring always goes through `anomaly_contract.artifact.ModelBundle.score`, the function the worker uses, so
offline scores equal the ones the worker emits for the same rows.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from anomaly_contract import artifact
from anomaly_contract.errors import DataError


def align_features(
    x: np.ndarray, feature_names: Sequence[str], manifest: artifact.Manifest
) -> np.ndarray:
    """Rows in the model's feature order: by name when the data names them all, else by position."""
    x = np.asarray(x, dtype=np.float64)
    wanted = manifest.feature_names
    index = {name: i for i, name in enumerate(feature_names)}
    if all(name in index for name in wanted):
        return x[:, [index[name] for name in wanted]]
    if x.ndim == 2 and x.shape[1] == len(wanted):
        return x
    missing = [n for n in wanted if n not in index][:3]
    raise DataError(
        f"the data has {x.shape[1] if x.ndim == 2 else x.shape} features but model "
        f"{manifest.version} expects {len(wanted)} "
        f"(missing e.g. {', '.join(missing)}): pass the same columns the model was trained on"
    )


def score_rows(bundle: artifact.ModelBundle, x: np.ndarray) -> artifact.ScoreResult:
    if not np.all(np.isfinite(x)):
        row = int(np.argwhere(~np.isfinite(x))[0][0])
        raise DataError(f"non-finite value in row {row}: fix or drop it before scoring")
    try:
        return bundle.score(x)
    except ValueError as exc:
        raise DataError(str(exc)) from exc


def _json_value(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


def write_scores(
    out: TextIO, result: artifact.ScoreResult, threshold: float, ids: Sequence[Any] | None
) -> None:
    """One JSON object per row, in input order: row, id, score, threshold, is_anomaly."""
    flags = result.is_anomaly(threshold)
    for i, score in enumerate(result.scores):
        rec = {
            "row": i,
            "id": _json_value(ids[i]) if ids is not None else None,
            "score": float(score),
            "threshold": float(threshold),
            "is_anomaly": bool(flags[i]),
        }
        out.write(json.dumps(rec) + "\n")


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, Any]
    scores: np.ndarray
    truth: np.ndarray


def classification_metrics(
    truth: np.ndarray, scores: np.ndarray, threshold: float
) -> dict[str, Any]:
    """Precision/recall/F1 at the threshold, threshold-free ROC-AUC and PR-AUC, confusion matrix."""
    from sklearn.metrics import (
        average_precision_score,
        confusion_matrix,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    truth = (np.asarray(truth) != 0).astype(int)
    pred = (np.asarray(scores) > threshold).astype(int)
    both = len(np.unique(truth)) == 2
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(truth, pred, labels=[0, 1]).ravel())
    return {
        "precision": float(precision_score(truth, pred, zero_division=0)),
        "recall": float(recall_score(truth, pred, zero_division=0)),
        "f1": float(f1_score(truth, pred, zero_division=0)),
        "roc_auc": float(roc_auc_score(truth, scores)) if both else None,
        "pr_auc": float(average_precision_score(truth, scores)) if both else None,
        "threshold": float(threshold),
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "rows": int(truth.size),
        "anomalies": int(truth.sum()),
        "flagged": int(pred.sum()),
    }


def evaluate_bundle(bundle: artifact.ModelBundle, x: np.ndarray, labels: np.ndarray) -> Evaluation:
    result = score_rows(bundle, x)
    metrics = classification_metrics(labels, result.scores, bundle.threshold)
    metrics["version"] = bundle.version
    return Evaluation(metrics=metrics, scores=result.scores, truth=(np.asarray(labels) != 0))


def format_metrics(m: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return "n/a (one class only)" if v is None else f"{v:.4f}"

    cm = m["confusion_matrix"]
    return "\n".join(
        [
            f"model {m.get('version', '?')}  threshold {m['threshold']:.6g}  "
            f"rows {m['rows']}  anomalies {m['anomalies']}  flagged {m['flagged']}",
            f"precision {f(m['precision'])}  recall {f(m['recall'])}  f1 {f(m['f1'])}",
            f"roc_auc   {f(m['roc_auc'])}  pr_auc {f(m['pr_auc'])}",
            "confusion matrix (rows: truth, columns: predicted)",
            "              normal  anomaly",
            f"  normal   {cm['tn']:>8} {cm['fp']:>8}",
            f"  anomaly  {cm['fn']:>8} {cm['tp']:>8}",
        ]
    )


# --------------------------------------------------------------------------------------------
# Tables out: encode / decode / denoise
# --------------------------------------------------------------------------------------------
def write_table(
    path: str | Path, rows: np.ndarray, columns: Sequence[str], ids: Sequence[Any] | None = None
) -> None:
    """Write rows as .npy, .npz, .csv (header) or JSON Lines ({"id", "features": {...}})."""
    path = Path(path)
    rows = np.asarray(rows)
    suffix = path.suffix.lower()
    if path.parent and not path.parent.exists():
        raise DataError(f"output directory {path.parent} does not exist")
    if suffix == ".npy":
        np.save(path, rows)
    elif suffix == ".npz":
        np.savez(path, x=rows, columns=np.asarray(columns))
    elif suffix == ".csv":
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow((["id"] if ids is not None else []) + list(columns))
            for i, row in enumerate(rows):
                w.writerow(
                    ([_json_value(ids[i])] if ids is not None else [])
                    + [repr(float(v)) for v in row]
                )
    else:
        with path.open("w") as fh:
            for i, row in enumerate(rows):
                rec: dict[str, Any] = {"id": _json_value(ids[i])} if ids is not None else {}
                rec["features"] = dict(zip(columns, (float(v) for v in row), strict=True))
                fh.write(json.dumps(rec) + "\n")


def encode_rows(bundle: artifact.ModelBundle, x: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """Latent codes plus how much smaller they are and how well they reconstruct."""
    codes = bundle.encode(x)
    rec = bundle.decode(codes)
    stats = {
        "compression_ratio": x.shape[1] / codes.shape[1],
        "mean_score": float(score_rows(bundle, x).scores.mean()),
        "rmse": float(math.sqrt(np.mean(np.square(rec - x)))),
    }
    return codes, stats


def decode_codes(bundle: artifact.ModelBundle, codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2 or codes.shape[1] != bundle.manifest.latent_dim:
        raise DataError(
            f"codes have {codes.shape[1] if codes.ndim == 2 else codes.shape} values per row but "
            f"model {bundle.version} has a latent size of {bundle.manifest.latent_dim}: "
            "use codes written by `anomaly-trainer encode` with the same version"
        )
    if not np.all(np.isfinite(codes)):
        raise DataError("the codes contain NaN or infinite values")
    return bundle.decode(codes)


def denoise_rows(bundle: artifact.ModelBundle, x: np.ndarray) -> np.ndarray:
    """Reconstructions in the original units (the noise layer is inactive outside training)."""
    rec = bundle.reconstruct_scaled(bundle.scaler.transform(x))
    return bundle.scaler.inverse_transform(rec)
