"""The pure parts of the Kafka source: URL parsing, sharing max_records.

Values are read as records by the worker's parser (tests/unit/trainer_data/test_data_record_parity.py).

Reading a real topic is tested against the real broker in tests/integration/test_kafka_source.py.
"""

from __future__ import annotations

import socket
import time

import pytest

from anomaly_contract.errors import DataError
from trainer.data import load_dataset
from trainer.kafka_source import DEFAULT_TIMEOUT_S, parse_kafka_url, split_quota


def test_parse_full_url():
    spec = parse_kafka_url(
        "kafka://broker-1:9092,10.0.0.2:9093/sensor.readings?max_records=500&timeout=12.5"
    )
    assert spec.bootstrap_servers == ["broker-1:9092", "10.0.0.2:9093"]
    assert spec.topic == "sensor.readings"
    assert spec.max_records == 500 and spec.timeout_s == 12.5


def test_parse_defaults():
    spec = parse_kafka_url("kafka://localhost:9092/readings")
    assert spec.max_records is None and spec.timeout_s == DEFAULT_TIMEOUT_S


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("kafka:///topic", "invalid Kafka source"),
        ("kafka://localhost/topic", "invalid broker address 'localhost'"),
        ("kafka://localhost:99999/topic", "invalid broker address"),
        ("kafka://localhost:9092", "no topic"),
        ("kafka://localhost:9092/bad topic!", "invalid topic name"),
        ("kafka://localhost:9092/t?max_records=0", "positive integer"),
        ("kafka://localhost:9092/t?max_records=-5", "positive integer"),
        ("kafka://localhost:9092/t?timeout=soon", "seconds"),
        ("kafka://localhost:9092/t?group=g", "unknown option 'group'"),
    ],
)
def test_parse_refusals(url, fragment):
    with pytest.raises(DataError, match=fragment) as info:
        parse_kafka_url(url)
    assert "\n" not in str(info.value)


def test_split_quota_shares_evenly_and_refills_from_longer_partitions():
    assert split_quota({0: 10, 1: 10, 2: 10}, None) == {0: 10, 1: 10, 2: 10}
    assert split_quota({0: 10, 1: 10, 2: 10}, 100) == {0: 10, 1: 10, 2: 10}
    assert split_quota({0: 10, 1: 10, 2: 10}, 7) == {0: 3, 1: 2, 2: 2}
    assert split_quota({0: 1, 1: 50, 2: 0}, 20) == {0: 1, 1: 19, 2: 0}
    quota = split_quota({0: 3, 1: 8, 2: 100}, 40)
    assert quota == {0: 3, 1: 8, 2: 29} and sum(quota.values()) == 40


def test_unreachable_broker_is_refused_within_the_timeout():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(DataError) as info:
        load_dataset(f"kafka://127.0.0.1:{port}/readings?timeout=2")
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert "\n" not in message and f"127.0.0.1:{port}" in message
