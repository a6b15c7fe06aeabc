"""Fixtures for the fault-injection tests: a "busy" model, per-test topics and workers.

The model itself (``trained_model``, ``model_dir``) comes from tests/integration/conftest.py, so
these tests train nothing else.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from faults_support import FAULT_SETTINGS, INPUT_PARTITIONS
from worker_harness import Topics, WorkerFactory, make_topics
from worker_models import TrainedModel, publish, sensor_rows

from anomaly_contract.model_dir import load_bundle


@pytest.fixture(scope="session")
def busy_threshold(published_model_dir: Path) -> float:
    """A threshold that flags ~30% of the test streams' records (their 70th-percentile score).

    With it a large share of records leaves a trace on the output topic, so a record scored twice
    (a re-read batch) shows up as a duplicate event, not only for the few real anomalies.
    """
    bundle = load_bundle(published_model_dir)
    x, _ = sensor_rows(3000, bundle.manifest.n_features, seed=99, anomaly_rate=0.05)
    return float(np.quantile(bundle.score(x).scores, 0.7))


@pytest.fixture(scope="session")
def _faults_busy_published(
    tmp_path_factory: pytest.TempPathFactory, trained_model: TrainedModel, busy_threshold: float
) -> Path:
    path = tmp_path_factory.mktemp("faults-busy-model") / "models"
    publish(path, trained_model, threshold=busy_threshold)
    return path


@pytest.fixture
def busy_model_dir(tmp_path: Path, _faults_busy_published: Path) -> Path:
    """A private copy of a model directory whose current version flags ~30% of records."""
    dst = tmp_path / "busy-models"
    shutil.copytree(_faults_busy_published, dst)
    return dst


@pytest.fixture
def topics(kafka_bootstrap: str, topic_name: str) -> Topics:
    """Unique input (4 partitions), output and DLQ topics and a unique group for one test."""
    return make_topics(kafka_bootstrap, topic_name[:30], partitions=INPUT_PARTITIONS)


@pytest.fixture
def workers(
    kafka_bootstrap: str, topics: Topics, busy_model_dir: Path, tmp_path: Path
) -> Iterator[WorkerFactory]:
    """Starts `python -m worker` subprocesses on the session broker with the busy model (~30% of
    records become events); kills leftovers at teardown. Set ``workers.model_dir`` to change."""
    factory = WorkerFactory(kafka_bootstrap, tmp_path, topics, busy_model_dir, FAULT_SETTINGS)
    try:
        yield factory
    finally:
        factory.close()
