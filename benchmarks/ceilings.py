"""The Kafka client's ceilings: a bare group consumer with the worker's fetch settings, decoding
each poll one way or another and doing nothing else, timed from its partitions' assignment.

- `worker_decoder`: the worker's own ``worker.decode.decode_batch`` with the model's
  `FeatureSpec`, into the array the worker scores (what the worker could reach at best);
- `stdlib_decoder`: ``json.loads`` per record (the ceiling the benchmark reported before; the
  worker decodes with orjson, so a ratio against it flatters the worker).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from kafka import KafkaConsumer
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka_helpers import unique_name

from anomaly_contract.model_dir import load_bundle
from worker.decode import FeatureSpec, decode_batch
from worker.settings import WorkerSettings

Decoder = Callable[[list[bytes]], int]  # a poll's values -> how many decoded into rows


def feature_spec(model_dir: Path, s: WorkerSettings) -> FeatureSpec:
    """The spec the worker decodes with: the current model's features, the settings' limits."""
    m = load_bundle(model_dir).manifest
    return FeatureSpec(
        names=tuple(m.feature_names),
        image_shape=tuple(m.image_shape) if m.image_shape else None,
        max_record_bytes=s.max_record_bytes,
        max_abs_value=s.max_abs_value,
    )


def worker_decoder(spec: FeatureSpec) -> Decoder:
    """The worker's decode of a batch into the array it scores; returns its valid rows."""
    return lambda values: int(decode_batch(values, spec).x.shape[0])


def stdlib_decoder(values: list[bytes]) -> int:
    """``json.loads`` per record, touching one feature (the old ceiling's loop)."""
    checksum = 0.0
    for v in values:
        checksum += json.loads(v)["features"][0]
    return len(values)


class _Assigned(ConsumerRebalanceListener):
    def __init__(self) -> None:
        self.at: float | None = None

    def on_partitions_revoked(self, revoked: object) -> None:
        pass

    def on_partitions_assigned(self, assigned: object) -> None:
        if assigned and self.at is None:
            self.at = time.monotonic()


def bare_consume(bootstrap: str, topic: str, n: int, s: WorkerSettings, decode: Decoder) -> float:
    """A group consumer with the worker's fetch settings, ``decode`` on each poll, no commits.

    Records/s from the partitions' assignment to the last record. The consumer options are those
    ``anomaly-worker`` builds its consumer with from ``s``."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=unique_name("bench-bare"),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=s.batch_max_records,
        fetch_max_bytes=s.fetch_max_bytes,
        max_partition_fetch_bytes=s.max_partition_fetch_bytes,
        fetch_max_wait_ms=min(500, max(10, s.batch_max_wait_ms)),
    )
    listener = _Assigned()
    consumer.subscribe([topic], listener=listener)
    seen = valid = 0
    try:
        while seen < n:
            values = [r.value for recs in consumer.poll(timeout_ms=500).values() for r in recs]
            if values:
                valid += decode(values)
                seen += len(values)
        done = time.monotonic()
    finally:
        consumer.close()
    if valid != seen or listener.at is None:
        raise SystemExit(f"bare consumer decoded {valid} of {seen} records")
    return n / (done - listener.at)
