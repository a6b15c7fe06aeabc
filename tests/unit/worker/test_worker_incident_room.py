"""The incident room's pure parts (worker/incident_room.py): the replay start each commit
carries, merged into the series state's metadata, and where a restore starts from it."""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry

from worker.client import Partition
from worker.incident_room import METADATA_FORMAT, IncidentRoom, start_in_metadata, tracker_key
from worker.incidents import IncidentRules, ScoredRecord
from worker.metrics import IncidentMetrics
from worker.state import ReplayPlan

TP = Partition("in", 0)
RULES = IncidentRules(gap_ms=10_000, min_anomalies=2, update_ms=0)


class Rec:
    """The fields of an input record the room reads."""

    def __init__(self, offset: int) -> None:
        self.topic, self.partition, self.offset = TP.topic, TP.partition, offset


def _room(cap: int = 1000) -> IncidentRoom:
    return IncidentRoom(RULES, "incidents", cap, IncidentMetrics(CollectorRegistry()), lambda: 0)


def _anomaly(offset: int, ts: int) -> tuple[Rec, ScoredRecord]:
    return Rec(offset), ScoredRecord("k", ts, offset, True, 2.0, {"a": 1.0})


def test_each_commit_carries_the_start_of_the_runs_held_at_its_offset() -> None:
    room = _room()
    room.track([_anomaly(10, 1_000)], "v1")  # type: ignore[list-item]
    room.end_batch({TP: 11})
    room.track([_anomaly(11, 2_000)], "v1")  # type: ignore[list-item]
    room.end_batch({TP: 12})
    series = ReplayPlan(3).to_metadata()
    merged = room.commit_metadata(TP, 12, series)
    assert start_in_metadata(merged) == 10
    assert ReplayPlan.from_metadata(merged) == ReplayPlan(3)  # the series plan is kept
    alone = json.loads(room.commit_metadata(TP, 12, ""))
    assert alone == {"format": METADATA_FORMAT, "incidents": 10}
    # an offset with no mark at or before it leaves the series metadata as it is
    assert room.commit_metadata(Partition("in", 1), 12, series) == series


def test_a_redone_batch_replaces_the_marks_at_and_after_its_offset() -> None:
    room = _room()
    room.track([_anomaly(10, 1_000)], "v1")  # type: ignore[list-item]
    room.end_batch({TP: 20})
    room.forget([TP])  # the batch was aborted: its tracker goes, the batch is redone
    room.track([(Rec(15), ScoredRecord("k", 1_500, 15, False))], "v1")  # type: ignore[list-item]
    room.end_batch({TP: 20})
    assert start_in_metadata(room.commit_metadata(TP, 20, "")) == 20


def test_a_restore_starts_at_the_commit_start_within_the_cap() -> None:
    room = _room(cap=100)
    metadata = json.dumps({"format": METADATA_FORMAT, "incidents": 450})
    assert room.replay_start(TP, metadata, 500) == 450
    assert room.replay_start(TP, metadata, 600) == 500  # beyond the cap: cut to it
    assert room.replay_start(TP, None, 500) == 500  # nothing known: start afresh
    assert room.replay_start(TP, ReplayPlan(3).to_metadata(), 500) == 500
    assert start_in_metadata("not json") is None


def test_keyless_records_are_the_partitions_series() -> None:
    from anomaly_contract.windows import partition_series_key

    assert tracker_key(partition_series_key(3), 3) is None
    assert tracker_key("m1", 3) == "m1"


def test_a_tracker_is_restored_again_when_a_batch_starts_before_what_it_has_seen() -> None:
    room = _room()
    assert room.to_restore({TP: 0}) == [TP]  # no tracker yet
    room.track([_anomaly(10, 1_000), _anomaly(11, 2_000)], "v1")  # type: ignore[list-item]
    # current from where it ended on (offsets without a record or a score may lie between)
    assert room.to_restore({TP: 12}) == [] and room.to_restore({TP: 15}) == []
    assert room.to_restore({TP: 11}) == [TP]  # the input was sent back: seen already
    room.begin_replay(TP, 30)  # a replay rebuilds it as before offset 30
    assert room.to_restore({TP: 30}) == [] and room.to_restore({TP: 29}) == [TP]
    room.forget([TP])
    assert room.to_restore({TP: 30}) == [TP]
