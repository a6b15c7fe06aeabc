"""Fixtures for the fault-injection tests: a small published model, per-test topics and workers.

The model is a small dense Keras autoencoder published with trainer.artifact by the worker tests'
own helper (tests/unit/worker/worker_models.py), so these tests train nothing else.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "unit" / "worker"))

from faults_support import Topics, WorkerFactory, make_topics  # noqa: E402
from worker_models import TrainedModel, publish, sensor_rows, train_model  # noqa: E402

from trainer.artifact import load_bundle  # noqa: E402

N_FEATURES = 6


@pytest.fixture(scope="session")
def faults_model() -> TrainedModel:
    return train_model(n_features=N_FEATURES, seed=0)


@pytest.fixture(scope="session")
def _faults_published(tmp_path_factory: pytest.TempPathFactory, faults_model: TrainedModel) -> Path:
    path = tmp_path_factory.mktemp("faults-model") / "models"
    publish(path, faults_model)
    return path


@pytest.fixture(scope="session")
def busy_threshold(_faults_published: Path) -> float:
    """A threshold that flags ~30% of the test streams' records (their 70th-percentile score).

    With it a large share of records leaves a trace on the output topic, so a record scored twice
    (a re-read batch) shows up as a duplicate event, not only for the few real anomalies.
    """
    bundle = load_bundle(_faults_published)
    x, _ = sensor_rows(3000, N_FEATURES, seed=99, anomaly_rate=0.05)
    return float(np.quantile(bundle.score(x).scores, 0.7))


@pytest.fixture(scope="session")
def _faults_busy_published(
    tmp_path_factory: pytest.TempPathFactory, faults_model: TrainedModel, busy_threshold: float
) -> Path:
    path = tmp_path_factory.mktemp("faults-busy-model") / "models"
    publish(path, faults_model, threshold=busy_threshold)
    return path


@pytest.fixture
def model_dir(tmp_path: Path, _faults_published: Path) -> Path:
    """A private copy of a model directory whose current version is v1 (threshold: 99th pct)."""
    dst = tmp_path / "models"
    shutil.copytree(_faults_published, dst)
    return dst


@pytest.fixture
def busy_model_dir(tmp_path: Path, _faults_busy_published: Path) -> Path:
    """A private copy of a model directory whose current version flags ~30% of records."""
    dst = tmp_path / "busy-models"
    shutil.copytree(_faults_busy_published, dst)
    return dst


@pytest.fixture
def topics(kafka_bootstrap: str, topic_name: str) -> Topics:
    """Unique input (4 partitions), output and DLQ topics and a unique group for one test."""
    return make_topics(kafka_bootstrap, topic_name[:30])


@pytest.fixture
def workers(
    kafka_bootstrap: str, topics: Topics, busy_model_dir: Path, tmp_path: Path
) -> Iterator[WorkerFactory]:
    """Starts `anomaly-worker` subprocesses on the session broker with the busy model (~30% of
    records become events); kills leftovers at teardown. Set ``workers.model_dir`` to change."""
    factory = WorkerFactory(kafka_bootstrap, topics, busy_model_dir, tmp_path)
    try:
        yield factory
    finally:
        factory.close()
