"""Analyst feedback (``ANOMALY_FEEDBACK_TOPIC``): verdicts on the events and incidents this worker
emitted, counted per model version, and the precision of the recent ones.

A feedback record (UTF-8 JSON)::

    {"event_id" | "incident_id": "...", "verdict": "confirmed" | "false_positive", "by", "at"}

Verdicts are read by a thread of their own (`FeedbackReader`), on a consumer outside the group:
every worker reads every partition of the feedback topic from its end, since each knows only the
ids it emitted itself (`EmittedIds`: a bounded map id -> (kind, model version), fed by the loop
with every delivered batch). A verdict on an id this worker did not emit (another worker's, or
one forgotten past the bound) is counted as ``unknown_id`` and skipped, like a record that is not
JSON, names no id or two, or carries another verdict: a log line each, never a crash.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from worker.client import ClientError, InRecord, OutRecord
from worker.metrics import FEEDBACK_REJECTIONS, FeedbackMetrics

log = logging.getLogger(__name__)

VERDICTS = ("confirmed", "false_positive")
KINDS = ("event", "incident")
REJECTIONS = FEEDBACK_REJECTIONS  # why a record is skipped: feedback_invalid_total{reason}


@dataclass(frozen=True)
class Verdict:
    """One analyst's verdict on one event or incident."""

    kind: str  # "event" or "incident"
    id: str
    verdict: str  # "confirmed" or "false_positive"
    by: str | None = None
    at: str | None = None


def parse_feedback(value: bytes | None) -> Verdict | str:
    """A feedback record's verdict, or the reason (one of `REJECTIONS`) it is not one."""
    try:
        data = json.loads(value or b"")
    except (ValueError, UnicodeDecodeError):
        return "not_json"
    if not isinstance(data, dict):
        return "not_json"
    ids = [(kind, data.get(f"{kind}_id")) for kind in KINDS if data.get(f"{kind}_id") is not None]
    if not ids or not all(isinstance(i, str) and i for _, i in ids):
        return "no_id"
    if len(ids) > 1:
        return "two_ids"
    verdict = data.get("verdict")
    if verdict not in VERDICTS:
        return "bad_verdict"
    by, at = data.get("by"), data.get("at")
    kind, found = ids[0]
    return Verdict(kind, str(found), str(verdict), _text(by), _text(at))


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


class EmittedIds:
    """The ids of the events and incidents this worker emitted, newest ``limit`` of them, each
    with its kind and model version. Written by the loop, read by the feedback thread."""

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self._ids: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._ids)

    def remember(self, found: Iterable[tuple[str, str, str]]) -> None:
        """(id, kind, model version) of emitted events and incidents; the oldest go first."""
        with self._lock:
            for emitted_id, kind, version in found:
                self._ids[emitted_id] = (kind, version)
                self._ids.move_to_end(emitted_id)
            while len(self._ids) > self.limit:
                self._ids.popitem(last=False)

    def lookup(self, emitted_id: str) -> tuple[str, str] | None:
        with self._lock:
            return self._ids.get(emitted_id)


def emitted_in(outs: Iterable[OutRecord], output_topic: str, incident_topic: str | None) -> list[tuple[str, str, str]]:  # fmt: skip
    """(id, kind, model version) of the events and incident records among a batch's outputs."""
    found: list[tuple[str, str, str]] = []
    for out in outs:
        if out.topic == output_topic:
            event = json.loads(out.value or b"")
            found.append((event["event_id"], "event", event["model_version"]))
        elif out.topic == incident_topic:
            incident = json.loads(out.value or b"")
            if incident["status"] == "opened":
                found.append((incident["incident_id"], "incident", incident["model_version"]))
    return found


class FeedbackBook:
    """Counts verdicts on known ids into the metrics; the precision gauge covers the verdicts
    received over the last ``window_s`` (confirmed / all, NaN while there are none)."""

    def __init__(
        self,
        emitted: EmittedIds,
        metrics: FeedbackMetrics,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.emitted = emitted
        self.metrics = metrics
        self.window_s = window_s
        self._clock = clock
        self._recent: deque[tuple[float, bool]] = deque()
        self._confirmed = 0
        metrics.precision.set(float("nan"))

    def record(self, value: bytes | None, where: str = "") -> Verdict | None:
        """Count one feedback record; None (counted and logged) when it is skipped."""
        parsed = parse_feedback(value)
        if isinstance(parsed, Verdict) and self.emitted.lookup(parsed.id) is None:
            parsed = "unknown_id"
        if isinstance(parsed, str):
            self.metrics.invalid.labels(parsed).inc()
            log.warning("feedback record %s skipped: %s", where, parsed, extra={"reason": parsed})
            return None
        kind, version = self.emitted.lookup(parsed.id) or (parsed.kind, "")
        self.metrics.verdicts.labels(parsed.verdict, kind, version).inc()
        self._add(parsed.verdict == "confirmed")
        return parsed

    def _add(self, confirmed: bool) -> None:
        now = self._clock()
        self._recent.append((now, confirmed))
        self._confirmed += confirmed
        while self._recent and self._recent[0][0] < now - self.window_s:
            self._confirmed -= self._recent.popleft()[1]
        self.metrics.precision.set(self._confirmed / len(self._recent))


class TopicPolls(Protocol):
    """What the reader polls (`worker.topic_reader.TopicReader`)."""

    def poll(self, timeout_ms: int) -> list[InRecord]: ...
    def close(self) -> None: ...


class FeedbackReader:
    """The thread reading the feedback topic into a `FeedbackBook`, from the topic's end at
    start. ``make_reader`` builds the topic's reader (retried while the brokers are away)."""

    POLL_MS = 500
    RETRY_S = 5.0

    def __init__(self, make_reader: Callable[[], TopicPolls], book: FeedbackBook) -> None:
        self._make_reader = make_reader
        self.book = book
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feedback", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 3.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        reader: TopicPolls | None = None
        while not self._stop.is_set():
            try:
                if reader is None:
                    reader = self._make_reader()
                for r in reader.poll(self.POLL_MS):
                    self.book.record(r.value, f"{r.topic}[{r.partition}]@{r.offset}")
            except ClientError as exc:
                log.warning("reading the feedback topic: %s (retrying)", exc)
                self._stop.wait(self.RETRY_S)
            except Exception:  # noqa: BLE001 - feedback is optional: never take the worker down
                log.exception("the feedback reader failed (retrying)")
                self._stop.wait(self.RETRY_S)
        if reader is not None:
            reader.close()
