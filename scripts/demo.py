"""The main job, end to end on this machine: `make demo`.

1. starts a local Kafka broker (deploy/local/kafka.sh),
2. trains a model on builtin:sensors and publishes it (with a report of plots),
3. starts the worker on a three-partition topic,
4. streams normal readings with injected anomalies (and a few malformed records),
5. prints a live summary: records scored, anomalies found vs injected, precision/recall so far,
   dead letters, and the metrics URL.

Ctrl-C (or --duration, SIGTERM, SIGHUP, a closed stdout) stops the producer, lets the worker
drain and stop on SIGTERM, and stops the broker; a second Ctrl-C skips the drain, never the
stopping. The trainer, the worker and the broker's script run in sessions of their own, so a
terminal's signals reach only the demo, which stops them in that order (`scripts.demo_terminal`).
Exit code 0 when the worker accounted for every record it was sent.
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
from typing import TextIO

from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient, NewTopic

from scripts.demo_producer import ProducerStats, stream_readings
from scripts.demo_terminal import Console, StopRequest

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = ROOT / "deploy" / "local" / "kafka.sh"
BIN = Path(sys.executable).parent
INPUT, OUTPUT, DLQ = "sensor-readings", "anomalies", "anomalies-dlq"
DRAIN_TIMEOUT_S = 30.0  # after a stop request: how long the worker may take to catch up
CHILD_STOP_TIMEOUT_S = 15.0  # the trainer after SIGINT, the worker after SIGTERM


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


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


def _accounted(metrics: dict[str, float]) -> float:
    return sum(v for k, v in metrics.items() if k.startswith("anomaly_worker_records_total"))


def _parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Run the whole product locally.")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--rate", type=float, default=300.0, help="records per second")
    p.add_argument("--kafka-port", type=int, default=int(os.environ.get("KAFKA_PORT", "9092")))
    p.add_argument("--metrics-port", type=int, default=8000)
    p.add_argument("--workdir", type=Path, default=ROOT / "out" / "demo")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: trainer's)")
    return p.parse_args()


class Demo:
    """One run: broker, model, worker and stream started in turn (`run`), then stopped in the
    reverse order (`shut_down`) however `run` ended."""

    def __init__(self, args: argparse.Namespace, stop: StopRequest, console: Console) -> None:
        self.args, self.stop, self.console = args, stop, console
        self.workdir: Path = args.workdir
        kafka_port = _free_port(args.kafka_port)
        self.metrics_port = _free_port(args.metrics_port)
        self.bootstrap = f"127.0.0.1:{kafka_port}"
        self.kafka_env = {
            **os.environ,
            "KAFKA_PORT": str(kafka_port),
            "KAFKA_DATA_DIR": str(self.workdir / "kafka"),
        }
        self.model_dir, self.report_dir = self.workdir / "models", self.workdir / "report"
        self.producer_stop = threading.Event()
        self.producer: threading.Thread | None = None
        self.collector: EventCollector | None = None
        self.worker: subprocess.Popen[bytes] | None = None

    def say(self, msg: str) -> None:
        self.console.line(f"[demo] {msg}")

    def run(self) -> int:
        self.say(f"starting Kafka on {self.bootstrap}")
        if self._kafka("start") != 0:
            self.say("the broker did not start")
            return 1
        if self.stop.is_set() or not self._train():
            return self.stop.exit_status if self.stop.is_set() else 1
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        admin.create_topics([NewTopic(INPUT, 3, 1), NewTopic(OUTPUT, 3, 1), NewTopic(DLQ, 1, 1)])
        admin.close()
        self._start_worker()
        return self._stream()

    def shut_down(self) -> None:
        """Producer, event reader, worker (SIGTERM: it finishes its batch), broker. Signals now
        only hurry the drain; nothing here raises, so the broker is always stopped."""
        self.producer_stop.set()
        if self.collector is not None:
            self.collector.stop.set()
            self.collector.join(timeout=5)
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(timeout=CHILD_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
        self._kafka("stop")
        self.say("stopped")

    def _kafka(self, command: str) -> int:
        """deploy/local/kafka.sh start|stop, its lines relayed to stderr (a closed pipe there
        would kill the script halfway with SIGPIPE)."""
        done = subprocess.run(
            [str(KAFKA_SH), command],
            env=self.kafka_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            check=False,
        )
        for line in done.stdout.splitlines():
            self.console.note(line)
        return done.returncode

    def _train(self) -> bool:
        """Fit and publish; a stop request interrupts the trainer (it publishes nothing then)."""
        self.say("training on builtin:sensors")
        fit = [str(BIN / "anomaly-trainer"), "fit", "builtin:sensors"]
        fit += ["--model-dir", str(self.model_dir), "--report", str(self.report_dir)]
        if self.args.epochs:
            fit += ["--epochs", str(self.args.epochs)]
        trainer = subprocess.Popen(
            fit, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        assert trainer.stdout is not None
        relay = threading.Thread(target=self._relay, args=(trainer.stdout,), daemon=True)
        relay.start()
        while trainer.poll() is None:
            if self.stop.wait(0.5):
                trainer.send_signal(signal.SIGINT)
                try:
                    trainer.wait(timeout=CHILD_STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    trainer.kill()
                    trainer.wait()
        relay.join(timeout=5)
        if trainer.returncode != 0 or self.stop.is_set():
            if not self.stop.is_set():
                self.say(f"training failed with exit code {trainer.returncode}")
            return False
        self.say(f"model published in {self.model_dir}; plots in {self.report_dir}")
        return True

    def _relay(self, lines: TextIO) -> None:
        for line in lines:
            self.console.line(line.rstrip("\n"))

    def _start_worker(self) -> None:
        env = {
            **os.environ,
            "ANOMALY_BOOTSTRAP_SERVERS": self.bootstrap,
            "ANOMALY_INPUT_TOPIC": INPUT,
            "ANOMALY_OUTPUT_TOPIC": OUTPUT,
            "ANOMALY_DLQ_TOPIC": DLQ,
            "ANOMALY_GROUP_ID": "demo-worker",
            "ANOMALY_MODEL_DIR": str(self.model_dir),
            "ANOMALY_METRICS_PORT": str(self.metrics_port),
            "ANOMALY_LOG_FORMAT": "json",
        }
        with open(self.workdir / "worker.log", "wb") as log:  # the worker keeps its own copy
            self.worker = subprocess.Popen(
                [str(BIN / "anomaly-worker")],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.say(f"worker started (log: {self.workdir / 'worker.log'})")
        self.say(f"metrics: http://127.0.0.1:{self.metrics_port}/metrics  readiness: /readyz")

    def _stream(self) -> int:
        """Stream and print summaries until a stop request or --duration, then drain."""
        assert self.worker is not None
        stats = ProducerStats()
        self.producer = threading.Thread(
            target=stream_readings,
            daemon=True,
            kwargs={
                "bootstrap": self.bootstrap,
                "topic": INPUT,
                "rate": self.args.rate,
                "stop": self.producer_stop,
                "stats": stats,
            },
        )
        self.producer.start()
        self.collector = EventCollector(self.bootstrap)
        self.collector.start()
        deadline = None if self.args.duration is None else time.monotonic() + self.args.duration
        self.say("streaming; Ctrl-C to stop")
        while deadline is None or time.monotonic() < deadline:
            if self.stop.wait(2.0 if deadline is None else min(2.0, deadline - time.monotonic())):
                break
            if self.worker.poll() is not None:
                self.say(
                    f"worker exited with {self.worker.returncode}; see {self.workdir / 'worker.log'}"
                )
                return 1
            self.console.line(_summary(stats, self.collector, _metrics(self.metrics_port)))
        return self._drain(stats)

    def _drain(self, stats: ProducerStats) -> int:
        """Stop the producer and let the worker finish what was sent (a second signal cuts it short)."""
        assert self.producer is not None and self.collector is not None
        self.producer_stop.set()
        self.producer.join(timeout=10)
        with stats.lock:
            total = stats.sent + stats.poison
        until = time.monotonic() + DRAIN_TIMEOUT_S
        metrics = _metrics(self.metrics_port)
        while time.monotonic() < until and _accounted(metrics) < total:
            if self.stop.hurry.wait(0.5):
                break
            metrics = _metrics(self.metrics_port)
        self.stop.hurry.wait(1.0)  # the event reader catches up with the last events
        self.console.line(_summary(stats, self.collector, metrics))
        done = _accounted(metrics)
        self.say(f"{total} records sent, {done:.0f} accounted for (scored or dead-lettered)")
        return 0 if done >= total else 1


def main() -> int:
    args = _parse_args()
    stop = StopRequest()
    stop.install()
    shutil.rmtree(args.workdir, ignore_errors=True)
    (args.workdir / "kafka").mkdir(parents=True)
    demo = Demo(args, stop, Console(stop))
    try:
        return demo.run()
    finally:
        demo.shut_down()


if __name__ == "__main__":
    sys.exit(main())
