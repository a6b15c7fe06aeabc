"""The consumer/producer seam: the small Kafka interface the worker's logic talks to.

The loop, the delivery modes and the group membership use only the Protocols here
(`ConsumerClient`, `ProducerClient`) and the errors below; `KafkaConsumerClient` and
`KafkaProducerClient` implement them with kafka-python, the one place on the hot path that
imports it. Unit tests drive the worker with an in-memory implementation; a second client
library would implement the same Protocols without touching the loop.

Errors: every library failure leaves the seam as `ClientError` (retry: the broker may come back)
or one of its subclasses, except `ProducerFenced` (not retried: this instance must exit).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple, ParamSpec, Protocol, TypeVar

from kafka import KafkaConsumer, KafkaProducer
from kafka import errors as kerr
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.structs import MemberState, OffsetAndMetadata, TopicPartition

from anomaly_contract.kafka_connection import security_kwargs
from worker.settings import WorkerSettings


class Partition(NamedTuple):
    """A topic partition (equal to, and hashed like, the client library's own pair)."""

    topic: str
    partition: int


# Per partition: the offset of the next record to read (what a commit stores).
Offsets = dict[Partition, int]
# The metadata string committed with an offset (windowed models: where a state restore starts,
# see `worker.state`); the empty string when there is nothing to say.
OffsetMetadata = Callable[[Partition, int], str]


def _no_metadata(tp: Partition, offset: int) -> str:
    return ""


# The group membership is stable (joined, heartbeating): `ConsumerClient.member_state`.
MEMBER_STABLE: str = MemberState.STABLE


class ClientError(Exception):
    """The broker could not be reached or refused a request; retrying may succeed.

    ``answered`` is True when the broker itself replied with the error (a coordinator still
    loading, a leader moving): it is reachable. False for timeouts and lost connections."""

    def __init__(self, message: str, answered: bool = False) -> None:
        super().__init__(message)
        self.answered = answered


class CommitRefused(ClientError):
    """An offset commit the group will never accept (it rebalanced meanwhile)."""


class RequestTimeout(ClientError):
    """Waiting for a request (acknowledgements, a commit) timed out; its outcome may still come."""


class ProducerFenced(Exception):
    """Another producer with our transactional id took over: this instance must exit."""


@dataclass(frozen=True)
class OutRecord:
    """A record to produce: an anomaly event or a dead letter."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


class InRecord(Protocol):
    """A consumed record (kafka-python's ``ConsumerRecord`` has these fields)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Any: ...


class SendResult(Protocol):
    """The outcome of one send, filled in by the client's IO thread."""

    @property
    def is_done(self) -> bool: ...
    @property
    def exception(self) -> BaseException | None: ...
    def failed(self) -> bool: ...


class Pending(Protocol):
    """A request in flight (an asynchronous commit): done or not, and awaitable on the IO loop."""

    @property
    def is_done(self) -> bool: ...
    def __await__(self) -> Any: ...


class RebalanceListener(Protocol):
    """Called on the client's IO thread inside `ConsumerClient.poll` (never block there)."""

    async def on_partitions_revoked(self, revoked: set[Partition]) -> None: ...
    async def on_partitions_assigned(self, assigned: set[Partition]) -> None: ...
    async def on_partitions_lost(self, lost: set[Partition]) -> None: ...


class ConsumerClient(Protocol):
    """A group consumer with manual commits."""

    def topics(self) -> None:
        """Refresh the cluster's metadata."""

    def partitions_for_topic(self, topic: str) -> set[int] | None: ...
    def subscribe(self, topic: str, listener: RebalanceListener) -> None: ...
    def unsubscribe(self) -> None: ...
    def assignment(self) -> set[Partition]: ...
    def poll(self, timeout_ms: int, max_records: int) -> dict[Partition, list[InRecord]]: ...
    def seek(self, tp: Partition, offset: int) -> None: ...
    def seek_to_beginning(self, tp: Partition) -> None: ...
    def committed(self, tp: Partition, timeout_ms: int) -> int | None: ...
    def committed_metadata(self, tp: Partition, timeout_ms: int) -> str | None:
        """The metadata string of ``tp``'s committed offset (None: nothing committed)."""

    def set_offset_metadata(self, metadata: OffsetMetadata) -> None:
        """Commit every offset with ``metadata(tp, offset)`` from now on."""

    def position(self, tp: Partition, timeout_ms: int) -> int | None: ...
    def end_offsets(self, tps: list[Partition], timeout_ms: int) -> dict[Partition, int]: ...
    def commit(self, offsets: Offsets, timeout_ms: int) -> None: ...
    def commit_async(
        self, offsets: Offsets, on_done: Callable[[Exception | None], None] | None = None
    ) -> Pending:
        """Commit without waiting; ``on_done`` gets the seam's error or None (on the IO
        thread)."""

    def group_metadata(self) -> object:
        """An opaque token for `ProducerClient.send_offsets_to_transaction`."""

    def member_state(self) -> str | None:
        """The group membership's state (`MEMBER_STABLE` when joined and heartbeating)."""

    def coordinator_known(self) -> bool:
        """Whether the group coordinator is known and connected (False during an outage)."""

    def io_sleep(self, seconds: float) -> Awaitable[None]:
        """A pause a rebalance listener can await on the client's IO loop."""

    def restart_orphaned_join(self) -> bool:
        """Restart a join the client completed but never applied; True when it did (a
        kafka-python 3.0.12 repair, see `worker.membership`)."""

    def close(self, timeout_s: float) -> None: ...


class ProducerClient(Protocol):
    """An idempotent producer, transactional when built for exactly-once delivery."""

    def send(self, record: OutRecord) -> SendResult: ...
    def flush(self, timeout_s: float | None = None) -> None:
        """Wait for every send's outcome; `RequestTimeout` when ``timeout_s`` passes first."""

    def error_of(self, result: SendResult) -> Exception:
        """The seam's error for a failed send (`ProducerFenced` when it was fenced)."""

    def init_transactions(self) -> None: ...
    def begin_transaction(self) -> None: ...
    def send_offsets_to_transaction(self, offsets: Offsets, group_metadata: object) -> None: ...
    def set_offset_metadata(self, metadata: OffsetMetadata) -> None:
        """Send every offset to a transaction with ``metadata(tp, offset)`` from now on."""

    def commit_transaction(self) -> None: ...
    def abort_transaction(self) -> None: ...
    def close(self, timeout_s: float) -> None: ...


# ---------------------------------------------------------------------------- kafka-python
# Errors after which this producer can never send again: another instance owns the id.
_FATAL_TXN_ERRORS: tuple[type[BaseException], ...] = (
    kerr.ProducerFencedError,
    kerr.InvalidProducerEpochError,
    kerr.TransactionalIdAuthorizationFailedError,
)
# Commit errors after which the group has moved on: the partitions' new owner re-reads.
_REFUSED_COMMIT_ERRORS: tuple[type[BaseException], ...] = (
    kerr.CommitFailedError,
    kerr.RebalanceInProgressError,
    kerr.IllegalStateError,
)


# Replies from the broker that say "no answer" rather than answering: a request that timed out
# (kafka-python raises this one itself), no coordinator for the group.
_UNANSWERED_REPLIES: tuple[type[BaseException], ...] = (
    kerr.RequestTimedOutError,
    kerr.CoordinatorNotAvailableError,
)


def seam_error(exc: BaseException) -> Exception:
    """The seam's exception for a kafka-python one."""
    if isinstance(exc, _FATAL_TXN_ERRORS) or isinstance(exc.__cause__, _FATAL_TXN_ERRORS):
        return ProducerFenced(str(exc))
    answered = isinstance(exc, kerr.BrokerResponseError) and not isinstance(
        exc, _UNANSWERED_REPLIES
    )
    if isinstance(exc, _REFUSED_COMMIT_ERRORS):
        return CommitRefused(str(exc), answered=True)
    if isinstance(exc, kerr.KafkaTimeoutError):
        return RequestTimeout(str(exc))
    return ClientError(str(exc), answered=answered)


_P = ParamSpec("_P")
_R = TypeVar("_R")


@contextmanager
def _translated(also: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Re-raise kafka-python's errors (and ``also``, its assertion failures) as the seam's."""
    try:
        yield
    except (kerr.KafkaError, *also) as exc:
        raise seam_error(exc) from exc


def _seam(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """`_translated` around a whole function."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with _translated():
            return fn(*args, **kwargs)

    return wrapper


def _tp(p: Partition) -> TopicPartition:
    return TopicPartition(p.topic, p.partition)


def _kafka_offsets(
    offsets: Offsets, metadata: OffsetMetadata = _no_metadata
) -> dict[TopicPartition, OffsetAndMetadata]:
    return {_tp(tp): OffsetAndMetadata(off, metadata(tp, off), -1) for tp, off in offsets.items()}


def client_config(s: WorkerSettings) -> dict[str, Any]:
    """Connection and security options shared by the consumer and the producer."""
    cfg: dict[str, Any] = {
        "bootstrap_servers": [h.strip() for h in s.bootstrap_servers.split(",") if h.strip()],
        "client_id": s.client_id,
        "request_timeout_ms": s.request_timeout_ms,
        # a broker back after an outage is reconnected to within a second (readiness promises
        # 200 again within 5 s of it serving)
        "reconnect_backoff_max_ms": 1000,
        **security_kwargs(s),
    }
    return cfg


@_seam
def make_consumer(s: WorkerSettings) -> ConsumerClient:
    """The input's group consumer (manual commits, ``read_committed``)."""
    consumer = KafkaConsumer(
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
    return KafkaConsumerClient(consumer)


@_seam
def make_producer(s: WorkerSettings) -> ProducerClient:
    """The events' and dead letters' producer (transactional for exactly-once delivery)."""
    cfg: dict[str, Any] = {
        **client_config(s),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "delivery_timeout_ms": s.delivery_timeout_ms,
        "max_block_ms": 10000,
        "compression_type": None if s.compression_type == "none" else s.compression_type,
        # the client's own sensors (~10 % of its sender thread's time) feed nothing here
        "metrics_enabled": False,
    }
    if s.delivery == "exactly_once":
        cfg["transactional_id"] = s.effective_transactional_id
        cfg["transaction_timeout_ms"] = s.transaction_timeout_ms
    return KafkaProducerClient(KafkaProducer(**cfg))


class _Listener(AsyncConsumerRebalanceListener):
    """kafka-python's listener type, forwarding to ours."""

    def __init__(self, listener: RebalanceListener) -> None:
        self._listener = listener

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._listener.on_partitions_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._listener.on_partitions_assigned(set(assigned))

    async def on_partitions_lost(self, lost: Any) -> None:
        await self._listener.on_partitions_lost(set(lost))


class KafkaConsumerClient:
    """`ConsumerClient` on kafka-python's ``KafkaConsumer`` (its partitions pass through as
    they are: they equal `Partition`)."""

    def __init__(self, consumer: KafkaConsumer) -> None:
        self._consumer = consumer
        self._metadata: OffsetMetadata = _no_metadata

    def set_offset_metadata(self, metadata: OffsetMetadata) -> None:
        self._metadata = metadata

    @_seam
    def topics(self) -> None:
        self._consumer.topics()

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self._consumer.partitions_for_topic(topic)  # type: ignore[no-any-return]

    @_seam
    def subscribe(self, topic: str, listener: RebalanceListener) -> None:
        self._consumer.subscribe([topic], listener=_Listener(listener))

    def unsubscribe(self) -> None:
        self._consumer.unsubscribe()

    def assignment(self) -> set[Partition]:
        return self._consumer.assignment()  # type: ignore[no-any-return]

    def poll(self, timeout_ms: int, max_records: int) -> dict[Partition, list[InRecord]]:
        with _translated():
            return self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)  # type: ignore[no-any-return]

    def seek(self, tp: Partition, offset: int) -> None:
        self._consumer.seek(_tp(tp), offset)

    def seek_to_beginning(self, tp: Partition) -> None:
        self._consumer.seek_to_beginning(_tp(tp))

    # kafka-python 3.0 can fail these three with an AssertionError while it has no coordinator
    # or no metadata (a broker outage): an unreachable broker too
    def committed(self, tp: Partition, timeout_ms: int) -> int | None:
        with _translated((AssertionError,)):
            return self._consumer.committed(_tp(tp), timeout_ms=timeout_ms)  # type: ignore[no-any-return]

    def committed_metadata(self, tp: Partition, timeout_ms: int) -> str | None:
        with _translated((AssertionError,)):
            found = self._consumer.committed(_tp(tp), metadata=True, timeout_ms=timeout_ms)
        return None if found is None else str(found.metadata or "")

    def position(self, tp: Partition, timeout_ms: int) -> int | None:
        with _translated((AssertionError,)):
            return self._consumer.position(_tp(tp), timeout_ms=timeout_ms)  # type: ignore[no-any-return]

    def end_offsets(self, tps: list[Partition], timeout_ms: int) -> dict[Partition, int]:
        with _translated((AssertionError,)):
            return self._consumer.end_offsets([_tp(tp) for tp in tps], timeout_ms=timeout_ms)  # type: ignore[no-any-return]

    @_seam
    def commit(self, offsets: Offsets, timeout_ms: int) -> None:
        self._consumer.commit(_kafka_offsets(offsets, self._metadata), timeout_ms=timeout_ms)

    def commit_async(
        self, offsets: Offsets, on_done: Callable[[Exception | None], None] | None = None
    ) -> Pending:
        def callback(_offsets: Any, response: Any) -> None:
            if on_done is not None:
                on_done(seam_error(response) if isinstance(response, Exception) else None)

        with _translated():
            return self._consumer.commit_async(  # type: ignore[no-any-return]
                _kafka_offsets(offsets, self._metadata), callback=callback
            )

    def group_metadata(self) -> object:
        return self._consumer.group_metadata()

    def member_state(self) -> str | None:
        return getattr(self._consumer.group_metadata(), "state", None)

    def coordinator_known(self) -> bool:
        # reads the coordinator's id without `coordinator_unknown()`, which may change state
        # (and this runs on the loop thread, not the client's IO thread)
        coordinator = getattr(self._consumer, "_coordinator", None)
        return getattr(coordinator, "coordinator_id", None) is not None

    def io_sleep(self, seconds: float) -> Awaitable[None]:
        # kafka-python 3.0 has no public sleep for its loop; its own coroutines await
        # ``_net.sleep`` (the dependency is pinned below 3.1 for this reason, and the
        # rebalance tests exercise this path)
        return self._consumer._net.sleep(seconds)  # type: ignore[no-any-return]  # noqa: SLF001

    def restart_orphaned_join(self) -> bool:
        from worker.membership import restart_orphaned_join

        return restart_orphaned_join(getattr(self._consumer, "_coordinator", None))

    def close(self, timeout_s: float) -> None:
        self._consumer.close(autocommit=False, timeout_ms=int(timeout_s * 1000))


class KafkaProducerClient:
    """`ProducerClient` on kafka-python's ``KafkaProducer``."""

    def __init__(self, producer: KafkaProducer) -> None:
        self._producer = producer
        self._metadata: OffsetMetadata = _no_metadata

    def set_offset_metadata(self, metadata: OffsetMetadata) -> None:
        self._metadata = metadata

    def send(self, record: OutRecord) -> SendResult:
        with _translated():
            return self._producer.send(  # type: ignore[no-any-return]
                record.topic, value=record.value, key=record.key, headers=record.headers
            )

    def flush(self, timeout_s: float | None = None) -> None:
        with _translated():
            self._producer.flush(timeout=timeout_s)

    def error_of(self, result: SendResult) -> Exception:
        exc = result.exception
        return seam_error(exc) if exc is not None else ClientError("send failed")

    @_seam
    def init_transactions(self) -> None:
        self._producer.init_transactions()

    @_seam
    def begin_transaction(self) -> None:
        self._producer.begin_transaction()

    @_seam
    def send_offsets_to_transaction(self, offsets: Offsets, group_metadata: object) -> None:
        self._producer.send_offsets_to_transaction(
            _kafka_offsets(offsets, self._metadata), group_metadata
        )

    @_seam
    def commit_transaction(self) -> None:
        self._producer.commit_transaction()

    @_seam
    def abort_transaction(self) -> None:
        self._producer.abort_transaction()

    def close(self, timeout_s: float) -> None:
        self._producer.close(timeout=timeout_s)
