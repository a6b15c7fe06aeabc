"""Where feedback comes from: a Kafka topic with the worker's output topics, or local files.

``--feedback kafka://HOST:PORT/FEEDBACK_TOPIC?events=OUTPUT_TOPIC[&incidents=INCIDENT_TOPIC]
[&timeout=S]`` reads the three topics on the same brokers to their end offsets, like a
``kafka://`` DATA read (no consumer group, nothing committed; `trainer.kafka_source`). The
local form is ``--feedback FEEDBACK.jsonl --feedback-events EVENTS.jsonl
[--feedback-incidents INCIDENTS.jsonl]`` (one JSON record per line, as the topics hold them).
Events are needed in both forms: they are what an id resolves through.

Unusable feedback, event and incident records are counted and skipped, with one summary line
per kind (`FeedbackRead.summary_lines`). A missing file or topic, an empty feedback source or an
unreachable broker is a one-line `DataError`/`ConfigError` (nothing is trained or published).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

import numpy as np

from anomaly_contract.errors import ConfigError, DataError
from anomaly_contract.kafka_urls import KafkaUrlProblem, split_kafka_url
from trainer.feedback import Outputs, RowRefs, Value, Verdicts, parse_feedback, parse_outputs

if TYPE_CHECKING:  # pragma: no cover
    from anomaly_contract.kafka_connection import KafkaConnection
    from trainer.data import Dataset
    from trainer.data_series import SeriesData

_USAGE = (
    "use --feedback kafka://HOST:PORT/FEEDBACK_TOPIC?events=OUTPUT_TOPIC[&incidents=TOPIC], or "
    "--feedback FILE.jsonl --feedback-events EVENTS.jsonl [--feedback-incidents FILE.jsonl]"
)


@dataclass(frozen=True)
class FeedbackSource:
    """The feedback, events and (optional) incidents to read: topic URLs or file paths."""

    feedback: str
    events: str
    incidents: str | None = None

    @property
    def name(self) -> str:
        return self.feedback


@dataclass(frozen=True)
class FeedbackRead:
    """Verdicts and the outputs they resolve against, as read."""

    verdicts: Verdicts
    outputs: Outputs
    events_read: int
    incidents_read: int

    def summary_lines(self) -> list[str]:
        """One line per kind of record that had unusable ones (and one for what was read)."""
        lines = [
            f"feedback: read {self.verdicts.read} records ({len(self.verdicts.events)} event ids, "
            f"{len(self.verdicts.incidents)} incident ids), {self.events_read} events, "
            f"{self.incidents_read} incident records"
        ]
        if self.verdicts.skipped:
            lines.append(
                f"feedback: skipped {sum(self.verdicts.skipped.values())} unusable feedback "
                f"records ({_reasons(self.verdicts.skipped)})"
            )
        if self.outputs.skipped:
            lines.append(
                f"feedback: skipped {sum(self.outputs.skipped.values())} unusable event or "
                f"incident records ({_reasons(self.outputs.skipped)})"
            )
        return lines


def _reasons(counts: Counter[str]) -> str:
    return ", ".join(f"{n} x {reason}" for reason, n in counts.most_common())


def feedback_source(
    feedback: str, events: str | None = None, incidents: str | None = None
) -> FeedbackSource:
    """Check the flags: a ``kafka://`` URL naming its topics, or files; `ConfigError` else."""
    if not feedback.startswith("kafka://"):
        if events is None:
            raise ConfigError(f"--feedback {feedback} needs --feedback-events FILE: {_USAGE}")
        return FeedbackSource(feedback, events, incidents)
    if events is not None or incidents is not None:
        raise ConfigError(
            "with --feedback kafka://... name the topics in its URL (?events=...&incidents=...),"
            " not with --feedback-events/--feedback-incidents"
        )
    try:
        checked = split_kafka_url(feedback)
    except KafkaUrlProblem as problem:
        raise ConfigError(f"invalid --feedback {feedback!r} ({problem.kind}): {_USAGE}") from None
    options = dict(parse_qsl(checked.query, keep_blank_values=True))
    unknown = sorted(set(options) - {"events", "incidents", "timeout"})
    if unknown:
        raise ConfigError(
            f"unknown option {unknown[0]!r} in --feedback: the options are events, incidents "
            "and timeout"
        )
    if not options.get("events"):
        raise ConfigError(f"--feedback {feedback} names no events topic: {_USAGE}")
    base = f"kafka://{','.join(checked.servers)}/"
    query = f"?{urlencode({'timeout': options['timeout']})}" if "timeout" in options else ""

    def url(topic: str) -> str:
        return base + topic + query

    incident_topic = options.get("incidents") or None
    return FeedbackSource(
        url(checked.topic),
        url(options["events"]),
        url(incident_topic) if incident_topic else None,
    )


def _read_values(
    where: str, kafka: KafkaConnection | None
) -> tuple[list[Value], list[bytes | None] | None]:
    """The records of a topic (and their Kafka keys) or the lines of a file."""
    if where.startswith("kafka://"):
        from trainer.kafka_source import read_topic

        read = read_topic(where, kafka)
        return read.values, [o.key for o in read.origins]
    path = Path(where)
    if not path.is_file():
        raise DataError(f"feedback file not found: {where}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {where}: {exc.strerror}") from exc
    lines: list[Value] = [
        (f"{where} line {n}", line.rstrip(b"\r"))
        for n, line in enumerate(data.split(b"\n"), start=1)
        if line.strip()
    ]
    return lines, None


def read_feedback(source: FeedbackSource, kafka: KafkaConnection | None = None) -> FeedbackRead:
    """Read and parse the feedback and the outputs it resolves against."""
    feedback, _ = _read_values(source.feedback, kafka)
    if not feedback:
        raise DataError(f"{source.feedback} holds no feedback records")
    events, event_keys = _read_values(source.events, kafka)
    incidents: list[Value] = []
    if source.incidents is not None:
        incidents, _ = _read_values(source.incidents, kafka)
    return FeedbackRead(
        parse_feedback(feedback),
        parse_outputs(events, incidents, event_keys),
        len(events),
        len(incidents),
    )


def dataset_refs(ds: Dataset) -> RowRefs:
    """How a point model's DATA rows are found: by source coordinates, Kafka key and timestamp
    for a ``kafka://`` read, else by the ``id`` column (incidents then resolve through their
    events only: a point model's table has no key or time column)."""
    if ds.origins is None:
        return RowRefs(ds.n_rows, ids=ds.ids)
    return RowRefs(
        ds.n_rows,
        coordinates=[(o.topic, o.partition, o.offset) for o in ds.origins],
        keys=[None if o.key is None else o.key.decode("utf-8", "replace") for o in ds.origins],
        times_ms=np.asarray(
            [np.nan if o.timestamp_ms is None else o.timestamp_ms for o in ds.origins], np.float64
        ),
    )


def series_refs(data: SeriesData) -> RowRefs:
    """How a windowed model's rows are found: by ``id``, and by key and time column (numbers
    are taken as epoch milliseconds, timestamps converted)."""
    times: Any = None
    if data.times is not None:
        if np.issubdtype(data.times.dtype, np.datetime64):
            times = data.times.astype("datetime64[ns]").astype(np.int64) / 1e6
        else:
            times = np.asarray(data.times, np.float64)
    return RowRefs(data.n_rows, ids=data.ids, keys=list(data.keys), times_ms=times)
