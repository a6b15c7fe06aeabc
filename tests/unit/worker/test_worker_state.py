"""The state room (`worker.state`) on bare `KeyedWindows` stores: windows per partition with
interleaved keys, where a restore must start (the commit metadata), the replay cap, eviction,
and a restore that rebuilds exactly what an uninterrupted room holds."""

from __future__ import annotations

import numpy as np
from fake_client import FakeConsumer, FakeReplayReader
from prometheus_client import CollectorRegistry

from anomaly_contract.windows import KeyedWindows
from worker.client import InRecord, Partition
from worker.metrics import StateMetrics
from worker.state import ReplayPlan, SeriesStateRoom

TOPIC = "in"
P0, P1 = Partition(TOPIC, 0), Partition(TOPIC, 1)
W = 3


class Room:
    """A room of KeyedWindows stores with its registry, keys ``u*`` learning online."""

    def __init__(self, max_keys: int = 100, cap: int = 1000) -> None:
        self.registry = CollectorRegistry()
        self.metrics = StateMetrics(self.registry)
        self.room = SeriesStateRoom(
            new_store=lambda: KeyedWindows(W, 1, max_keys),
            learns_online=lambda key: key.startswith("u"),
            replay_cap=cap,
            metrics=self.metrics,
            clock=lambda: self.now,
        )
        self.now = 0.0

    def sample(self, name: str) -> float:
        return self.registry.get_sample_value(name) or 0.0


def _feed(room: SeriesStateRoom, tp: Partition, keys: list[str], first_offset: int = 0) -> list:
    out = []
    for i, key in enumerate(keys):
        offset = first_offset + i
        out.append(room.push(tp, key, np.array([float(offset)]), offset))
    return out


def test_windows_follow_each_partition_and_key_in_order():
    r = Room().room
    got0 = _feed(r, P0, ["a", "b", "a", "b", "a"])
    got1 = _feed(r, P1, ["a", "a", "a"])
    # a in P0: offsets 0, 2, 4 -> its window closes at offset 4; b never reaches W
    assert [w is None for w in got0] == [True, True, True, True, False]
    assert got0[4].values[:, 0].tolist() == [0.0, 2.0, 4.0]
    assert (got0[4].first_offset, got0[4].last_offset) == (0, 4)
    # the same key in another partition has a window of its own, in that partition's order
    assert got1[2].values[:, 0].tolist() == [0.0, 1.0, 2.0]
    assert r.keys_held() == 3


def test_replay_start_is_the_oldest_record_any_held_key_still_needs():
    room = Room()
    r = room.room
    _feed(r, P0, ["a", "b", "a", "a", "a", "b"])  # a: 0,2,3,4 (window 2..4), b: 1,5 warming
    r.end_batch({P0: 6})
    assert ReplayPlan.from_metadata(r.commit_metadata(P0, 6)) == ReplayPlan(1)  # b's first
    _feed(r, P0, ["b"], first_offset=6)  # b: 1,5,6 full -> window 1..6, a still 2..4
    room.now = 5.0
    r.end_batch({P0: 7})
    assert ReplayPlan.from_metadata(r.commit_metadata(P0, 7)) == ReplayPlan(1)
    _feed(r, P0, ["b", "a"], first_offset=7)  # b: 5..7, a: 3..8
    room.now = 10.0
    r.end_batch({P0: 9})
    assert ReplayPlan.from_metadata(r.commit_metadata(P0, 9)) == ReplayPlan(3)


def test_keys_learning_online_pin_their_first_record():
    room = Room()
    r = room.room
    _feed(r, P0, ["u1", "a", "a", "a", "u1", "u1", "u1", "a"])  # u1 first at 0
    r.end_batch({P0: 8})
    assert ReplayPlan.from_metadata(r.commit_metadata(P0, 8)) == ReplayPlan(0)


def test_commit_metadata_is_the_plan_of_the_batch_ending_there_or_an_earlier_one():
    room = Room()
    r = room.room
    _feed(r, P0, ["a"] * 4)
    r.end_batch({P0: 4})  # a: window 1..3
    room.now = 2.0
    _feed(r, P0, ["a"] * 4, first_offset=4)
    r.end_batch({P0: 8})  # a: window 5..7
    assert r.commit_metadata(P1, 8) == ""  # a partition the room does not hold
    assert r.commit_metadata(P0, 3) == ""  # before any batch end: unknown
    assert ReplayPlan.from_metadata(r.commit_metadata(P0, 6)) == ReplayPlan(1)  # earlier: safe
    assert ReplayPlan.from_metadata(r.commit_metadata(P0, 8)) == ReplayPlan(5)
    assert ReplayPlan.from_metadata(r.commit_metadata(P0, 8)) == ReplayPlan(5)  # a retry


def test_a_plan_computed_earlier_is_reused_within_the_refresh_interval():
    room = Room()
    r = room.room
    _feed(r, P0, ["a"] * 4)
    r.end_batch({P0: 4})
    _feed(r, P0, ["a"] * 4, first_offset=4)
    r.end_batch({P0: 8})  # same clock: the start of offset 4 is reused (earlier, so safe)
    assert ReplayPlan.from_metadata(r.commit_metadata(P0, 8)) == ReplayPlan(1)


def test_the_cap_bounds_the_replay_and_counts_the_keys_it_cuts():
    room = Room(cap=10)
    r = room.room
    keys = ["old"] + ["a", "b", "c"] * 10  # old: offset 0 only, never full
    _feed(r, P0, keys)
    r.end_batch({P0: len(keys)})
    plan = ReplayPlan.from_metadata(r.commit_metadata(P0, len(keys)))
    assert plan == ReplayPlan(len(keys) - 10, cut=1)


def test_evicted_keys_are_counted_and_no_longer_hold_the_replay_back():
    room = Room(max_keys=2)
    r = room.room
    _feed(r, P0, ["x", "a", "a", "a", "b", "b", "b"])  # x (offset 0) is evicted by b
    r.end_batch({P0: 7})
    assert room.sample("anomaly_worker_series_evicted_total") == 1
    assert ReplayPlan.from_metadata(r.commit_metadata(P0, 7)) == ReplayPlan(1)
    assert room.sample("anomaly_worker_series_keys") == 2


def test_metadata_of_another_format_or_garbage_is_no_plan():
    assert ReplayPlan.from_metadata("") is None
    assert ReplayPlan.from_metadata("not json") is None
    assert ReplayPlan.from_metadata('{"format": "other", "start": 3}') is None
    assert ReplayPlan.from_metadata('["series-replay/1"]') is None
    assert ReplayPlan.from_metadata(ReplayPlan(7, 2).to_metadata()) == ReplayPlan(7, 2)


def _rows_of(records: list[InRecord]) -> tuple[list[str], np.ndarray, np.ndarray]:
    assert all(rec.value is not None and rec.key is not None for rec in records)
    keys = [rec.key.decode() for rec in records]  # type: ignore[union-attr]
    x = np.array([[float(rec.value)] for rec in records]).reshape(-1, 1)  # type: ignore[arg-type]
    return keys, x, np.array([rec.offset for rec in records], dtype=np.int64)


def test_a_restore_rebuilds_what_an_uninterrupted_room_holds():
    rng = np.random.default_rng(3)
    # u1 and u2 (learning online) first come at offset 50 or later: they pin the start there
    keys = [str(k) for k in rng.choice(["a", "b", "c"], size=50)]
    keys += [str(k) for k in rng.choice(["a", "b", "c", "u1", "u2"], size=150)]
    consumer = FakeConsumer(TOPIC, 1)
    consumer.produce(0, [str(i).encode() for i in range(200)], [k.encode() for k in keys])
    live, restored = Room(), Room()
    # the live room sees offsets 0..119 in batches, each batch end noted
    for start in range(0, 120, 30):
        for rec in consumer.log[P0][start : start + 30]:
            live.room.push(P0, keys[rec.offset], np.array([float(rec.offset)]), rec.offset)
        live.room.end_batch({P0: start + 30})
        live.now += 2.0
    metadata = live.room.commit_metadata(P0, 120)
    plan = ReplayPlan.from_metadata(metadata)
    assert plan is not None and 50 <= plan.start < 120
    assert plan.start == min(keys.index("u1"), keys.index("u2"))
    reader = FakeReplayReader(consumer)
    n_read = restored.room.restore(P0, 120, metadata, reader, _rows_of)
    assert reader.reads == [(P0, plan.start, 120)] and n_read == 120 - plan.start
    assert restored.sample("anomaly_worker_state_restore_records_total") == n_read
    assert restored.sample("anomaly_worker_state_restores_total") == 1
    # from here on both give the same windows for every record
    for offset in range(120, 200):
        vector = np.array([float(offset)])
        a = live.room.push(P0, keys[offset], vector, offset)
        b = restored.room.push(P0, keys[offset], vector, offset)
        assert (a is None) == (b is None), offset
        if a is not None and b is not None:
            np.testing.assert_array_equal(a.values, b.values)
            assert (a.first_offset, a.last_offset) == (b.first_offset, b.last_offset)


def test_a_restore_without_metadata_reads_back_the_cap_and_a_failed_one_holds_nothing():
    consumer = FakeConsumer(TOPIC, 1)
    consumer.produce(0, [str(i).encode() for i in range(50)], [b"a"] * 50)
    room = Room(cap=20)
    reader = FakeReplayReader(consumer)
    assert room.room.restore(P0, 50, None, reader, _rows_of) == 20
    assert reader.reads == [(P0, 30, 50)]
    reader.fail = 1
    try:
        room.room.restore(P0, 50, None, reader, _rows_of)
        raise AssertionError("the failed replay did not raise")
    except Exception as exc:  # noqa: BLE001 - the seam's RequestTimeout
        assert "does not answer" in str(exc)
    assert P0 not in room.room


def test_state_holds_a_partition_only_up_to_the_offset_it_has_seen():
    """State is current for a batch that starts where it ended or later (offsets without a
    record lie between), never for one that starts before: the input was sent back, and the
    state has seen those records already."""
    consumer = FakeConsumer(TOPIC, 1)
    consumer.produce(0, [str(i).encode() for i in range(30)], [b"a"] * 30)
    room = Room()
    assert not room.room.holds(P0, 0)  # nothing held yet
    _feed(room.room, P0, ["a"] * 10)
    assert room.room.holds(P0, 10) and room.room.holds(P0, 12)
    assert not room.room.holds(P0, 9) and not room.room.holds(P0, 0)
    room.room.restore(P0, 25, None, FakeReplayReader(consumer), _rows_of)
    assert room.room.holds(P0, 25) and not room.room.holds(P0, 24)
    room.room.drop([P0])
    assert not room.room.holds(P0, 25)


def test_dropping_a_partition_discards_its_keys():
    room = Room()
    _feed(room.room, P0, ["a", "b"])
    _feed(room.room, P1, ["c"])
    room.room.drop([P0])
    assert room.room.partitions() == {P1} and room.room.keys_held() == 1
    room.room.drop(None)
    assert room.room.keys_held() == 0


def test_plans_outlive_a_dropped_partition_and_pass_to_a_new_room():
    # a batch noted before a model swap or a redo may still be committed afterwards
    room = Room()
    _feed(room.room, P0, ["a"] * 5)
    room.room.end_batch({P0: 5})
    room.room.drop(None)
    assert ReplayPlan.from_metadata(room.room.commit_metadata(P0, 5)) == ReplayPlan(2)
    successor = SeriesStateRoom(
        new_store=lambda: KeyedWindows(W, 1, 10),
        learns_online=lambda key: False,
        replay_cap=1000,
        metrics=StateMetrics(CollectorRegistry()),
        marks=room.room.marks,
    )
    assert ReplayPlan.from_metadata(successor.commit_metadata(P0, 5)) == ReplayPlan(2)


def test_a_batch_leaves_each_key_needing_what_its_records_one_by_one_leave():
    """`push_many` against `push` record by record: same windows and, for every key (learning
    online or not, evicted and back, warming), the same oldest offset a restore needs."""
    rng = np.random.default_rng(11)
    names = ["a", "b", "c", "u1", "u2", "d", "e"]
    keys = [
        names[i] for i in rng.choice(len(names), size=400, p=[0.3, 0.2, 0.1, 0.2, 0.1, 0.05, 0.05])
    ]
    one, many = Room(max_keys=4), Room(max_keys=4)
    single: list = []
    x = np.arange(len(keys), dtype=np.float64).reshape(-1, 1)
    offsets = np.arange(len(keys), dtype=np.int64)
    closed: list[int] = []
    for start in range(0, len(keys), 37):
        part = slice(start, start + 37)
        single += _feed(one.room, P0, keys[part], first_offset=start)
        batch = many.room.push_many(P0, keys[part], x[part], offsets[part])
        closed += (batch.rows + start).tolist()
        for j, row in enumerate((batch.rows + start).tolist()):
            window = single[row]
            assert window is not None and np.array_equal(batch.values[j], window.values)
            assert batch.first_offsets[j] == window.first_offset
        many.room.end_batch({P0: min(start + 37, len(keys))})
        one.room.end_batch({P0: min(start + 37, len(keys))})
        assert many.room._parts[P0].needed == one.room._parts[P0].needed  # noqa: SLF001
    assert closed == [i for i, w in enumerate(single) if w is not None]
    assert one.room._parts[P0].store.evicted > 0  # noqa: SLF001 - evictions were exercised
