"""Incidents through the loop on the in-memory client seam, point and windowed models: a burst on
one key is one incident (opened, updated, closed) with the right counts, a lone anomaly is none,
events carry ``event_id`` and ``incident_id``, an idle partition closes by the wall clock, and a
successor worker rebuilds open runs by replay, so the incident records of a stopped-and-resumed
stream equal an uninterrupted run's (both delivery modes)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fake_client import FakeConsumer, FakeRecord, drive
from worker_models import sensor_rows
from worker_runs import TOPIC, Run, rounded, successor
from worker_series_models import keyed_series, records

from anomaly_contract.model_dir import load_bundle
from worker.client import Partition
from worker.incident_room import METADATA_FIELD, start_in_metadata
from worker.incidents import event_id
from worker.loop import EXIT_OK

INCIDENTS = "incidents"
T0 = 1_700_000_000_000
ANOMALY = [1000.0] * 6
SETTINGS: dict[str, object] = {
    "incident_topic": INCIDENTS,
    "incident_gap_s": 10,
    "incident_min_anomalies": 3,
    "incident_update_s": 3,
}


def _quiet_rows(model_dir: Path, n: int) -> list[list[float]]:
    """``n`` rows the model scores far below its threshold (normal beyond doubt)."""
    bundle = load_bundle(model_dir)
    x, _ = sensor_rows(4 * n, 6, seed=11)
    scores = bundle.score(x).scores
    quiet = x[scores < 0.5 * bundle.manifest.threshold]
    assert len(quiet) >= n
    return quiet[:n].tolist()


def _append(
    consumer: FakeConsumer, partition: int, rows: list[tuple[str, int, list[float]]]
) -> None:
    """Records (key, timestamp ms, features) appended to a partition's log."""
    tp = Partition(TOPIC, partition)
    for key, ts, features in rows:
        value = json.dumps({"id": f"{key}@{ts}", "features": features}).encode()
        consumer.log[tp].append(
            FakeRecord(TOPIC, partition, len(consumer.log[tp]), value, key.encode(), ts)
        )


def _burst_stream(model_dir: Path) -> list[tuple[str, int, list[float]]]:
    """Key "a" once a second for 60 s, anomalous from second 20 to 29; key "b" once a second,
    anomalous once (second 45, a lone blip)."""
    quiet = _quiet_rows(model_dir, 120)
    rows = []
    for second in range(60):
        rows.append(("a", T0 + second * 1000, ANOMALY if 20 <= second < 30 else quiet[second]))
        rows.append(
            ("b", T0 + second * 1000 + 500, ANOMALY if second == 45 else quiet[60 + second])
        )
    return rows


def _incidents(run: Run) -> list[dict]:
    return [json.loads(o.value or b"") for o in run.producer.sent if o.topic == INCIDENTS]


def _by_partition(incidents: list[dict]) -> object:
    """Comparable incident records in partition order (within a partition, as emitted): how two
    partitions' records interleave depends on the batches, not on the incidents."""
    return rounded(sorted(incidents, key=lambda i: i["source"]["partition"]))


def _events(run: Run) -> list[dict]:
    return [json.loads(o.value or b"") for o in run.producer.sent if o.topic == "anomalies"]


def test_a_burst_on_one_key_is_one_incident_and_a_lone_anomaly_none(model_dir: Path) -> None:
    consumer = FakeConsumer(TOPIC)
    _append(consumer, 0, _burst_stream(model_dir))
    run = Run(model_dir, consumer, batch_max_records=7, **SETTINGS)
    assert run.run() == EXIT_OK
    incidents = _incidents(run)
    assert [i["status"] for i in incidents] == ["opened", "updated", "updated", "closed"]
    assert {i["key"] for i in incidents} == {"a"} and len(
        {i["incident_id"] for i in incidents}
    ) == 1
    closed = incidents[-1]
    # key a's records from its first anomaly (second 20) until second 40 passed the gap
    assert closed["anomalies"] == 10 and closed["records"] == 20
    assert closed["opened_at"] == "2023-11-14T22:13:40.000Z"
    assert closed["last_anomaly_at"] == "2023-11-14T22:13:49.000Z"
    assert closed["closed_at"] == "2023-11-14T22:13:59.000Z"
    assert closed["peak_severity"] > 1 and closed["top_features"]
    incident_keys = [o.key for o in run.producer.sent if o.topic == INCIDENTS]
    assert incident_keys == [b"a"] * 4
    events = _events(run)
    assert len(events) == 11
    for e in events:
        src = e["source"]
        assert e["event_id"] == event_id(TOPIC, src["partition"], src["offset"], e["model_version"])
    in_incident = [e for e in events if "incident_id" in e]
    # the run becomes an incident at its third anomaly: the two before it stay plain events
    assert len(in_incident) == 8 and {e["incident_id"] for e in in_incident} == {
        closed["incident_id"]
    }
    assert (
        run.registry.get_sample_value("anomaly_worker_incidents_total", {"status": "opened"}) == 1
    )
    assert (
        run.registry.get_sample_value("anomaly_worker_incidents_total", {"status": "closed"}) == 1
    )
    assert run.registry.get_sample_value("anomaly_worker_incidents_open") == 0


def test_events_carry_a_stable_event_id_with_incidents_off(model_dir: Path) -> None:
    consumer = FakeConsumer(TOPIC)
    _append(consumer, 0, _burst_stream(model_dir))
    run = Run(model_dir, consumer, batch_max_records=50)
    assert run.run() == EXIT_OK
    events = _events(run)
    assert len(events) == 11 and all("incident_id" not in e for e in events)
    assert len({e["event_id"] for e in events}) == 11
    assert not _incidents(run)


def _run_until_closed(model_dir: Path, consumer: FakeConsumer, **settings: object) -> Run:
    """A run kept going (at most 10 s) until an incident record ``closed`` was sent."""
    seen: dict[str, Run] = {}
    started = time.monotonic()

    def keep_alive_until_closed(c: FakeConsumer, n: int) -> None:
        run = seen["run"]
        closed = any(i["status"] == "closed" for i in _incidents(run))
        if not closed and time.monotonic() - started < 10:
            run.idle_since = time.monotonic()  # not idle yet: the close is awaited

    consumer.on_poll = keep_alive_until_closed
    seen["run"] = run = Run(model_dir, consumer, **{**SETTINGS, **settings})
    assert run.run() == EXIT_OK
    return run


def test_an_idle_partition_closes_its_incident_by_the_wall_clock(model_dir: Path) -> None:
    consumer = FakeConsumer(TOPIC)
    now = int(time.time() * 1000)
    _append(consumer, 0, [("a", now - 3000 + 100 * i, ANOMALY) for i in range(4)])
    run = _run_until_closed(model_dir, consumer, incident_gap_s=1)
    assert [i["status"] for i in _incidents(run)] == ["opened", "closed"]
    assert _incidents(run)[-1]["anomalies"] == 4
    # the close re-committed the offset with a replay start that no longer needs the run
    metadata = consumer.committed_meta[Partition(TOPIC, 0)]
    assert start_in_metadata(metadata) == 4


def test_a_successor_with_nothing_to_poll_restores_and_closes_by_the_wall_clock(
    model_dir: Path,
) -> None:
    consumer = FakeConsumer(TOPIC)
    now = int(time.time() * 1000)
    _append(consumer, 0, [("a", now - 1000 + 100 * i, ANOMALY) for i in range(4)])
    first = Run(model_dir, consumer, **{**SETTINGS, "incident_gap_s": 2.5})
    assert first.run() == EXIT_OK
    assert [i["status"] for i in _incidents(first)] == ["opened"]  # stopped before the gap
    second = _run_until_closed(model_dir, successor(consumer, first, "at_least_once"), incident_gap_s=2.5)  # fmt: skip
    closed = _incidents(second)
    assert [i["status"] for i in closed] == ["closed"], closed
    assert (
        closed[0]["anomalies"] == 4
        and closed[0]["incident_id"] == _incidents(first)[0]["incident_id"]
    )
    assert second.count("anomaly") == 0  # nothing new was polled: the run came from the replay


def _uninterrupted(
    model_dir: Path, stream: list[tuple[str, int, list[float]]], delivery: str
) -> Run:
    """One worker through the whole stream in batches of 7: what an interruption must equal."""
    whole = FakeConsumer(TOPIC)
    _append(whole, 0, stream)
    run = Run(model_dir, whole, batch_max_records=7, delivery=delivery, **SETTINGS)
    assert run.run() == EXIT_OK
    return run


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_a_successor_mid_incident_continues_it_as_if_uninterrupted(
    model_dir: Path, delivery: str
) -> None:
    stream = _burst_stream(model_dir)
    uninterrupted = _uninterrupted(model_dir, stream, delivery)

    cut = FakeConsumer(TOPIC)
    _append(cut, 0, stream[:52])  # up to second 25: the incident is open, 6 anomalies in
    first = Run(model_dir, cut, batch_max_records=7, delivery=delivery, **SETTINGS)
    assert first.run() == EXIT_OK
    assert [i["status"] for i in _incidents(first)] == ["opened", "updated"]
    _append(cut, 0, stream[52:])
    second = Run(model_dir, successor(cut, first, delivery), batch_max_records=7, delivery=delivery, **SETTINGS)  # fmt: skip
    assert second.run() == EXIT_OK
    # no second incident for the burst: the successor continues the same one to its close
    assert rounded(_incidents(first) + _incidents(second)) == rounded(_incidents(uninterrupted))
    assert second.replay_reader.reads and second.replay_reader.reads[0][1] == 40
    assert (
        second.registry.get_sample_value("anomaly_worker_incidents_total", {"status": "opened"})
        == 0
    )
    assert second.count("anomaly") == 5  # the replayed records were not counted again


class _SlowRebalance:
    """kafka-python's rebalance that gives partition 0 back to the same member: revoked at the
    first poll from offset ``at`` on (whose records the loop drops), assigned again ``hold_s``
    later (past the idle sweep's second). Meanwhile the partition stays in the assignment,
    fetches nothing and keeps its fetch position, past the records dropped."""

    def __init__(self, at: int, hold_s: float) -> None:
        self.at, self.hold_s = at, hold_s
        self.revoked_at: float | None = None
        self.done = False
        self.acknowledge: Callable[[], None] = lambda: None  # what the broker acknowledged

    def __call__(self, c: FakeConsumer, n: int) -> None:
        tp = Partition(TOPIC, 0)
        assert c.listener is not None
        if self.revoked_at is None and c.assigned and c.positions[tp] >= self.at:
            self.revoked_at = time.monotonic()
            self.acknowledge()  # the batch in flight is acknowledged and committed first
            drive(c.listener.on_partitions_revoked({tp}))  # this poll's records are dropped
        elif self.revoked_at and not self.done and not c.paused:
            c.paused.add(tp)
        elif not self.done and self.revoked_at and time.monotonic() - self.revoked_at > self.hold_s:
            self.done = True
            c.paused.clear()
            drive(c.listener.on_partitions_assigned(set(c.assigned)))


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_a_partition_given_back_in_a_slow_rebalance_continues_its_incident(
    model_dir: Path, delivery: str
) -> None:
    """The idle sweep inside the rebalance must not rebuild the partition's incidents up to its
    fetch position (past records never scored live): the batch after the re-position rebuilds
    them up to where it starts, so the incident records equal an uninterrupted run's."""
    stream = _burst_stream(model_dir)
    uninterrupted = _uninterrupted(model_dir, stream, delivery)

    consumer = FakeConsumer(TOPIC)
    _append(consumer, 0, stream)
    rebalance = _SlowRebalance(at=49, hold_s=1.5)  # mid-incident: 4 of its anomalies in
    consumer.on_poll = rebalance
    run = Run(model_dir, consumer, batch_max_records=7, delivery=delivery, **SETTINGS)
    rebalance.acknowledge = run.producer.ack_all
    run.producer.group = consumer  # exactly once: the group reads the transactions' offsets
    assert run.run() == EXIT_OK
    assert rebalance.done
    got = [(i["status"], i["anomalies"], i["records"]) for i in _incidents(run)]
    want = [(i["status"], i["anomalies"], i["records"]) for i in _incidents(uninterrupted)]
    assert got == want, run.replay_reader.reads
    assert rounded(_incidents(run)) == rounded(_incidents(uninterrupted))


# ------------------------------------------------------------------------------ windowed model
TRAINED = [f"m{i}" for i in range(6)]  # the keys of the conftest's series model


def _produce_series(
    consumer: FakeConsumer, x: np.ndarray, keys: np.ndarray, first: int
) -> list[tuple[int, int]]:
    """Each key's rows to one partition, one second of record time per row; where each went."""
    where = []
    for i, (value, key) in enumerate(zip(records(x, keys, first), keys, strict=True)):
        p = int(str(key)[-1]) % len(consumer.log)
        tp = Partition(TOPIC, p)
        consumer.produce(p, [value], [str(key).encode()])
        consumer.log[tp][-1].timestamp = T0 + (first + i) * 1000
        where.append((p, len(consumer.log[tp]) - 1))
    return where


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_windowed_incidents_survive_a_successor_as_if_uninterrupted(
    series_dir: Path, delivery: str
) -> None:
    x, keys = keyed_series(1600, TRAINED, seed=6, spike_rate=0.02)
    settings = {**SETTINGS, "incident_gap_s": 30, "incident_min_anomalies": 1, "key_field": "key"}
    whole = FakeConsumer(TOPIC, n_partitions=2)
    where = _produce_series(whole, x, keys, 0)
    uninterrupted = Run(series_dir, whole, batch_max_records=60, delivery=delivery, **settings)
    assert uninterrupted.run() == EXIT_OK
    expected = _by_partition(_incidents(uninterrupted))
    closes = [i for i in _incidents(uninterrupted) if i["status"] == "closed"]
    assert len(closes) >= 3, expected
    # cut the stream just after an anomaly past its middle: an incident is open at the cut
    anomalous = {(e["source"]["partition"], e["source"]["offset"]) for e in _events(uninterrupted)}
    cut_at = next(i for i in range(700, len(x)) if where[i] in anomalous) + 2

    cut = FakeConsumer(TOPIC, n_partitions=2)
    _produce_series(cut, x[:cut_at], keys[:cut_at], 0)
    first = Run(series_dir, cut, batch_max_records=60, delivery=delivery, **settings)
    assert first.run() == EXIT_OK
    assert first.registry.get_sample_value("anomaly_worker_incidents_open") >= 1
    _produce_series(cut, x[cut_at:], keys[cut_at:], cut_at)
    second = Run(series_dir, successor(cut, first, delivery), batch_max_records=60, delivery=delivery, **settings)  # fmt: skip
    assert second.run() == EXIT_OK
    assert _by_partition(_incidents(first) + _incidents(second)) == expected
    # every event of the second worker names the incident the uninterrupted one gave it
    ids = {(e["source"]["partition"], e["source"]["offset"]): e.get("incident_id") for e in _events(uninterrupted)}  # fmt: skip
    for e in _events(second):
        assert e.get("incident_id") == ids[(e["source"]["partition"], e["source"]["offset"])]
    committed = second.consumer.committed_meta
    if delivery == "exactly_once":
        committed = second.producer.txn_metadata[-1]
    metadata = list(committed.values())
    assert all(start_in_metadata(m) is not None and METADATA_FIELD in m for m in metadata)
