"""A windowed model in the worker on the real broker: keyed series streamed through it give, row
by row, the scores of the offline path (relative difference under 1e-5), events carry the key
and the window, warming records are counted and make no event, bad records are dead-lettered."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from kafka_helpers import consume_all
from worker_harness import Stream, Topics, WorkerProcess, wait_all_committed
from worker_series_models import (
    CHANNELS,
    keyed_series,
    offline_in_log_order,
    records,
    series_flags,
)

from anomaly_contract.model_dir import load_bundle

pytestmark = [pytest.mark.integration]

N = 3000
KEYS = [f"m{i}" for i in range(8)] + ["new-a", "new-b"]  # two keys the model never saw


@pytest.mark.parametrize("key_from", ["kafka_key", "key_field"])
def test_keyed_series_through_the_worker_match_offline_scores_row_by_row(
    kafka_bootstrap: str,
    topics: Topics,
    series_model_dir: Path,
    start_worker: Callable[..., WorkerProcess],
    key_from: str,
) -> None:
    x, keys = keyed_series(N, KEYS, seed=11, spike_rate=0.02)
    values = records(x, keys)
    if key_from == "kafka_key":
        kafka_keys = [str(k).encode() for k in keys]
        settings: dict[str, object] = {}
    else:  # the key in a JSON field; the Kafka key (still per series) only spreads partitions
        kafka_keys = [f"route-{k}".encode() for k in keys]
        settings = {"KEY_FIELD": "key"}
    w = start_worker(topics, series_model_dir, **settings)
    w.wait_ready()
    stream = Stream(
        kafka_bootstrap, topics.input, x, chunk=500, pause_s=0.0, values=values, keys=kafka_keys
    )
    placed = stream.join()
    wait_all_committed(kafka_bootstrap, topics, [w])

    valid = np.flatnonzero(~stream.poison)
    sources = [placed[i] for i in valid.tolist()]
    bundle = load_bundle(series_model_dir)
    scores, thresholds, warming = offline_in_log_order(bundle, x[valid], keys[valid], sources)
    must, maybe = series_flags(scores, thresholds, sources)
    events = {
        (e["source"]["partition"], e["source"]["offset"]): e
        for e in (r.json() for r in consume_all(kafka_bootstrap, topics.output, timeout_s=30))
    }
    assert must and must <= set(events) <= must | maybe
    row_of = {s: j for j, s in enumerate(sources)}
    worst = 0.0
    for source, event in events.items():
        j = row_of[source]
        worst = max(worst, abs(event["score"] - scores[j]) / scores[j])
        assert event["key"] == str(keys[valid][j])
        assert event["window"]["last_offset"] == source[1]
        assert event["window"]["first_offset"] < source[1]
        assert event["severity"] == pytest.approx(event["score"] / thresholds[j], rel=1e-9)
        assert {t["name"] for t in event["top_features"]} <= set(CHANNELS)
    assert worst < 1e-5, worst
    counts = w.counts()
    assert w.metric("anomaly_worker_records_total", outcome="warming") == int(warming.sum())
    assert counts["anomaly"] == len(events)
    assert counts["invalid"] == int(stream.poison.sum())
    assert w.metric("anomaly_worker_series_keys") == len(KEYS)
    dead = consume_all(kafka_bootstrap, topics.dlq, timeout_s=30)
    assert len(dead) == int(stream.poison.sum())
    print({"key_from": key_from, "events": len(events), "worst_rel_diff": worst})
    code, _ = w.terminate()
    assert code == 0, w.log_tail()
