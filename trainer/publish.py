"""Publishing a trained model: a new version in the model directory, and versions on the model
topic (publish, promote, list: the trainer's side of the topic)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomaly_contract.artifact import (
    DEFAULT_KEEP,
    MANIFEST_FILE,
    Manifest,
)
from anomaly_contract.errors import ArtifactError, ConfigError, VersionNotFoundError
from anomaly_contract.kafka_connection import KafkaConnection
from anomaly_contract.model_dir import (
    check_version_name,
    next_version_name,
    normalize_version,
    publish_staged,
    read_manifest,
    staging_dir,
    utc_now,
    version_dir,
    version_sort_key,
    write_version_files,
)
from anomaly_contract.model_topic_format import (
    DEFAULT_CHUNK_BYTES,
    MODEL_PARTITION,
    RECORD_OVERHEAD_BYTES,
    Refusal,
    TopicIndex,
    TopicRecord,
    TopicVersionInfo,
    current_record,
    pack_version_dir,
    parse_topic_url,
    sha256_hex,
    version_records,
)
from anomaly_contract.model_topic_io import (
    ensure_model_topic,
    fetch_version_blob,
    model_producer,
    produce_records,
    read_topic_index,
    with_security,
)
from trainer.progress import track

if TYPE_CHECKING:  # pragma: no cover
    from trainer.fit import TrainedModel

log = logging.getLogger(__name__)
# A version is sent in about this many acknowledged batches, so that its progress can move.
SEND_BATCHES = 20


def publish_model(
    trained: TrainedModel,
    model_dir: str | Path,
    *,
    keep: int = DEFAULT_KEEP,
    make_current: bool = True,
) -> str:
    """Write the version aside and make it current atomically; returns its name (``v3``)."""
    with staging_dir(model_dir) as staging:
        version = next_version_name(model_dir)
        manifest = trained.manifest.model_copy(update={"version": version, "created_at": utc_now()})
        write_version_files(staging, trained.model, trained.scaler, manifest)
        published = publish_staged(model_dir, staging, keep=keep, make_current=make_current)
    trained.manifest = manifest
    return published


def publish_with_manifest(
    model_dir: str | Path, base: str, manifest: Manifest, *, keep: int = DEFAULT_KEEP
) -> str:
    """A new version holding version ``base``'s files (network, scaler, inference forms) with
    ``manifest`` (a new threshold, say), published atomically like `publish_model`."""
    source = version_dir(model_dir, base)
    with staging_dir(model_dir) as staging:
        version = next_version_name(model_dir)
        for path in source.iterdir():
            if path.name == MANIFEST_FILE:
                continue
            if path.is_dir():
                shutil.copytree(path, staging / path.name)
            else:
                shutil.copy2(path, staging / path.name)
        named = manifest.model_copy(update={"version": version, "created_at": utc_now()})
        (staging / MANIFEST_FILE).write_text(named.model_dump_json(indent=2))
        return publish_staged(model_dir, staging, keep=keep)


def publish_to_topic(
    bootstrap: str,
    topic: str,
    version_dir: str | os.PathLike[str],
    *,
    make_current: bool = True,
    connection: KafkaConnection | None = None,
    producer_config: dict[str, Any] | None = None,
    consumer_config: dict[str, Any] | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    keep: int = DEFAULT_KEEP,
) -> str:
    """Write a published version directory to the model topic; return its version name.

    Creates the topic (compacted) if needed. Publishing the same version again is harmless
    (chunks already intact on the topic are not sent twice); a different version under a name
    the topic already holds is refused, since it would silently replace what workers run.
    Versions beyond the newest ``keep`` (0: keep all) are deleted with tombstones, except the
    current one, so the topic does not grow with every retrain. ``connection`` gives the
    security settings; ``producer_config``/``consumer_config`` go on top of them.
    """
    producer_config = with_security(connection, producer_config)
    consumer_config = with_security(connection, consumer_config)
    version_dir = Path(version_dir)
    manifest = read_manifest(version_dir)
    version = manifest.version
    check_version_name(version)
    blob = pack_version_dir(version_dir)
    blob_sha = sha256_hex(blob)
    max_message = ensure_model_topic(bootstrap, topic, admin_config=with_security(connection, None))
    if not 1024 <= chunk_bytes <= max_message - RECORD_OVERHEAD_BYTES:
        raise ConfigError(
            f"chunk size {chunk_bytes} does not fit topic {topic} (max.message.bytes "
            f"{max_message}): use 1024..{max_message - RECORD_OVERHEAD_BYTES}"
        )
    index = read_topic_index(bootstrap, topic, consumer_config=consumer_config) or TopicIndex()
    existing = index.sealed.get(version)
    if existing is not None and not existing.problem and existing.sha256 != blob_sha:
        raise ArtifactError(
            f"topic {topic} already holds a different {version} (sha256 {existing.sha256[:12]}, "
            f"this one {blob_sha[:12]}): publish from the model directory that holds the "
            "topic's versions, or use a new topic"
        )
    intact = existing is not None and not existing.problem and not index.chunk_problem(existing)
    producer = model_producer(bootstrap, producer_config)
    try:
        if not intact:
            records = version_records(blob, manifest, chunk_bytes)
            _send_version(bootstrap, topic, version, records, producer)
        if make_current:
            # Only after every chunk and the seal are acknowledged: never a current torn version.
            current = current_record(version, blob_sha, "publish")
            produce_records(bootstrap, topic, [current], producer)
            index.add(MODEL_PARTITION, -1, current.key, current.value, [])
        pruned, tombstones = index.prune_records(keep, also=[version])
        if tombstones:
            produce_records(bootstrap, topic, tombstones, producer)
    finally:
        producer.close()
    log.info(
        "published %s to model topic %s (%d bytes, %s)%s",
        version,
        topic,
        len(blob),
        "current" if make_current else "not current",
        f"; deleted {', '.join(pruned)}" if pruned else "",
    )
    return version


def _send_version(
    bootstrap: str, topic: str, version: str, records: list[TopicRecord], producer: Any
) -> None:
    """Send a version's chunks and seal in order, in acknowledged batches, showing progress."""
    size = max(1, -(-len(records) // SEND_BATCHES))
    total = sum(len(r.value or b"") for r in records)
    with track(f"sending {version} to {topic}", total, unit="B", unit_scale=True) as progress:
        for start in range(0, len(records), size):
            batch = records[start : start + size]
            produce_records(bootstrap, topic, batch, producer)
            progress.advance(sum(len(r.value or b"") for r in batch))


def publish_from_model_dir(
    topic_url: str,
    model_dir: str | os.PathLike[str],
    version: str | None = None,
    *,
    make_current: bool = True,
    connection: KafkaConnection | None = None,
) -> str:
    """``anomaly-trainer publish VERSION --model-dir DIR --publish-topic kafka://HOST:PORT/TOPIC``.

    ``version`` defaults to the model directory's current one. Returns the version name.
    """
    bootstrap, topic = parse_topic_url(topic_url)
    path = version_dir(model_dir, version)
    return publish_to_topic(
        bootstrap, topic, path, make_current=make_current, connection=connection
    )


def promote_on_topic(
    bootstrap: str,
    topic: str,
    version: str,
    *,
    connection: KafkaConnection | None = None,
    producer_config: dict[str, Any] | None = None,
    consumer_config: dict[str, Any] | None = None,
) -> str:
    """Make a version already on the topic current again (rollback); verified before pointing."""
    producer_config = with_security(connection, producer_config)
    consumer_config = with_security(connection, consumer_config)
    version = normalize_version(version)
    check_version_name(version)
    index = read_topic_index(bootstrap, topic, consumer_config=consumer_config)
    if index is None:
        raise ArtifactError(f"model topic {topic} does not exist: publish a version first")
    if version not in index.sealed:
        have = ", ".join(sorted(index.sealed, key=version_sort_key)) or "none"
        raise VersionNotFoundError(f"version {version} is not on topic {topic} (it holds: {have})")
    checked = index.check_version(version)
    if isinstance(checked, Refusal):
        raise ArtifactError(f"cannot promote on {topic}: {checked.reason}")
    sealed, chunks = checked
    fetch_version_blob(bootstrap, topic, sealed, chunks, consumer_config=consumer_config)
    producer = model_producer(bootstrap, producer_config)
    try:
        produce_records(
            bootstrap, topic, [current_record(version, sealed.sha256, "promote")], producer
        )
    finally:
        producer.close()
    log.info("promoted %s on model topic %s", version, topic)
    return version


def list_topic_versions(
    bootstrap: str,
    topic: str,
    *,
    connection: KafkaConnection | None = None,
    consumer_config: dict[str, Any] | None = None,
) -> list[TopicVersionInfo]:
    """The sealed versions on the topic, oldest first; empty if the topic does not exist."""
    consumer_config = with_security(connection, consumer_config)
    index = read_topic_index(bootstrap, topic, consumer_config=consumer_config)
    return index.versions() if index else []
