"""Fitting a point model: the row split, the defaults the options leave open, and training.

The normal rows (label 0, or every row when there are no labels) are split three ways with a
seeded shuffle: *train* (the only rows the weights and the scaler see), *validation* (early
stopping keeps the weights with the lowest validation loss) and *calibration* (never used for
training or model selection; the threshold is the ``percentile`` of their reconstruction errors,
so about ``100 - percentile`` % of unseen normal records score above it). Small data is
cross-fitted instead and outliers are fenced off (`trainer.fit_threshold`).

`fit_model` runs these as named steps: check the inputs, split the rows, choose the defaults the
options leave open, train, calibrate (`trainer.fit_threshold`); `trainer.fit_manifest` records
metrics, notes and manifest.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import numpy as np

from anomaly_contract import artifact
from anomaly_contract.errors import ConfigError, DataError
from trainer.calibration import OUTLIER_FENCE_IQR
from trainer.cross_fit import CROSS_FIT_FOLDS, CROSS_FIT_MAX_ROWS
from trainer.feedback import FeedbackLabels
from trainer.fit_feedback import false_positive_rows, feedback_note, feedback_summary, merge_labels
from trainer.fit_manifest import build_manifest, threshold_notes, validation_metrics
from trainer.fit_threshold import calibrate_threshold, calibration_method
from trainer.models import ModelSpec, make_spec
from trainer.progress import track
from trainer.training import (
    epoch_progress,
    feature_error_scales,
    reconstruction_errors,
    train_network,
)

if TYPE_CHECKING:  # pragma: no cover
    import keras

MIN_TRAIN_ROWS = 10
MIN_VALIDATION_ROWS = 2
MIN_CALIBRATION_ROWS = 5
# Images train as denoising autoencoders by default: Gaussian noise of this std on the scaled
# pixels. Measured with the absolute error and the fence (benchmarks/quality.py, 3 splits): ROC-AUC
# equal or higher on all 11 digit sets, F1 on digit 3 0.720 -> 0.805 and digit 5 0.871 -> 0.911.
IMAGE_DENOISE = 0.1
# --short-fit: the epoch budget of a short fit. A briefly trained network reconstructs rows
# outside the normal range worse, so they score higher; a long fit learns to extrapolate along
# the features' correlations (issue 18: ODDS breast-cancer, 5 anomaly draws, ROC-AUC 0.937 ->
# 0.951), but subtle anomalies need the precise fit (builtin:sensors 0.997 -> 0.993).
SHORT_FIT_EPOCHS = 20
SHORT_FIT_CHOICES = ("off", "auto", "on")


@dataclass(frozen=True)
class FitOptions:
    """Hyper-parameters; ``None`` means "choose from the data" (see `_choose_defaults`)."""

    architecture: Literal["dense", "conv", "vae", "lstm", "conv1d"] | None = None
    image_shape: tuple[int, ...] | None = None
    hidden: tuple[int, ...] | None = None
    latent: int | None = None
    # None: IMAGE_DENOISE for images, off for tables; 0: off.
    denoise: float | None = None
    # L1 activity penalty on the code (sparse autoencoder); None or 0: off.
    sparsity: float | None = None
    # The VAE's KL weight; None: trainer.models.DEFAULT_KL_WEIGHT.
    kl_weight: float | None = None
    loss: Literal["mse", "bce"] = "mse"
    scaler: Literal["minmax", "standard"] | None = None
    epochs: int = 150
    batch_size: int | None = None
    learning_rate: float = 1e-3
    patience: int = 12
    validation_split: float = 0.15
    calibration_split: float = 0.15
    percentile: float = 99.0
    # "auto": cross-fitted below CROSS_FIT_MAX_ROWS normal rows, else the calibration rows alone.
    calibration: Literal["auto", "holdout", "cross_fit"] = "auto"
    # Calibration errors beyond Q3 + k IQR of the log errors are left out of the percentile; 0: none.
    outlier_fence: float = OUTLIER_FENCE_IQR
    seed: int = 0
    # None: tanh for tables (bounded units cannot extrapolate, so out-of-range rows reconstruct
    # badly and score high: +0.04 ROC-AUC on breast-cancer vs relu), relu for images.
    activation: str | None = None
    # How per-feature errors are measured before averaging into the score. None: absolute ("mae")
    # for images, where a few badly drawn pixels should not outweigh the whole digit (one-class
    # digits: ROC-AUC higher on 6 of 10 sets and equal on the rest), squared ("mse") for tables,
    # where one spiking sensor should count (builtin:sensors ROC-AUC 0.997 vs 0.992).
    error: artifact.ScoreError | None = None
    # Stop training after SHORT_FIT_EPOCHS (at most ``epochs``): "on" for any data, "auto" for
    # tables with fewer than CROSS_FIT_MAX_ROWS normal rows, "off" (default) never.
    short_fit: Literal["off", "auto", "on"] = "off"
    # How per-feature errors become the score (`artifact.PointScore`). None: "feature_max" for
    # tables (each feature's error against its own typical error, then the largest:
    # breast-cancer ROC-AUC 0.960 against the mean's 0.937, builtin:sensors 1.000 against
    # 0.997, wine 0.937 against 0.945, 5 seeds), "mean" for images (digit 8: 0.940 against
    # 0.981: most pixels of a digit class are always blank, so their scales say nothing).
    score: artifact.PointScore | None = None


@dataclass
class TrainedModel:
    """A fitted, calibrated model that is not published yet, plus what reports need."""

    model: keras.Model
    scaler: artifact.Scaler
    manifest: artifact.Manifest  # version "unpublished" until `trainer.publish.publish_model`
    spec: ModelSpec
    history: dict[str, list[float]]
    best_epoch: int
    # Held-out rows (validation + calibration normals, then every excluded anomaly) for reports.
    heldout_x: np.ndarray
    heldout_labels: np.ndarray
    heldout_errors: np.ndarray
    # The errors the threshold is the percentile of: the calibration rows', or with cross-fitting
    # the out-of-fold errors of every normal row.
    calibration_errors: np.ndarray
    train_seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def threshold(self) -> float:
        return self.manifest.threshold

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Raw rows' scores by this model, as its threshold was calibrated (and as the published
        version scores them)."""
        m = self.manifest
        xs = self.scaler.transform(np.asarray(x, dtype=np.float64))
        shape = self.spec.input_shape
        return reconstruction_errors(
            self.model, xs, shape, m.error, feature_scales=m.point_feature_scales
        )


@dataclass(frozen=True)
class RowSplit:
    """Row indices into the input: the normal rows cut three ways, and the labelled anomalies."""

    labels: np.ndarray | None
    normal: np.ndarray
    anomalies: np.ndarray
    train: np.ndarray
    validation: np.ndarray
    calibration: np.ndarray
    # Normal rows an analyst called false positives: all in ``train``, and calibrated on.
    false_positive: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    confirmed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


@dataclass(frozen=True)
class FitChoices:
    """What the options left to the data came to for this fit."""

    method: Literal["holdout", "cross_fit"]
    scaler_kind: Literal["minmax", "standard"]
    error: artifact.ScoreError
    spec: ModelSpec
    batch_size: int
    score: artifact.PointScore = "mean"
    folds: int = CROSS_FIT_FOLDS  # networks of the cross-fit, when ``method`` is "cross_fit"
    epochs: int = 150  # the training budget: ``epochs``, or less with a short fit


@dataclass(frozen=True)
class Training:
    """The final network, the scaler fitted on its training rows, and how training went."""

    model: keras.Model
    scaler: artifact.Scaler
    scaled: np.ndarray  # every input row, scaled
    history: dict[str, list[float]]
    best_epoch: int
    seconds: float
    feature_scales: np.ndarray | None = None  # the "feature_max" score's, from the training rows


@dataclass(frozen=True)
class Heldout:
    """The rows the weights never saw (validation, calibration, anomalies) and their errors."""

    rows: np.ndarray
    labels: np.ndarray
    errors: np.ndarray
    calibration_errors: np.ndarray  # the final model's errors of the calibration rows alone


def split_normal_rows(
    n: int, validation_split: float, calibration_split: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle ``range(n)`` with ``seed`` and cut it into train / validation / calibration."""
    for name, frac in (
        ("--validation-split", validation_split),
        ("calibration split", calibration_split),
    ):
        if not 0.0 < frac < 0.5:
            raise ConfigError(f"{name} must be between 0 and 0.5, got {frac}")
    n_val = max(MIN_VALIDATION_ROWS, int(round(n * validation_split)))
    n_cal = max(MIN_CALIBRATION_ROWS, int(round(n * calibration_split)))
    n_train = n - n_val - n_cal
    if n_train < MIN_TRAIN_ROWS:
        need = MIN_TRAIN_ROWS + MIN_VALIDATION_ROWS + MIN_CALIBRATION_ROWS
        raise DataError(
            f"too few normal rows to train: {n} (need at least {max(need, 20)} to hold out "
            "validation and calibration rows)"
        )
    order = np.random.default_rng(seed).permutation(n)
    return order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]


def default_batch_size(n_train: int) -> int:
    """Small data gets small batches (enough updates per epoch); large data up to 256."""
    target = min(256, max(16, n_train // 32))
    return int(2 ** round(math.log2(target)))


def short_fit_applies(requested: str, image: bool, n_normal: int) -> bool:
    """Resolve ``FitOptions.short_fit``: "auto" shortens the fit of small tables only."""
    if requested not in SHORT_FIT_CHOICES:
        raise ConfigError(
            f"--short-fit must be one of {', '.join(SHORT_FIT_CHOICES)}, got {requested!r}"
        )
    if requested == "auto":
        return not image and n_normal < CROSS_FIT_MAX_ROWS
    return requested == "on"


def fit_model(
    x: np.ndarray,
    feature_names: Sequence[str],
    labels: np.ndarray | None = None,
    options: FitOptions | None = None,
    *,
    source: str = "array",
    quiet: bool = False,
    log: Callable[[str], None] | None = None,
    feedback: FeedbackLabels | None = None,
) -> TrainedModel:
    """Train, early-stop and calibrate an autoencoder on the normal rows of ``x``.

    ``feedback`` (one label per row of ``x``) leaves confirmed rows out and trains and
    calibrates on false positives (`trainer.fit_feedback`). Raises `DataError`/`ConfigError`
    before any training when the data or options cannot work.
    """
    opts = options or FitOptions()
    say = (lambda _msg: None) if quiet else (log or (lambda msg: print(msg, file=sys.stderr)))
    x, labels = _check_inputs(x, feature_names, labels, opts)
    if feedback is not None and feedback.rows.shape != (x.shape[0],):
        raise DataError(f"{feedback.rows.shape[0]} feedback labels for {x.shape[0]} rows")
    labels = merge_labels(labels, feedback, x.shape[0])
    split = _split_rows(labels, x.shape[0], opts, false_positive_rows(labels, feedback))
    if feedback is not None:
        split = replace(split, confirmed=np.flatnonzero(feedback.confirmed & (labels != 0)))
    choices = _choose_defaults(opts, x.shape[1], split)
    training = _train(x, split, choices, opts, say, quiet=quiet)
    heldout = _score_heldout(split, choices, training)
    threshold = calibrate_threshold(x, split, choices, training, heldout, opts, say, quiet=quiet)
    notes = threshold_notes(split, choices, threshold, opts)
    manifest = build_manifest(
        x,
        feature_names,
        split,
        choices,
        threshold,
        opts,
        source=source,
        metrics=validation_metrics(split, training, heldout, threshold, opts),
        notes=notes,
        feature_scales=training.feature_scales,
    )
    if feedback is not None:
        summary = feedback_summary(
            feedback,
            threshold_before=threshold.before_feedback,
            threshold_after=threshold.value,
            false_positive_above=threshold.false_positive_above,
        )
        notes = [*notes, feedback_note(summary, threshold.value)]
        manifest = manifest.model_copy(update={"feedback": summary, "notes": notes})
    return TrainedModel(
        model=training.model,
        scaler=training.scaler,
        manifest=manifest,
        spec=choices.spec,
        history=training.history,
        best_epoch=training.best_epoch,
        heldout_x=x[heldout.rows],
        heldout_labels=heldout.labels,
        heldout_errors=heldout.errors,
        calibration_errors=threshold.errors,
        train_seconds=training.seconds,
        notes=notes,
    )


def _check_inputs(
    x: np.ndarray, feature_names: Sequence[str], labels: np.ndarray | None, opts: FitOptions
) -> tuple[np.ndarray, np.ndarray | None]:
    """Refuse data and options that cannot work, before any training; rows as float64."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise DataError(f"expected a 2-D table of rows x features, got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError("the data is empty: no rows or no features")
    if len(feature_names) != x.shape[1]:
        raise DataError(f"{len(feature_names)} feature names for {x.shape[1]} columns")
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(f"non-finite value in row {row}, feature {feature_names[col]!r}")
    n_total, n_features = x.shape
    if opts.image_shape is not None:
        size = int(np.prod(opts.image_shape))
        if size != n_features:
            raise DataError(
                f"image shape {'x'.join(map(str, opts.image_shape))} holds {size} values "
                f"but the data has {n_features} features"
            )
    if not 0.0 < opts.percentile < 100.0:
        raise ConfigError(f"--percentile must be between 0 and 100, got {opts.percentile}")
    if not opts.outlier_fence >= 0.0:
        raise ConfigError(f"--outlier-fence must be 0 (off) or positive, got {opts.outlier_fence}")
    if opts.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {opts.epochs}")
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64)
        if labels.shape != (n_total,):
            raise DataError(f"{labels.shape[0]} labels for {n_total} rows")
    return x, labels


def _split_rows(
    labels: np.ndarray | None,
    n_total: int,
    opts: FitOptions,
    false_positive: np.ndarray | None = None,
) -> RowSplit:
    """Leave labelled anomalies out and cut the normal rows into train, validation, calibration;
    ``false_positive`` rows (normal ones) all go to train."""
    if labels is not None:
        normal, anomalies = np.flatnonzero(labels == 0), np.flatnonzero(labels != 0)
    else:
        normal, anomalies = np.arange(n_total), np.arange(0)
    fp = np.zeros(0, np.int64) if false_positive is None else np.asarray(false_positive, np.int64)
    rest = np.setdiff1d(normal, fp) if fp.size else normal
    train, val, cal = split_normal_rows(
        rest.size, opts.validation_split, opts.calibration_split, opts.seed
    )
    return RowSplit(
        labels,
        normal,
        anomalies,
        np.concatenate([rest[train], fp]),
        rest[val],
        rest[cal],
        false_positive=fp,
    )


def _choose_defaults(opts: FitOptions, n_features: int, split: RowSplit) -> FitChoices:
    """Fill what the options leave open from the data: images and tables get different defaults."""
    image = opts.image_shape is not None
    method = calibration_method(opts.calibration, split.normal.size)
    scaler_kind = opts.scaler or ("minmax" if image or opts.loss == "bce" else "standard")
    error: artifact.ScoreError = opts.error or ("mae" if image else "mse")
    if error not in ("mse", "mae"):
        raise ConfigError(f"--error must be mse or mae, got {error!r}")
    if opts.loss == "bce" and scaler_kind != "minmax":
        raise ConfigError("--loss bce needs inputs in [0, 1]: use --scaler minmax (or --loss mse)")
    spec = make_spec(
        n_features=n_features,
        architecture=opts.architecture,
        image_shape=opts.image_shape,
        hidden=opts.hidden,
        latent=opts.latent,
        loss=opts.loss,
        denoise=opts.denoise if opts.denoise is not None else (IMAGE_DENOISE if image else None),
        seed=opts.seed,
        activation=opts.activation or ("relu" if image else "tanh"),
        sparsity=opts.sparsity,
        kl_weight=opts.kl_weight,
    )
    batch_size = opts.batch_size or default_batch_size(split.train.size)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    short = short_fit_applies(opts.short_fit, image, split.normal.size)
    epochs = min(opts.epochs, SHORT_FIT_EPOCHS) if short else opts.epochs
    score: artifact.PointScore = opts.score or ("mean" if image else "feature_max")
    if score not in ("mean", "feature_max"):
        raise ConfigError(f"--point-score must be mean or feature-max, got {score!r}")
    return FitChoices(method, scaler_kind, error, spec, batch_size, score, epochs=epochs)


def _train(
    x: np.ndarray,
    split: RowSplit,
    choices: FitChoices,
    opts: FitOptions,
    say: Callable[[str], None],
    *,
    quiet: bool,
) -> Training:
    """Fit the scaler on the training rows and train the final network, early-stopping on validation."""
    spec = choices.spec
    scaler = artifact.Scaler.fit(x[split.train], choices.scaler_kind)
    xs = scaler.transform(x)
    say(
        f"training a {spec.architecture} autoencoder ({x.shape[1]} -> {spec.latent}) on "
        f"{split.train.size} rows, validating on {split.validation.size}, calibrating on "
        f"{split.calibration.size}"
        + (f"; {split.anomalies.size} labelled anomalies left out" if split.anomalies.size else "")
    )
    started = time.perf_counter()
    with track("training", choices.epochs, unit="epoch", quiet=quiet) as progress:
        model, history = train_network(
            spec,
            xs[split.train],
            xs[split.validation],
            epochs=choices.epochs,
            batch_size=choices.batch_size,
            learning_rate=opts.learning_rate,
            patience=opts.patience,
            callbacks=[epoch_progress(progress)],
        )
    seconds = time.perf_counter() - started
    val_losses = history.get("val_loss", [])
    best_epoch = int(np.argmin(val_losses)) + 1 if val_losses else len(history["loss"])
    say(
        f"trained {model.count_params():,} weights for {len(history['loss'])} epochs in "
        f"{seconds:.1f}s; best val_loss "
        f"{min(val_losses):.5f} at epoch {best_epoch}"
    )
    scales = None
    if choices.score == "feature_max":
        scales = feature_error_scales(model, xs[split.train], spec.input_shape, choices.error)
    return Training(model, scaler, xs, history, best_epoch, seconds, scales)


def _score_heldout(split: RowSplit, choices: FitChoices, training: Training) -> Heldout:
    """The final network's errors of the rows it never trained on."""
    model, xs, shape = training.model, training.scaled, choices.spec.input_shape
    rows = np.concatenate([split.validation, split.calibration, split.anomalies])
    labels = split.labels[rows] if split.labels is not None else np.zeros(rows.size, np.int64)
    scales = training.feature_scales
    return Heldout(
        rows=rows,
        labels=labels,
        errors=reconstruction_errors(model, xs[rows], shape, choices.error, feature_scales=scales),
        calibration_errors=reconstruction_errors(
            model, xs[split.calibration], shape, choices.error, feature_scales=scales
        ),
    )
