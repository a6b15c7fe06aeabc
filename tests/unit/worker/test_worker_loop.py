"""The loop's batch cycle (poll, decode, score, emit, commit) on the in-memory client seam,
with a real model: what reaches the producer and what is committed, without a broker."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from fake_client import FakeConsumer
from worker_models import sensor_rows
from worker_runs import TOPIC, Run

from worker.client import Partition
from worker.loop import EXIT_OK
from worker.metrics import BATCH_PHASES
from worker.outputs import H_ERROR_CLASS
from worker.reachability import PROBE_INTERVAL_S


def records(n: int, seed: int) -> list[bytes | None]:
    """``n`` normal rows of the test model's 6 features, as the first record shape."""
    x, _ = sensor_rows(n, 6, seed=seed)
    return [json.dumps({"id": f"r{seed}-{i}", "features": row.tolist()}).encode() for i, row in enumerate(x)]  # fmt: skip


ANOMALY = json.dumps({"id": "far", "features": [1000.0] * 6}).encode()
BAD = b"not json"


def test_a_batch_cycle_emits_events_and_dead_letters_then_commits_everything(
    model_dir: Path,
) -> None:
    consumer = FakeConsumer(TOPIC, n_partitions=2)
    consumer.produce(0, records(40, seed=1) + [ANOMALY])
    consumer.produce(1, [BAD] + records(30, seed=2))
    run = Run(model_dir, consumer, batch_max_records=25)
    assert run.run() == EXIT_OK
    sent = run.producer.sent
    events = [json.loads(o.value or b"") for o in sent if o.topic == "anomalies"]
    dead = [o for o in sent if o.topic == "anomalies-dlq"]
    assert [d.value for d in dead] == [BAD]
    assert dict(dead[0].headers)[H_ERROR_CLASS] == b"not_json"
    assert "far" in [e["id"] for e in events]
    assert {(e["source"]["partition"], e["source"]["offset"]) for e in events} >= {(0, 40)}
    # every record accounted for, and everything consumed is committed (the final commit)
    assert run.count("normal") + run.count("anomaly") + run.count("invalid") == 72
    assert run.count("anomaly") == len(events)
    assert run.count("invalid") == 1
    assert consumer.committed_offsets == {Partition(TOPIC, 0): 41, Partition(TOPIC, 1): 31}
    assert consumer.closed and run.producer.closed


def test_the_phase_counters_split_the_loop_time_of_every_batch(model_dir: Path) -> None:
    consumer = FakeConsumer(TOPIC, n_partitions=1)
    consumer.produce(0, records(60, seed=3))
    run = Run(model_dir, consumer, batch_max_records=20)
    started = time.perf_counter()
    assert run.run() == EXIT_OK
    elapsed = time.perf_counter() - started
    phases = {
        phase: run.registry.get_sample_value(
            "anomaly_worker_batch_phase_seconds_total", {"phase": phase}
        )
        for phase in BATCH_PHASES
    }
    # every phase ran (3 batches of 20) and none took time the run did not have
    assert all(v is not None and v > 0 for v in phases.values()), phases
    assert sum(phases.values()) <= elapsed  # type: ignore[arg-type]


def test_an_aborted_transaction_is_read_again_and_counted_once(model_dir: Path) -> None:
    consumer = FakeConsumer(TOPIC)
    consumer.produce(0, records(10, seed=3) + [ANOMALY, BAD])
    run = Run(model_dir, consumer, delivery="exactly_once", batch_max_records=100)
    run.producer.fail_commits = 1  # the first batch's transaction fails
    assert run.run() == EXIT_OK
    assert run.producer.transactions[:4] == ["init", "begin", "abort", "begin"]
    assert run.producer.transactions.count("commit") == 1
    assert run.producer.txn_offsets[-1] == {Partition(TOPIC, 0): 12}
    assert run.count("normal") + run.count("anomaly") + run.count("invalid") == 12
    assert consumer.sync_commits == [] and consumer.async_commits == []  # offsets in transactions


def test_records_of_a_partition_revoked_while_collecting_are_left_to_its_next_owner(
    model_dir: Path,
) -> None:
    consumer = FakeConsumer(TOPIC, n_partitions=2)
    consumer.produce(0, records(20, seed=4))
    consumer.produce(1, records(20, seed=5) + [ANOMALY])
    lost = Partition(TOPIC, 1)

    def revoke_on_second_poll(c: FakeConsumer, n: int) -> None:
        if n == 2:
            c.revoke({lost})

    consumer.on_poll = revoke_on_second_poll
    # one batch spans several polls: the first poll's records of partition 1 are held
    run = Run(model_dir, consumer, batch_max_records=1000, batch_max_wait_ms=300)
    assert run.run() == EXIT_OK
    assert all(
        json.loads(o.value or b"")["source"]["partition"] == 0
        for o in run.producer.sent
        if o.topic == "anomalies"
    )
    assert lost not in consumer.committed_offsets
    assert consumer.committed_offsets[Partition(TOPIC, 0)] == 20
    assert run.count("normal") + run.count("anomaly") == 20
    dropped = run.registry.get_sample_value("anomaly_worker_dropped_revoked_records_total")
    assert dropped == 21


@pytest.mark.parametrize("pipeline", [True, False])
def test_nothing_is_committed_before_it_is_acknowledged(model_dir: Path, pipeline: bool) -> None:
    consumer = FakeConsumer(TOPIC)
    consumer.produce(0, [ANOMALY])
    run = Run(model_dir, consumer, pipeline=pipeline)
    acked_when_committed: list[bool] = []
    commit = consumer.commit_async

    def checked_commit_async(offsets, on_error=None):  # type: ignore[no-untyped-def]
        acked_when_committed.append(all(r.is_done for r in run.producer.pending))
        return commit(offsets, on_error)

    consumer.commit_async = checked_commit_async  # type: ignore[method-assign]
    assert run.run() == EXIT_OK
    assert all(acked_when_committed)
    assert consumer.committed_offsets == {Partition(TOPIC, 0): 1}


def test_an_idle_worker_turns_unready_when_the_broker_stops_answering_and_back(
    model_dir: Path,
) -> None:
    """Nothing flows, so only the loop's own probe can tell (worker/reachability.py)."""
    consumer = FakeConsumer(TOPIC)
    run = Run(model_dir, consumer)
    consumer.on_poll = None  # runs until stopped here
    health = run.worker.health
    thread = threading.Thread(target=run.worker.run, daemon=True)
    thread.start()

    def wait(ready: bool, within_s: float) -> float:
        t0 = time.monotonic()
        while health.ready()[0] is not ready:
            assert time.monotonic() - t0 < within_s, health.ready()
            time.sleep(0.02)
        return time.monotonic() - t0

    try:
        wait(True, 60)
        gauge = "anomaly_worker_broker_reachable"
        assert run.registry.get_sample_value(gauge) == 1.0
        consumer.down = True
        wait(False, 2 * PROBE_INTERVAL_S)
        assert run.registry.get_sample_value(gauge) == 0.0
        consumer.down = False
        wait(True, 2 * PROBE_INTERVAL_S)
        assert run.registry.get_sample_value(gauge) == 1.0
        assert run.registry.get_sample_value("anomaly_worker_ready") == 1.0
    finally:
        run.worker.stop()
        thread.join(30)
