"""The at-least-once delivery's ordering rules, on the in-memory client seam.

What is checked here is our bookkeeping (which offsets are committed when); the real broker
runs the same code in tests/integration (kill -9, rebalances, broker restart, SIGTERM)."""

from __future__ import annotations

import pytest
from fake_client import FakeConsumer, FakeProducer, drive
from prometheus_client import CollectorRegistry

from worker.client import Offsets, OutRecord, Partition
from worker.delivery import (
    MAX_INFLIGHT_BATCHES,
    AtLeastOnceDelivery,
    TransactionalDelivery,
    make_delivery,
)
from worker.http import HealthState
from worker.membership import restart_orphaned_join
from worker.metrics import WorkerMetrics
from worker.settings import WorkerSettings

TP0 = Partition("in", 0)
TP1 = Partition("in", 1)


def make() -> tuple[AtLeastOnceDelivery, FakeProducer, FakeConsumer]:
    producer = FakeProducer()
    producer.hold_acks = True  # sends complete only when the test says so
    consumer = FakeConsumer("in", n_partitions=2)
    consumer.assigned = {TP0, TP1}
    metrics = WorkerMetrics(CollectorRegistry())
    delivery = AtLeastOnceDelivery(
        producer, consumer, metrics, HealthState(30.0), should_stop=lambda: False
    )
    return delivery, producer, consumer


def offsets(tp: Partition, offset: int) -> Offsets:
    return {tp: offset}


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
    producer.hold_acks = False  # a flush acknowledges everything
    for i in range(MAX_INFLIGHT_BATCHES):
        delivery.deliver(event(1), offsets(TP0, i + 1))
    assert consumer.async_commits == []
    assert not all(f.is_done for f in producer.pending)
    delivery.deliver(event(1), offsets(TP0, 99))  # one too many: waits (flush) for the oldest
    assert consumer.async_commits, "the oldest batches were settled and committed"
    assert consumer.async_commits[-1][TP0] == 99


def test_one_commit_request_at_a_time_and_the_next_carries_everything_due() -> None:
    delivery, _, consumer = make()
    consumer.hold_commits = True
    delivery.deliver([], offsets(TP0, 1))
    delivery.deliver([], offsets(TP1, 7))
    delivery.deliver([], offsets(TP0, 2))
    assert consumer.async_commits == [offsets(TP0, 1)]  # the first is still in flight
    consumer.commit_results[0].success()
    delivery.tick()
    assert consumer.async_commits[-1] == {**offsets(TP0, 2), **offsets(TP1, 7)}


def test_commits_are_spaced_by_the_interval_and_carry_everything_due() -> None:
    producer, consumer = FakeProducer(), FakeConsumer("in", n_partitions=2)
    consumer.assigned = {TP0, TP1}
    now = [100.0]
    delivery = AtLeastOnceDelivery(
        producer, consumer, WorkerMetrics(CollectorRegistry()), HealthState(30.0),
        should_stop=lambda: False, commit_interval_s=0.25, clock=lambda: now[0],
    )  # fmt: skip
    delivery.deliver([], offsets(TP0, 1))
    assert consumer.async_commits == [offsets(TP0, 1)]
    now[0] += 0.1
    delivery.deliver([], offsets(TP1, 4))
    delivery.deliver([], offsets(TP0, 2))
    assert len(consumer.async_commits) == 1  # within the interval: nothing more sent yet
    now[0] += 0.2
    delivery.tick()  # an idle turn after the interval sends what became due meanwhile
    assert consumer.async_commits[-1] == {**offsets(TP0, 2), **offsets(TP1, 4)}
    assert len(consumer.async_commits) == 2


def test_revocation_waits_for_the_batches_in_flight_and_awaits_their_commit() -> None:
    delivery, producer, consumer = make()
    consumer.on_io_sleep = lambda n: producer.ack_all() if n >= 3 else None
    delivery.deliver(event(2), offsets(TP0, 40))
    delivery.deliver(event(1), offsets(TP1, 8))
    drive(delivery.settle_before_revoke(True))
    assert consumer.io_sleeps == 3  # waited on the IO loop until acknowledged
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
    drive(delivery.settle_before_revoke(True))
    assert consumer.async_commits[-1] == offsets(TP0, 3)  # not 9: its event was never written


def test_lost_partitions_are_not_committed() -> None:
    delivery, producer, consumer = make()
    delivery.deliver(event(1), offsets(TP0, 3))
    producer.ack_all()
    drive(delivery.settle_before_revoke(False))
    assert consumer.async_commits == []


def test_forgotten_partitions_are_left_out_of_later_commits() -> None:
    delivery, _, consumer = make()
    consumer.hold_commits = True
    delivery.deliver([], {**offsets(TP0, 4), **offsets(TP1, 6)})
    delivery.forget({TP0})
    delivery.drain()
    assert consumer.sync_commits[-1] == offsets(TP1, 6)


@pytest.mark.parametrize(
    ("mode", "kind"),
    [("at_least_once", AtLeastOnceDelivery), ("exactly_once", TransactionalDelivery)],
)
def test_the_delivery_mode_is_chosen_from_the_settings(mode: str, kind: type) -> None:
    producer = FakeProducer()
    delivery = make_delivery(
        WorkerSettings(delivery=mode),  # type: ignore[arg-type]
        FakeConsumer("in"),
        lambda: producer,
        WorkerMetrics(CollectorRegistry()),
        HealthState(30.0),
        lambda: False,
    )
    assert isinstance(delivery, kind)
    assert producer.transactions == (["init"] if mode == "exactly_once" else [])


def test_an_aborted_transaction_reports_the_batch_undelivered() -> None:
    producer = FakeProducer()
    producer.fail_commits = 1
    consumer = FakeConsumer("in")
    metrics = WorkerMetrics(CollectorRegistry())
    delivery = TransactionalDelivery(
        lambda: producer, consumer, metrics, HealthState(30.0), lambda: False
    )
    assert delivery.deliver(event(2), offsets(TP0, 5)) is False
    assert producer.transactions == ["init", "begin", "abort"]
    assert delivery.deliver(event(2), offsets(TP0, 5)) is True
    assert producer.transactions[-2:] == ["begin", "commit"]
    assert producer.txn_offsets[-1] == offsets(TP0, 5)


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
    assert restart_orphaned_join(coordinator) is restarted
    assert coordinator.rejoin_requested is restarted
