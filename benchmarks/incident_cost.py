"""What incident tracking costs per record: `worker.incidents.IncidentTracker` alone, no Kafka.

A synthetic partition: 200,000 records one 10 ms apart over 5,000 keys, 5 % anomalous at random,
fed in batches of 1,000 with the default rules (gap 300 s, 3 anomalies, updates every 60 s).
Prints microseconds per record and how many incident records came out.
"""

from __future__ import annotations

import random
import time

from worker.incidents import IncidentRules, IncidentTracker, ScoredRecord

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


if __name__ == "__main__":
    main()
