"""Readiness tells the truth about the broker, every time (issue 19): /readyz and the
``anomaly_worker_broker_reachable`` gauge turn false within 5 s of the broker going away and true
within 5 s of it serving again, and do not flap, whether the worker is idle, has acknowledged its
last batch, or has sends in flight; for outages of 4 s and 20 s.

Deterministic rather than repeated: the broker is frozen (`LocalKafka.pause`, SIGSTOP: it holds
its connections and answers nothing) for exactly the outage and thawed, so the outage starts and
ends at known instants, without a restart's 15-30 s start-up (tests/integration/faults/
test_worker_broker_restart.py covers the port closing and a real restart). Readiness is sampled
every 100 ms from before the outage until it has been steady for `STEADY_AFTER_S` after recovery.
Uses its own broker. The session timeout is longer than the longest outage so that the group
membership survives it: readiness also counts assigned partitions, and a rejoin after an expired
session is another test's subject (test_worker_rebalance.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from faults_support import ReadinessProbe, private_broker
from kafka_helpers import LocalKafka
from worker_harness import Stream, Topics, WorkerProcess, wait_all_committed
from worker_models import sensor_rows

from anomaly_contract.model_dir import load_bundle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FALSE_WITHIN_S = 5.0  # after the broker goes away
TRUE_WITHIN_S = 5.0  # after it serves again
STEADY_AFTER_S = 6.0  # watched after recovery: the flap once seen came 3.3 s after it
OUTAGES_S = (4.0, 20.0)
SETTINGS: dict[str, object] = {"BATCH_MAX_RECORDS": 100, "SESSION_TIMEOUT_MS": 30000}


@dataclass
class Sample:
    t: float  # seconds since the broker went away
    ready: bool | None  # /readyz 200
    field: bool | None  # /readyz's broker_reachable
    reachable: bool | None  # anomaly_worker_broker_reachable == 1


@dataclass
class Outage:
    case: str
    seconds: float
    t_up: float  # seconds since the broker went away
    samples: list[Sample]
    reasons: list[str]

    def check(self, signal: str) -> None:
        series = [(s.t, getattr(s, signal)) for s in self.samples]
        what = f"{signal} ({self.case}, {self.seconds:.0f} s outage): {self.timeline(signal)}"
        assert all(v is True for t, v in series if t < 0), f"not true before the outage: {what}"
        first_false = next((t for t, v in series if t >= 0 and v is False), None)
        assert first_false is not None and first_false <= FALSE_WITHIN_S, f"late false: {what}"
        assert all(v is False for t, v in series if first_false <= t < self.t_up), (
            f"true again during the outage: {what}"
        )
        first_true = next((t for t, v in series if t >= self.t_up and v is True), None)
        assert first_true is not None and first_true - self.t_up <= TRUE_WITHIN_S, (
            f"late true: {what}"
        )
        assert all(v is True for t, v in series if t >= first_true), f"flapped: {what}"

    def timeline(self, signal: str) -> list[tuple[float, bool | None]]:
        """The changes only: (time, value)."""
        out: list[tuple[float, bool | None]] = []
        for s in self.samples:
            v = getattr(s, signal)
            if not out or out[-1][1] != v:
                out.append((round(s.t, 1), v))
        return out


@dataclass
class Rig:
    """One broker and one worker for the module; `outage` freezes the broker and watches."""

    broker: LocalKafka
    worker: WorkerProcess
    topics: Topics
    n_features: int

    def outage(self, case: str, seconds: float) -> Outage:
        self.worker.assert_running()
        n_logged = len(self.worker.logs())
        sampler = ReadinessProbe(self.worker)
        time.sleep(1.0)  # samples before the outage: ready
        t_down = time.monotonic()
        self.broker.pause()
        try:
            time.sleep(seconds)
        finally:
            t_up = time.monotonic()  # before SIGCONT: the broker cannot answer earlier
            self.broker.resume()
        deadline = t_up + TRUE_WITHIN_S + 10
        while not (self.worker.ready() and self._gauge_true()) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(STEADY_AFTER_S)
        raw = sampler.stop()
        samples = [Sample(t - t_down, *values) for t, *values in raw]
        reasons = [
            e["message"]
            for e in self.worker.logs()[n_logged:]
            if e.get("logger") == "worker.reachability"
        ]
        result = Outage(case, seconds, t_up - t_down, samples, reasons)
        print(
            json.dumps(
                {
                    "case": case,
                    "outage_s": seconds,
                    "readyz": result.timeline("ready"),
                    "gauge": result.timeline("reachable"),
                    "reachability_log": reasons,
                }
            )
        )
        return result

    def _gauge_true(self) -> bool:
        return self.worker.metric("anomaly_worker_broker_reachable") == 1.0


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, _faults_busy_published: Path) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("broker-outage")
    with private_broker(tmp, _faults_busy_published, "outage", SETTINGS) as (
        broker,
        topics,
        workers,
        model_dir,
    ):
        w = workers.start()
        w.wait_ready()
        yield Rig(broker, w, topics, load_bundle(model_dir).manifest.n_features)
        w.assert_running()


@pytest.mark.parametrize("seconds", OUTAGES_S)
def test_idle_worker(rig: Rig, seconds: float) -> None:
    """Nothing flows: only the worker's own round trips can notice."""
    outage = rig.outage("idle", seconds)
    outage.check("ready")
    outage.check("field")
    outage.check("reachable")


@pytest.mark.parametrize("seconds", OUTAGES_S)
def test_last_batch_already_acknowledged(rig: Rig, seconds: float) -> None:
    """A stream ran and stopped; its last batch is acknowledged and committed."""
    x, _ = sensor_rows(500, rig.n_features, seed=int(seconds))
    stream = Stream(rig.broker.bootstrap, rig.topics.input, x, chunk=100, pause_s=0.0)
    stream.join()
    wait_all_committed(rig.broker.bootstrap, rig.topics, [rig.worker])
    outage = rig.outage("acked", seconds)
    outage.check("ready")
    outage.check("field")
    outage.check("reachable")


@pytest.mark.parametrize("seconds", OUTAGES_S)
def test_sends_in_flight(rig: Rig, seconds: float) -> None:
    """A stream flows when the broker goes away: ~30 % of records become events (the busy
    model), so batches are sent and unacknowledged as it freezes."""
    x, _ = sensor_rows(20_000, rig.n_features, seed=7 + int(seconds))
    stream = Stream(rig.broker.bootstrap, rig.topics.input, x, chunk=200, pause_s=0.02)
    try:
        before = rig.worker.records_total()
        rig.worker.wait_records(before + 1000)
        outage = rig.outage("in flight", seconds)
    finally:
        stream.stop()
        stream.join()
    outage.check("ready")
    outage.check("field")
    outage.check("reachable")
