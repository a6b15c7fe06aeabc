"""ANOMALY_MODEL_TOPIC: a topic name on the input's brokers or a kafka:// URL; the wiring it picks."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from worker.cli import build_model_watcher
from worker.http import HealthState
from worker.metrics import WorkerMetrics
from worker.reload import ModelWatcher, TopicModelWatcher
from worker.settings import load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in ("MODEL_TOPIC", "BOOTSTRAP_SERVERS", "INPUT_TOPIC", "SECURITY_PROTOCOL"):
        monkeypatch.delenv(f"ANOMALY_{name}", raising=False)


def test_topic_name_lives_on_the_input_brokers() -> None:
    s = load_settings(["--bootstrap-servers", "k1:9092,k2:9092", "--model-topic", "models"])
    assert s.model_topic_location == ("k1:9092,k2:9092", "models")


def test_url_names_its_own_brokers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOMALY_MODEL_TOPIC", "kafka://m1:9093,m2:9093/anomaly-models")
    assert load_settings([]).model_topic_location == ("m1:9093,m2:9093", "anomaly-models")


def test_unset_or_empty_means_the_model_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings([]).model_topic_location is None
    monkeypatch.setenv("ANOMALY_MODEL_TOPIC", "")
    assert load_settings([]).model_topic_location is None


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("kafka://broker/models", "invalid broker address"),
        ("kafka://b:9092/models?x=1", "takes no options"),
        ("two words", "invalid model topic"),
        ("sensor-readings", "must not be the input, output or dead-letter topic"),
    ],
)
def test_bad_model_topics_are_rejected(value: str, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        load_settings(["--model-topic", value])


def test_wiring_follows_the_topic_with_the_input_security_settings(tmp_path: Path) -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    health = HealthState(60)
    plain = load_settings(["--model-dir", str(tmp_path / "m")])
    assert type(build_model_watcher(plain, metrics, health)) is ModelWatcher
    s = load_settings(
        [
            "--model-dir", str(tmp_path / "cache"),
            "--model-topic", "kafka://m1:9093/models",
            "--security-protocol", "SASL_SSL",
            "--sasl-mechanism", "SCRAM-SHA-512",
            "--sasl-username", "u",
            "--sasl-password", "p",
        ]
    )  # fmt: skip
    watcher = build_model_watcher(s, WorkerMetrics(CollectorRegistry()), health)
    assert isinstance(watcher, TopicModelWatcher)
    reader = watcher.reader
    assert (reader.bootstrap, reader.topic, reader.cache_dir) == ("m1:9093", "models", tmp_path / "cache")  # fmt: skip
    config = reader.consumer_config or {}
    assert config["security_protocol"] == "SASL_SSL"
    assert config["sasl_mechanism"] == "SCRAM-SHA-512"
    assert config["sasl_plain_password"] == "p"
    assert "bootstrap_servers" not in config
