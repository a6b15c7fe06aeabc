"""SIGTERM mid-stream: the worker finishes its batch, commits and exits 0 within 10 s; a restart
continues from the committed offsets with no duplicate and nothing lost."""

from __future__ import annotations

import json

import pytest
from faults_support import account
from worker_harness import Stream, WorkerFactory, committed, wait_all_committed
from worker_models import sensor_rows

from anomaly_contract.model_dir import load_bundle

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_sigterm_mid_stream_then_restart_no_duplicates_nothing_lost(
    kafka_bootstrap: str, workers: WorkerFactory
) -> None:
    topics = workers.topics
    bundle = load_bundle(workers.model_dir)
    x, _ = sensor_rows(3000, bundle.manifest.n_features, seed=41, anomaly_rate=0.05)
    first = workers.start()
    first.wait_ready()
    stream = Stream(kafka_bootstrap, topics.input, x, chunk=100, pause_s=0.15)
    first.wait_records(800)
    code, took = first.terminate()
    assert code == 0, first.log_tail()
    assert took < 10, took
    done = sum(committed(kafka_bootstrap, topics.input, topics.group, topics.partitions).values())
    assert 800 <= done < len(x), done  # stopped mid-stream with its last batch committed
    assert not stream.done.is_set(), "the stream ended before SIGTERM"

    second = workers.start()
    second.wait_ready()
    stream.join()
    wait_all_committed(kafka_bootstrap, topics, [second])
    acc = account(kafka_bootstrap, topics, stream, bundle)
    print(
        json.dumps({"sigterm_after_s": round(took, 3), "committed_at_stop": done, **acc.summary()})
    )
    assert acc.duplicate_events == 0, acc.summary()
    assert acc.duplicate_dead == 0, acc.summary()
    # nothing processed twice: the restart scored exactly what the first worker had not committed
    assert second.records_total() == len(x) - done
    assert second.terminate()[0] == 0
