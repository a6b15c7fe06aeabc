"""Delivery guarantees on the real broker: SIGTERM + restart, exactly_once, fencing, rebalances."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka_helpers import consume_all, create_topic, produce_json, unique_name
from worker_models import sensor_rows
from worker_process import Topics

from trainer.artifact import load_bundle

pytestmark = pytest.mark.integration


class Stream:
    """Produce ``x`` as records in chunks from a background thread (a live input stream).

    `stop` ends it early; `join` returns the (partition, offset) of each row sent, in row order.
    """

    def __init__(
        self, bootstrap: str, topic: str, x: np.ndarray, chunk: int, pause_s: float
    ) -> None:
        self.placed: list[tuple[int, int]] = []
        self.done = threading.Event()
        self._stop = threading.Event()
        self.error: BaseException | None = None

        def run() -> None:
            producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
            try:
                for start in range(0, len(x), chunk):
                    if self._stop.is_set():
                        break
                    futures = [
                        producer.send(
                            topic,
                            value=json.dumps({"id": i, "features": x[i].tolist()}).encode(),
                            key=f"k{i}".encode(),
                        )
                        for i in range(start, min(start + chunk, len(x)))
                    ]
                    producer.flush()
                    for f in futures:
                        meta = f.get(timeout=30)
                        self.placed.append((meta.partition, meta.offset))
                    time.sleep(pause_s)
            except BaseException as exc:  # surfaced by join()
                self.error = exc
            finally:
                producer.close()
                self.done.set()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout_s: float = 60) -> list[tuple[int, int]]:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "producer thread stuck"
        if self.error is not None:
            raise self.error
        return self.placed


def committed_total(bootstrap: str, topic: str, group: str, partitions: int = 3) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in range(partitions))
    finally:
        consumer.close()


def event_sources(records) -> Counter:  # type: ignore[no-untyped-def]
    return Counter((r.json()["source"]["partition"], r.json()["source"]["offset"]) for r in records)


def expected_sources(bundle, x: np.ndarray, placed: list[tuple[int, int]]) -> set[tuple[int, int]]:  # type: ignore[no-untyped-def]
    flagged = np.flatnonzero(bundle.score(x).scores > bundle.threshold)
    return {placed[i] for i in flagged.tolist()}


def test_sigterm_mid_stream_commits_everything_and_restart_adds_no_duplicates(
    kafka_bootstrap: str, topics: Topics, model_dir: Path, start_worker
) -> None:
    bundle = load_bundle(model_dir)
    x, _ = sensor_rows(3000, 6, seed=21, anomaly_rate=0.2)
    worker = start_worker(topics, model_dir, BATCH_MAX_RECORDS=50)
    worker.wait_ready()
    stream = Stream(kafka_bootstrap, topics.input, x, chunk=100, pause_s=0.1)
    worker.wait_records(500)
    code, took = worker.terminate()
    assert code == 0, worker.log_text()[-3000:]
    assert took < 10
    placed = stream.join()
    first_run = committed_total(kafka_bootstrap, topics.input, topics.group)
    assert 500 <= first_run < len(x), first_run  # stopped mid-stream, with its work committed

    again = start_worker(topics, model_dir, BATCH_MAX_RECORDS=50)
    again.wait_records(len(x) - first_run)
    time.sleep(1.0)
    assert again.records_total() == len(x) - first_run  # nothing processed twice
    want = expected_sources(bundle, x, placed)
    events = consume_all(kafka_bootstrap, topics.output, expected=len(want), timeout_s=30)
    got = event_sources(events)
    assert set(got) == want
    assert max(got.values()) == 1, "duplicate events after a clean stop"
    assert again.terminate()[0] == 0
    assert committed_total(kafka_bootstrap, topics.input, topics.group) == len(x)


def test_exactly_once_read_committed_sees_each_event_once(
    kafka_bootstrap: str, topics: Topics, model_dir: Path, start_worker
) -> None:
    bundle = load_bundle(model_dir)
    x, _ = sensor_rows(2000, 6, seed=22, anomaly_rate=0.2)
    tid = unique_name("txn")
    worker = start_worker(
        topics, model_dir, DELIVERY="exactly_once", TRANSACTIONAL_ID=tid, BATCH_MAX_RECORDS=100
    )
    worker.wait_ready()
    stream = Stream(kafka_bootstrap, topics.input, x, chunk=100, pause_s=0.1)
    poison = produce_json(kafka_bootstrap, topics.input, [b"{broken"], keys=["bad"])
    worker.wait_records(600)
    code, _ = worker.terminate()  # mid-stream: the next worker continues from the committed txn
    assert code == 0, worker.log_text()[-3000:]
    placed = stream.join()
    again = start_worker(
        topics, model_dir, DELIVERY="exactly_once", TRANSACTIONAL_ID=tid, BATCH_MAX_RECORDS=100
    )
    want = expected_sources(bundle, x, placed)
    deadline = time.monotonic() + 60
    while committed_total(kafka_bootstrap, topics.input, topics.group) < len(x) + 1:
        assert time.monotonic() < deadline, again.log_text()[-3000:]
        time.sleep(0.3)
    events = consume_all(kafka_bootstrap, topics.output, isolation_level="read_committed")
    got = event_sources(events)
    assert set(got) == want
    assert max(got.values()) == 1
    dead = consume_all(kafka_bootstrap, topics.dlq, isolation_level="read_committed")
    assert [
        (int(d.header("dlq.source.partition")), int(d.header("dlq.source.offset"))) for d in dead
    ] == poison
    assert again.metric("anomaly_worker_transactions_total", result="committed") > 0
    assert again.terminate()[0] == 0


def test_fenced_producer_exits_cleanly(
    kafka_bootstrap: str, topics: Topics, model_dir: Path, start_worker
) -> None:
    tid = unique_name("txn")
    first = start_worker(topics, model_dir, DELIVERY="exactly_once", TRANSACTIONAL_ID=tid)
    first.wait_ready()
    # a second instance with the same transactional id (another group and input) fences the first
    other = Topics(unique_name("in"), unique_name("out"), unique_name("dlq"), unique_name("grp"))
    for t in (other.input, other.output, other.dlq):
        create_topic(kafka_bootstrap, t)
    second = start_worker(other, model_dir, DELIVERY="exactly_once", TRANSACTIONAL_ID=tid)
    second.wait_ready()
    x, _ = sensor_rows(50, 6, seed=1)
    produce_json(kafka_bootstrap, topics.input, [{"features": r.tolist()} for r in x])
    code = first.proc.wait(timeout=30)
    assert code == 0
    assert "took over" in first.log_text()
    assert second.proc.poll() is None
    assert second.terminate()[0] == 0


def test_a_second_worker_joining_mid_stream_shares_partitions_and_loses_nothing(
    kafka_bootstrap: str, topics: Topics, model_dir: Path, start_worker
) -> None:
    bundle = load_bundle(model_dir)
    x, _ = sensor_rows(20000, 6, seed=23, anomaly_rate=0.2)
    a = start_worker(topics, model_dir, BATCH_MAX_RECORDS=50, SESSION_TIMEOUT_MS=6000)
    a.wait_ready()
    stream = Stream(kafka_bootstrap, topics.input, x, chunk=25, pause_s=0.05)
    a.wait_records(200)
    b = start_worker(topics, model_dir, BATCH_MAX_RECORDS=50, SESSION_TIMEOUT_MS=6000)
    b.wait_ready()
    time.sleep(1.0)
    assert not stream.done.is_set(), "the stream ended before the second worker joined"
    stream.stop()
    placed = stream.join()
    x = x[: len(placed)]
    deadline = time.monotonic() + 60
    while committed_total(kafka_bootstrap, topics.input, topics.group) < len(x):
        assert time.monotonic() < deadline, (a.log_text()[-2000:], b.log_text()[-2000:])
        time.sleep(0.3)
    assert (
        a.metric("anomaly_worker_partitions_assigned")
        + b.metric("anomaly_worker_partitions_assigned")
        == 3
    )
    assert b.records_total() > 0 and a.records_total() > 0
    total = a.records_total() + b.records_total()
    want = expected_sources(bundle, x, placed)
    events = consume_all(kafka_bootstrap, topics.output)  # to the end: duplicates may exist
    got = event_sources(events)
    assert set(got) == want  # every anomaly has an event
    duplicates = sum(got.values()) - len(got)
    # batches are committed before each poll, so a rebalance re-reads at most a batch or so
    assert total - len(x) <= 3 * 50, total
    assert duplicates <= 3 * 50
    print(json.dumps({"records": total, "duplicates": duplicates}))
    assert a.terminate()[0] == 0
    assert b.terminate()[0] == 0
