"""An in-memory implementation of the worker's client seam (`worker.client`), for unit tests.

It stands in for our own Protocols, not for Kafka: the integration tests run the kafka-python
implementation against the real broker. Records are queued per partition; `FakeConsumer.poll`
hands them out in order from its position, commits are recorded, and the rebalance listener is
called as the test scripts it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

from worker.client import (
    MEMBER_STABLE,
    ClientError,
    OffsetMetadata,
    Offsets,
    OutRecord,
    Partition,
    RebalanceListener,
    RequestTimeout,
)


@dataclass
class FakeRecord:
    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    timestamp: int = 1_700_000_000_000
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class FakeResult:
    """A send's outcome or a commit in flight: done when the test (or a flush) says so."""

    def __init__(self, on_done: Callable[[Exception | None], None] | None = None) -> None:
        self.is_done = False
        self.exception: BaseException | None = None
        self._on_done = on_done

    def failed(self) -> bool:
        return self.is_done and self.exception is not None

    def success(self) -> None:
        self.is_done = True
        if self._on_done is not None:
            self._on_done(None)

    def failure(self, exc: Exception) -> None:
        self.is_done, self.exception = True, exc
        if self._on_done is not None:
            self._on_done(exc)

    def __await__(self) -> Generator[Any, None, None]:
        if not self.is_done:
            yield self
        if self.exception is not None:
            raise self.exception


def drive(coro: Awaitable[None]) -> None:
    """Run a coroutine that only awaits done results and `FakeConsumer.io_sleep`."""
    assert isinstance(coro, Coroutine)
    try:
        while True:
            coro.send(None)
    except StopIteration:
        return


class FakeProducer:
    """Records what is sent; a flush acknowledges everything unless ``hold_acks``."""

    def __init__(self) -> None:
        self.pending: list[FakeResult] = []
        self.sent: list[OutRecord] = []
        self.hold_acks = False
        self.transactions: list[str] = []  # begin / commit / abort, in order
        self.txn_offsets: list[Offsets] = []
        self.txn_metadata: list[dict[Partition, str]] = []
        self.offset_metadata: OffsetMetadata = lambda tp, offset: ""
        self.fail_commits = 0  # the next commit_transaction calls that fail
        # the group whose committed offsets a committed transaction's offsets become (None:
        # kept in txn_offsets only, for `worker_runs.successor`)
        self.group: FakeConsumer | None = None
        self._txn: list[tuple[Offsets, dict[Partition, str]]] = []
        self.closed = False

    def send(self, record: OutRecord) -> FakeResult:
        result = FakeResult()
        self.pending.append(result)
        self.sent.append(record)
        return result

    def ack_all(self) -> None:
        for result in self.pending:
            if not result.is_done:
                result.success()

    def flush(self, timeout_s: float | None = None) -> None:
        if self.hold_acks:
            raise RequestTimeout("no acknowledgement")
        self.ack_all()

    def error_of(self, result: Any) -> Exception:
        return ClientError(str(result.exception))

    def init_transactions(self) -> None:
        self.transactions.append("init")

    def begin_transaction(self) -> None:
        self.transactions.append("begin")
        self._txn = []

    def send_offsets_to_transaction(self, offsets: Offsets, group_metadata: object) -> None:
        self.txn_offsets.append(dict(offsets))
        self.txn_metadata.append({tp: self.offset_metadata(tp, o) for tp, o in offsets.items()})
        self._txn.append((self.txn_offsets[-1], self.txn_metadata[-1]))

    def set_offset_metadata(self, metadata: OffsetMetadata) -> None:
        self.offset_metadata = metadata

    def commit_transaction(self) -> None:
        if self.fail_commits:
            self.fail_commits -= 1
            raise ClientError("transaction coordinator not available")
        self.transactions.append("commit")
        if self.group is not None:
            for offsets, metadata in self._txn:
                self.group.committed_offsets.update(offsets)
                self.group.committed_meta.update(metadata)
        self._txn = []

    def abort_transaction(self) -> None:
        self.transactions.append("abort")

    def close(self, timeout_s: float) -> None:
        self.closed = True


class FakeConsumer:
    """A group member that owns ``partitions`` from its first poll on."""

    def __init__(self, topic: str, n_partitions: int = 1) -> None:
        self.topic = topic
        self.log: dict[Partition, list[FakeRecord]] = {
            Partition(topic, p): [] for p in range(n_partitions)
        }
        self.positions = {tp: 0 for tp in self.log}
        self.assigned: set[Partition] = set()
        self.listener: RebalanceListener | None = None
        self.async_commits: list[Offsets] = []
        self.sync_commits: list[Offsets] = []
        self.committed_offsets: Offsets = {}
        self.committed_meta: dict[Partition, str] = {}  # the metadata of each committed offset
        self.offset_metadata: OffsetMetadata = lambda tp, offset: ""
        self.hold_commits = False  # leave async commits in flight
        self.commit_results: list[FakeResult] = []
        self.io_sleeps = 0
        self.on_io_sleep: Callable[[int], None] | None = None
        self.on_poll: Callable[[FakeConsumer, int], None] | None = None  # (self, poll number)
        self.polls = 0
        self.down = False  # the broker answers nothing: requests fail, polls return nothing
        self.paused: set[Partition] = set()  # assigned, but polls return nothing from them
        self.closed = False

    # --- test side
    def produce(
        self, partition: int, values: list[bytes | None], keys: list[bytes | None] | None = None
    ) -> None:
        tp = Partition(self.topic, partition)
        for v, k in zip(values, keys or [None] * len(values), strict=True):
            self.log[tp].append(FakeRecord(self.topic, partition, len(self.log[tp]), v, k))

    def revoke(self, partitions: set[Partition]) -> None:
        assert self.listener is not None
        self.assigned -= partitions
        drive(self.listener.on_partitions_revoked(partitions))

    # --- ConsumerClient
    def topics(self) -> None:
        pass

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return {tp.partition for tp in self.log} if topic == self.topic else None

    def subscribe(self, topic: str, listener: RebalanceListener) -> None:
        self.listener = listener

    def unsubscribe(self) -> None:
        self.assigned = set()

    def assignment(self) -> set[Partition]:
        return set(self.assigned)

    def poll(self, timeout_ms: int, max_records: int) -> dict[Partition, list[Any]]:
        self.polls += 1
        if self.on_poll is not None:
            self.on_poll(self, self.polls)
        if self.down:
            time.sleep(min(timeout_ms, 50) / 1000)
            return {}
        if not self.assigned and self.listener is not None:
            self.assigned = set(self.log)
            drive(self.listener.on_partitions_revoked(set()))
            drive(self.listener.on_partitions_assigned(set(self.log)))
        out: dict[Partition, list[Any]] = {}
        for tp in sorted(self.assigned - self.paused):
            recs = self.log[tp][self.positions[tp] : self.positions[tp] + max_records]
            if recs:
                out[tp] = list(recs)
                self.positions[tp] += len(recs)
                max_records -= len(recs)
        if not out:
            time.sleep(min(timeout_ms, 50) / 1000)  # as a real poll waits for records
        return out

    def seek(self, tp: Partition, offset: int) -> None:
        self.positions[tp] = offset

    def seek_to_beginning(self, tp: Partition) -> None:
        self.positions[tp] = 0

    def committed(self, tp: Partition, timeout_ms: int) -> int | None:
        return self.committed_offsets.get(tp)

    def committed_metadata(self, tp: Partition, timeout_ms: int) -> str | None:
        self._answer()
        return self.committed_meta.get(tp) if tp in self.committed_offsets else None

    def set_offset_metadata(self, metadata: OffsetMetadata) -> None:
        self.offset_metadata = metadata

    def _record_commit(self, offsets: Offsets) -> None:
        self.committed_offsets.update(offsets)
        self.committed_meta.update({tp: self.offset_metadata(tp, o) for tp, o in offsets.items()})

    def position(self, tp: Partition, timeout_ms: int) -> int | None:
        return self.positions[tp]

    def _answer(self) -> None:
        if self.down:
            raise RequestTimeout("the broker does not answer")

    def end_offsets(self, tps: list[Partition], timeout_ms: int) -> dict[Partition, int]:
        self._answer()
        return {tp: len(self.log[tp]) for tp in tps if tp in self.log}

    def commit(self, offsets: Offsets, timeout_ms: int) -> None:
        self._answer()
        self.sync_commits.append(dict(offsets))
        self._record_commit(offsets)

    def commit_async(
        self, offsets: Offsets, on_done: Callable[[Exception | None], None] | None = None
    ) -> FakeResult:
        self.async_commits.append(dict(offsets))
        result = FakeResult(on_done)
        self.commit_results.append(result)
        if not self.hold_commits:
            result.success()
            self._record_commit(offsets)
        return result

    def group_metadata(self) -> object:
        return ("group", 1)

    def member_state(self) -> str | None:
        return MEMBER_STABLE

    def coordinator_known(self) -> bool:
        return True

    async def _slept(self) -> None:
        return None

    def io_sleep(self, seconds: float) -> Awaitable[None]:
        self.io_sleeps += 1
        if self.on_io_sleep is not None:
            self.on_io_sleep(self.io_sleeps)
        return self._slept()

    def restart_orphaned_join(self) -> bool:
        return False

    def close(self, timeout_s: float) -> None:
        self.closed = True


class FakeReplayReader:
    """Re-reads a `FakeConsumer`'s log (the state restore's reader), counting what it read."""

    def __init__(self, consumer: FakeConsumer, chunk: int = 7) -> None:
        self.consumer = consumer
        self.chunk = chunk
        self.reads: list[tuple[Partition, int, int]] = []
        self.fail = 0  # the next reads that fail (the broker cannot serve them)
        self.closed = False

    def read(self, tp: Partition, start: int, end: int) -> Iterator[list[Any]]:
        self.reads.append((tp, start, end))
        if self.fail:
            self.fail -= 1
            raise RequestTimeout("the broker does not answer the replay")
        log = self.consumer.log[tp]
        for first in range(start, end, self.chunk):
            yield list(log[first : min(first + self.chunk, end)])

    def close(self) -> None:
        self.closed = True
