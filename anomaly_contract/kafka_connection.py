"""How the trainer connects to Kafka: security protocol, SASL and TLS, as kafka-python kwargs.

`KafkaConnection` is read once in ``anomaly-trainer``'s ``main()`` from the same ``ANOMALY_*``
variables as the worker (and ``.env``), with command-line flags on top, and handed to the Kafka
source and the model-topic functions. The brokers themselves come from each ``kafka://`` URL.

`KafkaSecurity` declares the security fields once; the worker's settings inherit them, so
`security_problem` and `security_kwargs` serve both. This module imports no training code and
no kafka-python.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from anomaly_contract.errors import ConfigError

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]
SSL_FILE_FIELDS = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
_PASSWORD_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def security_problem(s: KafkaSecurity) -> str | None:
    """Why these settings cannot connect (one line), or None when they are consistent."""
    if s.sasl_mechanism and not s.security_protocol.startswith("SASL"):
        return "sasl_mechanism needs security_protocol SASL_PLAINTEXT or SASL_SSL"
    if s.security_protocol.startswith("SASL") and not s.sasl_mechanism:
        return f"security_protocol {s.security_protocol} needs a sasl_mechanism"
    if s.sasl_mechanism in _PASSWORD_MECHANISMS and not (s.sasl_username and s.sasl_password):
        return f"sasl_mechanism {s.sasl_mechanism} needs sasl_username/password"
    if s.sasl_mechanism == "OAUTHBEARER":
        # kafka-python wants a token-provider object, which no setting can give.
        return "sasl_mechanism OAUTHBEARER is not supported yet: use PLAIN or SCRAM-SHA-256/512"
    return None


def security_kwargs(s: KafkaSecurity) -> dict[str, Any]:
    """kafka-python keyword arguments for these settings (the same for consumer, producer and
    admin client). TLS options are only passed with an SSL protocol, where they mean something."""
    cfg: dict[str, Any] = {"security_protocol": s.security_protocol}
    if s.sasl_mechanism:
        cfg["sasl_mechanism"] = s.sasl_mechanism
        cfg["sasl_plain_username"] = s.sasl_username
        if s.sasl_password is not None:
            cfg["sasl_plain_password"] = s.sasl_password.get_secret_value()
    if s.security_protocol in ("SSL", "SASL_SSL"):
        cfg["ssl_check_hostname"] = s.ssl_check_hostname
        for name in SSL_FILE_FIELDS:
            value = getattr(s, name)
            if value is not None:
                cfg[name] = str(value)
        if s.ssl_password is not None:
            cfg["ssl_password"] = s.ssl_password.get_secret_value()
    return cfg


class KafkaSecurity(BaseSettings):
    """The security fields of a Kafka client, declared once for the trainer's `KafkaConnection`
    and the worker's settings (both read them from ``ANOMALY_*``)."""

    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    ssl_check_hostname: bool = True


class KafkaConnection(KafkaSecurity):
    """The trainer's Kafka security settings (env prefix ``ANOMALY_``, the worker's names).

    The default is PLAINTEXT with nothing else: a local or Compose broker needs no settings.
    """

    model_config = SettingsConfigDict(
        env_prefix="ANOMALY_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",  # the worker's other ANOMALY_* settings share the environment
        frozen=True,
    )

    @model_validator(mode="after")
    def _check(self) -> KafkaConnection:
        problem = security_problem(self)
        if problem:
            raise ValueError(problem)
        if self.security_protocol in ("SSL", "SASL_SSL"):
            for name in SSL_FILE_FIELDS:
                path = getattr(self, name)
                if path is not None and not path.is_file():
                    raise ValueError(f"{name} {path} is not a readable file")
        return self

    def client_kwargs(self) -> dict[str, Any]:
        """kafka-python keyword arguments (no bootstrap servers: they come with each URL)."""
        return security_kwargs(self)

    def describe(self) -> str:
        """Short, secret-free words for error messages, e.g. ``SASL_PLAINTEXT/PLAIN as alice``."""
        return describe_kwargs(self.client_kwargs())


PLAINTEXT = KafkaConnection.model_construct()  # the default without reading the environment


def load_connection(overrides: dict[str, Any] | None = None) -> KafkaConnection:
    """Build the settings from ``ANOMALY_*``, ``.env`` and ``overrides`` (flags; they win).

    ``None`` values in ``overrides`` mean "not given". A bad combination raises `ConfigError`
    with one line naming the problem.
    """
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    try:
        return KafkaConnection(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        msg = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(
            f"Kafka security settings: {where + ': ' if where else ''}{msg}"
            " (see ANOMALY_SECURITY_PROTOCOL, ANOMALY_SASL_* and --security-protocol, --sasl-*)"
        ) from None


def read_secret_file(path: Path, what: str) -> SecretStr:
    """A password kept in a file (one line; the trailing newline is not part of it)."""
    try:
        text = path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror}") from exc
    if not text:
        raise ConfigError(f"{what} file {path} is empty")
    return SecretStr(text)


class ClientLog(logging.Handler):
    """What kafka-python logged about its connections while a client was being built."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.auth_failed = False  # the broker said the credentials are wrong
        self.dropped = False  # the broker accepted the connection, then closed it
        self.tls_failure: str | None = None  # why the TLS handshake failed

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            text = record.getMessage()
            if "AuthenticationFailed" in text or "Authentication failed" in text:
                self.auth_failed = True
            elif "Handshake failed: " in text:
                reason = text.split("Handshake failed: ", 1)[1].split(" (_ssl.c", 1)[0]
                self.tls_failure = " ".join(reason.split())[:160]
            elif "socket disconnected" in text or "Connection reset" in text:
                self.dropped = True


@contextlib.contextmanager
def client_log() -> Iterator[ClientLog]:
    """Watch kafka-python's log while the block builds a client (see `connect_hint`).

    kafka-python retries a bootstrap that fails to authenticate until its timeout and then only
    says "Unable to bootstrap"; its log lines before tell a wrong password apart.
    """
    handler = ClientLog()
    logger = logging.getLogger("kafka")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def describe_kwargs(kwargs: dict[str, Any]) -> str:
    """Secret-free words for client kwargs, e.g. ``SASL_PLAINTEXT/PLAIN as alice``."""
    protocol = kwargs.get("security_protocol", "PLAINTEXT")
    if kwargs.get("sasl_mechanism"):
        return f"{protocol}/{kwargs['sasl_mechanism']} as {kwargs.get('sasl_plain_username')}"
    return str(protocol)


def connect_hint(kwargs: dict[str, Any], seen: ClientLog) -> str:
    """The end of a "cannot connect" message: what to check, given what the client logged."""
    how = describe_kwargs(kwargs)
    sasl = bool(kwargs.get("sasl_mechanism"))
    if seen.tls_failure:
        return (
            f"the TLS handshake failed ({seen.tls_failure}): check --ssl-cafile /"
            " ANOMALY_SSL_CAFILE (the CA of the broker's certificate) and the broker's host name"
        )
    if seen.auth_failed or (sasl and seen.dropped):
        what = "authentication failed" if seen.auth_failed else "the broker closed the connection"
        return (
            f"{what} ({how}): check the SASL user and password (ANOMALY_SASL_USERNAME,"
            " ANOMALY_SASL_PASSWORD or --sasl-password-file) and the mechanism"
        )
    if seen.dropped:
        return (
            f"the broker closed the connection: does its listener expect SASL or SSL rather than"
            f" {how}? (--security-protocol, ANOMALY_SECURITY_PROTOCOL)"
        )
    return f"check the address and that the broker is running (connecting with {how})"
