"""The state replay's reader on the real broker: it re-reads exactly ``[start, end)`` of one
partition, and where the records below the log start are gone (retention, deleted records) it
reads from the log start and says so, instead of leaving the windows empty without a word."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.structs import TopicPartition
from kafka_helpers import create_topic, unique_name

from worker.client import Partition
from worker.replay_reader import KafkaReplayReader
from worker.settings import WorkerSettings

pytestmark = pytest.mark.integration

N = 60


def _topic_of(bootstrap: str) -> str:
    topic = unique_name("replay-reader")
    create_topic(bootstrap, topic, partitions=1)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for i in range(N):
            producer.send(topic, value=str(i).encode(), partition=0)
        producer.flush()
    finally:
        producer.close()
    return topic


def _read(bootstrap: str, topic: str, start: int, end: int, tmp_path: Path) -> list[int]:
    settings = WorkerSettings(bootstrap_servers=bootstrap, input_topic=topic, model_dir=tmp_path)  # type: ignore[call-arg]
    reader = KafkaReplayReader(settings)
    try:
        return [r.offset for chunk in reader.read(Partition(topic, 0), start, end) for r in chunk]
    finally:
        reader.close()


def test_reads_exactly_the_stretch_asked(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = _topic_of(kafka_bootstrap)
    assert _read(kafka_bootstrap, topic, 7, 41, tmp_path) == list(range(7, 41))
    assert _read(kafka_bootstrap, topic, 0, N, tmp_path) == list(range(N))


def test_records_gone_below_the_log_start_are_named_in_a_warning(
    kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    topic = _topic_of(kafka_bootstrap)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.delete_records({TopicPartition(topic, 0): 25})  # the log start moves to 25
    finally:
        admin.close()
    with caplog.at_level(logging.WARNING, logger="worker.replay_reader"):
        assert _read(kafka_bootstrap, topic, 10, 40, tmp_path) == list(range(25, 40))
    warnings = [r.getMessage() for r in caplog.records if r.name == "worker.replay_reader"]
    assert warnings == [
        f"re-reading {topic}[0] from 10: offsets 10-24 are gone from the topic (retention or"
        " deleted records), so the keys whose history lay there warm up again"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="worker.replay_reader"):  # nothing gone: quiet
        assert _read(kafka_bootstrap, topic, 30, 40, tmp_path) == list(range(30, 40))
    assert not [r for r in caplog.records if r.name == "worker.replay_reader"]
