"""Fitting a windowed model: one network for every series key, judged per key.

Rows become causal windows of W rows per key (`anomaly_contract.windows`). Each key's rows are
split in time, the first part trains, the next validates (early stopping), the last calibrates,
and windows straddling a boundary are dropped, so no calibration window shares a row with a
training window. A window holding a labelled row is neither trained nor calibrated on.

Keys differ in level and spread, so every window is normalised with its key's channel means and
standard deviations, fitted on the key's training rows (`KeyNormaliser`, stored with the model;
a key the model never saw learns its own online at serving). Thresholds are per key: the
``percentile`` of each key's own calibration errors, pooled for keys with too few
(`KeyThresholds`). The score comes from the element errors of the window's last rows, as
`SeriesModel` computes it (`window_scores`): by default (``series_score = "blend"``) the mean
over channels and the largest channel error over its key's scale, each over its own calibrated
scale, averaged; or either alone (``"mean"``; ``"channel_max"``, ``"channel_max_per_key"``).
The scales are learnt after training (`trainer.series_score_scales`); the thresholds are then
the percentiles of that score. The network scores a window shown with its history (the rows
before the scored ones) clipped to per-channel bounds learnt from the training rows
(`trainer.history_clip`), the errors measured against the window as it is (`clip_history`), so
a past spike does not raise the next W-1 rows' scores; it trains on the windows as they are.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from anomaly_contract import artifact
from anomaly_contract.errors import ConfigError, DataError
from anomaly_contract.key_normaliser import KeyNormaliser
from anomaly_contract.key_thresholds import fit_key_thresholds
from anomaly_contract.series import clip_history, window_scores
from anomaly_contract.windows import WindowIndex, index_windows, split_windows_in_time
from trainer.data_series import SeriesData
from trainer.feedback import FeedbackLabels
from trainer.fit import FitOptions, TrainedModel, default_batch_size
from trainer.fit_feedback import (
    confirmed_windows,
    false_positive_windows,
    merge_labels,
    raise_key_thresholds,
    with_series_feedback,
)
from trainer.history_clip import DEFAULT_HISTORY_CLIP, HistoryClipOption, history_bounds
from trainer.models import ModelSpec, make_spec
from trainer.progress import track
from trainer.series_manifest import series_manifest
from trainer.series_score_scales import (
    DEFAULT_SERIES_SCORE,
    ScoreScales,
    SeriesScore,
    check_series_score,
    fit_series_score_scales,
    scales_for_keys,
)
from trainer.training import epoch_progress, reconstruction_errors, train_network

if TYPE_CHECKING:  # pragma: no cover
    import keras

WINDOW_ARCHITECTURES = ("lstm", "conv1d", "dense")
# Chosen by measurement (README, "Series per key"; benchmarks/quality_series.py, 3 seeds): the
# steadiest event recall at a 2 % FPR over both generated families (machines 0.981, machines-ar
# 0.941; lstm and dense lost one seed in three on machines-ar), ROC-AUC level with the others, and
# 2-3x faster than lstm to train and to score. lstm leads on machines alone in PR-AUC.
DEFAULT_WINDOW_ARCHITECTURE = "conv1d"
# Training windows overlap by W-1 rows, so neighbours teach little more than one of them; an
# even subsample bounds an epoch's time on long series without losing any key or stretch.
MAX_TRAIN_WINDOWS = 20_000
# A window scores the errors of its last row only: averaging all W rows let one spike raise the
# scores of the W-1 normal rows after it (measured in the README, "Series per key").
DEFAULT_SCORE_STEPS = 1
MIN_TRAIN_WINDOWS = 10
MIN_VALIDATION_WINDOWS = 2
MIN_CALIBRATION_WINDOWS = 5


@dataclass(frozen=True)
class WindowParts:
    """Window numbers (into the `WindowIndex`) of each part, labelled windows left out."""

    index: WindowIndex
    train: np.ndarray
    validation: np.ndarray
    calibration: np.ndarray
    labelled: np.ndarray  # windows holding a labelled row (held out for the metrics)


@dataclass(frozen=True, eq=False)
class WindowInputs:
    """Every row normalised with its key's statistics, and how windows of it feed a network."""

    normalised: np.ndarray  # (rows, channels)
    parts: WindowParts
    spec: ModelSpec
    error: artifact.ScoreError
    score_steps: int
    history_clip: tuple[np.ndarray, np.ndarray] | None  # per-channel (low, high), or none
    # Set once learnt: what the score rule needs (all None for the mean score).
    score_scales: ScoreScales = ScoreScales()

    def of(self, selection: np.ndarray) -> np.ndarray:
        """The selected windows flattened (n, W * channels), as the network trains on them."""
        return self.normalised[self.parts.index.rows[selection]].reshape(selection.size, -1)

    def element_errors(self, model: keras.Model, selection: np.ndarray) -> np.ndarray:
        """The selected windows' element errors (n, W, channels), as `SeriesModel` scores
        them: the network shown the windows with their history clipped (`clip_history`), the
        errors against the windows as they are."""
        windows = self.normalised[self.parts.index.rows[selection]]
        shown = clip_history(windows, self.history_clip, self.score_steps)
        flat = reconstruction_errors(
            model,
            shown.reshape(selection.size, -1),
            self.spec.input_shape,
            self.error,
            reduce=False,
            targets=windows.reshape(selection.size, -1),
        )
        return flat.reshape(selection.size, self.parts.index.window, -1)

    def scores(self, model: keras.Model, selection: np.ndarray) -> np.ndarray:
        """The windows' scores, as `SeriesModel.score_windows` computes them."""
        errors = self.element_errors(model, selection)
        blend = self.score_scales.blend_scales
        return window_scores(errors, self.score_steps, self.scales_of(selection), blend)

    def scales_of(self, selection: np.ndarray) -> np.ndarray | None:
        """The channel scales of each selected window's key (n, C); None for a mean score."""
        index = self.parts.index
        names = index.key_names[index.window_keys[selection]]
        pooled, own, _ = self.score_scales
        return scales_for_keys(pooled, own, names)


def fit_series_model(
    data: SeriesData,
    window: int,
    options: FitOptions | None = None,
    *,
    quiet: bool = False,
    log: Callable[[str], None] | None = None,
    max_train_windows: int = MAX_TRAIN_WINDOWS,
    score_steps: int = DEFAULT_SCORE_STEPS,
    feedback: FeedbackLabels | None = None,
    series_score: SeriesScore = DEFAULT_SERIES_SCORE,
    history_clip: HistoryClipOption = DEFAULT_HISTORY_CLIP,
) -> TrainedModel:
    """Train and calibrate a windowed autoencoder on ``data``; `DataError`/`ConfigError` before
    any training when the data or options cannot work. At most ``max_train_windows`` training
    windows, evenly spread, feed the gradient steps; a window's score averages the errors of
    its last ``score_steps`` rows (``series_score``: over all channels, or the largest scaled
    channel error; ``history_clip``: see `trainer.history_clip`, None for none). ``feedback``
    (one label per row) works as for point models
    (`trainer.fit_feedback`), by windows: a window ending at a confirmed row is labelled, one
    ending at a false positive trains (and leaves the percentile), and its key's threshold is
    raised over it.
    """
    opts = options or FitOptions()
    say = (lambda _msg: None) if quiet else (log or (lambda msg: print(msg, file=sys.stderr)))
    _check_options(window, opts, score_steps, series_score)
    if feedback is not None:
        if feedback.rows.shape != (data.n_rows,):
            raise DataError(f"{feedback.rows.shape[0]} feedback labels for {data.n_rows} rows")
        data = replace(data, labels=merge_labels(data.labels, feedback, data.n_rows))
    parts, fp_windows = _split_with_false_positives(data, window, opts, feedback)
    train_rows = np.unique(parts.index.rows[parts.train])
    normaliser = KeyNormaliser.fit(data.x[train_rows], data.keys[train_rows])
    normalised = normaliser.transform_rows(data.x, data.keys)
    inputs = WindowInputs(
        normalised,
        parts,
        series_spec(opts, window, data.x.shape[1]),
        opts.error or "mse",
        score_steps,
        history_bounds(history_clip, normalised[train_rows]),
    )
    trained_on = _training_subsample(parts.train, fp_windows, max_train_windows)
    model, history, seconds = _train(inputs, trained_on, opts, say, quiet=quiet)
    window_keys = parts.index.key_names[parts.index.window_keys].astype(str)
    inputs = _with_score_scales(inputs, model, series_score, window_keys)
    cal_errors = inputs.scores(model, parts.calibration)
    thresholds = fit_key_thresholds(cal_errors, window_keys[parts.calibration], opts.percentile)
    raised: list[str] = []
    fp_above = 0
    if feedback is not None:
        thresholds, raised, fp_above = raise_key_thresholds(
            thresholds, inputs, model, fp_windows, confirmed_windows(parts, feedback), window_keys
        )
    heldout = np.concatenate([parts.validation, parts.calibration, parts.labelled])
    heldout_relative = thresholds.relative_scores(
        inputs.scores(model, heldout), window_keys[heldout]
    )
    heldout_labels = np.repeat(
        np.array([0, 1], dtype=np.int64),
        [parts.validation.size + parts.calibration.size, parts.labelled.size],
    )
    metrics = _metrics(history, heldout_relative, heldout_labels, cal_errors, seconds)
    metrics["train_windows_used"] = float(trained_on.size)
    say(f"trained in {seconds:.1f}s; best val_loss {metrics['val_loss']:.5f}")
    manifest = series_manifest(data, inputs, opts, normaliser, thresholds, cal_errors, metrics)
    manifest = with_series_feedback(manifest, feedback, thresholds.pooled, raised, fp_above)
    channels = data.x.shape[1]
    return TrainedModel(
        model=model,
        scaler=artifact.Scaler("standard", np.zeros(channels), np.ones(channels)),
        manifest=manifest,
        spec=inputs.spec,
        history=history,
        best_epoch=int(metrics["best_epoch"]),
        heldout_x=data.x[parts.index.end_rows[heldout]],
        heldout_labels=heldout_labels,
        heldout_errors=heldout_relative,
        calibration_errors=cal_errors,
        train_seconds=seconds,
        notes=manifest.notes,
    )


def _train(
    inputs: WindowInputs,
    trained_on: np.ndarray,
    opts: FitOptions,
    say: Callable[[str], None],
    *,
    quiet: bool,
) -> tuple[keras.Model, dict[str, list[float]], float]:
    """Train the network on the selected training windows, early-stopping on validation."""
    spec, parts = inputs.spec, inputs.parts
    say(
        f"training a windowed {spec.architecture} autoencoder (W={parts.index.window} x "
        f"{inputs.normalised.shape[1]} channels -> {spec.latent}) on {trained_on.size} windows "
        f"of {len(parts.index.key_names)} keys, validating on {parts.validation.size}, "
        f"calibrating on {parts.calibration.size}; {parts.labelled.size} windows with labelled "
        "rows left out"
    )
    started = time.perf_counter()
    with track("training", opts.epochs, unit="epoch", quiet=quiet) as progress:
        model, history = train_network(
            spec,
            inputs.of(trained_on),
            inputs.of(parts.validation),
            epochs=opts.epochs,
            batch_size=opts.batch_size or default_batch_size(trained_on.size),
            learning_rate=opts.learning_rate,
            patience=opts.patience,
            callbacks=[epoch_progress(progress)],
        )
    return model, history, time.perf_counter() - started


def _check_options(
    window: int, opts: FitOptions, score_steps: int, series_score: SeriesScore
) -> None:
    if window < 2:
        raise ConfigError(
            f"--window must be at least 2 (a window of 1 is a point model), got {window}"
        )
    if opts.architecture not in (None, *WINDOW_ARCHITECTURES):
        raise ConfigError(
            f"--architecture {opts.architecture} does not take windows: use "
            f"{', '.join(WINDOW_ARCHITECTURES)} with --window"
        )
    if opts.loss != "mse" or opts.image_shape is not None:
        raise ConfigError("windowed models train with --loss mse on tables (no --image-shape)")
    if opts.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {opts.epochs}")
    if not 0.0 < opts.percentile < 100.0:
        raise ConfigError(f"--percentile must be between 0 and 100, got {opts.percentile}")
    for name, share in (
        ("--validation-split", opts.validation_split),
        ("--calibration-split", opts.calibration_split),
    ):
        if not 0.0 < share < 0.5:
            raise ConfigError(f"{name} must be between 0 and 0.5, got {share}")
    if not 1 <= score_steps <= window:
        raise ConfigError(f"--score-steps must lie between 1 and the window {window}")
    check_series_score(series_score)


def split_series(data: SeriesData, window: int, opts: FitOptions) -> WindowParts:
    """Index the windows, split them in time per key and set the labelled ones aside."""
    bad = ~np.isfinite(data.x)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(f"non-finite value in row {row}, channel {data.channel_names[col]!r}")
    try:
        index = index_windows(data.keys, data.n_rows, window, data.times)
    except ValueError as exc:
        raise DataError(f"{data.source}: {exc}") from None
    split = split_windows_in_time(index, opts.validation_split, opts.calibration_split)
    labelled_row = np.zeros(data.n_rows, dtype=bool) if data.labels is None else (data.labels != 0)
    has_label = labelled_row[index.rows].any(axis=1)
    parts = WindowParts(
        index,
        split.train[~has_label[split.train]],
        split.validation[~has_label[split.validation]],
        split.calibration[~has_label[split.calibration]],
        np.flatnonzero(has_label & labelled_row[index.end_rows]),
    )
    _check_window_counts(data, window, parts, opts)
    return parts


def _split_with_false_positives(
    data: SeriesData, window: int, opts: FitOptions, feedback: FeedbackLabels | None
) -> tuple[WindowParts, np.ndarray]:
    """`split_series`, then the false-positive windows (returned too) moved into training."""
    parts = split_series(data, window, opts)
    fp_windows = false_positive_windows(parts, data, feedback)
    if fp_windows.size:
        parts = replace(
            parts,
            train=np.union1d(parts.train, fp_windows),
            validation=np.setdiff1d(parts.validation, fp_windows),
            calibration=np.setdiff1d(parts.calibration, fp_windows),
        )
    return parts, fp_windows


def _check_window_counts(
    data: SeriesData, window: int, parts: WindowParts, opts: FitOptions
) -> None:
    """Every key needs training windows (its statistics come from them); the parts need a few."""
    index = parts.index
    trained_keys = np.unique(index.window_keys[parts.train])
    short = np.setdiff1d(np.arange(len(index.key_names)), trained_keys)
    share = 1.0 - opts.validation_split - opts.calibration_split
    if short.size:
        key = index.key_names[short[0]]
        needed = int(np.ceil(window / min(share, opts.validation_split, opts.calibration_split)))
        raise DataError(
            f"{data.source}: key {str(key)!r} has {int(index.key_rows[short[0]])} rows, too few "
            f"for a training window of W={window} after the time split (give each key at least "
            f"~{needed} rows, with few labelled ones, or a smaller --window)"
        )
    counts = (parts.train.size, parts.validation.size, parts.calibration.size)
    minimum = (MIN_TRAIN_WINDOWS, MIN_VALIDATION_WINDOWS, MIN_CALIBRATION_WINDOWS)
    if any(c < m for c, m in zip(counts, minimum, strict=True)):
        raise DataError(
            f"{data.source}: only {counts[0]} training, {counts[1]} validation and {counts[2]} "
            f"calibration windows of W={window} (need {minimum[0]}, {minimum[1]} and "
            f"{minimum[2]}): give more rows per key or a smaller --window"
        )


def series_spec(opts: FitOptions, window: int, channels: int) -> ModelSpec:
    """lstm and conv1d take (W, channels); dense takes the flattened W * channels values."""
    architecture = opts.architecture or DEFAULT_WINDOW_ARCHITECTURE
    sequence = architecture != "dense"
    return make_spec(
        n_features=channels if sequence else window * channels,
        architecture=architecture,  # type: ignore[arg-type]
        hidden=opts.hidden,
        latent=opts.latent,
        denoise=opts.denoise,
        seed=opts.seed,
        activation=opts.activation or "tanh",
        sparsity=opts.sparsity,
        kl_weight=opts.kl_weight,
        window=window if sequence else None,
    )


def even_subsample(selection: np.ndarray, limit: int) -> np.ndarray:
    """At most ``limit`` entries of ``selection``, evenly spread (all of them when fewer)."""
    if selection.size <= limit:
        return selection
    picks = np.linspace(0, selection.size - 1, limit).round().astype(np.int64)
    return selection[np.unique(picks)]


def _training_subsample(train: np.ndarray, fp_windows: np.ndarray, limit: int) -> np.ndarray:
    """The training windows that feed the gradient steps: `even_subsample` of ``train``."""
    trained_on = even_subsample(train, limit)
    if fp_windows.size:  # false positives always train: the subsample could drop some
        rest = np.setdiff1d(train, fp_windows)
        trained_on = np.union1d(even_subsample(rest, max(1, limit - fp_windows.size)), fp_windows)
    return trained_on


def _with_score_scales(
    inputs: WindowInputs, model: keras.Model, series_score: SeriesScore, window_keys: np.ndarray
) -> WindowInputs:
    """``inputs`` with the channel scales ``series_score`` learns (both None for a mean score)."""
    parts = inputs.parts
    scales = fit_series_score_scales(
        series_score,
        lambda selection: inputs.element_errors(model, selection),
        parts.validation,
        parts.calibration,
        window_keys,
        inputs.score_steps,
    )
    return replace(inputs, score_scales=scales)


def _metrics(
    history: dict[str, list[float]],
    heldout_relative: np.ndarray,
    heldout_labels: np.ndarray,
    cal_errors: np.ndarray,
    seconds: float,
) -> dict[str, float]:
    val_losses = history.get("val_loss", [])
    best_epoch = int(np.argmin(val_losses)) + 1 if val_losses else len(history["loss"])
    metrics = {
        "val_loss": float(min(val_losses)) if val_losses else float("nan"),
        "train_loss": float(history["loss"][best_epoch - 1]),
        "best_epoch": float(best_epoch),
        "epochs_run": float(len(history["loss"])),
        "calibration_error_mean": float(cal_errors.mean()),
        "train_seconds": float(seconds),
    }
    if 0 < heldout_labels.sum() < heldout_labels.size:
        from sklearn.metrics import average_precision_score, roc_auc_score

        metrics["roc_auc"] = float(roc_auc_score(heldout_labels, heldout_relative))
        metrics["pr_auc"] = float(average_precision_score(heldout_labels, heldout_relative))
        metrics["heldout_recall"] = float(np.mean(heldout_relative[heldout_labels == 1] > 1.0))
    return metrics
