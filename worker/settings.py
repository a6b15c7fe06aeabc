"""The worker's settings: read once in `main()` from ``ANOMALY_*`` variables, ``.env`` and flags.

Precedence (highest first): ``--kebab-case`` command-line flags, environment variables, the
``.env`` file, defaults. Library code receives a `WorkerSettings` object and never reads the
environment itself.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from anomaly_contract.errors import ConfigError
from anomaly_contract.kafka_connection import KafkaSecurity, security_problem
from anomaly_contract.kafka_urls import is_topic_name
from anomaly_contract.model_topic_format import parse_topic_url
from worker.incidents import IncidentRules


class WorkerSettings(KafkaSecurity):
    """Everything `anomaly-worker` can be configured with (env prefix ``ANOMALY_``)."""

    model_config = SettingsConfigDict(
        env_prefix="ANOMALY_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        cli_prog_name="anomaly-worker",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_enforce_required=False,
        cli_hide_none_type=True,
        cli_avoid_json=True,
    )

    # --- Kafka ---------------------------------------------------------------------------------
    bootstrap_servers: str = Field("localhost:9092", description="comma-separated host:port list")
    input_topic: str = Field("sensor-readings", description="topic of records to score")
    output_topic: str = Field("anomalies", description="topic receiving anomaly events")
    dlq_topic: str = Field("anomalies-dlq", description="dead-letter topic for invalid records")
    group_id: str = Field("anomaly-worker", description="consumer group shared by all replicas")
    client_id: str = Field("anomaly-worker", description="Kafka client id (logs, quotas)")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="where a group with no committed offset starts"
    )
    delivery: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once",
        description="at_least_once: commit after events are acknowledged (duplicates after a crash);"
        " exactly_once: transactional consume-score-produce (read_committed readers see each once)",
    )
    transactional_id: str | None = Field(
        None,
        description="exactly_once only; default '<group>-<hostname>' so that a restarted replica"
        " fences and aborts its predecessor's open transaction at once",
    )
    pipeline: bool = Field(
        True,
        description="at_least_once: send a batch's events and go on with the next batch while the"
        " broker acknowledges them; offsets are still committed only after every acknowledgement,"
        " and before partitions move in a rebalance. false = each batch waits for its"
        " acknowledgements and a synchronous commit (slower)",
    )
    commit_interval_ms: int = Field(
        250,
        ge=0,
        le=60_000,
        description="at_least_once, pipelined: at most one offset commit per interval (0 = after"
        " every batch); a kill -9 re-reads at most this much more of the stream",
    )
    transaction_timeout_ms: int = Field(30000, ge=1000)
    session_timeout_ms: int = Field(10000, ge=1000)
    max_poll_interval_ms: int = Field(300000, ge=1000)
    fetch_max_bytes: int = Field(50 * 1024 * 1024, ge=1024)
    max_partition_fetch_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    delivery_timeout_ms: int = Field(30000, ge=1000)
    request_timeout_ms: int = Field(15000, ge=1000)
    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"

    # --- security (real clusters): the fields of KafkaSecurity, shared with the trainer ----------

    # --- model ---------------------------------------------------------------------------------
    model_dir: Path = Field(
        Path("models"),
        description="directory the trainer publishes into; with model_topic set, the worker's"
        " private cache of the topic's versions (writable, need not be shared)",
    )
    model_topic: str | None = Field(
        None,
        description="compacted model topic to follow; wins over model_dir's own versions. A topic"
        " name (on bootstrap_servers) or kafka://HOST:PORT/TOPIC (other brokers); the security"
        " settings apply to it either way",
    )
    model_poll_interval_s: float = Field(
        5.0, gt=0, description="how often CURRENT is checked for a new version"
    )
    top_features: int = Field(3, ge=0, description="features listed in each event")

    # --- series (windowed models) ----------------------------------------------------------------
    key_field: str | None = Field(
        None,
        description="windowed models: the JSON field holding the series key (a string or an"
        " integer); unset: the Kafka record key. Records without one form one series per partition",
    )
    max_keys: int = Field(
        100_000,
        ge=1,
        description="windowed models: series keys held per assigned partition; the least recently"
        " seen key is evicted beyond it (it warms up again when it returns)",
    )
    state_replay_max_records: int = Field(
        1_000_000,
        ge=0,
        description="windowed models: at most this many records of a partition are re-read before"
        " its committed offset to rebuild the windows on assignment; keys whose window began"
        " earlier warm up again (counted in anomaly_worker_state_keys_cut_total)",
    )

    # --- incidents ------------------------------------------------------------------------------
    incident_topic: str | None = Field(
        None,
        description="topic receiving incident records (opened/updated/closed, keyed by the series"
        " key); unset or empty = no incidents",
    )
    incident_gap_s: float = Field(
        300.0,
        gt=0,
        description="anomalies of one key at most this far apart (record time) form one incident;"
        " an incident closes once this much passes with no anomaly",
    )
    incident_min_anomalies: int = Field(
        3, ge=1, description="anomalies a run needs before it opens an incident (1 = every anomaly)"
    )
    incident_update_s: float = Field(
        60.0,
        ge=0,
        description="at most one 'updated' record per incident per this much record time",
    )

    # --- feedback ------------------------------------------------------------------------------
    feedback_topic: str | None = Field(
        None,
        description="topic of analyst verdicts on events and incidents (read whole by every"
        " worker, from its end); unset or empty = no feedback",
    )
    feedback_window_s: float = Field(
        3600.0, gt=0, description="window of the feedback precision gauge"
    )
    feedback_max_ids: int = Field(
        100_000, ge=1, description="event and incident ids remembered for their verdicts"
    )

    # --- batching ------------------------------------------------------------------------------
    batch_max_records: int = Field(1000, ge=1, le=100_000)
    batch_max_wait_ms: int = Field(100, ge=0, le=60_000)

    blas_threads: int = Field(
        1,
        ge=0,
        description="threads of the BLAS behind NumPy scoring (0: the library's default; batches"
        " are too small to gain from more, and spare threads contend for the CPUs)",
    )

    # --- validation ----------------------------------------------------------------------------
    max_record_bytes: int = Field(1024 * 1024, ge=16, description="larger values go to the DLQ")
    max_abs_value: float = Field(
        1e12, gt=0, description="feature values beyond this magnitude go to the DLQ"
    )

    # --- observability -------------------------------------------------------------------------
    metrics_host: str = Field("0.0.0.0", description="address of the HTTP endpoints")
    metrics_port: int = Field(8000, ge=0, le=65535, description="0 picks a free port (logged)")
    stats_window_s: float = Field(
        300.0, gt=0, description="window of the anomaly-ratio and drift gauges"
    )
    lag_refresh_s: float = Field(5.0, gt=0, description="consumer-lag refresh period")
    liveness_timeout_s: float = Field(
        60.0, gt=0, description="/healthz fails when the loop has not turned for this long"
    )
    shutdown_timeout_s: float = Field(
        9.0, gt=0, description="on SIGTERM, exit (code 1) if a clean stop takes longer"
    )
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("model_topic")
    @classmethod
    def _check_model_topic(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None  # ANOMALY_MODEL_TOPIC="" switches the topic off
        value = value.strip()
        if value.startswith("kafka://"):
            try:
                parse_topic_url(value)
            except ConfigError as exc:
                raise ValueError(str(exc)) from exc
        elif not is_topic_name(value):
            raise ValueError(
                f"invalid model topic {value!r}: a topic name (letters, digits, . _ -) or "
                "kafka://HOST:PORT/TOPIC"
            )
        return value

    @field_validator("key_field")
    @classmethod
    def _check_key_field(cls, value: str | None) -> str | None:
        return value if value else None  # ANOMALY_KEY_FIELD="" means the Kafka record key

    @field_validator("incident_topic", "feedback_topic")
    @classmethod
    def _check_optional_topic(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None  # ANOMALY_INCIDENT_TOPIC="" (or FEEDBACK_TOPIC) switches it off
        value = value.strip()
        if not is_topic_name(value):
            raise ValueError(f"invalid topic {value!r}: letters, digits, . _ - only")
        return value

    @model_validator(mode="after")
    def _check(self) -> WorkerSettings:
        problem = security_problem(self)
        if problem:
            raise ValueError(problem)
        if len({self.input_topic, self.output_topic, self.dlq_topic}) != 3:
            raise ValueError(
                "input_topic, output_topic and dlq_topic must be three different topics"
            )
        location = self.model_topic_location
        if location and location[1] in {self.input_topic, self.output_topic, self.dlq_topic}:
            raise ValueError("model_topic must not be the input, output or dead-letter topic")
        taken = {self.input_topic, self.output_topic, self.dlq_topic} | {
            location[1] if location else ""
        }
        if self.incident_topic is not None and self.incident_topic in taken:
            raise ValueError(
                "incident_topic must not be the input, output, dead-letter or model topic"
            )
        if self.feedback_topic is not None and self.feedback_topic in taken | {self.incident_topic}:
            raise ValueError(
                "feedback_topic must not be the input, output, dead-letter, model or incident topic"
            )
        return self

    @property
    def incident_rules(self) -> IncidentRules | None:
        """The incident rules, or None when incidents are off (no incident topic)."""
        if self.incident_topic is None:
            return None
        return IncidentRules(
            gap_ms=round(self.incident_gap_s * 1000),
            min_anomalies=self.incident_min_anomalies,
            update_ms=round(self.incident_update_s * 1000),
            top_features=self.top_features,
        )

    @property
    def model_topic_location(self) -> tuple[str, str] | None:
        """(bootstrap servers, topic) of the model topic, or None: models come from model_dir.

        A bare topic name lives on ``bootstrap_servers``; a ``kafka://`` URL names its own.
        """
        if self.model_topic is None:
            return None
        if self.model_topic.startswith("kafka://"):
            return parse_topic_url(self.model_topic)
        return self.bootstrap_servers, self.model_topic

    @property
    def effective_transactional_id(self) -> str:
        return self.transactional_id or f"{self.group_id}-{socket.gethostname()}"


def load_settings(
    argv: Sequence[str] | None = None, env_file: str | os.PathLike[str] | None = None
) -> WorkerSettings:
    """Build the settings from flags (``argv``), environment and ``.env`` (CLI wins)."""
    kwargs: dict[str, object] = {"_cli_parse_args": list(argv) if argv is not None else []}
    if env_file is not None:
        kwargs["_env_file"] = env_file
    return WorkerSettings(**kwargs)  # type: ignore[arg-type]
