"""Producers that fill the throughput benchmark's topics: in bulk, or paced at a rate.

- `produce_bulk`: kafka-python as fast as it goes (the topic every reader of a run shares);
- `java_paced_produce`: Kafka's own ``ProducerPerformance`` in its own JVM (the latency runs'
  feed: ~2.5 us of CPU a record, so it does not starve the worker it measures);
- `python_paced_produce`: kafka-python in the benchmark process (most of a CPU at 30,000
  records/s; kept for comparison).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaProducer

REPO = Path(__file__).resolve().parents[1]
KAFKA_SH = REPO / "deploy" / "local" / "kafka.sh"
TOOLS_CLASSPATH = f"{REPO}/deploy/local/lib/*:{REPO}/deploy/local/lib/tools/*"


@dataclass
class Feed:
    """What a paced producer did: records sent, its own rate and CPU time (None if unknown)."""

    sent: int
    rate: float
    cpu_s: float | None = None


def _producer(bootstrap: str, linger_ms: int) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=linger_ms, batch_size=512 * 1024,
        max_request_size=4 * 1024 * 1024,
    )  # fmt: skip


def produce_bulk(bootstrap: str, topic: str, values: list[bytes]) -> float:
    """Send ``values`` (keyed by their position) as fast as the client goes; returns records/s."""
    producer = _producer(bootstrap, linger_ms=20)
    t0 = time.monotonic()
    for i, v in enumerate(values):
        producer.send(topic, value=v, key=str(i).encode())
    producer.flush()
    elapsed = time.monotonic() - t0
    producer.close()
    return len(values) / elapsed


def python_paced_produce(bootstrap: str, topic: str, values: list[bytes], rate: float) -> Feed:
    """kafka-python in this process, sending at ``rate`` records/s in 10 ms slices.

    Its CPU time is the whole benchmark process's (``process_time``)."""
    producer = _producer(bootstrap, linger_ms=5)
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
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else "java"
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
