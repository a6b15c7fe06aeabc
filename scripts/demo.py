"""The main job, end to end on this machine: `make demo`.

1. starts a local Kafka broker (deploy/local/kafka.sh),
2. trains a model on builtin:sensors and publishes it (with a report of plots),
3. starts the worker on a three-partition topic,
4. streams normal readings with injected anomalies (and a few malformed records),
5. prints a live summary: records scored, anomalies found vs injected, precision/recall so far,
   dead letters, and the metrics URL.

Ctrl-C (or --duration) stops the producer, lets the worker drain and stop on SIGTERM, and stops
the broker. Exit code 0 when the worker accounted for every record it was sent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient, NewTopic

from scripts.demo_producer import ProducerStats, stream_readings

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = ROOT / "deploy" / "local" / "kafka.sh"
BIN = Path(sys.executable).parent
INPUT, OUTPUT, DLQ = "sensor-readings", "anomalies", "anomalies-dlq"


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _metrics(port: int) -> dict[str, float]:
    """Scrape the worker's /metrics into {series: value} (only what the summary needs)."""
    out: dict[str, float] = {}
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("anomaly_worker_") and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def _lag(metrics: dict[str, float]) -> float:
    return sum(v for k, v in metrics.items() if k.startswith("anomaly_worker_consumer_lag_records"))


class EventCollector(threading.Thread):
    """Reads the anomaly events so the summary can compare them with the injected truth."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(daemon=True)
        self.ids: set[str] = set()
        self.dead_letters = 0
        self.stop = threading.Event()
        self.bootstrap = bootstrap

    def run(self) -> None:
        consumer = KafkaConsumer(
            OUTPUT,
            DLQ,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
            consumer_timeout_ms=500,
        )
        while not self.stop.is_set():
            for tp, records in consumer.poll(timeout_ms=500).items():
                for r in records:
                    if tp.topic == DLQ:
                        self.dead_letters += 1
                    else:
                        self.ids.add(json.loads(r.value)["id"])
        consumer.close()


def _summary(stats: ProducerStats, events: EventCollector, metrics: dict[str, float]) -> str:
    with stats.lock:
        labels = dict(stats.labels)
        sent, injected, poison = stats.sent, stats.injected, stats.poison
    found = {i for i in events.ids if i in labels}
    tp = sum(labels[i] for i in found)
    precision = tp / len(found) if found else float("nan")
    recall = tp / injected if injected else float("nan")
    scored = sum(
        metrics.get(f'anomaly_worker_records_total{{outcome="{o}"}}', 0.0)
        for o in ("normal", "anomaly")
    )
    invalid = metrics.get('anomaly_worker_records_total{outcome="invalid"}', 0.0)
    return (
        f"sent {sent + poison:6d} | scored {scored:6.0f} | anomalies found {len(found):4d}"
        f" vs injected {injected:4d} | precision {precision:5.2f} recall {recall:5.2f}"
        f" | dead letters {invalid:3.0f}/{poison} | lag {_lag(metrics):5.0f}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description="Run the whole product locally.")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--rate", type=float, default=300.0, help="records per second")
    p.add_argument("--kafka-port", type=int, default=int(os.environ.get("KAFKA_PORT", "9092")))
    p.add_argument("--metrics-port", type=int, default=8000)
    p.add_argument("--workdir", type=Path, default=ROOT / "out" / "demo")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: trainer's)")
    args = p.parse_args()

    workdir: Path = args.workdir
    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "kafka").mkdir(parents=True)
    kafka_port = _free_port(args.kafka_port)
    metrics_port = _free_port(args.metrics_port)
    bootstrap = f"127.0.0.1:{kafka_port}"
    kenv = {**os.environ, "KAFKA_PORT": str(kafka_port), "KAFKA_DATA_DIR": str(workdir / "kafka")}

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker: subprocess.Popen[bytes] | None = None
    collector: EventCollector | None = None
    _say(f"starting Kafka on {bootstrap}")
    subprocess.run([str(KAFKA_SH), "start"], env=kenv, check=True)
    try:
        model_dir, report_dir = workdir / "models", workdir / "report"
        _say("training on builtin:sensors")
        fit = [
            str(BIN / "anomaly-trainer"),
            "fit",
            "builtin:sensors",
            "--model-dir",
            str(model_dir),
            "--report",
            str(report_dir),
        ]
        if args.epochs:
            fit += ["--epochs", str(args.epochs)]
        subprocess.run(fit, check=True)
        _say(f"model published in {model_dir}; plots in {report_dir}")

        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic(INPUT, 3, 1), NewTopic(OUTPUT, 3, 1), NewTopic(DLQ, 1, 1)])
        admin.close()

        wenv = {
            **os.environ,
            "ANOMALY_BOOTSTRAP_SERVERS": bootstrap,
            "ANOMALY_INPUT_TOPIC": INPUT,
            "ANOMALY_OUTPUT_TOPIC": OUTPUT,
            "ANOMALY_DLQ_TOPIC": DLQ,
            "ANOMALY_GROUP_ID": "demo-worker",
            "ANOMALY_MODEL_DIR": str(model_dir),
            "ANOMALY_METRICS_PORT": str(metrics_port),
            "ANOMALY_LOG_FORMAT": "json",
        }
        log = open(workdir / "worker.log", "wb")  # noqa: SIM115 - closed with the worker
        worker = subprocess.Popen([str(BIN / "anomaly-worker")], env=wenv, stdout=log, stderr=log)
        _say(f"worker started (log: {workdir / 'worker.log'})")
        _say(f"metrics: http://127.0.0.1:{metrics_port}/metrics  readiness: /readyz")

        stats = ProducerStats()
        producer = threading.Thread(
            target=stream_readings,
            daemon=True,
            kwargs={
                "bootstrap": bootstrap,
                "topic": INPUT,
                "rate": args.rate,
                "stop": stop,
                "stats": stats,
            },
        )
        producer.start()
        collector = EventCollector(bootstrap)
        collector.start()
        deadline = None if args.duration is None else time.monotonic() + args.duration
        _say("streaming; Ctrl-C to stop")
        try:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                stop.wait(2.0)
                if worker.poll() is not None:
                    _say(f"worker exited with {worker.returncode}; see {workdir / 'worker.log'}")
                    return 1
                print(_summary(stats, collector, _metrics(metrics_port)), flush=True)
        except KeyboardInterrupt:
            pass
        stop.set()
        producer.join(timeout=10)
        # Let the worker finish what was sent before stopping it.
        with stats.lock:
            total = stats.sent + stats.poison
        drain_until = time.monotonic() + 30
        m = _metrics(metrics_port)
        while time.monotonic() < drain_until:
            m = _metrics(metrics_port)
            done = sum(v for k, v in m.items() if k.startswith("anomaly_worker_records_total"))
            if done >= total:
                break
            time.sleep(0.5)
        time.sleep(1.0)
        print(_summary(stats, collector, m), flush=True)
        done = sum(v for k, v in m.items() if k.startswith("anomaly_worker_records_total"))
        _say(f"{total} records sent, {done:.0f} accounted for (scored or dead-lettered)")
        return 0 if done >= total else 1
    finally:
        if collector is not None:
            collector.stop.set()
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
        subprocess.run([str(KAFKA_SH), "stop"], env=kenv, check=False)
        _say("stopped")


if __name__ == "__main__":
    sys.exit(main())
