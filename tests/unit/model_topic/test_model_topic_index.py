"""The compacted view of the model topic: which version is current and whether it is intact.

Records are fed to `TopicIndex` as the consumer would hand them over (partition, offset, key,
value, headers); no Kafka is involved, the logic under test is pure.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from topic_fixtures import make_manifest

from anomaly_contract.errors import ArtifactError
from anomaly_contract.model_topic_format import (
    ChunkInfo,
    Refusal,
    TopicIndex,
    TopicRecord,
    assemble_blob,
    current_record,
    pack_version_dir,
    sha256_hex,
    version_records,
)

CHUNK = 8 * 1024


class Log:
    """An append-only partition 0 feeding a TopicIndex, with the values kept for assembly."""

    def __init__(self) -> None:
        self.index = TopicIndex()
        self.values: dict[int, bytes | None] = {}

    def append(self, *records: TopicRecord) -> None:
        for r in records:
            offset = len(self.values)
            self.values[offset] = r.value
            self.index.add(0, offset, r.key, r.value, r.headers)

    def publish(self, blob: bytes, version: str, current: bool = True) -> list[TopicRecord]:
        records = version_records(blob, make_manifest(version), CHUNK)
        self.append(*records)
        if current:
            self.append(current_record(version, sha256_hex(blob), "publish"))
        return records

    def assemble(self) -> bytes:
        checked = self.index.check_current()
        assert checked is not None and not isinstance(checked, Refusal), checked
        sealed, chunks = checked
        return assemble_blob(sealed, [(c, self.values[c.offset]) for c in chunks])


@pytest.fixture
def blob(version_dir: Path) -> bytes:
    return pack_version_dir(version_dir)


def test_a_published_version_is_current_and_assembles(blob: bytes) -> None:
    log = Log()
    log.publish(blob, "v1")
    assert log.assemble() == blob
    [info] = log.index.versions()
    assert (info.version, info.sha256, info.is_current, info.problem) == (
        "v1",
        sha256_hex(blob),
        True,
        None,
    )
    assert info.manifest is not None and info.manifest.feature_names == ["f0", "f1", "f2"]


def test_nothing_is_current_on_an_empty_topic() -> None:
    assert TopicIndex().check_current() is None


def test_the_newest_current_record_wins(blob: bytes) -> None:
    log = Log()
    log.publish(blob, "v1")
    other = blob[:-10] + b"0123456789"
    log.publish(other, "v2")
    assert log.index.current is not None and log.index.current.version == "v2"
    assert log.assemble() == other
    log.append(current_record("v1", sha256_hex(blob), "promote"))  # rollback
    assert log.assemble() == blob


def test_a_corrupt_chunk_refuses_the_version(blob: bytes) -> None:
    log = Log()
    records = version_records(blob, make_manifest("v1"), CHUNK)
    bad = records[2].value or b""
    records[2] = TopicRecord(records[2].key, bad[:-1] + bytes([bad[-1] ^ 1]), records[2].headers)
    log.append(*records, current_record("v1", sha256_hex(blob), "publish"))
    refusal = log.index.check_current()
    assert isinstance(refusal, Refusal)
    assert refusal.version == "v1"
    assert "chunk 2 fails its checksum" in refusal.reason


def test_the_newest_record_of_a_chunk_key_wins_like_compaction(blob: bytes) -> None:
    log = Log()
    records = log.publish(blob, "v1")
    good = records[1]
    log.append(TopicRecord(good.key, b"tampered", good.headers))  # bad record, same key
    assert isinstance(log.index.check_current(), Refusal)
    log.append(good)  # published again: the good chunk is the newest again
    assert log.assemble() == blob


def test_a_chunk_with_consistent_but_forged_headers_fails_the_blob_checksum(blob: bytes) -> None:
    log = Log()
    records = log.publish(blob, "v1")
    forged = b"x" * len(records[0].value or b"")
    headers = [
        (k, sha256_hex(forged).encode() if k == "chunk-sha256" else v)
        for k, v in records[0].headers
    ]
    log.append(TopicRecord(records[0].key, forged, headers))
    checked = log.index.check_current()
    assert checked is not None and not isinstance(checked, Refusal)
    sealed, chunks = checked
    with pytest.raises(ArtifactError, match="does not match its checksum"):
        assemble_blob(sealed, [(c, log.values[c.offset]) for c in chunks])


def test_a_missing_chunk_refuses_the_version(blob: bytes) -> None:
    log = Log()
    records = version_records(blob, make_manifest("v1"), CHUNK)
    log.append(*records[:3], *records[4:], current_record("v1", sha256_hex(blob), "publish"))
    refusal = log.index.check_current()
    assert isinstance(refusal, Refusal)
    assert f"chunks 3 of {len(records) - 1} are missing" in refusal.reason


def test_a_torn_version_is_never_current_and_is_reported(blob: bytes) -> None:
    log = Log()
    log.publish(blob, "v1")
    records = version_records(blob[::-1], make_manifest("v2"), CHUNK)
    log.append(*records[:2])  # publish interrupted: two chunks, no seal, no current
    assert log.assemble() == blob
    assert log.index.torn_versions() == [
        Refusal("v2", f"torn: 2 of {len(records) - 1} chunks and no manifest record")
    ]
    log.append(current_record("v2", sha256_hex(blob[::-1]), "publish"))  # pointed at anyway
    refusal = log.index.check_current()
    assert isinstance(refusal, Refusal) and "no manifest record for v2" in refusal.reason


def test_chunks_of_another_upload_under_the_same_name_are_refused(blob: bytes) -> None:
    log = Log()
    log.publish(blob, "v1")
    other = version_records(blob[::-1], make_manifest("v1"), CHUNK)
    log.append(other[0])  # a different v1 started to overwrite chunk 0
    refusal = log.index.check_current()
    assert isinstance(refusal, Refusal)
    assert "chunk 0 belongs to another upload of v1" in refusal.reason


def test_current_must_name_the_sealed_checksum(blob: bytes) -> None:
    log = Log()
    log.publish(blob, "v1", current=False)
    log.append(current_record("v1", "0" * 64, "publish"))
    refusal = log.index.check_current()
    assert isinstance(refusal, Refusal) and "the topic holds" in refusal.reason


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"not json", "the current record is unusable"),
        (json.dumps({"version": "../v1"}).encode(), "the current record is unusable"),
    ],
)
def test_a_malformed_current_record_is_refused(blob: bytes, value: bytes, message: str) -> None:
    log = Log()
    log.publish(blob, "v1", current=False)
    log.append(TopicRecord(b"current", value))
    refusal = log.index.check_current()
    assert isinstance(refusal, Refusal) and message in refusal.reason


def test_a_seal_with_an_invalid_manifest_is_refused(blob: bytes) -> None:
    log = Log()
    records = version_records(blob, make_manifest("v1"), CHUNK)
    doc = json.loads(records[-1].value or b"")
    doc["manifest"]["surprise"] = 1  # the manifest is strict (extra=forbid)
    records[-1] = TopicRecord(records[-1].key, json.dumps(doc).encode())
    log.append(*records, current_record("v1", sha256_hex(blob), "publish"))
    refusal = log.index.check_current()
    assert isinstance(refusal, Refusal) and "invalid model manifest: surprise" in refusal.reason


def test_tombstones_delete_versions_and_unknown_keys_are_ignored(blob: bytes) -> None:
    log = Log()
    records = log.publish(blob, "v1")
    log.append(TopicRecord(b"someone-else", b"{}"))
    assert log.index.ignored == 1
    log.append(TopicRecord(records[-1].key, None))  # tombstone the seal
    assert log.index.versions() == []
    refusal = log.index.check_current()
    assert isinstance(refusal, Refusal) and "no manifest record" in refusal.reason
    log.append(TopicRecord(b"current", None))
    assert log.index.check_current() is None


def test_assemble_refuses_an_unread_chunk(blob: bytes) -> None:
    log = Log()
    log.publish(blob, "v1")
    checked = log.index.check_current()
    assert checked is not None and not isinstance(checked, Refusal)
    sealed, chunks = checked
    parts: list[tuple[ChunkInfo, bytes | None]] = [(c, log.values[c.offset]) for c in chunks]
    parts[1] = (parts[1][0], None)
    with pytest.raises(ArtifactError, match="chunk 1 of v1 could not be read"):
        assemble_blob(sealed, parts)


def test_prune_keeps_the_newest_versions_and_the_current_one(blob: bytes) -> None:
    log = Log()
    for n in range(1, 5):
        log.publish(blob[:-1] + bytes([n]), f"v{n}")
    log.append(current_record("v1", sha256_hex(blob[:-1] + b"\x01"), "promote"))
    torn = version_records(blob, make_manifest("v0"), CHUNK)[:2]  # an old abandoned publish
    log.append(*torn)
    deleted, tombstones = log.index.prune_records(keep=2)
    assert deleted == ["v0", "v2"]  # v1 stays: it is current
    assert all(t.value is None for t in tombstones)
    assert {t.key for t in tombstones} == (
        {r.key for r in torn}
        | {k for k in (r.key for r in version_records(blob, make_manifest("v2"), CHUNK))}
    )
    log.append(*tombstones)
    assert [v.version for v in log.index.versions()] == ["v1", "v3", "v4"]
    assert log.index.torn_versions() == []
    assert log.assemble() == blob[:-1] + b"\x01"
    assert log.index.prune_records(keep=0) == ([], [])


def test_prune_counts_a_version_being_published(blob: bytes) -> None:
    log = Log()
    log.publish(blob, "v1")
    log.publish(blob[::-1], "v2", current=False)
    deleted, _ = log.index.prune_records(keep=2, also=["v3"])
    assert deleted == []  # v1 is current
    log.append(current_record("v2", sha256_hex(blob[::-1]), "publish"))
    deleted, _ = log.index.prune_records(keep=2, also=["v3"])
    assert deleted == ["v1"]
