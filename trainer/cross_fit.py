"""Cross-fitted calibration errors: every normal row scored by a network that never saw it
(see `trainer.fit_threshold`'s docstring for when and why)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Literal

import numpy as np

from anomaly_contract import artifact
from trainer.models import ModelSpec
from trainer.progress import Progress
from trainer.training import (
    epoch_progress,
    feature_error_scales,
    reconstruction_errors,
    train_network,
)

if TYPE_CHECKING:  # pragma: no cover
    from trainer.fit import FitOptions

__all__ = ["CROSS_FIT_FOLDS", "CROSS_FIT_MAX_ROWS", "cross_fit_folds", "cross_fitted_errors"]

# With fewer normal rows than this, the calibration share is too small for a steady high
# percentile: 150 normal rows leave 22 calibration rows, whose 99th percentile is about their
# maximum; 1,300 leave 195, of which only ~2 lie above it, so the share of unseen rows above the
# threshold still varies by more than half between seeds. The threshold is then taken from
# cross-fitted errors of every normal row instead (`cross_fitted_errors`): CROSS_FIT_FOLDS extra
# trainings, seconds at this size (digits' 1,797 x 64 rows: ~20 s each).
CROSS_FIT_MAX_ROWS = 2000
CROSS_FIT_FOLDS = 3


def cross_fit_folds(n: int, folds: int, seed: int) -> np.ndarray:
    """Fold number (0 .. folds-1) of each of ``n`` rows: balanced, shuffled with ``seed``."""
    return np.random.default_rng([seed, 7]).permutation(n) % folds


def cross_fitted_errors(
    x_normal: np.ndarray,
    spec: ModelSpec,
    opts: FitOptions,
    scaler_kind: Literal["minmax", "standard"],
    error: artifact.ScoreError,
    batch_size: int,
    epochs: int,
    folds: int = CROSS_FIT_FOLDS,
    progress: Progress | None = None,
    *,
    score: artifact.PointScore = "mean",
) -> np.ndarray:
    """Out-of-fold reconstruction errors of every normal row, in the rows' order.

    The rows are cut into ``folds`` seeded folds; for each, a scaler and a network are fitted on
    the other folds for ``epochs`` (the final model's best epoch: no early stopping, so no rows go
    to validation) and score the held-out fold. Every error comes from a model that never saw its
    row, like a calibration row's, but there are ``n`` of them instead of ~15 % of ``n``. With 3
    folds each network trains on 2/3 of the rows, close to the final model's 70 %. ``progress``
    advances once per epoch of every fold. With ``score`` "feature_max" each network scores
    with scales from its own training rows, as the final one does.
    """
    n = x_normal.shape[0]
    fold_of = cross_fit_folds(n, folds, opts.seed)
    errors = np.empty(n, dtype=np.float64)
    for k in range(folds):
        held, rest = np.flatnonzero(fold_of == k), np.flatnonzero(fold_of != k)
        scaler = artifact.Scaler.fit(x_normal[rest], scaler_kind)
        trained_on = scaler.transform(x_normal[rest])
        model, _ = train_network(
            replace(spec, seed=opts.seed + 1000 * (k + 1)),
            trained_on,
            None,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=opts.learning_rate,
            patience=opts.patience,
            callbacks=[epoch_progress(progress)] if progress is not None else [],
            fresh_session=False,  # the final model is alive; keep its layer names untouched
        )
        scales = None
        if score == "feature_max":
            scales = feature_error_scales(model, trained_on, spec.input_shape, error)
        errors[held] = reconstruction_errors(
            model, scaler.transform(x_normal[held]), spec.input_shape, error, feature_scales=scales
        )
    return errors
