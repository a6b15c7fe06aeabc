"""Incident streams for the integration tests: a burst on one key among normal records with set
record timestamps, produced to partition 0, and the incident records read back."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from kafka import KafkaProducer
from kafka_helpers import IsolationLevel, consume_all, create_topic, unique_name
from worker_harness import Topics
from worker_models import sensor_rows

from anomaly_contract.model_dir import load_bundle

T0 = 1_700_000_000_000
STEP_MS = 10_000
ANOMALY = [1000.0] * 6
SETTINGS: dict[str, object] = {
    "INCIDENT_GAP_S": 100,
    "INCIDENT_MIN_ANOMALIES": 3,
    "INCIDENT_UPDATE_S": 30,
}
Row = tuple[str, int, list[float]]  # key, record timestamp (ms), features


def quiet_rows(model_dir: Path, n: int) -> list[list[float]]:
    """``n`` rows the model scores far below its threshold (normal beyond doubt)."""
    bundle = load_bundle(model_dir)
    x, _ = sensor_rows(4 * n, 6, seed=11)
    quiet = x[bundle.score(x).scores < 0.5 * bundle.manifest.threshold]
    assert len(quiet) >= n
    return quiet[:n].tolist()


def burst_stream(model_dir: Path) -> list[Row]:
    """Key "a" every step for 60 steps, anomalous at steps 20-29 (10 anomalies); key "b" every
    step, anomalous once (step 45: a lone blip below the minimum of 3)."""
    quiet = quiet_rows(model_dir, 120)
    rows: list[Row] = []
    for step in range(60):
        ts = T0 + step * STEP_MS
        rows.append(("a", ts, ANOMALY if 20 <= step < 30 else quiet[step]))
        rows.append(("b", ts + STEP_MS // 2, ANOMALY if step == 45 else quiet[60 + step]))
    return rows


def produce(bootstrap: str, topic: str, rows: list[Row], timestamps: bool = True) -> None:
    """All rows to partition 0, in order, with their record timestamps (or the producer's)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        for key, ts, features in rows:
            value = json.dumps({"id": f"{key}@{ts}", "features": features}).encode()
            producer.send(
                topic, value=value, key=key.encode(), partition=0,
                timestamp_ms=ts if timestamps else None,
            )  # fmt: skip
        producer.flush()
    finally:
        producer.close()


def incident_topic(bootstrap: str) -> str:
    topic = unique_name("incidents")
    create_topic(bootstrap, topic, partitions=1)
    return topic


def wait_incidents(
    bootstrap: str,
    topic: str,
    done: Callable[[list[dict]], bool],
    isolation: IsolationLevel = "read_uncommitted",
    timeout_s: float = 30,
) -> list[dict]:
    """The incident records once ``done`` says they are all there (or at the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [r.json() for r in consume_all(bootstrap, topic, isolation_level=isolation)]
        if done(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def has_closed(records: list[dict]) -> bool:
    return any(r["status"] == "closed" for r in records)


def output_events(
    bootstrap: str, topics: Topics, isolation: IsolationLevel = "read_uncommitted"
) -> list[dict]:
    return [r.json() for r in consume_all(bootstrap, topics.output, isolation_level=isolation)]
