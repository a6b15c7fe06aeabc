"""Small real models published once per session for the worker's unit tests: a point model and
a windowed one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from worker_models import TrainedModel, publish, train_model
from worker_series_models import keyed_series, publish_series_model

# The windowed model of `series_dir`: window 8, trained on keys m0..m5.
SERIES_WINDOW = 8
SERIES_TRAINED = [f"m{i}" for i in range(6)]


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


@pytest.fixture(scope="session")
def _series_published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("series-model") / "models"
    x, keys = keyed_series(3000, SERIES_TRAINED, seed=0, spike_rate=0.0)
    publish_series_model(path, x, keys, window=SERIES_WINDOW, percentile=95.0)
    return path


@pytest.fixture
def series_dir(tmp_path: Path, _series_published: Path) -> Path:
    """A private copy of a windowed model directory (`SERIES_WINDOW`, keys `SERIES_TRAINED`)."""
    shutil.copytree(_series_published, tmp_path / "models")
    return tmp_path / "models"
