"""Incidents in the running worker: one `IncidentTracker` per assigned partition, fed every scored
record, its incident records sent with the batch's events, its state restored by replay.

**Feeding.** The scoring paths (point: `worker.outputs.batch_outputs`, windowed:
`worker.series_batch.series_outputs`) hand every scored record of a batch, in partition order, to
`IncidentRoom.track` before they build the events, so each event can carry its ``incident_id``.
The incident records go out in the batch's outputs: in the same transaction as the events
(exactly-once), or sent with them before the commit (at-least-once). `IncidentRoom.idle` closes,
by the wall clock, the incidents of partitions that receive nothing; the loop delivers those
records like a batch that re-commits the partition's current offset (with the new replay start).

**Restore: replay, like the series state.** Each commit's metadata carries ``"incidents"``: the
first offset a replay must re-read to rebuild every run the partition holds at that offset (the
earliest run's first anomaly; for a windowed model that anomaly's window start). On assignment,
before a partition's first record is scored, it is re-read from there (no further back than
``ANOMALY_STATE_REPLAY_MAX_RECORDS``), scored and fed to a fresh tracker; nothing is emitted and
no metric counts it. Since every incident field derives from record timestamps and offsets, the
rebuilt tracker continues exactly like the one that was lost. A commit without the field (none
yet, or by a worker without incidents) starts the partition's incidents afresh.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from anomaly_contract.windows import partition_series_key
from worker.client import ClientError, ConsumerClient, InRecord, Offsets, OutRecord, Partition
from worker.decode import DecodedBatch, DecodeError
from worker.incidents import IncidentRules, IncidentTracker, ScoredRecord
from worker.metrics import IncidentMetrics
from worker.scoring import BatchScores
from worker.series_keys import series_keys
from worker.settings import WorkerSettings
from worker.state import ReplayReader

log = logging.getLogger(__name__)

# The commit metadata's field with the incidents' replay start; the format of metadata that
# carries nothing else (point models: the series state writes its own format around it).
METADATA_FIELD = "incidents"
METADATA_FORMAT = "incident-replay/1"
# Batch ends remembered per partition until their offsets are committed (as `worker.state`).
MAX_MARKS = 256
POSITION_TIMEOUT_MS = 500

# One scored record as a scoring path hands it over: the input record and what the tracker sees.
ScoredRow = tuple[InRecord, ScoredRecord]
# Scores one re-read chunk of a partition for a restore: the rows `track` would have been given.
ScoreChunk = Callable[[list[InRecord]], list[ScoredRow]]


def incident_room_of(settings: WorkerSettings, metrics: IncidentMetrics) -> IncidentRoom | None:
    """The settings' incident room, None when incidents are off (no incident topic)."""
    rules = settings.incident_rules
    if rules is None or settings.incident_topic is None:
        return None
    return IncidentRoom(rules, settings.incident_topic, settings.state_replay_max_records, metrics)


def first_offsets(held: Mapping[Partition, Sequence[InRecord]]) -> dict[Partition, int]:
    """The first offset of each partition's records in a batch (partitions without any left out)."""
    return {tp: recs[0].offset for tp, recs in held.items() if recs}


def unpolled(
    room: IncidentRoom,
    consumer: ConsumerClient,
    restore: Callable[[dict[Partition, int]], None],
    repositioning: Collection[Partition] = (),
) -> dict[Partition, int]:
    """Restore the assigned partitions that have no incident state (nothing polled from them
    since their assignment) up to the consumer's position, so that an idle partition's open
    incidents close by the wall clock too. Returns those positions; raises `ClientError`.

    Partitions ``repositioning`` (revoked and assigned back, not yet sent to their committed
    offset) are left out: their position is still past the records the rebalance dropped, and
    a tracker rebuilt up to it would have seen records never scored live (and an idle close
    would commit past them)."""
    waiting = [tp for tp in room.missing(consumer.assignment()) if tp not in repositioning]
    if not waiting:
        return {}
    positions = {tp: consumer.position(tp, timeout_ms=POSITION_TIMEOUT_MS) for tp in waiting}
    known = {tp: offset for tp, offset in positions.items() if offset is not None}
    restore(known)
    return known


def _wall_ms() -> int:
    return int(time.time() * 1000)


def tracker_key(series_key: str, partition: int) -> str | None:
    """The tracker's key of a record's series key: None for the partition's keyless series."""
    return None if series_key == partition_series_key(partition) else series_key


def point_keys(
    records: Sequence[InRecord], decoded: DecodedBatch, key_field: str | None
) -> list[str | None]:
    """The series key of each decoded record of a point model's batch. A point model needs no
    key to score, so a key that cannot be one (not UTF-8, a list) stands for the partition's
    series here rather than dead-lettering the record."""
    keyless: dict[int, str] = {}  # partition -> its series key, made once per batch
    out: list[str | None] = []
    valid = decoded.valid_index
    for pos, key in zip(valid, series_keys(records, valid, key_field), strict=True):
        if isinstance(key, DecodeError):
            out.append(None)
            continue
        partition = records[pos].partition
        own = keyless.get(partition)
        if own is None:
            own = keyless[partition] = partition_series_key(partition)
        out.append(None if key == own else key)
    return out


@dataclass(frozen=True)
class IncidentOutcome:
    """What feeding a batch (or an idle sweep) gave: the incident id of each row fed (None: in no
    incident), the incident records to send, and how many opened and closed."""

    ids: list[str | None] = field(default_factory=list)
    records: list[OutRecord] = field(default_factory=list)
    opened: int = 0
    closed: int = 0
    offsets: Offsets = field(default_factory=dict)  # idle sweeps: the offsets to commit again


@dataclass
class _Marks:
    """Per partition: (next offset after a batch, incident replay start at that offset)."""

    by_partition: dict[Partition, deque[tuple[int, int]]] = field(default_factory=dict)

    def note(self, tp: Partition, next_offset: int, start: int) -> None:
        marks = self.by_partition.get(tp)
        if marks is None:
            marks = self.by_partition[tp] = deque(maxlen=MAX_MARKS)
        # marks at or past this offset are of batches redone (or an idle close re-committing
        # it): this one, the latest, replaces them, so the offsets stay ascending
        while marks and marks[-1][0] >= next_offset:
            marks.pop()
        marks.append((next_offset, start))

    def at(self, tp: Partition, offset: int) -> int | None:
        """The start noted for ``offset`` (or the latest before it: earlier is always safe)."""
        marks = self.by_partition.get(tp)
        found: tuple[int, int] | None = None
        while marks and marks[0][0] <= offset:
            found = marks.popleft()  # older marks are never needed again: commits grow
        if marks is None or found is None:
            return None
        marks.appendleft(found)  # the same offset may be committed again (a retry, an idle close)
        return found[1]


class IncidentRoom:
    """The incident trackers of every assigned partition, their outputs and their restore."""

    def __init__(
        self,
        rules: IncidentRules,
        topic: str,
        replay_cap: int,
        metrics: IncidentMetrics,
        wall_ms: Callable[[], int] = _wall_ms,
    ) -> None:
        self.rules = rules
        self.topic = topic
        self.replay_cap = int(replay_cap)
        self.metrics = metrics
        self._wall_ms = wall_ms
        self.trackers: dict[Partition, IncidentTracker] = {}
        # per tracker: the offset after the last record it has seen (live or re-read)
        self._next: dict[Partition, int] = {}
        self._marks = _Marks()
        self._model_version = ""
        metrics.open.set_function(lambda: float(self.open_incidents()))

    def open_incidents(self) -> int:
        return sum(t.open_incidents for t in list(self.trackers.values()))

    def missing(self, partitions: Iterable[Partition]) -> list[Partition]:
        """The partitions without a tracker (just assigned, or forgotten): to restore."""
        return sorted(tp for tp in partitions if tp not in self.trackers)

    def to_restore(self, firsts: Mapping[Partition, int]) -> list[Partition]:
        """The partitions of ``firsts`` (partition -> the first offset about to be scored)
        whose tracker is not as it was before that offset: none yet, or one that has seen
        records from there on (the input was sent back, say after a rebalance). A tracker
        behind the offset is current: offsets without a record (transaction markers) or
        without a score (dead letters) lie between."""
        return sorted(
            tp for tp, first in firsts.items()
            if tp not in self.trackers or self._next.get(tp, 0) > first
        )  # fmt: skip

    # ------------------------------------------------------------------------------- live
    def track(self, rows: Sequence[ScoredRow], model_version: str) -> IncidentOutcome:
        """Feed one batch's scored rows (grouped by partition, in partition order)."""
        self._model_version = model_version
        ids, found = self._feed(rows, model_version, self._wall_ms())
        return self._outcome(ids, found)

    def end_batch(self, offsets: Offsets) -> None:
        """A batch was fed: note, for each partition's next offset, where a replay rebuilding its
        runs at that offset starts (looked up when the offset is committed)."""
        for tp, next_offset in offsets.items():
            tracker = self.trackers.get(tp)
            if tracker is not None:
                start = tracker.replay_start()
                self._marks.note(tp, next_offset, next_offset if start is None else start)

    def idle(self, positions: Offsets) -> IncidentOutcome:
        """Close, by the wall clock, the incidents of partitions with nothing new; ``positions``
        are the partitions' offsets after their last delivered batch (committed again, with the
        replay start that no longer covers the closed runs)."""
        now = self._wall_ms()
        found: list[tuple[Partition, list[dict[str, Any]]]] = []
        offsets: Offsets = {}
        for tp, tracker in sorted(self.trackers.items()):
            batch = tracker.process([], model_version=self._model_version, now_ms=now)
            if not batch.records:
                continue
            found.append((tp, batch.records))
            position = positions.get(tp)
            if position is not None:
                offsets[tp] = position
                start = tracker.replay_start()
                self._marks.note(tp, position, position if start is None else start)
        outcome = self._outcome([], found)
        return IncidentOutcome([], outcome.records, outcome.opened, outcome.closed, offsets)

    def sweep(
        self,
        consumer: ConsumerClient,
        restore: Callable[[dict[Partition, int]], None],
        deliver: Callable[[list[OutRecord], Offsets], bool],
        positions: Offsets,
        repositioning: Collection[Partition] = (),
    ) -> Offsets:
        """The loop's idle step (once a second): restore the partitions not polled from yet
        (`unpolled`, but those ``repositioning``), close what the wall clock closes (`idle`) and
        ``deliver`` it like a batch (aborted: every tracker is rebuilt by replay with its next
        batch). Returns ``positions`` with those of the partitions restored here added."""
        try:
            positions = unpolled(self, consumer, restore, repositioning) | positions
        except ClientError as exc:
            log.warning("cannot restore the incidents of idle partitions yet: %s", exc)
        outcome = self.idle(positions)
        if outcome.records:
            if deliver(outcome.records, outcome.offsets):
                self.count(outcome)
            else:
                self.forget(None)
        return positions

    def count(self, outcome: IncidentOutcome) -> None:
        """The outcome was delivered: count its incidents opened and closed."""
        if outcome.opened:
            self.metrics.total.labels("opened").inc(outcome.opened)
        if outcome.closed:
            self.metrics.total.labels("closed").inc(outcome.closed)

    def forget(self, partitions: Iterable[Partition] | None) -> None:
        """Partitions revoked or their batch redone (None: all): rebuilt by replay on demand.
        The marks stay: batches already delivered may still be committed."""
        if partitions is None:
            self.trackers.clear()
            self._next.clear()
            return
        for tp in partitions:
            self.trackers.pop(tp, None)
            self._next.pop(tp, None)

    def _feed(
        self, rows: Sequence[ScoredRow], model_version: str, now_ms: int
    ) -> tuple[list[str | None], list[tuple[Partition, list[dict[str, Any]]]]]:
        ids: list[str | None] = []
        found: list[tuple[Partition, list[dict[str, Any]]]] = []
        start = 0
        while start < len(rows):
            first = rows[start][0]
            end = start + 1
            while end < len(rows) and rows[end][0].partition == first.partition:
                end += 1
            tp = Partition(first.topic, first.partition)
            tracker = self.trackers.get(tp)
            if tracker is None:
                tracker = self.trackers[tp] = IncidentTracker(self.rules, tp.topic, tp.partition)
            batch = tracker.process(
                [s for _, s in rows[start:end]], model_version=model_version, now_ms=now_ms
            )
            ids += batch.incident_ids
            self._next[tp] = max(self._next.get(tp, 0), rows[end - 1][0].offset + 1)
            if batch.records:
                found.append((tp, batch.records))
            start = end
        return ids, found

    def _outcome(
        self, ids: list[str | None], found: list[tuple[Partition, list[dict[str, Any]]]]
    ) -> IncidentOutcome:
        records: list[OutRecord] = []
        opened = closed = 0
        for _, incidents in found:
            for incident in incidents:
                opened += incident["status"] == "opened"
                closed += incident["status"] == "closed"
                key = incident["key"]
                value = json.dumps(incident, allow_nan=False, separators=(",", ":")).encode()
                records.append(
                    OutRecord(self.topic, None if key is None else key.encode(), value, [])
                )
        return IncidentOutcome(ids, records, opened, closed)

    # ---------------------------------------------------------------------------- restore
    def set_model_version(self, version: str) -> None:
        """The version a replay names in the runs it rebuilds (the one now scoring)."""
        self._model_version = version

    def commit_metadata(self, tp: Partition, offset: int, series_metadata: str) -> str:
        """``series_metadata`` (the series state's, or empty) with the incidents' replay start
        for ``offset`` added; unchanged when none was noted for it."""
        start = self._marks.at(tp, offset)
        if start is None:
            return series_metadata
        data: dict[str, Any] = {"format": METADATA_FORMAT}
        if series_metadata:
            try:
                data = json.loads(series_metadata)
            except ValueError:
                data = {"format": METADATA_FORMAT}
        data[METADATA_FIELD] = start
        return json.dumps(data, separators=(",", ":"))

    def replay_start(self, tp: Partition, metadata: str | None, until: int) -> int:
        """Where to re-read ``tp`` from to rebuild its runs before offset ``until`` (``until``:
        nothing to re-read). Runs that began before the cap are cut: logged, rebuilt partially
        (they get a new id; the old one is never closed)."""
        start = start_in_metadata(metadata)
        if start is None or start >= until:
            return until
        floor = max(0, until - self.replay_cap)
        if start < floor:
            log.warning(
                "incident runs of %s[%d] began %d records back, beyond the replay cap of %d: "
                "they restart as new incidents",
                tp.topic,
                tp.partition,
                until - start,
                self.replay_cap,
                extra={"partition": tp.partition, "incident_start": start},
            )
        return max(start, floor)

    def begin_replay(self, tp: Partition, until: int) -> Callable[[Sequence[ScoredRow]], None]:
        """A fresh tracker for ``tp`` as before offset ``until`` and what feeds it the re-read
        rows before it, emitting nothing (the caller `forget`s ``tp`` when the replay fails: it
        is restored again with its next batch). One wall-clock instant throughout: a replay
        closes nothing by the wall clock."""
        self.trackers[tp] = IncidentTracker(self.rules, tp.topic, tp.partition)
        self._next[tp] = until
        now = self._wall_ms()

        def feed(rows: Sequence[ScoredRow]) -> None:
            if rows:
                self._feed(rows, self._model_version, now)

        return feed

    def restore(
        self,
        tp: Partition,
        until: int,
        metadata: str | None,
        reader: ReplayReader,
        score: ScoreChunk,
        model_version: str,
    ) -> int:
        """Rebuild ``tp``'s tracker as it was before offset ``until`` (point models: the series
        state re-reads for windowed ones and calls `begin_replay` itself). Returns the rows fed."""
        self._model_version = model_version
        start = self.replay_start(tp, metadata, until)
        feed = self.begin_replay(tp, until)
        fed = 0
        started = time.perf_counter()
        try:
            for chunk in reader.read(tp, start, until):
                rows = score(chunk)
                feed(rows)
                fed += len(rows)
        except BaseException:
            self.forget([tp])
            raise
        if fed:
            log.info(
                "incidents of %s[%d] restored: %d records re-read from offset %d in %.2fs, "
                "%d runs held",
                tp.topic,
                tp.partition,
                until - start,
                start,
                time.perf_counter() - started,
                len(self.trackers[tp].export_state()["runs"]),
                extra={"partition": tp.partition, "incident_start": start},
            )
        return fed


def start_in_metadata(metadata: str | None) -> int | None:
    """The incidents' replay start a commit's metadata carries, None when it carries none."""
    if not metadata:
        return None
    try:
        data = json.loads(metadata)
        value = data.get(METADATA_FIELD) if isinstance(data, dict) else None
        return int(value) if value is not None else None
    except (ValueError, TypeError):
        return None


def point_rows(
    records: Sequence[InRecord],
    decoded: DecodedBatch,
    scored: BatchScores,
    tops: dict[int, list[tuple[str, float]]],
    key_field: str | None,
) -> tuple[list[int], list[ScoredRow]]:
    """A point model's scored rows for `IncidentRoom.track`: the row of ``decoded.x`` of each
    and the row itself (finite scores only: the others are dead-lettered). ``tops`` holds the
    top features of the anomalous rows, their contributions to the incident."""
    keys = point_keys(records, decoded, key_field)
    threshold = scored.threshold
    scale = 1.0 / threshold if threshold > 0 else 0.0
    # plain lists: indexing numpy arrays one element at a time costs more than the tracker
    severities = (scored.scores * scale).tolist()
    anomalous = scored.is_anomaly.tolist()
    valid = decoded.valid_index
    index = np.flatnonzero(scored.finite).tolist()
    rows: list[ScoredRow] = []
    for j in index:
        r = records[valid[j]]
        if anomalous[j]:
            record = ScoredRecord(keys[j], r.timestamp, r.offset, True, severities[j], dict(tops.get(j, ())))  # fmt: skip
        else:
            record = ScoredRecord(keys[j], r.timestamp, r.offset, False, severities[j], _NONE)
        rows.append((r, record))
    return index, rows


_NONE: Mapping[str, float] = MappingProxyType({})  # the contributions of a normal record
