"""Analyst feedback: verdicts on anomaly events and incidents, resolved to rows of DATA.

Pure: record values (bytes, with where each one sits) go in, labels per row come out; no Kafka.
A feedback record is ``{"incident_id" | "event_id", "verdict": "confirmed" | "false_positive",
"by", "at"}``. An id alone does not say which rows it means, so it is resolved through the
worker's outputs:

- an **event** (output topic) resolves to its input record: ``source`` (topic, partition,
  offset) when DATA is a ``kafka://`` read, else its ``id`` against DATA's ``id`` column;
- an **incident** (incident topic) resolves to the rows of its key from its first anomaly
  (``opened_at``) to its last (``last_anomaly_at``), normal-scored rows between them included:
  by the Kafka record key, partition, offset (from ``source.first_offset``) and timestamp for a
  ``kafka://`` read, by the key and time columns for windowed models on tables; and always to
  the rows of the events that carry its ``incident_id``.

Unusable feedback records (not JSON, not an object, no id or both, another verdict) are counted
by reason and skipped; ids that match no event or incident, or whose rows are not in DATA,
count as *unresolved*. Neither ever raises. When verdicts disagree on an id the later record
wins; when they disagree on a row (a false-positive event inside a confirmed incident)
*confirmed* wins: leaving a normal row out of training costs little, learning an anomaly as
normal costs recall.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from anomaly_contract.artifact import FeedbackSummary

CONFIRMED = "confirmed"
FALSE_POSITIVE = "false_positive"
VERDICTS = (CONFIRMED, FALSE_POSITIVE)
# Row labels of `FeedbackLabels.rows`.
UNLABELLED_ROW, CONFIRMED_ROW, FALSE_POSITIVE_ROW = 0, 1, -1

Value = tuple[str, bytes | None]  # (where it sits, e.g. "line 3", the record value)


@dataclass(frozen=True)
class Verdicts:
    """Parsed feedback: the last verdict per event id and per incident id, and what was skipped."""

    events: dict[str, str] = field(default_factory=dict)
    incidents: dict[str, str] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> records
    read: int = 0


@dataclass(frozen=True)
class EventRef:
    """What an anomaly event says about the record it flagged."""

    event_id: str
    record_id: Any
    topic: str | None
    partition: int | None
    offset: int | None
    timestamp_ms: int | None
    key: str | None  # the event's ``key`` (windowed models), else its Kafka record key
    score: float | None
    threshold: float | None
    model_version: str | None
    incident_id: str | None


@dataclass(frozen=True)
class IncidentRef:
    """An incident's extent: its key's rows from ``first_ms`` to ``last_ms`` (record times)."""

    incident_id: str
    key: str | None
    first_ms: int
    last_ms: int
    topic: str | None = None
    partition: int | None = None
    first_offset: int | None = None
    model_version: str | None = None


@dataclass(frozen=True)
class Outputs:
    """The worker's outputs feedback resolves against, and the records that could not be read."""

    events: dict[str, EventRef] = field(default_factory=dict)
    incidents: dict[str, IncidentRef] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class RowRefs:
    """How DATA's rows can be found: any of these may be missing (None).

    Events match by ``ids`` when given, else by ``coordinates``, the (topic, partition, offset)
    of a ``kafka://`` read (which passes no ids); incidents also use those, ``keys`` the series
    key per row (the Kafka key, or the key column); ``times_ms`` record times in epoch ms
    (Kafka timestamps, or the time column: numbers are taken as milliseconds).
    """

    n: int
    ids: Sequence[Any] | None = None
    coordinates: Sequence[tuple[str, int, int]] | None = None
    keys: Sequence[str | None] | None = None
    times_ms: np.ndarray | None = None


@dataclass(frozen=True)
class FeedbackLabels:
    """Per row of DATA: `CONFIRMED_ROW`, `FALSE_POSITIVE_ROW` or `UNLABELLED_ROW`."""

    rows: np.ndarray  # (n,) int8
    counts: FeedbackSummary  # of the feedback ids; the threshold fields are left unset here
    unresolved_ids: list[str] = field(default_factory=list)
    source: str = ""  # where the feedback came from, for the manifest

    @property
    def confirmed(self) -> np.ndarray:
        return self.rows == CONFIRMED_ROW

    @property
    def false_positive(self) -> np.ndarray:
        return self.rows == FALSE_POSITIVE_ROW

    def subset(self, keep: np.ndarray) -> FeedbackLabels:
        """The labels of the rows ``keep`` (a mask or indices) selects, counts unchanged."""
        return FeedbackLabels(self.rows[keep], self.counts, self.unresolved_ids, self.source)

    def summary(self) -> str:
        c = self.counts
        return (
            f"feedback: {c.confirmed} confirmed ({c.confirmed_rows} rows), {c.false_positive} "
            f"false positive ({c.false_positive_rows} rows), {c.unresolved} unresolved, "
            f"{c.skipped} unusable records skipped"
        )


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------
def _json_object(value: bytes | None) -> dict[str, Any] | str:
    """The record as a dict, or the reason it is not one."""
    if not value:
        return "empty"
    try:
        obj = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return "not_json"
    return obj if isinstance(obj, dict) else "not_object"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def iso_ms(value: Any) -> int | None:
    """Epoch milliseconds of an ISO 8601 time (``...Z`` or with an offset), None if not one."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return int(round(moment.timestamp() * 1000))


def parse_feedback(values: Iterable[Value]) -> Verdicts:
    """Feedback records -> the last verdict per id; unusable records counted by reason."""
    verdicts = Verdicts()
    read = 0
    for _, value in values:
        read += 1
        obj = _json_object(value)
        if isinstance(obj, str):
            verdicts.skipped[obj] += 1
            continue
        event, incident = _text(obj.get("event_id")), _text(obj.get("incident_id"))
        if (event is None) == (incident is None):
            verdicts.skipped["no_id" if event is None else "both_ids"] += 1
            continue
        verdict = obj.get("verdict")
        if verdict not in VERDICTS:
            verdicts.skipped["bad_verdict"] += 1
            continue
        if event is not None:
            verdicts.events[event] = verdict
        elif incident is not None:
            verdicts.incidents[incident] = verdict
    return Verdicts(verdicts.events, verdicts.incidents, verdicts.skipped, read)


def parse_event(obj: Mapping[str, Any], kafka_key: bytes | None = None) -> EventRef | None:
    """An anomaly event as `EventRef`; None without an ``event_id``."""
    event_id = _text(obj.get("event_id"))
    if event_id is None:
        return None
    source = _mapping(obj.get("source"))
    key = obj.get("key")
    if key is None and kafka_key is not None:
        key = kafka_key.decode("utf-8", "replace")
    return EventRef(
        event_id=event_id,
        record_id=obj.get("id"),
        topic=_text(source.get("topic")),
        partition=_int(source.get("partition")),
        offset=_int(source.get("offset")),
        timestamp_ms=_int(source.get("timestamp_ms")),
        key=str(key) if key is not None else None,
        score=_float(obj.get("score")),
        threshold=_float(obj.get("threshold")),
        model_version=_text(obj.get("model_version")),
        incident_id=_text(obj.get("incident_id")),
    )


def parse_incident(obj: Mapping[str, Any]) -> IncidentRef | None:
    """An incident record as `IncidentRef`; None without an id or readable times."""
    incident_id = _text(obj.get("incident_id"))
    first, last = iso_ms(obj.get("opened_at")), iso_ms(obj.get("last_anomaly_at"))
    if incident_id is None or first is None or last is None:
        return None
    source = _mapping(obj.get("source"))
    key = obj.get("key")
    return IncidentRef(
        incident_id=incident_id,
        key=str(key) if key is not None else None,
        first_ms=first,
        last_ms=max(first, last),
        topic=_text(source.get("topic")),
        partition=_int(source.get("partition")),
        first_offset=_int(source.get("first_offset")),
        model_version=_text(obj.get("model_version")),
    )


def parse_outputs(
    events: Iterable[Value],
    incidents: Iterable[Value] = (),
    event_keys: Sequence[bytes | None] | None = None,
) -> Outputs:
    """Events and incident records -> `Outputs`. An incident's updates replace its earlier
    records when they reach further (``closed`` holds its whole extent). ``event_keys`` are the
    events' Kafka record keys (the input record's key, which point-model events carry only there).
    """
    out = Outputs()
    for i, (_, value) in enumerate(events):
        obj = _json_object(value)
        kafka_key = event_keys[i] if event_keys is not None else None
        ref = parse_event(obj, kafka_key) if isinstance(obj, dict) else None
        if ref is None:
            out.skipped["event_" + (obj if isinstance(obj, str) else "without_event_id")] += 1
        else:
            out.events[ref.event_id] = ref
    for _, value in incidents:
        obj = _json_object(value)
        incident = parse_incident(obj) if isinstance(obj, dict) else None
        if incident is None:
            out.skipped["incident_" + (obj if isinstance(obj, str) else "unreadable")] += 1
            continue
        known = out.incidents.get(incident.incident_id)
        if known is None or incident.last_ms >= known.last_ms:
            out.incidents[incident.incident_id] = incident
    return out
