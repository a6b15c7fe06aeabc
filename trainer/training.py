"""One network's training and its reconstruction errors: what the fit and the cross-fit share."""

from __future__ import annotations

import math
import platform
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from anomaly_contract import artifact
from anomaly_contract.errors import AnomalyError
from trainer.models import ModelSpec, build_autoencoder, compile_autoencoder
from trainer.progress import Progress

if TYPE_CHECKING:  # pragma: no cover
    import keras


def set_determinism(seed: int) -> None:
    """Same data and seed give the same weights and threshold on CPU."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def train_network(
    spec: ModelSpec,
    x_train: np.ndarray,
    x_val: np.ndarray | None,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    patience: int,
    callbacks: Sequence[Any] = (),
    fresh_session: bool = True,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Build and train one network on scaled rows; initial weights and shuffling follow ``spec.seed``.

    With ``x_val`` it early-stops on it (after ``patience`` epochs without improvement) and keeps
    the best weights; without, it runs all ``epochs``.
    """
    import keras

    if fresh_session:
        keras.backend.clear_session()
    set_determinism(spec.seed)
    model = build_autoencoder(spec)
    compile_autoencoder(model, spec.loss, learning_rate)
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
                monitor="val_loss", patience=patience, restore_best_weights=True
            )
        )
    hist = model.fit(
        x_train.reshape(-1, *shape),
        x_train.reshape(-1, *shape),
        validation_data=validation,
        epochs=epochs,
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


def epoch_progress(progress: Progress) -> Any:
    """A Keras callback that advances ``progress`` by one per epoch, with loss and val_loss."""
    import keras

    class EpochProgress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = logs or {}
            figures = {k: float(logs[k]) for k in ("loss", "val_loss") if k in logs}
            progress.advance(1, **figures)

    return EpochProgress()


def reconstruction_errors(
    model: keras.Model,
    xs: np.ndarray,
    input_shape: Sequence[int],
    error: artifact.ScoreError,
    *,
    reduce: bool = True,
    feature_scales: np.ndarray | None = None,
    targets: np.ndarray | None = None,
) -> np.ndarray:
    """Each row's score in scaled space, the same formula as ``ModelBundle.score``: the mean
    reconstruction error, or with ``feature_scales`` the largest scaled one (`row_scores`).

    ``reduce=False`` returns the per-value errors (rows, values) instead, unscaled.
    ``targets`` (the shape of ``xs``): what the reconstructions of ``xs`` are measured against,
    when the network is shown something else than the rows scored (a clipped window)."""
    width = xs.shape[1] if xs.ndim == 2 else 1
    out = np.empty((xs.shape[0], width) if not reduce else xs.shape[0], dtype=np.float64)
    for start in range(0, xs.shape[0], artifact.SCORE_CHUNK_ROWS):
        chunk = xs[start : start + artifact.SCORE_CHUNK_ROWS]
        rec = np.asarray(model(chunk.reshape(-1, *input_shape), training=False))
        target = chunk if targets is None else targets[start : start + chunk.shape[0]]
        fe = artifact.feature_errors(target, rec.reshape(chunk.shape[0], -1), error)
        stop = start + chunk.shape[0]
        out[start:stop] = artifact.row_scores(fe, feature_scales) if reduce else fe
    return out


# A feature the network rebuilds almost exactly would make any error in it huge after scaling:
# its scale is at least this share of the features' mean scale.
FEATURE_SCALE_FLOOR = 0.05


def feature_error_scales(
    model: keras.Model, xs_train: np.ndarray, input_shape: Sequence[int], error: artifact.ScoreError
) -> np.ndarray:
    """The ``feature_max`` score's scales: each feature's mean error over the rows the network
    trained on, floored at ``FEATURE_SCALE_FLOOR`` of their mean (and above zero)."""
    fe = reconstruction_errors(model, xs_train, input_shape, error, reduce=False)
    scales = fe.mean(axis=0)
    floor = max(FEATURE_SCALE_FLOOR * float(scales.mean()), 1e-12)
    return np.maximum(scales, floor)


def library_versions() -> dict[str, str]:
    """The versions of the libraries a network was trained with, for the manifest."""
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
