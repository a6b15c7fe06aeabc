"""Delivery guarantees on the real broker: SIGTERM + restart, exactly_once, fencing, rebalances."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from kafka_helpers import consume_all, produce_json, unique_name
from worker_harness import Stream, Topics, committed, make_topics
from worker_models import sensor_rows

from anomaly_contract.model_dir import load_bundle

pytestmark = pytest.mark.integration


def committed_total(bootstrap: str, topics: Topics) -> int:
    return sum(committed(bootstrap, topics.input, topics.group, topics.partitions).values())


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
    stream = Stream(kafka_bootstrap, topics.input, x, chunk=100, pause_s=0.1, poison_every=0)
    worker.wait_records(500)
    code, took = worker.terminate()
    assert code == 0, worker.log_tail(3000)
    assert took < 10
    placed = stream.join()
    first_run = committed_total(kafka_bootstrap, topics)
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
    assert committed_total(kafka_bootstrap, topics) == len(x)


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
    stream = Stream(kafka_bootstrap, topics.input, x, chunk=100, pause_s=0.1, poison_every=0)
    poison = produce_json(kafka_bootstrap, topics.input, [b"{broken"], keys=["bad"])
    worker.wait_records(600)
    code, _ = worker.terminate()  # mid-stream: the next worker continues from the committed txn
    assert code == 0, worker.log_tail(3000)
    placed = stream.join()
    again = start_worker(
        topics, model_dir, DELIVERY="exactly_once", TRANSACTIONAL_ID=tid, BATCH_MAX_RECORDS=100
    )
    want = expected_sources(bundle, x, placed)
    deadline = time.monotonic() + 60
    while committed_total(kafka_bootstrap, topics) < len(x) + 1:
        assert time.monotonic() < deadline, again.log_tail(3000)
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
    other = make_topics(kafka_bootstrap, "fenced", partitions=1)
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
    stream = Stream(kafka_bootstrap, topics.input, x, chunk=25, pause_s=0.05, poison_every=0)
    a.wait_records(200)
    b = start_worker(topics, model_dir, BATCH_MAX_RECORDS=50, SESSION_TIMEOUT_MS=6000)
    b.wait_ready()
    time.sleep(1.0)
    assert not stream.done.is_set(), "the stream ended before the second worker joined"
    stream.stop()
    placed = stream.join()
    x = x[: len(placed)]
    deadline = time.monotonic() + 60
    while committed_total(kafka_bootstrap, topics) < len(x):
        assert time.monotonic() < deadline, (a.log_tail(2000), b.log_tail(2000))
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
