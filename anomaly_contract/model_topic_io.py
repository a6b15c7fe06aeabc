"""Kafka I/O for the model topic: create it, read its index, fetch and verify a version, write records."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from anomaly_contract.errors import ArtifactError, TopicReadError
from anomaly_contract.kafka_connection import ClientLog, KafkaConnection, client_log, connect_hint
from anomaly_contract.model_topic_format import (
    MODEL_PARTITION,
    ChunkInfo,
    SealedVersion,
    TopicIndex,
    TopicRecord,
    assemble_blob,
    header_value,
    sha256_hex,
)

log = logging.getLogger(__name__)


# Kafka I/O
# --------------------------------------------------------------------------------------------
def model_consumer(bootstrap: str, consumer_config: dict[str, Any] | None) -> Any:
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    config: dict[str, Any] = {
        "client_id": "anomaly-model-topic",
        "group_id": None,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        # A reader that auto-created the topic would give it the broker's delete policy.
        "allow_auto_create_topics": False,
    }
    config.update(consumer_config or {})
    try:
        with client_log() as seen:
            return KafkaConsumer(bootstrap_servers=bootstrap, **config)
    except KafkaError as exc:
        raise _unreachable(bootstrap, exc, config, seen) from exc


BROKER_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
# Compaction only works on closed segments: roll small segments often so superseded chunks go
# away, and keep tombstones a day so readers that were down less than that still see deletions.
TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "segment.bytes": str(64 * 1024 * 1024),
    "segment.ms": str(60 * 60 * 1000),
    "min.compaction.lag.ms": str(60 * 1000),
    "min.cleanable.dirty.ratio": "0.1",
    "delete.retention.ms": str(24 * 60 * 60 * 1000),
}
DEFAULT_TIMEOUT_S = 60.0
POLL_MS = 200
TOPIC_RETRY_S = 5.0


def model_producer(bootstrap: str, producer_config: dict[str, Any] | None) -> Any:
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    config: dict[str, Any] = {
        "client_id": "anomaly-model-publisher",
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "allow_auto_create_topics": False,
    }
    config.update(producer_config or {})
    try:
        with client_log() as seen:
            return KafkaProducer(bootstrap_servers=bootstrap, **config)
    except KafkaError as exc:
        raise _unreachable(bootstrap, exc, config, seen) from exc


def _unreachable(
    bootstrap: str, exc: Exception, config: dict[str, Any], seen: ClientLog
) -> TopicReadError:
    return TopicReadError(f"cannot reach Kafka at {bootstrap}: {exc}; {connect_hint(config, seen)}")


def with_security(
    connection: KafkaConnection | None, config: dict[str, Any] | None
) -> dict[str, Any] | None:
    """``config`` on top of the connection's security kwargs (None when there is neither)."""
    if connection is None:
        return config
    return {**connection.client_kwargs(), **(config or {})}


def ensure_model_topic(
    bootstrap: str, topic: str, *, admin_config: dict[str, Any] | None = None
) -> int:
    """Create the model topic (one partition, compacted) if missing; return its max.message.bytes.

    An existing topic without ``cleanup.policy=compact`` is refused: with the delete policy the
    models would vanish after ``retention.ms`` and a rebooting worker would find none.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        with client_log() as seen:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap,
                client_id="anomaly-model-publisher",
                **(admin_config or {}),
            )
    except KafkaError as exc:
        raise _unreachable(bootstrap, exc, admin_config or {}, seen) from exc
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics(
                {
                    topic: {
                        "num_partitions": 1,
                        "replication_factor": -1,  # the broker's default.replication.factor
                        "configs": TOPIC_CONFIG,
                    }
                },
                timeout_ms=30_000,
                wait_for_metadata=True,
            )
        described = admin.describe_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC, topic, ["cleanup.policy", "max.message.bytes"]
                )
            ],
            config_filter="all",
        )
    except KafkaError as exc:
        raise ArtifactError(f"cannot create or describe model topic {topic}: {exc}") from exc
    finally:
        admin.close()
    configs = described.get("topic", {}).get(topic, {})
    policy = str((configs.get("cleanup.policy") or {}).get("value") or "")
    if "compact" not in policy.split(","):
        raise ArtifactError(
            f"model topic {topic} has cleanup.policy={policy or '?'}: models would expire; set "
            "cleanup.policy=compact on it or use a new topic"
        )
    max_bytes = (configs.get("max.message.bytes") or {}).get("value")
    return int(max_bytes) if max_bytes else BROKER_DEFAULT_MAX_MESSAGE_BYTES


class TopicTail:
    """A group-less consumer on every partition of a topic, replayed from the beginning."""

    def __init__(self, bootstrap: str, topic: str, consumer_config: dict[str, Any] | None) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.consumer = model_consumer(bootstrap, consumer_config)
        self.partitions: list[Any] = []
        self.boot_end: dict[Any, int] = {}
        self._next_lookup = 0.0

    def assign(self) -> bool:
        """Assign all partitions if the topic exists (checked at most every few seconds)."""
        from kafka import TopicPartition
        from kafka.errors import KafkaError

        if self.partitions:
            return True
        now = time.monotonic()
        if now < self._next_lookup:
            return False
        self._next_lookup = now + TOPIC_RETRY_S
        try:
            self.consumer.topics()  # refresh metadata
            parts = self.consumer.partitions_for_topic(self.topic)
            if not parts:
                return False
            tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
            self.consumer.assign(tps)
            self.consumer.seek_to_beginning(*tps)
            self.boot_end = self.consumer.end_offsets(tps)
        except KafkaError as exc:
            raise TopicReadError(f"cannot read model topic {self.topic}: {exc}") from exc
        self.partitions = tps
        return True

    def reached_boot_end(self) -> bool:
        from kafka.errors import KafkaError

        try:
            return bool(self.partitions) and all(
                self.consumer.position(tp) >= self.boot_end[tp] for tp in self.partitions
            )
        except KafkaError as exc:
            raise TopicReadError(f"cannot read model topic {self.topic}: {exc}") from exc

    def poll(self, timeout_s: float) -> list[Any]:
        from kafka.errors import KafkaError

        try:
            batches = self.consumer.poll(timeout_ms=int(timeout_s * 1000))
        except KafkaError as exc:
            raise TopicReadError(f"cannot read model topic {self.topic}: {exc}") from exc
        records = [r for recs in batches.values() for r in recs]
        records.sort(key=lambda r: (r.partition, r.offset))
        return records

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.consumer.close()


def with_bootstrap_timeout(config: dict[str, Any] | None, timeout_s: float) -> dict[str, Any]:
    """An unreachable broker fails within ``timeout_s`` instead of the client's 30 s default."""
    return {"bootstrap_timeout_ms": max(int(timeout_s * 1000), 1000), **(config or {})}


def read_topic_index(
    bootstrap: str,
    topic: str,
    *,
    consumer_config: dict[str, Any] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> TopicIndex | None:
    """Read the whole topic as it is now into a `TopicIndex`; None if the topic does not exist."""
    tail = TopicTail(bootstrap, topic, with_bootstrap_timeout(consumer_config, timeout_s))
    try:
        if not tail.assign():
            return None
        index = TopicIndex()
        deadline = time.monotonic() + timeout_s
        while not tail.reached_boot_end():
            if time.monotonic() > deadline:
                raise TopicReadError(
                    f"could not read model topic {topic} to its end within {timeout_s:.0f}s"
                )
            for r in tail.poll(POLL_MS / 1000):
                index.add(r.partition, r.offset, r.key, r.value, r.headers)
        return index
    finally:
        tail.close()


def fetch_version_blob(
    bootstrap: str,
    topic: str,
    sealed: SealedVersion,
    chunks: list[ChunkInfo],
    *,
    consumer_config: dict[str, Any] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> bytes:
    """Read exactly the records ``chunks`` point at and return the verified blob.

    Holds one version's bytes. A chunk compacted away since it was indexed (a newer record of
    the same key exists) makes this fail; the caller tries again once it has read that record.
    """
    from kafka.errors import KafkaError

    consumer = model_consumer(bootstrap, consumer_config)
    try:
        got = _read_chunks(consumer, topic, sealed, chunks, timeout_s)
    except KafkaError as exc:
        raise TopicReadError(f"cannot read the chunks of {sealed.version}: {exc}") from exc
    finally:
        consumer.close()
    return assemble_blob(sealed, list(zip(chunks, got, strict=True)))


def _read_chunks(
    consumer: Any, topic: str, sealed: SealedVersion, chunks: list[ChunkInfo], timeout_s: float
) -> list[bytes | None]:
    from kafka import TopicPartition

    wanted = {(c.partition, c.offset): i for i, c in enumerate(chunks)}
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for c in chunks:
        first[c.partition] = min(first.get(c.partition, c.offset), c.offset)
        last[c.partition] = max(last.get(c.partition, c.offset), c.offset)
    got: list[bytes | None] = [None] * len(chunks)
    tps = {p: TopicPartition(topic, p) for p in first}
    consumer.assign(list(tps.values()))
    for p, tp in tps.items():
        consumer.seek(tp, first[p])
    deadline = time.monotonic() + timeout_s
    pending = set(tps)
    while pending:
        if time.monotonic() > deadline:
            raise TopicReadError(
                f"could not read the chunks of {sealed.version} from {topic} within "
                f"{timeout_s:.0f}s"
            )
        batches = consumer.poll(timeout_ms=POLL_MS)
        for recs in batches.values():
            for r in recs:
                i = wanted.get((r.partition, r.offset))
                if i is not None:
                    data = r.value
                    if data is None or sha256_hex(data) != header_value(r.headers, "chunk-sha256"):
                        raise ArtifactError(
                            f"chunk {i} of {sealed.version} changed while it was read"
                        )
                    got[i] = data
        for p in list(pending):
            if consumer.position(tps[p]) > last[p]:
                pending.discard(p)
    return got


def produce_records(bootstrap: str, topic: str, records: list[TopicRecord], producer: Any) -> None:
    from kafka.errors import KafkaError

    try:
        futures = [
            producer.send(
                topic,
                key=r.key,
                value=r.value,
                headers=r.headers or None,
                partition=MODEL_PARTITION,
            )
            for r in records
        ]
        producer.flush(timeout=DEFAULT_TIMEOUT_S)
        for f in futures:
            f.get(timeout=DEFAULT_TIMEOUT_S)
    except KafkaError as exc:
        raise ArtifactError(
            f"could not write to model topic {topic} at {bootstrap}: {exc}"
        ) from exc
