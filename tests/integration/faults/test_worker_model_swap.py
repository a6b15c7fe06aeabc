"""A model swap under load, and /metrics against what was sent.

v1 (threshold at the 99th percentile) is current when the worker starts; v2 (same weights, a
threshold that flags ~30% of records) is published while records stream. Every event carries the
version that scored it, no batch is scored by a mix of versions, each partition switches once
(v1 for a prefix of its offsets, v2 after), and nothing is lost.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from faults_support import account, assert_counts_match, expected_flags
from worker_harness import Stream, WorkerFactory, wait_all_committed
from worker_models import TrainedModel, publish, sensor_rows

from anomaly_contract.model_dir import load_bundle

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_model_swap_under_load_and_metrics_match_what_was_sent(
    kafka_bootstrap: str,
    workers: WorkerFactory,
    model_dir: Path,
    trained_model: TrainedModel,
    busy_threshold: float,
) -> None:
    topics = workers.topics
    workers.model_dir = model_dir  # v1 is current
    v1 = load_bundle(model_dir)
    x, _ = sensor_rows(3000, v1.manifest.n_features, seed=51, anomaly_rate=0.05)
    w = workers.start()
    w.wait_ready()
    stream = Stream(kafka_bootstrap, topics.input, x, chunk=100, pause_s=0.1)
    w.wait_records(1000)
    assert publish(model_dir, trained_model, threshold=busy_threshold) == "v2"
    deadline = time.monotonic() + 30
    while w.metric("anomaly_worker_model_info", version="v2") != 1:
        assert time.monotonic() < deadline, w.log_tail()
        time.sleep(0.1)
    sent_at_swap = stream.sent
    assert sent_at_swap < len(x), "the stream ended before the swap"
    stream.join()
    wait_all_committed(kafka_bootstrap, topics, [w])
    v2 = load_bundle(model_dir, "v2")
    assert v2.threshold < v1.threshold

    placed = stream.join()
    valid = np.flatnonzero(~stream.poison)
    sources = [placed[i] for i in valid.tolist()]
    scores = v1.score(x[valid]).scores  # same weights: v1 and v2 scores are identical
    must1, may1 = expected_flags(scores, v1.threshold, sources)
    must2, may2 = expected_flags(scores, v2.threshold, sources)
    # every v1 anomaly has an event (v1's flags are a subset of v2's); other events must at
    # least be v2 anomalies; exactly which is checked per partition below
    acc = account(kafka_bootstrap, topics, stream, v1, flags=(must1, must2 | may1 | may2))
    bodies = [e.json() for e in acc.events]
    assert {b["model_version"] for b in bodies} == {"v1", "v2"}
    # ... each event's threshold is its version's
    for b in bodies:
        want = v1.threshold if b["model_version"] == "v1" else v2.threshold
        assert b["threshold"] == pytest.approx(want, rel=1e-12)
    # no batch is scored by a mix: events of one batch share detected_at; v1 strictly before v2
    versions_at: dict[str, set[str]] = defaultdict(set)
    for b in bodies:
        versions_at[b["detected_at"]].add(b["model_version"])
    assert all(len(v) == 1 for v in versions_at.values()), "a batch was scored by two versions"
    last_v1 = max(b["detected_at"] for b in bodies if b["model_version"] == "v1")
    first_v2 = min(b["detected_at"] for b in bodies if b["model_version"] == "v2")
    assert last_v1 < first_v2
    # per partition, some split offset s: v1 scored offsets < s, v2 the rest; the events must be
    # exactly v1's flags below s and v2's flags from s on (nothing lost, nothing extra)
    v1_off: dict[int, list[int]] = defaultdict(list)
    v2_off: dict[int, list[int]] = defaultdict(list)
    for b in bodies:
        src = b["source"]
        (v1_off if b["model_version"] == "v1" else v2_off)[src["partition"]].append(src["offset"])
    got = set(acc.event_sources)
    for p in range(topics.partitions):
        lo = max(v1_off[p], default=-1) + 1
        hi = min(v2_off[p], default=10**12)
        assert lo <= hi, f"partition {p}: a v1 event after a v2 event"
        ok = False
        valid_offsets = sorted(o for (pp, o) in sources if pp == p)
        for s in [lo, *[o for o in valid_offsets if lo < o <= hi]]:
            want = {(p, o) for (pp, o) in must1 if pp == p and o < s} | {
                (p, o) for (pp, o) in must2 if pp == p and o >= s
            }
            allowed = want | {(p, o) for (pp, o) in may1 | may2 if pp == p}
            mine = {src for src in got if src[0] == p}
            if want <= mine <= allowed:
                ok = True
                break
        assert ok, f"partition {p}: the events are not v1's flags then v2's flags"

    # /metrics: what was sent, outcome by outcome; reload counted
    counts = w.counts()
    assert_counts_match(counts, acc, len(x))
    m = w.metrics()
    assert m[("anomaly_worker_reconstruction_error_count", ())] == len(x) - len(acc.poison)
    assert m[("anomaly_worker_end_to_end_latency_seconds_count", ())] == len(x)
    assert m[("anomaly_worker_model_reloads_total", (("result", "success"),))] >= 1
    assert m.get(("anomaly_worker_model_info", (("version", "v1"),)), 0) == 0
    assert m[("anomaly_worker_threshold", ())] == pytest.approx(v2.threshold)
    print(json.dumps({"sent_at_swap": sent_at_swap, **acc.summary(), "counts": counts}))
    assert w.terminate()[0] == 0
