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

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka import errors as kerr
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata, TopicPartition

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
        "security_protocol": s.security_protocol,
        "request_timeout_ms": s.request_timeout_ms,
        "reconnect_backoff_max_ms": 5000,
    }
    if s.sasl_mechanism:
        cfg["sasl_mechanism"] = s.sasl_mechanism
        cfg["sasl_plain_username"] = s.sasl_username
        if s.sasl_password is not None:
            cfg["sasl_plain_password"] = s.sasl_password.get_secret_value()
    if s.security_protocol in ("SSL", "SASL_SSL"):
        cfg["ssl_check_hostname"] = s.ssl_check_hostname
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(s, name)
            if value is not None:
                cfg[name] = str(value)
        if s.ssl_password is not None:
            cfg["ssl_password"] = s.ssl_password.get_secret_value()
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


class RevocationTracker(ConsumerRebalanceListener):
    """Records revoked partitions (IO thread); the loop takes them between polls."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self._lock = threading.Lock()
        self._revoked: set[TopicPartition] = set()
        self._metrics = metrics

    def on_partitions_revoked(self, revoked: Any) -> None:
        with self._lock:
            self._revoked.update(revoked)
        if revoked:
            self._metrics.rebalances.inc()
            log.info("partitions revoked", extra={"partitions": _fmt(revoked)})

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned", extra={"partitions": _fmt(assigned)})

    def on_partitions_lost(self, lost: Any) -> None:
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


class AtLeastOnceDelivery:
    """Send, wait for every acknowledgement (retrying failed sends), then commit offsets."""

    def __init__(
        self,
        producer: KafkaProducer,
        consumer: KafkaConsumer,
        metrics: WorkerMetrics,
        health: HealthState,
        should_stop: Callable[[], bool],
        commit_async: bool = False,
    ) -> None:
        self.commit_async = commit_async
        self.producer = producer
        self.consumer = consumer
        self.metrics = metrics
        self.health = health
        self.should_stop = should_stop
        self._pending_commit: Offsets = {}

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

    def deliver(self, outs: list[OutRecord], offsets: Offsets) -> bool:
        """Wait until every send is acknowledged, then commit the offsets (asynchronously).

        Always True (a batch whose commit fails is re-read: duplicates, never loss); raises
        WorkerStopped when a stop is requested while the broker does not acknowledge."""
        pending = outs
        attempt = 0
        while pending:
            sent = self._send_all(pending)
            self._flush()
            failed = [o for o, f in sent if f is None or f.failed()]
            if not failed:
                break
            self.metrics.produce_errors.inc(len(failed))
            self.health.broker_reachable = False
            first = next((f.exception for _, f in sent if f is not None and f.failed()), None)
            log.warning(
                "%d of %d sends failed, retrying: %s", len(failed), len(pending), first,
                extra={"attempt": attempt},
            )  # fmt: skip
            self._sleep(_backoff(attempt))
            attempt += 1
            pending = failed
        if outs:
            self.health.broker_reachable = True
        # Synchronous by default: the batch is committed before the next poll, where
        # rebalances happen, so a new owner never re-reads it. commit_async saves a round trip
        # per batch but a rebalance may then re-deliver the last batch (duplicates, no loss).
        self._pending_commit.update(offsets)
        if self.commit_async:
            self.consumer.commit_async(dict(self._pending_commit), callback=self._on_commit)
            return True
        attempt = 0
        while True:
            try:
                # bounded: kafka-python retries a commit forever without a timeout, and a
                # worker stuck there during a broker outage would neither beat nor say so
                self.consumer.commit(offsets, timeout_ms=COMMIT_TIMEOUT_MS)
                self.health.broker_reachable = True
                return True
            except (
                kerr.CommitFailedError,
                kerr.RebalanceInProgressError,
                kerr.IllegalStateError,
            ) as exc:
                # the group moved on: the partitions' new owner re-reads this batch
                self.metrics.commit_errors.inc()
                log.warning("commit refused after a rebalance, batch will be re-read: %s", exc)
                return True
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
            log.warning("offset commit failed (the batch will be re-read): %s", response)

    def forget(self, partitions: set[TopicPartition]) -> None:
        """Partitions revoked: their offsets are the new owner's business."""
        for tp in partitions:
            self._pending_commit.pop(tp, None)

    def commit_final(self, timeout_ms: int = 3000) -> None:
        """Synchronous commit of everything delivered (on a clean stop)."""
        assigned = self.consumer.assignment()
        offsets = {tp: om for tp, om in self._pending_commit.items() if tp in assigned}
        if not offsets:
            return
        try:
            self.consumer.commit(offsets, timeout_ms=timeout_ms)
        except kerr.KafkaError as exc:
            self.metrics.commit_errors.inc()
            log.warning("final commit failed, the last batches will be re-read: %s", exc)

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.health.beat()
            if self.should_stop():
                raise WorkerStopped()
            time.sleep(min(0.1, end - time.monotonic()) if end > time.monotonic() else 0)

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

    def commit_final(self, timeout_ms: int = 3000) -> None:
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
