"""Incidents on the real broker: a burst of anomalies on one key is one incident (opened, updated,
closed) with the right counts, a lone anomaly below the minimum is none, an idle partition closes
its incident by the wall clock, and kill -9 in the middle of an incident does not open a second
one for the same burst (both delivery modes; exactly-once read with ``read_committed``).

Record time is set by the test (``timestamp_ms``): one step of the stream is 10 s, the gap 100 s,
so a few seconds of wall-clock idleness around a kill never close anything by the wall clock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaProducer
from kafka_helpers import IsolationLevel, consume_all, create_topic, unique_name
from worker_harness import Topics, WorkerProcess, committed
from worker_models import sensor_rows

from anomaly_contract.model_dir import load_bundle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T0 = 1_700_000_000_000
STEP_MS = 10_000
ANOMALY = [1000.0] * 6
SETTINGS: dict[str, object] = {
    "INCIDENT_GAP_S": 100,
    "INCIDENT_MIN_ANOMALIES": 3,
    "INCIDENT_UPDATE_S": 30,
}
Row = tuple[str, int, list[float]]  # key, record timestamp (ms), features


def _quiet_rows(model_dir: Path, n: int) -> list[list[float]]:
    """``n`` rows the model scores far below its threshold (normal beyond doubt)."""
    bundle = load_bundle(model_dir)
    x, _ = sensor_rows(4 * n, 6, seed=11)
    quiet = x[bundle.score(x).scores < 0.5 * bundle.manifest.threshold]
    assert len(quiet) >= n
    return quiet[:n].tolist()


def _burst_stream(model_dir: Path) -> list[Row]:
    """Key "a" every step for 60 steps, anomalous at steps 20-29 (10 anomalies); key "b" every
    step, anomalous once (step 45: a lone blip below the minimum of 3)."""
    quiet = _quiet_rows(model_dir, 120)
    rows: list[Row] = []
    for step in range(60):
        ts = T0 + step * STEP_MS
        rows.append(("a", ts, ANOMALY if 20 <= step < 30 else quiet[step]))
        rows.append(("b", ts + STEP_MS // 2, ANOMALY if step == 45 else quiet[60 + step]))
    return rows


def _produce(bootstrap: str, topic: str, rows: list[Row], timestamps: bool = True) -> None:
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


def _incident_topic(bootstrap: str) -> str:
    topic = unique_name("incidents")
    create_topic(bootstrap, topic, partitions=1)
    return topic


def _wait_incidents(
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


def _closed(records: list[dict]) -> bool:
    return any(r["status"] == "closed" for r in records)


def _events(
    bootstrap: str, topics: Topics, isolation: IsolationLevel = "read_uncommitted"
) -> list[dict]:
    return [r.json() for r in consume_all(bootstrap, topics.output, isolation_level=isolation)]


def test_a_burst_on_one_key_is_one_incident_and_a_lone_anomaly_none(
    kafka_bootstrap: str,
    topics: Topics,
    model_dir: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    incidents = _incident_topic(kafka_bootstrap)
    w = start_worker(topics, model_dir, INCIDENT_TOPIC=incidents, **SETTINGS)
    w.wait_ready()
    stream = _burst_stream(model_dir)
    _produce(kafka_bootstrap, topics.input, stream)
    w.wait_records(len(stream), timeout_s=40)
    found = _wait_incidents(kafka_bootstrap, incidents, _closed)
    assert [r["status"] for r in found] == ["opened", "updated", "updated", "closed"], found
    assert {r["key"] for r in found} == {"a"} and len({r["incident_id"] for r in found}) == 1
    closed = found[-1]
    # key a's records from its first anomaly (step 20) until step 40 passed the gap
    assert closed["anomalies"] == 10 and closed["records"] == 20, closed
    assert closed["closed_at"] == "2023-11-14T22:19:50.000Z"  # last anomaly (step 29) + 100 s
    events = _events(kafka_bootstrap, topics)
    assert len(events) == 11  # 10 of the burst, 1 lone blip: all still events
    in_incident = [e for e in events if e.get("incident_id") == closed["incident_id"]]
    assert len(in_incident) == 8  # from the third anomaly on, when the incident opened
    assert all(e["event_id"] for e in events) and len({e["event_id"] for e in events}) == 11
    assert w.metric("anomaly_worker_incidents_total", status="opened") == 1
    assert w.metric("anomaly_worker_incidents_total", status="closed") == 1
    assert w.metric("anomaly_worker_incidents_open") == 0
    code, _ = w.terminate()
    assert code == 0, w.log_tail()


def test_an_idle_partition_closes_its_incident_by_the_wall_clock(
    kafka_bootstrap: str,
    topics: Topics,
    model_dir: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    incidents = _incident_topic(kafka_bootstrap)
    settings = {**SETTINGS, "INCIDENT_GAP_S": 2}
    w = start_worker(topics, model_dir, INCIDENT_TOPIC=incidents, **settings)
    w.wait_ready()
    _produce(kafka_bootstrap, topics.input, [("a", 0, ANOMALY)] * 4, timestamps=False)
    w.wait_records(4)
    found = _wait_incidents(kafka_bootstrap, incidents, _closed, timeout_s=20)
    assert [r["status"] for r in found] == ["opened", "closed"], found
    assert found[-1]["anomalies"] == 4
    assert w.metric("anomaly_worker_incidents_open") == 0


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_kill9_mid_incident_does_not_open_a_second_one(
    delivery: str,
    kafka_bootstrap: str,
    topics: Topics,
    model_dir: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    incidents = _incident_topic(kafka_bootstrap)
    settings: dict[str, object] = {
        **SETTINGS, "INCIDENT_TOPIC": incidents, "DELIVERY": delivery,
        "SESSION_TIMEOUT_MS": 3000,  # the killed member leaves the group soon
    }  # fmt: skip
    if delivery == "exactly_once":
        settings["TRANSACTIONAL_ID"] = unique_name("txn")  # the same for the restart
    isolation: IsolationLevel = (
        "read_committed" if delivery == "exactly_once" else "read_uncommitted"
    )
    stream = _burst_stream(model_dir)
    cut = 52  # up to step 25: the incident is open, 6 of its 10 anomalies in
    w = start_worker(topics, model_dir, **settings)
    w.wait_ready()
    _produce(kafka_bootstrap, topics.input, stream[:cut])
    w.wait_records(cut)
    deadline = time.monotonic() + 20
    while committed(kafka_bootstrap, topics.input, topics.group, 1)[0] < cut:
        assert time.monotonic() < deadline, "the first part was never committed"
        time.sleep(0.2)
    assert w.metric("anomaly_worker_incidents_open") == 1
    w.kill9()
    restarted = start_worker(topics, model_dir, **settings)
    restarted.wait_ready()
    _produce(kafka_bootstrap, topics.input, stream[cut:])
    restarted.wait_records(len(stream) - cut, timeout_s=40)
    found = _wait_incidents(kafka_bootstrap, incidents, _closed, isolation)
    statuses = [r["status"] for r in found]
    # one incident for the burst: opened once (before the kill), closed once, one id
    assert statuses.count("opened") == 1 and statuses.count("closed") == 1, found
    assert len({r["incident_id"] for r in found}) == 1, found
    closed = found[-1]
    # the uninterrupted run's counts (test above): the restore replayed the open run
    assert closed["status"] == "closed" and closed["anomalies"] == 10 and closed["records"] == 20
    if delivery == "exactly_once":
        assert statuses == ["opened", "updated", "updated", "closed"], found
    assert restarted.metric("anomaly_worker_incidents_total", status="opened") == 0
    events = _events(kafka_bootstrap, topics, isolation)
    ids = {e.get("incident_id") for e in events if e["source"]["offset"] >= cut}
    assert ids <= {closed["incident_id"], None}
    code, _ = restarted.terminate()
    assert code == 0, restarted.log_tail()
