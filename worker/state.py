"""The worker's per-key state (windowed models): one store per assigned partition, one restore path.

**Why per partition.** A partition is the unit Kafka moves between workers and the unit whose
order the windows follow, so it is the unit of state too: a revoked partition's state is dropped
in one step, an assigned one is rebuilt from that partition alone, and a key seen in two
partitions (possible with ``ANOMALY_KEY_FIELD``) keeps one window per partition, each in that
partition's order, which replaying the partition reproduces (a shared window would depend on
how polls interleaved the partitions).

**Restore: the input topic is the changelog.** Nothing is written for the state. Each commit
carries, in its offset metadata, the offset from which replaying the partition rebuilds every
window held at that offset (`replay_start`: the oldest record any held key still needs, no
further back than ``ANOMALY_STATE_REPLAY_MAX_RECORDS``). On assignment, before its first record
is scored, the partition is re-read from there up to that record, state only: decoded and
pushed, never scored, nothing emitted (`SeriesStateRoom.restore`). Keys whose window began
before the cap warm up again; the commit says how many (`cut`), the restore counts them.

What "needed" means per key: the first offset of its window; for a key the model was not
trained on, the first record it was ever seen with here, since its normalisation is learnt
online from its first records and must be learnt from the same ones again.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from anomaly_contract.windows import Window, WindowBatch
from worker.client import InRecord, Offsets, Partition
from worker.metrics import StateMetrics

log = logging.getLogger(__name__)

METADATA_FORMAT = "series-replay/1"
# The replay start is a minimum over every key held: recomputed at most this often (a start
# computed earlier is never later than the true one, so reusing it only replays a little more).
REPLAY_START_REFRESH_S = 1.0
# Batch ends remembered per partition until their offsets are committed.
MAX_MARKS = 256


class SeriesStore(Protocol):
    """One partition's windows (`anomaly_contract.series.SeriesState`, or a bare `KeyedWindows`)."""

    @property
    def evicted(self) -> int: ...
    def push_many(self, keys: Sequence[str], x: np.ndarray, offsets: np.ndarray) -> WindowBatch: ...
    def discard(self, key: str) -> bool: ...
    def __len__(self) -> int: ...
    def __contains__(self, key: object) -> bool: ...
    def keys(self) -> list[str]: ...


class ReplayReader(Protocol):
    """Reads one partition's records in ``[start, end)``, batch by batch (no group, no commit)."""

    def read(self, tp: Partition, start: int, end: int) -> Iterator[list[InRecord]]: ...
    def close(self) -> None: ...


# Rows to push from a chunk of replayed records: (keys, x, offsets) of the records that decode,
# in partition order (the live path's decoding and key extraction, so both build the same state).
RowsOf = Callable[[list[InRecord]], tuple[list[str], np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class ReplayPlan:
    """What a commit's metadata says about the state at its offset."""

    start: int  # re-read from here
    cut: int = 0  # keys held whose history began before ``start`` (they warm up again)

    def to_metadata(self) -> str:
        return json.dumps({"format": METADATA_FORMAT, "start": self.start, "cut": self.cut})

    @classmethod
    def from_metadata(cls, metadata: str | None) -> ReplayPlan | None:
        """The plan a commit carried; None when it carried none (or something else)."""
        if not metadata:
            return None
        try:
            data = json.loads(metadata)
            if data.get("format") != METADATA_FORMAT:
                return None
            return cls(int(data["start"]), int(data.get("cut", 0)))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


@dataclass(eq=False)
class PartitionState:
    """One partition's store and what a restore of it needs."""

    store: SeriesStore
    needed: dict[str, int] = field(default_factory=dict)  # key -> oldest offset it needs
    plan: ReplayPlan | None = None  # the latest computed
    planned_at: float = float("-inf")
    evicted_seen: int = 0
    next_offset: int = 0  # after the last record pushed (or the offset a restore rebuilt to)


class SeriesStateRoom:
    """Every assigned partition's series state; restored on assignment, dropped on revocation.

    ``new_store`` builds an empty store for a partition; ``learns_online(key)`` is True for keys
    whose normalisation is learnt from their first records (keys the model was not trained
    on). ``replay_cap`` bounds how far back a restore reads.

    The plans noted at batch ends (``marks``: next offset -> plan) are facts about the input, not
    about a store: they outlive a dropped partition (its batches in flight may still be committed)
    and pass to the room of a new model version whose windows have the same shape.
    """

    def __init__(
        self,
        new_store: Callable[[], SeriesStore],
        learns_online: Callable[[str], bool],
        replay_cap: int,
        metrics: StateMetrics,
        clock: Callable[[], float] = time.monotonic,
        marks: dict[Partition, deque[tuple[int, ReplayPlan]]] | None = None,
    ) -> None:
        self._new_store = new_store
        self._learns_online = learns_online
        self.replay_cap = int(replay_cap)
        self.metrics = metrics
        self._clock = clock
        self._parts: dict[Partition, PartitionState] = {}
        self.marks: dict[Partition, deque[tuple[int, ReplayPlan]]] = marks if marks else {}
        metrics.keys.set_function(lambda: float(self.keys_held()))

    # ----------------------------------------------------------------------------- queries
    def __contains__(self, tp: object) -> bool:
        return tp in self._parts

    def holds(self, tp: Partition, first: int) -> bool:
        """True when ``tp``'s state is as it was before offset ``first`` (the first record
        about to be pushed): held, and not past it (a partition sent back to an earlier offset,
        say after a rebalance, must be rebuilt). State behind ``first`` is current: offsets
        without a record (transaction markers) or not pushed (dead letters) lie between."""
        part = self._parts.get(tp)
        return part is not None and part.next_offset <= first

    def keys_held(self) -> int:
        return sum(len(p.store) for p in list(self._parts.values()))

    def partitions(self) -> set[Partition]:
        return set(self._parts)

    # ------------------------------------------------------------------------------- state
    def _part(self, tp: Partition) -> PartitionState:
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = PartitionState(self._new_store())
        return part

    def push(self, tp: Partition, key: str, vector: np.ndarray, offset: int) -> Window | None:
        """Add one record of ``key`` in partition ``tp``; its full window or None (warming)."""
        row = np.asarray(vector, dtype=np.float64).reshape(1, -1)
        batch = self.push_many(tp, [key], row, np.array([offset], dtype=np.int64))
        return batch.window(0) if batch.rows.size else None

    def push_many(
        self, tp: Partition, keys: Sequence[str], x: np.ndarray, offsets: np.ndarray
    ) -> WindowBatch:
        """Add records of partition ``tp`` in order (as `push` one by one); the full windows.

        What each key needs after the batch: the first offset of its latest window, for a key
        with one that does not learn online; else what it needed before; else its first offset
        here (a warming key, or one learning online, keeps its oldest)."""
        part = self._parts.get(tp) or self._part(tp)
        offsets = np.asarray(offsets, dtype=np.int64).reshape(len(keys))
        batch = part.store.push_many(keys, x, offsets)
        if offsets.size:
            part.next_offset = max(part.next_offset, int(offsets[-1]) + 1)
        needed = part.needed
        keeps_first = np.ones(len(keys), dtype=bool)  # rows that only set a missing need
        keeps_first[batch.rows] = False
        learns = self._learns_online
        moves: list[tuple[str, int]] = []
        for i, first in zip(batch.rows.tolist(), batch.first_offsets.tolist(), strict=True):
            if learns(keys[i]):
                keeps_first[i] = True
            else:
                moves.append((keys[i], first))
        for i in np.flatnonzero(keeps_first).tolist():  # in order: a key's oldest wins
            needed.setdefault(keys[i], int(offsets[i]))
        needed.update(moves)  # in order: a key's latest window wins
        return batch

    def end_batch(self, offsets: Offsets) -> None:
        """A batch was pushed: remember, for each partition's next offset, where a restore
        to that offset would start (looked up when the offset is committed)."""
        now = self._clock()
        for tp, next_offset in offsets.items():
            part = self._parts.get(tp)
            if part is None:
                continue
            self._count_evictions(part)
            if part.plan is None or now - part.planned_at >= REPLAY_START_REFRESH_S:
                part.plan = self.replay_plan(part, next_offset)
                part.planned_at = now
            marks = self.marks.get(tp)
            if marks is None:
                marks = self.marks[tp] = deque(maxlen=MAX_MARKS)
            marks.append((next_offset, part.plan))

    def _count_evictions(self, part: PartitionState) -> None:
        """Forget what evicted keys needed (they are gone: a restore need not rebuild them)."""
        evicted = part.store.evicted
        if evicted == part.evicted_seen:
            return
        self.metrics.evicted.inc(evicted - part.evicted_seen)
        part.evicted_seen = evicted
        store = part.store
        part.needed = {k: v for k, v in part.needed.items() if k in store}

    def replay_plan(self, part: PartitionState, next_offset: int) -> ReplayPlan:
        """Where to re-read from to rebuild ``part`` as it is after ``next_offset - 1``."""
        if not part.needed:
            return ReplayPlan(next_offset)
        needed = np.fromiter(part.needed.values(), dtype=np.int64, count=len(part.needed))
        floor = max(0, next_offset - self.replay_cap)
        oldest = int(needed.min())
        if oldest >= floor:
            return ReplayPlan(oldest)
        return ReplayPlan(floor, cut=int((needed < floor).sum()))

    def commit_metadata(self, tp: Partition, offset: int) -> str:
        """The metadata to commit with ``offset`` of ``tp``: the plan of the batch that ended
        there (or of the latest before it: an earlier start is always safe); empty when unknown,
        and a restore then reads back the cap."""
        marks = self.marks.get(tp)
        found: tuple[int, ReplayPlan] | None = None
        while marks and marks[0][0] <= offset:
            found = marks.popleft()  # older marks are never needed again: commits grow
        if marks is None or found is None:
            return ""
        marks.appendleft(found)  # the same offset may be committed again (a retry)
        return found[1].to_metadata()

    def drop(self, partitions: Iterable[Partition] | None) -> None:
        """Forget partitions (revoked, or None: all of them, on a rejoin or a new model).

        Each key is discarded from its store, so what the model's normaliser learnt online for
        it goes too: a restore must learn it again from the same records."""
        for tp in list(self._parts) if partitions is None else partitions:
            part = self._parts.pop(tp, None)
            if part is not None:
                held = part.store.keys()  # a list: the store changes below
                for key in held:
                    part.store.discard(key)

    # ----------------------------------------------------------------------------- restore
    def restore(
        self,
        tp: Partition,
        until: int,
        committed_metadata: str | None,
        reader: ReplayReader,
        rows_of: RowsOf,
        heartbeat: Callable[[], None] = lambda: None,
        *,
        needed_from: int | None = None,
        replay_chunk: Callable[[list[InRecord]], None] | None = None,
    ) -> int:
        """Rebuild ``tp``'s state from scratch as it was before offset ``until`` (the first
        record about to be scored): re-read the partition from the replay start its commit
        carried and push every record, scoring nothing. Returns the records re-read.

        ``needed_from``: an earlier start someone else needs (the incidents' runs), still no
        further back than the cap. ``replay_chunk``: pushes each re-read chunk instead of
        ``rows_of`` (through `push`, as the live path does), free to score what it needs.

        Without metadata (no commit, or one by a worker without windowed state) it reads back
        the cap. Raises the reader's `ClientError` when the partition cannot be read; the
        partition is then left unrestored (the caller retries). ``heartbeat`` is called after
        each chunk read: a long restore is work, not a hung loop (liveness).
        """
        started = time.perf_counter()
        plan = ReplayPlan.from_metadata(committed_metadata)
        floor = max(0, until - self.replay_cap)
        start = floor if plan is None else max(plan.start, floor)
        if needed_from is not None:
            start = max(min(start, needed_from), floor)
        self.drop([tp])
        part = self._part(tp)
        n_read = 0
        try:
            for records in reader.read(tp, start, until):
                n_read += len(records)
                if replay_chunk is not None:
                    replay_chunk(records)
                else:
                    self.push_many(tp, *rows_of(records))
                heartbeat()
        except BaseException:
            self.drop([tp])
            raise
        self._count_evictions(part)
        part.next_offset = until
        cut = plan.cut if plan is not None and plan.start >= floor else 0
        seconds = time.perf_counter() - started
        self.metrics.restores.inc()
        self.metrics.restore_records.inc(n_read)
        self.metrics.restore_seconds.observe(seconds)
        self.metrics.keys_cut.inc(cut)
        log.info(
            "series state of %s[%d] restored: %d records re-read from offset %d in %.2fs, "
            "%d keys held",
            tp.topic,
            tp.partition,
            n_read,
            start,
            seconds,
            len(part.store),
            extra={"partition": tp.partition, "replay_start": start, "keys_cut": cut},
        )
        return n_read
