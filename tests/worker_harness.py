"""The worker as a real subprocess for integration tests: its topics, its settings, its HTTP
endpoints, its logs, and a live input stream to feed it.

`python -m worker` runs with ``ANOMALY_*`` settings in its environment (real signals, real exit
codes), JSON logs to a file and ``METRICS_PORT=0``: the port it bound is read from its log.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka_helpers import create_topic, unique_name
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
OUTCOMES = ("normal", "anomaly", "invalid", "warming")  # warming: windowed models only
POISON = b"{not json"
# Fast reloads, lag refreshes and batches, so that tests see changes within a second.
TEST_SETTINGS: dict[str, object] = {
    "MODEL_POLL_INTERVAL_S": 0.5,
    "LAG_REFRESH_S": 1,
    "BATCH_MAX_WAIT_MS": 50,
}

Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]
Source = tuple[int, int]  # (partition, offset) of an input record


def parse_metrics(text: str) -> Metrics:
    """Prometheus text exposition -> {(sample name, sorted labels): value}."""
    out: Metrics = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@dataclass
class Topics:
    input: str
    output: str
    dlq: str
    group: str
    partitions: int = 1  # of the input topic


def make_topics(bootstrap: str, stem: str, partitions: int) -> Topics:
    """Unique input (``partitions``), output and DLQ topics (1 partition each) and group."""
    t = Topics(
        unique_name(f"{stem}-in"),
        unique_name(f"{stem}-out"),
        unique_name(f"{stem}-dlq"),
        unique_name(f"{stem}-grp"),
        partitions,
    )
    create_topic(bootstrap, t.input, partitions=partitions)
    create_topic(bootstrap, t.output, partitions=1)
    create_topic(bootstrap, t.dlq, partitions=1)
    return t


def worker_env(
    bootstrap: str,
    topics: Topics,
    model_dir: Path,
    *,
    base: Mapping[str, object] = TEST_SETTINGS,
    **settings: object,
) -> dict[str, str]:
    """This process' environment without its ``ANOMALY_*`` variables, plus the worker's settings:
    the topics, JSON logs, HTTP on 127.0.0.1 port 0, ``base``, then ``settings``.

    ``base`` is `TEST_SETTINGS` (quick reloads and batches) for tests; the throughput benchmark
    passes ``{}`` to measure the worker with its own defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANOMALY_")}
    values: dict[str, object] = {
        "BOOTSTRAP_SERVERS": bootstrap,
        "INPUT_TOPIC": topics.input,
        "OUTPUT_TOPIC": topics.output,
        "DLQ_TOPIC": topics.dlq,
        "GROUP_ID": topics.group,
        "MODEL_DIR": model_dir,
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": 0,
        "LOG_FORMAT": "json",
        **base,
        **settings,
    }
    env.update({f"ANOMALY_{k.upper()}": str(v) for k, v in values.items()})
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    # This checkout first; entries the caller had stay after it (an extra library directory).
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *(p for p in inherited if p != str(REPO))])
    return env


class WorkerProcess:
    """`python -m worker` as a subprocess; JSON logs to ``log_path``; HTTP on the port it logs."""

    def __init__(self, log_path: Path, env: dict[str, str], args: Sequence[str] = ()) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", *args],
            cwd=str(log_path.parent),
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.port: int | None = None
        self.ready_after_s: float | None = None
        self.last_metrics: Metrics = {}

    # ------------------------------------------------------------------------------ process
    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def assert_running(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.log_tail()}")

    def kill9(self) -> None:
        """SIGKILL (a crash): no batch is finished, nothing is closed. Scrapes /metrics first."""
        with contextlib.suppress(requests.RequestException):
            self.metrics()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout_s: float = 15) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds until exit). Scrapes /metrics first."""
        with contextlib.suppress(requests.RequestException):
            self.metrics()
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout_s)
        return code, time.monotonic() - t0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()

    # --------------------------------------------------------------------------------- logs
    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the log, for assertion messages."""
        return self.log_text()[-chars:]

    def logs(self) -> list[dict]:
        out = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(line))
        return out

    # --------------------------------------------------------------------------------- HTTP
    def _logged_port(self) -> int | None:
        for entry in self.logs():
            if "port" in entry and entry.get("logger") == "worker.http":
                self.port = int(entry["port"])
                return self.port
        return None

    def wait_port(self, timeout_s: float = 60) -> int:
        deadline = time.monotonic() + timeout_s
        while (port := self.port or self._logged_port()) is None:
            self.assert_running()
            if time.monotonic() > deadline:
                raise AssertionError(f"worker did not log its port:\n{self.log_tail()}")
            time.sleep(0.1)
        return port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.wait_port()}{path}"

    def ready(self) -> bool | None:
        """/readyz: True (200), False (503), None when the endpoint does not answer (yet)."""
        if (self.port or self._logged_port()) is None:
            return None
        try:
            return requests.get(self.url("/readyz"), timeout=3).status_code == 200
        except requests.RequestException:
            return None

    def wait_ready(self, timeout_s: float = 60, poll_s: float = 0.1) -> float:
        """Wait for /readyz 200 (partitions assigned); returns seconds since the start, to within
        ``poll_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.assert_running()
            if self.ready():
                self.ready_after_s = time.monotonic() - self.started
                return self.ready_after_s
            time.sleep(poll_s)
        raise AssertionError(f"worker not ready within {timeout_s}s:\n{self.log_tail()}")

    # ------------------------------------------------------------------------------ metrics
    def metrics(self) -> Metrics:
        self.last_metrics = parse_metrics(requests.get(self.url("/metrics"), timeout=5).text)
        return self.last_metrics

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def counts(self, fresh: bool = True) -> dict[str, float]:
        """records_total by outcome (the last scrape when ``fresh`` is False or it is gone)."""
        m = self.last_metrics
        if fresh:
            with contextlib.suppress(requests.RequestException):
                m = self.metrics()
        return {
            o: m.get(("anomaly_worker_records_total", (("outcome", o),)), 0.0) for o in OUTCOMES
        }

    def records_total(self) -> float:
        return sum(self.counts().values())

    def wait_records(self, n: float, timeout_s: float = 60, poll_s: float = 0.1) -> None:
        """Wait until /metrics counts ``n`` records, scraping every ``poll_s`` (a scrape costs
        the worker CPU: the benchmark scrapes less often)."""
        deadline = time.monotonic() + timeout_s
        while self.records_total() < n:
            self.assert_running()
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"worker counted {self.records_total()} of {n} records:\n{self.log_tail()}"
                )
            time.sleep(poll_s)


@dataclass
class WorkerFactory:
    """Starts workers for one test, logs in ``log_dir``; ``close`` kills any still running.

    ``topics`` and ``model_dir`` are the defaults of `start`; ``defaults`` are settings every
    worker it starts gets (before the ones given to `start`)."""

    bootstrap: str
    log_dir: Path
    topics: Topics | None = None
    model_dir: Path | None = None
    defaults: dict[str, object] = field(default_factory=dict)
    started: list[WorkerProcess] = field(default_factory=list)

    def start(
        self, topics: Topics | None = None, model_dir: Path | None = None, **settings: object
    ) -> WorkerProcess:
        topics = topics or self.topics
        model_dir = model_dir or self.model_dir
        assert topics is not None and model_dir is not None, "no topics or model_dir to start with"
        env = worker_env(self.bootstrap, topics, model_dir, **{**self.defaults, **settings})
        w = WorkerProcess(self.log_dir / f"worker-{len(self.started)}.log", env)
        self.started.append(w)
        return w

    def close(self) -> None:
        for w in self.started:
            w.close()


class Stream:
    """Produces records from a background thread in paced chunks: a live input stream.

    Record ``i`` is ``{"id": i, "features": x[i]}`` keyed ``k<i>`` (the key spreads records over
    the partitions), or ``values[i]`` keyed ``keys[i]`` when given (series per key), except every
    ``poison_every``-th one (0: none), which is `POISON`, an undecodable value. ``placed[i]`` is where record ``i`` landed; `stop` ends the stream early.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        x: np.ndarray,
        chunk: int = 100,
        pause_s: float = 0.1,
        poison_every: int = 250,
        *,
        values: Sequence[bytes] | None = None,
        keys: Sequence[bytes] | None = None,
    ) -> None:
        self.x = x
        self._values, self._keys = values, keys
        self.n = len(x)
        self.poison = np.zeros(self.n, dtype=bool)
        if poison_every:
            self.poison[poison_every // 2 :: poison_every] = True
        self.placed: list[Source | None] = [None] * self.n
        self.sent = 0
        self.pause_s = pause_s  # may be changed while the stream runs (0: as fast as it goes)
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._args = (bootstrap, topic, chunk)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        bootstrap, topic, chunk = self._args
        # generous timeouts: the broker may be down for a while in the broker-restart test
        producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=5,
            retries=1_000_000,
            delivery_timeout_ms=120_000,
            request_timeout_ms=10_000,
            max_block_ms=120_000,
            reconnect_backoff_max_ms=1000,
        )
        try:
            for start in range(0, self.n, chunk):
                if self._stop.is_set():
                    break
                futures = []
                for i in range(start, min(start + chunk, self.n)):
                    futures.append(
                        (i, producer.send(topic, key=self._key(i), value=self._value(i)))
                    )
                producer.flush()
                for i, f in futures:
                    meta = f.get(timeout=120)
                    self.placed[i] = (meta.partition, meta.offset)
                self.sent = start + len(futures)
                time.sleep(self.pause_s)
        except BaseException as exc:  # surfaced by join()
            self.error = exc
        finally:
            producer.close(timeout=10)
            self.done.set()

    def _value(self, i: int) -> bytes:
        if self.poison[i]:
            return POISON
        if self._values is not None:
            return self._values[i]
        return json.dumps({"id": i, "features": self.x[i].tolist()}).encode()

    def _key(self, i: int) -> bytes:
        return self._keys[i] if self._keys is not None else f"k{i}".encode()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout_s: float = 180) -> list[Source]:
        """Where each record sent landed, in record order (all of them unless stopped)."""
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "producer thread stuck"
        if self.error is not None:
            raise self.error
        placed = self.placed[: self.sent]
        assert all(p is not None for p in placed)
        return [p for p in placed if p is not None]


def committed(bootstrap: str, topic: str, group: str, partitions: int) -> dict[int, int]:
    """The group's committed offset of each partition (0 where none)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) or 0 for p in range(partitions)}
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        consumer.close()


def wait_all_committed(
    bootstrap: str, topics: Topics, workers: list[WorkerProcess], timeout_s: float = 90
) -> None:
    """Wait until the group's committed offsets reach the end of every input partition."""
    want = end_offsets(bootstrap, topics.input, topics.partitions)
    deadline = time.monotonic() + timeout_s
    while True:
        got = committed(bootstrap, topics.input, topics.group, topics.partitions)
        if got == want:
            return
        if time.monotonic() > deadline:
            logs = "\n---\n".join(w.log_tail(2000) for w in workers)
            raise AssertionError(f"committed {got}, end offsets {want}\n{logs}")
        time.sleep(0.3)
