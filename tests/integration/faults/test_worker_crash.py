"""kill -9 of the worker mid-stream, several times, then a restart: nothing is lost.

at_least_once: every anomaly has an event; duplicates (records re-read after a crash) are counted
and reported. exactly_once: a read_committed reader sees each event and dead letter exactly once;
the restarted worker (same transactional id) fences its dead predecessor and aborts its open
transaction.
"""

from __future__ import annotations

import json
import random
import time

import pytest
from faults_support import account
from kafka_helpers import unique_name
from worker_harness import Stream, WorkerFactory, committed, wait_all_committed
from worker_models import sensor_rows

from anomaly_contract.model_dir import load_bundle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KILLS = 3
N_RECORDS = 4000


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_kill9_mid_stream_loses_nothing(
    delivery: str, kafka_bootstrap: str, workers: WorkerFactory
) -> None:
    topics = workers.topics
    bundle = load_bundle(workers.model_dir)
    x, _ = sensor_rows(N_RECORDS, bundle.manifest.n_features, seed=31, anomaly_rate=0.05)
    rng = random.Random(7 if delivery == "at_least_once" else 8)
    settings: dict[str, object] = {"DELIVERY": delivery}
    if delivery == "exactly_once":
        settings["TRANSACTIONAL_ID"] = unique_name("txn")  # the same for every restart

    w = workers.start(**settings)
    w.wait_ready()
    # a slow stream that outlasts the kills and restarts (~80 records/s); sped up afterwards
    stream = Stream(kafka_bootstrap, topics.input, x, chunk=20, pause_s=0.25)
    kills: list[dict[str, object]] = []
    for _ in range(KILLS):
        w.wait_records(1, timeout_s=60)  # it is scoring the stream
        time.sleep(rng.uniform(0.2, 1.5))  # a random point: inside a batch or between two
        w.kill9()
        done = sum(
            committed(kafka_bootstrap, topics.input, topics.group, topics.partitions).values()
        )
        kills.append(
            {
                "sent": stream.sent,
                "committed": done,
                "scored_before_kill": sum(w.counts(False).values()),
            }
        )
        w = workers.start(**settings)
        w.wait_ready()
    stream.pause_s = 0.0
    assert all(k["sent"] < N_RECORDS for k in kills), f"a kill came after the stream ended: {kills}"

    stream.join()
    wait_all_committed(kafka_bootstrap, topics, [w])
    isolation = "read_committed" if delivery == "exactly_once" else "read_uncommitted"
    acc = account(kafka_bootstrap, topics, stream, bundle, isolation_level=isolation)
    counts = w.counts()
    report = {"delivery": delivery, "kills": kills, **acc.summary(), "last_worker_counts": counts}
    if delivery == "exactly_once":
        uncommitted = account(kafka_bootstrap, topics, stream, bundle)
        report["read_uncommitted_duplicate_events"] = uncommitted.duplicate_events
        assert acc.duplicate_events == 0, report
        assert acc.duplicate_dead == 0, report
    print(json.dumps(report))
    # the last worker (no crash) processed exactly what was left after the last committed offsets
    assert sum(counts.values()) == N_RECORDS - kills[-1]["committed"], report
    code, took = w.terminate()
    assert code == 0, w.log_tail()
    assert took < 10
    if delivery == "at_least_once":
        # duplicates are allowed after crashes but bounded: at most a few batches per kill
        assert acc.duplicate_events <= KILLS * 100, report
