"""Analyst feedback on the real broker: verdicts on the worker's own events and incidents are
counted per kind and model version, bad and unknown ones are counted by reason and skipped, and
the precision gauge follows the verdicts."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from incident_streams import SETTINGS, burst_stream, output_events, produce, wait_incidents
from kafka_helpers import create_topic, produce_json, unique_name
from worker_harness import Topics, WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_verdicts_on_own_events_and_incidents_are_counted_and_bad_ones_skipped(
    kafka_bootstrap: str,
    topics: Topics,
    model_dir: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    incidents, feedback = unique_name("incidents"), unique_name("feedback")
    create_topic(kafka_bootstrap, incidents, partitions=1)
    create_topic(kafka_bootstrap, feedback, partitions=2)
    w = start_worker(
        topics, model_dir, INCIDENT_TOPIC=incidents, FEEDBACK_TOPIC=feedback, **SETTINGS
    )
    w.wait_ready()
    stream = burst_stream(model_dir)
    produce(kafka_bootstrap, topics.input, stream)
    w.wait_records(len(stream), timeout_s=40)
    opened = wait_incidents(kafka_bootstrap, incidents, lambda found: bool(found))[0]
    events = output_events(kafka_bootstrap, topics)
    assert len(events) == 11
    verdicts = [
        {"event_id": events[0]["event_id"], "verdict": "confirmed", "by": "ana"},
        {"event_id": events[1]["event_id"], "verdict": "confirmed", "by": "ana"},
        {"incident_id": opened["incident_id"], "verdict": "false_positive", "by": "bo"},
        {"event_id": "not-ours", "verdict": "confirmed"},
        {"event_id": events[2]["event_id"], "verdict": "perhaps"},
        b"{not json",
    ]
    produce_json(kafka_bootstrap, feedback, verdicts)
    invalid = "anomaly_worker_feedback_invalid_total"
    deadline = time.monotonic() + 20
    while sum(w.metric(invalid, reason=r) for r in ("unknown_id", "bad_verdict", "not_json")) < 3:
        assert time.monotonic() < deadline, w.log_tail()
        time.sleep(0.3)
    name = "anomaly_worker_feedback_verdicts_total"
    version = events[0]["model_version"]
    assert w.metric(name, verdict="confirmed", kind="event", model_version=version) == 2
    assert w.metric(name, verdict="false_positive", kind="incident", model_version=version) == 1
    assert w.metric("anomaly_worker_feedback_precision") == pytest.approx(2 / 3)
    code, _ = w.terminate()
    assert code == 0, w.log_tail()
