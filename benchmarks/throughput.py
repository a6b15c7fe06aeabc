"""Worker throughput against the client's ceiling and a predict-per-message loop, in one run.

Same broker (its own local Kafka), same topic of 20-feature JSON records, same run:

  (a) bare kafka-python: consume + ``json.loads``, nothing else (the client's ceiling);
  (b) ``anomaly-worker`` as a subprocess: from partitions assigned (``/readyz``) to every record
      counted in ``/metrics``; also its time to ready and peak RSS;
  (c) a loop calling Keras ``model.predict`` per message, as Kafka-ML-style services do (timed on
      a small sample, the rate extrapolated).

Then the end-to-end latency (record timestamp -> event on the output topic) at about half of
(b)'s rate with ``ANOMALY_BATCH_MAX_WAIT_MS=100``, fed by Kafka's own paced producer
(``ProducerPerformance`` from kafka-tools, in its own JVM; ``--latency-producer python`` for a
kafka-python producer in this process, which costs most of a CPU at these rates).

    python benchmarks/throughput.py                 # 200,000 records, markdown table on stdout
    python benchmarks/throughput.py --quick         # 30,000 records, shorter latency run
    python benchmarks/throughput.py --records 500000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # kafka_helpers: LocalKafka and topic helpers

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import requests  # noqa: E402
from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402
from kafka.consumer.subscription_state import ConsumerRebalanceListener  # noqa: E402
from kafka_helpers import LocalKafka, create_topic, free_port, unique_name  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

N_FEATURES = 20
PARTITIONS = 4
WORKER_BIN = Path(sys.executable).with_name("anomaly-worker")
TRAINER_BIN = Path(sys.executable).with_name("anomaly-trainer")
TARGETS = {
    "b/a": ">= 0.8",
    "b/c": ">= 1000",
    "p99": "<= 250 ms",
    "rss": "<= 600 MB",
    "ready": "<= 10 s",
}


# ------------------------------------------------------------------------------------- data
def sensor_matrix(n: int, seed: int, anomaly_rate: float = 0.01) -> np.ndarray:
    """Correlated 20-feature readings (4 latent factors), a share of them with one spiked value."""
    mix = np.random.default_rng(2024).normal(size=(4, N_FEATURES))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)) @ mix + 0.05 * rng.normal(size=(n, N_FEATURES)) + 10.0
    hit = np.flatnonzero(rng.random(n) < anomaly_rate)
    x[hit, rng.integers(0, N_FEATURES, hit.size)] += rng.choice([-8.0, 8.0], hit.size)
    return x


def train_model(model_dir: Path, epochs: int) -> float:
    """Fit and publish a 20-feature model with the product's own trainer; returns seconds."""
    data = model_dir.parent / "train.npy"
    np.save(data, sensor_matrix(5000, seed=1, anomaly_rate=0.0))
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(TRAINER_BIN), "fit", str(data), "--model-dir", str(model_dir), "--epochs", str(epochs),
         "--quiet"],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"anomaly-trainer fit failed:\n{proc.stdout}{proc.stderr}")
    return time.monotonic() - t0


def encode_records(x: np.ndarray, start: int = 0) -> list[bytes]:
    return [
        json.dumps({"id": f"r{start + i}", "features": row}).encode()
        for i, row in enumerate(np.round(x, 6).tolist())
    ]


def make_producer(bootstrap: str, linger_ms: int = 20) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=linger_ms, batch_size=512 * 1024,
        max_request_size=4 * 1024 * 1024,
    )  # fmt: skip


def produce(bootstrap: str, topic: str, values: list[bytes]) -> float:
    """Send everything as fast as the client goes; returns records/s."""
    producer = make_producer(bootstrap)
    t0 = time.monotonic()
    for i, v in enumerate(values):
        producer.send(topic, value=v, key=str(i).encode())
    producer.flush()
    elapsed = time.monotonic() - t0
    producer.close()
    return len(values) / elapsed


# ------------------------------------------------------------------------------ (a) bare loop
class _Assigned(ConsumerRebalanceListener):
    def __init__(self) -> None:
        self.at: float | None = None

    def on_partitions_revoked(self, revoked: object) -> None:
        pass

    def on_partitions_assigned(self, assigned: object) -> None:
        if assigned and self.at is None:
            self.at = time.monotonic()


def bare_consume(bootstrap: str, topic: str, n: int, batch: int) -> float:
    """Group consumer, poll + json.loads per record, no commits: the client's ceiling.

    Records/s from the partitions' assignment to the last record."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=unique_name("bench-bare"),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=batch,
        fetch_max_bytes=50 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    listener = _Assigned()
    consumer.subscribe([topic], listener=listener)
    seen = 0
    checksum = 0.0
    try:
        while seen < n:
            for recs in consumer.poll(timeout_ms=500, max_records=batch).values():
                for r in recs:
                    checksum += json.loads(r.value)["features"][0]
                seen += len(recs)
        done = time.monotonic()
    finally:
        consumer.close()
    assert listener.at is not None
    return n / (done - listener.at)


# ------------------------------------------------------------------------------- (b) worker
@dataclass
class WorkerRun:
    ready_s: float = 0.0
    rate: float = 0.0
    peak_rss_mb: float = 0.0
    peak_uss_mb: float = 0.0
    metrics: dict = field(default_factory=dict)
    profile: list[tuple[str, float]] = field(default_factory=list)


class NotReady(Exception):
    """The worker did not turn ready in time (the message is the end of its log)."""


EMPTY_ASSIGNMENT = '"partitions assigned", "partitions": ""'
STALLS: list[str] = []  # worker starts that joined with an empty assignment (see start_worker)


def start_worker(
    env: dict[str, str], log: Path, ready_timeout_s: float = 45
) -> tuple[Worker, float]:
    """Start a worker and wait for /readyz; returns it and its time to ready.

    kafka-python can join the group before it has the input topic's metadata: the leader then
    assigns nothing and the consumer sits idle until the next metadata refresh (5 min by
    default; dpkp/kafka-python#2377). Such a start is recorded in STALLS and retried once more.
    """
    for _attempt in range(3):
        w = Worker(env, log)
        try:
            return w, w.wait_ready(ready_timeout_s)
        except NotReady as exc:
            w.stop()
            if EMPTY_ASSIGNMENT not in str(exc):
                raise SystemExit(f"worker not ready within {ready_timeout_s}s:\n{exc}") from None
            STALLS.append(f"{log.name}: joined with no partitions, not ready in {ready_timeout_s}s")
            print(f"worker stalled with an empty assignment: restarting ({log})", file=sys.stderr)
    raise SystemExit("the worker stalled with an empty assignment three times")


class Worker:
    """`anomaly-worker` subprocess with peak-RSS sampling."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = int(env["ANOMALY_METRICS_PORT"])
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [str(WORKER_BIN)], env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.log_path = log
        self.peak_rss = 0
        self.peak_uss = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        p = psutil.Process(self.proc.pid)
        while not self._stop.is_set():
            try:
                mem = p.memory_full_info()  # uss: memory only this process holds
                self.peak_rss = max(self.peak_rss, mem.rss)
                self.peak_uss = max(self.peak_uss, mem.uss)
            except psutil.Error:
                return
            self._stop.wait(0.2)

    def _check(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise SystemExit(f"worker exited {self.proc.returncode}:\n{tail}")

    def wait_ready(self, timeout_s: float = 120) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check()
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).ok:
                    return time.monotonic() - self.t0
            except requests.RequestException:
                pass
            time.sleep(0.02)
        raise NotReady(self.log_path.read_text(errors="replace")[-3000:])

    def metrics(self) -> dict[tuple[str, tuple], float]:
        text = requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def counted(self) -> float:
        m = self.metrics()
        return sum(v for (name, _), v in m.items() if name == "anomaly_worker_records_total")

    def wait_counted(self, n: int, timeout_s: float) -> float:
        """Wait until /metrics counts ``n`` records; returns the wall time of the last batch.

        Scrapes every 0.25 s only (a scrape costs the worker CPU); the finishing time comes from
        the worker's own ``anomaly_worker_last_batch_timestamp_seconds`` gauge.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check()
            m = self.metrics()
            if sum(v for (name, _), v in m.items() if name == "anomaly_worker_records_total") >= n:
                return m[("anomaly_worker_last_batch_timestamp_seconds", ())]
            time.sleep(0.25)
        raise SystemExit(f"worker counted {self.counted()} of {n} records in {timeout_s}s")

    def stop(self) -> None:
        self._stop.set()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def worker_env(bootstrap: str, topic: str, model_dir: Path, **extra: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANOMALY_")}
    values: dict[str, object] = {
        "BOOTSTRAP_SERVERS": bootstrap,
        "INPUT_TOPIC": topic,
        "OUTPUT_TOPIC": f"{topic}-out",
        "DLQ_TOPIC": f"{topic}-dlq",
        "GROUP_ID": unique_name("bench-worker"),
        "MODEL_DIR": model_dir,
        "METRICS_HOST": "127.0.0.1",
        "METRICS_PORT": free_port(),
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
        **extra,
    }
    env.update({f"ANOMALY_{k}": str(v) for k, v in values.items()})
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONPATH"] = str(REPO)
    return env


def run_worker(env: dict[str, str], n: int, log: Path, profile: Path | None) -> WorkerRun:
    w, ready_s = start_worker(env, log)
    spy = None
    try:
        run = WorkerRun(ready_s=ready_s)
        t_ready = time.time()
        if profile is not None:
            spy = start_profile(w.proc.pid, profile)
        done = w.wait_counted(n, timeout_s=max(120.0, n / 500))
        run.rate = n / (done - t_ready)
        run.peak_rss_mb = w.peak_rss / 2**20
        run.peak_uss_mb = w.peak_uss / 2**20
        run.metrics = {k[0]: v for k, v in w.metrics().items() if not k[1]}
    finally:
        if spy is not None:
            stop_profile(spy)
        w.stop()
    if profile is not None:
        run.profile = summarize_profile(profile)
    return run


# ---------------------------------------------------------------------------------- profiling
def start_profile(pid: int, out: Path) -> subprocess.Popen:
    """py-spy (sampling, no slowdown of the target) on the worker, collapsed stacks to ``out``."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    proc = subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--nonblocking",
         "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)  # attached before the measured part goes on for long
    return proc


def stop_profile(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def summarize_profile(path: Path, top: int = 25) -> list[tuple[str, float]]:
    """Inclusive share of CPU samples per function (worker, trainer, kafka, json, numpy...)."""
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        seen = set()
        for frame in stack.split(";"):
            label = re.sub(r":\d+\)$", ")", frame.strip())
            if label not in seen:
                seen.add(label)
                inclusive[label] = inclusive.get(label, 0) + n
    ranked = sorted(inclusive.items(), key=lambda kv: -kv[1])
    return [(label, 100.0 * n / total) for label, n in ranked[:top]] if total else []


# ---------------------------------------------------------------------- (c) predict per message
def predict_per_message(bootstrap: str, topic: str, model_dir: Path, sample: int) -> float:
    """Consume ``sample`` records and call ``model.predict`` on each one; records/s."""
    import keras

    from anomaly_contract.model_dir import current_version, load_version_dir

    version_dir = model_dir / "versions" / str(current_version(model_dir))
    bundle = load_version_dir(version_dir)
    model = keras.models.load_model(version_dir / "model.keras", compile=False)
    offset = np.asarray(bundle.scaler.offset)
    scale = np.asarray(bundle.scaler.scale)
    model.predict(np.zeros((1, N_FEATURES)), verbose=0)  # build the predict function once
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=unique_name("bench-predict"),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    seen = 0
    flagged = 0
    t0 = None
    try:
        while seen < sample:
            for recs in consumer.poll(timeout_ms=500, max_records=sample - seen).values():
                for r in recs:
                    if t0 is None:
                        t0 = time.monotonic()
                    x = (
                        np.asarray(json.loads(r.value)["features"], dtype=np.float32) - offset
                    ) / scale
                    rec = model.predict(x[None, :], verbose=0)
                    flagged += float(np.mean((rec[0] - x) ** 2)) > bundle.threshold
                    seen += 1
        elapsed = time.monotonic() - (t0 or time.monotonic())
    finally:
        consumer.close()
    return seen / elapsed


# ------------------------------------------------------------------------------ latency run
TOOLS_CLASSPATH = f"{REPO}/deploy/local/lib/*:{REPO}/deploy/local/lib/tools/*"
KAFKA_SH = REPO / "deploy" / "local" / "kafka.sh"


@dataclass
class Feed:
    """What a paced producer did: records sent, its own rate and CPU time (None if unknown)."""

    sent: int
    rate: float
    cpu_s: float | None = None


def paced_produce(bootstrap: str, topic: str, values: list[bytes], rate: float) -> Feed:
    """kafka-python in this process, sending at ``rate`` records/s in 10 ms slices."""
    producer = make_producer(bootstrap, linger_ms=5)
    cpu0 = time.process_time()
    t0 = time.monotonic()
    sent = 0
    while sent < len(values):
        due = min(len(values), int((time.monotonic() - t0) * rate) + 1)
        while sent < due:
            producer.send(topic, value=values[sent], key=str(sent).encode())
            sent += 1
        time.sleep(0.01)
    producer.flush()
    achieved = len(values) / (time.monotonic() - t0)
    producer.close()
    # process_time() counts the whole benchmark process (also the Worker's sampler thread).
    return Feed(sent, achieved, time.process_time() - cpu0)


def java_paced_produce(
    bootstrap: str, topic: str, payloads: list[bytes], n: int, rate: float, work: Path
) -> Feed:
    """Kafka's ``ProducerPerformance`` (kafka-tools, same version as the broker) in its own JVM.

    Sends ``n`` records at ``rate`` records/s, each value drawn at random from ``payloads`` (no
    key, so the producer's sticky partitioner spreads batches over the partitions). The tool
    sends ``ProducerRecord(topic, value)`` without a timestamp: the producer stamps each record
    with the wall clock at ``send()`` (CreateTime), which is what the latency is measured from.
    """
    subprocess.run([str(KAFKA_SH), "fetch"], check=True)  # lib/tools: no-op once fetched
    payload_file = work / f"{topic}.payloads"
    payload_file.write_bytes(b"\n".join(payloads) + b"\n")  # one JSON record a line
    java = (
        str(Path(os.environ["JAVA_HOME"]) / "bin" / "java") if "JAVA_HOME" in os.environ else "java"
    )
    cmd = [
        # C1 only: ~1 CPU-second less JIT work at start, same pace (~2.5 us CPU a record)
        java, "-Xms64m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
        "-Djava.awt.headless=true",
        "-cp", TOOLS_CLASSPATH, "org.apache.kafka.tools.ProducerPerformance",
        "--topic", topic, "--num-records", str(n), "--throughput", str(round(rate)),
        "--payload-file", str(payload_file),
        "--producer-props", f"bootstrap.servers={bootstrap}", "acks=1", "linger.ms=5",
        "batch.size=65536",
    ]  # fmt: skip
    log = work / f"{topic}.producer.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120 + 3 * n / max(rate, 1.0)
        while True:
            # wait4: the child's own CPU time (rusage), not just its exit status
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise SystemExit(f"ProducerPerformance did not finish in time; see {log}")
            time.sleep(0.1)
    text = log.read_text(errors="replace")
    # Last line: "N records sent, R records/sec (M MB/sec), ... ms avg latency, ..." (whole run)
    summary = re.findall(r"^(\d+) records sent, ([\d.]+) records/sec", text, re.MULTILINE)
    if proc.returncode != 0 or not summary:
        raise SystemExit(f"ProducerPerformance failed ({proc.returncode}):\n{text[-3000:]}")
    sent, achieved = summary[-1]
    return Feed(int(sent), float(achieved), usage.ru_utime + usage.ru_stime)


def input_window(bootstrap: str, topic: str, warmup_s: float) -> tuple[float, int, float]:
    """The measured part of the input topic: records after the feed's first ``warmup_s``.

    Returns (window start as a record timestamp in ms, records in the window, their rate per
    second from the window start to the last record's timestamp). Also checks that the records
    carry CreateTime (the producer's send time), which the latency is computed from.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        ends = consumer.end_offsets(tps)
        firsts = [o for o in consumer.offsets_for_times({tp: 0 for tp in tps}).values() if o]
        start_ms = min(o.timestamp for o in firsts) + warmup_s * 1000
        at_start = consumer.offsets_for_times({tp: int(start_ms) for tp in tps})
        counted = sum(ends[tp] - (at_start[tp].offset if at_start[tp] else ends[tp]) for tp in tps)
        last_ms = start_ms
        consumer.assign([tp for tp in tps if ends[tp] > 0])
        for tp in consumer.assignment():
            consumer.seek(tp, ends[tp] - 1)
        pending = set(consumer.assignment())
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for tp, recs in consumer.poll(timeout_ms=500).items():
                for r in recs:
                    if r.timestamp_type != 0:
                        raise SystemExit(f"{topic}: records carry LogAppendTime, not CreateTime")
                    last_ms = max(last_ms, r.timestamp)
                pending.discard(tp)
    finally:
        consumer.close()
    return start_ms, counted, counted / max((last_ms - start_ms) / 1000.0, 1e-3)


def event_latencies(
    bootstrap: str, topic: str, since_ms: float = 0.0, timeout_s: float = 30
) -> np.ndarray:
    """Seconds from each source record's timestamp to its event's (producer) timestamp.

    Only events of source records stamped at or after ``since_ms``."""
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
        consumer_timeout_ms=3000,
    )  # fmt: skip
    out = []
    deadline = time.monotonic() + timeout_s
    try:
        for r in consumer:
            src = json.loads(r.value)["source"]["timestamp_ms"]
            if src >= since_ms:
                out.append((r.timestamp - src) / 1000.0)
            if time.monotonic() > deadline:
                break
    finally:
        consumer.close()
    return np.asarray(out)


def histogram_quantile(m: dict, name: str, q: float) -> float:
    """Prometheus-style quantile (linear within a bucket) from a scraped histogram."""
    buckets = sorted(
        (float(dict(labels)["le"]), v) for (n, labels), v in m.items() if n == f"{name}_bucket"
    )
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-9)
        prev_le, prev_c = le, c
    return float("nan")


def latency_run(
    bootstrap: str,
    model_dir: Path,
    rate: float,
    seconds: float,
    log: Path,
    producer: str = "java",
    warmup_s: float = 3.0,
) -> dict[str, float | str]:
    """A fresh worker fed at ``rate`` records/s for ``warmup_s + seconds``.

    The figures count the source records sent after the feed's first ``warmup_s`` (the JVM's
    JIT warm-up, the worker's first fetches), except the worker's histogram (all records)."""
    topic = unique_name("bench-latency")
    create_topic(bootstrap, topic, partitions=PARTITIONS)
    create_topic(bootstrap, f"{topic}-out")
    create_topic(bootstrap, f"{topic}-dlq")
    n = int(rate * (seconds + warmup_s))
    env = worker_env(bootstrap, topic, model_dir, BATCH_MAX_WAIT_MS=100)
    w, _ = start_worker(env, log)
    try:
        if producer == "java":
            payloads = encode_records(sensor_matrix(5000, seed=3), start=0)
            feed = java_paced_produce(bootstrap, topic, payloads, n, rate, log.parent)
        else:
            values = encode_records(sensor_matrix(n, seed=3), start=0)
            feed = paced_produce(bootstrap, topic, values, rate)
        w.wait_counted(feed.sent, timeout_s=60)
        m = w.metrics()
        start_ms, counted, achieved = input_window(bootstrap, topic, warmup_s)
        lat = event_latencies(bootstrap, f"{topic}-out", since_ms=start_ms)
        peak = w.peak_rss / 2**20
        peak_uss = w.peak_uss / 2**20
    finally:
        w.stop()
    name = "anomaly_worker_end_to_end_latency_seconds"
    return {
        "producer": producer,
        "target_rate": rate,
        "achieved_rate": achieved,
        "measured_records": float(counted),
        "warmup_s": warmup_s,
        "producer_sent": float(feed.sent),
        "producer_rate": feed.rate,
        "producer_cpu_s": feed.cpu_s if feed.cpu_s is not None else float("nan"),
        "events": float(lat.size),
        "p50_ms": float(np.percentile(lat, 50) * 1000) if lat.size else float("nan"),
        "p99_ms": float(np.percentile(lat, 99) * 1000) if lat.size else float("nan"),
        "hist_p50_ms": histogram_quantile(m, name, 0.5) * 1000,
        "hist_p99_ms": histogram_quantile(m, name, 0.99) * 1000,
        "peak_rss_mb": peak,
        "peak_uss_mb": peak_uss,
    }


# ------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=200_000, help="records in the shared topic")
    ap.add_argument("--quick", action="store_true", help="30,000 records, 10 s latency run")
    ap.add_argument("--predict-sample", type=int, default=300, help="records for (c)")
    ap.add_argument(
        "--latency-seconds", type=float, default=20.0, help="measured part of each latency run"
    )
    ap.add_argument(
        "--latency-warmup-seconds",
        type=float,
        default=3.0,
        help="feed this long before the measured part (not counted; default 3)",
    )
    ap.add_argument(
        "--latency-producer",
        choices=("java", "python"),
        default="java",
        help="paced feed of the latency runs: Kafka's ProducerPerformance in its own JVM (default)"
        " or kafka-python in the benchmark process",
    )
    ap.add_argument(
        "--latency-loads",
        default="0.5",
        help="comma-separated shares of (b)'s rate to measure latency at (default 0.5)",
    )
    ap.add_argument(
        "--profile", type=Path, help="py-spy the worker during (b); collapsed stacks to this file"
    )
    ap.add_argument("--batch-max-records", type=int, default=1000, help="worker batch size (b)")
    ap.add_argument("--epochs", type=int, default=5, help="training epochs of the model")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (model, worker logs)")
    args = ap.parse_args(argv)
    if args.quick:
        args.records = min(args.records, 30_000)
        args.latency_seconds = min(args.latency_seconds, 10.0)

    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    broker = LocalKafka()
    print(f"starting a local broker on {broker.bootstrap} ...", file=sys.stderr)
    broker.start()
    try:
        model_dir = work / "models"
        train_s = train_model(model_dir, args.epochs)
        print(f"model trained in {train_s:.1f}s", file=sys.stderr)
        topic = unique_name("bench-in")
        create_topic(broker.bootstrap, topic, partitions=PARTITIONS)
        for t in (f"{topic}-out", f"{topic}-dlq"):
            create_topic(broker.bootstrap, t)
        values = encode_records(sensor_matrix(args.records, seed=2))
        record_bytes = sum(map(len, values)) / len(values)
        prod_rate = produce(broker.bootstrap, topic, values)
        del values
        print(f"produced {args.records} records ({record_bytes:.0f} B each) at {prod_rate:,.0f}/s",
              file=sys.stderr)  # fmt: skip

        a = bare_consume(broker.bootstrap, topic, args.records, args.batch_max_records)
        print(f"(a) bare consume + json: {a:,.0f} records/s", file=sys.stderr)
        env = worker_env(
            broker.bootstrap, topic, model_dir,
            BATCH_MAX_RECORDS=args.batch_max_records, BATCH_MAX_WAIT_MS=100,
        )  # fmt: skip
        b = run_worker(env, args.records, work / "worker-b.log", args.profile)
        for label, share in b.profile:
            print(f"  {share:5.1f}%  {label}", file=sys.stderr)
        print(f"(b) worker: {b.rate:,.0f} records/s, ready {b.ready_s:.1f}s", file=sys.stderr)
        c = predict_per_message(broker.bootstrap, topic, model_dir, args.predict_sample)
        print(f"(c) predict per message: {c:,.1f} records/s", file=sys.stderr)
        lats = []
        for share in (float(v) for v in args.latency_loads.split(",")):
            lat = latency_run(
                broker.bootstrap, model_dir, b.rate * share, args.latency_seconds,
                work / f"worker-lat-{share}.log", args.latency_producer,
                args.latency_warmup_seconds,
            )  # fmt: skip
            lat["load"] = share
            lats.append(lat)
            print(f"latency at {share:.0%}: {lat}", file=sys.stderr)
    finally:
        broker.close()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    peak = max(b.peak_rss_mb, *(lat["peak_rss_mb"] for lat in lats))
    peak_uss = max(b.peak_uss_mb, *(lat["peak_uss_mb"] for lat in lats))
    figures = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "records": args.records,
        "record_bytes": record_bytes,
        "partitions": PARTITIONS,
        "batch_max_records": args.batch_max_records,
        "a_bare_rate": a,
        "b_worker_rate": b.rate,
        "c_predict_rate": c,
        "b_over_a": b.rate / a,
        "b_over_c": b.rate / c,
        "ready_s": b.ready_s,
        "predict_sample": args.predict_sample,
        "peak_rss_mb": peak,
        "peak_uss_mb": peak_uss,
        "latency_producer": args.latency_producer,
        "latency": lats,
        "worker_metrics": b.metrics,
        "profile": b.profile,
        "stalled_starts": STALLS,
    }
    print(markdown(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


FEEDS = {"java": "ProducerPerformance (JVM)", "python": "kafka-python in the benchmark"}


def _ok(ok: bool) -> str:
    return "yes" if ok else "**no**"


def markdown(f: dict) -> str:
    cpu = platform.processor() or platform.machine()
    rows = [
        ("(a) bare kafka-python consume + json.loads", f"{f['a_bare_rate']:,.0f} records/s", "", ""),
        ("(b) anomaly-worker", f"{f['b_worker_rate']:,.0f} records/s", "", ""),
        (f"(c) model.predict per message ({f.get('predict_sample', 300)} sampled)",
         f"{f['c_predict_rate']:,.1f} records/s", "", ""),
        ("b/a", f"{f['b_over_a']:.2f}", TARGETS["b/a"], _ok(f["b_over_a"] >= 0.8)),
        ("b/c", f"{f['b_over_c']:,.0f}", TARGETS["b/c"], _ok(f["b_over_c"] >= 1000)),
        *[row for lat in f["latency"] for row in (
            (f"latency p50 / p99 at {lat['load']:.0%} load, {lat['achieved_rate']:,.0f} records/s"
             f" from {FEEDS.get(lat.get('producer', 'python'), '?')}"
             f" (record timestamp -> event, {lat['events']:.0f} events)",
             f"{lat['p50_ms']:.0f} / {lat['p99_ms']:.0f} ms",
             TARGETS["p99"] if lat["load"] == 0.5 else "",
             _ok(lat["p99_ms"] <= 250) if lat["load"] == 0.5 else ""),
            (f"latency p50 / p99 at {lat['load']:.0%} load (worker histogram, all records)",
             f"{lat['hist_p50_ms']:.0f} / {lat['hist_p99_ms']:.0f} ms", "", ""),
        )],
        ("worker peak RSS", f"{f['peak_rss_mb']:.0f} MB", TARGETS["rss"], _ok(f["peak_rss_mb"] <= 600)),
        ("worker peak USS (memory of its own)", f"{f['peak_uss_mb']:.0f} MB", "", ""),
        ("worker ready after start", f"{f['ready_s']:.1f} s", TARGETS["ready"], _ok(f["ready_s"] <= 10)),
        ("worker starts stalled with an empty assignment (restarted)",
         str(len(f["stalled_starts"])), "0", _ok(not f["stalled_starts"])),
    ]  # fmt: skip
    out = [
        f"Throughput benchmark, {f['date']}: {f['records']:,} records of {N_FEATURES} features "
        f"(~{f['record_bytes']:.0f} B JSON), {f['partitions']} partitions, one local broker, "
        f"{os.cpu_count()} CPUs ({cpu}); worker batch {f['batch_max_records']} records.",
        "",
        "| measure | value | target | met |",
        "| --- | --- | --- | --- |",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
    ]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
