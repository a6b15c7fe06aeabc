"""The broker restarts mid-stream: the worker stays up, /readyz turns false during the outage and
true after, it recovers by itself and nothing is lost. Uses its own broker (not the session's)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults_support import Stream, WorkerFactory, account, make_topics, wait_all_committed
from kafka_helpers import LocalKafka
from worker_models import sensor_rows

from trainer.artifact import load_bundle

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def own_broker() -> Iterator[LocalKafka]:
    broker = LocalKafka()
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


class ReadyProbe:
    """Samples /readyz every 100 ms from a thread: [(monotonic time, True/False/None)]."""

    def __init__(self, worker) -> None:  # type: ignore[no-untyped-def]
        self.samples: list[tuple[float, bool | None]] = []
        self._stop = threading.Event()
        self._worker = worker
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self._worker.ready()))
            self._stop.wait(0.1)

    def stop(self) -> list[tuple[float, bool | None]]:
        self._stop.set()
        self._thread.join(5)
        return self.samples


def test_broker_restart_mid_stream(
    own_broker: LocalKafka, busy_model_dir: Path, tmp_path: Path
) -> None:
    topics = make_topics(own_broker.bootstrap, "restart")
    workers = WorkerFactory(own_broker.bootstrap, topics, busy_model_dir, tmp_path)
    try:
        bundle = load_bundle(busy_model_dir)
        x, _ = sensor_rows(3000, bundle.manifest.n_features, seed=71, anomaly_rate=0.05)
        w = workers.start()
        w.wait_ready()
        stream = Stream(own_broker.bootstrap, topics.input, x, chunk=100, pause_s=0.2)
        w.wait_records(600)
        probe = ReadyProbe(w)
        t_down = time.monotonic()
        own_broker.stop()
        time.sleep(2.0)  # an outage the worker notices (lag refresh: 1 s)
        own_broker.start()
        t_up = time.monotonic()
        deadline = t_up + 60
        while not w.ready():
            w.assert_running()
            assert time.monotonic() < deadline, w.log_text()
            time.sleep(0.1)
        t_ready = time.monotonic()
        samples = probe.stop()
        assert w.alive(), w.log_text()
        stream.join()
        wait_all_committed(own_broker.bootstrap, topics, [w])
        acc = account(own_broker.bootstrap, topics, stream, bundle)
        timeline = [(round(t - t_down, 1), ok) for t, ok in samples]
        during = [ok for t, ok in samples if t_down + 1.5 <= t <= t_up]
        assert during and not any(during), (
            f"/readyz stayed true while the broker was down (broker back at "
            f"{t_up - t_down:.1f}s): {timeline}\n{w.log_text(6000)}"
        )
        assert samples[-1][1] is not False
        counts = w.counts()
        report = {
            "outage_s": round(t_up - t_down, 1),
            "ready_again_after_broker_up_s": round(t_ready - t_up, 1),
            "worker_counts": counts,
            **acc.summary(),
        }
        print(json.dumps(report))
        # one worker, no crash: each record scored once is expected; report if not
        assert sum(counts.values()) >= len(x)
        assert acc.duplicate_events == 0, report
        code, took = w.terminate()
        assert code == 0, w.log_text()
    finally:
        workers.close()
