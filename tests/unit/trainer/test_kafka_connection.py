"""The trainer's Kafka security settings: environment, flags, validation, kafka-python kwargs.

Talking to a secured broker is tested in tests/integration/test_kafka_security.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import SecretStr

from anomaly_contract.errors import ConfigError
from anomaly_contract.kafka_connection import (
    PLAINTEXT,
    ClientLog,
    KafkaConnection,
    connect_hint,
    load_connection,
    read_secret_file,
    security_kwargs,
    security_problem,
)
from trainer.cli import main

SECURITY_ENV = (
    "ANOMALY_SECURITY_PROTOCOL",
    "ANOMALY_SASL_MECHANISM",
    "ANOMALY_SASL_USERNAME",
    "ANOMALY_SASL_PASSWORD",
    "ANOMALY_SSL_CAFILE",
    "ANOMALY_SSL_CERTFILE",
    "ANOMALY_SSL_KEYFILE",
    "ANOMALY_SSL_PASSWORD",
    "ANOMALY_SSL_CHECK_HOSTNAME",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ANOMALY_* security variables and no .env from the caller's shell or directory."""
    for name in SECURITY_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_default_is_plaintext_with_nothing_else() -> None:
    conn = load_connection()
    assert conn.client_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert PLAINTEXT.client_kwargs() == {"security_protocol": "PLAINTEXT"}


def test_environment_uses_the_worker_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOMALY_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("ANOMALY_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("ANOMALY_SASL_USERNAME", "alice")
    monkeypatch.setenv("ANOMALY_SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("ANOMALY_INPUT_TOPIC", "ignored-worker-setting")
    conn = load_connection()
    assert conn.client_kwargs() == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "alice",
        "sasl_plain_password": "s3cret",
    }
    assert "s3cret" not in repr(conn) and "s3cret" not in conn.describe()


def test_dotenv_file_is_read_like_the_worker(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "ANOMALY_SECURITY_PROTOCOL=SASL_PLAINTEXT\nANOMALY_SASL_MECHANISM=PLAIN\n"
        "ANOMALY_SASL_USERNAME=bob\nANOMALY_SASL_PASSWORD=pw\n"
    )
    assert load_connection().describe() == "SASL_PLAINTEXT/PLAIN as bob"


def test_overrides_win_over_the_environment_and_none_means_not_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANOMALY_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("ANOMALY_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("ANOMALY_SASL_USERNAME", "env-user")
    monkeypatch.setenv("ANOMALY_SASL_PASSWORD", "env-pw")
    conn = load_connection({"sasl_username": "flag-user", "sasl_mechanism": None})
    assert conn.sasl_username == "flag-user"
    assert conn.sasl_mechanism == "PLAIN"
    assert conn.sasl_password is not None and conn.sasl_password.get_secret_value() == "env-pw"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"sasl_mechanism": "PLAIN"}, "sasl_mechanism needs security_protocol SASL_PLAINTEXT"),
        ({"security_protocol": "SASL_SSL"}, "SASL_SSL needs a sasl_mechanism"),
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"},
            "PLAIN needs sasl_username/password",
        ),
        (
            {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_username": "u",
            },
            "SCRAM-SHA-512 needs sasl_username/password",
        ),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER"},
            "OAUTHBEARER is not supported",
        ),
        ({"security_protocol": "TLS"}, "security_protocol: Input should be"),
        ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"}, "not a readable file"),
    ],
)
def test_bad_combinations_are_one_line_config_errors(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_connection(settings)
    assert "\n" not in str(info.value)


def test_ssl_options_only_go_with_an_ssl_protocol(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    conn = KafkaConnection(
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password=SecretStr("p"),
        ssl_cafile=ca,
        ssl_password=SecretStr("key-pw"),
        ssl_check_hostname=False,
    )
    assert conn.client_kwargs() == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "u",
        "sasl_plain_password": "p",
        "ssl_check_hostname": False,
        "ssl_cafile": str(ca),
        "ssl_password": "key-pw",
    }
    plain = KafkaConnection(ssl_cafile=ca)
    assert plain.client_kwargs() == {"security_protocol": "PLAINTEXT"}


def test_shared_functions_take_any_object_with_the_fields() -> None:
    """The worker's settings have the same fields: the functions must not need this class."""

    class Other:
        security_protocol = "SASL_PLAINTEXT"
        sasl_mechanism = "PLAIN"
        sasl_username = "w"
        sasl_password = SecretStr("pw")
        ssl_cafile = ssl_certfile = ssl_keyfile = ssl_password = None
        ssl_check_hostname = True

    assert security_problem(Other()) is None  # type: ignore[arg-type]
    assert security_kwargs(Other())["sasl_plain_password"] == "pw"  # type: ignore[arg-type]


def test_secret_file_drops_the_trailing_newline_and_refuses_empty_or_missing(
    tmp_path: Path,
) -> None:
    f = tmp_path / "pw"
    f.write_text("p@ss word\n")
    assert read_secret_file(f, "SASL password").get_secret_value() == "p@ss word"
    f.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        read_secret_file(f, "SASL password")
    with pytest.raises(ConfigError, match="cannot read SASL password file"):
        read_secret_file(tmp_path / "missing", "SASL password")


# ---- the CLI: flags, one-line refusals, exit code 2 -------------------------------------------
def test_cli_refuses_a_sasl_mechanism_without_a_sasl_protocol(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    code = main(["versions", "--model-dir", str(tmp_path), "--sasl-mechanism", "PLAIN"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.splitlines() == [err]
    assert "sasl_mechanism needs security_protocol SASL_PLAINTEXT or SASL_SSL" in err


def test_cli_refuses_a_password_flag_without_echoing_it(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    for flag in ("--sasl-password", "--ssl-password"):
        with pytest.raises(SystemExit) as info:
            main(["versions", "--model-dir", str(tmp_path), flag, "hunter2"])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert "hunter2" not in err
        assert f"{flag} is not accepted" in err and f"{flag}-file" in err


def test_cli_reads_the_password_file_and_flags_over_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    """A full SASL setup from flags passes validation (the local `versions` needs no broker)."""
    monkeypatch.setenv("ANOMALY_SECURITY_PROTOCOL", "SSL")  # the flag below wins
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    args = ["versions", "--model-dir", str(tmp_path), "--security-protocol", "SASL_PLAINTEXT"]
    args += ["--sasl-mechanism", "SCRAM-SHA-256", "--sasl-username", "u"]
    assert main([*args, "--sasl-password-file", str(pw)]) == 0
    assert "no versions" in capsys.readouterr().out
    assert main([*args, "--sasl-password-file", str(tmp_path / "nope")]) == 2
    assert "cannot read SASL password file" in capsys.readouterr().err


def _log(*lines: str) -> ClientLog:
    seen = ClientLog()
    for line in lines:
        seen.emit(logging.LogRecord("kafka.net", logging.WARNING, __file__, 1, line, None, None))
    return seen


def test_connect_hint_tells_a_wrong_password_from_a_wrong_protocol_or_a_dead_broker() -> None:
    sasl = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"}
    sasl["sasl_plain_username"] = "bob"
    denied = _log("Bootstrap connection failed: [Error 58] SaslAuthenticationFailedError: x")
    assert connect_hint(sasl, denied).startswith("authentication failed (SASL_PLAINTEXT/PLAIN as")
    hung_up = _log("Sending username and password in the clear", "socket disconnected")
    assert connect_hint(sasl, hung_up).startswith("the broker closed the connection (SASL")
    plain = {"security_protocol": "PLAINTEXT"}
    assert "expect SASL or SSL rather than PLAINTEXT" in connect_hint(plain, hung_up)
    assert "broker is running" in connect_hint(plain, _log("Connection refused"))
    tls = _log(
        "Connection failed: KafkaConnectionError: Handshake failed: [SSL: CERTIFICATE_VERIFY_FAILED]"
        " certificate verify failed: self-signed certificate (_ssl.c:1006)"
    )
    assert connect_hint(sasl, tls).startswith(
        "the TLS handshake failed ([SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed:"
        " self-signed certificate): check --ssl-cafile"
    )
    # kafka-python's warning about SASL over plaintext is not a failure
    assert not _log("Exchanging credentials in the clear during Sasl Authentication").auth_failed
