"""What a scored batch produces: anomaly events (output topic) and dead letters (DLQ topic).

An anomaly event is UTF-8 JSON keyed like its input record::

    {"id", "event_id", "score", "threshold", "severity", "model_version",
     "source": {"topic", "partition", "offset", "timestamp_ms"},
     "top_features": [{"name", "error"}, ...], "detected_at"}

plus ``"incident_id"`` when the anomaly belongs to an open incident (`worker.incident_room`).
``event_id`` is stable: a UUIDv5 of the source topic, partition, offset and model version
(`worker.incidents.event_id`), so a re-read batch repeats the ids of its events.

A dead letter keeps the original key, value and headers and adds the ``dlq.*`` headers below.

`batch_outputs` builds them from a decoded and scored batch: a pure function (the time is passed
in), so the shapes and the accounting (every record scored or dead-lettered) are unit-tested
without Kafka.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from worker import decode as dec
from worker.client import InRecord, OutRecord
from worker.decode import DecodedBatch, DecodeError
from worker.incident_room import IncidentOutcome, IncidentRoom, point_rows
from worker.incidents import event_id
from worker.json_bytes import json_bytes
from worker.scoring import BatchScores, top_features

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
    incident_id: str | None = None,
) -> bytes:
    """One anomaly event as UTF-8 JSON bytes."""
    severity = score / threshold if threshold > 0 else None
    event: dict[str, Any] = {
        "id": record_id,
        "event_id": event_id(topic, partition, offset, model_version),
        "score": score,
        "threshold": threshold,
        "severity": severity,
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
    if incident_id is not None:
        event["incident_id"] = incident_id
    floats = (score, threshold, severity or 0.0, *(e for _, e in top_features))
    return json_bytes(event, floats)


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


@dataclass(frozen=True)
class BatchOutputs:
    """What one batch sends, and what its metrics count."""

    records: list[OutRecord]  # events, then incident records, then dead letters in batch order
    errors: list[tuple[int, DecodeError]]  # (position in the batch, why), in batch order
    n_anomalies: int
    finite_scores: np.ndarray  # the scores of the rows that were scored
    n_warming: int = 0  # windowed models: records that do not yet close a window of their key
    # incidents on: the incident records (already in ``records``) and the counts they make
    incidents: IncidentOutcome | None = None


def batch_outputs(
    records: Sequence[InRecord],
    decoded: DecodedBatch,
    scored: BatchScores | None,
    *,
    model_version: str,
    feature_names: list[str],
    top_k: int,
    output_topic: str,
    dlq_topic: str,
    detected_at: str,
    incidents: IncidentRoom | None = None,
    key_field: str | None = None,
) -> BatchOutputs:
    """Events for the anomalous rows, dead letters for the records that could not be scored
    (decoding errors, and rows whose reconstruction error overflowed). ``scored`` is None when
    no record decoded. With ``incidents``, every scored row (series key from the Kafka key or
    ``key_field``) is fed to them first and the incident records follow the events."""
    errors = decoded.errors
    outs: list[OutRecord] = []
    n_anomalies = 0
    finite_scores = np.zeros(0)
    outcome: IncidentOutcome | None = None
    if scored is not None:
        if not scored.finite.all():
            overflowed = [
                (decoded.valid_index[j], DecodeError(dec.NON_FINITE_SCORE, "the reconstruction error overflowed"))
                for j in np.flatnonzero(~scored.finite)
            ]  # fmt: skip
            errors = sorted(errors + overflowed, key=lambda e: e[0])
        finite_scores = scored.scores[scored.finite]
        anomaly_rows = np.flatnonzero(scored.is_anomaly)
        n_anomalies = int(anomaly_rows.size)
        tops = top_features(scored.feature_errors[anomaly_rows], feature_names, top_k)
        incident_of: dict[int, str | None] = {}
        if incidents is not None:
            top_of = dict(zip(anomaly_rows.tolist(), tops, strict=True))
            index, rows = point_rows(records, decoded, scored, top_of, key_field)
            outcome = incidents.track(rows, model_version)
            incident_of = dict(zip(index, outcome.ids, strict=True))
        if n_anomalies:
            for j, top in zip(anomaly_rows.tolist(), tops, strict=True):
                r = records[decoded.valid_index[j]]
                value = anomaly_event(
                    record_id=decoded.ids[j],
                    score=float(scored.scores[j]),
                    threshold=scored.threshold,
                    model_version=model_version,
                    topic=r.topic,
                    partition=r.partition,
                    offset=r.offset,
                    timestamp_ms=r.timestamp,
                    top_features=top,
                    detected_at=detected_at,
                    incident_id=incident_of.get(j),
                )
                outs.append(OutRecord(output_topic, r.key, value, []))
    if outcome is not None:
        outs += outcome.records
    for pos, err in errors:
        outs.append(dead_letter(records[pos], err, dlq_topic, model_version, detected_at))
    return BatchOutputs(outs, errors, n_anomalies, finite_scores, incidents=outcome)


def dead_letter(
    r: InRecord, err: DecodeError, dlq_topic: str, model_version: str, failed_at: str
) -> OutRecord:
    """The dead letter of ``r``: its key, value and headers, plus the ``dlq.*`` headers."""
    headers = dead_letter_headers(
        list(r.headers or []),
        error_class=err.kind,
        message=err.message,
        topic=r.topic,
        partition=r.partition,
        offset=r.offset,
        timestamp_ms=r.timestamp,
        model_version=model_version,
        failed_at=failed_at,
    )
    value = r.value if (r.value is not None or r.key is not None) else b""
    return OutRecord(dlq_topic, r.key, value, headers)
