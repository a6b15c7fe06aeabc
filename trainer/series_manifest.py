"""The manifest of a windowed fit: everything `SeriesModel` needs to score as the fit calibrated
(window, score rule and its scales, the history clip, per-key statistics and thresholds), and
the human-readable notes that say so."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np

from anomaly_contract import artifact
from anomaly_contract.key_normaliser import KeyNormaliser
from anomaly_contract.key_thresholds import KeyThresholds
from anomaly_contract.model_dir import utc_now
from trainer import calibration
from trainer.data_series import SeriesData
from trainer.fit import FitOptions
from trainer.series_score_scales import manifest_scales, series_score_note
from trainer.training import library_versions

if TYPE_CHECKING:  # pragma: no cover
    from trainer.fit_series import WindowInputs


def manifest_history_clip(
    bounds: tuple[np.ndarray, np.ndarray] | None,
) -> artifact.HistoryClip | None:
    if bounds is None:
        return None
    return artifact.HistoryClip(low=bounds[0].tolist(), high=bounds[1].tolist())


def series_manifest(
    data: SeriesData,
    inputs: WindowInputs,
    opts: FitOptions,
    normaliser: KeyNormaliser,
    thresholds: KeyThresholds,
    cal_errors: np.ndarray,
    metrics: dict[str, float],
) -> artifact.Manifest:
    """The unpublished manifest of a windowed model (``series`` set, pooled ``threshold``)."""
    spec, parts, error = inputs.spec, inputs.parts, inputs.error
    window, score_steps = parts.index.window, inputs.score_steps
    _, stats = calibration.calibrate(cal_errors, opts.percentile)
    own = len(thresholds.per_key)
    notes = [
        f"windows of {window} rows per key; {own} of {len(thresholds.windows)} calibrated keys "
        f"have their own p{opts.percentile:g} threshold, the rest (and keys unseen in training) "
        f"use the pooled {thresholds.pooled:.4g}",
        f"keys unseen in training learn their normalisation from their first "
        f"{normaliser.warmup_records} records and are not scored before",
    ]
    if inputs.history_clip is not None:
        low, high = inputs.history_clip
        bounds = ", ".join(
            f"{name} {lo:.2f}..{hi:.2f}"
            for name, lo, hi in zip(data.channel_names, low, high, strict=True)
        )
        notes.append(
            "the network sees each window with the rows before the scored one clipped to "
            f"(key standard deviations) {bounds}; errors are measured against the rows as they are"
        )
    score_note = series_score_note(score_steps, inputs.score_scales)
    if score_note is not None:
        notes.append(score_note)
    hyper = {
        **{k: v for k, v in asdict(opts).items() if k != "image_shape"},
        "architecture": spec.architecture,
        "hidden": list(spec.hidden),
        "latent": spec.latent,
        "activation": spec.activation,
        "window": window,
        "error": error,
    }
    train_rows = np.unique(parts.index.rows[parts.train])
    score, channel_scales, key_channel_scales, blend_scales = manifest_scales(inputs.score_scales)
    return artifact.Manifest(
        version="unpublished",
        created_at=utc_now(),
        architecture=spec.architecture,
        feature_names=list(data.channel_names),
        input_shape=list(spec.input_shape),
        latent_dim=spec.latent,
        loss="mse",
        error=error,
        denoise=spec.denoise,
        threshold=thresholds.pooled,
        percentile=opts.percentile,
        calibration=stats,
        data_source=data.source,
        data_fingerprint=calibration.fingerprint_arrays([data.x[train_rows]], data.channel_names),
        rows=artifact.RowCounts(
            total=data.n_rows,
            train=int(parts.train.size),
            validation=int(parts.validation.size),
            calibration=int(parts.calibration.size),
            excluded_labelled=int(parts.labelled.size),
        ),
        hyperparameters=hyper,
        validation_metrics=metrics,
        library_versions=library_versions(),
        notes=notes,
        series=artifact.SeriesParams(
            window=window,
            score_steps=score_steps,
            key_column=data.key_column,
            time_column=data.time_column,
            normaliser=normaliser.to_json(),
            thresholds=thresholds.to_json(),
            score=score,
            channel_scales=channel_scales,
            key_channel_scales=key_channel_scales,
            blend_scales=blend_scales,
            history_clip=manifest_history_clip(inputs.history_clip),
        ),
    )
