"""The HTTP endpoints on a free port: /metrics, /healthz, /readyz."""

from __future__ import annotations

import time

import requests
from prometheus_client import CollectorRegistry

from worker.http import HealthState, HttpEndpoints
from worker.metrics import WorkerMetrics


def test_endpoints_report_health_and_readiness() -> None:
    reg = CollectorRegistry()
    WorkerMetrics(reg).records.labels("anomaly").inc(3)
    health = HealthState(liveness_timeout_s=0.5)
    http = HttpEndpoints("127.0.0.1", 0, reg, health).start()
    base = f"http://127.0.0.1:{http.port}"
    try:
        assert http.port > 0
        r = requests.get(f"{base}/metrics", timeout=5)
        assert r.status_code == 200
        assert 'anomaly_worker_records_total{outcome="anomaly"} 3.0' in r.text
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
        r = requests.get(f"{base}/readyz", timeout=5)
        assert r.status_code == 503 and r.json()["model_version"] is None
        health.model_version, health.partitions = "v1", 2
        health.broker.answered(health.broker.now())
        assert requests.get(f"{base}/readyz", timeout=5).status_code == 200
        health.broker.failed("probe timed out")
        assert requests.get(f"{base}/readyz", timeout=5).json()["ok"] is False
        time.sleep(0.6)  # the loop stopped turning
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 503
        health.beat()
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
        assert requests.get(f"{base}/nope", timeout=5).status_code == 404
    finally:
        http.close()
