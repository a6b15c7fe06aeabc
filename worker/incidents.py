"""Incidents: anomalies of one series key close in record time, grouped into one alert.

Pure: scored records (in partition order) and the wall clock go in, incident records come out; no
Kafka, no metrics. One `IncidentTracker` per assigned input partition.

Rules (`IncidentRules`):

- A *run* of a key is a chain of its anomalies, each within ``gap_ms`` (by record timestamp) of the
  one before. A run becomes an incident when it holds ``min_anomalies`` anomalies; a shorter run
  (a lone blip) ends silently: its anomalies stay plain events.
- ``opened`` is emitted by the anomaly that reaches the minimum, ``updated`` by a later anomaly of
  the incident when at least ``update_ms`` of record time passed since the incident's last record,
  ``closed`` once the partition's newest record timestamp is more than ``gap_ms`` past the last
  anomaly. On an idle partition the wall clock stands in: the newest timestamp is taken to advance
  with the wall time spent since it last advanced, so a replay of old records (which keeps the
  partition busy) never closes anything by the wall clock.
- Everything in a record, ``closed_at`` included (last anomaly + gap), derives from record
  timestamps and offsets, so a replay of the same records yields the same incidents, ids and
  contents whatever the batch boundaries.
- ``records`` counts the key's records from the run's first anomaly to the close, anomalous or not;
  ``top_features`` ranks features by their mean contribution over the incident's anomalies.

`export_state` / `IncidentTracker.from_state` carry the open runs as JSON-able data, so a restored
tracker continues exactly like one that was never interrupted.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

STATE_FORMAT = 1
# Fixed namespace: ids are UUIDv5 of their inputs, the same on every replica and every replay.
_ID_NAMESPACE = uuid.UUID("5f0e7a52-3c1d-4e7b-9a53-2a4d8c9e1b60")


def event_id(topic: str, partition: int, offset: int, model_version: str) -> str:
    """The stable id of the anomaly event of one input record scored by one model version:
    ``uuid5(_ID_NAMESPACE, json.dumps(["event", topic, partition, offset, model_version]))``,
    with the JSON's string parts and the hash of the namespace computed once per topic and
    version (an event's id is a per-event cost)."""
    head, tail = _event_name_parts(topic, model_version)
    digest = head.copy()
    digest.update(f"{partition}, {offset}".encode())
    digest.update(tail)
    b = bytearray(digest.digest()[:16])
    b[6] = (b[6] & 0x0F) | 0x50  # version 5
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@functools.lru_cache(maxsize=64)
def _event_name_parts(topic: str, model_version: str) -> tuple[Any, bytes]:
    """SHA-1 over the namespace and ``["event", <topic>, `` ; and ``, <version>]``."""
    head = hashlib.sha1(_ID_NAMESPACE.bytes, usedforsecurity=False)
    head.update(f"[{json.dumps('event')}, {json.dumps(topic)}, ".encode())
    return head, f", {json.dumps(model_version)}]".encode()


def incident_id(key: str | None, topic: str, partition: int, first_offset: int) -> str:
    """The stable id of the incident of series ``key`` whose first anomaly is at that offset."""
    return str(
        uuid.uuid5(_ID_NAMESPACE, json.dumps(["incident", key, topic, partition, first_offset]))
    )


def _iso_ms(timestamp_ms: int) -> str:
    moment = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class IncidentRules:
    """How anomalies group: the gap between them, the minimum count, the update throttle."""

    gap_ms: int
    min_anomalies: int
    update_ms: int
    top_features: int = 3

    def __post_init__(self) -> None:
        if (
            self.gap_ms <= 0
            or self.min_anomalies < 1
            or self.update_ms < 0
            or self.top_features < 0
        ):
            raise ValueError(
                "incident rules need gap_ms > 0, min_anomalies >= 1, update_ms >= 0 and "
                f"top_features >= 0, got {self}"
            )


@dataclass(slots=True)  # not frozen: built once per scored record, where frozen costs 3x
class ScoredRecord:
    """One scored input record as the tracker sees it (``key`` None: the partition's series)."""

    key: str | None
    timestamp_ms: int
    offset: int
    is_anomaly: bool
    severity: float = 0.0
    contributions: Mapping[str, float] = field(default_factory=dict)
    # The earliest offset a replay must re-read from to score this record again as it was
    # scored (a windowed model: its window's first offset); None: the record's own offset.
    replay_from: int | None = None


@dataclass
class _Run:
    """A key's current chain of anomalies: an incident once ``opened``."""

    key: str | None
    first_offset: int
    first_anomaly_ms: int
    last_anomaly_ms: int
    records: int = 0
    anomalies: int = 0
    peak_severity: float = 0.0
    contribution_sums: dict[str, float] = field(default_factory=dict)
    model_version: str = ""
    opened: bool = False
    last_emitted_ms: int = 0
    replay_from: int = -1  # where a replay rebuilding this run starts (<= first_offset)

    def add(self, record: ScoredRecord, model_version: str) -> None:
        self.records += 1
        if not record.is_anomaly:
            return
        self.anomalies += 1
        self.last_anomaly_ms = max(self.last_anomaly_ms, record.timestamp_ms)
        self.peak_severity = max(self.peak_severity, record.severity)
        for name, value in record.contributions.items():
            self.contribution_sums[name] = self.contribution_sums.get(name, 0.0) + value
        self.model_version = model_version


@dataclass(frozen=True)
class IncidentBatch:
    """What one batch gives: incident records in order, and the incident id of each input record.

    ``incident_ids[i]`` is the id of the open incident anomaly ``i`` belongs to, or None (normal
    records, and anomalies of a run that has not reached the minimum yet).
    """

    records: list[dict[str, Any]]
    incident_ids: list[str | None]


class IncidentTracker:
    """Incidents of the series keys of one input partition."""

    def __init__(self, rules: IncidentRules, topic: str, partition: int) -> None:
        self.rules = rules
        self.topic = topic
        self.partition = partition
        self._runs: dict[str | None, _Run] = {}
        self._newest_ms: int | None = None
        self._newest_seen_at_ms: int | None = None  # wall clock when _newest_ms last advanced
        # (end time, first offset) of runs, a min-heap: the sweep looks only at runs due to end.
        # An anomaly pushes its run's new end; entries whose run moved on are skipped when popped.
        self._ends: list[tuple[int, int, str | None]] = []
        # (replay start, first offset, key) of runs, a min-heap read by `replay_start`; entries
        # of runs that ended are dropped lazily, when they reach the top.
        self._starts: list[tuple[int, int, str | None]] = []
        self._open = 0

    @property
    def open_incidents(self) -> int:
        """Incidents opened and not closed (a count kept as they change: a metrics scrape reads
        it from another thread)."""
        return self._open

    def replay_start(self) -> int | None:
        """The offset a replay must start at to rebuild every run held (opened or not yet),
        None when none is held. Amortised O(log runs): cheap enough for every batch."""
        while self._starts:
            _, first_offset, key = self._starts[0]
            run = self._runs.get(key)
            if run is not None and run.first_offset == first_offset:
                return run.replay_from
            heapq.heappop(self._starts)
        return None

    def process(
        self, records: Sequence[ScoredRecord], *, model_version: str, now_ms: int
    ) -> IncidentBatch:
        """Feed one batch (partition order; may be empty on an idle poll) at wall time ``now_ms``."""
        out: list[dict[str, Any]] = []
        ids: list[str | None] = []
        for record in records:
            if self._newest_ms is None or record.timestamp_ms > self._newest_ms:
                self._newest_ms = record.timestamp_ms
                self._newest_seen_at_ms = now_ms
                out += self._end_runs_before(self._newest_ms)
            ids.append(self._add(record, model_version, out))
        if self._newest_ms is not None and self._newest_seen_at_ms is not None:
            idle_ms = now_ms - self._newest_seen_at_ms
            if idle_ms > 0:
                out += self._end_runs_before(self._newest_ms + idle_ms)
        return IncidentBatch(out, ids)

    def _add(
        self, record: ScoredRecord, model_version: str, out: list[dict[str, Any]]
    ) -> str | None:
        run = self._runs.get(record.key)
        # Only after out-of-order timestamps: a run that began behind the partition's newest
        # timestamp is not swept until that advances, so a far later anomaly ends it here.
        late = run is not None and record.timestamp_ms - run.last_anomaly_ms > self.rules.gap_ms
        if run is not None and record.is_anomaly and late:
            out += self._finish(run)
            run = None
        if run is None:
            if not record.is_anomaly:
                return None
            run = _Run(record.key, record.offset, record.timestamp_ms, record.timestamp_ms)
            run.replay_from = record.offset if record.replay_from is None else record.replay_from
            self._runs[record.key] = run
            self._push_start(run)
        previous_last_anomaly_ms = run.last_anomaly_ms if run.anomalies else None
        run.add(record, model_version)
        if not record.is_anomaly:
            return None
        if run.last_anomaly_ms != previous_last_anomaly_ms:
            self._push_end(run)
        if not run.opened and run.anomalies >= self.rules.min_anomalies:
            run.opened = True
            self._open += 1
            run.last_emitted_ms = record.timestamp_ms
            out.append(self._incident_record(run, "opened"))
        elif run.opened and record.timestamp_ms - run.last_emitted_ms >= self.rules.update_ms:
            run.last_emitted_ms = record.timestamp_ms
            out.append(self._incident_record(run, "updated"))
        return self._id(run) if run.opened else None

    def _end_runs_before(self, time_ms: int) -> list[dict[str, Any]]:
        """End every run whose gap has passed at ``time_ms``: closed records, in a fixed order."""
        ended: dict[int, _Run] = {}  # by first offset: a run may have several entries due
        while self._ends and self._ends[0][0] < time_ms:
            end_ms, first_offset, key = heapq.heappop(self._ends)
            run = self._runs.get(key)
            current = run is not None and run.first_offset == first_offset
            if current and run is not None and run.last_anomaly_ms + self.rules.gap_ms == end_ms:
                ended[first_offset] = run
        out: list[dict[str, Any]] = []
        for run in sorted(ended.values(), key=lambda run: (run.last_anomaly_ms, run.first_offset)):
            out += self._finish(run)
        return out

    def _push_end(self, run: _Run) -> None:
        # first_offset is unique in a partition, so tuples never compare the keys (str | None).
        end = (run.last_anomaly_ms + self.rules.gap_ms, run.first_offset, run.key)
        heapq.heappush(self._ends, end)

    def _push_start(self, run: _Run) -> None:
        heapq.heappush(self._starts, (run.replay_from, run.first_offset, run.key))

    def _finish(self, run: _Run) -> list[dict[str, Any]]:
        del self._runs[run.key]
        if not run.opened:
            return []
        self._open -= 1
        return [self._incident_record(run, "closed")]

    def _id(self, run: _Run) -> str:
        return incident_id(run.key, self.topic, self.partition, run.first_offset)

    def _incident_record(self, run: _Run, status: str) -> dict[str, Any]:
        means = {name: total / run.anomalies for name, total in run.contribution_sums.items()}
        ranked = sorted(means.items(), key=lambda item: (-item[1], item[0]))
        closed_at = run.last_anomaly_ms + self.rules.gap_ms if status == "closed" else None
        return {
            "incident_id": self._id(run),
            "key": run.key,
            "status": status,
            "opened_at": _iso_ms(run.first_anomaly_ms),
            "last_anomaly_at": _iso_ms(run.last_anomaly_ms),
            "closed_at": _iso_ms(closed_at) if closed_at is not None else None,
            "records": run.records,
            "anomalies": run.anomalies,
            "peak_severity": run.peak_severity,
            "top_features": [
                {"name": name, "error": error} for name, error in ranked[: self.rules.top_features]
            ],
            "model_version": run.model_version,
            "source": {
                "topic": self.topic,
                "partition": self.partition,
                "first_offset": run.first_offset,
            },
        }

    # --- state ----------------------------------------------------------------------------------

    def export_state(self) -> dict[str, Any]:
        """The open runs and the newest timestamp, as JSON-able data (wall clock not included)."""
        runs = sorted(self._runs.values(), key=lambda run: run.first_offset)
        return {
            "format": STATE_FORMAT,
            "topic": self.topic,
            "partition": self.partition,
            "newest_ms": self._newest_ms,
            "runs": [
                vars(run).copy() | {"contribution_sums": dict(run.contribution_sums)}
                for run in runs
            ],
        }

    @classmethod
    def from_state(
        cls, rules: IncidentRules, state: Mapping[str, Any], *, now_ms: int
    ) -> IncidentTracker:
        """A tracker continuing from `export_state` output; the idle clock restarts at ``now_ms``.

        Raises ValueError on state of another format or with malformed runs.
        """
        if state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"incident state format {state.get('format')!r}, expected {STATE_FORMAT}"
            )
        tracker = cls(rules, str(state["topic"]), int(state["partition"]))
        newest = state.get("newest_ms")
        tracker._newest_ms = int(newest) if newest is not None else None
        tracker._newest_seen_at_ms = now_ms if newest is not None else None
        for fields in _as_list(state.get("runs", [])):
            run = _run_from_state(fields)
            tracker._runs[run.key] = run
            tracker._push_end(run)
            tracker._push_start(run)
            tracker._open += run.opened
        return tracker


def _as_list(value: object) -> Iterable[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError("incident state 'runs' must be a list of objects")
    return value


def _run_from_state(fields: Mapping[str, Any]) -> _Run:
    """One run of `IncidentTracker.export_state`, its types checked (ValueError if malformed)."""
    try:
        key = fields["key"]
        if key is not None and not isinstance(key, str):
            raise TypeError(f"key {key!r} is not a string")
        return _Run(
            key=key,
            first_offset=int(fields["first_offset"]),
            first_anomaly_ms=int(fields["first_anomaly_ms"]),
            last_anomaly_ms=int(fields["last_anomaly_ms"]),
            records=int(fields["records"]),
            anomalies=int(fields["anomalies"]),
            peak_severity=float(fields["peak_severity"]),
            contribution_sums={str(k): float(v) for k, v in fields["contribution_sums"].items()},
            model_version=str(fields["model_version"]),
            opened=bool(fields["opened"]),
            last_emitted_ms=int(fields["last_emitted_ms"]),
            replay_from=int(fields.get("replay_from", fields["first_offset"])),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"malformed incident run in state: {exc!r}") from exc
