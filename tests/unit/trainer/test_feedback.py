"""Feedback: parsing verdicts, resolving ids to rows and events, proposing a threshold (pure)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anomaly_contract.errors import ConfigError, DataError
from trainer.feedback import (
    CONFIRMED_ROW,
    FALSE_POSITIVE_ROW,
    UNLABELLED_ROW,
    RowRefs,
    iso_ms,
    parse_feedback,
    parse_outputs,
)
from trainer.feedback_resolve import id_form, label_events, label_rows
from trainer.feedback_source import feedback_source, read_feedback
from trainer.feedback_threshold import propose, threshold_curve
from trainer.fit_feedback import merge_labels, raised_threshold
from worker.incidents import event_id, incident_id


def _values(records: list[object]) -> list[tuple[str, bytes | None]]:
    out: list[tuple[str, bytes | None]] = []
    for i, r in enumerate(records):
        value = r if isinstance(r, bytes) else json.dumps(r).encode()
        out.append((f"line {i + 1}", value))
    return out


def _event(offset: int, *, record_id: object = None, score: float = 2.0, key: str | None = None,
           version: str = "v1", ts: int | None = None, incident: str | None = None) -> dict:  # fmt: skip
    return {
        "event_id": event_id("in", 0, offset, version),
        "id": record_id,
        "score": score,
        "threshold": 1.0,
        "severity": score,
        "model_version": version,
        "source": {"topic": "in", "partition": 0, "offset": offset, "timestamp_ms": ts},
        **({"key": key} if key is not None else {}),
        **({"incident_id": incident} if incident else {}),
    }


def _incident(key: str, partition: int, first_offset: int, opened: str, last: str) -> dict:
    """An incident record as the worker writes it (times ISO 8601 UTC)."""
    return {
        "incident_id": incident_id(key, "in", partition, first_offset),
        "key": key,
        "status": "closed",
        "opened_at": opened,
        "last_anomaly_at": last,
        "model_version": "v1",
        "source": {"topic": "in", "partition": partition, "first_offset": first_offset},
    }


def test_bad_feedback_records_are_counted_by_reason_and_the_last_verdict_wins() -> None:
    values = _values(
        [
            {"event_id": "e1", "verdict": "confirmed", "by": "ana", "at": "2026-12-02T00:00:00Z"},
            b"not json",
            [1, 2],
            {"verdict": "confirmed"},
            {"event_id": "e2", "incident_id": "i1", "verdict": "confirmed"},
            {"event_id": "e3", "verdict": "maybe"},
            {"incident_id": "i2", "verdict": "false_positive"},
            {"event_id": "e1", "verdict": "false_positive"},
        ]
    )
    verdicts = parse_feedback(values)
    assert verdicts.read == 8
    assert verdicts.events == {"e1": "false_positive"}
    assert verdicts.incidents == {"i2": "false_positive"}
    assert dict(verdicts.skipped) == {
        "not_json": 1,
        "not_object": 1,
        "no_id": 1,
        "both_ids": 1,
        "bad_verdict": 1,
    }


def test_events_resolve_by_id_column_and_unknown_ids_are_unresolved() -> None:
    events = [_event(3, record_id=7), _event(4, record_id="r8")]
    outputs = parse_outputs(_values(events))
    feedback = _values(
        [
            {"event_id": events[0]["event_id"], "verdict": "confirmed"},
            {"event_id": events[1]["event_id"], "verdict": "false_positive"},
            {"event_id": "no-such-event", "verdict": "confirmed"},
        ]
    )
    refs = RowRefs(4, ids=[5, 7.0, "r8", None])  # a CSV's 7.0 is the event's 7
    labels = label_rows(parse_feedback(feedback), outputs, refs)
    assert labels.rows.tolist() == [UNLABELLED_ROW, CONFIRMED_ROW, FALSE_POSITIVE_ROW, 0]
    assert (labels.counts.confirmed, labels.counts.false_positive) == (1, 1)
    assert labels.counts.unresolved == 1 and labels.unresolved_ids == ["no-such-event"]
    assert id_form(np.int64(7)) == id_form(7.0) == "7"


def test_on_a_topic_read_events_resolve_by_source_coordinates_not_ids() -> None:
    events = [_event(11, record_id="same")]
    outputs = parse_outputs(_values(events))
    verdicts = parse_feedback(
        _values([{"event_id": events[0]["event_id"], "verdict": "confirmed"}])
    )
    refs = RowRefs(3, coordinates=[("in", 0, 10), ("in", 0, 11), ("in", 1, 11)])
    assert label_rows(verdicts, outputs, refs).rows.tolist() == [0, CONFIRMED_ROW, 0]


def test_an_incident_covers_its_keys_rows_from_first_to_last_anomaly_and_its_events() -> None:
    incident = _incident("m1", 0, 20, "1970-01-01T00:00:00.100Z", "1970-01-01T00:00:00.104Z")
    inc = incident["incident_id"]
    opened = {**incident, "status": "opened", "last_anomaly_at": "1970-01-01T00:00:00.101Z"}
    # An event of the incident outside the key/time extent still counts (its id links it).
    events = [_event(99, record_id="late", incident=inc)]
    outputs = parse_outputs(_values(events), _values([opened, incident]))
    assert outputs.incidents[inc].last_ms == 104  # the later record reaches further
    verdicts = parse_feedback(_values([{"incident_id": inc, "verdict": "confirmed"}]))
    times = np.array([99, 100, 102, 104, 105, 102, 500], np.float64)
    keys = ["m1", "m1", "m1", "m1", "m1", "m2", "m1"]
    ids = [f"r{i}" for i in range(6)] + ["late"]
    labels = label_rows(verdicts, outputs, RowRefs(7, ids=ids, keys=keys, times_ms=times))
    assert labels.confirmed.tolist() == [False, True, True, True, False, False, True]
    assert labels.counts.confirmed == 1 and labels.counts.confirmed_rows == 4


def test_confirmed_wins_over_a_false_positive_on_the_same_row() -> None:
    inc = incident_id("k", "in", 0, 1)
    events = [_event(1, record_id=1, incident=inc), _event(2, record_id=2, incident=inc)]
    outputs = parse_outputs(_values(events))
    verdicts = parse_feedback(
        _values(
            [
                {"incident_id": inc, "verdict": "confirmed"},
                {"event_id": events[1]["event_id"], "verdict": "false_positive"},
            ]
        )
    )
    labels = label_rows(verdicts, outputs, RowRefs(3, ids=[0, 1, 2]))
    assert labels.rows.tolist() == [0, CONFIRMED_ROW, CONFIRMED_ROW]


def test_events_take_their_incidents_verdict_by_id_or_by_key_and_time() -> None:
    incident = _incident("k", 0, 5, "1970-01-01T00:00:01Z", "1970-01-01T00:00:02Z")
    inc = incident["incident_id"]
    events = [
        _event(5, key="k", ts=1000),  # before the incident opened: no incident_id, same extent
        _event(6, key="k", ts=1500, incident=inc),
        _event(7, key="other", ts=1500),
        _event(8, key="k", ts=9000),
    ]
    outputs = parse_outputs(_values(events), _values([incident]))
    verdicts = parse_feedback(
        _values(
            [
                {"incident_id": inc, "verdict": "false_positive"},
                {"event_id": events[3]["event_id"], "verdict": "confirmed"},
            ]
        )
    )
    labels = label_events(verdicts, outputs, list(outputs.events.values()))
    assert labels.rows.tolist() == [FALSE_POSITIVE_ROW, FALSE_POSITIVE_ROW, 0, CONFIRMED_ROW]


def test_point_model_events_take_the_kafka_key_as_series_key() -> None:
    events = parse_outputs(_values([_event(1)]), (), [b"dev-7"]).events
    assert next(iter(events.values())).key == "dev-7"


def test_unreadable_events_and_incidents_are_counted() -> None:
    outputs = parse_outputs(
        _values([b"{", {"id": 1, "score": 2.0}]), _values([{"incident_id": "x"}, b"[]"])
    )
    assert dict(outputs.skipped) == {
        "event_not_json": 1,
        "event_without_event_id": 1,
        "incident_unreadable": 1,
        "incident_not_object": 1,
    }
    assert iso_ms("2026-12-02T00:00:00.250Z") == 1796169600250
    assert iso_ms("yesterday") is None and iso_ms("2026-12-02T00:00:00") is None


def test_feedback_sources_are_checked_in_one_line(tmp_path) -> None:
    url = "kafka://127.0.0.1:9092/fb?events=out&incidents=inc&timeout=5"
    source = feedback_source(url)
    assert source.feedback == "kafka://127.0.0.1:9092/fb?timeout=5"
    assert source.events == "kafka://127.0.0.1:9092/out?timeout=5"
    assert source.incidents == "kafka://127.0.0.1:9092/inc?timeout=5"
    with pytest.raises(ConfigError, match="names no events topic"):
        feedback_source("kafka://127.0.0.1:9092/fb")
    with pytest.raises(ConfigError, match="unknown option 'event'"):
        feedback_source("kafka://127.0.0.1:9092/fb?event=out")
    with pytest.raises(ConfigError, match="needs --feedback-events"):
        feedback_source("fb.jsonl")
    with pytest.raises(DataError, match="not found"):
        read_feedback(feedback_source(str(tmp_path / "no.jsonl"), str(tmp_path / "e.jsonl")))
    fb, ev = tmp_path / "fb.jsonl", tmp_path / "ev.jsonl"
    fb.write_text('{"event_id": "a", "verdict": "confirmed"}\nnot json\n\n')
    ev.write_text(json.dumps(_event(1)) + "\n")
    read = read_feedback(feedback_source(str(fb), str(ev)))
    assert read.verdicts.events == {"a": "confirmed"} and read.events_read == 1
    assert any("1 x not_json" in line for line in read.summary_lines())


def test_merge_labels_and_the_raised_threshold() -> None:
    from anomaly_contract.artifact import FeedbackSummary
    from trainer.feedback import FeedbackLabels

    fb = FeedbackLabels(np.array([1, -1, 0, 1], np.int8), FeedbackSummary())
    assert merge_labels(None, fb, 4).tolist() == [1, 0, 0, 1]
    assert merge_labels(np.array([0, 2, 0, 0]), fb, 4).tolist() == [1, 2, 0, 1]
    assert raised_threshold(1.0, np.array([0.5]), np.zeros(0)) == 1.0
    assert raised_threshold(1.0, np.array([1.5, 2.0]), np.zeros(0)) == pytest.approx(2.0002)
    # Capped just under the lowest confirmed anomaly: recall first.
    assert raised_threshold(1.0, np.array([3.0]), np.array([2.0, 5.0])) == pytest.approx(1.9998)


def test_threshold_curve_and_proposals() -> None:
    relative = np.array([1.1, 1.2, 1.3, 2.0, 2.5, 3.0, 4.0])
    confirmed = np.array([False, False, True, False, True, True, True])
    curve = threshold_curve(relative, confirmed)
    assert curve.flagged.tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert curve.factors[-1] == 1.0  # the last cut is the current threshold: everything flagged
    best = propose(curve, relative, confirmed, target_precision=1.0)
    assert (best.recall, best.precision) == (0.75, 1.0) and 2.0 < best.factor < 2.5
    f1 = propose(curve, relative, confirmed)
    assert f1.recall == 1.0 and f1.precision == pytest.approx(0.8) and 1.2 < f1.factor < 1.3
    assert f1.current_precision == pytest.approx(4 / 7) and f1.current_recall == 1.0
    with pytest.raises(DataError, match="no threshold reaches precision"):
        propose(threshold_curve(np.array([2.0, 3.0]), np.array([True, False])),
                np.array([2.0, 3.0]), np.array([True, False]), target_precision=0.9)  # fmt: skip
    with pytest.raises(DataError, match="both kinds are needed"):
        threshold_curve(relative, np.ones(7, bool))


def test_on_a_topic_read_an_incident_covers_its_partition_key_offsets_and_times() -> None:
    incident = _incident("dev-1", 1, 100, "1970-01-01T00:00:01Z", "1970-01-01T00:00:03Z")
    inc = incident["incident_id"]
    outputs = parse_outputs([], _values([incident]))
    verdicts = parse_feedback(_values([{"incident_id": inc, "verdict": "false_positive"}]))
    coordinates = [("in", 1, 99), ("in", 1, 100), ("in", 1, 101), ("in", 0, 101), ("in", 1, 102),
                   ("other", 1, 103), ("in", 1, 104)]  # fmt: skip
    keys = ["dev-1", "dev-1", "dev-1", "dev-1", "dev-2", "dev-1", "dev-1"]
    times = np.array([1000, 1000, 2000, 2000, 2000, 2000, 3500], np.float64)
    refs = RowRefs(7, coordinates=coordinates, keys=keys, times_ms=times)
    labels = label_rows(verdicts, outputs, refs)
    # Offset 99 precedes the first anomaly, partition 0 and topic "other" are other streams,
    # dev-2 another key, 3500 ms after the last anomaly.
    assert labels.false_positive.tolist() == [False, True, True, False, False, False, False]
    assert labels.counts.false_positive == 1 and labels.counts.false_positive_rows == 2
