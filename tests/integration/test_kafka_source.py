"""The trainer's bounded read of a Kafka topic (`kafka://...`), against the real broker."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka_helpers import create_topic, produce_json, unique_name

from anomaly_contract.errors import DataError
from trainer.builtin_data import SENSOR_FEATURES, make_sensor_records
from trainer.data import load_dataset

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TRUTH = ("anomaly_kind", "anomaly_sensor")


def sensor_values(n: int, start: int = 0) -> list[dict]:
    """Sensor readings as the worker receives them, keeping `label` as a top-level field."""
    return [
        {k: v for k, v in r.items() if k not in TRUTH}
        for r in make_sensor_records(n, seed=5, start_index=start)
    ]


def url(bootstrap: str, topic: str, query: str = "") -> str:
    return f"kafka://{bootstrap}/{topic}" + (f"?{query}" if query else "")


def test_reads_the_whole_topic_in_flat_record_shape(kafka_bootstrap: str, topic_name: str) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    values = sensor_values(150)
    produce_json(kafka_bootstrap, topic_name, values, keys=[v["id"] for v in values])

    ds = load_dataset(url(kafka_bootstrap, topic_name))

    assert ds.x.shape == (150, len(SENSOR_FEATURES))
    assert ds.feature_names == list(SENSOR_FEATURES)
    assert sorted(ds.ids) == sorted(v["id"] for v in values)
    by_id = {v["id"]: v for v in values}
    for row, rid, label in zip(ds.x, ds.ids, ds.labels, strict=True):
        expected = by_id[rid]
        np.testing.assert_allclose(row, [expected[f] for f in SENSOR_FEATURES])
        assert label == expected["label"]


def test_max_records_bounds_the_read_and_gives_the_same_rows_each_time(
    kafka_bootstrap: str, topic_name: str
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    values = sensor_values(300)
    produce_json(kafka_bootstrap, topic_name, values, keys=[v["id"] for v in values])
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        groups_before = sorted(map(repr, admin.list_groups()))
        first = load_dataset(url(kafka_bootstrap, topic_name, "max_records=100"))
        second = load_dataset(url(kafka_bootstrap, topic_name, "max_records=100"))
        groups_after = sorted(map(repr, admin.list_groups()))
    finally:
        admin.close()

    assert first.x.shape == (100, len(SENSOR_FEATURES))
    assert first.ids == second.ids
    np.testing.assert_array_equal(first.x, second.x)
    assert groups_after == groups_before  # no consumer group, nothing committed


def test_list_and_nested_shapes_with_a_named_label(kafka_bootstrap: str, topic_name: str) -> None:
    rng = np.random.default_rng(0)
    images = rng.random((40, 3, 4))
    values = [
        {"id": i, "features": img.tolist(), "truth": int(i % 10 == 0)}
        for i, img in enumerate(images)
    ]
    produce_json(kafka_bootstrap, topic_name, values, partition=0)

    ds = load_dataset(url(kafka_bootstrap, topic_name), label_column="truth")

    assert ds.image_shape == (3, 4)
    assert ds.ids == list(range(40))  # one partition: offset order is send order
    np.testing.assert_allclose(ds.x, images.reshape(40, -1))
    assert ds.labels.tolist() == [int(i % 10 == 0) for i in range(40)]


def test_bad_records_are_skipped_counted_and_reported(
    kafka_bootstrap: str, topic_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = sensor_values(60)
    bad = [
        b"not json",
        b"\xff\xfe\x00",
        b"[1, 2, 3]",
        {"id": "x1", "rpm": 1.0},  # lacks most sensors
        {**good[0], "id": "x2", "rpm": "fast"},  # a non-numeric sensor value
    ]
    produce_json(kafka_bootstrap, topic_name, good[:30] + bad + good[30:], partition=0)

    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        ds = load_dataset(url(kafka_bootstrap, topic_name))

    assert ds.ids == [v["id"] for v in good]
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "trainer.data" and r.levelno >= logging.WARNING
    ]
    assert len(warnings) == 1, warnings
    report = warnings[0]
    assert "skipped 5 of 65 records" in report and "using 60" in report
    assert "not JSON" in report
    assert "partition 0 offset 30" in report  # where the first bad record sits


def test_a_topic_with_nothing_usable_is_refused(kafka_bootstrap: str, topic_name: str) -> None:
    produce_json(kafka_bootstrap, topic_name, [b"garbage", b"{}", b"[1]"] * 10, partition=0)
    with pytest.raises(DataError) as info:
        load_dataset(url(kafka_bootstrap, topic_name))
    message = str(info.value)
    assert "\n" not in message and "none of the 30 records is usable" in message
    assert "partition 0 offset 0" in message


def test_missing_topic_is_refused_and_not_created(kafka_bootstrap: str) -> None:
    topic = unique_name("absent")
    with pytest.raises(DataError, match=f"topic '{topic}' does not exist"):
        load_dataset(url(kafka_bootstrap, topic))
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        assert topic not in admin.list_topics()
    finally:
        admin.close()


def test_empty_topic_is_refused(kafka_bootstrap: str, topic_name: str) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=2)
    started = time.monotonic()
    with pytest.raises(DataError, match="is empty"):
        load_dataset(url(kafka_bootstrap, topic_name, "timeout=10"))
    assert time.monotonic() - started < 10


def test_transactional_topic_reads_to_its_end(kafka_bootstrap: str, topic_name: str) -> None:
    """Commit markers sit at the end of the log and are never returned as records; the read
    must still see it has reached the end instead of waiting for the timeout."""
    create_topic(kafka_bootstrap, topic_name, partitions=2)
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=unique_name("tx"), acks="all"
    )
    import json

    try:
        producer.init_transactions()
        for start in (0, 40):
            producer.begin_transaction()
            for value in sensor_values(40, start):
                producer.send(topic_name, json.dumps(value).encode(), key=value["id"].encode())
            producer.commit_transaction()
        producer.begin_transaction()
        producer.send(topic_name, json.dumps(sensor_values(1, 999)[0]).encode())
        producer.flush()
        producer.abort_transaction()  # aborted data is never training data
    finally:
        producer.close()

    started = time.monotonic()
    ds = load_dataset(url(kafka_bootstrap, topic_name, "timeout=20"))
    assert time.monotonic() - started < 15
    assert sorted(ds.ids) == sorted(v["id"] for v in sensor_values(80))
