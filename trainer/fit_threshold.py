"""The threshold of a point-model fit: which errors it is the percentile of, and the fence.

With enough normal rows the threshold is the ``percentile`` of the calibration rows' errors.
Below ``CROSS_FIT_MAX_ROWS`` normal rows the calibration share is too small for that: the 99th
percentile of 20 rows is about their maximum, which ~5 % of unseen rows exceed on average and
which one odd row moves a lot. The threshold is then cross-fitted instead: ``CROSS_FIT_FOLDS``
extra networks, each trained like the final one on the other folds, score the fold they did not
see, and the threshold is the percentile of these out-of-fold errors of *every* normal row. The
published network is the same either way; the manifest records the method in
``hyperparameters["calibration"]``.

Either way the "normal" rows may hold a few anomalies (a mislabelled or badly written digit). Their
errors are often ten times the rest, and with 126 rows the 99th percentile interpolates between the
two largest errors, so one such row can lift the threshold above most real anomalies. Errors beyond
Tukey's far-out fence on the log scale (`outlier_fence`) are therefore left out of the percentile,
counted in ``validation_metrics["calibration_outliers"]`` and named in the notes. False positives
given as feedback then raise the threshold over their errors (`trainer.fit_feedback`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from anomaly_contract import artifact
from anomaly_contract.errors import ConfigError
from trainer import calibration
from trainer.calibration import outlier_fence
from trainer.cross_fit import CROSS_FIT_MAX_ROWS, cross_fitted_errors
from trainer.fit_feedback import raised_threshold
from trainer.progress import track
from trainer.training import reconstruction_errors

if TYPE_CHECKING:  # pragma: no cover
    from trainer.fit import FitChoices, FitOptions, Heldout, RowSplit, Training


@dataclass(frozen=True)
class Threshold:
    """The calibrated threshold and the errors it was taken from."""

    value: float
    stats: artifact.CalibrationStats
    errors: np.ndarray
    rows: np.ndarray  # input rows of ``errors``
    fence: float
    outlier_rows: np.ndarray  # input rows beyond the fence, sorted
    seconds: float
    before_feedback: float = math.nan  # the percentile's value, before false positives raised it
    false_positive_above: int = 0  # false-positive rows still above ``value``


def calibration_method(requested: str, n_normal: int) -> Literal["holdout", "cross_fit"]:
    """Resolve ``FitOptions.calibration``: "auto" cross-fits small data only."""
    if requested == "auto":
        return "cross_fit" if n_normal < CROSS_FIT_MAX_ROWS else "holdout"
    if requested not in ("holdout", "cross_fit"):
        raise ConfigError(f"calibration must be auto, holdout or cross_fit, got {requested!r}")
    return requested  # type: ignore[return-value]


def calibrate_threshold(
    x: np.ndarray,
    split: RowSplit,
    choices: FitChoices,
    training: Training,
    heldout: Heldout,
    opts: FitOptions,
    say: Callable[[str], None],
    *,
    quiet: bool,
) -> Threshold:
    """The threshold: a percentile of held-out or cross-fitted errors, fenced against outliers."""
    started = time.perf_counter()
    if choices.method == "cross_fit":
        say(
            f"cross-fitting the threshold: {choices.folds} more networks of "
            f"{training.best_epoch} epochs, each scoring the 1/{choices.folds} of the "
            f"{split.normal.size} normal rows it did not see"
        )
        total = choices.folds * training.best_epoch
        with track("cross-fitting", total, unit="epoch", quiet=quiet) as progress:
            errors = cross_fitted_errors(
                x[split.normal],
                choices.spec,
                opts,
                choices.scaler_kind,
                choices.error,
                choices.batch_size,
                training.best_epoch,
                choices.folds,
                progress,
                score=choices.score,
            )
        rows = split.normal
    else:
        errors, rows = heldout.calibration_errors, split.calibration
    fp_errors = reconstruction_errors(
        training.model,
        training.scaled[split.false_positive],
        choices.spec.input_shape,
        choices.error,
        feature_scales=training.feature_scales,
    )
    if choices.method == "cross_fit" and split.false_positive.size:
        # Out of the percentile (see trainer.fit_feedback): only the raise below calibrates on them.
        keep = ~np.isin(rows, split.false_positive)
        errors, rows = errors[keep], rows[keep]
    seconds = time.perf_counter() - started
    fence = outlier_fence(errors, opts.outlier_fence)
    percentile_value, stats = calibration.calibrate(errors, opts.percentile, fence=fence)
    confirmed_errors = heldout.errors[np.isin(heldout.rows, split.confirmed)]
    value = raised_threshold(percentile_value, fp_errors, confirmed_errors)
    outliers = np.sort(rows[errors > fence])
    return Threshold(
        value,
        stats,
        errors,
        rows,
        fence,
        outliers,
        seconds,
        before_feedback=percentile_value,
        false_positive_above=int((fp_errors > value).sum()),
    )
