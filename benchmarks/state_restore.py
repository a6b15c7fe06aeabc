"""What restoring the worker's series state costs: replay time and memory per key, by key count.

One local broker, one single-partition topic of keyed records (3 channels), keys sent round
robin for W + 2 rounds: the worst order for a restore, since every key's window then spans
K * W records of the partition. The worker's own restore path runs in this process:

  1. live: every record read (`worker.replay_reader.KafkaReplayReader`), decoded and keyed as
     the worker does (`worker.series_batch.replay_rows`) and pushed into a `SeriesStateRoom`
     of `SeriesState` stores, 1,000 records at a time with a batch end after each (as the loop
     does);
  2. restore: a fresh room, for a fresh copy of the model, rebuilt from the plan the live room
     would commit at the end offset (`SeriesStateRoom.restore`), timed; then every key's window
     is compared with the live room's (they must be identical);
  3. memory: what the room allocates (tracemalloc) when every key's window is filled, per key,
     next to the windows' own arrays (W * (channels + 1) * 8 bytes per key); no Kafka here.

The model is a random dense network on the flattened window (scoring is not timed here) whose
normaliser knows every key, so each key needs exactly its window replayed.

    python benchmarks/state_restore.py                      # 10,000 and 100,000 keys, W = 32
    python benchmarks/state_restore.py --keys 2000 --json out.json     # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # kafka_helpers: shared with the tests
sys.path.insert(0, str(REPO / "tests" / "unit" / "worker"))  # the tests' windowed manifest

import numpy as np  # noqa: E402
from kafka import KafkaProducer  # noqa: E402
from kafka_helpers import LocalKafka, create_topic, unique_name  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402
from worker_series_models import series_manifest  # noqa: E402

from anomaly_contract.artifact import ModelBundle, Scaler  # noqa: E402
from anomaly_contract.engines import DenseEngine  # noqa: E402
from anomaly_contract.key_normaliser import KeyNormaliser  # noqa: E402
from anomaly_contract.key_thresholds import KeyThresholds  # noqa: E402
from anomaly_contract.series import SeriesModel, SeriesState  # noqa: E402
from worker.client import Partition  # noqa: E402
from worker.decode import FeatureSpec  # noqa: E402
from worker.metrics import StateMetrics  # noqa: E402
from worker.replay_reader import KafkaReplayReader  # noqa: E402
from worker.series_batch import replay_rows  # noqa: E402
from worker.settings import WorkerSettings  # noqa: E402
from worker.state import ReplayPlan, SeriesStateRoom  # noqa: E402

CHANNELS = ("temp", "rpm", "load")
LIVE_BATCH = 1000


def windowed_bundle(keys: list[str], window: int) -> ModelBundle:
    """A windowed dense model (random weights, NumPy engine) whose normaliser knows ``keys``."""
    rng = np.random.default_rng(0)
    c = len(CHANNELS)
    size = window * c
    engine = DenseEngine(
        kernels=[rng.normal(0, 0.1, (size, 8)), rng.normal(0, 0.1, (8, size))],
        biases=[np.zeros(8), np.zeros(size)],
        activations=["tanh", "linear"],
        n_encoder=1,
    )
    ones, zeros = np.ones(c), np.zeros(c)
    normaliser = KeyNormaliser({k: zeros for k in keys}, {k: ones for k in keys}, zeros, ones)
    thresholds = KeyThresholds(percentile=99.0, min_windows=20, pooled=1.0)
    manifest = series_manifest(
        version="v1",
        window=window,
        latent=8,
        normaliser=normaliser,
        thresholds=thresholds,
        calibration_errors=np.linspace(0.1, 2.0, 100),
        percentile=99.0,
        rows=0,
        source="synthetic:state-restore-benchmark",
    )
    identity = Scaler("standard", zeros, ones)
    return ModelBundle(manifest, identity, Path("."), engine=engine)  # type: ignore[arg-type]


def produce_round_robin(bootstrap: str, topic: str, keys: list[str], rounds: int) -> float:
    """``rounds`` records per key, keys in turn; returns seconds."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=20, batch_size=512 * 1024
    )
    rng = np.random.default_rng(1)
    t0 = time.monotonic()
    for r in range(rounds):
        noise = rng.normal(0, 1, size=(len(keys), len(CHANNELS))).round(4)
        for key, row in zip(keys, noise.tolist(), strict=True):
            value = json.dumps({"features": row}).encode()
            producer.send(topic, key=key.encode(), value=value)
        print(f"  produced round {r + 1}/{rounds}", file=sys.stderr)
    producer.flush()
    producer.close()
    return time.monotonic() - t0


class Clock:
    """time.monotonic, moved forward on demand (to make the room refresh its replay plan)."""

    def __init__(self) -> None:
        self.skew = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skew


def room_for(
    bundle: ModelBundle, max_keys: int, cap: int, clock: Clock | None = None
) -> SeriesStateRoom:
    model = SeriesModel(bundle)  # a fresh normaliser: what a restarted worker starts with
    trained = model.normaliser.trained_keys()
    return SeriesStateRoom(
        new_store=lambda: SeriesState(model, max_keys),
        learns_online=lambda key: key not in trained,
        replay_cap=cap,
        metrics=StateMetrics(CollectorRegistry()),
        clock=clock or Clock(),
    )


def state_bytes_per_key(bundle: ModelBundle, keys: list[str], window: int) -> float:
    """Bytes the room allocates per key once every key's window is full (tracemalloc)."""
    room = room_for(bundle, len(keys), 10**12)
    tp = Partition("memory", 0)
    rows = np.zeros((len(keys), len(CHANNELS)))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    offset = 0
    for _ in range(window):
        offsets = np.arange(offset, offset + len(keys), dtype=np.int64)
        room.push_many(tp, keys, rows, offsets)
        offset += len(keys)
    room.end_batch({tp: offset})
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return grown / len(keys)


def same_windows(a: SeriesState, b: SeriesState) -> bool:
    """Every key's window (values, offsets, fill) identical in both stores."""
    left = a._windows.export_state()  # noqa: SLF001 - the benchmark checks the stores' content
    right = b._windows.export_state()  # noqa: SLF001
    if not np.array_equal(left["keys"], right["keys"]):
        return False
    if not np.array_equal(left["filled"], right["filled"]):
        return False
    return bool(
        np.array_equal(left["values"], right["values"])
        and np.array_equal(left["offsets"], right["offsets"])
    )


def measure(n_keys: int, window: int, bootstrap: str) -> dict[str, object]:
    keys = [f"machine-{i:06d}" for i in range(n_keys)]
    rounds = window + 2
    topic = unique_name(f"restore-{n_keys}")
    create_topic(bootstrap, topic, partitions=1)
    produce_s = produce_round_robin(bootstrap, topic, keys, rounds)
    end = n_keys * rounds
    tp = Partition(topic, 0)
    bundle = windowed_bundle(keys, window)
    settings = WorkerSettings(bootstrap_servers=bootstrap, input_topic=topic)
    spec = FeatureSpec(
        names=CHANNELS, image_shape=None, max_record_bytes=1 << 20, max_abs_value=1e12
    )
    rows_of = replay_rows(spec, None)
    cap = end  # nothing cut: the figure is the full cost
    reader = KafkaReplayReader(settings)

    clock = Clock()
    live = room_for(bundle, n_keys, cap, clock)
    t0 = time.perf_counter()
    for records in reader.read(tp, 0, end):
        chunk_keys, chunk_x, chunk_offsets = rows_of(records)
        for start in range(0, len(chunk_keys), LIVE_BATCH):
            part = slice(start, start + LIVE_BATCH)
            live.push_many(tp, chunk_keys[part], chunk_x[part], chunk_offsets[part])
            live.end_batch({tp: int(chunk_offsets[part][-1]) + 1})
    live_s = time.perf_counter() - t0
    clock.skew += 3600.0  # the commit at the end carries a plan computed there
    live.end_batch({tp: end})
    metadata = live.commit_metadata(tp, end)
    plan = ReplayPlan.from_metadata(metadata)
    assert plan is not None

    restored = room_for(bundle, n_keys, cap)
    t0 = time.perf_counter()
    n_read = restored.restore(tp, end, metadata, reader, rows_of)
    restore_s = time.perf_counter() - t0
    identical = same_windows(live._parts[tp].store, restored._parts[tp].store)  # type: ignore[arg-type]  # noqa: SLF001
    reader.close()
    return {
        "keys": n_keys,
        "window": window,
        "channels": len(CHANNELS),
        "records_in_partition": end,
        "replay_start": plan.start,
        "records_replayed": n_read,
        "restore_seconds": round(restore_s, 2),
        "replay_records_per_s": round(n_read / restore_s),
        "live_push_records_per_s": round(end / live_s),
        "produce_records_per_s": round(end / produce_s),
        "state_bytes_per_key": round(state_bytes_per_key(bundle, keys, window)),
        "window_array_bytes_per_key": window * (len(CHANNELS) + 1) * 8,
        "metadata_bytes": len(metadata.encode()),
        "restored_windows_identical": identical,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", default="10000,100000", help="comma-separated key counts")
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    broker = LocalKafka()
    broker.start()
    try:
        results = [measure(int(k), args.window, broker.bootstrap) for k in args.keys.split(",")]
    finally:
        broker.close()
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "results": results,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if all(r["restored_windows_identical"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
