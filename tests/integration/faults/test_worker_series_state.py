"""Series state under faults, on the real broker: kill -9 three times mid-stream, and a second
worker joining mid-stream. Afterwards the events are exactly the offline anomalies (none lost,
none for a record offline scoring calls normal) and every event's score is the offline one:
no record was scored by a window rebuilt cold after a crash or a rebalance.

Both delivery modes; exactly_once is read with ``read_committed`` and has no duplicates.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import pytest
from faults_support import account
from kafka import KafkaConsumer, TopicPartition
from kafka_helpers import unique_name
from worker_harness import Stream, WorkerFactory, WorkerProcess, committed, wait_all_committed
from worker_series_models import keyed_series, offline_in_log_order, records, series_flags

from anomaly_contract.model_dir import load_bundle
from worker.state import ReplayPlan

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_RECORDS = 3000
KEYS = [f"m{i}" for i in range(8)] + ["new-a", "new-b"]
KILLS = 3


def _series_stream(kafka_bootstrap: str, topic: str, seed: int, pause_s: float) -> Stream:
    x, keys = keyed_series(N_RECORDS, KEYS, seed=seed, spike_rate=0.02)
    stream = Stream(
        kafka_bootstrap,
        topic,
        x,
        chunk=20,
        pause_s=pause_s,
        values=records(x, keys),
        keys=[str(k).encode() for k in keys],
    )
    stream.series_keys = keys  # type: ignore[attr-defined]
    return stream


def _committed_plans(bootstrap: str, topic: str, group: str, partitions: int) -> dict:
    """Each partition's committed offset and the replay plan its metadata carries."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        found = {p: consumer.committed(TopicPartition(topic, p), metadata=True) for p in range(partitions)}  # fmt: skip
    finally:
        consumer.close()
    return {p: (c.offset, ReplayPlan.from_metadata(c.metadata)) for p, c in found.items() if c}


def _check_against_offline(
    kafka_bootstrap: str,
    workers: WorkerFactory,
    stream: Stream,
    model_dir: Path,
    isolation: str,
) -> dict[str, object]:
    """Account every record (faults_support.account with the windowed model's flags) and check
    every event's score, duplicates included, against the offline one."""
    placed = stream.join()
    valid = np.flatnonzero(~stream.poison)
    sources = [placed[i] for i in valid.tolist()]
    keys = stream.series_keys  # type: ignore[attr-defined]
    scores, thresholds, _ = offline_in_log_order(
        load_bundle(model_dir), stream.x[valid], keys[valid], sources
    )
    flags = series_flags(scores, thresholds, sources)
    assert workers.topics is not None
    acc = account(
        kafka_bootstrap, workers.topics, stream, None, isolation_level=isolation, flags=flags
    )
    row_of = {s: j for j, s in enumerate(sources)}
    worst = 0.0
    for record in acc.events:
        event = record.json()
        j = row_of[(event["source"]["partition"], event["source"]["offset"])]
        worst = max(worst, abs(event["score"] - scores[j]) / scores[j])
    assert worst < 1e-5, f"an event was scored by another window than offline: {worst}"
    return {**acc.summary(), "must_flag": len(flags[0]), "worst_rel_diff": worst}


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_kill9_three_times_then_the_events_are_the_offline_anomalies(
    delivery: str, kafka_bootstrap: str, workers: WorkerFactory, series_model_dir: Path
) -> None:
    topics = workers.topics
    assert topics is not None
    workers.model_dir = series_model_dir
    settings: dict[str, object] = {"DELIVERY": delivery, "KEY_FIELD": "key"}
    if delivery == "exactly_once":
        settings["TRANSACTIONAL_ID"] = unique_name("txn")
    rng = random.Random(17 if delivery == "at_least_once" else 18)
    w = workers.start(**settings)
    w.wait_ready()
    stream = _series_stream(kafka_bootstrap, topics.input, seed=21, pause_s=0.2)
    restarted: list[WorkerProcess] = []
    kills = []
    for _ in range(KILLS):
        w.wait_records(1, timeout_s=60)
        time.sleep(rng.uniform(0.5, 2.0))
        w.kill9()
        kills.append(
            {
                "sent": stream.sent,
                "committed": sum(
                    committed(
                        kafka_bootstrap, topics.input, topics.group, topics.partitions
                    ).values()
                ),
            }
        )
        w = workers.start(**settings)
        w.wait_ready()
        restarted.append(w)
    stream.pause_s = 0.0
    assert all(k["sent"] < N_RECORDS for k in kills), f"a kill came after the stream ended: {kills}"
    stream.join()
    wait_all_committed(kafka_bootstrap, topics, [w])
    isolation = "read_committed" if delivery == "exactly_once" else "read_uncommitted"
    report = _check_against_offline(kafka_bootstrap, workers, stream, series_model_dir, isolation)
    report |= {
        "delivery": delivery,
        "kills": kills,
        "restores": w.metric("anomaly_worker_state_restores_total"),
        "restore_records": w.metric("anomaly_worker_state_restore_records_total"),
        "keys_cut": w.metric("anomaly_worker_state_keys_cut_total"),
    }
    print(json.dumps(report))
    assert report["restores"] >= 1 and report["restore_records"] > 0, report
    assert report["keys_cut"] == 0, report
    # the plans travelled with the commits (exactly once: through the transactions)
    plans = _committed_plans(kafka_bootstrap, topics.input, topics.group, topics.partitions)
    assert len(plans) == topics.partitions, plans
    assert all(plan is not None and 0 <= plan.start < offset for offset, plan in plans.values())
    if delivery == "exactly_once":
        assert report["duplicate_events"] == 0, report
    code, _ = w.terminate()
    assert code == 0, w.log_tail()


def test_a_second_worker_joining_mid_stream_restores_the_partitions_it_takes(
    kafka_bootstrap: str, workers: WorkerFactory, series_model_dir: Path
) -> None:
    topics = workers.topics
    assert topics is not None
    workers.model_dir = series_model_dir
    first = workers.start(KEY_FIELD="key")
    first.wait_ready()
    stream = _series_stream(kafka_bootstrap, topics.input, seed=22, pause_s=0.1)
    first.wait_records(600, timeout_s=60)
    second = workers.start(KEY_FIELD="key")
    second.wait_ready()
    second.wait_records(300, timeout_s=60)  # it took partitions over and scores them
    stream.pause_s = 0.0
    stream.join()
    wait_all_committed(kafka_bootstrap, topics, [first, second])
    report = _check_against_offline(
        kafka_bootstrap, workers, stream, series_model_dir, "read_uncommitted"
    )
    report |= {
        "second_restores": second.metric("anomaly_worker_state_restores_total"),
        "second_restore_records": second.metric("anomaly_worker_state_restore_records_total"),
        "first_restores": first.metric("anomaly_worker_state_restores_total"),
    }
    print(json.dumps(report))
    assert report["second_restores"] >= 1 and report["second_restore_records"] > 0, report
    # the join settles the batches in flight before partitions move: no duplicates
    assert report["duplicate_events"] == 0, report
    for w in (second, first):
        code, _ = w.terminate()
        assert code == 0, w.log_tail()
