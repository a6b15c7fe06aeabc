"""The trainer and the worker on a real broker that demands SASL (PLAIN and SCRAM-SHA-256).

One broker for this module (deploy/local/kafka.sh with KAFKA_SASL_PORT, KAFKA_SSL_PORT and
KAFKA_SASL_USERS): its PLAINTEXT listener is only used to create and fill topics; everything
under test connects to the SASL_PLAINTEXT listener, or to the SASL_SSL one (a self-signed
certificate made by keytool). If the broker cannot start, these tests fail with its log.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka_helpers import (
    LocalKafka,
    consume_all,
    create_topic,
    produce_json,
    running_broker,
    unique_name,
)
from pydantic import SecretStr
from worker_harness import REPO, WorkerFactory, make_topics

from anomaly_contract.errors import DataError
from anomaly_contract.kafka_connection import PLAINTEXT, KafkaConnection
from anomaly_contract.model_dir import current_version, load_bundle
from trainer.builtin_data import make_sensor_records
from trainer.cli import main as trainer_main
from trainer.kafka_source import read_topic
from trainer.publish import list_topic_versions

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

USERS = {"trainer": "trainer-pw", "worker": "worker-pw"}
TRUTH = ("label", "anomaly_kind", "anomaly_sensor")


@pytest.fixture(scope="module")
def secured() -> Iterator[LocalKafka]:
    """A broker with SASL_PLAINTEXT and SASL_SSL listeners; fails loudly if it won't start."""
    with running_broker(sasl_users=USERS, tls=True) as broker:
        yield broker


def scram(user: str = "trainer") -> KafkaConnection:
    return KafkaConnection(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username=user,
        sasl_password=SecretStr(USERS[user]),
    )


def fill(secured: LocalKafka, topic: str, n: int, start: int, rate: float) -> list[dict]:
    """Sensor readings (truth fields stripped), produced over the PLAINTEXT listener."""
    records = make_sensor_records(n, anomaly_rate=rate, seed=21, start_index=start)
    create_topic(secured.bootstrap, topic, partitions=2)
    produce_json(
        secured.bootstrap,
        topic,
        [{k: v for k, v in r.items() if k not in TRUTH} for r in records],
        keys=[r["id"] for r in records],
    )
    return records


@pytest.fixture(scope="module")
def published(secured: LocalKafka, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`fit kafka://<SASL listener>/... --publish-topic kafka://<SASL listener>/...` once, with
    the security settings from ANOMALY_* (PLAIN). Returns (model dir, model topic name)."""
    root = tmp_path_factory.mktemp("sasl-fit")
    data_topic, model_topic = unique_name("train"), unique_name("models")
    fill(secured, data_topic, 800, start=0, rate=0.0)
    sasl = secured.sasl_bootstrap
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("ANOMALY_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
        mp.setenv("ANOMALY_SASL_MECHANISM", "PLAIN")
        mp.setenv("ANOMALY_SASL_USERNAME", "trainer")
        mp.setenv("ANOMALY_SASL_PASSWORD", USERS["trainer"])
        code = trainer_main(
            [
                "fit",
                f"kafka://{sasl}/{data_topic}?max_records=600&timeout=30",
                "--model-dir",
                str(root / "models"),
                "--epochs",
                "12",
                "--calibration",
                "holdout",
                "--quiet",
                "--seed",
                "2",
                "--publish-topic",
                f"kafka://{sasl}/{model_topic}",
            ]
        )
    assert code == 0
    return root / "models", model_topic


def test_fit_reads_kafka_and_publishes_over_sasl(
    secured: LocalKafka, published: tuple[Path, str], tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    model_dir, model_topic = published
    manifest = load_bundle(model_dir).manifest
    assert manifest.rows.total == 600  # the bounded read over SASL gave the rows
    on_topic = list_topic_versions(secured.sasl_bootstrap, model_topic, connection=scram())
    assert [(v.version, v.is_current, v.problem) for v in on_topic] == [("v1", True, None)]
    assert on_topic[0].manifest is not None and on_topic[0].manifest.threshold == pytest.approx(
        manifest.threshold
    )

    # `versions`, `promote` and `publish` with flags and a password file (SCRAM, other user).
    pw = tmp_path / "pw"
    pw.write_text(USERS["worker"] + "\n")
    flags = ["--model-dir", str(model_dir), "--security-protocol", "SASL_PLAINTEXT"]
    flags += ["--sasl-mechanism", "SCRAM-SHA-256", "--sasl-username", "worker"]
    flags += ["--sasl-password-file", str(pw)]
    url = f"kafka://{secured.sasl_bootstrap}/{model_topic}"
    assert trainer_main(["versions", "--json", "--publish-topic", url, *flags]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["current"]) for r in listed] == [("v1", True)]
    assert trainer_main(["promote", "v1", "--publish-topic", url, *flags]) == 0
    assert "v1 is current on model topic" in capsys.readouterr().out
    other = unique_name("models-copy")
    other_url = f"kafka://{secured.sasl_bootstrap}/{other}"
    assert trainer_main(["publish", "v1", "--publish-topic", other_url, *flags]) == 0
    copied = list_topic_versions(secured.sasl_bootstrap, other, connection=scram())
    assert [(v.version, v.is_current, v.sha256) for v in copied] == [
        ("v1", True, on_topic[0].sha256)
    ]


def test_wrong_password_is_a_one_line_error_within_the_timeout(
    secured: LocalKafka, tmp_path: Path
) -> None:
    topic = unique_name("wrongpw")
    fill(secured, topic, 50, start=0, rate=0.0)
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "ANOMALY_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "ANOMALY_SASL_MECHANISM": "SCRAM-SHA-256",
        "ANOMALY_SASL_USERNAME": "trainer",
        "ANOMALY_SASL_PASSWORD": "not-the-password",
    }
    source = f"kafka://{secured.sasl_bootstrap}/{topic}?timeout=5"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "fit", source, "--model-dir", str(tmp_path / "m")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - t0
    err = proc.stderr.strip()
    assert proc.returncode == 2, proc.stderr
    assert err.splitlines() == [err], err
    # The broker answers a failed SCRAM exchange with an error and hangs up; which of the two
    # the client sees first varies ("authentication failed" / "the broker closed the connection").
    assert "(SASL_PLAINTEXT/SCRAM-SHA-256 as trainer): check the SASL user and password" in err
    assert "not-the-password" not in err
    assert elapsed < 60, f"took {elapsed:.0f}s for a 5 s read timeout"
    assert not (tmp_path / "m").exists() or current_version(tmp_path / "m") is None


def test_wrong_protocol_or_plain_password_fails_within_the_timeout(
    secured: LocalKafka,
) -> None:
    topic = unique_name("plain")
    fill(secured, topic, 20, start=0, rate=0.0)
    t0 = time.monotonic()
    with pytest.raises(DataError, match="cannot connect to Kafka") as info:
        read_topic(f"kafka://{secured.sasl_bootstrap}/{topic}?timeout=3", PLAINTEXT)
    assert "\n" not in str(info.value)
    assert "does its listener expect SASL or SSL rather than PLAINTEXT?" in str(info.value)
    assert time.monotonic() - t0 < 20
    # PLAIN with a wrong password: the broker just hangs up, which is reported as such.
    wrong = KafkaConnection(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="worker",
        sasl_password=SecretStr("wrong"),
    )
    with pytest.raises(DataError, match="check the SASL user and password") as info:
        read_topic(f"kafka://{secured.sasl_bootstrap}/{topic}?timeout=3", wrong)
    assert "SASL_PLAINTEXT/PLAIN as worker" in str(info.value)
    # The same read with the right settings works: it was only the protocol.
    assert read_topic(f"kafka://{secured.sasl_bootstrap}/{topic}", scram("worker")).n_read == 20


def test_trainer_over_sasl_ssl_with_the_ca_file(
    secured: LocalKafka,
    published: tuple[Path, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
) -> None:  # type: ignore[no-untyped-def]
    model_dir, _ = published
    tls = scram().model_copy(
        update={"security_protocol": "SASL_SSL", "ssl_cafile": secured.ca_file}
    )
    topic = unique_name("tls")
    fill(secured, topic, 30, start=0, rate=0.0)
    assert read_topic(f"kafka://{secured.ssl_bootstrap}/{topic}", tls).n_read == 30

    # `publish` over TLS: password from the environment, the rest from flags.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ANOMALY_SASL_PASSWORD", USERS["trainer"])
    model_topic = unique_name("tls-models")
    url = f"kafka://{secured.ssl_bootstrap}/{model_topic}"
    flags = ["--security-protocol", "SASL_SSL", "--sasl-mechanism", "PLAIN"]
    flags += ["--sasl-username", "trainer", "--ssl-cafile", str(secured.ca_file)]
    assert (
        trainer_main(["publish", "--model-dir", str(model_dir), "--publish-topic", url, *flags])
        == 0
    )
    assert "v1 sent and made current" in capsys.readouterr().out
    listed = list_topic_versions(secured.ssl_bootstrap, model_topic, connection=tls)
    assert [(v.version, v.is_current) for v in listed] == [("v1", True)]

    # Without the CA file the certificate is not trusted: one line that says so, in time.
    t0 = time.monotonic()
    no_ca = tls.model_copy(update={"ssl_cafile": None})
    with pytest.raises(DataError, match="the TLS handshake failed") as info:
        read_topic(f"kafka://{secured.ssl_bootstrap}/{topic}?timeout=3", no_ca)
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value) and "\n" not in str(info.value)
    assert time.monotonic() - t0 < 20


def test_worker_reads_the_model_topic_scores_and_emits_over_sasl(
    secured: LocalKafka, published: tuple[Path, str], tmp_path: Path
) -> None:
    _, model_topic = published
    topics = make_topics(secured.bootstrap, unique_name("sasl"), partitions=2)
    records = make_sensor_records(300, anomaly_rate=0.2, seed=22, start_index=10_000)
    produce_json(
        secured.bootstrap,
        topics.input,
        [{k: v for k, v in r.items() if k not in TRUTH} for r in records],
        keys=[r["id"] for r in records],
    )
    factory = WorkerFactory(
        secured.sasl_bootstrap,
        tmp_path,
        topics,
        tmp_path / "cache",  # no model of its own: it comes from the model topic, over SASL
        defaults={
            "SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "SASL_MECHANISM": "SCRAM-SHA-256",
            "SASL_USERNAME": "worker",
            "SASL_PASSWORD": USERS["worker"],
            "MODEL_TOPIC": model_topic,
        },
    )
    try:
        w = factory.start()
        w.wait_port()
        w.wait_records(len(records), timeout_s=90)
        counts = w.counts()
        events = consume_all(secured.bootstrap, topics.output, expected=int(counts["anomaly"]))
        code, _ = w.terminate()
    finally:
        factory.close()
    assert code == 0, w.log_tail()
    assert counts["invalid"] == 0
    assert counts["anomaly"] == len(events) > 0
    labelled = {r["id"] for r in records if r["label"]}
    flagged = {e.json()["id"] for e in events}
    assert {e.key.decode() for e in events if e.key} == flagged  # keyed like the input
    # The injected anomalies are what the worker emits (the model is small, so not all of them).
    assert len(flagged & labelled) >= 0.5 * len(labelled)
    assert len(flagged - labelled) <= 0.1 * len(records)
