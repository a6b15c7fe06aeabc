"""Fake-but-valid version directories for the model topic's pure tests (no Keras, no Kafka)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anomaly_contract.artifact import Manifest, RowCounts, Scaler
from anomaly_contract.model_dir import utc_now
from trainer.calibration import calibrate


def make_manifest(version: str = "v1", n_features: int = 3) -> Manifest:
    threshold, stats = calibrate(np.linspace(0.01, 1.0, 50), 99.0)
    return Manifest(
        version=version,
        created_at=utc_now(),
        architecture="dense",
        feature_names=[f"f{i}" for i in range(n_features)],
        input_shape=[n_features],
        latent_dim=2,
        loss="mse",
        threshold=threshold,
        percentile=99.0,
        calibration=stats,
        data_source="synthetic:model-topic-tests",
        data_fingerprint="sha256:test",
        rows=RowCounts(total=50, train=40, validation=0, calibration=10),
        hyperparameters={},
        validation_metrics={},
        library_versions={},
    )


def write_version_dir(path: Path, version: str = "v1", model_bytes: bytes = b"") -> Manifest:
    """A directory with the three files of a version; model.keras is arbitrary bytes here."""
    path.mkdir(parents=True, exist_ok=True)
    manifest = make_manifest(version)
    scaler = Scaler.fit(np.arange(12, dtype=float).reshape(4, 3), "minmax")
    (path / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    (path / "scaler.json").write_text(scaler.to_params().model_dump_json(indent=2))
    payload = model_bytes or np.random.default_rng(0).bytes(70_000)
    (path / "model.keras").write_bytes(payload)
    return manifest
