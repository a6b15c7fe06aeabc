"""Support for the fault-injection tests: a worker subprocess handle, a live input stream and the
record-by-record accounting every fault test ends with.

Accounting: every input (partition, offset) is either scored (anomaly -> an event on the output
topic, normal -> counted in /metrics only) or dead-lettered. Which valid records must have an
event is decided offline with ``trainer.artifact.load_bundle(model_dir).score``.
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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka_helpers import (
    ConsumedRecord,
    IsolationLevel,
    consume_all,
    create_topic,
    free_port,
    unique_name,
)
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[3]
WORKER_BIN = Path(sys.executable).with_name("anomaly-worker")
OUTCOMES = ("normal", "anomaly", "invalid")
POISON = b"{not json"
# Records whose offline score is this close (relative) to the threshold may be flagged either way:
# a different batch composition can move a float32 score by ~1e-7.
BORDERLINE_REL = 1e-4

Source = tuple[int, int]  # (partition, offset) of an input record
INPUT_PARTITIONS = 4


@dataclass
class Topics:
    input: str
    output: str
    dlq: str
    group: str
    partitions: int


def metrics_of(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def make_topics(bootstrap: str, stem: str) -> Topics:
    t = Topics(
        unique_name(f"{stem}-in"),
        unique_name(f"{stem}-out"),
        unique_name(f"{stem}-dlq"),
        unique_name(f"{stem}-grp"),
        INPUT_PARTITIONS,
    )
    create_topic(bootstrap, t.input, partitions=INPUT_PARTITIONS)
    create_topic(bootstrap, t.output, partitions=1)
    create_topic(bootstrap, t.dlq, partitions=1)
    return t


class WorkerProc:
    """`anomaly-worker` as a real subprocess with ``ANOMALY_*`` settings and a log file."""

    def __init__(self, env: dict[str, str], log_path: Path, port: int) -> None:
        self.log_path = log_path
        self.port = port
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [str(WORKER_BIN)],
            cwd=str(log_path.parent),
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.ready_after_s: float | None = None
        self.last_metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def logs(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(line))
        return out

    def _get(self, path: str, timeout: float = 3.0) -> requests.Response:
        return requests.get(f"http://127.0.0.1:{self.port}{path}", timeout=timeout)

    def ready(self) -> bool | None:
        """/readyz: True (200), False (503), None when the endpoint does not answer."""
        try:
            return self._get("/readyz").status_code == 200
        except requests.RequestException:
            return None

    def wait_ready(self, timeout_s: float = 60) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.assert_running()
            if self.ready():
                self.ready_after_s = time.monotonic() - self.started
                return self.ready_after_s
            time.sleep(0.1)
        raise AssertionError(f"worker not ready within {timeout_s}s:\n{self.log_text()}")

    def assert_running(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.log_text()}")

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        self.last_metrics = metrics_of(self._get("/metrics", timeout=5).text)
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

    def wait_records(self, n: float, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self.records_total() < n:
            self.assert_running()
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"worker counted {self.records_total()} < {n}:\n{self.log_text()}"
                )
            time.sleep(0.1)

    def kill9(self) -> None:
        """SIGKILL (a crash): no batch is finished, nothing is closed."""
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


@dataclass
class WorkerFactory:
    """Starts workers for one test; ``close`` kills any still running."""

    bootstrap: str
    topics: Topics
    model_dir: Path
    log_dir: Path
    defaults: dict[str, object] = field(default_factory=dict)
    started: list[WorkerProc] = field(default_factory=list)

    def start(self, port: int | None = None, **settings: object) -> WorkerProc:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANOMALY_")}
        port = port or free_port()
        values: dict[str, object] = {
            "BOOTSTRAP_SERVERS": self.bootstrap,
            "INPUT_TOPIC": self.topics.input,
            "OUTPUT_TOPIC": self.topics.output,
            "DLQ_TOPIC": self.topics.dlq,
            "GROUP_ID": self.topics.group,
            "MODEL_DIR": self.model_dir,
            "METRICS_HOST": "127.0.0.1",
            "METRICS_PORT": port,
            "LOG_FORMAT": "json",
            "MODEL_POLL_INTERVAL_S": 0.5,
            "LAG_REFRESH_S": 1,
            "BATCH_MAX_WAIT_MS": 50,
            "BATCH_MAX_RECORDS": 100,
            "SESSION_TIMEOUT_MS": 3000,
            **self.defaults,
            **settings,
        }
        env.update({f"ANOMALY_{k.upper()}": str(v) for k, v in values.items()})
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        env["PYTHONPATH"] = str(REPO)
        log_path = self.log_dir / f"worker-{len(self.started)}.log"
        w = WorkerProc(env, log_path, port)
        self.started.append(w)
        return w

    def close(self) -> None:
        for w in self.started:
            w.close()


class Stream:
    """Produces records from a background thread in paced chunks: a live input stream.

    Record ``i`` is ``{"id": i, "features": x[i]}`` keyed ``k<i>`` (the key spreads records over
    the partitions), except every ``poison_every``-th one, which is an undecodable value.
    ``placed[i]`` is where record ``i`` landed.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        x: np.ndarray,
        chunk: int = 100,
        pause_s: float = 0.1,
        poison_every: int = 250,
    ) -> None:
        self.x = x
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
                    value = (
                        POISON
                        if self.poison[i]
                        else json.dumps({"id": i, "features": self.x[i].tolist()}).encode()
                    )
                    futures.append((i, producer.send(topic, key=f"k{i}".encode(), value=value)))
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

    def join(self, timeout_s: float = 180) -> list[Source]:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "producer thread stuck"
        if self.error is not None:
            raise self.error
        assert all(p is not None for p in self.placed)
        return [p for p in self.placed if p is not None]


def committed(bootstrap: str, topic: str, group: str, partitions: int) -> dict[int, int]:
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
    bootstrap: str, topics: Topics, workers: list[WorkerProc], timeout_s: float = 90
) -> None:
    """Wait until the group's committed offsets reach the end of every input partition."""
    want = end_offsets(bootstrap, topics.input, topics.partitions)
    deadline = time.monotonic() + timeout_s
    while True:
        got = committed(bootstrap, topics.input, topics.group, topics.partitions)
        if got == want:
            return
        if time.monotonic() > deadline:
            logs = "\n---\n".join(w.log_text(2000) for w in workers)
            raise AssertionError(f"committed {got}, end offsets {want}\n{logs}")
        time.sleep(0.3)


@dataclass
class Accounting:
    """What the output and DLQ topics hold for the records of a `Stream`."""

    events: list[ConsumedRecord]
    dead: list[ConsumedRecord]
    event_sources: Counter
    dead_sources: Counter
    must_flag: set[Source]
    may_flag: set[Source]
    poison: set[Source]

    @property
    def duplicate_events(self) -> int:
        return sum(self.event_sources.values()) - len(self.event_sources)

    @property
    def duplicate_dead(self) -> int:
        return sum(self.dead_sources.values()) - len(self.dead_sources)

    def summary(self) -> dict[str, int]:
        return {
            "events": len(self.events),
            "distinct_events": len(self.event_sources),
            "duplicate_events": self.duplicate_events,
            "dead_letters": len(self.dead),
            "duplicate_dead_letters": self.duplicate_dead,
        }


def expected_flags(
    scores: np.ndarray, threshold: float, sources: list[Source]
) -> tuple[set[Source], set[Source]]:
    """(records that must be flagged, records that may be flagged: borderline scores)."""
    margin = BORDERLINE_REL * threshold
    must = {sources[i] for i in np.flatnonzero(scores > threshold + margin).tolist()}
    maybe = {sources[i] for i in np.flatnonzero(np.abs(scores - threshold) <= margin).tolist()}
    return must, maybe


def account(
    bootstrap: str,
    topics: Topics,
    stream: Stream,
    bundle,  # type: ignore[no-untyped-def]  # trainer.artifact.ModelBundle
    isolation_level: IsolationLevel = "read_uncommitted",
    flags: tuple[set[Source], set[Source]] | None = None,
) -> Accounting:
    """Read the output and DLQ topics to their end and check every input record against them.

    Call after `wait_all_committed`. Asserts: every record offline scoring flags has an event,
    no other record has one, and exactly the poison records are dead-lettered, with their source
    in the headers. ``flags`` (must, may) replaces the offline flags of ``bundle``.
    """
    placed = stream.join()
    if flags is None:
        valid = np.flatnonzero(~stream.poison)
        sources = [placed[i] for i in valid.tolist()]
        scores = bundle.score(stream.x[valid]).scores
        must, maybe = expected_flags(scores, bundle.threshold, sources)
    else:
        must, maybe = flags
    poison = {placed[i] for i in np.flatnonzero(stream.poison).tolist()}
    events = consume_all(bootstrap, topics.output, isolation_level=isolation_level, timeout_s=60)
    dead = consume_all(bootstrap, topics.dlq, isolation_level=isolation_level, timeout_s=60)
    ev_src = Counter(
        (e.json()["source"]["partition"], e.json()["source"]["offset"]) for e in events
    )
    dl_src = Counter(
        (int(d.header("dlq.source.partition") or -1), int(d.header("dlq.source.offset") or -1))
        for d in dead
    )
    acc = Accounting(events, dead, ev_src, dl_src, must, maybe, poison)
    missing = must - set(ev_src)
    assert not missing, f"{len(missing)} anomalies without an event, e.g. {sorted(missing)[:5]}"
    extra = set(ev_src) - must - maybe
    assert not extra, (
        f"{len(extra)} events for records offline scoring calls normal: {sorted(extra)[:5]}"
    )
    assert set(dl_src) == poison, (
        f"dead letters {sorted(set(dl_src) ^ poison)[:5]} differ from the poison records"
    )
    assert all(e.json()["source"]["topic"] == topics.input for e in events)
    assert all(d.value == POISON for d in dead)
    return acc


def assert_counts_match(
    counts: dict[str, float], acc: Accounting, n_records: int, duplicates_allowed: bool = False
) -> None:
    """`/metrics` records_total (summed over the workers that ran) against what was sent."""
    n_poison = len(acc.poison)
    assert counts["invalid"] == len(acc.dead), counts
    assert counts["anomaly"] == len(acc.events), counts  # one event per anomaly counted
    total = sum(counts.values())
    if duplicates_allowed:
        assert total >= n_records, counts
    else:
        assert total == n_records, counts
        assert counts["invalid"] == n_poison
        assert counts["anomaly"] == len(acc.event_sources)
        assert counts["normal"] == n_records - n_poison - len(acc.event_sources)


def sum_counts(workers: list[WorkerProc]) -> dict[str, float]:
    out = dict.fromkeys(OUTCOMES, 0.0)
    for w in workers:
        for k, v in w.counts(fresh=w.alive()).items():
            out[k] += v
    return out
