"""Analyst feedback (worker/feedback.py): verdicts parsed, counted per kind and model version for
the ids this worker emitted, bad records counted by reason and skipped, the precision gauge over
a recent window, and the reader thread that feeds the book."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from fake_client import FakeConsumer, FakeRecord
from prometheus_client import CollectorRegistry
from worker_runs import TOPIC, Run

from worker.cli import build_feedback
from worker.client import OutRecord
from worker.feedback import (
    EmittedIds,
    FeedbackBook,
    FeedbackReader,
    Verdict,
    emitted_in,
    parse_feedback,
)
from worker.loop import EXIT_OK
from worker.metrics import FeedbackMetrics


def _json(**fields: object) -> bytes:
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"{not json", "not_json"),
        (b"[1, 2]", "not_json"),
        (b"\xff", "not_json"),
        (None, "not_json"),
        (_json(verdict="confirmed"), "no_id"),
        (_json(event_id="", verdict="confirmed"), "no_id"),
        (_json(event_id=3, verdict="confirmed"), "no_id"),
        (_json(event_id="e", incident_id="i", verdict="confirmed"), "two_ids"),
        (_json(event_id="e", verdict="maybe"), "bad_verdict"),
        (_json(event_id="e"), "bad_verdict"),
    ],
)
def test_bad_feedback_records_name_their_reason(value: bytes | None, expected: str) -> None:
    assert parse_feedback(value) == expected


def test_a_verdict_names_its_kind_id_author_and_time() -> None:
    value = _json(incident_id="i-1", verdict="false_positive", by="ana", at="2026-12-02T04:00:00Z")
    assert parse_feedback(value) == Verdict(
        "incident", "i-1", "false_positive", "ana", "2026-12-02T04:00:00Z"
    )
    assert parse_feedback(_json(event_id="e-1", verdict="confirmed")) == Verdict(
        "event", "e-1", "confirmed"
    )


def test_the_emitted_ids_keep_the_newest_within_their_bound() -> None:
    ids = EmittedIds(limit=3)
    ids.remember([("a", "event", "v1"), ("b", "event", "v1"), ("c", "incident", "v1")])
    ids.remember([("a", "event", "v1"), ("d", "event", "v2")])  # a seen again: newest now
    assert len(ids) == 3
    assert ids.lookup("b") is None and ids.lookup("a") == ("event", "v1")
    assert ids.lookup("d") == ("event", "v2")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _book(window_s: float = 60.0) -> tuple[FeedbackBook, CollectorRegistry, Clock]:
    registry = CollectorRegistry()
    ids = EmittedIds(limit=100)
    ids.remember([("e1", "event", "v1"), ("e2", "event", "v2"), ("i1", "incident", "v1")])
    clock = Clock()
    return FeedbackBook(ids, FeedbackMetrics(registry), window_s, clock), registry, clock


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_verdicts_are_counted_per_kind_and_version_and_bad_ones_skipped() -> None:
    book, registry, clock = _book()
    assert math.isnan(_value(registry, "anomaly_worker_feedback_precision") or 0.0)
    book.record(_json(event_id="e1", verdict="confirmed"))
    book.record(_json(event_id="e2", verdict="false_positive"))
    book.record(_json(incident_id="i1", verdict="confirmed"))
    assert book.record(_json(event_id="someone-elses", verdict="confirmed")) is None
    assert book.record(b"garbage") is None
    verdicts = "anomaly_worker_feedback_verdicts_total"
    assert _value(registry, verdicts, verdict="confirmed", kind="event", model_version="v1") == 1
    assert _value(registry, verdicts, verdict="false_positive", kind="event", model_version="v2") == 1  # fmt: skip
    assert _value(registry, verdicts, verdict="confirmed", kind="incident", model_version="v1") == 1  # fmt: skip
    invalid = "anomaly_worker_feedback_invalid_total"
    assert _value(registry, invalid, reason="unknown_id") == 1
    assert _value(registry, invalid, reason="not_json") == 1
    assert _value(registry, "anomaly_worker_feedback_precision") == pytest.approx(2 / 3)
    # the window moves on: only the verdicts of the last minute count
    clock.now = 90.0
    book.record(_json(event_id="e2", verdict="false_positive"))
    assert _value(registry, "anomaly_worker_feedback_precision") == 0.0


def test_emitted_ids_come_from_events_and_opened_incidents() -> None:
    event = _json(event_id="e1", model_version="v3", score=1.0)
    opened = _json(incident_id="i1", status="opened", model_version="v3")
    closed = _json(incident_id="i1", status="closed", model_version="v3")
    outs = [
        OutRecord("anomalies", b"k", event, []),
        OutRecord("incidents", b"k", opened, []),
        OutRecord("incidents", b"k", closed, []),
        OutRecord("anomalies-dlq", b"k", b"{bad", []),
    ]
    assert emitted_in(outs, "anomalies", "incidents") == [
        ("e1", "event", "v3"),
        ("i1", "incident", "v3"),
    ]


class Polls:
    """A topic that hands out its records once, then nothing."""

    def __init__(self, values: list[bytes]) -> None:
        self.records = [FakeRecord("feedback", 0, i, v) for i, v in enumerate(values)]
        self.closed = False

    def poll(self, timeout_ms: int) -> list[FakeRecord]:
        out, self.records = self.records, []
        time.sleep(0.01)
        return out

    def close(self) -> None:
        self.closed = True


def test_the_reader_thread_feeds_every_record_to_the_book() -> None:
    book, registry, _ = _book()
    polls = Polls([_json(event_id="e1", verdict="confirmed"), b"{bad"])
    reader = FeedbackReader(lambda: polls, book)  # type: ignore[arg-type, return-value]
    reader.start()
    deadline = time.monotonic() + 5
    while _value(registry, "anomaly_worker_feedback_invalid_total", reason="not_json") != 1:
        assert time.monotonic() < deadline, "the reader did not read the records"
        time.sleep(0.01)
    reader.stop()
    assert polls.closed
    assert _value(registry, "anomaly_worker_feedback_precision") == 1.0


def test_the_worker_remembers_the_ids_it_delivers_for_their_verdicts(model_dir: Path) -> None:
    consumer = FakeConsumer(TOPIC)
    anomaly = json.dumps({"id": "far", "features": [1000.0] * 6}).encode()
    consumer.produce(0, [anomaly] * 3, [b"a"] * 3)
    run = Run(model_dir, consumer, incident_topic="incidents", feedback_topic="feedback")
    reader = build_feedback(run.worker.s, run.worker)
    assert reader is not None
    assert run.run() == EXIT_OK
    events = [json.loads(o.value or b"") for o in run.producer.sent if o.topic == "anomalies"]
    opened = [json.loads(o.value or b"") for o in run.producer.sent if o.topic == "incidents"]
    assert len(events) == 3 and opened
    emitted = reader.book.emitted
    assert all(emitted.lookup(e["event_id"]) == ("event", "v1") for e in events)
    assert emitted.lookup(opened[0]["incident_id"]) == ("incident", "v1")
    assert reader.book.record(_json(incident_id=opened[0]["incident_id"], verdict="confirmed"))
