"""Training, threshold calibration and publishing of one model version.

The normal rows (label 0, or every row when there are no labels) are split three ways with a
seeded shuffle: *train* (the only rows the weights and the scaler see), *validation* (early
stopping keeps the weights with the lowest validation loss) and *calibration* (never used for
training or model selection; the threshold is the ``percentile`` of their reconstruction errors,
so about ``100 - percentile`` % of unseen normal records score above it).

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
counted in ``validation_metrics["calibration_outliers"]`` and named in the notes.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from anomaly_contract import artifact
from anomaly_contract.errors import AnomalyError, ConfigError, DataError
from anomaly_contract.model_dir import (
    next_version_name,
    publish_staged,
    staging_dir,
    utc_now,
    write_version_files,
)
from trainer import calibration
from trainer.models import ModelSpec, build_autoencoder, compile_autoencoder, make_spec

if TYPE_CHECKING:  # pragma: no cover
    import keras

MIN_TRAIN_ROWS = 10
MIN_VALIDATION_ROWS = 2
MIN_CALIBRATION_ROWS = 5
# With fewer normal rows than this, the calibration share is too small for a steady high
# percentile: 150 normal rows leave 22 calibration rows, whose 99th percentile is about their
# maximum; 1,300 leave 195, of which only ~2 lie above it, so the share of unseen rows above the
# threshold still varies by more than half between seeds. The threshold is then taken from
# cross-fitted errors of every normal row instead (`cross_fitted_errors`): CROSS_FIT_FOLDS extra
# trainings, seconds at this size (digits' 1,797 x 64 rows: ~20 s each).
CROSS_FIT_MAX_ROWS = 2000
CROSS_FIT_FOLDS = 3
# Tukey's "far out" fence: Q3 + 3 IQR. On log errors it lies ~4.7 standard deviations above the
# median of a log-normal, so it leaves out about one row in a million of a clean distribution.
OUTLIER_FENCE_IQR = 3.0
# Images train as denoising autoencoders by default: Gaussian noise of this std on the scaled
# pixels. Measured with the absolute error and the fence (benchmarks/quality.py, 3 splits): ROC-AUC
# equal or higher on all 11 digit sets, F1 on digit 3 0.720 -> 0.805 and digit 5 0.871 -> 0.911.
IMAGE_DENOISE = 0.1


@dataclass(frozen=True)
class FitOptions:
    """Hyper-parameters; ``None`` means "choose from the data" (see `resolve`)."""

    architecture: Literal["dense", "conv", "vae"] | None = None
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


@dataclass
class TrainedModel:
    """A fitted, calibrated model that is not published yet, plus what reports need."""

    model: keras.Model
    scaler: artifact.Scaler
    manifest: artifact.Manifest  # version "unpublished" until `publish_model`
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


def set_determinism(seed: int) -> None:
    """Same data and seed give the same weights and threshold on CPU."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


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


def reconstruction_errors(
    model: keras.Model,
    xs: np.ndarray,
    input_shape: Sequence[int],
    error: artifact.ScoreError,
) -> np.ndarray:
    """Mean reconstruction error per row in scaled space: the same formula as ``ModelBundle.score``."""
    out = np.empty(xs.shape[0], dtype=np.float64)
    for start in range(0, xs.shape[0], artifact.SCORE_CHUNK_ROWS):
        chunk = xs[start : start + artifact.SCORE_CHUNK_ROWS]
        rec = np.asarray(model(chunk.reshape(-1, *input_shape), training=False))
        fe = artifact.feature_errors(chunk, rec.reshape(chunk.shape[0], -1), error)
        out[start : start + chunk.shape[0]] = fe.mean(axis=1, dtype=np.float64)
    return out


def calibration_method(requested: str, n_normal: int) -> Literal["holdout", "cross_fit"]:
    """Resolve ``FitOptions.calibration``: "auto" cross-fits small data only."""
    if requested == "auto":
        return "cross_fit" if n_normal < CROSS_FIT_MAX_ROWS else "holdout"
    if requested not in ("holdout", "cross_fit"):
        raise ConfigError(f"calibration must be auto, holdout or cross_fit, got {requested!r}")
    return requested  # type: ignore[return-value]


def outlier_fence(errors: np.ndarray, k: float = OUTLIER_FENCE_IQR) -> float:
    """The error above which a calibration row counts as an anomaly among the normal rows.

    Tukey's upper fence ``Q3 + k * IQR`` computed on log errors (reconstruction errors are
    heavy-tailed and log-normal-ish) and mapped back; infinite when ``k <= 0`` or the quartiles
    coincide (no spread to measure against).
    """
    if k <= 0 or errors.size == 0:
        return math.inf
    logs = np.log(np.maximum(np.asarray(errors, dtype=np.float64), 1e-12))
    q1, q3 = np.percentile(logs, [25, 75])
    if not q3 > q1:
        return math.inf
    return float(np.exp(q3 + k * (q3 - q1)))


def cross_fit_folds(n: int, folds: int, seed: int) -> np.ndarray:
    """Fold number (0 .. folds-1) of each of ``n`` rows: balanced, shuffled with ``seed``."""
    return np.random.default_rng([seed, 7]).permutation(n) % folds


def _train_network(
    spec: ModelSpec,
    opts: FitOptions,
    x_train: np.ndarray,
    x_val: np.ndarray | None,
    batch_size: int,
    callbacks: Sequence[Any] = (),
    *,
    epochs: int | None = None,
    fresh_session: bool = True,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Build and train one network on scaled rows; initial weights and shuffling follow ``spec.seed``.

    With ``x_val`` it early-stops on it and keeps the best weights; without, it runs ``epochs``.
    """
    import keras

    if fresh_session:
        keras.backend.clear_session()
    set_determinism(spec.seed)
    model = build_autoencoder(spec)
    compile_autoencoder(model, spec.loss, opts.learning_rate)
    shape = spec.input_shape
    if spec.loss == "bce":
        # Validation rows may fall slightly outside the training range; bce targets must not.
        x_train = np.clip(x_train, 0.0, 1.0)
        x_val = None if x_val is None else np.clip(x_val, 0.0, 1.0)
    stops: list[Any] = [keras.callbacks.TerminateOnNaN()]
    validation = None
    if x_val is not None:
        validation = (x_val.reshape(-1, *shape), x_val.reshape(-1, *shape))
        stops.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=opts.patience, restore_best_weights=True
            )
        )
    hist = model.fit(
        x_train.reshape(-1, *shape),
        x_train.reshape(-1, *shape),
        validation_data=validation,
        epochs=epochs or opts.epochs,
        batch_size=batch_size,
        shuffle=True,
        callbacks=[*stops, *callbacks],
        verbose=0,
    )
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    if not history.get("loss") or not all(math.isfinite(v) for v in history["loss"]):
        raise AnomalyError(
            "training diverged (loss became NaN): try a lower learning rate or --scaler standard"
        )
    return model, history


def cross_fitted_errors(
    x_normal: np.ndarray,
    spec: ModelSpec,
    opts: FitOptions,
    scaler_kind: Literal["minmax", "standard"],
    error: artifact.ScoreError,
    batch_size: int,
    epochs: int,
    folds: int = CROSS_FIT_FOLDS,
) -> np.ndarray:
    """Out-of-fold reconstruction errors of every normal row, in the rows' order.

    The rows are cut into ``folds`` seeded folds; for each, a scaler and a network are fitted on
    the other folds for ``epochs`` (the final model's best epoch: no early stopping, so no rows go
    to validation) and score the held-out fold. Every error comes from a model that never saw its
    row, like a calibration row's, but there are ``n`` of them instead of ~15 % of ``n``. With 3
    folds each network trains on 2/3 of the rows, close to the final model's 70 %.
    """
    n = x_normal.shape[0]
    fold_of = cross_fit_folds(n, folds, opts.seed)
    errors = np.empty(n, dtype=np.float64)
    for k in range(folds):
        held, rest = np.flatnonzero(fold_of == k), np.flatnonzero(fold_of != k)
        scaler = artifact.Scaler.fit(x_normal[rest], scaler_kind)
        model, _ = _train_network(
            replace(spec, seed=opts.seed + 1000 * (k + 1)),
            opts,
            scaler.transform(x_normal[rest]),
            None,
            batch_size,
            epochs=epochs,
            fresh_session=False,  # the final model is alive; keep its layer names untouched
        )
        errors[held] = reconstruction_errors(
            model, scaler.transform(x_normal[held]), spec.input_shape, error
        )
    return errors


def library_versions() -> dict[str, str]:
    import keras
    import sklearn
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "scikit-learn": sklearn.__version__,
    }


class _ProgressLine:
    """A compact per-epoch line on stderr (Keras' own progress bars are too chatty for logs)."""

    def __init__(self, epochs: int, stream: Any = None) -> None:
        import keras

        stream = stream or sys.stderr
        outer = self

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                outer.started = time.perf_counter()

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                logs = logs or {}
                took = time.perf_counter() - outer.started
                print(
                    f"epoch {epoch + 1:>3}/{epochs}  loss {logs.get('loss', float('nan')):.5f}  "
                    f"val_loss {logs.get('val_loss', float('nan')):.5f}  {took:.1f}s",
                    file=stream,
                    flush=True,
                )

        self.started = 0.0
        self.callback = Callback()


def _check_array(x: np.ndarray, feature_names: Sequence[str]) -> np.ndarray:
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
    return x


def fit_model(
    x: np.ndarray,
    feature_names: Sequence[str],
    labels: np.ndarray | None = None,
    options: FitOptions | None = None,
    *,
    source: str = "array",
    quiet: bool = False,
    log: Callable[[str], None] | None = None,
) -> TrainedModel:
    """Train, early-stop and calibrate an autoencoder on the normal rows of ``x``.

    Raises `DataError`/`ConfigError` before any training when the data or options cannot work.
    """

    opts = options or FitOptions()
    say = (lambda _msg: None) if quiet else (log or (lambda msg: print(msg, file=sys.stderr)))
    x = _check_array(x, feature_names)
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
        normal_idx = np.flatnonzero(labels == 0)
        anomaly_idx = np.flatnonzero(labels != 0)
    else:
        normal_idx = np.arange(n_total)
        anomaly_idx = np.arange(0)
    train_i, val_i, cal_i = split_normal_rows(
        normal_idx.size, opts.validation_split, opts.calibration_split, opts.seed
    )
    train_i, val_i, cal_i = normal_idx[train_i], normal_idx[val_i], normal_idx[cal_i]
    method = calibration_method(opts.calibration, normal_idx.size)

    scaler_kind = opts.scaler or (
        "minmax" if opts.image_shape or opts.loss == "bce" else "standard"
    )
    error: artifact.ScoreError = opts.error or ("mae" if opts.image_shape else "mse")
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
        denoise=opts.denoise
        if opts.denoise is not None
        else (IMAGE_DENOISE if opts.image_shape else None),
        seed=opts.seed,
        activation=opts.activation or ("relu" if opts.image_shape else "tanh"),
        sparsity=opts.sparsity,
        kl_weight=opts.kl_weight,
    )
    shape = spec.input_shape
    scaler = artifact.Scaler.fit(x[train_i], scaler_kind)
    xs = scaler.transform(x)
    x_train, x_val = xs[train_i], xs[val_i]
    batch_size = opts.batch_size or default_batch_size(train_i.size)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")

    say(
        f"training a {spec.architecture} autoencoder ({n_features} -> {spec.latent}) on "
        f"{train_i.size} rows, validating on {val_i.size}, calibrating on {cal_i.size}"
        + (f"; {anomaly_idx.size} labelled anomalies left out" if anomaly_idx.size else "")
    )
    callbacks: list[Any] = [] if quiet else [_ProgressLine(opts.epochs).callback]
    started = time.perf_counter()
    model, history = _train_network(spec, opts, x_train, x_val, batch_size, callbacks)
    train_seconds = time.perf_counter() - started
    val_losses = history.get("val_loss", [])
    best_epoch = int(np.argmin(val_losses)) + 1 if val_losses else len(history["loss"])
    say(
        f"trained {model.count_params():,} weights for {len(history['loss'])} epochs in "
        f"{train_seconds:.1f}s; best val_loss "
        f"{min(val_losses):.5f} at epoch {best_epoch}"
    )

    cal_errors = reconstruction_errors(model, xs[cal_i], shape, error)
    heldout_idx = np.concatenate([val_i, cal_i, anomaly_idx])
    heldout_labels = (
        labels[heldout_idx] if labels is not None else np.zeros(heldout_idx.size, np.int64)
    )
    heldout_errors = reconstruction_errors(model, xs[heldout_idx], shape, error)
    started = time.perf_counter()
    if method == "cross_fit":
        say(
            f"cross-fitting the threshold: {CROSS_FIT_FOLDS} more networks of {best_epoch} epochs, "
            f"each scoring the 1/{CROSS_FIT_FOLDS} of the {normal_idx.size} normal rows it did not see"
        )
        threshold_errors = cross_fitted_errors(
            x[normal_idx], spec, opts, scaler_kind, error, batch_size, best_epoch
        )
        threshold_rows = normal_idx
    else:
        threshold_errors, threshold_rows = cal_errors, cal_i
    calibration_seconds = time.perf_counter() - started
    fence = outlier_fence(threshold_errors, opts.outlier_fence)
    outlier_rows = np.sort(threshold_rows[threshold_errors > fence])
    threshold, stats = calibration.calibrate(threshold_errors, opts.percentile, fence=fence)
    metrics: dict[str, float] = {
        "val_loss": float(min(val_losses)),
        "train_loss": float(history["loss"][best_epoch - 1]),
        "best_epoch": float(best_epoch),
        "epochs_run": float(len(history["loss"])),
        "calibration_error_mean": float(cal_errors.mean()),
        # The percentile of the final model's own calibration rows, for comparison with the
        # cross-fitted threshold (equal to it with holdout calibration).
        "holdout_threshold": float(np.percentile(cal_errors, opts.percentile)),
        "calibration_seconds": calibration_seconds,
        "calibration_outliers": float(outlier_rows.size),
        # What the threshold would be with the outliers counted, for comparison.
        "threshold_with_outliers": float(np.percentile(threshold_errors, opts.percentile)),
    }
    if anomaly_idx.size:
        from sklearn.metrics import average_precision_score, roc_auc_score

        truth = (heldout_labels != 0).astype(int)
        metrics["roc_auc"] = float(roc_auc_score(truth, heldout_errors))
        metrics["pr_auc"] = float(average_precision_score(truth, heldout_errors))
        metrics["heldout_recall"] = float(np.mean(heldout_errors[truth == 1] > threshold))
    notes = []
    if method == "cross_fit":
        notes.append(
            f"threshold cross-fitted: the {opts.percentile:g}th percentile of out-of-fold errors of "
            f"all {normal_idx.size} normal rows ({CROSS_FIT_FOLDS} folds), because "
            f"{cal_i.size} calibration rows are too few for a steady estimate"
        )
    elif cal_i.size < 100 and opts.percentile >= 99:
        notes.append(
            f"only {cal_i.size} calibration rows: the {opts.percentile:g}th percentile is close to "
            "their maximum; more normal data gives a steadier threshold"
        )
    if outlier_rows.size:
        shown = ", ".join(str(int(i)) for i in outlier_rows[:10])
        more = f" and {outlier_rows.size - 10} more" if outlier_rows.size > 10 else ""
        notes.append(
            f"{outlier_rows.size} of {threshold_errors.size} normal rows reconstruct far worse than "
            f"the rest (error above {fence:.4g}, the far-out fence of the log errors) and were left "
            f"out of the threshold; they look like anomalies in the training data: rows {shown}"
            f"{more} (0-based, in input order)"
        )
    hyper: dict[str, Any] = {
        **{k: v for k, v in asdict(opts).items() if k not in ("image_shape",)},
        "architecture": spec.architecture,
        "hidden": list(spec.hidden),
        "latent": spec.latent,
        "scaler": scaler_kind,
        "activation": spec.activation,
        "batch_size": batch_size,
        "calibration": method,
        "error": error,
        "denoise": spec.denoise,
        "sparsity": spec.sparsity,
        **({"kl_weight": spec.kl_weight} if spec.architecture == "vae" else {}),
        **({"calibration_folds": CROSS_FIT_FOLDS} if method == "cross_fit" else {}),
    }
    manifest = artifact.Manifest(
        version="unpublished",
        created_at=utc_now(),
        architecture=spec.architecture,
        feature_names=list(feature_names),
        input_shape=list(shape),
        image_shape=list(spec.image_shape) if spec.image_shape else None,
        latent_dim=spec.latent,
        loss=spec.loss,
        error=error,
        denoise=spec.denoise,
        threshold=threshold,
        percentile=opts.percentile,
        calibration=stats,
        data_source=source,
        data_fingerprint=calibration.fingerprint_arrays([x[normal_idx]], list(feature_names)),
        rows=artifact.RowCounts(
            total=n_total,
            train=int(train_i.size),
            validation=int(val_i.size),
            calibration=int(cal_i.size),
            excluded_labelled=int(anomaly_idx.size),
        ),
        hyperparameters=hyper,
        validation_metrics=metrics,
        library_versions=library_versions(),
        notes=notes,
    )
    return TrainedModel(
        model=model,
        scaler=scaler,
        manifest=manifest,
        spec=spec,
        history=history,
        best_epoch=best_epoch,
        heldout_x=x[heldout_idx],
        heldout_labels=heldout_labels,
        heldout_errors=heldout_errors,
        calibration_errors=threshold_errors,
        train_seconds=train_seconds,
        notes=notes,
    )


def publish_model(
    trained: TrainedModel,
    model_dir: str | Path,
    *,
    keep: int = artifact.DEFAULT_KEEP,
    make_current: bool = True,
) -> str:
    """Write the version aside and make it current atomically; returns its name (``v3``)."""
    with staging_dir(model_dir) as staging:
        version = next_version_name(model_dir)
        manifest = trained.manifest.model_copy(update={"version": version, "created_at": utc_now()})
        write_version_files(staging, trained.model, trained.scaler, manifest)
        published = publish_staged(model_dir, staging, keep=keep, make_current=make_current)
    trained.manifest = manifest
    return published
