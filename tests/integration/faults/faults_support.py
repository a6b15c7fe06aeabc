"""What the fault-injection tests share beyond tests/worker_harness.py: their worker settings and
the record-by-record accounting every fault test ends with.

Accounting: every input (partition, offset) of a `worker_harness.Stream` is either scored
(anomaly -> an event on the output topic, normal -> counted in /metrics only) or dead-lettered.
Which valid records must have an event is decided offline with
``anomaly_contract.model_dir.load_bundle(model_dir).score``.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
from kafka_helpers import ConsumedRecord, IsolationLevel, KafkaBrokerError, LocalKafka, consume_all
from worker_harness import (
    OUTCOMES,
    POISON,
    Source,
    Stream,
    Topics,
    WorkerFactory,
    WorkerProcess,
    make_topics,
)

# Records whose offline score is this close (relative) to the threshold may be flagged either way:
# a different batch composition can move a float32 score by ~1e-7.
BORDERLINE_REL = 1e-4
INPUT_PARTITIONS = 4
# Every worker of these tests: small batches, and a short session so a crashed member is noticed.
FAULT_SETTINGS: dict[str, object] = {"BATCH_MAX_RECORDS": 100, "SESSION_TIMEOUT_MS": 3000}


@dataclass
class Accounting:
    """What the output and DLQ topics hold for the records of a `Stream`."""

    events: list[ConsumedRecord]
    dead: list[ConsumedRecord]
    event_sources: Counter
    dead_sources: Counter
    must_flag: set[Source]
    may_flag: set[Source]
    poison: set[Source]

    @property
    def duplicate_events(self) -> int:
        return sum(self.event_sources.values()) - len(self.event_sources)

    @property
    def duplicate_dead(self) -> int:
        return sum(self.dead_sources.values()) - len(self.dead_sources)

    def summary(self) -> dict[str, int]:
        return {
            "events": len(self.events),
            "distinct_events": len(self.event_sources),
            "duplicate_events": self.duplicate_events,
            "dead_letters": len(self.dead),
            "duplicate_dead_letters": self.duplicate_dead,
        }


def expected_flags(
    scores: np.ndarray, threshold: float, sources: list[Source]
) -> tuple[set[Source], set[Source]]:
    """(records that must be flagged, records that may be flagged: borderline scores)."""
    margin = BORDERLINE_REL * threshold
    must = {sources[i] for i in np.flatnonzero(scores > threshold + margin).tolist()}
    maybe = {sources[i] for i in np.flatnonzero(np.abs(scores - threshold) <= margin).tolist()}
    return must, maybe


def account(
    bootstrap: str,
    topics: Topics,
    stream: Stream,
    bundle,  # type: ignore[no-untyped-def]  # anomaly_contract.artifact.ModelBundle
    isolation_level: IsolationLevel = "read_uncommitted",
    flags: tuple[set[Source], set[Source]] | None = None,
) -> Accounting:
    """Read the output and DLQ topics to their end and check every input record against them.

    Call after `wait_all_committed`. Asserts: every record offline scoring flags has an event,
    no other record has one, and exactly the poison records are dead-lettered, with their source
    in the headers. ``flags`` (must, may) replaces the offline flags of ``bundle``.
    """
    placed = stream.join()
    if flags is None:
        valid = np.flatnonzero(~stream.poison)
        sources = [placed[i] for i in valid.tolist()]
        scores = bundle.score(stream.x[valid]).scores
        must, maybe = expected_flags(scores, bundle.threshold, sources)
    else:
        must, maybe = flags
    poison = {placed[i] for i in np.flatnonzero(stream.poison).tolist()}
    events = consume_all(bootstrap, topics.output, isolation_level=isolation_level, timeout_s=60)
    dead = consume_all(bootstrap, topics.dlq, isolation_level=isolation_level, timeout_s=60)
    ev_src = Counter(
        (e.json()["source"]["partition"], e.json()["source"]["offset"]) for e in events
    )
    dl_src = Counter(
        (int(d.header("dlq.source.partition") or -1), int(d.header("dlq.source.offset") or -1))
        for d in dead
    )
    acc = Accounting(events, dead, ev_src, dl_src, must, maybe, poison)
    missing = must - set(ev_src)
    assert not missing, f"{len(missing)} anomalies without an event, e.g. {sorted(missing)[:5]}"
    extra = set(ev_src) - must - maybe
    assert not extra, (
        f"{len(extra)} events for records offline scoring calls normal: {sorted(extra)[:5]}"
    )
    assert set(dl_src) == poison, (
        f"dead letters {sorted(set(dl_src) ^ poison)[:5]} differ from the poison records"
    )
    assert all(e.json()["source"]["topic"] == topics.input for e in events)
    assert all(d.value == POISON for d in dead)
    return acc


def assert_counts_match(
    counts: dict[str, float], acc: Accounting, n_records: int, duplicates_allowed: bool = False
) -> None:
    """`/metrics` records_total (summed over the workers that ran) against what was sent."""
    n_poison = len(acc.poison)
    assert counts["invalid"] == len(acc.dead), counts
    assert counts["anomaly"] == len(acc.events), counts  # one event per anomaly counted
    total = sum(counts.values())
    if duplicates_allowed:
        assert total >= n_records, counts
    else:
        assert total == n_records, counts
        assert counts["invalid"] == n_poison
        assert counts["anomaly"] == len(acc.event_sources)
        assert counts["normal"] == n_records - n_poison - len(acc.event_sources)


def sum_counts(workers: list[WorkerProcess]) -> dict[str, float]:
    out = dict.fromkeys(OUTCOMES, 0.0)
    for w in workers:
        for k, v in w.counts(fresh=w.alive()).items():
            out[k] += v
    return out


@contextlib.contextmanager
def private_broker(
    tmp: Path, busy_model: Path, stem: str, settings: dict[str, object]
) -> Iterator[tuple[LocalKafka, Topics, WorkerFactory, Path]]:
    """A broker of the test's own (it is stopped or frozen: the session's must not be), fresh
    topics, a worker factory with ``settings``, and a copy of the busy model; all closed after."""
    model_dir = tmp / "models"
    shutil.copytree(busy_model, model_dir)
    broker = LocalKafka()
    workers = None
    try:
        broker.start()
        topics = make_topics(broker.bootstrap, stem, INPUT_PARTITIONS)
        workers = WorkerFactory(broker.bootstrap, tmp, topics, model_dir, settings)
        yield broker, topics, workers, model_dir
    finally:
        with contextlib.suppress(KafkaBrokerError):
            broker.resume()
        if workers is not None:
            workers.close()
        broker.close()


class ReadinessProbe:
    """Samples the worker every 100 ms from a thread: (monotonic time, /readyz 200, its
    ``broker_reachable`` field, the ``anomaly_worker_broker_reachable`` gauge == 1); None where
    the worker did not answer."""

    def __init__(self, worker: WorkerProcess) -> None:
        self.samples: list[tuple[float, bool | None, bool | None, bool | None]] = []
        self._worker = worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _readyz(self) -> tuple[bool | None, bool | None]:
        try:
            r = requests.get(self._worker.url("/readyz"), timeout=2)
            return r.status_code == 200, bool(r.json()["broker_reachable"])
        except (requests.RequestException, ValueError, KeyError):
            return None, None

    def _gauge(self) -> bool | None:
        try:
            text = requests.get(self._worker.url("/metrics"), timeout=2).text
        except requests.RequestException:
            return None
        for line in text.splitlines():
            if line.startswith("anomaly_worker_broker_reachable "):
                return float(line.split()[1]) == 1.0
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            values = (*self._readyz(), self._gauge())
            # Stamped once both answers are in: a sample before a moment saw only the state
            # before it (reads that straddle the broker's return count as after it).
            self.samples.append((time.monotonic(), *values))
            self._stop.wait(0.1)

    def stop(self) -> list[tuple[float, bool | None, bool | None, bool | None]]:
        self._stop.set()
        self._thread.join(5)
        return self.samples
