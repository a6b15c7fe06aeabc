"""Settings: ANOMALY_ env vars, .env file, --kebab-case flags (flags win), secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from worker.incidents import IncidentRules
from worker.settings import load_settings

NAMES = [
    "INCIDENT_TOPIC", "INCIDENT_GAP_S", "INCIDENT_MIN_ANOMALIES", "INCIDENT_UPDATE_S",
    "BOOTSTRAP_SERVERS", "INPUT_TOPIC", "OUTPUT_TOPIC", "DLQ_TOPIC", "GROUP_ID", "MODEL_DIR",
    "METRICS_PORT", "BATCH_MAX_RECORDS", "BATCH_MAX_WAIT_MS", "DELIVERY",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in NAMES + ["SASL_PASSWORD", "LOG_FORMAT"]:
        monkeypatch.delenv(f"ANOMALY_{name}", raising=False)


def test_product_env_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
        "INPUT_TOPIC": "in",
        "OUTPUT_TOPIC": "out",
        "DLQ_TOPIC": "dlq",
        "GROUP_ID": "g",
        "MODEL_DIR": "/models",
        "METRICS_PORT": "9100",
        "BATCH_MAX_RECORDS": "250",
        "BATCH_MAX_WAIT_MS": "50",
        "DELIVERY": "exactly_once",
    }
    for k, v in values.items():
        monkeypatch.setenv(f"ANOMALY_{k}", v)
    s = load_settings([])
    assert (s.bootstrap_servers, s.input_topic, s.output_topic, s.dlq_topic, s.group_id) == (
        "k1:9092,k2:9092", "in", "out", "dlq", "g",
    )  # fmt: skip
    assert (s.model_dir, s.metrics_port, s.batch_max_records, s.batch_max_wait_ms) == (
        Path("/models"), 9100, 250, 50,
    )  # fmt: skip
    assert s.delivery == "exactly_once"
    assert s.effective_transactional_id.startswith("g-")


def test_flags_override_env_and_env_overrides_dotenv(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("ANOMALY_INPUT_TOPIC=from-dotenv\nANOMALY_GROUP_ID=dot-group\n")
    monkeypatch.setenv("ANOMALY_INPUT_TOPIC", "from-env")
    s = load_settings(["--batch-max-wait-ms", "7", "--log-format", "json"])
    assert s.input_topic == "from-env"
    assert s.group_id == "dot-group"
    assert s.batch_max_wait_ms == 7 and s.log_format == "json"
    s = load_settings(["--input-topic", "from-flag"])
    assert s.input_topic == "from-flag"


def test_secrets_are_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOMALY_SASL_PASSWORD", "hunter2")
    s = load_settings(
        [
            "--security-protocol",
            "SASL_SSL",
            "--sasl-mechanism",
            "SCRAM-SHA-512",
            "--sasl-username",
            "u",
        ]
    )
    assert "hunter2" not in repr(s)
    assert s.sasl_password is not None and s.sasl_password.get_secret_value() == "hunter2"


@pytest.mark.parametrize(
    "argv",
    [
        ["--delivery", "maybe_once"],
        ["--batch-max-records", "0"],
        ["--sasl-mechanism", "PLAIN"],  # without a SASL protocol
        ["--output-topic", "same", "--dlq-topic", "same"],
        ["--incident-topic", "has space"],
        ["--incident-topic", "anomalies"],  # the output topic
        ["--incident-topic", "incidents", "--model-topic", "incidents"],
        ["--incident-gap-s", "0"],
        ["--incident-min-anomalies", "0"],
        ["--incident-update-s", "-1"],
        ["--feedback-topic", "has space"],
        ["--feedback-topic", "anomalies"],  # the output topic
        ["--feedback-topic", "x", "--incident-topic", "x"],
        ["--feedback-window-s", "0"],
        ["--feedback-max-ids", "0"],
    ],
)
def test_bad_settings_are_rejected(argv: list[str]) -> None:
    with pytest.raises((ValidationError, SystemExit)):
        load_settings(argv)


def test_incidents_are_off_without_a_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings([]).incident_rules is None
    monkeypatch.setenv("ANOMALY_INCIDENT_TOPIC", "")
    assert load_settings([]).incident_rules is None


def test_incident_settings_become_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "INCIDENT_TOPIC": " incidents ", "INCIDENT_GAP_S": "1.5", "INCIDENT_MIN_ANOMALIES": "4",
        "INCIDENT_UPDATE_S": "0",
    }.items():  # fmt: skip
        monkeypatch.setenv(f"ANOMALY_{name}", value)
    s = load_settings(["--top-features", "5"])
    assert s.incident_topic == "incidents"
    assert s.incident_rules == IncidentRules(
        gap_ms=1500, min_anomalies=4, update_ms=0, top_features=5
    )
