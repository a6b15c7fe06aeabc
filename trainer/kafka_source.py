"""A bounded read of a Kafka topic as training data: ``kafka://HOST:PORT[,HOST:PORT]/TOPIC``.

Options (URL query): ``max_records=N`` (read at most N records; default: everything up to the end
offsets taken when the read starts) and ``timeout=SECONDS`` (default 30; the whole read is
refused once it passes). The read starts at the earliest offset of every partition, uses no
consumer group (nothing is committed, no group shows up on the broker), sees only committed
transactional data, and never auto-creates the topic. When N is smaller than the topic, the N
records are shared between partitions from their starts, so the same topic gives the same rows.

The values come back as they are, with where each one sits; the caller reads them as records
with the worker's parser (`anomaly_contract.records`), which also names why a value is unusable.

Security (SASL, TLS) comes from a `KafkaConnection` built by the caller; without one the read is
PLAINTEXT. A wrong password fails like an unreachable broker, within the timeout, but says so.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from anomaly_contract.errors import DataError
from anomaly_contract.kafka_connection import PLAINTEXT, KafkaConnection, client_log, connect_hint
from anomaly_contract.kafka_urls import (
    BROKER_PROBLEM,
    KafkaUrlProblem,
    ProblemKind,
    split_kafka_url,
)
from trainer.progress import track

DEFAULT_TIMEOUT_S = 30.0
_USAGE = "use kafka://HOST:PORT/TOPIC?max_records=N"
_URL_PROBLEMS: dict[ProblemKind, str] = {
    "scheme": "invalid Kafka source {url!r}: " + _USAGE,
    "broker": BROKER_PROBLEM + ": " + _USAGE,
    "no_topic": "no topic in {url!r}: " + _USAGE,
    "bad_topic": "invalid topic name {part!r} in {url!r}: use letters, digits, '.', '_' and '-'",
}
_POLL_MS = 200
# The reading thread enforces the timeout itself; this grace only covers a client call stuck
# inside kafka-python (e.g. a broker vanishing mid-request).
_WATCHDOG_GRACE_S = 5.0


@dataclass(frozen=True)
class KafkaSpec:
    """What a ``kafka://`` URL asks for."""

    url: str
    bootstrap_servers: list[str]
    topic: str
    max_records: int | None
    timeout_s: float


@dataclass(frozen=True)
class RecordOrigin:
    """Where a record sits and what Kafka says about it (feedback resolves rows by these)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None


@dataclass
class TopicRead:
    """Result of a bounded read, in (partition, offset) order."""

    values: list[tuple[str, bytes | None]] = field(default_factory=list)  # (where, record value)
    n_read: int = 0
    partitions: int = 0
    origins: list[RecordOrigin] = field(default_factory=list)  # one per value, same order


def parse_kafka_url(url: str) -> KafkaSpec:
    """Check and split ``kafka://HOST:PORT[,HOST:PORT...]/TOPIC[?max_records=N&timeout=S]``."""
    try:
        checked = split_kafka_url(url)
    except KafkaUrlProblem as problem:
        raise DataError(problem.worded(_URL_PROBLEMS)) from None
    max_records: int | None = None
    timeout_s = DEFAULT_TIMEOUT_S
    for key, value in parse_qsl(checked.query, keep_blank_values=True):
        if key == "max_records":
            if not value.isdigit() or int(value) < 1:
                raise DataError(f"max_records={value!r} in {url!r} must be a positive integer")
            max_records = int(value)
        elif key == "timeout":
            try:
                timeout_s = float(value)
            except ValueError:
                timeout_s = -1.0
            if not 0 < timeout_s <= 3600:
                raise DataError(f"timeout={value!r} in {url!r} must be seconds between 0 and 3600")
        else:
            raise DataError(
                f"unknown option {key!r} in {url!r}: the options are max_records and timeout"
            )
    return KafkaSpec(url, list(checked.servers), checked.topic, max_records, timeout_s)


def split_quota(available: dict[int, int], max_records: int | None) -> dict[int, int]:
    """How many records to read from each partition: all of them, or ``max_records`` shared as
    evenly as the partitions allow (a short partition's unused share goes to the others)."""
    if max_records is None or max_records >= sum(available.values()):
        return dict(available)
    quota = dict.fromkeys(available, 0)
    left = max_records
    open_parts = sorted(p for p, n in available.items() if n > 0)
    while left > 0 and open_parts:
        share, extra = divmod(left, len(open_parts))
        still_open = []
        for k, p in enumerate(open_parts):
            give = min(share + (1 if k < extra else 0), available[p] - quota[p])
            quota[p] += give
            left -= give
            if quota[p] < available[p]:
                still_open.append(p)
        open_parts = still_open
    return quota


def read_topic(source: str | KafkaSpec, connection: KafkaConnection | None = None) -> TopicRead:
    """Read the topic as the URL asks; refuse with a one-line `DataError` when it cannot.

    ``connection`` gives the security settings (default PLAINTEXT). Runs the read on a helper thread so that even a client call stuck inside
    kafka-python cannot hang the caller past the timeout.
    """
    spec = source if isinstance(source, KafkaSpec) else parse_kafka_url(source)
    conn = connection or PLAINTEXT
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["read"] = _read(spec, conn)
        except BaseException as exc:  # handed to the caller's thread below
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="kafka-source-read", daemon=True)
    worker.start()
    worker.join(spec.timeout_s + _WATCHDOG_GRACE_S)
    if worker.is_alive():
        raise DataError(
            f"{spec.url}: no answer from Kafka within {spec.timeout_s:g}s; check that the broker "
            "is up, or raise ?timeout="
        )
    if "error" in outcome:
        raise outcome["error"]
    return outcome["read"]


def _read(spec: KafkaSpec, connection: KafkaConnection) -> TopicRead:
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    deadline = time.monotonic() + spec.timeout_s

    def remaining_ms() -> int:
        return max(1, int((deadline - time.monotonic()) * 1000))

    brokers = ",".join(spec.bootstrap_servers)
    try:
        with client_log() as seen:
            consumer = KafkaConsumer(
                **connection.client_kwargs(),
                bootstrap_servers=spec.bootstrap_servers,
                client_id="anomaly-trainer-reader",
                group_id=None,  # no group: nothing committed, no rebalancing
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level="read_committed",
                allow_auto_create_topics=False,
                bootstrap_timeout_ms=remaining_ms(),
                request_timeout_ms=max(1000, min(30000, remaining_ms())),
                max_poll_records=1000,
            )
    except KafkaError as exc:
        raise DataError(
            f"{spec.url}: cannot connect to Kafka at {brokers} ({type(exc).__name__}); "
            + connect_hint(connection.client_kwargs(), seen)
        ) from exc
    try:
        return _read_assigned(consumer, spec, TopicPartition, remaining_ms, deadline)
    except KafkaError as exc:
        raise DataError(
            f"{spec.url}: reading from Kafka at {brokers} failed ({type(exc).__name__}: "
            f"{str(exc)[:120]}); check the broker and the topic"
        ) from exc
    finally:
        consumer.close(autocommit=False)


def _read_assigned(
    consumer: Any, spec: KafkaSpec, topic_partition: Any, remaining_ms: Any, deadline: float
) -> TopicRead:
    partitions = consumer.partitions_for_topic(spec.topic)
    if not partitions:
        raise DataError(
            f"{spec.url}: topic {spec.topic!r} does not exist; check the name or create and fill it"
        )
    tps = {p: topic_partition(spec.topic, p) for p in sorted(partitions)}
    begin = consumer.beginning_offsets(list(tps.values()), timeout_ms=remaining_ms())
    end = consumer.end_offsets(list(tps.values()), timeout_ms=remaining_ms())
    available = {p: max(0, end[tp] - begin[tp]) for p, tp in tps.items()}
    if sum(available.values()) == 0:
        raise DataError(f"{spec.url}: topic {spec.topic!r} is empty; produce records first")
    quota = split_quota(available, spec.max_records)
    stop = {p: begin[tps[p]] + quota[p] for p in tps}
    active = {p for p in tps if quota[p] > 0}
    consumer.assign([tps[p] for p in sorted(active)])
    for p in active:
        consumer.seek(tps[p], begin[tps[p]])

    fetched: list[Any] = []
    with track(f"reading {spec.topic}", sum(quota.values()), unit="record") as progress:
        while active:
            if time.monotonic() > deadline:
                wanted = sum(quota.values())
                raise DataError(
                    f"{spec.url}: timed out after {spec.timeout_s:g}s with {len(fetched)} of "
                    f"{wanted} records read; raise ?timeout= or lower ?max_records="
                )
            batch = consumer.poll(timeout_ms=min(_POLL_MS, remaining_ms()))
            before = len(fetched)
            for tp, records in batch.items():
                fetched.extend(r for r in records if r.offset < stop[tp.partition])
            progress.advance(len(fetched) - before)
            for p in list(active):
                # The position also moves past transaction markers, which are never returned.
                if consumer.position(tps[p], timeout_ms=remaining_ms()) >= stop[p]:
                    active.discard(p)
                    consumer.pause(tps[p])

    fetched.sort(key=lambda r: (r.partition, r.offset))
    out = TopicRead(n_read=len(fetched), partitions=len(tps))
    out.values = [(f"partition {r.partition} offset {r.offset}", r.value) for r in fetched]
    out.origins = [
        RecordOrigin(spec.topic, r.partition, r.offset, r.timestamp, r.key) for r in fetched
    ]
    return out
