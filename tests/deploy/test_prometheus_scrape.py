"""A real Prometheus scrapes a real worker fed with a burst of anomalies, and evaluates the
project's own alert rules: AnomalyRatioHigh stays quiet on normal traffic and fires on the burst
(read from Prometheus' HTTP API).

The rules are deploy/prometheus/rules with their time windows shortened (5m -> 20s, `for` -> 5s)
so that the test takes seconds, not the minutes production wants; the expressions are otherwise
the ones that ship."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from deploy_helpers import rule_files
from kafka import KafkaProducer
from kafka_helpers import free_port
from worker_harness import Topics, WorkerFactory, WorkerProcess, make_topics

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

BIN = Path(sys.executable).parent
SCRAPE_S = 1
RATE = 200  # records per second from the producer thread
ALERT = "AnomalyRatioHigh"
_WINDOWS = {"5m": "20s", "10m": "30s", "15m": "30s"}


def shortened_rules() -> dict[str, Any]:
    """The shipped rules with test-sized windows, `for` durations and evaluation intervals."""
    groups = []
    for path in rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            group = dict(group, interval=f"{SCRAPE_S}s")
            rules = []
            for rule in group["rules"]:
                rule = dict(rule)
                expr = rule["expr"]
                for long, short in _WINDOWS.items():
                    expr = expr.replace(f"[{long}]", f"[{short}]")
                    expr = expr.replace(f"offset {long}", f"offset {short}")
                assert not re.search(r"\[\d+[mh]\]", expr), f"unshortened window in {expr}"
                rule["expr"] = expr
                if "for" in rule:
                    rule["for"] = "5s"
                rules.append(rule)
            group["rules"] = rules
            groups.append(group)
    return {"groups": groups}


class Prometheus:
    """/usr/bin/prometheus on a free port with a temporary config, rules and storage."""

    def __init__(self, workdir: Path, worker_port: int) -> None:
        binary = BIN / "prometheus" if (BIN / "prometheus").exists() else "/usr/bin/prometheus"
        if not Path(binary).exists():
            pytest.fail("prometheus is not installed: run scripts/bootstrap.sh (Debian package)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (workdir / "rules.yml").write_text(yaml.safe_dump(shortened_rules(), sort_keys=False))
        config = {
            "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
            "rule_files": ["rules.yml"],
            "scrape_configs": [
                {
                    "job_name": "anomaly-worker",
                    "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}],
                }
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                str(binary),
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            cwd=workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        pytest.fail(f"prometheus not ready in {timeout_s}s:\n{self.log_tail()}")

    def alerts(self, name: str) -> list[dict[str, Any]]:
        body = requests.get(f"{self.url}/api/v1/alerts", timeout=5).json()
        assert body["status"] == "success", body
        return [a for a in body["data"]["alerts"] if a["labels"]["alertname"] == name]

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5).json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class SensorStream:
    """A producer thread writing sensor readings at RATE/s; `anomaly_share` can change live."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from trainer.builtin_data import make_sensor_records

        truth = {"label", "anomaly_kind", "anomaly_sensor"}
        # Clean readings only (the model's threshold says ~1 % of these score above it), from
        # beyond the training rows.
        self._normal = [
            {k: v for k, v in r.items() if k not in truth}
            for r in make_sensor_records(4000, anomaly_rate=0.0, start_index=1_000_000)
        ]
        self.anomaly_share = 0.0
        self.sent = {"normal": 0, "anomaly": 0}
        self._producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20)
        self._topic = topic
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sensor-stream", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> SensorStream:
        self._thread.start()
        return self

    def _record(self, i: int) -> tuple[dict[str, Any], bool]:
        base = self._normal[i % len(self._normal)]
        anomalous = (i % 100) < self.anomaly_share * 100
        if not anomalous:
            return base, False
        # Every sensor far outside anything seen in training: unmistakably anomalous.
        return {k: (v * 4 + 50 if k != "id" else v) for k, v in base.items()}, True

    def _run(self) -> None:
        import json

        i = 0
        tick = 0.1
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                for _ in range(int(RATE * tick)):
                    record, anomalous = self._record(i)
                    self._producer.send(self._topic, json.dumps(record).encode())
                    self.sent["anomaly" if anomalous else "normal"] += 1
                    i += 1
                self._stop.wait(max(0.0, tick - (time.monotonic() - started)))
        except BaseException as exc:  # surfaced by the test, not lost in the thread
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._producer.close(timeout=10)


@pytest.fixture(scope="module")
def sensor_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("scrape") / "models"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [str(BIN / "anomaly-trainer"), "fit", "builtin:sensors", "--model-dir", str(models),
         "--epochs", "5", "--quiet"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return models


@pytest.fixture
def topics(kafka_bootstrap: str) -> Topics:
    return make_topics(kafka_bootstrap, "scrape", partitions=2)


@pytest.fixture
def worker(
    kafka_bootstrap: str, topics: Topics, sensor_model: Path, tmp_path: Path
) -> Iterator[WorkerProcess]:
    """A worker process on its own topics and group, ready (partitions assigned)."""
    workers = WorkerFactory(kafka_bootstrap, tmp_path)
    try:
        w = workers.start(topics, sensor_model, BATCH_MAX_WAIT_MS=100)
        w.wait_ready(timeout_s=90)
        yield w
    finally:
        workers.close()


def test_anomaly_ratio_alert_fires_on_a_burst_and_not_before(
    kafka_bootstrap: str, topics: Topics, worker: WorkerProcess, tmp_path: Path
) -> None:
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    prometheus = Prometheus(workdir, worker.wait_port())
    stream = SensorStream(kafka_bootstrap, topics.input)
    try:
        prometheus.wait_ready()
        stream.start()

        # Normal traffic: Prometheus scrapes the worker, the expected ratio comes from the
        # model, and the alert stays inactive over a full rule window.
        time.sleep(25)
        assert stream.error is None, stream.error
        up = prometheus.query('up{job="anomaly-worker"}')
        assert up and up[0]["value"][1] == "1", f"worker not scraped: {up}\n{prometheus.log_tail()}"
        scored = prometheus.query('sum(anomaly_worker_records_total{outcome=~"normal|anomaly"})')
        assert scored and float(scored[0]["value"][1]) >= 1000, scored
        expected = prometheus.query("anomaly_worker_expected_anomaly_ratio")
        assert expected and 0 < float(expected[0]["value"][1]) < 0.05, expected
        ratio = prometheus.query("job:anomaly_worker_anomaly_ratio:rate5m")
        assert ratio and float(ratio[0]["value"][1]) < 0.03, f"normal traffic ratio {ratio}"
        assert prometheus.alerts(ALERT) == [], "alert active on normal traffic"

        # The burst: half of the records are anomalies.
        stream.anomaly_share = 0.5
        deadline = time.monotonic() + 90
        firing: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not firing:
            time.sleep(1)
            assert stream.error is None, stream.error
            firing = [a for a in prometheus.alerts(ALERT) if a["state"] == "firing"]
        assert firing, (
            f"{ALERT} did not fire; ratio {prometheus.query('job:anomaly_worker_anomaly_ratio:rate5m')}"
            f"\n{prometheus.log_tail()}"
        )
        (alert,) = firing
        assert alert["labels"]["job"] == "anomaly-worker"
        assert alert["labels"]["severity"] == "warning"
        assert float(alert["value"]) > 0.03
        # The worker counted the anomalies it was sent (every one of them scores far above).
        anomalies = prometheus.query('sum(anomaly_worker_records_total{outcome="anomaly"})')
        assert float(anomalies[0]["value"][1]) > 100
    finally:
        stream.stop()
        prometheus.stop()
