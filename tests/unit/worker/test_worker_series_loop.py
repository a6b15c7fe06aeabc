"""The loop's batch cycle with a windowed model on the in-memory client seam: events match the
offline path (`SeriesModel.score_rows`) row by row, warming records make no event, and a new
worker restores every window from the input before scoring (both delivery modes)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fake_client import FakeConsumer
from worker_runs import TOPIC, Run, successor
from worker_series_models import CHANNELS, keyed_series, publish_series_model, records

from anomaly_contract.model_dir import load_bundle
from worker.client import Partition
from worker.loop import EXIT_OK
from worker.outputs import H_ERROR_CLASS
from worker.state import ReplayPlan

WINDOW = 8  # the conftest's series model: SERIES_WINDOW, SERIES_TRAINED
TRAINED = [f"m{i}" for i in range(6)]
BAD = b"not json"


@dataclass
class Stream:
    """Rows produced onto a fake topic: each key's rows go to one partition, in row order."""

    x: np.ndarray
    keys: np.ndarray
    where: list[tuple[int, int]]  # (partition, offset) of each row

    @classmethod
    def produce(cls, consumer: FakeConsumer, x: np.ndarray, keys: np.ndarray) -> Stream:
        where = []
        for value, key in zip(records(x, keys), keys, strict=True):
            p = int(str(key)[-1]) % len(consumer.log)
            where.append((p, len(consumer.log[Partition(TOPIC, p)])))
            consumer.produce(p, [value], [str(key).encode()])
        return cls(x, keys, where)


def _offline(series_dir: Path, stream: Stream):
    return load_bundle(series_dir).series.score_rows(stream.x, stream.keys)


def _events(run: Run) -> dict[tuple[int, int], dict]:
    events = [json.loads(o.value or b"") for o in run.producer.sent if o.topic == "anomalies"]
    return {(e["source"]["partition"], e["source"]["offset"]): e for e in events}


def test_windowed_events_match_the_offline_scores_row_by_row(series_dir: Path) -> None:
    consumer = FakeConsumer(TOPIC, n_partitions=2)
    x, keys = keyed_series(1500, [*TRAINED, "new1"], seed=5, spike_rate=0.02)
    stream = Stream.produce(consumer, x, keys)
    consumer.produce(0, [BAD, records(x[:1], keys[:1])[0]], [b"m0", b"\xff"])  # bad value, key
    run = Run(series_dir, consumer, batch_max_records=97)
    assert run.run() == EXIT_OK
    offline = _offline(series_dir, stream)
    events = _events(run)
    expected = {stream.where[i] for i in np.flatnonzero(offline.is_anomaly)}
    assert expected and set(events) == expected
    row_of = {w: i for i, w in enumerate(stream.where)}
    for where, event in events.items():
        i = row_of[where]
        assert event["key"] == keys[i]
        assert abs(event["score"] - offline.scores[i]) <= 1e-9 * offline.scores[i]
        assert event["threshold"] == pytest.approx(offline.thresholds[i], rel=1e-12)
        first = event["window"]["first_offset"]
        same_key = [o for (p, o), k in zip(stream.where, keys, strict=True) if k == keys[i] and p == where[0]]  # fmt: skip
        assert same_key[same_key.index(where[1]) - (WINDOW - 1)] == first
        assert event["window"]["last_offset"] == where[1]
        top = event["top_features"][0]
        assert top["name"] in CHANNELS and 0 <= top["steps_back"] < WINDOW
    assert run.count("warming") == int(offline.warming.sum())
    assert run.count("anomaly") == len(events)
    assert run.count("invalid") == 2
    dead = [dict(o.headers)[H_ERROR_CLASS] for o in run.producer.sent if o.topic != "anomalies"]
    assert sorted(dead) == [b"bad_key", b"not_json"]
    assert run.registry.get_sample_value("anomaly_worker_series_keys") == 7  # m0..m5, new1


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_a_new_worker_restores_every_window_before_scoring(series_dir: Path, delivery: str) -> None:
    consumer = FakeConsumer(TOPIC, n_partitions=2)
    x, keys = keyed_series(1600, [*TRAINED, "new1"], seed=6, spike_rate=0.02)
    first = Stream.produce(consumer, x[:800], keys[:800])
    run1 = Run(series_dir, consumer, batch_max_records=60, delivery=delivery)
    assert run1.run() == EXIT_OK
    plans = [ReplayPlan.from_metadata(m) for m in consumer.committed_meta.values()]
    if delivery == "exactly_once":
        plans = [ReplayPlan.from_metadata(m) for m in run1.producer.txn_metadata[-1].values()]
    assert plans and all(p is not None and p.start > 0 for p in plans)
    second = Stream.produce(consumer, x[800:], keys[800:])
    fresh = successor(consumer, run1, delivery)
    run2 = Run(series_dir, fresh, batch_max_records=60, delivery=delivery)
    assert run2.run() == EXIT_OK
    # the restore re-read each partition from its plan up to its committed offset
    starts = {tp.partition: start for tp, start, _ in run2.replay_reader.reads}
    assert set(starts) == {0, 1} and all(s > 0 for s in starts.values())
    offline = _offline(series_dir, Stream(x, keys, first.where + second.where))
    later = np.arange(800, 1600)
    expected = {second.where[i - 800] for i in later[offline.is_anomaly[later]]}
    assert expected and set(_events(run2)) == expected
    # no record of the second part warmed again: each key's window was there before it came
    assert run2.count("warming") == int(offline.warming[later].sum())
    assert run2.registry.get_sample_value("anomaly_worker_state_restores_total") == 2


def test_a_restore_the_broker_cannot_serve_is_retried_and_nothing_is_lost(
    series_dir: Path,
) -> None:
    consumer = FakeConsumer(TOPIC, n_partitions=1)
    x, keys = keyed_series(400, TRAINED, seed=8, spike_rate=0.03)
    stream = Stream.produce(consumer, x, keys)
    consumer.committed_offsets = {Partition(TOPIC, 0): 0}  # a group that committed before
    run = Run(series_dir, consumer, batch_max_records=50)
    run.replay_reader.fail = 2
    assert run.run() == EXIT_OK
    assert len(run.replay_reader.reads) >= 3
    offline = _offline(series_dir, stream)
    assert set(_events(run)) == {stream.where[i] for i in np.flatnonzero(offline.is_anomaly)}
    n = run.count("normal") + run.count("anomaly") + run.count("warming")
    assert n == len(x)


def test_a_new_model_version_scores_with_windows_rebuilt_for_it(series_dir: Path) -> None:
    consumer = FakeConsumer(TOPIC, n_partitions=2)
    x, keys = keyed_series(1200, [*TRAINED, "new1"], seed=9, spike_rate=0.03)
    stream = Stream.produce(consumer, x, keys)
    trained_x, trained_keys = keyed_series(3000, TRAINED, seed=1, spike_rate=0.0)

    def publish_v2_on_the_sixth_poll(c: FakeConsumer, n: int) -> None:
        if n == 6:
            publish_series_model(series_dir, trained_x, trained_keys, window=WINDOW, seed=1)
            # load it now (the watcher thread's next look could come after the stream's end on
            # a busy machine): the loop swaps it in before its next batch
            run.worker.watcher.check_once()

    consumer.on_poll = publish_v2_on_the_sixth_poll
    run = Run(series_dir, consumer, model_poll_s=0.05, batch_max_records=50)
    assert run.run() == EXIT_OK
    events = _events(run)
    versions = {e["model_version"] for e in events.values()}
    assert versions == {"v1", "v2"}, versions
    # every event has the score its version gives offline: v2 scored full, exact windows
    offline = {v: load_bundle(series_dir, v).series.score_rows(x, keys) for v in versions}
    row_of = {w: i for i, w in enumerate(stream.where)}
    for where, event in events.items():
        expected = offline[event["model_version"]].scores[row_of[where]]
        assert abs(event["score"] - expected) <= 1e-9 * expected, (where, event)
    scored = run.count("normal") + run.count("anomaly") + run.count("warming")
    assert scored == len(x)
    # each partition restored once on its first batch, and those held at the swap once again
    assert run.registry.get_sample_value("anomaly_worker_state_restores_total") >= 3
