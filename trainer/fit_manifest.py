"""What one fit records about itself: validation metrics, notes for the reader, the manifest."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from anomaly_contract import artifact
from anomaly_contract.model_dir import utc_now
from trainer import calibration
from trainer.training import library_versions

if TYPE_CHECKING:  # pragma: no cover
    from trainer.fit import FitChoices, FitOptions, Heldout, RowSplit, Training
    from trainer.fit_threshold import Threshold


def validation_metrics(
    split: RowSplit, training: Training, heldout: Heldout, threshold: Threshold, opts: FitOptions
) -> dict[str, float]:
    """The manifest's validation metrics; ROC-AUC and PR-AUC when labelled anomalies were held out."""
    history, best_epoch = training.history, training.best_epoch
    cal_errors = heldout.calibration_errors
    metrics: dict[str, float] = {
        "val_loss": float(min(history.get("val_loss", []))),
        "train_loss": float(history["loss"][best_epoch - 1]),
        "best_epoch": float(best_epoch),
        "epochs_run": float(len(history["loss"])),
        "calibration_error_mean": float(cal_errors.mean()),
        # The percentile of the final model's own calibration rows, for comparison with the
        # cross-fitted threshold (equal to it with holdout calibration).
        "holdout_threshold": float(np.percentile(cal_errors, opts.percentile)),
        "calibration_seconds": threshold.seconds,
        "calibration_outliers": float(threshold.outlier_rows.size),
        # What the threshold would be with the outliers counted, for comparison.
        "threshold_with_outliers": float(np.percentile(threshold.errors, opts.percentile)),
    }
    if split.anomalies.size:
        from sklearn.metrics import average_precision_score, roc_auc_score

        truth = (heldout.labels != 0).astype(int)
        metrics["roc_auc"] = float(roc_auc_score(truth, heldout.errors))
        metrics["pr_auc"] = float(average_precision_score(truth, heldout.errors))
        metrics["heldout_recall"] = float(np.mean(heldout.errors[truth == 1] > threshold.value))
    return metrics


def threshold_notes(
    split: RowSplit, choices: FitChoices, threshold: Threshold, opts: FitOptions
) -> list[str]:
    """What a reader of the manifest should know about this threshold, in sentences."""
    notes = []
    n_cal, outliers = split.calibration.size, threshold.outlier_rows
    if choices.method == "cross_fit":
        notes.append(
            f"threshold cross-fitted: the {opts.percentile:g}th percentile of out-of-fold errors of "
            f"all {split.normal.size} normal rows ({choices.folds} folds), because "
            f"{n_cal} calibration rows are too few for a steady estimate"
        )
    elif n_cal < 100 and opts.percentile >= 99:
        notes.append(
            f"only {n_cal} calibration rows: the {opts.percentile:g}th percentile is close to "
            "their maximum; more normal data gives a steadier threshold"
        )
    if outliers.size:
        shown = ", ".join(str(int(i)) for i in outliers[:10])
        more = f" and {outliers.size - 10} more" if outliers.size > 10 else ""
        notes.append(
            f"{outliers.size} of {threshold.errors.size} normal rows reconstruct far worse than "
            f"the rest (error above {threshold.fence:.4g}, the far-out fence of the log errors) "
            f"and were left out of the threshold; they look like anomalies in the training data: "
            f"rows {shown}{more} (0-based, in input order)"
        )
    return notes


def build_manifest(
    x: np.ndarray,
    feature_names: Sequence[str],
    split: RowSplit,
    choices: FitChoices,
    threshold: Threshold,
    opts: FitOptions,
    *,
    source: str,
    metrics: dict[str, float],
    notes: list[str],
    feature_scales: np.ndarray | None = None,
) -> artifact.Manifest:
    """The unpublished manifest: what was trained on what, with which settings and results
    (``feature_scales``: the "feature_max" score's)."""
    spec, method = choices.spec, choices.method
    hyper: dict[str, Any] = {
        **{k: v for k, v in asdict(opts).items() if k not in ("image_shape",)},
        "architecture": spec.architecture,
        "hidden": list(spec.hidden),
        "latent": spec.latent,
        "scaler": choices.scaler_kind,
        "activation": spec.activation,
        "batch_size": choices.batch_size,
        "epochs": choices.epochs,  # the budget trained with: less than asked with a short fit
        "calibration": method,
        "error": choices.error,
        "score": choices.score,
        "denoise": spec.denoise,
        "sparsity": spec.sparsity,
        **({"kl_weight": spec.kl_weight} if spec.architecture == "vae" else {}),
        **({"calibration_folds": choices.folds} if method == "cross_fit" else {}),
    }
    return artifact.Manifest(
        version="unpublished",
        created_at=utc_now(),
        architecture=spec.architecture,
        feature_names=list(feature_names),
        input_shape=list(spec.input_shape),
        image_shape=list(spec.image_shape) if spec.image_shape else None,
        latent_dim=spec.latent,
        loss=spec.loss,
        error=choices.error,
        score=choices.score,
        feature_scales=None if feature_scales is None else [float(v) for v in feature_scales],
        denoise=spec.denoise,
        threshold=threshold.value,
        percentile=opts.percentile,
        calibration=threshold.stats,
        data_source=source,
        data_fingerprint=calibration.fingerprint_arrays([x[split.normal]], list(feature_names)),
        rows=artifact.RowCounts(
            total=x.shape[0],
            train=int(split.train.size),
            validation=int(split.validation.size),
            calibration=int(split.calibration.size),
            excluded_labelled=int(split.anomalies.size),
        ),
        hyperparameters=hyper,
        validation_metrics=metrics,
        library_versions=library_versions(),
        notes=notes,
    )
