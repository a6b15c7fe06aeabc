"""Worker subprocess handle and per-test topic names for the worker's integration tests."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

PYTHON = sys.executable


@dataclass
class Topics:
    input: str
    output: str
    dlq: str
    group: str


class WorkerProcess:
    """`python -m worker` as a subprocess; JSON logs to a file; HTTP on a port it picks."""

    def __init__(self, log_path: Path, env: dict[str, str], args: list[str]) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "worker", *args],
            cwd=str(log_path.parent),
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.port: int | None = None

    def logs(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(line))
        return out

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_port(self, timeout_s: float = 60) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for entry in self.logs():
                if "port" in entry and entry.get("logger") == "worker.http":
                    self.port = int(entry["port"])
                    return self.port
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.log_text()}")
            time.sleep(0.1)
        raise AssertionError(f"worker did not log its port:\n{self.log_text()}")

    def url(self, path: str) -> str:
        if self.port is None:
            self.wait_port()
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.log_text()}")
            try:
                if requests.get(self.url("/readyz"), timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError(f"worker not ready within {timeout_s}s:\n{self.log_text()[-5000:]}")

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = requests.get(self.url("/metrics"), timeout=5).text
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def records_total(self) -> float:
        return sum(
            self.metric("anomaly_worker_records_total", outcome=o)
            for o in ("normal", "anomaly", "invalid")
        )

    def wait_records(self, n: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.records_total() >= n:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.log_text()}")
            time.sleep(0.2)
        raise AssertionError(
            f"worker counted {self.records_total()} of {n} records:\n{self.log_text()[-5000:]}"
        )

    def terminate(self, timeout_s: float = 10) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took)."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout_s)
        return code, time.monotonic() - t0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()
