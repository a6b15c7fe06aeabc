"""Fixtures for the worker's integration tests: a published model and worker subprocesses.

The worker runs as `python -m worker` (a real process: real signals, real exit codes) against
the session's real broker, with a unique topic set and group per test.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "unit" / "worker"))

from kafka_helpers import create_topic, unique_name  # noqa: E402
from worker_models import TrainedModel, publish, train_model  # noqa: E402
from worker_process import Topics, WorkerProcess  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
PYTHON = sys.executable


@pytest.fixture(scope="session")
def worker_trained() -> TrainedModel:
    return train_model(n_features=6, seed=0)


@pytest.fixture(scope="session")
def worker_trained_other_schema() -> TrainedModel:
    return train_model(n_features=4, seed=1, epochs=2)


@pytest.fixture(scope="session")
def _published_once(tmp_path_factory: pytest.TempPathFactory, worker_trained: TrainedModel) -> Path:
    path = tmp_path_factory.mktemp("worker-model") / "models"
    publish(path, worker_trained)
    return path


@pytest.fixture
def model_dir(tmp_path: Path, _published_once: Path) -> Path:
    """A private copy of a model directory whose current version is v1 (features f0..f5)."""
    dst = tmp_path / "models"
    shutil.copytree(_published_once, dst)
    return dst


@pytest.fixture
def topics(kafka_bootstrap: str, topic_name: str) -> Topics:
    """Unique input (3 partitions), output and DLQ topics and a unique group for one test."""
    t = Topics(topic_name, f"{topic_name}-out", f"{topic_name}-dlq", unique_name("grp"))
    create_topic(kafka_bootstrap, t.input, partitions=3)
    create_topic(kafka_bootstrap, t.output, partitions=1)
    create_topic(kafka_bootstrap, t.dlq, partitions=1)
    return t


@pytest.fixture
def start_worker(kafka_bootstrap: str, tmp_path: Path) -> Iterator[callable]:  # type: ignore[valid-type]
    """Start a worker subprocess: ``start_worker(topics, model_dir, **settings)``."""
    started: list[WorkerProcess] = []

    def start(topics: Topics, model_dir: Path, **settings: object) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANOMALY_")}
        env.update(
            {
                "TF_CPP_MIN_LOG_LEVEL": "2",
                "PYTHONPATH": str(REPO),
                "ANOMALY_BOOTSTRAP_SERVERS": kafka_bootstrap,
                "ANOMALY_INPUT_TOPIC": topics.input,
                "ANOMALY_OUTPUT_TOPIC": topics.output,
                "ANOMALY_DLQ_TOPIC": topics.dlq,
                "ANOMALY_GROUP_ID": topics.group,
                "ANOMALY_MODEL_DIR": str(model_dir),
                "ANOMALY_METRICS_HOST": "127.0.0.1",
                "ANOMALY_METRICS_PORT": "0",
                "ANOMALY_LOG_FORMAT": "json",
                "ANOMALY_MODEL_POLL_INTERVAL_S": "0.5",
                "ANOMALY_LAG_REFRESH_S": "1",
                "ANOMALY_BATCH_MAX_WAIT_MS": "50",
            }
        )
        for key, value in settings.items():
            env[f"ANOMALY_{key.upper()}"] = str(value)
        log_path = tmp_path / f"worker-{len(started)}.log"
        w = WorkerProcess(log_path, env, [])
        started.append(w)
        w.wait_port()
        return w

    yield start
    for w in started:
        w.close()
