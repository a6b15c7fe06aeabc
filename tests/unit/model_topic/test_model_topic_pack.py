"""Packing, chunking and the record layout of the model topic (pure: no Kafka, no Keras)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from topic_fixtures import make_manifest, write_version_dir

from anomaly_contract.errors import ArtifactError, ConfigError
from anomaly_contract.model_topic_format import (
    FORMAT,
    PACKED_FILES,
    current_record,
    pack_version_dir,
    parse_topic_url,
    sha256_hex,
    split_chunks,
    unpack_blob,
    version_records,
)


def test_pack_is_deterministic_whatever_the_file_times(version_dir: Path, tmp_path: Path) -> None:
    first = pack_version_dir(version_dir)
    for name in PACKED_FILES:
        os.utime(version_dir / name, (1_000_000, 1_000_000))
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in PACKED_FILES:
        (copy / name).write_bytes((version_dir / name).read_bytes())
    assert pack_version_dir(version_dir) == first
    assert pack_version_dir(copy) == first
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(PACKED_FILES)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}


def test_pack_changes_when_a_file_changes(version_dir: Path) -> None:
    before = pack_version_dir(version_dir)
    (version_dir / "model.keras").write_bytes(b"other weights")
    assert sha256_hex(pack_version_dir(version_dir)) != sha256_hex(before)


def test_unpack_restores_identical_files(version_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    unpack_blob(pack_version_dir(version_dir), out)
    for name in PACKED_FILES:
        assert (out / name).read_bytes() == (version_dir / name).read_bytes()
    assert pack_version_dir(out) == pack_version_dir(version_dir)


def test_pack_refuses_an_incomplete_version(version_dir: Path) -> None:
    (version_dir / "scaler.json").unlink()
    with pytest.raises(ArtifactError, match="scaler.json is missing"):
        pack_version_dir(version_dir)


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([("../evil", b"x")], "unexpected member '../evil'"),
        ([("manifest.json", b"{}"), ("/etc/passwd", b"x")], "unexpected member"),
        ([("manifest.json", b"{}"), ("manifest.json", b"{}")], "unexpected member"),
        ([("manifest.json", b"{}")], "lacks model.keras, scaler.json"),
    ],
)
def test_unpack_refuses_anything_but_the_three_files(
    tmp_path: Path, members: list[tuple[str, bytes]], message: str
) -> None:
    with pytest.raises(ArtifactError, match=message):
        unpack_blob(_tar(members), tmp_path)
    assert not (tmp_path.parent / "evil").exists()


def test_unpack_refuses_garbage(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not a readable tar"):
        unpack_blob(b"\x00garbage" * 100, tmp_path)


def test_split_chunks_covers_the_blob_in_bounded_pieces() -> None:
    blob = bytes(range(256)) * 41  # 10_496 bytes
    chunks = split_chunks(blob, 1000)
    assert len(chunks) == 11
    assert all(len(c) <= 1000 for c in chunks)
    assert b"".join(chunks) == blob
    assert split_chunks(b"abc", 1000) == [b"abc"]
    assert split_chunks(b"", 1000) == [b""]
    with pytest.raises(ConfigError):
        split_chunks(blob, 0)


def test_version_records_layout(version_dir: Path) -> None:
    blob = pack_version_dir(version_dir)
    manifest = make_manifest("v1")
    records = version_records(blob, manifest, chunk_bytes=16 * 1024)
    chunks, seal = records[:-1], records[-1]
    assert len(chunks) == -(-len(blob) // (16 * 1024)) > 1
    assert [r.key for r in chunks] == [
        f"version/v1/chunk/{i:06d}".encode() for i in range(len(chunks))
    ]
    assert b"".join(r.value or b"" for r in chunks) == blob
    for i, r in enumerate(chunks):
        headers = dict(r.headers)
        assert headers["format"] == FORMAT.encode()
        assert headers["model-version"] == b"v1"
        assert headers["chunk-index"] == str(i).encode()
        assert headers["chunk-count"] == str(len(chunks)).encode()
        assert headers["blob-sha256"] == sha256_hex(blob).encode()
        assert headers["chunk-sha256"] == sha256_hex(r.value or b"").encode()
    assert seal.key == b"version/v1/manifest"
    doc = json.loads(seal.value or b"")
    assert doc["sha256"] == sha256_hex(blob)
    assert doc["size"] == len(blob)
    assert doc["chunk_count"] == len(chunks)
    assert doc["manifest"]["version"] == "v1"
    cur = json.loads(current_record("v1", sha256_hex(blob), "publish").value or b"")
    assert (cur["version"], cur["sha256"], cur["reason"]) == ("v1", sha256_hex(blob), "publish")


def test_version_records_refuse_unsafe_version_names(tmp_path: Path) -> None:
    manifest = make_manifest("v1").model_copy(update={"version": "v1/../x"})
    with pytest.raises(ArtifactError, match="not a version name"):
        version_records(b"blob", manifest)


def test_a_model_larger_than_a_message_needs_several_chunks(tmp_path: Path) -> None:
    write_version_dir(tmp_path / "big", "v1", model_bytes=os.urandom(3 * 1024 * 1024))
    records = version_records(pack_version_dir(tmp_path / "big"), make_manifest("v1"))
    assert len(records) - 1 == 7  # 3 MiB + two small files in 512 KiB chunks
    assert max(len(r.value or b"") for r in records) <= 512 * 1024


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("kafka://localhost:9092/models", ("localhost:9092", "models")),
        ("kafka://a:1,b:2/anomaly.models", ("a:1,b:2", "anomaly.models")),
    ],
)
def test_parse_topic_url(url: str, expected: tuple[str, str]) -> None:
    assert parse_topic_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "localhost:9092/models",
        "kafka://localhost/models",
        "kafka://localhost:9092/",
        "kafka://localhost:9092/bad topic",
        "kafka://localhost:9092/models?max_records=3",
        "http://localhost:9092/models",
    ],
)
def test_parse_topic_url_refuses_bad_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_topic_url(url)
