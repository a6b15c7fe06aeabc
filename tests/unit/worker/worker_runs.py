"""A worker on the in-memory client seam (`fake_client`), run until it has handed out everything
it was given and idled: the loop tests' harness."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from fake_client import FakeConsumer, FakeProducer, FakeReplayReader
from prometheus_client import CollectorRegistry

from worker.http import HealthState
from worker.loop import Worker
from worker.metrics import WorkerMetrics
from worker.reload import ModelWatcher
from worker.settings import WorkerSettings

TOPIC = "in"


class Run:
    """A worker on fakes, stopped once the consumer has handed out everything and idled."""

    def __init__(
        self,
        model_dir: Path,
        consumer: FakeConsumer,
        model_poll_s: float = 60.0,
        **settings: object,
    ) -> None:
        self.consumer = consumer
        self.producer = FakeProducer()
        self.registry = CollectorRegistry()
        metrics = WorkerMetrics(self.registry)
        self.replay_reader = FakeReplayReader(consumer)
        s = WorkerSettings(**{"input_topic": TOPIC, "model_dir": model_dir, "batch_max_wait_ms": 20, **settings})  # type: ignore[arg-type]  # fmt: skip
        watcher = ModelWatcher(model_dir, model_poll_s, metrics)
        self.worker = Worker(
            s,
            metrics,
            HealthState(30.0),
            watcher,
            consumer_factory=lambda _: consumer,
            producer_factory=lambda _: self.producer,
            replay_reader_factory=lambda _: self.replay_reader,
        )
        self.idle_since: float | None = None
        previous = consumer.on_poll

        def stop_when_idle(c: FakeConsumer, n: int) -> None:
            if previous is not None:
                previous(c, n)
            drained = c.assigned and all(c.positions[tp] >= len(c.log[tp]) for tp in c.assigned)
            if not drained:
                self.idle_since = None
            elif self.idle_since is None:
                self.idle_since = time.monotonic()
            elif time.monotonic() - self.idle_since > 0.5:
                self.worker.stop()

        consumer.on_poll = stop_when_idle

    def run(self) -> int:
        done: list[int] = []
        thread = threading.Thread(target=lambda: done.append(self.worker.run()), daemon=True)
        thread.start()
        thread.join(120)
        assert done, "the worker did not stop"
        return done[0]

    def count(self, outcome: str) -> float:
        value = self.registry.get_sample_value("anomaly_worker_records_total", {"outcome": outcome})
        return value or 0.0


def successor(consumer: FakeConsumer, run: Run, delivery: str) -> FakeConsumer:
    """A fresh group member that takes over ``consumer``'s partitions where the group's
    commits (or, exactly once, the last transaction's offsets) left them."""
    fresh = FakeConsumer(consumer.topic, n_partitions=len(consumer.log))
    fresh.log = consumer.log
    if delivery == "exactly_once":
        for offsets, metadata in zip(run.producer.txn_offsets, run.producer.txn_metadata, strict=True):  # fmt: skip
            fresh.committed_offsets.update(offsets)
            fresh.committed_meta.update(metadata)
    else:
        fresh.committed_offsets = dict(consumer.committed_offsets)
        fresh.committed_meta = dict(consumer.committed_meta)
    fresh.positions = {tp: fresh.committed_offsets.get(tp, 0) for tp in fresh.log}
    return fresh


def rounded(value: object) -> object:
    """``value`` with its floats to 9 significant digits, for comparing two runs' outputs: a
    restore scores in other batch sizes than the live path, which may move the last bits of a
    matrix product."""
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value
