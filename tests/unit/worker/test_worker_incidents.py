"""Incidents (worker/incidents.py): grouping by record time, throttling, closing, ids, state."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from worker.incidents import (
    IncidentRules,
    IncidentTracker,
    ScoredRecord,
    event_id,
    incident_id,
)

TOPIC, PARTITION = "sensor-readings", 2
RULES = IncidentRules(gap_ms=10_000, min_anomalies=3, update_ms=3_000, top_features=2)
FIELDS = {
    "incident_id", "key", "status", "opened_at", "last_anomaly_at", "closed_at", "records",
    "anomalies", "peak_severity", "top_features", "model_version",
}  # fmt: skip
WALL = 1_800_000_000_000  # a wall clock well past every record timestamp used here


def anomaly(ts: int, offset: int, key: str | None = "m1", severity: float = 2.0) -> ScoredRecord:
    return ScoredRecord(key, ts, offset, True, severity, {"temp": severity, "rpm": 1.0})


def normal(ts: int, offset: int, key: str | None = "m1") -> ScoredRecord:
    return ScoredRecord(key, ts, offset, False, 0.5, {"temp": 0.1, "rpm": 0.1})


def feed(
    tracker: IncidentTracker, records: list[ScoredRecord], batch: int, version: str = "v1"
) -> tuple[list[dict[str, Any]], list[str | None]]:
    """Feed in batches of ``batch`` records with a wall clock that never makes a partition idle."""
    out: list[dict[str, Any]] = []
    ids: list[str | None] = []
    for start in range(0, len(records), batch):
        chunk = records[start : start + batch]
        result = tracker.process(chunk, model_version=version, now_ms=WALL)
        out += result.records
        ids += result.incident_ids
    return out, ids


def burst() -> list[ScoredRecord]:
    """Key m1: 5 anomalies 2 s apart among normal records, then normal records for 20 s."""
    records = [normal(0, 0)]
    for i in range(5):
        records.append(anomaly(1_000 + 2_000 * i, 1 + 2 * i, severity=2.0 + i))
        records.append(normal(2_000 + 2_000 * i, 2 + 2 * i))
    records += [normal(12_000 + 2_000 * i, 11 + i) for i in range(10)]
    return records


def test_a_burst_opens_updates_and_closes_one_incident() -> None:
    tracker = IncidentTracker(RULES, TOPIC, PARTITION)
    out, ids = feed(tracker, burst(), batch=1000)
    assert [r["status"] for r in out] == ["opened", "updated", "closed"]
    assert all(set(r) >= FIELDS for r in out)
    assert len({r["incident_id"] for r in out}) == 1
    opened, updated, closed = out
    assert opened["incident_id"] == incident_id("m1", TOPIC, PARTITION, 1)
    assert (opened["anomalies"], opened["records"], opened["closed_at"]) == (3, 5, None)
    # the throttle (3 s): the 4th anomaly, 2 s after the opening one, is silent; the 5th updates
    assert (updated["anomalies"], updated["records"], updated["closed_at"]) == (5, 9, None)
    assert closed["anomalies"] == 5
    assert closed["peak_severity"] == 6.0
    assert closed["opened_at"] == "1970-01-01T00:00:01.000Z"
    assert closed["last_anomaly_at"] == "1970-01-01T00:00:09.000Z"
    assert closed["closed_at"] == "1970-01-01T00:00:19.000Z"  # last anomaly + gap
    # records from the first anomaly to the close: offsets 1..10, then 11..15 (ts 12..20 s) whose
    # last one (20 s) is past the gap and closes the incident before it is counted
    assert closed["records"] == 10 + 4
    assert closed["top_features"] == [{"name": "temp", "error": 4.0}, {"name": "rpm", "error": 1.0}]
    assert closed["model_version"] == "v1"
    assert closed["key"] == "m1"
    json.dumps(out, allow_nan=False)  # every record is JSON as it is
    # the anomalies before the minimum get no id; from the opening one on, the incident's id
    anomaly_ids = [i for r, i in zip(burst(), ids, strict=True) if r.is_anomaly]
    assert anomaly_ids == [None, None] + [opened["incident_id"]] * 3
    assert all(i is None for r, i in zip(burst(), ids, strict=True) if not r.is_anomaly)
    assert tracker.open_incidents == 0


def test_update_throttle_by_record_time() -> None:
    rules = IncidentRules(gap_ms=10_000, min_anomalies=1, update_ms=5_000)
    tracker = IncidentTracker(rules, TOPIC, PARTITION)
    records = [anomaly(1_000 * i, i) for i in range(12)]  # one anomaly a second
    out, _ = feed(tracker, records, batch=3)
    statuses = [(r["status"], r["anomalies"]) for r in out]
    # opened at 0 s, then updates at 5 s and 10 s of record time, never more often
    assert statuses == [("opened", 1), ("updated", 6), ("updated", 11)]


def test_update_every_anomaly_with_zero_throttle() -> None:
    rules = IncidentRules(gap_ms=10_000, min_anomalies=2, update_ms=0)
    tracker = IncidentTracker(rules, TOPIC, PARTITION)
    out, _ = feed(tracker, [anomaly(100 * i, i) for i in range(4)], batch=10)
    assert [(r["status"], r["anomalies"]) for r in out] == [
        ("opened", 2), ("updated", 3), ("updated", 4),
    ]  # fmt: skip


def test_lone_blips_below_the_minimum_open_nothing() -> None:
    tracker = IncidentTracker(RULES, TOPIC, PARTITION)
    # two anomalies within the gap, then a third one 11 s later: never 3 in one chain
    records = [anomaly(0, 0), anomaly(5_000, 1), normal(10_000, 2), anomaly(16_000, 3)]
    records += [normal(16_500 + 1_000 * i, 4 + i) for i in range(30)]
    out, ids = feed(tracker, records, batch=4)
    assert out == []
    assert ids == [None] * len(records)
    assert tracker.export_state()["runs"] == []  # the ended runs left no state behind


def test_the_gap_is_measured_in_record_time_not_arrival() -> None:
    tracker = IncidentTracker(RULES, TOPIC, PARTITION)
    # three anomalies whose timestamps are 10 s apart (= gap: still one chain), fed in one batch
    out, _ = feed(tracker, [anomaly(0, 0), anomaly(10_000, 1), anomaly(20_000, 2)], batch=10)
    assert [r["status"] for r in out] == ["opened"]
    # a gap one millisecond larger than the rule splits the chain
    tracker = IncidentTracker(RULES, TOPIC, PARTITION)
    out, _ = feed(tracker, [anomaly(0, 0), anomaly(10_001, 1), anomaly(20_002, 2)], batch=10)
    assert out == []


def test_another_key_moves_the_partition_clock_and_closes() -> None:
    tracker = IncidentTracker(RULES, TOPIC, PARTITION)
    records = [anomaly(0, 0), anomaly(1, 1), anomaly(2, 2), normal(10_002, 3, key="m2")]
    out, _ = feed(tracker, records, batch=10)
    assert [r["status"] for r in out] == ["opened"]  # 10 s after the last anomaly: not past
    out, _ = feed(tracker, [normal(10_003, 4, key="m2")], batch=10)
    assert [(r["status"], r["key"], r["records"]) for r in out] == [("closed", "m1", 3)]


def test_keys_are_separate_incidents_and_keyless_is_one_series() -> None:
    tracker = IncidentTracker(RULES, TOPIC, PARTITION)
    records = []
    for i in range(3):
        records += [anomaly(i, 3 * i, "a"), anomaly(i, 3 * i + 1, "b"), anomaly(i, 3 * i + 2, None)]
    out, _ = feed(tracker, records, batch=2)
    assert [(r["status"], r["key"]) for r in out] == [
        ("opened", "a"),
        ("opened", "b"),
        ("opened", None),
    ]
    assert len({r["incident_id"] for r in out}) == 3
    assert tracker.open_incidents == 3


def test_idle_partition_closes_by_wall_clock() -> None:
    tracker = IncidentTracker(RULES, TOPIC, PARTITION)
    arrival = 5_000_000
    records = [anomaly(arrival + i, i) for i in range(3)]
    out = tracker.process(records, model_version="v1", now_ms=arrival + 10).records
    assert [r["status"] for r in out] == ["opened"]
    # idle polls: nothing until the gap has passed on the wall clock since the newest record
    assert tracker.process([], model_version="v1", now_ms=arrival + 10_000).records == []
    closed = tracker.process([], model_version="v1", now_ms=arrival + 10_020).records
    assert [r["status"] for r in closed] == ["closed"]
    # closed_at comes from record time, not from when the idle poll noticed
    assert closed[0]["closed_at"] == "1970-01-01T01:23:30.002Z"


def test_replaying_old_records_is_never_closed_by_the_wall_clock() -> None:
    """Records from long ago, fed as fast as they come: the wall clock is far ahead, yet only
    record time closes (the partition is busy, so it is not idle)."""
    tracker = IncidentTracker(RULES, TOPIC, PARTITION)
    out, _ = feed(tracker, burst(), batch=2)
    assert [r["status"] for r in out] == ["opened", "updated", "closed"]
    assert out[-1]["anomalies"] == 5


@pytest.mark.parametrize("batch", [1, 2, 3, 7, 1000])
def test_replay_gives_the_same_records_whatever_the_batches(batch: int) -> None:
    expected, expected_ids = feed(IncidentTracker(RULES, TOPIC, PARTITION), many_keys(), 1000)
    out, ids = feed(IncidentTracker(RULES, TOPIC, PARTITION), many_keys(), batch)
    assert out == expected
    assert ids == expected_ids
    assert len(expected) > 6  # several incidents, not a trivial stream


def many_keys() -> list[ScoredRecord]:
    """Three keys interleaved, bursts at different times, one lone blip."""
    records: list[ScoredRecord] = []
    for step in range(120):
        ts = 500 * step
        for k, key in enumerate(("a", "b", "c")):
            offset = 3 * step + k
            bursting = (key == "a" and 10 <= step < 30) or (key == "b" and 40 <= step < 90)
            blip = key == "c" and step == 50
            hot = (bursting and step % 3 == 0) or blip
            records.append(
                anomaly(ts, offset, key, 1.5 + step % 5) if hot else normal(ts, offset, key)
            )
    return records


@pytest.mark.parametrize("cut", [5, 40, 100, 200, 300])
def test_export_import_mid_incident_equals_uninterrupted(cut: int) -> None:
    records = many_keys()
    expected, expected_ids = feed(IncidentTracker(RULES, TOPIC, PARTITION), records, 10)
    first = IncidentTracker(RULES, TOPIC, PARTITION)
    out, ids = feed(first, records[:cut], 10)
    state = json.loads(json.dumps(first.export_state()))  # through JSON, as it will be stored
    restored = IncidentTracker.from_state(RULES, state, now_ms=WALL)
    more, more_ids = feed(restored, records[cut:], 10)
    assert out + more == expected
    assert ids + more_ids == expected_ids


def test_state_from_another_format_or_malformed_is_refused() -> None:
    tracker = IncidentTracker(RULES, TOPIC, PARTITION)
    feed(tracker, [anomaly(0, 0)], 1)
    state = tracker.export_state()
    with pytest.raises(ValueError, match="format"):
        IncidentTracker.from_state(RULES, {**state, "format": 99}, now_ms=0)
    with pytest.raises(ValueError, match="malformed"):
        IncidentTracker.from_state(RULES, {**state, "runs": [{"key": "x"}]}, now_ms=0)
    bad_count = {**state["runs"][0], "records": "many"}
    with pytest.raises(ValueError, match="malformed"):
        IncidentTracker.from_state(RULES, {**state, "runs": [bad_count]}, now_ms=0)
    with pytest.raises(ValueError, match="list"):
        IncidentTracker.from_state(RULES, {**state, "runs": "nope"}, now_ms=0)


def test_model_version_is_the_latest_anomalys() -> None:
    rules = IncidentRules(gap_ms=10_000, min_anomalies=1, update_ms=0)
    tracker = IncidentTracker(rules, TOPIC, PARTITION)
    feed(tracker, [anomaly(0, 0)], 1, version="v1")
    out, _ = feed(tracker, [anomaly(1, 1)], 1, version="v2")
    assert [(r["status"], r["model_version"]) for r in out] == [("updated", "v2")]


def test_ids_are_deterministic_and_distinct() -> None:
    assert event_id(TOPIC, 0, 5, "v1") == event_id(TOPIC, 0, 5, "v1")
    variants = {
        event_id(TOPIC, 0, 5, "v1"), event_id(TOPIC, 1, 5, "v1"), event_id(TOPIC, 0, 6, "v1"),
        event_id(TOPIC, 0, 5, "v2"), event_id("other", 0, 5, "v1"),
    }  # fmt: skip
    assert len(variants) == 5
    assert incident_id(None, TOPIC, 0, 5) != incident_id("", TOPIC, 0, 5)
    assert incident_id("a", TOPIC, 0, 5) != event_id(TOPIC, 0, 5, "a")


@pytest.mark.parametrize(
    "bad",
    [
        {"gap_ms": 0, "min_anomalies": 1, "update_ms": 0},
        {"gap_ms": 1, "min_anomalies": 0, "update_ms": 0},
        {"gap_ms": 1, "min_anomalies": 1, "update_ms": -1},
    ],
)
def test_bad_rules_are_refused(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="incident rules"):
        IncidentRules(**bad)


def test_late_records_chain_by_their_own_timestamps() -> None:
    """Timestamps behind the partition's newest (another producer's clock): runs still chain by
    the records' own times, and a far later anomaly starts a new run."""
    rules = IncidentRules(gap_ms=10_000, min_anomalies=2, update_ms=0)
    tracker = IncidentTracker(rules, TOPIC, PARTITION)
    records = [
        normal(100_000, 0, key="other"),
        anomaly(0, 1),
        anomaly(30_000, 2),
        anomaly(35_000, 3),
    ]
    out, ids = feed(tracker, records, batch=10)
    # 0 s alone (30 s is past its gap), then 30 s and 35 s make an incident opened at 30 s
    assert [(r["status"], r["opened_at"], r["anomalies"]) for r in out] == [
        ("opened", "1970-01-01T00:00:30.000Z", 2)
    ]
    assert ids[:3] == [None, None, None] and ids[3] == out[0]["incident_id"]
    # the next record that moves the partition's clock closes it (both are 65 s behind)
    out, _ = feed(tracker, [normal(100_001, 4, key="other")], batch=10)
    assert [r["status"] for r in out] == ["closed"]


def test_anomalies_with_one_timestamp_and_late_ones_close_once() -> None:
    rules = IncidentRules(gap_ms=1_000, min_anomalies=2, update_ms=0)
    tracker = IncidentTracker(rules, TOPIC, PARTITION)
    # same timestamp three times, then one behind it: the run's end does not move, and the late
    # one is no later than the last update in record time, so it updates nothing
    records = [anomaly(5_000, 0), anomaly(5_000, 1), anomaly(5_000, 2), anomaly(4_900, 3)]
    out, _ = feed(tracker, records + [normal(6_001, 4)], batch=10)
    assert [(r["status"], r["anomalies"]) for r in out] == [
        ("opened", 2), ("updated", 3), ("closed", 4),
    ]  # fmt: skip
    assert out[-1]["last_anomaly_at"] == "1970-01-01T00:00:05.000Z"


@pytest.mark.parametrize("seed", range(5))
def test_random_streams_replay_and_restore_identically(seed: int) -> None:
    """Random keys, anomalies, repeated and late timestamps: any batching, and a restore at any
    point, give what one uninterrupted pass over the stream gives."""
    rng = random.Random(seed)
    rules = IncidentRules(gap_ms=2_000, min_anomalies=rng.randint(1, 3), update_ms=1_000)
    records, ts = [], 0
    for offset in range(600):
        ts += rng.choice([0, 100, 250, 900, 2_500])
        stamp = ts - rng.choice([0, 0, 0, 1_500])  # some records behind the newest
        key = rng.choice(["a", "b", "c", None])
        hot = rng.random() < 0.3
        records.append(
            anomaly(stamp, offset, key, rng.uniform(1, 5)) if hot else normal(stamp, offset, key)
        )
    expected, expected_ids = feed(IncidentTracker(rules, TOPIC, PARTITION), records, 1000)
    assert {r["status"] for r in expected} >= {"opened", "closed"}
    for _ in range(3):
        batch, cut = rng.randint(1, 50), rng.randrange(len(records))
        first = IncidentTracker(rules, TOPIC, PARTITION)
        out, ids = feed(first, records[:cut], batch)
        state = json.loads(json.dumps(first.export_state()))
        restored = IncidentTracker.from_state(rules, state, now_ms=WALL)
        more, more_ids = feed(restored, records[cut:], batch)
        assert (out + more, ids + more_ids) == (expected, expected_ids)


def test_replay_start_is_the_earliest_held_runs_start() -> None:
    tracker = IncidentTracker(RULES, TOPIC, PARTITION)
    assert tracker.replay_start() is None
    first = ScoredRecord("m1", 1_000, 5, True, 2.0, {}, replay_from=2)  # a window from offset 2
    tracker.process([first, anomaly(2_000, 6, key="m2")], model_version="v1", now_ms=WALL)
    assert tracker.replay_start() == 2  # the run of m1, not yet an incident, counts too
    # m1's run ends (m2 moves the clock past its gap); m2's own run is then the earliest
    tracker.process([anomaly(11_500, 7, key="m2")], model_version="v1", now_ms=WALL)
    assert tracker.replay_start() == 6
    restored = IncidentTracker.from_state(RULES, tracker.export_state(), now_ms=WALL)
    assert restored.replay_start() == 6
    tracker.process([normal(30_000, 8, key="m3")], model_version="v1", now_ms=WALL)
    assert tracker.replay_start() is None
