"""The worker against the real broker: parity with offline scoring, poison records, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import requests
from kafka_helpers import consume_all, produce_json
from worker_harness import Topics
from worker_models import sensor_rows

from anomaly_contract.model_dir import load_bundle
from worker import outputs as ev

pytestmark = pytest.mark.integration


def shaped(i: int, row: np.ndarray, names: list[str]) -> dict:
    """Record i in one of the three input shapes, in turn."""
    values = [float(v) for v in row]
    if i % 3 == 0:
        return {"id": f"r{i}", "features": values}
    if i % 3 == 1:
        return {"id": f"r{i}", "features": dict(zip(names, values, strict=True))}
    return {"id": f"r{i}", "site": "plant-1", **dict(zip(names, values, strict=True))}


def test_events_match_offline_scoring_for_all_three_shapes(
    kafka_bootstrap: str, topics: Topics, model_dir: Path, start_worker
) -> None:
    bundle = load_bundle(model_dir)
    names = bundle.feature_names
    x, labels = sensor_rows(900, len(names), seed=11, anomaly_rate=0.05)
    records = [shaped(i, row, names) for i, row in enumerate(x)]
    keys = [f"k{i}" for i in range(len(records))]
    worker = start_worker(topics, model_dir, BATCH_MAX_RECORDS=128)
    placed = produce_json(kafka_bootstrap, topics.input, records, keys=keys)
    worker.wait_records(len(records))

    offline = bundle.score(x)
    flagged = np.flatnonzero(offline.scores > bundle.threshold)
    assert labels[flagged].mean() > 0.5  # the model finds the injected anomalies
    where = {pos: i for i, pos in enumerate(placed)}
    events = consume_all(kafka_bootstrap, topics.output, expected=len(flagged), timeout_s=30)
    by_record = {}
    for e in events:
        body = e.json()
        src = body["source"]
        assert src["topic"] == topics.input
        i = where[(src["partition"], src["offset"])]
        assert i not in by_record, "duplicate event"
        by_record[i] = (e, body)
    assert sorted(by_record) == flagged.tolist()
    for i, (e, body) in by_record.items():
        assert e.key == keys[i].encode()
        assert body["id"] == f"r{i}"
        assert body["model_version"] == "v1"
        assert body["threshold"] == pytest.approx(bundle.threshold, rel=1e-12)
        # README "Scoring": dense models, the worker and offline agree to 1e-12 whatever the batches
        assert abs(body["score"] - offline.scores[i]) <= 1e-12 * offline.scores[i]
        assert body["severity"] == pytest.approx(body["score"] / bundle.threshold)
        assert body["source"]["timestamp_ms"] > 0
        assert len(body["top_features"]) == 3
        top = [f["name"] for f in body["top_features"]]
        assert top[0] == names[int(np.argmax(offline.feature_errors[i]))]
        assert body["detected_at"].endswith("Z")

    m = worker.metrics()
    assert m[("anomaly_worker_records_total", (("outcome", "anomaly"),))] == len(flagged)
    assert m[("anomaly_worker_records_total", (("outcome", "normal"),))] == len(x) - len(flagged)
    assert m[("anomaly_worker_records_total", (("outcome", "invalid"),))] == 0
    assert m[("anomaly_worker_reconstruction_error_count", ())] == len(x)
    assert m[("anomaly_worker_end_to_end_latency_seconds_count", ())] == len(x)
    assert m[("anomaly_worker_model_info", (("version", "v1"),))] == 1
    assert m[("anomaly_worker_expected_anomaly_ratio", ())] == pytest.approx(0.01)
    assert m[("anomaly_worker_anomaly_ratio", ())] == pytest.approx(len(flagged) / len(x), abs=0.02)
    assert m[("anomaly_worker_error_drift", ())] > 0
    assert consume_all(kafka_bootstrap, topics.dlq) == []
    code, took = worker.terminate()
    assert code == 0 and took < 10


POISON: list[tuple[bytes, str]] = [
    (b"not json at all", "not_json"),
    (b"\xff\xfe\xfa not utf-8", "not_utf8"),
    (b"", "empty"),
    (b'{"features": [1, 2]}', "wrong_length"),
    (b"[1, 2, 3, 4, 5, 6]", "wrong_shape"),
    (b'{"features": "1,2,3,4,5,6"}', "wrong_shape"),
    (b'{"features": {"f0": 1}}', "missing_feature"),
    (b'{"features": [1, 2, "3", 4, 5, 6]}', "not_a_number"),
    (b'{"features": [1, 2, null, 4, 5, 6]}', "null_value"),
    (b'{"features": [1, 2, true, 4, 5, 6]}', "not_a_number"),
    (b"null", "wrong_shape"),
    (b'{"features": [1, 2, NaN, 4, 5, 6]}', "non_finite"),
    (b'{"features": [1, 2, Infinity, 4, 5, 6]}', "non_finite"),
    (b'{"features": [1, 2, 1e999, 4, 5, 6]}', "non_finite"),
    (b'{"features": ' + b"[" * 5000 + b"]" * 5000 + b"}", "too_deep"),
    (b'{"features": [1, 2, 1e200, 4, 5, 6]}', "out_of_range"),
    (b'{"features": [1, 2, 3, 4, 5, 6], "pad": "' + b"x" * 70_000 + b'"}', "too_large"),
]


def test_poison_records_go_to_the_dlq_and_the_rest_is_scored(
    kafka_bootstrap: str, topics: Topics, model_dir: Path, start_worker
) -> None:
    bundle = load_bundle(model_dir)
    x, _ = sensor_rows(len(POISON) * 3, len(bundle.feature_names), seed=5)
    values: list[bytes] = []
    keys: list[str | None] = []
    headers: list[list[tuple[str, bytes]] | None] = []
    expected_dlq = {}
    for i, (payload, kind) in enumerate(POISON):
        for j in range(3):  # good, poison, good
            row = x[3 * i + j]
            if j == 1:
                expected_dlq[len(values)] = kind
                values.append(payload)
                keys.append(f"poison-{i}")
                headers.append([("trace-id", f"t{i}".encode())])
            else:
                values.append(json.dumps({"features": row.tolist()}).encode())
                keys.append(None)
                headers.append(None)
    worker = start_worker(topics, model_dir, MAX_RECORD_BYTES=65536, MAX_ABS_VALUE=1e9)
    placed = produce_json(kafka_bootstrap, topics.input, values, keys=keys, headers=headers)
    worker.wait_records(len(values))

    dead = consume_all(kafka_bootstrap, topics.dlq, expected=len(POISON), timeout_s=30)
    assert len(dead) == len(POISON)
    where = {pos: i for i, pos in enumerate(placed)}
    seen = set()
    for d in dead:
        partition = int(d.header(ev.H_SOURCE_PARTITION))
        offset = int(d.header(ev.H_SOURCE_OFFSET))
        i = where[(partition, offset)]
        seen.add(i)
        assert d.header(ev.H_ERROR_CLASS).decode() == expected_dlq[i], (
            i,
            d.header(ev.H_ERROR_MESSAGE),
        )
        assert d.header(ev.H_ERROR_MESSAGE)
        assert d.header(ev.H_SOURCE_TOPIC).decode() == topics.input
        assert d.header(ev.H_MODEL_VERSION) == b"v1"
        assert d.value == values[i]  # original value, byte for byte
        assert d.key == keys[i].encode()
        assert d.header("trace-id") == headers[i][0][1]  # original headers kept
    assert seen == set(expected_dlq)

    m = worker.metrics()
    assert m[("anomaly_worker_records_total", (("outcome", "invalid"),))] == len(POISON)
    scored = sum(
        m[("anomaly_worker_records_total", (("outcome", o),))] for o in ("normal", "anomaly")
    )
    assert scored == len(values) - len(POISON)
    for kind in {k for _, k in POISON}:
        want = sum(1 for _, k in POISON if k == kind)
        assert m[("anomaly_worker_dead_letters_total", (("reason", kind),))] == want, kind
    assert requests.get(worker.url("/healthz"), timeout=5).status_code == 200
    assert requests.get(worker.url("/readyz"), timeout=5).status_code == 200
    code, _ = worker.terminate()
    assert code == 0
