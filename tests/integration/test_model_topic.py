"""Models through a compacted Kafka topic, against the real broker.

Versions are real Keras autoencoders published with anomaly_contract.model_dir (untrained weights are
enough: what matters is that the reader rebuilds the very same model, so the same scores).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType
from kafka_helpers import consume_all, create_topic, produce_json

from anomaly_contract.artifact import CURRENT_FILE, VERSIONS_DIR, Manifest, RowCounts, Scaler
from anomaly_contract.errors import ArtifactError, VersionNotFoundError
from anomaly_contract.model_dir import (
    current_version,
    load_bundle,
    load_version_dir,
    next_version_name,
    publish_staged,
    staging_dir,
    utc_now,
    write_version_files,
)
from anomaly_contract.model_topic_format import (
    TopicRecord,
    current_record,
    pack_version_dir,
    sha256_hex,
    version_records,
)
from trainer.calibration import calibrate
from trainer.publish import (
    list_topic_versions,
    promote_on_topic,
    publish_from_model_dir,
    publish_to_topic,
)
from worker.model_follow import ModelTopicReader, TopicModelUpdate

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def publish_local(model_dir: Path, n_features: int = 6, hidden: int = 16, seed: int = 0) -> Path:
    """Publish an autoencoder (sub-models "encoder" and "decoder") as the next version."""
    import keras

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, n_features)) + 5.0
    scaler = Scaler.fit(x[:150], "minmax")
    latent = 4
    enc_in = keras.Input((n_features,))
    encoder = keras.Model(
        enc_in,
        keras.layers.Dense(latent)(keras.layers.Dense(hidden, activation="relu")(enc_in)),
        name="encoder",
    )
    dec_in = keras.Input((latent,))
    decoder = keras.Model(
        dec_in,
        keras.layers.Dense(n_features)(keras.layers.Dense(hidden, activation="relu")(dec_in)),
        name="decoder",
    )
    inp = keras.Input((n_features,))
    model = keras.Model(inp, decoder(encoder(inp)), name="autoencoder")
    cal = scaler.transform(x[150:])
    errors = np.square(cal - np.asarray(model(cal, training=False))).mean(axis=1)
    threshold, stats = calibrate(errors, 99.0)
    with staging_dir(model_dir) as staging:
        version = next_version_name(model_dir)
        manifest = Manifest(
            version=version,
            created_at=utc_now(),
            architecture="dense",
            feature_names=[f"f{i}" for i in range(n_features)],
            input_shape=[n_features],
            latent_dim=latent,
            loss="mse",
            threshold=threshold,
            percentile=99.0,
            calibration=stats,
            data_source="synthetic:model-topic-tests",
            data_fingerprint="sha256:test",
            rows=RowCounts(total=200, train=150, validation=0, calibration=50),
            hyperparameters={"hidden": hidden, "seed": seed},
            validation_metrics={},
            library_versions={},
        )
        write_version_files(staging, model, scaler, manifest)
        publish_staged(model_dir, staging)
    return model_dir / VERSIONS_DIR / version


def rows(n_features: int = 6, n: int = 32) -> np.ndarray:
    return np.random.default_rng(99).normal(size=(n, n_features)) + 5.0


def assert_same_scores(a: Path, b: Path, n_features: int = 6) -> None:
    x = rows(n_features)
    np.testing.assert_array_equal(
        load_version_dir(a).score(x).scores, load_version_dir(b).score(x).scores
    )


def poll_until(reader: ModelTopicReader, timeout_s: float = 30.0) -> TopicModelUpdate:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        update = reader.poll(0.5)
        if update is not None:
            return update
    raise AssertionError(f"no update within {timeout_s}s; refused: {reader.refused}")


def poll_for_refusal(reader: ModelTopicReader, version: str, timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert reader.poll(0.5) is None
        for refusal in reader.take_refused():
            if refusal.version == version:
                return refusal.reason
    raise AssertionError(f"{version} was not refused within {timeout_s}s: {reader.refused}")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three small versions (different weights) and one of several MB, in one model directory."""
    model_dir = tmp_path_factory.mktemp("source-models")
    return {
        "v1": publish_local(model_dir, seed=1),
        "v2": publish_local(model_dir, seed=2),
        "v3": publish_local(model_dir, seed=3),
        "big": publish_local(
            tmp_path_factory.mktemp("big-models"), n_features=784, hidden=768, seed=4
        ),
    }


def test_publish_then_a_fresh_reader_assembles_the_same_version(
    kafka_bootstrap: str, topic_name: str, models: dict[str, Path], tmp_path: Path
) -> None:
    assert publish_to_topic(kafka_bootstrap, topic_name, models["v1"]) == "v1"

    with ModelTopicReader(kafka_bootstrap, topic_name, tmp_path / "cache") as reader:
        update = reader.catch_up(timeout_s=30)
        assert update is not None and update.version == "v1"
        assert update.sha256 == sha256_hex(pack_version_dir(models["v1"]))
        assert update.path == tmp_path / "cache" / VERSIONS_DIR / "v1"
        assert_same_scores(update.path, models["v1"])
        # The cache is an ordinary model directory: load_bundle reads its CURRENT.
        assert load_bundle(tmp_path / "cache").version == "v1"
        assert reader.poll(0.2) is None  # delivered once

        # Following: a new version published while the reader runs is delivered once.
        publish_to_topic(kafka_bootstrap, topic_name, models["v2"])
        update = poll_until(reader)
        assert update.version == "v2"
        assert current_version(tmp_path / "cache") == "v2"
        assert_same_scores(update.path, models["v2"])
        assert reader.refused == []

    # The topic is compacted and lists what it holds.
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        configs = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic_name, ["cleanup.policy"])]
        )
    finally:
        admin.close()
    assert configs["topic"][topic_name]["cleanup.policy"]["value"] == "compact"
    listed = list_topic_versions(kafka_bootstrap, topic_name)
    assert [(v.version, v.is_current, v.problem) for v in listed] == [
        ("v1", False, None),
        ("v2", True, None),
    ]

    # Publishing the same version again sends only a new current record.
    before = len(consume_all(kafka_bootstrap, topic_name))
    publish_to_topic(kafka_bootstrap, topic_name, models["v2"])
    assert len(consume_all(kafka_bootstrap, topic_name)) == before + 1


def test_a_restarted_reader_reuses_its_cache(
    kafka_bootstrap: str, topic_name: str, models: dict[str, Path], tmp_path: Path
) -> None:
    publish_to_topic(kafka_bootstrap, topic_name, models["v1"])
    cache = tmp_path / "cache"
    with ModelTopicReader(kafka_bootstrap, topic_name, cache) as reader:
        first = reader.catch_up(timeout_s=30)
    assert first is not None
    inode = (first.path / "model.keras").stat().st_ino
    with ModelTopicReader(kafka_bootstrap, topic_name, cache) as reader:
        again = reader.catch_up(timeout_s=30)
    assert again is not None and again.version == "v1"
    assert (again.path / "model.keras").stat().st_ino == inode  # not fetched and rewritten


def test_a_model_larger_than_the_message_limit_round_trips(
    kafka_bootstrap: str, topic_name: str, models: dict[str, Path], tmp_path: Path
) -> None:
    big = models["big"]
    size = len(pack_version_dir(big))
    assert size > 2 * 1024 * 1024  # well above the broker's default 1 MB message size
    publish_to_topic(kafka_bootstrap, topic_name, big)
    chunks = [r for r in consume_all(kafka_bootstrap, topic_name) if b"/chunk/" in (r.key or b"")]
    assert len(chunks) == -(-size // (512 * 1024))
    assert max(len(r.value or b"") for r in chunks) <= 512 * 1024

    with ModelTopicReader(kafka_bootstrap, topic_name, tmp_path / "cache") as reader:
        update = reader.catch_up(timeout_s=60)
    assert update is not None
    assert pack_version_dir(update.path) == pack_version_dir(big)
    assert_same_scores(update.path, big, n_features=784)


def test_a_corrupt_chunk_is_refused_and_the_current_version_stays(
    kafka_bootstrap: str, topic_name: str, models: dict[str, Path], tmp_path: Path
) -> None:
    publish_to_topic(kafka_bootstrap, topic_name, models["v1"])
    reader = ModelTopicReader(kafka_bootstrap, topic_name, tmp_path / "cache")
    try:
        first = reader.catch_up(timeout_s=30)
        assert first is not None and first.version == "v1"

        # v2 arrives with one chunk's bytes damaged but its original key and headers.
        blob = pack_version_dir(models["v2"])
        records = version_records(blob, load_version_dir(models["v2"]).manifest, 16 * 1024)
        bad = records[1]
        damaged = bytearray(bad.value or b"")
        damaged[100] ^= 0xFF
        records[1] = TopicRecord(bad.key, bytes(damaged), bad.headers)
        records.append(current_record("v2", sha256_hex(blob), "publish"))
        produce_json(
            kafka_bootstrap,
            topic_name,
            [r.value for r in records],
            keys=[r.key for r in records],
            headers=[r.headers for r in records],
            partition=0,
        )
        reason = poll_for_refusal(reader, "v2")
        assert "chunk 1 fails its checksum" in reason
        assert reader.delivered_version == "v1"
        assert current_version(tmp_path / "cache") == "v1"
        assert not (tmp_path / "cache" / VERSIONS_DIR / "v2").exists()

        # A fresh reader sees the same topic the same way: nothing usable is current.
        with ModelTopicReader(kafka_bootstrap, topic_name, tmp_path / "fresh") as fresh:
            assert fresh.catch_up(timeout_s=30) is None
            assert [r.version for r in fresh.refused] == ["v2"]
        assert not (tmp_path / "fresh" / CURRENT_FILE).exists()
        with pytest.raises(ArtifactError, match="chunk 1 fails its checksum"):
            promote_on_topic(kafka_bootstrap, topic_name, "v2")

        # Publishing v2 again repairs it (the damaged chunk is sent again) and it swaps in.
        publish_to_topic(kafka_bootstrap, topic_name, models["v2"])
        update = poll_until(reader)
        assert update.version == "v2"
        assert_same_scores(update.path, models["v2"])
    finally:
        reader.close()


def test_a_torn_version_is_never_delivered(
    kafka_bootstrap: str, topic_name: str, models: dict[str, Path], tmp_path: Path
) -> None:
    publish_to_topic(kafka_bootstrap, topic_name, models["v1"])
    reader = ModelTopicReader(kafka_bootstrap, topic_name, tmp_path / "cache")
    try:
        assert reader.catch_up(timeout_s=30) is not None
        # An interrupted publish of v2: some chunks, one missing, no seal, no current record.
        blob = pack_version_dir(models["v2"])
        records = version_records(blob, load_version_dir(models["v2"]).manifest, 16 * 1024)
        chunks = records[:-1]
        assert len(chunks) >= 3
        torn = chunks[:1] + chunks[2:]
        produce_json(
            kafka_bootstrap,
            topic_name,
            [r.value for r in torn],
            keys=[r.key for r in torn],
            headers=[r.headers for r in torn],
            partition=0,
        )
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert reader.poll(0.3) is None
        assert reader.delivered_version == "v1"
        assert not (tmp_path / "cache" / VERSIONS_DIR / "v2").exists()

        # The next complete version goes through, and the abandoned one is reported.
        publish_to_topic(kafka_bootstrap, topic_name, models["v3"])
        update = poll_until(reader)
        assert update.version == "v3"
        assert [r.version for r in reader.refused] == ["v2"]
        assert "torn" in reader.refused[0].reason
    finally:
        reader.close()


def test_promote_on_topic_rolls_back(
    kafka_bootstrap: str, topic_name: str, models: dict[str, Path], tmp_path: Path
) -> None:
    publish_to_topic(kafka_bootstrap, topic_name, models["v1"])
    publish_to_topic(kafka_bootstrap, topic_name, models["v2"], make_current=False)
    reader = ModelTopicReader(kafka_bootstrap, topic_name, tmp_path / "cache")
    try:
        first = reader.catch_up(timeout_s=30)
        assert first is not None and first.version == "v1"  # v2 is on the topic, not current
        assert promote_on_topic(kafka_bootstrap, topic_name, "2") == "v2"
        assert poll_until(reader).version == "v2"
        assert promote_on_topic(kafka_bootstrap, topic_name, "v1") == "v1"
        rolled = poll_until(reader)
        assert rolled.version == "v1"
        assert current_version(tmp_path / "cache") == "v1"
        assert_same_scores(rolled.path, models["v1"])
    finally:
        reader.close()
    with pytest.raises(VersionNotFoundError, match="v9 is not on topic"):
        promote_on_topic(kafka_bootstrap, topic_name, "v9")


def test_publish_refuses_a_different_version_under_a_taken_name(
    kafka_bootstrap: str, topic_name: str, models: dict[str, Path], tmp_path: Path
) -> None:
    publish_to_topic(kafka_bootstrap, topic_name, models["v1"])
    other_dir = tmp_path / "other"
    other_v1 = publish_local(other_dir, seed=42)  # another model directory's v1
    with pytest.raises(ArtifactError, match="already holds a different v1"):
        publish_to_topic(kafka_bootstrap, topic_name, other_v1)


def test_publish_refuses_a_topic_that_deletes_old_records(
    kafka_bootstrap: str, topic_name: str, models: dict[str, Path]
) -> None:
    create_topic(kafka_bootstrap, topic_name)  # broker default: cleanup.policy=delete
    with pytest.raises(ArtifactError, match="cleanup.policy=delete"):
        publish_to_topic(kafka_bootstrap, topic_name, models["v1"])
    assert consume_all(kafka_bootstrap, topic_name) == []


def test_a_reader_waits_for_a_topic_that_does_not_exist_yet(
    kafka_bootstrap: str, topic_name: str, models: dict[str, Path], tmp_path: Path
) -> None:
    with ModelTopicReader(kafka_bootstrap, topic_name, tmp_path / "cache") as reader:
        assert reader.catch_up(timeout_s=10) is None
        publish_to_topic(kafka_bootstrap, topic_name, models["v1"])
        assert poll_until(reader).version == "v1"


def test_publish_deletes_versions_beyond_keep(
    kafka_bootstrap: str, topic_name: str, models: dict[str, Path], tmp_path: Path
) -> None:
    for name in ("v1", "v2", "v3"):
        publish_to_topic(kafka_bootstrap, topic_name, models[name], keep=2)
    assert [v.version for v in list_topic_versions(kafka_bootstrap, topic_name)] == ["v2", "v3"]
    v1_records = [
        r
        for r in consume_all(kafka_bootstrap, topic_name)
        if (r.key or b"").startswith(b"version/v1/")
    ]
    assert v1_records and v1_records[-1].value is None  # tombstoned (compaction removes the rest)
    with pytest.raises(VersionNotFoundError):
        promote_on_topic(kafka_bootstrap, topic_name, "v1")
    with ModelTopicReader(kafka_bootstrap, topic_name, tmp_path / "cache") as reader:
        update = reader.catch_up(timeout_s=30)
    assert update is not None and update.version == "v3"
    assert reader.refused == []


def test_the_reader_refuses_a_version_its_caller_cannot_use_before_fetching_it(
    kafka_bootstrap: str, topic_name: str, models: dict[str, Path], tmp_path: Path
) -> None:
    def six_features_only(manifest: Manifest) -> str | None:
        return (
            None
            if manifest.n_features == 6
            else f"{manifest.version} expects {manifest.n_features} features, the input has 6"
        )

    publish_to_topic(kafka_bootstrap, topic_name, models["v1"])
    cache = tmp_path / "cache"
    with ModelTopicReader(kafka_bootstrap, topic_name, cache, accept=six_features_only) as reader:
        assert reader.catch_up(timeout_s=30) is not None
        other = publish_local(tmp_path / "wide", n_features=784, hidden=32)
        (other / "manifest.json").write_text(
            load_version_dir(other).manifest.model_copy(update={"version": "v2"}).model_dump_json()
        )
        publish_to_topic(kafka_bootstrap, topic_name, other)
        assert "v2 expects 784 features" in poll_for_refusal(reader, "v2")
        assert reader.delivered_version == "v1"
    assert not (cache / VERSIONS_DIR / "v2").exists()  # never fetched


def test_publish_from_model_dir_takes_a_topic_url(
    kafka_bootstrap: str, topic_name: str, models: dict[str, Path], tmp_path: Path
) -> None:
    model_dir = models["v1"].parent.parent
    url = f"kafka://{kafka_bootstrap}/{topic_name}"
    assert publish_from_model_dir(url, model_dir) == "v3"  # the directory's current version
    assert publish_from_model_dir(url, model_dir, "1", make_current=False) == "v1"
    with pytest.raises(VersionNotFoundError, match="version v9 not found"):
        publish_from_model_dir(url, model_dir, "v9")
    listed = list_topic_versions(kafka_bootstrap, topic_name)
    assert [(v.version, v.is_current) for v in listed] == [("v1", False), ("v3", True)]


@pytest.mark.slow
def test_real_compaction_keeps_what_the_reader_needs(
    kafka_bootstrap: str, topic_name: str, models: dict[str, Path], tmp_path: Path
) -> None:
    """With the log cleaner actually running, deleted versions go and the current one stays."""
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:  # the same policy as publish_to_topic creates, with the cleaner made eager for a test
        admin.create_topics(
            {
                topic_name: {
                    "num_partitions": 1,
                    "replication_factor": 1,
                    "configs": {
                        "cleanup.policy": "compact",
                        "segment.ms": "100",
                        "min.cleanable.dirty.ratio": "0.01",
                        "min.compaction.lag.ms": "0",
                        "delete.retention.ms": "100",
                    },
                }
            },
            wait_for_metadata=True,
        )
    finally:
        admin.close()
    publish_to_topic(kafka_bootstrap, topic_name, models["v1"])
    publish_to_topic(kafka_bootstrap, topic_name, models["v2"])
    publish_to_topic(kafka_bootstrap, topic_name, models["v3"], keep=1)
    deadline = time.monotonic() + 90
    while True:
        # Each publish of the same version adds one current record, which rolls the segment.
        publish_to_topic(kafka_bootstrap, topic_name, models["v3"], keep=1)
        keys = [r.key or b"" for r in consume_all(kafka_bootstrap, topic_name)]
        if not any(k.startswith((b"version/v1/", b"version/v2/")) for k in keys):
            break
        assert time.monotonic() < deadline, f"the log cleaner did not run: {keys}"
        time.sleep(2)
    assert keys.count(b"current") >= 1
    with ModelTopicReader(kafka_bootstrap, topic_name, tmp_path / "cache") as reader:
        update = reader.catch_up(timeout_s=30)
    assert update is not None and update.version == "v3"
    assert reader.refused == []
    assert_same_scores(update.path, models["v3"])
