"""A real local Kafka broker and small client helpers, for tests, benchmarks and the demo.

`LocalKafka` drives `deploy/local/kafka.sh` (a single KRaft node on a free loopback port with its
own data directory), so several can run at once. The client helpers use kafka-python.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

REPO_ROOT = Path(__file__).resolve().parents[1]
KAFKA_SH = Path(os.environ.get("KAFKA_SH", REPO_ROOT / "deploy" / "local" / "kafka.sh"))

IsolationLevel = Literal["read_uncommitted", "read_committed"]
_KEYSTORE_PASSWORD = "local-kafka-tls"  # a throw-away test keystore's


class KafkaBrokerError(RuntimeError):
    """The local broker could not be fetched, started or stopped."""


def free_port(avoid: set[int] | frozenset[int] = frozenset()) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, and not one of ``avoid``
    (the kernel may hand out the same free port twice in a row: one broker's listeners must
    differ)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port


def unique_name(prefix: str = "t") -> str:
    """A topic or group name no other test uses: `prefix-<10 hex digits>`."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class LocalKafka:
    """One real single-node Kafka broker on 127.0.0.1, data in its own directory.

    `restart()` keeps the data and the ports. Without `data_dir`, a temporary directory is made
    and removed by `close()`. Use as a context manager or call `start()` and `close()`.

    With ``sasl_users`` ({user: password}) the broker also listens for SASL_PLAINTEXT on
    `sasl_bootstrap` (PLAIN and SCRAM-SHA-256, both knowing these users); the PLAINTEXT
    listener stays, for setting up topics. With ``tls`` too, it also listens for SASL_SSL on
    `ssl_bootstrap`, with a self-signed certificate for 127.0.0.1 made by `keytool` at start
    (`ca_file` is that certificate in PEM, the CA file for clients).
    """

    def __init__(
        self,
        port: int | None = None,
        data_dir: str | Path | None = None,
        start_timeout_s: float = 60.0,
        sasl_users: dict[str, str] | None = None,
        tls: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.sasl_users = dict(sasl_users or {})
        self.sasl_port = free_port({self.port}) if self.sasl_users else None
        if tls and not self.sasl_users:
            raise ValueError("tls=True needs sasl_users: the TLS listener is SASL_SSL")
        self.ssl_port = free_port({self.port, self.sasl_port or 0}) if tls else None
        self._own_dir = data_dir is None
        self.data_dir = (
            Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="local-kafka-"))
        )
        self.start_timeout_s = start_timeout_s

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_bootstrap(self) -> str:
        """`127.0.0.1:PORT` of the SASL_PLAINTEXT listener (only with ``sasl_users``)."""
        if self.sasl_port is None:
            raise KafkaBrokerError("this broker has no SASL listener: pass sasl_users")
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def ssl_bootstrap(self) -> str:
        """`127.0.0.1:PORT` of the SASL_SSL listener (only with ``tls``)."""
        if self.ssl_port is None:
            raise KafkaBrokerError("this broker has no SASL_SSL listener: pass tls=True")
        return f"127.0.0.1:{self.ssl_port}"

    @property
    def keystore(self) -> Path:
        return self.data_dir / "tls" / "broker.p12"

    @property
    def ca_file(self) -> Path:
        """The broker's self-signed certificate (PEM): the CA file for TLS clients."""
        return self.data_dir / "tls" / "ca.pem"

    def _make_keystore(self) -> None:
        """A self-signed key pair for 127.0.0.1/localhost, valid 7 days, once per data dir."""
        if self.keystore.is_file() and self.ca_file.is_file():
            return
        java_home = os.environ.get("JAVA_HOME")
        keytool = str(Path(java_home) / "bin" / "keytool") if java_home else "keytool"
        self.keystore.parent.mkdir(parents=True, exist_ok=True)
        self.keystore.unlink(missing_ok=True)
        common = ["-alias", "broker", "-keystore", str(self.keystore)]
        common += ["-storepass", _KEYSTORE_PASSWORD]
        for args in (
            ["-genkeypair", "-keyalg", "RSA", "-keysize", "2048", "-storetype", "PKCS12"]
            + ["-keypass", _KEYSTORE_PASSWORD, "-dname", "CN=localhost", "-validity", "7"]
            + ["-ext", "SAN=ip:127.0.0.1,dns:localhost"],
            ["-exportcert", "-rfc", "-file", str(self.ca_file)],
        ):
            proc = subprocess.run(
                [keytool, *args, *common], capture_output=True, text=True, timeout=120
            )
            if proc.returncode != 0:
                raise KafkaBrokerError(f"keytool {args[0]} failed:\n{proc.stdout}{proc.stderr}")

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs, else None."""
        if not self.data_dir.exists() or self._run("status", check=False).returncode != 0:
            return None
        return int((self.data_dir / "kafka.pid").read_text().strip())

    def _run(self, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = dict(
            os.environ,
            KAFKA_PORT=str(self.port),
            KAFKA_DATA_DIR=str(self.data_dir),
            KAFKA_START_TIMEOUT=str(int(self.start_timeout_s)),
            # set even when empty: a developer's own KAFKA_SASL_* must not leak into a broker
            KAFKA_SASL_PORT=str(self.sasl_port or ""),
            KAFKA_SASL_USERS=",".join(f"{u}:{pw}" for u, pw in self.sasl_users.items()),
            KAFKA_SSL_PORT=str(self.ssl_port or ""),
            KAFKA_SSL_KEYSTORE=str(self.keystore) if self.ssl_port else "",
            KAFKA_SSL_KEYSTORE_PASSWORD=_KEYSTORE_PASSWORD if self.ssl_port else "",
        )
        proc = subprocess.run(
            ["bash", str(KAFKA_SH), command],
            env=env,
            capture_output=True,
            text=True,
            timeout=self.start_timeout_s + 120,
        )
        if check and proc.returncode != 0:
            raise KafkaBrokerError(
                f"kafka.sh {command} failed (exit {proc.returncode}) for {self.bootstrap}, "
                f"data {self.data_dir}:\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def start(self) -> LocalKafka:
        """Start the broker (fetching jars if needed) and return once it answers."""
        if self.ssl_port is not None:
            self._make_keystore()
        self._run("start")
        return self

    def stop(self) -> None:
        """Stop the broker: SIGTERM, then SIGKILL if it does not exit in time. Keeps the data."""
        self._run("stop")

    def restart(self) -> None:
        """Stop and start again on the same ports with the same data."""
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL the broker (a crash); `start()` brings it back with its data."""
        pid = self.pid
        if pid is None:
            return
        os.kill(pid, 9)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def pause(self) -> None:
        """SIGSTOP the broker: it holds its connections but answers nothing (a hung broker, or
        a network path dropping packets) until `resume`. Outages of any length, without a
        restart's start-up time."""
        pid = self.pid
        if pid is None:
            raise KafkaBrokerError(f"no broker runs for {self.data_dir}")
        os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a `pause`d broker: it answers again at once."""
        pid = self.pid
        if pid is not None:
            os.kill(pid, signal.SIGCONT)

    def close(self) -> None:
        """Stop the broker and remove its data if the directory was made here."""
        try:
            self.stop()
        finally:
            if self._own_dir:
                shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, lines: int = 50) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def running_broker(**kwargs: Any) -> Iterator[LocalKafka]:
    """A started `LocalKafka(**kwargs)`, closed afterwards, and also when it fails to start
    (the error, with the broker's log, propagates: a test needing it fails, never skips)."""
    broker = LocalKafka(**kwargs)
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


def create_topic(
    bootstrap: str, name: str, partitions: int = 1, exist_ok: bool = False, timeout_s: float = 30.0
) -> None:
    """Create a topic (replication factor 1) and wait until its leaders are known.

    No time retention: tests stamp records in the past (2023), which the broker's default 7-day
    retention deletes at its next check (every 5 minutes), under whichever test runs then."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-admin")
    try:
        try:
            admin.create_topics(
                [
                    NewTopic(
                        name,
                        num_partitions=partitions,
                        replication_factor=1,
                        topic_configs={"retention.ms": "-1"},
                    )  # fmt: skip
                ],
                timeout_ms=int(timeout_s * 1000),
            )
        except TopicAlreadyExistsError:
            if not exist_ok:
                raise
    finally:
        admin.close()
    _wait_for_partitions(bootstrap, name, partitions, timeout_s)


def _wait_for_partitions(bootstrap: str, topic: str, partitions: int, timeout_s: float) -> None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            known = consumer.partitions_for_topic(topic)
            if known is not None and len(known) >= partitions:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic} has partitions {known}, expected {partitions}")
            time.sleep(0.1)
            consumer.topics()  # refresh metadata
    finally:
        consumer.close()


def _to_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"keys must be str, bytes or None, not {type(value).__name__}")


def produce_json(
    bootstrap: str,
    topic: str,
    values: Iterable[Any],
    keys: Sequence[str | bytes | None] | None = None,
    headers: Sequence[list[tuple[str, bytes]] | None] | None = None,
    partition: int | None = None,
) -> list[tuple[int, int]]:
    """Send each value as UTF-8 JSON (bytes values are sent as they are, for poison records).

    Waits until the broker acknowledges every record (acks=all) and returns their
    (partition, offset) pairs in order.
    """
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        futures = []
        for i, value in enumerate(values):
            payload = value if isinstance(value, bytes) else json.dumps(value).encode()
            futures.append(
                producer.send(
                    topic,
                    value=payload,
                    key=_to_bytes(keys[i]) if keys is not None else None,
                    headers=headers[i] if headers is not None and headers[i] else None,
                    partition=partition,
                )
            )
        producer.flush()
        result = []
        for future in futures:
            meta = future.get(timeout=30)
            result.append((meta.partition, meta.offset))
        return result
    finally:
        producer.close()


@dataclass(frozen=True)
class ConsumedRecord:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    def json(self) -> Any:
        """The value decoded as UTF-8 JSON."""
        if self.value is None:
            raise ValueError("record has no value")
        return json.loads(self.value)

    def header(self, name: str) -> bytes | None:
        """The last header called `name`, or None."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found


def consume_all(
    bootstrap: str,
    topic: str,
    expected: int | None = None,
    timeout_s: float = 30.0,
    isolation_level: IsolationLevel = "read_uncommitted",
) -> list[ConsumedRecord]:
    """Read a topic from the beginning of every partition, without a consumer group.

    With `expected`, return as soon as that many records were read (or at the timeout, with what
    was read: the caller asserts). Without it, read up to the end offsets seen at the start (for
    read_committed, the last stable offsets) and return. Records come sorted by
    (partition, offset).
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level=isolation_level,
    )
    records: list[ConsumedRecord] = []
    try:
        deadline = time.monotonic() + timeout_s
        partitions = consumer.partitions_for_topic(topic)
        while not partitions:
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic} does not exist")
            time.sleep(0.1)
            consumer.topics()
            partitions = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps) if expected is None else {}
        while time.monotonic() < deadline:
            if expected is not None and len(records) >= expected:
                break
            if expected is None and all(consumer.position(tp) >= end[tp] for tp in tps):
                break
            batches = consumer.poll(timeout_ms=200)
            for tp_records in batches.values():
                for r in tp_records:
                    records.append(
                        ConsumedRecord(
                            topic=r.topic,
                            partition=r.partition,
                            offset=r.offset,
                            timestamp_ms=r.timestamp,
                            key=r.key,
                            value=r.value,
                            headers=list(r.headers or []),
                        )
                    )
        else:
            if expected is None:
                raise TimeoutError(f"could not read {topic} to its end within {timeout_s}s")
    finally:
        consumer.close()
    records.sort(key=lambda rec: (rec.partition, rec.offset))
    return records
