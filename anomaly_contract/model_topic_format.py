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
``anomaly_contract.model_dir``: the result is an ordinary model directory for ``load_bundle``.

A torn version (an interrupted publish: chunks without a manifest record) never becomes current,
because ``current`` is only written after the seal. A version whose chunks are missing or fail a
checksum is refused and reported as data (`Refusal`); the version delivered before stays. A
broker that cannot be read raises `TopicReadError` (retry: nothing is wrong with the versions).

Security (SASL, TLS): the trainer's entry points take a `KafkaConnection`; the lower-level
functions and `ModelTopicReader` take kafka-python config dicts (the worker passes its own).

This module holds no training code; the worker imports it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from pydantic import ValidationError

from anomaly_contract.artifact import (
    MANIFEST_FILE,
    MODEL_FILE,
    OPTIONAL_FILES,
    SCALER_FILE,
    Manifest,
)
from anomaly_contract.errors import ArtifactError, ConfigError
from anomaly_contract.kafka_urls import (
    BROKER_PROBLEM,
    KafkaUrlProblem,
    ProblemKind,
    split_kafka_url,
)
from anomaly_contract.model_dir import check_version_name, utc_now, version_sort_key

log = logging.getLogger(__name__)


FORMAT = "anomaly-model-tar/1"
CURRENT_KEY = b"current"
PACKED_FILES = tuple(sorted((MANIFEST_FILE, SCALER_FILE, MODEL_FILE)))  # the blob's member order
DEFAULT_CHUNK_BYTES = 512 * 1024
# Record framing, key and headers take well under this; chunks plus it must fit max.message.bytes.
RECORD_OVERHEAD_BYTES = 16 * 1024
MODEL_PARTITION = 0
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
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


_TOPIC_USAGE = "use kafka://HOST:PORT/TOPIC"
_TOPIC_URL_PROBLEMS: dict[ProblemKind, str] = {
    "scheme": "invalid model topic {url!r}: " + _TOPIC_USAGE,
    "options": "model topic {url!r} takes no options: " + _TOPIC_USAGE,
    "broker": BROKER_PROBLEM + ": " + _TOPIC_USAGE,
    "no_topic": "invalid or missing topic {part!r} in {url!r}: "
    + _TOPIC_USAGE
    + " (letters, digits, . _ -)",
}
_TOPIC_URL_PROBLEMS["bad_topic"] = _TOPIC_URL_PROBLEMS["no_topic"]


def parse_topic_url(url: str) -> tuple[str, str]:
    """``kafka://HOST:PORT[,HOST:PORT...]/TOPIC`` -> (bootstrap servers, topic)."""
    try:
        checked = split_kafka_url(url, options=False)
    except KafkaUrlProblem as problem:
        raise ConfigError(problem.worded(_TOPIC_URL_PROBLEMS)) from None
    return checked.bootstrap, checked.topic


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


def header_value(headers: Iterable[tuple[str, bytes]], name: str) -> str | None:
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
            for v in sorted(counts, key=version_sort_key)
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
        names = sorted(set(self.sealed) | set(also), key=version_sort_key)
        kept = set(names[-keep:])
        if self.current is not None and not self.current.problem:
            kept.add(self.current.version)
        oldest_kept = min((version_sort_key(v) for v in kept), default=(-1, ""))
        doomed = {v for v in names if v not in kept}
        doomed |= {
            v
            for v, _ in self.chunks
            if v not in kept and v not in self.sealed and version_sort_key(v) < oldest_kept
        }
        records = [
            TopicRecord(chunk_key(v, i), None)
            for (v, i) in sorted(self.chunks, key=lambda k: (version_sort_key(k[0]), k[1]))
            if v in doomed
        ]
        records += [TopicRecord(manifest_key(v), None) for v in names if v in doomed]
        return sorted(doomed, key=version_sort_key), records

    def versions(self) -> list[TopicVersionInfo]:
        current = self.current.version if self.current and not self.current.problem else None
        out = []
        for v in sorted(self.sealed, key=version_sort_key):
            s = self.sealed[v]
            problem = s.problem or self.chunk_problem(s)
            out.append(
                TopicVersionInfo(
                    v, s.sha256, s.size, s.chunk_count, v == current, problem, s.manifest
                )
            )
        return out


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

    fmt = header_value(headers, "format")
    if fmt != FORMAT:
        return info(problem=f"has format {fmt!r}, this reader knows {FORMAT!r}")
    if header_value(headers, "model-version") != version or header_value(
        headers, "chunk-index"
    ) != str(index):
        return info(problem="has headers that do not match its key")
    count_s, blob_sha, chunk_sha = (
        header_value(headers, "chunk-count"),
        header_value(headers, "blob-sha256"),
        header_value(headers, "chunk-sha256"),
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
