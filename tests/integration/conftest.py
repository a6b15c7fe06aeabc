"""Fixtures shared by the integration tests that run the worker: one small trained model,
published once, and a private copy of its model directory per test.

The model is a small dense Keras autoencoder published with anomaly_contract.model_dir by the worker tests'
own helper (tests/unit/worker/worker_models.py), made importable here for every test below.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "worker"))

from worker_models import TrainedModel, publish, train_model  # noqa: E402

N_FEATURES = 6


@pytest.fixture(scope="session")
def trained_model() -> TrainedModel:
    """6 features f0..f5; its threshold is the 99th percentile of its training scores."""
    return train_model(n_features=N_FEATURES, seed=0)


@pytest.fixture(scope="session")
def published_model_dir(
    tmp_path_factory: pytest.TempPathFactory, trained_model: TrainedModel
) -> Path:
    """`trained_model` published as v1, once per session: copy it before changing it."""
    path = tmp_path_factory.mktemp("worker-model") / "models"
    publish(path, trained_model)
    return path


@pytest.fixture
def model_dir(tmp_path: Path, published_model_dir: Path) -> Path:
    """A private copy of a model directory whose current version is v1 (features f0..f5)."""
    dst = tmp_path / "models"
    shutil.copytree(published_model_dir, dst)
    return dst
