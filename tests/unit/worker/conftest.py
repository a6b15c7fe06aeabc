"""A small real model published once per session for the worker's unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from worker_models import TrainedModel, publish, train_model


@pytest.fixture(scope="session")
def trained() -> TrainedModel:
    return train_model(n_features=6, seed=0)


@pytest.fixture(scope="session")
def trained_other_schema() -> TrainedModel:
    return train_model(n_features=4, seed=1, epochs=2)


@pytest.fixture
def model_dir(tmp_path: Path, trained: TrainedModel) -> Path:
    """A model directory whose current version is v1 (6 features f0..f5)."""
    publish(tmp_path / "models", trained)
    return tmp_path / "models"
