"""A windowed model in the worker on the real broker: keyed series streamed through it give, row
by row, the scores `anomaly-trainer score` gives for the same records (relative difference under
1e-5), events carry the key and the window, warming records are counted and make no event, bad
records are dead-lettered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from kafka_helpers import consume_all
from worker_harness import REPO, Stream, Topics, WorkerProcess, wait_all_committed
from worker_series_models import CHANNELS, keyed_series, records, series_flags

pytestmark = [pytest.mark.integration]

N = 3000
KEYS = [f"m{i}" for i in range(8)] + ["new-a", "new-b"]  # two keys the model never saw


def _trainer_scores(
    lines: list[bytes], model_dir: Path, work: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`anomaly-trainer score` of these records: (scores, thresholds, warming), NaN warming."""
    data, out = work / "stream.jsonl", work / "scores.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, "-m", "trainer", "score", str(data), "--model-dir", str(model_dir),
         "--output", str(out)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["row"] for r in rows] == list(range(len(lines)))
    scores = np.array([np.nan if r["score"] is None else r["score"] for r in rows])
    thresholds = np.array([np.nan if r["threshold"] is None else r["threshold"] for r in rows])
    return scores, thresholds, np.isnan(scores)


@pytest.mark.parametrize("key_from", ["kafka_key", "key_field"])
def test_keyed_series_through_the_worker_match_offline_scores_row_by_row(
    kafka_bootstrap: str,
    topics: Topics,
    series_model_dir: Path,
    start_worker: Callable[..., WorkerProcess],
    key_from: str,
    tmp_path: Path,
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

    # the same records, in the order the worker read each key's (its partition's order)
    valid = [i for i in sorted(range(N), key=lambda i: placed[i]) if not stream.poison[i]]
    sources = [placed[i] for i in valid]
    scores, thresholds, warming = _trainer_scores(
        [values[i] for i in valid], series_model_dir, tmp_path
    )
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
        assert event["key"] == str(keys[valid[j]])
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
