"""Worker records/s with a windowed model against the point model, in the same run.

One local broker, one 3-partition topic of keyed records (1,000 keys, 3 channels, listed as a
``features`` array, the Kafka key the series key). ``anomaly-worker`` runs as a subprocess
(`tests/worker_harness`) with its default settings, with a windowed model of the default
architecture, a windowed dense one (NumPy engine) and a point dense model of the same 3
features, each from partitions assigned (``/readyz``) to its last batch (the worker's own
``anomaly_worker_last_batch_timestamp_seconds``, read once every record is counted). Before
each model's workers, the same topic is read by the honest ceiling of `throughput.py`: a bare
kafka-python consumer with the worker's fetch settings decoding each poll with the worker's own
``decode_batch`` and the model's spec (`ceilings.py`), and the table gives b/a against it.
The models are trained here by ``anomaly-trainer fit`` with its defaults (``--window 32
--key-column key`` for the windowed ones) on the same CSV, a few epochs (speed is measured, not
quality).

    python benchmarks/series_throughput.py                     # 200,000 records
    python benchmarks/series_throughput.py --records 20000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # kafka_helpers, worker_harness: shared with the tests
sys.path.insert(0, str(REPO / "tests" / "unit" / "worker"))  # the tests' small model builders
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
from ceilings import bare_consume, feature_spec, worker_decoder  # noqa: E402
from kafka import KafkaProducer  # noqa: E402
from kafka_helpers import LocalKafka  # noqa: E402
from worker_harness import Topics, WorkerProcess, make_topics, worker_env  # noqa: E402
from worker_series_models import CHANNELS, keyed_series  # noqa: E402

from worker.settings import WorkerSettings  # noqa: E402

PARTITIONS = 3


def produce(bootstrap: str, topic: str, x: np.ndarray, keys: np.ndarray) -> float:
    """The rows as ``{"id", "features"}`` records keyed by their series; returns records/s."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=20, batch_size=512 * 1024
    )
    t0 = time.monotonic()
    for i, (row, key) in enumerate(zip(x.round(4).tolist(), keys, strict=True)):
        value = json.dumps({"id": i, "features": row}).encode()
        producer.send(topic, value=value, key=str(key).encode())
    producer.flush()
    producer.close()
    return len(x) / (time.monotonic() - t0)


def fit(csv: Path, model_dir: Path, epochs: int, *extra: str) -> None:
    """``anomaly-trainer fit CSV --model-dir DIR`` with this repository's code."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "trainer", "fit", str(csv), "--model-dir", str(model_dir),
           "--epochs", str(epochs), "--quiet", *extra]  # fmt: skip
    subprocess.run(cmd, env=env, check=True, timeout=1800)


def write_csv(path: Path, x: np.ndarray, keys: np.ndarray) -> None:
    lines = ["key," + ",".join(CHANNELS)]
    lines += [f"{k}," + ",".join(f"{v:.4f}" for v in row) for k, row in zip(keys, x, strict=True)]
    path.write_text("\n".join(lines) + "\n")


def run_worker(
    bootstrap: str, topics: Topics, model_dir: Path, n: int, work: Path, name: str, blas: int
) -> dict[str, float]:
    """One worker (``ANOMALY_BLAS_THREADS=blas``) from ready to ``n`` records counted:
    records/s and the outcomes."""
    env = worker_env(bootstrap, topics, model_dir, base={}, BLAS_THREADS=blas)
    w = WorkerProcess(work / f"worker-{name}.log", env)
    try:
        w.wait_ready(timeout_s=120, poll_s=0.02)
        t0 = time.time()
        w.wait_records(n, timeout_s=900, poll_s=0.5)
        # the end: the worker's own clock at its last batch, not this scrape's
        elapsed = w.last_metrics[("anomaly_worker_last_batch_timestamp_seconds", ())] - t0
        counts = w.counts()
        warming = w.metric("anomaly_worker_records_total", outcome="warming")
        w.terminate()
    finally:
        w.close()
    return {"records_per_s": round(n / elapsed), "seconds": round(elapsed, 2), **counts,
            "warming": warming}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument(
        "--blas-threads", default="1", help="ANOMALY_BLAS_THREADS values to run, e.g. 1,0"
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-series-"))
    keys = [f"machine-{i:04d}" for i in range(args.keys)]
    broker = LocalKafka()
    broker.start()
    try:
        # the trainer splits each key in time and wants ~7 windows of rows per key
        train_x, train_keys = keyed_series(
            8 * args.window * args.keys, keys, seed=0, spike_rate=0.0
        )
        write_csv(work / "train.csv", train_x, train_keys)
        windowed = ["--window", str(args.window), "--key-column", "key"]
        models = {
            "windowed, default architecture": windowed,
            "windowed dense": [*windowed, "--architecture", "dense"],
            "point": [],
        }
        for i, flags in enumerate(models.values()):
            fit(work / "train.csv", work / f"models-{i}", args.epochs, *flags)
        x, stream_keys = keyed_series(args.records, keys, seed=1, spike_rate=0.01)
        results: dict[str, object] = {}
        for i, name in enumerate(models):
            model_dir = work / f"models-{i}"
            topics = make_topics(broker.bootstrap, f"series-{i}", PARTITIONS)
            rate = produce(broker.bootstrap, topics.input, x, stream_keys)
            print(f"{name}: produced {args.records} at {rate:,.0f}/s", file=sys.stderr)
            s = WorkerSettings.model_construct()  # the worker's defaults
            ceiling = bare_consume(broker.bootstrap, topics.input, args.records, s, len)  # warm-up
            ceiling = bare_consume(
                broker.bootstrap, topics.input, args.records, s,
                worker_decoder(feature_spec(model_dir, s)),
            )  # fmt: skip
            results[f"{name}, ceiling"] = {"records_per_s": round(ceiling)}
            print(f"{name}: ceiling (consume + decode_batch) {ceiling:,.0f}/s", file=sys.stderr)
            for blas in (int(b) for b in args.blas_threads.split(",")):
                topics.group = f"{topics.group}-b{blas}"  # each run reads the topic from the start
                run = f"{name}, blas_threads={blas}"
                results[run] = run_worker(
                    broker.bootstrap, topics, model_dir, args.records, work, run, blas
                )
                results[run]["b_over_ceiling"] = round(results[run]["records_per_s"] / ceiling, 3)
                print(f"{run}: {results[run]}", file=sys.stderr)
    finally:
        broker.close()
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "records": args.records,
        "keys": args.keys,
        "window": args.window,
        "channels": len(CHANNELS),
        "partitions": PARTITIONS,
        **results,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
