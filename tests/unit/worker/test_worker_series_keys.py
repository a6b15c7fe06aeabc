"""Series keys of consumed records (`worker.series_keys`): the Kafka key, a JSON field, the
partition's series for keyless records, and dead letters for keys that cannot be one."""

from __future__ import annotations

import json

import pytest
from fake_client import FakeRecord

from anomaly_contract.records import DecodeError
from anomaly_contract.windows import partition_series_key
from worker.decode import BAD_KEY
from worker.series_keys import field_key, record_key, series_keys


def _record(value: object, key: bytes | None = None, partition: int = 2) -> FakeRecord:
    return FakeRecord("in", partition, 0, json.dumps(value).encode(), key)


def test_the_kafka_key_as_text_and_keyless_records_per_partition():
    assert record_key(_record({}, b"machine-7")) == "machine-7"
    assert record_key(_record({}, "kühl".encode())) == "kühl"
    assert record_key(_record({}, None, partition=2)) == partition_series_key(2)
    assert partition_series_key(2) != partition_series_key(3)


def test_a_kafka_key_that_is_not_utf8_is_a_bad_key():
    got = record_key(_record({}, b"\xff\xfe"))
    assert isinstance(got, DecodeError) and got.kind == BAD_KEY


@pytest.mark.parametrize(
    ("value", "expected"),
    [("m1", "m1"), (7, "7"), (7.0, "7"), (2.5, "2.5"), (True, "true")],
)
def test_a_json_field_in_the_trainers_string_form(value: object, expected: str):
    assert field_key(_record({"machine": value, "temp": 1.0}), "machine") == expected


def test_a_missing_or_null_field_is_the_partitions_series():
    assert field_key(_record({"temp": 1.0}), "machine") == partition_series_key(2)
    assert field_key(_record({"machine": None}), "machine") == partition_series_key(2)


@pytest.mark.parametrize("value", [[1, 2], {"a": 1}])
def test_a_field_holding_a_list_or_object_is_a_bad_key(value: object):
    got = field_key(_record({"machine": value}), "machine")
    assert isinstance(got, DecodeError) and got.kind == BAD_KEY
    assert "'machine'" in got.message


def test_the_field_wins_over_the_kafka_key_when_set():
    recs = [_record({"machine": "m1"}, b"kafka-key"), _record({"machine": "m2"}, None)]
    assert series_keys(recs, [0, 1], "machine") == ["m1", "m2"]
    assert series_keys(recs, [0, 1], None) == ["kafka-key", partition_series_key(2)]
    assert series_keys(recs, [1], None) == [partition_series_key(2)]
