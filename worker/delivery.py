"""The two delivery modes behind one interface, `Delivery`, chosen once by `make_delivery`.

- `AtLeastOnceDelivery` (``ANOMALY_DELIVERY=at_least_once``): send a batch's events and dead
  letters, wait until the broker has acknowledged every one (retrying failures), then commit the
  batch's offsets. A crash re-reads the batch: duplicates, never loss.
- `TransactionalDelivery` (``exactly_once``): the batch's sends and its offsets in one
  transaction; a ``read_committed`` reader sees each event once. A fenced producer raises
  `ProducerFenced`.

Both tell the broker's reachability (`worker.reachability`, via `HealthState.broker`) what every
send, acknowledgement wait and commit found.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from anomaly_contract.backoff import backoff_s
from worker.client import (
    ClientError,
    CommitRefused,
    ConsumerClient,
    Offsets,
    OutRecord,
    Partition,
    Pending,
    ProducerClient,
    ProducerFenced,
    RequestTimeout,
    SendResult,
)
from worker.http import HealthState
from worker.metrics import WorkerMetrics
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

COMMIT_TIMEOUT_MS = 3000
# How long one wait for acknowledgements lasts before the reachability is told how old the
# oldest unacknowledged send is (worker.reachability.UNACKED_BOUND_S decides).
ACK_WAIT_S = 0.5
# Batches sent but not yet settled (acknowledged and due for commit) before `deliver` waits.
MAX_INFLIGHT_BATCHES = 3
# Retrying failed sends and commits: from 0.1 s, doubling, at most 5 s apart.
RETRY_FIRST_S = 0.1
RETRY_MAX_S = 5.0


class WorkerStopped(Exception):
    """Delivery gave up because a stop was requested (the batch stays uncommitted)."""


class Delivery(Protocol):
    """How a batch's outputs reach the broker and its offsets are committed."""

    def deliver(self, outs: list[OutRecord], offsets: Offsets) -> bool:
        """Send ``outs`` and commit ``offsets`` (now or later). False when the batch was
        aborted: the caller reads it again."""

    def tick(self) -> None:
        """Between batches: settle what is acknowledged and commit what is due."""

    def drain(self) -> None:
        """Settle and commit everything in flight (before an unsubscribe)."""

    def forget(self, partitions: set[Partition]) -> None:
        """Partitions revoked: their offsets are the new owner's business."""

    def commit_final(self) -> None:
        """On a clean stop: commit everything delivered."""

    async def settle_before_revoke(self, can_commit: bool) -> None:
        """Inside a rebalance (on the client's IO thread): settle before partitions move."""

    def close(self, timeout_s: float) -> None: ...


def make_delivery(
    settings: WorkerSettings,
    consumer: ConsumerClient,
    producer_factory: Callable[[], ProducerClient],
    metrics: WorkerMetrics,
    health: HealthState,
    should_stop: Callable[[], bool],
) -> Delivery:
    """The delivery mode ``settings.delivery`` names (the one place that reads it)."""
    if settings.delivery == "exactly_once":
        return TransactionalDelivery(producer_factory, consumer, metrics, health, should_stop)
    return AtLeastOnceDelivery(
        producer_factory(),
        consumer,
        metrics,
        health,
        should_stop,
        pipeline=settings.pipeline,
        commit_interval_s=settings.commit_interval_ms / 1000.0,
    )


def _await_acks(
    producer: ProducerClient,
    sent_at: float,
    health: HealthState,
    should_stop: Callable[[], bool],
) -> None:
    """Wait until every send's outcome is in, telling the reachability how long the sends
    begun at ``sent_at`` have been waiting; `WorkerStopped` when a stop is requested."""
    while True:
        try:
            producer.flush(timeout_s=ACK_WAIT_S)
            return
        except RequestTimeout:
            health.beat()  # still working: acknowledgements are slow, not stuck
            health.broker.unacknowledged(sent_at)
            if should_stop():
                raise WorkerStopped() from None


def _wait(seconds: float, health: HealthState, should_stop: Callable[[], bool]) -> None:
    """Sleep, beating the heart; `WorkerStopped` as soon as a stop is requested."""
    end = time.monotonic() + seconds
    while True:
        health.beat()
        if should_stop():
            raise WorkerStopped()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(0.1, left))


@dataclass(eq=False)
class _Batch:
    """A batch whose records are sent but not yet known to be acknowledged and committed."""

    sent: list[tuple[OutRecord, SendResult | None]]  # None when send() itself failed
    offsets: Offsets
    sent_at: float  # the reachability clock when the sends began

    def acked(self) -> bool:
        return all(f is not None and f.is_done for _, f in self.sent)

    def failed(self) -> list[OutRecord]:
        return [o for o, f in self.sent if f is None or f.failed()]


class AtLeastOnceDelivery:
    """Send a batch, then commit its offsets once the broker has acknowledged every record.

    Pipelined (the default): `deliver` sends a batch and returns; the previous batch is settled
    meanwhile (its acknowledgements are usually in by then) and its offsets committed
    asynchronously, so a batch's round trips overlap the next batch's poll and scoring. At most
    one batch is ever unsettled, and a rebalance settles it first (see `settle_before_revoke`),
    so a partition's new owner starts exactly after the last scored record. Not pipelined:
    each batch is acknowledged and committed synchronously before `deliver` returns.
    """

    def __init__(
        self,
        producer: ProducerClient,
        consumer: ConsumerClient,
        metrics: WorkerMetrics,
        health: HealthState,
        should_stop: Callable[[], bool],
        pipeline: bool = True,
        revoke_ack_wait_s: float = 30.0,
        commit_interval_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pipeline = pipeline
        # Pipelined: at most one asynchronous commit per interval (each costs the loop a hand-off
        # to the client's IO thread, ~5 % of its time at one commit per 1,000-record batch); what
        # is due meanwhile goes with the next one. Synchronous commits (drain, rebalance, stop)
        # ignore it.
        self.commit_interval_s = commit_interval_s
        self._clock = clock
        self._last_commit_at = -float("inf")
        self.producer = producer
        self.consumer = consumer
        self.metrics = metrics
        self.health = health
        self.should_stop = should_stop
        self.revoke_ack_wait_s = revoke_ack_wait_s
        self._pending_commit: Offsets = {}
        self._lock = threading.Lock()
        self._inflight: collections.deque[_Batch] = collections.deque()
        self._last_commit: Pending | None = None  # the latest asynchronous commit
        self._commit_due = False  # acknowledged offsets not yet sent in a commit

    # ------------------------------------------------------------------------- loop thread
    def deliver(self, outs: list[OutRecord], offsets: Offsets) -> bool:
        """Send a batch's records; settle the batch before it (or this one, not pipelined).

        Always True (a batch whose commit fails is re-read: duplicates, never loss); raises
        WorkerStopped when a stop is requested while the broker does not acknowledge."""
        batch = _Batch(self._send_all(outs), offsets, self.health.broker.now())
        if not self.pipeline:
            self._settle(batch)
            self._commit_sync()
            return True
        with self._lock:
            self._inflight.append(batch)
        self.tick()
        return True

    def tick(self) -> None:
        """Settle the batches in flight that are acknowledged (waiting only for those beyond the
        pipeline's depth) and send a commit when one is due. Called after each batch and each
        idle poll, so the last batch before a pause is committed too."""
        while True:
            with self._lock:
                if not self._inflight or (
                    len(self._inflight) <= MAX_INFLIGHT_BATCHES and not self._inflight[0].acked()
                ):
                    break
                oldest = self._inflight.popleft()
            self._settle(oldest)
        with self._lock:
            waiting = next((b.sent_at for b in self._inflight if not b.acked()), None)
        self.health.broker.unacknowledged(waiting)
        self._maybe_commit_async()

    def drain(self) -> None:
        """Settle the batch in flight and commit everything synchronously (before a stop, an
        unsubscribe, or each batch when not pipelined)."""
        for batch in self._claim():
            self._settle(batch)
        self._commit_sync()

    def _claim(self) -> list[_Batch]:
        with self._lock:
            batches = list(self._inflight)
            self._inflight.clear()
        return batches

    def _send_all(self, outs: list[OutRecord]) -> list[tuple[OutRecord, SendResult | None]]:
        futures: list[tuple[OutRecord, SendResult | None]] = []
        for i, o in enumerate(outs):
            try:
                f = self.producer.send(o)
            except ClientError as exc:  # metadata unavailable within max_block_ms, buffer full
                log.warning("send failed: %s", exc)
                return futures + [(rest, None) for rest in outs[i:]]
            futures.append((o, f))
        return futures

    def _settle(self, batch: _Batch) -> None:
        """Wait until every record of ``batch`` is acknowledged (re-sending failures); its
        offsets are then due for the next commit."""
        attempt = 0
        while True:
            if not batch.acked():
                _await_acks(self.producer, batch.sent_at, self.health, self.should_stop)
            failed = batch.failed()
            if not failed:
                break
            self.metrics.produce_errors.inc(len(failed))
            first = next((f for _, f in batch.sent if f is not None and f.failed()), None)
            error = self.producer.error_of(first) if first is not None else ClientError("not sent")
            self.health.broker.report("sends failed", batch.sent_at, error)
            log.warning(
                "%d of %d sends failed, retrying: %s", len(failed), len(batch.sent), error,
                extra={"attempt": attempt},
            )  # fmt: skip
            _wait(backoff_s(attempt, RETRY_FIRST_S, RETRY_MAX_S), self.health, self.should_stop)
            attempt += 1
            batch = _Batch(self._send_all(failed), batch.offsets, self.health.broker.now())
        if batch.sent:
            self.health.broker.answered(batch.sent_at)
        self._pending_commit.update(batch.offsets)
        self._commit_due = True

    def _maybe_commit_async(self) -> None:
        """Commit what is due, one commit request at a time (they are cumulative, and kafka-python
        refuses requests beyond its in-flight limit per connection)."""
        if not self._commit_due or (
            self._last_commit is not None and not self._last_commit.is_done
        ):
            return
        now = self._clock()
        if now - self._last_commit_at < self.commit_interval_s:
            return
        self._last_commit_at = now
        self._commit_due = False
        started = self.health.broker.now()

        def on_done(error: Exception | None) -> None:
            # runs on the client's IO thread: record, never block
            if error is None:
                self.health.broker.answered(started)
                return
            self.metrics.commit_errors.inc()
            self._commit_due = True  # the next batch's commit carries these offsets again
            self.health.broker.report("offset commit failed", started, error)
            log.warning("offset commit failed (a later commit covers it): %s", error)

        self._last_commit = self.consumer.commit_async(dict(self._pending_commit), on_done)

    def _commit_sync(self) -> None:
        assigned = self.consumer.assignment()
        offsets = {tp: off for tp, off in self._pending_commit.items() if tp in assigned}
        self._commit_due = False
        if not offsets:
            return
        attempt = 0
        while True:
            started = self.health.broker.now()
            try:
                # bounded: kafka-python retries a commit forever without a timeout, and a
                # worker stuck there during a broker outage would neither beat nor say so
                self.consumer.commit(offsets, timeout_ms=COMMIT_TIMEOUT_MS)
                self.health.broker.answered(started)
                return
            except CommitRefused as exc:
                # the group moved on: the partitions' new owner re-reads this batch
                self.health.broker.answered(started)  # refused, but answered
                self.metrics.commit_errors.inc()
                log.warning("commit refused after a rebalance, batch will be re-read: %s", exc)
                return
            except ClientError as exc:
                self.metrics.commit_errors.inc()
                self.health.broker.report("commit failed", started, exc)
                log.warning("commit failed, retrying: %s", exc, extra={"attempt": attempt})
                _wait(backoff_s(attempt, RETRY_FIRST_S, RETRY_MAX_S), self.health, self.should_stop)
                attempt += 1

    def forget(self, partitions: set[Partition]) -> None:
        """Partitions revoked: their offsets are the new owner's business."""
        for tp in partitions:
            self._pending_commit.pop(tp, None)

    def commit_final(self) -> None:
        """Settle the batch in flight and commit everything delivered (on a clean stop)."""
        try:
            self.drain()
        except WorkerStopped:
            log.warning("stopping with a batch unacknowledged: it will be re-read")

    # --------------------------------------------------------------------------- IO thread
    async def settle_before_revoke(self, can_commit: bool) -> None:
        """Inside a rebalance, before partitions move: wait (bounded) for the batch in flight to
        be acknowledged and commit everything acknowledged, awaiting the commit.

        Runs on the client's IO thread while the loop thread waits in ``poll``, so nothing
        else touches the delivery. Never raises: a batch that is not acknowledged in time, or a
        commit that fails, leaves its records to the partitions' next owner (duplicates, no
        loss; the loop then seeks back to the committed offsets)."""
        try:
            deadline = time.monotonic() + self.revoke_ack_wait_s
            for batch in self._claim():
                while not batch.acked() and time.monotonic() < deadline:
                    self.health.beat()
                    await self.consumer.io_sleep(0.005)
                if not batch.acked() or batch.failed():
                    # later batches cannot be committed either: offsets are cumulative
                    log.warning(
                        "a batch in flight was not acknowledged before the rebalance: its "
                        "partitions' records from there on will be read again"
                    )
                    break
                self._pending_commit.update(batch.offsets)
            if can_commit and self._pending_commit:
                # awaited here, so failures surface below rather than in a callback
                await self.consumer.commit_async(dict(self._pending_commit))
            elif self._last_commit is not None and not self._last_commit.is_done:
                await self._last_commit
        except Exception as exc:  # noqa: BLE001 - a listener must not raise into the rebalance
            self.metrics.commit_errors.inc()
            log.warning("commit before the rebalance failed (duplicates possible): %s", exc)

    def close(self, timeout_s: float) -> None:
        self.producer.close(timeout_s)


class TransactionalDelivery:
    """One transaction per batch: its events, dead letters and consumed offsets."""

    def __init__(
        self,
        producer_factory: Callable[[], ProducerClient],
        consumer: ConsumerClient,
        metrics: WorkerMetrics,
        health: HealthState,
        should_stop: Callable[[], bool],
    ) -> None:
        self._factory = producer_factory
        self.consumer = consumer
        self.metrics = metrics
        self.health = health
        self.should_stop = should_stop
        self.producer = self._new_producer()

    def _new_producer(self) -> ProducerClient:
        producer = self._factory()
        try:
            # aborts whatever a previous instance with our id left open, fences it
            producer.init_transactions()
        except ProducerFenced:
            producer.close(1)
            raise
        return producer

    def deliver(self, outs: list[OutRecord], offsets: Offsets) -> bool:
        """True when committed; False when aborted (the caller rewinds and retries the batch)."""
        p = self.producer
        started = self.health.broker.now()
        try:
            p.begin_transaction()
            futures = [p.send(o) for o in outs]
            _await_acks(p, started, self.health, self.should_stop)
            failed = [f for f in futures if f.failed()]
            if failed:
                self.metrics.produce_errors.inc(len(failed))
                raise p.error_of(failed[0])
            if offsets:  # none: an idle sweep's incident records whose partitions had none yet
                p.send_offsets_to_transaction(offsets, self.consumer.group_metadata())
            p.commit_transaction()
        except ClientError as exc:
            self.metrics.commit_errors.inc()
            self.health.broker.report("transaction failed", started, exc)
            log.warning("transaction failed, aborting; the batch will be retried: %s", exc)
            self._abort()
            return False
        self.metrics.transactions.labels("committed").inc()
        self.health.broker.answered(started)
        return True

    def forget(self, partitions: set[Partition]) -> None:
        pass  # offsets travel inside each transaction

    def drain(self) -> None:
        pass  # every batch's transaction is committed before `deliver` returns

    def tick(self) -> None:
        pass

    def commit_final(self) -> None:
        pass

    async def settle_before_revoke(self, can_commit: bool) -> None:
        pass  # nothing in flight between batches

    def _abort(self) -> None:
        self.metrics.transactions.labels("aborted").inc()
        started = self.health.broker.now()
        try:
            self.producer.abort_transaction()
        except ClientError as exc:
            # the producer is in a state it cannot leave: start again with a fresh one (its
            # init_transactions aborts the open transaction on the broker)
            log.warning("abort failed (%s): recreating the transactional producer", exc)
            self.health.broker.report("abort failed", started, exc)
            with contextlib.suppress(Exception):  # closing a broken producer is best effort
                self.producer.close(1)
            attempt = 0
            while True:
                started = self.health.broker.now()
                try:
                    self.producer = self._new_producer()
                    return
                except ClientError as exc2:
                    self.health.broker.report("transactional producer not ready", started, exc2)
                    log.warning("transactional producer not ready yet: %s", exc2)
                    _wait(
                        backoff_s(attempt, RETRY_FIRST_S, RETRY_MAX_S),
                        self.health,
                        self.should_stop,
                    )
                    attempt += 1

    def close(self, timeout_s: float) -> None:
        self.producer.close(timeout_s)
