"""What incident tracking costs per record, no Kafka: `worker.incidents.IncidentTracker` alone,
and the loop's whole incident path of a point model (`worker.incident_room`: keys from the Kafka
key, rows from the batch's scores, the tracker, incident records, the commit's replay start).

A synthetic partition: 200,000 records one 10 ms apart over 5,000 keys, 5 % anomalous at random,
fed in batches of 1,000 with the default rules (gap 300 s, 3 anomalies, updates every 60 s).
Prints microseconds per record and how many incident records came out.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry

from worker.client import Partition
from worker.decode import DecodedBatch
from worker.incident_room import IncidentRoom, point_rows
from worker.incidents import IncidentRules, IncidentTracker, ScoredRecord
from worker.metrics import IncidentMetrics
from worker.scoring import BatchScores

RECORDS, KEYS, ANOMALY_SHARE, BATCH = 200_000, 5_000, 0.05, 1_000


def synthetic_partition(seed: int = 0) -> list[ScoredRecord]:
    rng = random.Random(seed)
    records = []
    for offset in range(RECORDS):
        hot = rng.random() < ANOMALY_SHARE
        contributions = {"temp": 1.0, "rpm": 0.5} if hot else {}
        key = f"k{rng.randrange(KEYS)}"
        records.append(
            ScoredRecord(key, offset * 10, offset, hot, 2.0 if hot else 0.5, contributions)
        )
    return records


@dataclass(frozen=True)
class _Consumed:
    """The fields of a consumed record the incident path reads."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None = None
    headers: None = None


def wiring_us_per_record(records: list[ScoredRecord]) -> float:
    """The point model's incident path per record (scores given: the model is not timed)."""
    room = IncidentRoom(
        IncidentRules(300_000, 3, 60_000), "incidents", 1_000_000,
        IncidentMetrics(CollectorRegistry()), lambda: 0,
    )  # fmt: skip
    consumed = [
        _Consumed("bench", 0, r.offset, r.timestamp_ms, (r.key or "").encode()) for r in records
    ]
    severities = np.array([r.severity for r in records])
    anomalous = np.array([r.is_anomaly for r in records])
    start = time.perf_counter()
    for first in range(0, RECORDS, BATCH):
        batch = consumed[first : first + BATCH]
        n = len(batch)
        scores = BatchScores(
            severities[first : first + n], np.zeros((n, 2), np.float32), 1.0,
            np.ones(n, bool), anomalous[first : first + n],
        )  # fmt: skip
        decoded = DecodedBatch(np.zeros((n, 2)), list(range(n)), [None] * n)
        tops = {j: [("temp", 1.0), ("rpm", 0.5)] for j in np.flatnonzero(scores.is_anomaly)}
        _, rows = point_rows(batch, decoded, scores, tops, None)  # type: ignore[arg-type]
        room.track(rows, "v1")
        room.end_batch({Partition("bench", 0): batch[-1].offset + 1})
    return (time.perf_counter() - start) / RECORDS * 1e6


def main() -> None:
    records = synthetic_partition()
    tracker = IncidentTracker(IncidentRules(300_000, 3, 60_000), "bench", 0)
    emitted = 0
    start = time.perf_counter()
    for first in range(0, RECORDS, BATCH):
        batch = records[first : first + BATCH]
        emitted += len(tracker.process(batch, model_version="v1", now_ms=0).records)
    seconds = time.perf_counter() - start
    print(
        f"{seconds / RECORDS * 1e6:.2f} us/record; {emitted} incident records; "
        f"{tracker.open_incidents} open at the end"
    )
    print(f"{wiring_us_per_record(records):.2f} us/record for the point model's incident path")


if __name__ == "__main__":
    main()
