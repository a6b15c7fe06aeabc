"""Kafka at the edge: client configuration, the rebalance listener and the two delivery modes.

- `AtLeastOnceDelivery`: send a batch's events and dead letters, wait until the broker has
  acknowledged every one (retrying failures), then commit the batch's offsets.
- `TransactionalDelivery`: the batch's sends and its offsets in one transaction; a
  ``read_committed`` reader sees each event once. A fenced producer raises `ProducerFenced`.

kafka-python 3 runs rebalance listeners on its IO thread, where blocking calls raise, so
`RevocationTracker` only records what was revoked; the loop drops those partitions' unprocessed
records (they are uncommitted, so the new owner reads them).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka import errors as kerr
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata, TopicPartition

from anomaly_contract.kafka_connection import security_kwargs
from worker.http import HealthState
from worker.metrics import WorkerMetrics
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

Offsets = dict[TopicPartition, OffsetAndMetadata]

# Errors after which this producer can never send again: another instance owns the id.
_FATAL_TXN_ERRORS: tuple[type[BaseException], ...] = (
    kerr.ProducerFencedError,
    kerr.InvalidProducerEpochError,
    kerr.TransactionalIdAuthorizationFailedError,
)


class WorkerStopped(Exception):
    """Delivery gave up because a stop was requested (the batch stays uncommitted)."""


class ProducerFenced(Exception):
    """Another producer with our transactional id took over: this instance must exit."""


@dataclass(frozen=True)
class OutRecord:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def client_config(s: WorkerSettings) -> dict[str, Any]:
    """Connection and security options shared by the consumer and the producer."""
    cfg: dict[str, Any] = {
        "bootstrap_servers": [h.strip() for h in s.bootstrap_servers.split(",") if h.strip()],
        "client_id": s.client_id,
        "request_timeout_ms": s.request_timeout_ms,
        "reconnect_backoff_max_ms": 5000,
        **security_kwargs(s),
    }
    return cfg


def make_consumer(s: WorkerSettings) -> KafkaConsumer:
    return KafkaConsumer(
        **client_config(s),
        group_id=s.group_id,
        enable_auto_commit=False,
        auto_offset_reset=s.auto_offset_reset,
        # never score records of aborted transactions, whatever the delivery mode
        isolation_level="read_committed",
        max_poll_records=s.batch_max_records,
        max_poll_interval_ms=s.max_poll_interval_ms,
        session_timeout_ms=s.session_timeout_ms,
        heartbeat_interval_ms=max(1000, s.session_timeout_ms // 3),
        fetch_max_bytes=s.fetch_max_bytes,
        max_partition_fetch_bytes=s.max_partition_fetch_bytes,
        fetch_max_wait_ms=min(500, max(10, s.batch_max_wait_ms)),
    )


def make_producer(s: WorkerSettings) -> KafkaProducer:
    cfg: dict[str, Any] = {
        **client_config(s),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "delivery_timeout_ms": s.delivery_timeout_ms,
        "max_block_ms": 10000,
        "compression_type": None if s.compression_type == "none" else s.compression_type,
    }
    if s.delivery == "exactly_once":
        cfg["transactional_id"] = s.effective_transactional_id
        cfg["transaction_timeout_ms"] = s.transaction_timeout_ms
    return KafkaProducer(**cfg)


class RevocationTracker(AsyncConsumerRebalanceListener):
    """Records revoked partitions for the loop, after letting the delivery settle its batch.

    kafka-python 3 calls listeners on its IO thread, inside the loop's ``poll``. An async listener
    is awaited there while the IO loop keeps serving requests, so `before_revoke` (set by the
    loop once the delivery exists) can wait for acknowledgements and await an offset commit:
    the batch in flight is committed before the partitions move, as the Java client does in
    ``onPartitionsRevoked``. Blocking calls would raise on that thread.
    """

    def __init__(self, metrics: WorkerMetrics) -> None:
        self._lock = threading.Lock()
        self._revoked: set[TopicPartition] = set()
        self._metrics = metrics
        # awaited with can_commit=True on revocation, False when the membership is already lost
        self.before_revoke: Callable[[bool], Awaitable[None]] | None = None
        # monotonic time a rebalance began (revocation) and has not ended (assignment) since
        self.rebalancing_since: float | None = None

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # called at the start of every join, with an empty set on the first
        self.rebalancing_since = time.monotonic()
        if revoked and self.before_revoke is not None:
            await self.before_revoke(True)
        with self._lock:
            self._revoked.update(revoked)
        if revoked:
            self._metrics.rebalances.inc()
            log.info("partitions revoked", extra={"partitions": _fmt(revoked)})

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.rebalancing_since = None
        log.info("partitions assigned", extra={"partitions": _fmt(assigned)})

    async def on_partitions_lost(self, lost: Any) -> None:
        self.rebalancing_since = time.monotonic()
        if lost and self.before_revoke is not None:
            await self.before_revoke(False)
        with self._lock:
            self._revoked.update(lost)
        if lost:
            self._metrics.rebalances.inc()
            log.warning(
                "partitions lost (group membership expired)", extra={"partitions": _fmt(lost)}
            )

    def take(self) -> set[TopicPartition]:
        with self._lock:
            out, self._revoked = self._revoked, set()
        return out


def _fmt(tps: Any) -> str:
    return ",".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in tps))


def _backoff(attempt: int) -> float:
    return min(5.0, 0.1 * 2**attempt)


# Seconds without any acknowledgement after which /readyz reports the broker unreachable.
UNACKED_NOT_READY_S = 3
COMMIT_TIMEOUT_MS = 3000
# Batches sent but not yet settled (acknowledged and due for commit) before `deliver` waits.
MAX_INFLIGHT_BATCHES = 3


@dataclass(eq=False)
class _Batch:
    """A batch whose records are sent but not yet known to be acknowledged and committed."""

    sent: list[tuple[OutRecord, Any]]  # (record, future or None when send() itself failed)
    offsets: Offsets

    def acked(self) -> bool:
        return all(f is not None and f.is_done for _, f in self.sent)

    def failed(self) -> list[OutRecord]:
        return [o for o, f in self.sent if f is None or f.failed()]


def io_loop_sleep(consumer: KafkaConsumer, seconds: float) -> Awaitable[None]:
    """A pause that an async rebalance listener can await on kafka-python's IO loop.

    kafka-python 3.0 has no public sleep for its loop; its own coroutines await
    ``_net.sleep`` (the dependency is pinned below 3.1 for this reason, and the rebalance
    tests exercise this path)."""
    return consumer._net.sleep(seconds)  # type: ignore[no-any-return]  # noqa: SLF001


def restart_orphaned_join(consumer: KafkaConsumer) -> bool:
    """Work around a kafka-python 3.0.12 bug; True when a stalled join was restarted.

    When a ``poll`` times out while a join the group leader began for a metadata change is in
    flight, the join completes in the background but nothing applies its assignment: the
    coordinator's ``need_rejoin()`` turned false as soon as the leader computed the
    assignment, and only a rejoin loop awaits the result. The member then keeps its partitions
    marked as being revoked (assigned, never fetched) until the next rebalance. Asking for a
    rejoin makes the next ``poll`` join again at once. Reads private attributes (the dependency
    is pinned below 3.1); if they change this does nothing and `Worker._check_rebalance`
    still rejoins after a timeout.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    task = getattr(coordinator, "_join_task", None)
    if coordinator is None or task is None or not getattr(task, "is_done", False):
        return False
    if coordinator.need_rejoin():
        return False  # the next poll awaits the result itself
    coordinator.request_rejoin()
    return True


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
        producer: KafkaProducer,
        consumer: KafkaConsumer,
        metrics: WorkerMetrics,
        health: HealthState,
        should_stop: Callable[[], bool],
        pipeline: bool = True,
        revoke_ack_wait_s: float = 30.0,
    ) -> None:
        self.pipeline = pipeline
        self.producer = producer
        self.consumer = consumer
        self.metrics = metrics
        self.health = health
        self.should_stop = should_stop
        self.revoke_ack_wait_s = revoke_ack_wait_s
        self._pending_commit: Offsets = {}
        self._lock = threading.Lock()
        self._inflight: collections.deque[_Batch] = collections.deque()
        self._last_commit: Any = None  # kafka Future of the latest asynchronous commit
        self._commit_due = False  # acknowledged offsets not yet sent in a commit

    # ------------------------------------------------------------------------- loop thread
    def deliver(self, outs: list[OutRecord], offsets: Offsets) -> bool:
        """Send a batch's records; settle the batch before it (or this one, not pipelined).

        Always True (a batch whose commit fails is re-read: duplicates, never loss); raises
        WorkerStopped when a stop is requested while the broker does not acknowledge."""
        batch = _Batch(self._send_all(outs), offsets)
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

    def _send_all(self, outs: list[OutRecord]) -> list[tuple[OutRecord, Any]]:
        futures: list[tuple[OutRecord, Any]] = []
        for i, o in enumerate(outs):
            try:
                f = self.producer.send(o.topic, value=o.value, key=o.key, headers=o.headers)
            except kerr.KafkaError as exc:  # metadata unavailable within max_block_ms, buffer full
                log.warning("send failed: %s", exc)
                return futures + [(rest, None) for rest in outs[i:]]
            futures.append((o, f))
        return futures

    def _flush(self) -> None:
        waited = 0
        while True:
            try:
                self.producer.flush(timeout=1.0)
                return
            except kerr.KafkaTimeoutError:
                waited += 1
                self.health.beat()  # still working: acknowledgements are slow, not stuck
                if waited >= UNACKED_NOT_READY_S:
                    # no acknowledgement for seconds: the broker is away, say so on /readyz
                    self.health.broker_reachable = False
                if self.should_stop():
                    raise WorkerStopped() from None

    def _settle(self, batch: _Batch) -> None:
        """Wait until every record of ``batch`` is acknowledged (re-sending failures); its
        offsets are then due for the next commit."""
        attempt = 0
        while True:
            if not batch.acked():
                self._flush()
            failed = batch.failed()
            if not failed:
                break
            self.metrics.produce_errors.inc(len(failed))
            self.health.broker_reachable = False
            first = next((f.exception for _, f in batch.sent if f is not None and f.failed()), None)
            log.warning(
                "%d of %d sends failed, retrying: %s", len(failed), len(batch.sent), first,
                extra={"attempt": attempt},
            )  # fmt: skip
            self._sleep(_backoff(attempt))
            attempt += 1
            batch = _Batch(self._send_all(failed), batch.offsets)
        if batch.sent:
            self.health.broker_reachable = True
        self._pending_commit.update(batch.offsets)
        self._commit_due = True

    def _maybe_commit_async(self) -> None:
        """Commit what is due, one commit request at a time (they are cumulative, and kafka-python
        refuses requests beyond its in-flight limit per connection)."""
        if not self._commit_due or (
            self._last_commit is not None and not self._last_commit.is_done
        ):
            return
        self._commit_due = False
        self._last_commit = self.consumer.commit_async(
            dict(self._pending_commit), callback=self._on_commit
        )

    def _commit_sync(self) -> None:
        assigned = self.consumer.assignment()
        offsets = {tp: om for tp, om in self._pending_commit.items() if tp in assigned}
        self._commit_due = False
        if not offsets:
            return
        attempt = 0
        while True:
            try:
                # bounded: kafka-python retries a commit forever without a timeout, and a
                # worker stuck there during a broker outage would neither beat nor say so
                self.consumer.commit(offsets, timeout_ms=COMMIT_TIMEOUT_MS)
                self.health.broker_reachable = True
                return
            except (
                kerr.CommitFailedError,
                kerr.RebalanceInProgressError,
                kerr.IllegalStateError,
            ) as exc:
                # the group moved on: the partitions' new owner re-reads this batch
                self.metrics.commit_errors.inc()
                log.warning("commit refused after a rebalance, batch will be re-read: %s", exc)
                return
            except kerr.KafkaError as exc:
                self.metrics.commit_errors.inc()
                self.health.broker_reachable = False
                log.warning("commit failed, retrying: %s", exc, extra={"attempt": attempt})
                self._sleep(_backoff(attempt))
                attempt += 1

    def _on_commit(self, offsets: Offsets, response: Any) -> None:
        # runs on kafka-python's IO thread: record, never block
        if isinstance(response, Exception):
            self.metrics.commit_errors.inc()
            self._commit_due = True  # the next batch's commit carries these offsets again
            log.warning("offset commit failed (a later commit covers it): %s", response)

    def forget(self, partitions: set[TopicPartition]) -> None:
        """Partitions revoked: their offsets are the new owner's business."""
        for tp in partitions:
            self._pending_commit.pop(tp, None)

    def commit_final(self) -> None:
        """Settle the batch in flight and commit everything delivered (on a clean stop)."""
        try:
            self.drain()
        except WorkerStopped:
            log.warning("stopping with a batch unacknowledged: it will be re-read")

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.health.beat()
            if self.should_stop():
                raise WorkerStopped()
            time.sleep(min(0.1, end - time.monotonic()) if end > time.monotonic() else 0)

    # --------------------------------------------------------------------------- IO thread
    async def settle_before_revoke(self, can_commit: bool) -> None:
        """Inside a rebalance, before partitions move: wait (bounded) for the batch in flight to
        be acknowledged and commit everything acknowledged, awaiting the commit.

        Runs on kafka-python's IO thread while the loop thread waits in ``poll``, so nothing
        else touches the delivery. Never raises: a batch that is not acknowledged in time, or a
        commit that fails, leaves its records to the partitions' next owner (duplicates, no
        loss; the loop then seeks back to the committed offsets)."""
        try:
            deadline = time.monotonic() + self.revoke_ack_wait_s
            for batch in self._claim():
                while not batch.acked() and time.monotonic() < deadline:
                    self.health.beat()
                    await io_loop_sleep(self.consumer, 0.005)
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
                await self.consumer.commit_async(
                    dict(self._pending_commit), callback=lambda offsets, response: None
                )
            elif self._last_commit is not None and not self._last_commit.is_done:
                await self._last_commit
        except Exception as exc:  # noqa: BLE001 - a listener must not raise into the rebalance
            self.metrics.commit_errors.inc()
            log.warning("commit before the rebalance failed (duplicates possible): %s", exc)

    def close(self, timeout_s: float) -> None:
        self.producer.close(timeout=timeout_s)


class TransactionalDelivery:
    """One transaction per batch: its events, dead letters and consumed offsets."""

    def __init__(
        self,
        producer_factory: Callable[[], KafkaProducer],
        consumer: KafkaConsumer,
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

    def _new_producer(self) -> KafkaProducer:
        producer = self._factory()
        try:
            # aborts whatever a previous instance with our id left open, fences it
            producer.init_transactions()
        except _FATAL_TXN_ERRORS as exc:
            producer.close(timeout=1)
            raise ProducerFenced(str(exc)) from exc
        return producer

    def deliver(self, outs: list[OutRecord], offsets: Offsets) -> bool:
        """True when committed; False when aborted (the caller rewinds and retries the batch)."""
        p = self.producer
        try:
            p.begin_transaction()
            futures = [p.send(o.topic, value=o.value, key=o.key, headers=o.headers) for o in outs]
            p.flush()
            failed = [f for f in futures if f.failed()]
            if failed:
                self.metrics.produce_errors.inc(len(failed))
                raise failed[0].exception
            p.send_offsets_to_transaction(offsets, self.consumer.group_metadata())
            p.commit_transaction()
        except _FATAL_TXN_ERRORS as exc:
            raise ProducerFenced(str(exc)) from exc
        except kerr.KafkaError as exc:
            if isinstance(exc.__cause__, _FATAL_TXN_ERRORS):
                raise ProducerFenced(str(exc)) from exc
            self.metrics.commit_errors.inc()
            log.warning("transaction failed, aborting; the batch will be retried: %s", exc)
            self._abort()
            return False
        self.metrics.transactions.labels("committed").inc()
        self.health.broker_reachable = True
        return True

    def forget(self, partitions: set[TopicPartition]) -> None:
        pass  # offsets travel inside each transaction

    def drain(self) -> None:
        pass  # every batch's transaction is committed before `deliver` returns

    def tick(self) -> None:
        pass

    def commit_final(self) -> None:
        pass

    def _abort(self) -> None:
        self.metrics.transactions.labels("aborted").inc()
        try:
            self.producer.abort_transaction()
        except _FATAL_TXN_ERRORS as exc:
            raise ProducerFenced(str(exc)) from exc
        except kerr.KafkaError as exc:
            # the producer is in a state it cannot leave: start again with a fresh one (its
            # init_transactions aborts the open transaction on the broker)
            log.warning("abort failed (%s): recreating the transactional producer", exc)
            self.health.broker_reachable = False
            with contextlib.suppress(Exception):  # closing a broken producer is best effort
                self.producer.close(timeout=1)
            attempt = 0
            while True:
                try:
                    self.producer = self._new_producer()
                    return
                except ProducerFenced:
                    raise
                except kerr.KafkaError as exc2:
                    log.warning("transactional producer not ready yet: %s", exc2)
                    end = time.monotonic() + _backoff(attempt)
                    while time.monotonic() < end:
                        self.health.beat()
                        if self.should_stop():
                            raise WorkerStopped() from None
                        time.sleep(0.1)
                    attempt += 1

    def close(self, timeout_s: float) -> None:
        self.producer.close(timeout=timeout_s)
