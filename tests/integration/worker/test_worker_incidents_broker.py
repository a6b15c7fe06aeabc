"""Incidents on the real broker: a burst of anomalies on one key is one incident (opened, updated,
closed) with the right counts, a lone anomaly below the minimum is none, an idle partition closes
its incident by the wall clock, and kill -9 in the middle of an incident does not open a second
one for the same burst (both delivery modes; exactly-once read with ``read_committed``).

Record time is set by the test (``timestamp_ms``): one step of the stream is 10 s, the gap 100 s,
so a few seconds of wall-clock idleness around a kill never close anything by the wall clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from incident_streams import (
    ANOMALY,
    SETTINGS,
    burst_stream,
    has_closed,
    incident_topic,
    output_events,
    produce,
    wait_incidents,
)
from kafka_helpers import IsolationLevel, unique_name
from worker_harness import Topics, WorkerProcess, committed

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_burst_on_one_key_is_one_incident_and_a_lone_anomaly_none(
    kafka_bootstrap: str,
    topics: Topics,
    model_dir: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    incidents = incident_topic(kafka_bootstrap)
    w = start_worker(topics, model_dir, INCIDENT_TOPIC=incidents, **SETTINGS)
    w.wait_ready()
    stream = burst_stream(model_dir)
    produce(kafka_bootstrap, topics.input, stream)
    w.wait_records(len(stream), timeout_s=40)
    found = wait_incidents(kafka_bootstrap, incidents, has_closed)
    assert [r["status"] for r in found] == ["opened", "updated", "updated", "closed"], found
    assert {r["key"] for r in found} == {"a"} and len({r["incident_id"] for r in found}) == 1
    closed = found[-1]
    # key a's records from its first anomaly (step 20) until step 40 passed the gap
    assert closed["anomalies"] == 10 and closed["records"] == 20, closed
    assert closed["closed_at"] == "2023-11-14T22:19:50.000Z"  # last anomaly (step 29) + 100 s
    events = output_events(kafka_bootstrap, topics)
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
    incidents = incident_topic(kafka_bootstrap)
    settings = {**SETTINGS, "INCIDENT_GAP_S": 2}
    w = start_worker(topics, model_dir, INCIDENT_TOPIC=incidents, **settings)
    w.wait_ready()
    produce(kafka_bootstrap, topics.input, [("a", 0, ANOMALY)] * 4, timestamps=False)
    w.wait_records(4)
    found = wait_incidents(kafka_bootstrap, incidents, has_closed, timeout_s=20)
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
    incidents = incident_topic(kafka_bootstrap)
    settings: dict[str, object] = {
        **SETTINGS, "INCIDENT_TOPIC": incidents, "DELIVERY": delivery,
        "SESSION_TIMEOUT_MS": 3000,  # the killed member leaves the group soon
    }  # fmt: skip
    if delivery == "exactly_once":
        settings["TRANSACTIONAL_ID"] = unique_name("txn")  # the same for the restart
    isolation: IsolationLevel = (
        "read_committed" if delivery == "exactly_once" else "read_uncommitted"
    )
    stream = burst_stream(model_dir)
    cut = 52  # up to step 25: the incident is open, 6 of its 10 anomalies in
    w = start_worker(topics, model_dir, **settings)
    w.wait_ready()
    produce(kafka_bootstrap, topics.input, stream[:cut])
    w.wait_records(cut)
    deadline = time.monotonic() + 20
    while committed(kafka_bootstrap, topics.input, topics.group, 1)[0] < cut:
        assert time.monotonic() < deadline, "the first part was never committed"
        time.sleep(0.2)
    assert w.metric("anomaly_worker_incidents_open") == 1
    w.kill9()
    restarted = start_worker(topics, model_dir, **settings)
    restarted.wait_ready()
    produce(kafka_bootstrap, topics.input, stream[cut:])
    restarted.wait_records(len(stream) - cut, timeout_s=40)
    found = wait_incidents(kafka_bootstrap, incidents, has_closed, isolation)
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
    restores = [e for e in restarted.logs() if str(e.get("message", "")).startswith("incidents of")]
    assert restores and restores[0]["incident_start"] == 40, restores  # key a's first anomaly
    events = output_events(kafka_bootstrap, topics, isolation)
    ids = {e.get("incident_id") for e in events if e["source"]["offset"] >= cut}
    assert ids <= {closed["incident_id"], None}
    code, _ = restarted.terminate()
    assert code == 0, restarted.log_tail()
