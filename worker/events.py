"""The shapes the worker writes: anomaly events (output topic) and dead letters (DLQ topic).

An anomaly event is UTF-8 JSON keyed like its input record::

    {"id", "score", "threshold", "severity", "model_version",
     "source": {"topic", "partition", "offset", "timestamp_ms"},
     "top_features": [{"name", "error"}, ...], "detected_at"}

A dead letter keeps the original key, value and headers and adds the ``dlq.*`` headers below.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

# Dead-letter headers (values are UTF-8 bytes).
H_ERROR_CLASS = "dlq.error.class"
H_ERROR_MESSAGE = "dlq.error.message"
H_SOURCE_TOPIC = "dlq.source.topic"
H_SOURCE_PARTITION = "dlq.source.partition"
H_SOURCE_OFFSET = "dlq.source.offset"
H_SOURCE_TIMESTAMP = "dlq.source.timestamp_ms"
H_MODEL_VERSION = "dlq.model.version"
H_FAILED_AT = "dlq.failed_at"
DLQ_HEADERS = (
    H_ERROR_CLASS,
    H_ERROR_MESSAGE,
    H_SOURCE_TOPIC,
    H_SOURCE_PARTITION,
    H_SOURCE_OFFSET,
    H_SOURCE_TIMESTAMP,
    H_MODEL_VERSION,
    H_FAILED_AT,
)
_MAX_MESSAGE = 1000


def iso_utc(ts: float) -> str:
    """ISO 8601 UTC with milliseconds, e.g. ``2026-01-01T12:00:00.123Z``."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def anomaly_event(
    *,
    record_id: Any,
    score: float,
    threshold: float,
    model_version: str,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    top_features: list[tuple[str, float]],
    detected_at: str,
) -> bytes:
    """One anomaly event as UTF-8 JSON bytes."""
    event = {
        "id": record_id,
        "score": score,
        "threshold": threshold,
        "severity": score / threshold if threshold > 0 else None,
        "model_version": model_version,
        "source": {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "timestamp_ms": timestamp_ms,
        },
        "top_features": [{"name": n, "error": e} for n, e in top_features],
        "detected_at": detected_at,
    }
    return json.dumps(event, allow_nan=False, separators=(",", ":")).encode()


def dead_letter_headers(
    original: list[tuple[str, bytes]] | None,
    *,
    error_class: str,
    message: str,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    model_version: str | None,
    failed_at: str,
) -> list[tuple[str, bytes]]:
    """The original headers followed by the ``dlq.*`` headers describing the failure."""
    headers = [(k, bytes(v) if v is not None else b"") for k, v in (original or [])]
    headers += [
        (H_ERROR_CLASS, error_class.encode()),
        (H_ERROR_MESSAGE, message[:_MAX_MESSAGE].encode("utf-8", "replace")),
        (H_SOURCE_TOPIC, topic.encode()),
        (H_SOURCE_PARTITION, str(partition).encode()),
        (H_SOURCE_OFFSET, str(offset).encode()),
        (H_SOURCE_TIMESTAMP, str(timestamp_ms if timestamp_ms is not None else "").encode()),
        (H_MODEL_VERSION, (model_version or "").encode()),
        (H_FAILED_AT, failed_at.encode()),
    ]
    return headers
