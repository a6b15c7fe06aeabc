"""The anomaly event and dead-letter header shapes (PRODUCT.md)."""

from __future__ import annotations

import json
from datetime import datetime

from worker import events as ev


def test_anomaly_event_shape() -> None:
    raw = ev.anomaly_event(
        record_id="a1",
        score=0.5,
        threshold=0.25,
        model_version="v3",
        topic="in",
        partition=2,
        offset=41,
        timestamp_ms=1_700_000_000_000,
        top_features=[("temp", 1.5), ("rpm", 0.25)],
        detected_at=ev.iso_utc(1_700_000_000.123),
    )
    event = json.loads(raw)
    assert set(event) == {
        "id", "score", "threshold", "severity", "model_version", "source", "top_features",
        "detected_at",
    }  # fmt: skip
    assert event["severity"] == 2.0
    assert event["source"] == {
        "topic": "in",
        "partition": 2,
        "offset": 41,
        "timestamp_ms": 1_700_000_000_000,
    }
    assert event["top_features"] == [{"name": "temp", "error": 1.5}, {"name": "rpm", "error": 0.25}]
    assert event["detected_at"] == "2023-11-14T22:13:20.123Z"
    assert datetime.fromisoformat(event["detected_at"]).utcoffset().total_seconds() == 0


def test_dead_letter_headers_keep_the_originals_first() -> None:
    headers = ev.dead_letter_headers(
        [("trace", b"abc")],
        error_class="not_json",
        message="not JSON: Expecting value",
        topic="in",
        partition=0,
        offset=7,
        timestamp_ms=123,
        model_version="v1",
        failed_at="2026-01-01T00:00:00.000Z",
    )
    assert headers[0] == ("trace", b"abc")
    got = dict(headers[1:])
    assert got[ev.H_ERROR_CLASS] == b"not_json"
    assert got[ev.H_ERROR_MESSAGE].startswith(b"not JSON")
    assert (got[ev.H_SOURCE_TOPIC], got[ev.H_SOURCE_PARTITION], got[ev.H_SOURCE_OFFSET]) == (
        b"in",
        b"0",
        b"7",
    )
    assert set(got) == set(ev.DLQ_HEADERS)
    assert all(isinstance(v, bytes) for _, v in headers)
