"""Hot reload on a running worker: a new version is swapped in, another schema is refused."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import requests
from kafka_helpers import consume_all, produce_json
from worker_harness import Topics, WorkerProcess
from worker_models import TrainedModel, publish, sensor_rows

from anomaly_contract.model_dir import load_bundle

pytestmark = pytest.mark.integration


def wait_for(predicate, what: str, worker: WorkerProcess, timeout_s: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, (
            f"timed out waiting for {what}:\n{worker.log_tail(3000)}"
        )
        time.sleep(0.2)


def send_rows(bootstrap: str, topic: str, x: np.ndarray) -> list[tuple[int, int]]:
    return produce_json(bootstrap, topic, [{"features": r.tolist()} for r in x])


def test_new_version_is_swapped_in_and_other_schema_refused(
    kafka_bootstrap: str,
    topics: Topics,
    model_dir: Path,
    start_worker,
    trained_model: TrainedModel,
    worker_trained_other_schema: TrainedModel,
) -> None:
    worker = start_worker(topics, model_dir)
    worker.wait_ready()
    x1, _ = sensor_rows(200, 6, seed=31, anomaly_rate=0.1)
    send_rows(kafka_bootstrap, topics.input, x1)
    worker.wait_records(200)

    # v2: same schema, a threshold 4x lower -> many more anomalies, named v2
    publish(model_dir, trained_model, threshold=trained_model.threshold / 4)
    wait_for(lambda: worker.metric("anomaly_worker_model_info", version="v2") == 1, "v2", worker)
    assert worker.metric("anomaly_worker_model_info", version="v1") == 0
    assert worker.metric("anomaly_worker_threshold") == pytest.approx(trained_model.threshold / 4)
    v2 = load_bundle(model_dir, "v2")
    x2, _ = sensor_rows(200, 6, seed=32, anomaly_rate=0.1)
    placed2 = send_rows(kafka_bootstrap, topics.input, x2)
    worker.wait_records(400)

    # v3: another input schema -> refused, v2 stays
    publish(model_dir, worker_trained_other_schema)
    wait_for(
        lambda: worker.metric("anomaly_worker_model_reloads_total", result="refused") == 1,
        "the refusal",
        worker,
    )
    assert worker.metric("anomaly_worker_model_info", version="v2") == 1
    assert "refused" in worker.log_text()
    x3, _ = sensor_rows(100, 6, seed=33, anomaly_rate=0.1)
    placed3 = send_rows(kafka_bootstrap, topics.input, x3)
    worker.wait_records(500)
    assert requests.get(worker.url("/readyz"), timeout=5).status_code == 200

    v1 = load_bundle(model_dir, "v1")
    flagged1 = int((v1.score(x1).scores > v1.threshold).sum())
    want2 = {placed2[i] for i in np.flatnonzero(v2.score(x2).scores > v2.threshold)}
    want3 = {placed3[i] for i in np.flatnonzero(v2.score(x3).scores > v2.threshold)}
    events = consume_all(
        kafka_bootstrap, topics.output, expected=flagged1 + len(want2) + len(want3)
    )
    by_version: dict[str, set] = {"v1": set(), "v2": set()}
    for e in events:
        body = e.json()
        by_version[body["model_version"]].add(
            (body["source"]["partition"], body["source"]["offset"])
        )
    assert len(by_version["v1"]) == flagged1
    assert by_version["v2"] == want2 | want3
    assert worker.metric("anomaly_worker_model_reloads_total", result="success") == 2
    assert worker.terminate()[0] == 0
