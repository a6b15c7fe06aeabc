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
from worker_series_models import keyed_series, publish_series_model  # noqa: E402

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


# Series keys the windowed model was trained on; streams add keys it never saw (learnt online).
SERIES_TRAINED_KEYS = [f"m{i}" for i in range(8)]
SERIES_WINDOW = 8


@pytest.fixture(scope="session")
def published_series_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A windowed model (W = 8, channels temp, rpm, load, keys m0..m7, a threshold per key at
    the 95th percentile) published as v1, once per session: copy it before changing it."""
    path = tmp_path_factory.mktemp("worker-series-model") / "models"
    x, keys = keyed_series(4000, SERIES_TRAINED_KEYS, seed=0, spike_rate=0.0)
    publish_series_model(path, x, keys, window=SERIES_WINDOW, percentile=95.0)
    return path


@pytest.fixture
def series_model_dir(tmp_path: Path, published_series_model_dir: Path) -> Path:
    """A private copy of the windowed model's directory."""
    dst = tmp_path / "series-models"
    shutil.copytree(published_series_model_dir, dst)
    return dst
