"""The at-least-once delivery's ordering rules, with in-memory stand-ins for the two clients.

What is checked here is our bookkeeping (which offsets are committed when); the real broker
runs the same code in tests/integration (kill -9, rebalances, broker restart, SIGTERM)."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import pytest
from kafka.future import Future
from kafka.structs import OffsetAndMetadata, TopicPartition
from prometheus_client import CollectorRegistry

from worker.http import HealthState
from worker.kafka_io import (
    MAX_INFLIGHT_BATCHES,
    AtLeastOnceDelivery,
    OutRecord,
    restart_orphaned_join,
)
from worker.metrics import WorkerMetrics

TP0 = TopicPartition("in", 0)
TP1 = TopicPartition("in", 1)


class Producer:
    """Sends complete only when the test says so (or on flush, which acknowledges all)."""

    def __init__(self) -> None:
        self.pending: list[Future] = []
        self.sent: list[OutRecord] = []

    def send(self, topic: str, value: Any = None, key: Any = None, headers: Any = None) -> Future:
        f = Future()
        self.pending.append(f)
        self.sent.append(OutRecord(topic, key, value, headers))
        return f

    def ack_all(self) -> None:
        for f in self.pending:
            if not f.is_done:
                f.success(None)

    def flush(self, timeout: float | None = None) -> None:
        self.ack_all()


class Net:
    def __init__(self, producer: Producer, ack_after_sleeps: int | None) -> None:
        self.sleeps = 0
        self._producer = producer
        self._ack_after = ack_after_sleeps

    async def _nothing(self) -> None:
        return None

    def sleep(self, seconds: float) -> Coroutine[Any, Any, None]:
        self.sleeps += 1
        if self._ack_after is not None and self.sleeps >= self._ack_after:
            self._producer.ack_all()
        return self._nothing()


class Consumer:
    def __init__(self, net: Net) -> None:
        self._net = net
        self.async_commits: list[dict] = []
        self.sync_commits: list[dict] = []
        self.hold_commits = False  # leave async commits in flight
        self.commit_futures: list[Future] = []

    def commit_async(self, offsets: dict, callback: Any = None) -> Future:
        self.async_commits.append(dict(offsets))
        f = Future()
        self.commit_futures.append(f)
        if not self.hold_commits:
            f.success(None)
        return f

    def commit(self, offsets: dict, timeout_ms: int | None = None) -> None:
        self.sync_commits.append(dict(offsets))

    def assignment(self) -> set[TopicPartition]:
        return {TP0, TP1}


def run(coro: Coroutine[Any, Any, None]) -> None:
    """Drive a coroutine that only awaits completed futures and no-op sleeps."""
    with pytest.raises(StopIteration):
        while True:
            coro.send(None)


def make(ack_after_sleeps: int | None = None) -> tuple[AtLeastOnceDelivery, Producer, Consumer]:
    producer = Producer()
    consumer = Consumer(Net(producer, ack_after_sleeps))
    metrics = WorkerMetrics(CollectorRegistry())
    delivery = AtLeastOnceDelivery(
        producer,  # type: ignore[arg-type]
        consumer,  # type: ignore[arg-type]
        metrics,
        HealthState(30.0),
        should_stop=lambda: False,
    )
    return delivery, producer, consumer


def offsets(tp: TopicPartition, offset: int) -> dict[TopicPartition, OffsetAndMetadata]:
    return {tp: OffsetAndMetadata(offset, "", -1)}


def event(n: int) -> list[OutRecord]:
    return [OutRecord("out", None, b"{}", []) for _ in range(n)]


def test_a_batch_is_committed_only_after_its_records_are_acknowledged() -> None:
    delivery, producer, consumer = make()
    delivery.deliver(event(3), offsets(TP0, 10))
    assert consumer.async_commits == []  # sent, not acknowledged: nothing committed
    delivery.tick()
    assert consumer.async_commits == []
    producer.ack_all()
    delivery.tick()
    assert consumer.async_commits == [offsets(TP0, 10)]


def test_a_batch_without_records_to_send_is_committed_at_once() -> None:
    delivery, _, consumer = make()
    delivery.deliver([], offsets(TP0, 5))
    assert consumer.async_commits == [offsets(TP0, 5)]


def test_the_pipeline_waits_for_acknowledgements_beyond_its_depth() -> None:
    delivery, producer, consumer = make()
    for i in range(MAX_INFLIGHT_BATCHES):
        delivery.deliver(event(1), offsets(TP0, i + 1))
    assert consumer.async_commits == []
    assert not all(f.is_done for f in producer.pending)
    delivery.deliver(event(1), offsets(TP0, 99))  # one too many: waits (flush) for the oldest
    assert consumer.async_commits, "the oldest batches were settled and committed"
    assert consumer.async_commits[-1][TP0].offset == 99


def test_one_commit_request_at_a_time_and_the_next_carries_everything_due() -> None:
    delivery, producer, consumer = make()
    consumer.hold_commits = True
    delivery.deliver([], offsets(TP0, 1))
    delivery.deliver([], offsets(TP1, 7))
    delivery.deliver([], offsets(TP0, 2))
    assert consumer.async_commits == [offsets(TP0, 1)]  # the first is still in flight
    consumer.commit_futures[0].success(None)
    delivery.tick()
    assert consumer.async_commits[-1] == {**offsets(TP0, 2), **offsets(TP1, 7)}


def test_revocation_waits_for_the_batches_in_flight_and_awaits_their_commit() -> None:
    delivery, _, consumer = make(ack_after_sleeps=3)
    delivery.deliver(event(2), offsets(TP0, 40))
    delivery.deliver(event(1), offsets(TP1, 8))
    run(delivery.settle_before_revoke(True))
    assert consumer._net.sleeps == 3  # waited on the IO loop until acknowledged
    assert consumer.async_commits[-1] == {**offsets(TP0, 40), **offsets(TP1, 8)}
    # settled: nothing is left for the loop thread to commit again
    delivery.drain()
    assert consumer.sync_commits[-1] == {**offsets(TP0, 40), **offsets(TP1, 8)}


def test_a_batch_that_failed_is_not_committed_on_revocation() -> None:
    delivery, producer, consumer = make()
    delivery.deliver(event(1), offsets(TP0, 3))
    producer.ack_all()
    delivery.tick()
    delivery.deliver(event(1), offsets(TP0, 9))
    producer.pending[-1].failure(RuntimeError("delivery timed out"))
    run(delivery.settle_before_revoke(True))
    assert consumer.async_commits[-1] == offsets(TP0, 3)  # not 9: its event was never written


def test_lost_partitions_are_not_committed() -> None:
    delivery, producer, consumer = make()
    delivery.deliver(event(1), offsets(TP0, 3))
    producer.ack_all()
    run(delivery.settle_before_revoke(False))
    assert consumer.async_commits == []


def test_forgotten_partitions_are_left_out_of_later_commits() -> None:
    delivery, _, consumer = make()
    consumer.hold_commits = True
    delivery.deliver([], {**offsets(TP0, 4), **offsets(TP1, 6)})
    delivery.forget({TP0})
    delivery.drain()
    assert consumer.sync_commits[-1] == offsets(TP1, 6)


class Coordinator:
    def __init__(self, task_done: bool | None, need_rejoin: bool) -> None:
        self._join_task = None if task_done is None else type("T", (), {"is_done": task_done})()
        self._need = need_rejoin
        self.rejoin_requested = False

    def need_rejoin(self) -> bool:
        return self._need

    def request_rejoin(self) -> None:
        self.rejoin_requested = True


@pytest.mark.parametrize(
    ("task_done", "need_rejoin", "restarted"),
    [
        (True, False, True),  # the join finished after poll gave up and nobody applied it
        (True, True, False),  # the next poll awaits the result itself
        (False, False, False),  # still in flight
        (None, False, False),  # no join going on
    ],
)
def test_orphaned_join_is_restarted_only_when_nothing_would_apply_it(
    task_done: bool | None, need_rejoin: bool, restarted: bool
) -> None:
    coordinator = Coordinator(task_done, need_rejoin)
    consumer = type("C", (), {"_coordinator": coordinator})()
    assert restart_orphaned_join(consumer) is restarted  # type: ignore[arg-type]
    assert coordinator.rejoin_requested is restarted
