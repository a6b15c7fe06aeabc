"""The local Kafka broker and the test helpers, against the real broker."""

from __future__ import annotations

import pytest
from kafka import KafkaProducer
from kafka_helpers import LocalKafka, consume_all, create_topic, produce_json, unique_name

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_round_trip_keeps_keys_values_headers_and_order(
    kafka_bootstrap: str, topic_name: str
) -> None:
    create_topic(kafka_bootstrap, topic_name, partitions=3)
    values = [{"id": f"r{i}", "features": [i, i * 0.5]} for i in range(30)]
    keys = [f"k{i % 5}" for i in range(30)]
    headers = [[("trace", str(i).encode())] for i in range(30)]

    acks = produce_json(kafka_bootstrap, topic_name, values, keys=keys, headers=headers)
    records = consume_all(kafka_bootstrap, topic_name, expected=30, timeout_s=30)

    assert len(acks) == 30
    assert len(records) == 30
    assert {(r.partition, r.offset) for r in records} == set(acks)
    assert {r.partition for r in records} <= {0, 1, 2}
    by_id = {r.json()["id"]: r for r in records}
    for i, value in enumerate(values):
        rec = by_id[value["id"]]
        assert rec.json() == value
        assert rec.key == keys[i].encode()
        assert rec.header("trace") == str(i).encode()
        assert rec.topic == topic_name
        assert rec.timestamp_ms > 0
    # The same key always lands in the same partition, in send order.
    for key in set(keys):
        same_key = [r for r in records if r.key == key.encode()]
        assert len({r.partition for r in same_key}) == 1
        ids = [int(r.json()["id"][1:]) for r in same_key]
        assert ids == sorted(ids)


def test_consume_all_without_expected_reads_to_the_end(
    kafka_bootstrap: str, topic_name: str
) -> None:
    produce_json(kafka_bootstrap, topic_name, [{"n": n} for n in range(7)])  # auto-created topic
    records = consume_all(kafka_bootstrap, topic_name, timeout_s=30)
    assert [r.json()["n"] for r in records] == list(range(7))
    assert [r.offset for r in records] == list(range(7))


def test_committed_transaction_is_visible_aborted_one_is_not(
    kafka_bootstrap: str, topic_name: str
) -> None:
    create_topic(kafka_bootstrap, topic_name)
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        transactional_id=unique_name("txn"),
        enable_idempotence=True,
        acks="all",
    )
    try:
        producer.init_transactions()
        producer.begin_transaction()
        for i in range(5):
            producer.send(topic_name, value=f"aborted-{i}".encode())
        producer.flush()
        producer.abort_transaction()

        producer.begin_transaction()
        for i in range(5):
            producer.send(topic_name, value=f"committed-{i}".encode())
        producer.commit_transaction()

        # An open transaction: a read_committed reader must stop before it.
        producer.begin_transaction()
        producer.send(topic_name, value=b"open")
        producer.flush()

        committed = consume_all(
            kafka_bootstrap, topic_name, timeout_s=30, isolation_level="read_committed"
        )
        uncommitted = consume_all(kafka_bootstrap, topic_name, expected=11, timeout_s=30)
        producer.abort_transaction()
    finally:
        producer.close()

    assert [r.value for r in committed] == [f"committed-{i}".encode() for i in range(5)]
    values = [r.value for r in uncommitted]
    assert len(values) == 11
    assert values[:5] == [f"aborted-{i}".encode() for i in range(5)]
    assert values[-1] == b"open"


def test_restart_keeps_data_and_port() -> None:
    # A broker of its own: restarting the session broker would disturb other tests.
    with LocalKafka() as broker:
        bootstrap = broker.bootstrap
        topic = unique_name("restart")
        create_topic(bootstrap, topic, partitions=2)
        produce_json(
            bootstrap, topic, [{"n": n} for n in range(20)], keys=[str(n) for n in range(20)]
        )
        first_pid = broker.pid

        broker.restart()

        assert broker.bootstrap == bootstrap
        assert broker.pid is not None and broker.pid != first_pid
        produce_json(bootstrap, topic, [{"n": 20}], keys=["20"])
        records = consume_all(bootstrap, topic, timeout_s=30)
        assert sorted(r.json()["n"] for r in records) == list(range(21))
        assert "started" in broker.log_tail(2000).lower()
    assert broker.pid is None
    assert not broker.data_dir.exists()


def test_two_brokers_run_side_by_side(kafka: LocalKafka, topic_name: str) -> None:
    with LocalKafka() as other:
        assert other.bootstrap != kafka.bootstrap
        produce_json(other.bootstrap, topic_name, [{"where": "other"}])
        produce_json(kafka.bootstrap, topic_name, [{"where": "session"}, {"where": "session"}])
        assert [r.json() for r in consume_all(other.bootstrap, topic_name)] == [{"where": "other"}]
        assert len(consume_all(kafka.bootstrap, topic_name)) == 2
