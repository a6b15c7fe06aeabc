"""Model versions carried by a compacted Kafka topic, so workers need no shared volume.

A version directory (manifest.json, scaler.json, model.keras) is packed into one deterministic
tar blob and written to partition 0 of the model topic as::

    version/<v>/chunk/<i>   the blob in pieces under the broker's 1 MB message limit; headers
                            model-version, chunk-index, chunk-count, blob-sha256, chunk-sha256
    version/<v>/manifest    JSON: sha256, size and chunk count of the blob, and the manifest
                            itself; after the chunks in the log (one partition, idempotent
                            producer): it seals the version
    current                 JSON {"version", "sha256", ...}; written once the chunks and the
                            seal are acknowledged: makes ``v`` current

Log compaction keeps the newest record of every key, so the topic holds each version once and
the newest ``current``; `publish_to_topic` deletes versions beyond ``keep`` with tombstones.
A reader replays the topic from the start (no consumer group, nothing committed) and judges the same *compacted view* whether or not compaction has run yet: the newest
record of a key wins. It keeps only metadata while reading (chunk checksums are checked on the
fly and the bytes dropped), then fetches the chunks of the current version by offset, verifies
them and unpacks the version into a local model directory with the atomic rename of
``trainer.artifact``: the result is an ordinary model directory for ``load_bundle``.

A torn version (an interrupted publish: chunks without a manifest record) never becomes current,
because ``current`` is only written after the seal. A version whose chunks are missing or fail a
checksum is refused and reported as data (`Refusal`); the version delivered before stays. A
broker that cannot be read raises `TopicReadError` (retry: nothing is wrong with the versions).

Security (SASL, TLS): the trainer's entry points take a `KafkaConnection`; the lower-level
functions and `ModelTopicReader` take kafka-python config dicts (the worker passes its own).

This module holds no training code; the worker imports it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from pydantic import ValidationError

from trainer.artifact import (
    DEFAULT_KEEP,
    MANIFEST_FILE,
    MODEL_FILE,
    OPTIONAL_FILES,
    SCALER_FILE,
    VERSIONS_DIR,
    Manifest,
    current_version,
    normalize_version,
    publish_staged,
    read_manifest,
    set_current,
    staging_dir,
    utc_now,
)
from trainer.errors import ArtifactError, ConfigError, VersionNotFoundError
from trainer.kafka_connection import ClientLog, KafkaConnection, client_log, connect_hint

log = logging.getLogger(__name__)


class TopicReadError(ArtifactError):
    """The model topic could not be read (broker unreachable, timeout); retry later."""


FORMAT = "anomaly-model-tar/1"
CURRENT_KEY = b"current"
PACKED_FILES = tuple(sorted((MANIFEST_FILE, SCALER_FILE, MODEL_FILE)))  # the blob's member order
DEFAULT_CHUNK_BYTES = 512 * 1024
# Record framing, key and headers take well under this; chunks plus it must fit max.message.bytes.
RECORD_OVERHEAD_BYTES = 16 * 1024
BROKER_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
MODEL_PARTITION = 0
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
_POLL_MS = 200
_TOPIC_RETRY_S = 5.0
_VERSION_RE = re.compile(r"^v\d+$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_KEY_RE = re.compile(r"^version/(v\d+)/(?:chunk/(\d+)|(manifest))$")


# --------------------------------------------------------------------------------------------
# Pure core: packing, chunking, record layout
# --------------------------------------------------------------------------------------------
def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pack_version_dir(path: str | os.PathLike[str]) -> bytes:
    """The files of a version as one tar: sorted names, zeroed times and owners.

    Same files, same bytes (hence the same sha256), whoever packs them and whenever.
    """
    path = Path(path)
    optional = [n for n in OPTIONAL_FILES if (path / n).is_file()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted((*PACKED_FILES, *optional)):
            try:
                data = (path / name).read_bytes()
            except FileNotFoundError as exc:
                raise ArtifactError(
                    f"{path / name} is missing: {path} is not a published model version"
                ) from exc
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def unpack_blob(blob: bytes, dest: Path) -> None:
    """Write the files of a packed version into the existing directory ``dest``.

    Only the regular files of a version are accepted, so a hostile blob cannot write
    anywhere else (no paths, links or devices).
    """
    seen: set[str] = set()
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
            for member in tar:
                allowed = member.name in PACKED_FILES or member.name in OPTIONAL_FILES
                if not allowed or not member.isfile() or member.name in seen:
                    raise ArtifactError(f"unexpected member {member.name!r} in a model blob")
                seen.add(member.name)
                src = tar.extractfile(member)
                if src is None:  # pragma: no cover - isfile() members always have data
                    raise ArtifactError(f"member {member.name!r} of a model blob has no data")
                (dest / member.name).write_bytes(src.read())
    except tarfile.TarError as exc:
        raise ArtifactError(f"model blob is not a readable tar: {exc}") from exc
    missing = sorted(set(PACKED_FILES) - seen)
    if missing:
        raise ArtifactError(f"model blob lacks {', '.join(missing)}")


def split_chunks(blob: bytes, chunk_bytes: int) -> list[bytes]:
    """Consecutive pieces of at most ``chunk_bytes`` (at least one, even for an empty blob)."""
    if chunk_bytes < 1:
        raise ConfigError(f"chunk size must be positive, got {chunk_bytes}")
    return [blob[i : i + chunk_bytes] for i in range(0, len(blob), chunk_bytes)] or [b""]


def chunk_key(version: str, index: int) -> bytes:
    return f"version/{version}/chunk/{index:06d}".encode()


def manifest_key(version: str) -> bytes:
    return f"version/{version}/manifest".encode()


@dataclass(frozen=True)
class TopicRecord:
    """One record to produce: key, value (None is a tombstone) and headers."""

    key: bytes
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def version_records(
    blob: bytes, manifest: Manifest, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> list[TopicRecord]:
    """The records of one version in the order they must be written: chunks, then the seal."""
    version = manifest.version
    check_version_name(version)
    blob_sha = sha256_hex(blob)
    chunks = split_chunks(blob, chunk_bytes)
    records = []
    for i, chunk in enumerate(chunks):
        headers = [
            ("format", FORMAT.encode()),
            ("model-version", version.encode()),
            ("chunk-index", str(i).encode()),
            ("chunk-count", str(len(chunks)).encode()),
            ("blob-sha256", blob_sha.encode()),
            ("chunk-sha256", sha256_hex(chunk).encode()),
        ]
        records.append(TopicRecord(chunk_key(version, i), chunk, headers))
    seal = {
        "format": FORMAT,
        "version": version,
        "sha256": blob_sha,
        "size": len(blob),
        "chunk_count": len(chunks),
        "chunk_bytes": chunk_bytes,
        "published_at": utc_now().isoformat(),
        "manifest": json.loads(manifest.model_dump_json()),
    }
    records.append(TopicRecord(manifest_key(version), json.dumps(seal).encode()))
    return records


def current_record(version: str, blob_sha: str, reason: str) -> TopicRecord:
    """The record that makes ``version`` current; ``reason`` is "publish" or "promote"."""
    check_version_name(version)
    value = {"version": version, "sha256": blob_sha, "reason": reason, "at": utc_now().isoformat()}
    return TopicRecord(CURRENT_KEY, json.dumps(value).encode())


def check_version_name(version: str) -> None:
    if not _VERSION_RE.match(version):
        raise ArtifactError(f"{version!r} is not a version name (expected v1, v2, ...)")


def parse_topic_url(url: str) -> tuple[str, str]:
    """``kafka://HOST:PORT[,HOST:PORT...]/TOPIC`` -> (bootstrap servers, topic)."""
    usage = "use kafka://HOST:PORT/TOPIC"
    parts = urlsplit(url)
    if parts.scheme != "kafka" or not parts.netloc:
        raise ConfigError(f"invalid model topic {url!r}: {usage}")
    if parts.query or parts.fragment:
        raise ConfigError(f"model topic {url!r} takes no options: {usage}")
    servers = []
    for server in parts.netloc.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"invalid broker address {server!r} in {url!r}: {usage}")
        servers.append(f"{host}:{int(port)}")
    topic = parts.path.lstrip("/")
    if not _TOPIC_RE.match(topic):
        raise ConfigError(
            f"invalid or missing topic {topic!r} in {url!r}: {usage} (letters, digits, . _ -)"
        )
    return ",".join(servers), topic


# --------------------------------------------------------------------------------------------
# Pure core: the compacted view of the topic
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChunkInfo:
    """Where the newest record of one chunk key is, and what is wrong with it (if anything)."""

    version: str
    index: int
    partition: int
    offset: int
    count: int
    blob_sha: str
    problem: str | None = None


@dataclass(frozen=True)
class SealedVersion:
    """The newest ``version/<v>/manifest`` record."""

    version: str
    sha256: str
    size: int
    chunk_count: int
    manifest: Manifest | None
    offset: int
    problem: str | None = None


@dataclass(frozen=True)
class CurrentPointer:
    version: str
    sha256: str | None
    offset: int
    problem: str | None = None


class Refusal(NamedTuple):
    """A version that was not delivered, and why (one line)."""

    version: str
    reason: str


@dataclass(frozen=True)
class TopicVersionInfo:
    """A version as the topic holds it (for ``versions`` listings)."""

    version: str
    sha256: str
    size: int
    chunk_count: int
    is_current: bool
    problem: str | None
    manifest: Manifest | None


def _header(headers: Iterable[tuple[str, bytes]], name: str) -> str | None:
    found = None
    for key, value in headers:
        if key == name and value is not None:
            found = value.decode("utf-8", "replace")
    return found


class TopicIndex:
    """What the topic says once compacted: the newest record per key, chunk bytes not kept.

    Feed every record in offset order with `add`; it never raises on a bad record, it remembers
    the problem for when that version is asked for.
    """

    def __init__(self) -> None:
        self.chunks: dict[tuple[str, int], ChunkInfo] = {}
        self.sealed: dict[str, SealedVersion] = {}
        self.current: CurrentPointer | None = None
        self.ignored = 0

    def add(
        self,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes]] | None,
    ) -> str | None:
        """Take one record; return the version it concerns ("current" for the pointer)."""
        if key == CURRENT_KEY:
            self.current = None if value is None else _parse_current(value, offset)
            return "current"
        m = _KEY_RE.match(key.decode("utf-8", "replace")) if key else None
        if m is None:
            self.ignored += 1
            return None
        version = m.group(1)
        if m.group(3):  # manifest record
            if value is None:
                self.sealed.pop(version, None)
            else:
                self.sealed[version] = _parse_seal(version, value, offset)
            return version
        index = int(m.group(2))
        if value is None:
            self.chunks.pop((version, index), None)
        else:
            self.chunks[(version, index)] = _parse_chunk(
                version, index, partition, offset, value, list(headers or [])
            )
        return version

    def chunk_problem(self, sealed: SealedVersion) -> str | None:
        """Why the chunks of ``sealed`` cannot be assembled, or None if they all check out."""
        missing, bad = [], []
        for i in range(sealed.chunk_count):
            info = self.chunks.get((sealed.version, i))
            if info is None:
                missing.append(i)
            elif info.problem:
                bad.append(f"chunk {i} {info.problem}")
            elif info.blob_sha != sealed.sha256:
                bad.append(f"chunk {i} belongs to another upload of {sealed.version}")
            elif info.count != sealed.chunk_count:
                bad.append(f"chunk {i} says {info.count} chunks, the manifest {sealed.chunk_count}")
        if missing:
            shown = ", ".join(str(i) for i in missing[:5]) + (", ..." if len(missing) > 5 else "")
            bad.insert(0, f"chunks {shown} of {sealed.chunk_count} are missing")
        return "; ".join(bad[:3]) or None

    def version_chunks(self, sealed: SealedVersion) -> list[ChunkInfo]:
        return [self.chunks[(sealed.version, i)] for i in range(sealed.chunk_count)]

    def check_current(self) -> tuple[SealedVersion, list[ChunkInfo]] | Refusal | None:
        """The current version ready to fetch, why it cannot be, or None if nothing is current."""
        cur = self.current
        if cur is None:
            return None
        if cur.problem:
            return Refusal(cur.version, f"the current record is unusable: {cur.problem}")
        return self.check_version(cur.version, cur.sha256)

    def check_version(
        self, version: str, blob_sha: str | None = None
    ) -> tuple[SealedVersion, list[ChunkInfo]] | Refusal:
        sealed = self.sealed.get(version)
        if sealed is None:
            have = sum(1 for v, _ in self.chunks if v == version)
            return Refusal(
                version,
                f"no manifest record for {version} ({have} chunks on the topic): an interrupted "
                "publish; publish the version again",
            )
        if sealed.problem:
            return Refusal(version, f"the manifest record of {version} {sealed.problem}")
        if blob_sha is not None and blob_sha != sealed.sha256:
            return Refusal(
                version,
                f"current names {version} with sha256 {blob_sha[:12]}, the topic holds "
                f"{sealed.sha256[:12]}",
            )
        problem = self.chunk_problem(sealed)
        if problem:
            return Refusal(version, f"{version} is corrupt or incomplete: {problem}")
        return sealed, self.version_chunks(sealed)

    def torn_versions(self) -> list[Refusal]:
        """Versions with chunks on the topic but no manifest record (interrupted publishes)."""
        counts: dict[str, int] = {}
        totals: dict[str, int] = {}
        for (version, _), info in self.chunks.items():
            if version not in self.sealed:
                counts[version] = counts.get(version, 0) + 1
                totals[version] = info.count
        return [
            Refusal(v, f"torn: {counts[v]} of {totals[v]} chunks and no manifest record")
            for v in sorted(counts, key=_version_sort_key)
        ]

    def prune_records(
        self, keep: int, also: Iterable[str] = ()
    ) -> tuple[list[str], list[TopicRecord]]:
        """Tombstones deleting all but the newest ``keep`` versions; never the current one.

        ``also`` names versions about to be added (a publish in progress). Abandoned chunks of
        versions older than the oldest kept one go too. Returns (deleted versions, tombstones).
        """
        if keep <= 0:
            return [], []
        names = sorted(set(self.sealed) | set(also), key=_version_sort_key)
        kept = set(names[-keep:])
        if self.current is not None and not self.current.problem:
            kept.add(self.current.version)
        oldest_kept = min((_version_sort_key(v) for v in kept), default=(-1, ""))
        doomed = {v for v in names if v not in kept}
        doomed |= {
            v
            for v, _ in self.chunks
            if v not in kept and v not in self.sealed and _version_sort_key(v) < oldest_kept
        }
        records = [
            TopicRecord(chunk_key(v, i), None)
            for (v, i) in sorted(self.chunks, key=lambda k: (_version_sort_key(k[0]), k[1]))
            if v in doomed
        ]
        records += [TopicRecord(manifest_key(v), None) for v in names if v in doomed]
        return sorted(doomed, key=_version_sort_key), records

    def versions(self) -> list[TopicVersionInfo]:
        current = self.current.version if self.current and not self.current.problem else None
        out = []
        for v in sorted(self.sealed, key=_version_sort_key):
            s = self.sealed[v]
            problem = s.problem or self.chunk_problem(s)
            out.append(
                TopicVersionInfo(
                    v, s.sha256, s.size, s.chunk_count, v == current, problem, s.manifest
                )
            )
        return out


def _version_sort_key(version: str) -> tuple[int, str]:
    return (int(version[1:]), version) if _VERSION_RE.match(version) else (-1, version)


def _parse_current(value: bytes, offset: int) -> CurrentPointer:
    try:
        doc = json.loads(value)
        version = doc["version"]
        blob_sha = doc.get("sha256")
        check_version_name(version)
        if blob_sha is not None and not _SHA_RE.match(blob_sha):
            raise ValueError(f"bad sha256 {blob_sha!r}")
    except (ValueError, KeyError, TypeError, AttributeError, ArtifactError) as exc:
        return CurrentPointer("?", None, offset, problem=f"{type(exc).__name__}: {exc}"[:200])
    return CurrentPointer(version, blob_sha, offset)


def _parse_seal(version: str, value: bytes, offset: int) -> SealedVersion:
    try:
        doc = json.loads(value)
        if doc.get("format") != FORMAT:
            raise ValueError(f"has format {doc.get('format')!r}, this reader knows {FORMAT!r}")
        if doc.get("version") != version:
            raise ValueError(f"names version {doc.get('version')!r} under the key of {version}")
        blob_sha, size, count = doc["sha256"], int(doc["size"]), int(doc["chunk_count"])
        if not _SHA_RE.match(blob_sha) or size < 0 or count < 1:
            raise ValueError("has an invalid sha256, size or chunk count")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return SealedVersion(version, "", 0, 0, None, offset, problem=f"is unreadable: {exc}"[:200])
    try:
        manifest = Manifest.model_validate(doc.get("manifest"))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        problem = f"carries an invalid model manifest: {where}: {first['msg']}"
        return SealedVersion(version, blob_sha, size, count, None, offset, problem=problem)
    if manifest.version != version:
        problem = f"carries the manifest of {manifest.version}"
        return SealedVersion(version, blob_sha, size, count, None, offset, problem=problem)
    return SealedVersion(version, blob_sha, size, count, manifest, offset)


def _parse_chunk(
    version: str,
    index: int,
    partition: int,
    offset: int,
    value: bytes,
    headers: list[tuple[str, bytes]],
) -> ChunkInfo:
    def info(count: int = 0, blob_sha: str = "", problem: str | None = None) -> ChunkInfo:
        return ChunkInfo(version, index, partition, offset, count, blob_sha, problem)

    fmt = _header(headers, "format")
    if fmt != FORMAT:
        return info(problem=f"has format {fmt!r}, this reader knows {FORMAT!r}")
    if _header(headers, "model-version") != version or _header(headers, "chunk-index") != str(
        index
    ):
        return info(problem="has headers that do not match its key")
    count_s, blob_sha, chunk_sha = (
        _header(headers, "chunk-count"),
        _header(headers, "blob-sha256"),
        _header(headers, "chunk-sha256"),
    )
    if not (count_s and count_s.isdigit() and blob_sha and chunk_sha and _SHA_RE.match(blob_sha)):
        return info(problem="lacks its chunk-count, blob-sha256 or chunk-sha256 header")
    if sha256_hex(value) != chunk_sha:
        return info(int(count_s), blob_sha, problem="fails its checksum (chunk-sha256)")
    return info(int(count_s), blob_sha)


def assemble_blob(sealed: SealedVersion, chunks: list[tuple[ChunkInfo, bytes | None]]) -> bytes:
    """Join fetched chunk bytes in index order and verify every checksum and the size."""
    parts = []
    for expected, (info, data) in enumerate(chunks):
        if info.index != expected or data is None:
            raise ArtifactError(f"chunk {expected} of {sealed.version} could not be read")
        parts.append(data)
    blob = b"".join(parts)
    if len(blob) != sealed.size or sha256_hex(blob) != sealed.sha256:
        raise ArtifactError(
            f"{sealed.version} does not match its checksum once assembled (sha256 "
            f"{sha256_hex(blob)[:12]}, expected {sealed.sha256[:12]}): publish it again"
        )
    return blob


# --------------------------------------------------------------------------------------------
# Kafka I/O
# --------------------------------------------------------------------------------------------
def _consumer(bootstrap: str, consumer_config: dict[str, Any] | None) -> Any:
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


def _producer(bootstrap: str, producer_config: dict[str, Any] | None) -> Any:
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


def _with_security(
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


class _TopicTail:
    """A group-less consumer on every partition of a topic, replayed from the beginning."""

    def __init__(self, bootstrap: str, topic: str, consumer_config: dict[str, Any] | None) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.consumer = _consumer(bootstrap, consumer_config)
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
        self._next_lookup = now + _TOPIC_RETRY_S
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


def _with_bootstrap_timeout(config: dict[str, Any] | None, timeout_s: float) -> dict[str, Any]:
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
    tail = _TopicTail(bootstrap, topic, _with_bootstrap_timeout(consumer_config, timeout_s))
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
            for r in tail.poll(_POLL_MS / 1000):
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

    consumer = _consumer(bootstrap, consumer_config)
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
        batches = consumer.poll(timeout_ms=_POLL_MS)
        for recs in batches.values():
            for r in recs:
                i = wanted.get((r.partition, r.offset))
                if i is not None:
                    data = r.value
                    if data is None or sha256_hex(data) != _header(r.headers, "chunk-sha256"):
                        raise ArtifactError(
                            f"chunk {i} of {sealed.version} changed while it was read"
                        )
                    got[i] = data
        for p in list(pending):
            if consumer.position(tps[p]) > last[p]:
                pending.discard(p)
    return got


def _produce(bootstrap: str, topic: str, records: list[TopicRecord], producer: Any) -> None:
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
    producer_config = _with_security(connection, producer_config)
    consumer_config = _with_security(connection, consumer_config)
    version_dir = Path(version_dir)
    manifest = read_manifest(version_dir)
    version = manifest.version
    check_version_name(version)
    blob = pack_version_dir(version_dir)
    blob_sha = sha256_hex(blob)
    max_message = ensure_model_topic(
        bootstrap, topic, admin_config=_with_security(connection, None)
    )
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
    producer = _producer(bootstrap, producer_config)
    try:
        if not intact:
            _produce(bootstrap, topic, version_records(blob, manifest, chunk_bytes), producer)
        if make_current:
            # Only after every chunk and the seal are acknowledged: never a current torn version.
            current = current_record(version, blob_sha, "publish")
            _produce(bootstrap, topic, [current], producer)
            index.add(MODEL_PARTITION, -1, current.key, current.value, [])
        pruned, tombstones = index.prune_records(keep, also=[version])
        if tombstones:
            _produce(bootstrap, topic, tombstones, producer)
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
    model_dir = Path(model_dir)
    name = normalize_version(version) if version else current_version(model_dir)
    if name is None:
        raise ArtifactError(f"{model_dir} has no current version: run `anomaly-trainer fit` first")
    path = model_dir / VERSIONS_DIR / name
    if not path.is_dir():
        raise VersionNotFoundError(
            f"version {name} not found in {model_dir}: see `anomaly-trainer versions`"
        )
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
    producer_config = _with_security(connection, producer_config)
    consumer_config = _with_security(connection, consumer_config)
    version = normalize_version(version)
    check_version_name(version)
    index = read_topic_index(bootstrap, topic, consumer_config=consumer_config)
    if index is None:
        raise ArtifactError(f"model topic {topic} does not exist: publish a version first")
    if version not in index.sealed:
        have = ", ".join(sorted(index.sealed, key=_version_sort_key)) or "none"
        raise VersionNotFoundError(f"version {version} is not on topic {topic} (it holds: {have})")
    checked = index.check_version(version)
    if isinstance(checked, Refusal):
        raise ArtifactError(f"cannot promote on {topic}: {checked.reason}")
    sealed, chunks = checked
    fetch_version_blob(bootstrap, topic, sealed, chunks, consumer_config=consumer_config)
    producer = _producer(bootstrap, producer_config)
    try:
        _produce(bootstrap, topic, [current_record(version, sealed.sha256, "promote")], producer)
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
    consumer_config = _with_security(connection, consumer_config)
    index = read_topic_index(bootstrap, topic, consumer_config=consumer_config)
    return index.versions() if index else []


# --------------------------------------------------------------------------------------------
# Following the topic
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TopicModelUpdate:
    """A verified version the topic made current, unpacked at ``path`` (a version directory)."""

    version: str
    path: Path
    sha256: str
    manifest: Manifest


class ModelTopicReader:
    """Follows the model topic and mirrors its current version into ``cache_dir``.

    ``cache_dir`` becomes an ordinary model directory (``versions/<v>/`` and ``CURRENT``), so
    ``load_bundle(cache_dir)`` and the directory watcher work on it unchanged. A version already
    in the cache with the same checksum is not fetched again (a restart costs one metadata
    replay). Not thread-safe: use it from one thread (see `follow`).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        cache_dir: str | os.PathLike[str],
        *,
        consumer_config: dict[str, Any] | None = None,
        keep: int = DEFAULT_KEEP,
        fetch_timeout_s: float = DEFAULT_TIMEOUT_S,
        max_refusals: int = 100,
        accept: Callable[[Manifest], str | None] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.cache_dir = Path(cache_dir)
        self.consumer_config = consumer_config
        self.keep = keep
        self.fetch_timeout_s = fetch_timeout_s
        # Why a version cannot be used (e.g. its features do not fit the input), or None; asked
        # with the manifest from the seal, before any chunk is fetched.
        self.accept = accept
        self.index = TopicIndex()
        self.refused: list[Refusal] = []  # newest last, at most max_refusals
        self._max_refusals = max_refusals
        self._new_refusals: list[Refusal] = []
        self._tail: _TopicTail | None = None
        self._caught_up = False
        self._dirty = True
        self._delivered: tuple[str, str] | None = None  # (version, sha256)
        self._last_reason: dict[str, str] = {}

    # -- state ---------------------------------------------------------------------------
    @property
    def caught_up(self) -> bool:
        """True once everything on the topic when reading started has been read."""
        return self._caught_up

    @property
    def delivered_version(self) -> str | None:
        return self._delivered[0] if self._delivered else None

    def take_refused(self) -> list[Refusal]:
        """Refusals since the last call (for metrics and logs)."""
        out, self._new_refusals = self._new_refusals, []
        return out

    # -- reading -------------------------------------------------------------------------
    def catch_up(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> TopicModelUpdate | None:
        """Read the topic to the end it had when reading began; return its current version.

        Returns None when the topic is missing or holds no usable current version yet (see
        ``refused``); raises ArtifactError when the broker cannot be read in time.
        """
        deadline = time.monotonic() + timeout_s
        if self._tail is None:
            config = _with_bootstrap_timeout(self.consumer_config, timeout_s)
            self._tail = _TopicTail(self.bootstrap, self.topic, config)
        update = None
        while True:
            got = self.poll(min(_POLL_MS / 1000, max(deadline - time.monotonic(), 0)))
            update = got or update
            if self._caught_up or (self._tail is not None and not self._tail.partitions):
                return update
            if time.monotonic() > deadline:
                raise TopicReadError(
                    f"could not read model topic {self.topic} at {self.bootstrap} to its end "
                    f"within {timeout_s:.0f}s"
                )

    def poll(self, timeout_s: float = 1.0) -> TopicModelUpdate | None:
        """Read what arrived; return the newest current version not yet delivered, if verified.

        Nothing is delivered before the reader has caught up with the topic, so a booting
        worker does not load each historical version in turn.
        """
        if self._tail is None:
            self._tail = _TopicTail(self.bootstrap, self.topic, self.consumer_config)
        tail = self._tail
        if not tail.assign():
            time.sleep(min(timeout_s, _TOPIC_RETRY_S))
            return None
        records = tail.poll(timeout_s)
        sealed_now: list[str] = []
        for r in records:
            touched = self.index.add(r.partition, r.offset, r.key, r.value, r.headers)
            if touched is None:
                continue
            cur = self.index.current
            if touched == "current" or (cur is not None and touched == cur.version):
                self._dirty = True
            if r.key == manifest_key(touched):
                sealed_now.append(touched)
        if not self._caught_up:
            if not tail.reached_boot_end():
                return None
            self._caught_up = True
            self._report_torn()
        elif sealed_now:
            self._report_torn()
        return self._evaluate()

    def follow(
        self,
        stop: threading.Event,
        on_update: Callable[[TopicModelUpdate], None] | None = None,
        on_refused: Callable[[Refusal], None] | None = None,
        poll_timeout_s: float = 1.0,
        retry_s: float = 5.0,
    ) -> None:
        """Poll until ``stop`` is set, calling back on updates and refusals (for a thread).

        Broker and disk trouble is logged and retried: a follower that died would freeze the
        model. Callbacks run in this thread.
        """
        while not stop.is_set():
            try:
                update = self.poll(poll_timeout_s)
            except (TopicReadError, OSError) as exc:
                log.error("model topic %s: %s; retrying in %.0fs", self.topic, exc, retry_s)
                stop.wait(retry_s)
                continue
            except Exception:  # a follower that died silently would freeze the model forever
                log.exception("model topic %s: unexpected failure; retrying", self.topic)
                stop.wait(retry_s)
                continue
            for refusal in self.take_refused():
                if on_refused is not None:
                    on_refused(refusal)
            if update is not None and on_update is not None:
                on_update(update)

    def close(self) -> None:
        if self._tail is not None:
            self._tail.close()
            self._tail = None

    def __enter__(self) -> ModelTopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------
    def _refuse(self, refusal: Refusal) -> None:
        refusal = Refusal(refusal.version, " ".join(refusal.reason.split()))  # one line
        if self._last_reason.get(refusal.version) == refusal.reason:
            return  # the same story told once (until the version is delivered again)
        self._last_reason[refusal.version] = refusal.reason
        log.error("model topic %s: refused %s: %s", self.topic, refusal.version, refusal.reason)
        self.refused.append(refusal)
        del self.refused[: -self._max_refusals]
        self._new_refusals.append(refusal)

    def _report_torn(self) -> None:
        """Unsealed chunks followed by another version's seal are an abandoned publish.

        Unsealed chunks at the end of the topic may be a publish still in progress: not reported.
        """
        if not self.index.sealed:
            return
        newest_seal = max(s.offset for s in self.index.sealed.values())
        for refusal in self.index.torn_versions():
            offsets = [c.offset for (v, _), c in self.index.chunks.items() if v == refusal.version]
            if offsets and max(offsets) < newest_seal:
                self._refuse(refusal)

    def _evaluate(self) -> TopicModelUpdate | None:
        if not self._dirty:
            return None
        self._dirty = False
        checked = self.index.check_current()
        if checked is None:
            return None
        if isinstance(checked, Refusal):
            self._refuse(checked)
            return None
        sealed, chunks = checked
        if self._delivered == (sealed.version, sealed.sha256):
            return None
        why = self.accept(sealed.manifest) if self.accept and sealed.manifest else None
        if why:
            self._refuse(Refusal(sealed.version, why))
            return None
        try:
            path = self._materialize(sealed, chunks)
            manifest = read_manifest(path)
        except (TopicReadError, OSError):
            self._dirty = True  # the broker or the disk failed, not the version: try again
            raise
        except ArtifactError as exc:
            self._refuse(Refusal(sealed.version, str(exc)))
            return None
        self._delivered = (sealed.version, sealed.sha256)
        self._last_reason.pop(sealed.version, None)
        log.info("model topic %s: %s is current (%s)", self.topic, sealed.version, path)
        return TopicModelUpdate(sealed.version, path, sealed.sha256, manifest)

    def _materialize(self, sealed: SealedVersion, chunks: list[ChunkInfo]) -> Path:
        """The version as a directory of the cache: reused if intact, else fetched and unpacked."""
        target = self.cache_dir / VERSIONS_DIR / sealed.version
        if target.is_dir() and _dir_sha(target) == sealed.sha256:
            set_current(self.cache_dir, sealed.version)
            return target
        blob = fetch_version_blob(
            self.bootstrap,
            self.topic,
            sealed,
            chunks,
            consumer_config=self.consumer_config,
            timeout_s=self.fetch_timeout_s,
        )
        with staging_dir(self.cache_dir) as staging:
            unpack_blob(blob, staging)
            del blob
            manifest = read_manifest(staging)
            if manifest.version != sealed.version:
                raise ArtifactError(f"the blob of {sealed.version} holds {manifest.version}")
            if target.exists():
                # The topic is the source of truth: a different local copy is set aside.
                stale = self.cache_dir / f".stale-{sealed.version}-{uuid.uuid4().hex[:8]}"
                os.rename(target, stale)
                shutil.rmtree(stale, ignore_errors=True)
            publish_staged(self.cache_dir, staging, keep=self.keep, make_current=True)
        return target


def _dir_sha(path: Path) -> str | None:
    try:
        return sha256_hex(pack_version_dir(path))
    except (ArtifactError, OSError):
        return None
