"""Demo producer: streams synthetic sensor readings (with injected anomalies) into a topic.

Used by the local demo (`make demo`) and by the Compose stack. The truth fields of
`make_sensor_records` (label, kind) never reach the worker; the demo keeps them aside to score
precision and recall live. A few malformed records are mixed in so the dead-letter path shows.

    python -m scripts.demo_producer --bootstrap localhost:9092 --topic sensor-readings --rate 500
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kafka import KafkaProducer

from trainer.builtin_data import make_sensor_records

TRUTH_FIELDS = ("label", "anomaly_kind", "anomaly_sensor")
# Every POISON_EVERY-th record is replaced by a malformed one (the same ones each run).
POISON_EVERY = 997
POISON = [b"{not json", b"", b'{"id": "p", "features": "seven"}', b'{"id": "p", "temp_c": NaN}']


@dataclass
class ProducerStats:
    sent: int = 0
    injected: int = 0
    poison: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def stream_readings(
    bootstrap: str,
    topic: str,
    *,
    rate: float,
    stop: threading.Event,
    stats: ProducerStats,
    anomaly_rate: float = 0.03,
    seed: int = 2026,
    limit: int | None = None,
    on_error: Callable[[Exception], None] | None = None,
) -> None:
    """Send readings at ``rate`` records/s until ``stop`` is set (or ``limit`` records)."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, client_id="demo-producer"
    )
    chunk = max(1, int(rate / 10))
    index = 0
    started = time.monotonic()
    try:
        while not stop.is_set() and (limit is None or index < limit):
            n = chunk if limit is None else min(chunk, limit - index)
            for rec in make_sensor_records(
                n, anomaly_rate=anomaly_rate, seed=seed, start_index=index
            ):
                index += 1
                key = rec["id"].encode()
                if index % POISON_EVERY == 0:
                    producer.send(
                        topic, key=key, value=POISON[(index // POISON_EVERY) % len(POISON)]
                    )
                    with stats.lock:
                        stats.poison += 1
                    continue
                label = int(rec["label"])
                value = {k: v for k, v in rec.items() if k not in TRUTH_FIELDS}
                producer.send(topic, key=key, value=json.dumps(value).encode())
                with stats.lock:
                    stats.sent += 1
                    stats.injected += label
                    stats.labels[rec["id"]] = label
            # Pace to the target rate without drifting.
            ahead = index / rate - (time.monotonic() - started)
            if ahead > 0:
                stop.wait(ahead)
        producer.flush()
    except Exception as exc:  # reported to the caller; the demo keeps running its summary
        if on_error is None:
            raise
        on_error(exc)
    finally:
        producer.close(timeout=5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--bootstrap", default=os.environ.get("ANOMALY_BOOTSTRAP_SERVERS", "localhost:9092")
    )
    p.add_argument("--topic", default=os.environ.get("ANOMALY_INPUT_TOPIC", "sensor-readings"))
    p.add_argument("--rate", type=float, default=float(os.environ.get("DEMO_RATE", "200")))
    p.add_argument("--anomaly-rate", type=float, default=0.03)
    p.add_argument("--limit", type=int, default=None, help="stop after this many records")
    args = p.parse_args()
    stats = ProducerStats()
    stop = threading.Event()
    try:
        stream_readings(
            args.bootstrap,
            args.topic,
            rate=args.rate,
            stop=stop,
            stats=stats,
            anomaly_rate=args.anomaly_rate,
            limit=args.limit,
        )
    except KeyboardInterrupt:
        stop.set()
    print(
        f"sent {stats.sent} readings ({stats.injected} injected anomalies), {stats.poison} malformed"
    )


if __name__ == "__main__":
    main()
