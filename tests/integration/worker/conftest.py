"""Fixtures for the worker's integration tests: worker subprocesses on per-test topics.

The worker runs as `python -m worker` (a real process: real signals, real exit codes) against
the session's real broker, with a unique topic set and group per test. The model fixtures are in
tests/integration/conftest.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from worker_harness import Topics, WorkerFactory, WorkerProcess, make_topics
from worker_models import TrainedModel, train_model


@pytest.fixture(scope="session")
def worker_trained_other_schema() -> TrainedModel:
    return train_model(n_features=4, seed=1, epochs=2)


@pytest.fixture
def topics(kafka_bootstrap: str, topic_name: str) -> Topics:
    """Unique input (3 partitions), output and DLQ topics and a unique group for one test."""
    return make_topics(kafka_bootstrap, topic_name, partitions=3)


@pytest.fixture
def start_worker(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start a worker subprocess: ``start_worker(topics, model_dir, **settings)``; it returns once
    the worker has logged its HTTP port. Kills leftovers at teardown."""
    factory = WorkerFactory(kafka_bootstrap, tmp_path)

    def start(topics: Topics, model_dir: Path, **settings: object) -> WorkerProcess:
        w = factory.start(topics, model_dir, **settings)
        w.wait_port()
        return w

    try:
        yield start
    finally:
        factory.close()
