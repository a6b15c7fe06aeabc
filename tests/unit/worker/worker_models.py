"""Small real models for the worker's tests, published with anomaly_contract.model_dir (no trainer.fit).

A dense Keras autoencoder (sub-models "encoder" and "decoder") fitted a few epochs on synthetic
correlated data, calibrated on held-out rows and published as a version of a model directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def sensor_rows(
    n: int, n_features: int, seed: int = 0, anomaly_rate: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Correlated normal rows (3 latent factors) with a share of large deviations; (x, labels)."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(1234 + n_features).normal(size=(3, n_features))
    z = rng.normal(size=(n, 3))
    x = z @ mix + 0.05 * rng.normal(size=(n, n_features)) + 10.0
    labels = (rng.random(n) < anomaly_rate).astype(int)
    idx = np.flatnonzero(labels)
    if idx.size:
        cols = rng.integers(0, n_features, size=idx.size)
        x[idx, cols] += rng.choice([-1, 1], size=idx.size) * rng.uniform(6, 10, size=idx.size)
    return x, labels


@dataclass
class TrainedModel:
    model: object  # keras.Model
    scaler: object  # anomaly_contract.artifact.Scaler
    feature_names: list[str]
    threshold: float
    calibration: object  # CalibrationStats
    image_shape: list[int] | None


def train_model(
    n_features: int = 6,
    seed: int = 0,
    epochs: int = 15,
    names: list[str] | None = None,
    image_shape: list[int] | None = None,
) -> TrainedModel:
    import keras

    from anomaly_contract.artifact import Scaler
    from trainer.calibration import calibrate

    keras.utils.set_random_seed(seed)
    x, _ = sensor_rows(3000, n_features, seed=seed)
    train, cal = x[:2400], x[2400:]
    scaler = Scaler.fit(train, "minmax")
    xs = scaler.transform(train)
    inp = keras.Input((n_features,))
    enc_in = keras.Input((n_features,))
    h = keras.layers.Dense(16, activation="relu")(enc_in)
    encoder = keras.Model(enc_in, keras.layers.Dense(3)(h), name="encoder")
    dec_in = keras.Input((3,))
    h = keras.layers.Dense(16, activation="relu")(dec_in)
    decoder = keras.Model(dec_in, keras.layers.Dense(n_features)(h), name="decoder")
    model = keras.Model(inp, decoder(encoder(inp)), name="autoencoder")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.fit(xs, xs, epochs=epochs, batch_size=64, verbose=0)
    cs = scaler.transform(cal)
    rec = np.asarray(model(cs, training=False))
    errors = np.square(cs - rec).mean(axis=1)
    threshold, stats = calibrate(errors, 99.0)
    return TrainedModel(
        model=model,
        scaler=scaler,
        feature_names=names or [f"f{i}" for i in range(n_features)],
        threshold=threshold,
        calibration=stats,
        image_shape=image_shape,
    )


def publish(
    model_dir: Path, tm: TrainedModel, threshold: float | None = None, make_current: bool = True
) -> str:
    """Publish ``tm`` as the next version of ``model_dir``; returns the version name."""
    from anomaly_contract.artifact import Manifest, RowCounts
    from anomaly_contract.model_dir import (
        next_version_name,
        publish_staged,
        staging_dir,
        utc_now,
        write_version_files,
    )

    n = len(tm.feature_names)
    with staging_dir(model_dir) as staging:
        version = next_version_name(model_dir)
        manifest = Manifest(
            version=version,
            created_at=utc_now(),
            architecture="dense",
            feature_names=tm.feature_names,
            input_shape=[n],
            image_shape=tm.image_shape,
            latent_dim=3,
            loss="mse",
            threshold=tm.threshold if threshold is None else threshold,
            percentile=99.0,
            calibration=tm.calibration,
            data_source="synthetic:worker-tests",
            data_fingerprint="sha256:test",
            rows=RowCounts(total=3000, train=2400, validation=0, calibration=600),
            hyperparameters={"epochs": 15},
            validation_metrics={},
            library_versions={},
        )
        write_version_files(staging, tm.model, tm.scaler, manifest)
        return publish_staged(model_dir, staging, make_current=make_current)
