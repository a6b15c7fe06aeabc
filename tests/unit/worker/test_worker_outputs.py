"""The anomaly event and dead-letter header shapes (PRODUCT.md)."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from worker import outputs as ev
from worker.incidents import event_id


def test_anomaly_event_shape() -> None:
    raw = ev.anomaly_event(
        record_id="a1",
        score=0.5,
        threshold=0.25,
        model_version="v3",
        topic="in",
        partition=2,
        offset=41,
        timestamp_ms=1_700_000_000_000,
        top_features=[("temp", 1.5), ("rpm", 0.25)],
        detected_at=ev.iso_utc(1_700_000_000.123),
    )
    event = json.loads(raw)
    assert set(event) == {
        "id", "event_id", "score", "threshold", "severity", "model_version", "source",
        "top_features", "detected_at",
    }  # fmt: skip
    assert event["event_id"] == event_id("in", 2, 41, "v3")  # no incident_id: in none
    assert event["severity"] == 2.0
    assert event["source"] == {
        "topic": "in",
        "partition": 2,
        "offset": 41,
        "timestamp_ms": 1_700_000_000_000,
    }
    assert event["top_features"] == [{"name": "temp", "error": 1.5}, {"name": "rpm", "error": 0.25}]
    assert event["detected_at"] == "2023-11-14T22:13:20.123Z"
    assert datetime.fromisoformat(event["detected_at"]).utcoffset().total_seconds() == 0


def test_dead_letter_headers_keep_the_originals_first() -> None:
    headers = ev.dead_letter_headers(
        [("trace", b"abc")],
        error_class="not_json",
        message="not JSON: Expecting value",
        topic="in",
        partition=0,
        offset=7,
        timestamp_ms=123,
        model_version="v1",
        failed_at="2026-01-01T00:00:00.000Z",
    )
    assert headers[0] == ("trace", b"abc")
    got = dict(headers[1:])
    assert got[ev.H_ERROR_CLASS] == b"not_json"
    assert got[ev.H_ERROR_MESSAGE].startswith(b"not JSON")
    assert (got[ev.H_SOURCE_TOPIC], got[ev.H_SOURCE_PARTITION], got[ev.H_SOURCE_OFFSET]) == (
        b"in",
        b"0",
        b"7",
    )
    assert set(got) == set(ev.DLQ_HEADERS)
    assert all(isinstance(v, bytes) for _, v in headers)


# ---------------------------------------------------------------- batch_outputs: a scored batch
def _batch(values: list[bytes | None], scores: list[float], threshold: float = 1.0):  # type: ignore[no-untyped-def]
    """Records (all of partition 3), their decoding with two features, and given scores."""
    import numpy as np
    from fake_client import FakeRecord

    from worker.decode import FeatureSpec, decode_batch
    from worker.scoring import BatchScores

    records = [
        FakeRecord("in", 3, 100 + i, v, key=f"k{i}".encode() if v is not None else None)
        for i, v in enumerate(values)
    ]
    decoded = decode_batch(values, FeatureSpec(names=("a", "b")))
    s = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(s)
    scored = BatchScores(
        scores=s,
        feature_errors=np.tile(np.asarray([[0.1, 0.9]], dtype=np.float32), (len(s), 1)),
        threshold=threshold,
        finite=finite,
        is_anomaly=(s > threshold) & finite,
    )
    return records, decoded, scored


def _outputs(records, decoded, scored):  # type: ignore[no-untyped-def]
    return ev.batch_outputs(
        records,
        decoded,
        scored,
        model_version="v7",
        feature_names=["a", "b"],
        top_k=1,
        output_topic="out",
        dlq_topic="dlq",
        detected_at="2026-01-01T00:00:00.000Z",
    )


def test_every_record_is_an_event_a_dead_letter_or_normal() -> None:
    values = [b'{"id": "x", "a": 1, "b": 2}', b"not json", b'{"a": 3, "b": 4}', b'{"a": 5, "b": 6}']
    records, decoded, scored = _batch(values, [2.0, 0.5, 3.0])
    out = _outputs(records, decoded, scored)
    assert out.n_anomalies == 2
    assert [pos for pos, _ in out.errors] == [1]
    assert [o.topic for o in out.records] == ["out", "out", "dlq"]
    first = json.loads(out.records[0].value or b"")
    assert (first["id"], first["score"], first["severity"], first["model_version"]) == (
        "x",
        2.0,
        2.0,
        "v7",
    )
    assert first["source"] == {"topic": "in", "partition": 3, "offset": 100, "timestamp_ms": 1_700_000_000_000}  # fmt: skip
    assert first["top_features"] == [{"name": "b", "error": pytest.approx(0.9)}]
    assert out.records[0].key == b"k0"  # same key as the input record
    dead = out.records[2]
    assert (dead.key, dead.value) == (b"k1", b"not json")
    assert dict(dead.headers)[ev.H_SOURCE_OFFSET] == b"101"
    assert list(out.finite_scores) == [2.0, 0.5, 3.0]


def test_an_overflowed_score_is_a_dead_letter_in_batch_order() -> None:
    values = [b'{"features": [1, 2]}', b"oops", b'{"features": [3, 4]}']
    records, decoded, scored = _batch(values, [float("inf"), 0.2])
    out = _outputs(records, decoded, scored)
    assert [(pos, e.kind) for pos, e in out.errors] == [(0, "non_finite_score"), (1, "not_json")]
    assert [o.topic for o in out.records] == ["dlq", "dlq"]
    assert out.n_anomalies == 0
    assert list(out.finite_scores) == [0.2]


def test_a_batch_where_nothing_decoded_is_all_dead_letters() -> None:
    records, decoded, _ = _batch([b"{", None], [])
    out = _outputs(records, decoded, None)
    assert [o.topic for o in out.records] == ["dlq", "dlq"]
    assert out.records[1].value == b""  # a tombstone without key still gets a value
    assert out.n_anomalies == 0 and out.finite_scores.size == 0


def test_event_id_is_the_uuid5_of_its_json_name() -> None:
    """The cached-prefix hash gives exactly ``uuid5(namespace, json.dumps([...]))``."""
    import uuid

    from worker.incidents import _ID_NAMESPACE

    for topic, partition, offset, version in [
        ("in", 2, 41, "v3"),
        ('tö"pic\\', 0, 0, "v-ü 1"),
        ("x", 12345, 2**40, "2026-01-01T00:00:00Z"),
    ]:
        name = json.dumps(["event", topic, partition, offset, version])
        assert event_id(topic, partition, offset, version) == str(uuid.uuid5(_ID_NAMESPACE, name))


def test_outputs_json_refuses_non_finite_floats_and_writes_big_integers() -> None:
    from worker.json_bytes import json_bytes

    big = {"id": 2**70, "score": 1.5}
    assert json.loads(json_bytes(big, (1.5,))) == big  # beyond orjson: the standard library's
    assert json.loads(json_bytes({"id": "ü", "x": 1e-05})) == {"id": "ü", "x": 1e-05}
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            json_bytes({"score": bad}, (bad,))
    with pytest.raises(ValueError):
        ev.anomaly_event(
            record_id="a", score=1.0, threshold=0.5, model_version="v1", topic="in",
            partition=0, offset=1, timestamp_ms=None, top_features=[("temp", float("inf"))],
            detected_at="now",
        )  # fmt: skip
