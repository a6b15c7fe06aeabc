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

READY_FALSE_WITHIN_S = 5.0


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
        time.sleep(2.0)  # down for the stop, these 2 s and the start (~15 s in all)
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
        counts = w.counts()
        report = {
            "outage_s": round(t_up - t_down, 1),
            "ready_again_after_broker_up_s": round(t_ready - t_up, 1),
            "worker_counts": counts,
            **acc.summary(),
        }
        timeline = [(round(t - t_down, 1), ok) for t, ok in samples]
        first_false = next((t for t, ok in timeline if ok is False), None)
        report["readyz_false_after_s"] = first_false
        print(json.dumps(report))
        assert sum(counts.values()) >= len(x)
        code, took = w.terminate()
        assert code == 0, w.log_text()
        # readiness must follow the outage: false within a few seconds (the broker was down for
        # much longer), true again once it is back
        assert first_false is not None and first_false <= READY_FALSE_WITHIN_S, (
            f"/readyz did not turn false within {READY_FALSE_WITHIN_S}s of the broker stopping "
            f"(back after {t_up - t_down:.1f}s): {timeline}"
        )
        assert samples[-1][1] is not False
        # one worker and no crash, but the group membership may expire during the outage and a
        # batch be re-read: reported above, not asserted
    finally:
        workers.close()
