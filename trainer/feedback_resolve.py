"""Resolving feedback ids to rows: of DATA (for ``fit``) or of the events (for ``threshold``).

The rules are in `trainer.feedback`'s docstring; this module applies them. Pure NumPy.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from anomaly_contract.artifact import FeedbackSummary
from trainer.feedback import (
    CONFIRMED,
    CONFIRMED_ROW,
    FALSE_POSITIVE,
    FALSE_POSITIVE_ROW,
    UNLABELLED_ROW,
    EventRef,
    FeedbackLabels,
    IncidentRef,
    Outputs,
    RowRefs,
    Verdicts,
)


def id_form(value: Any) -> str | None:
    """One text form for an id, whether a CSV gave ``7``, ``7.0`` or ``"7"``; None if absent."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float | np.floating):
        if not np.isfinite(value):
            return None
        if float(value).is_integer():
            return str(int(value))
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)


class RowIndex:
    """DATA's rows found by source coordinates, by id, and by key and time (incidents)."""

    def __init__(self, refs: RowRefs) -> None:
        self.refs = refs
        self.by_coordinate: dict[tuple[str, int, int], int] = {}
        self.by_id: dict[str, list[int]] = defaultdict(list)
        if refs.ids is None and refs.coordinates is not None:
            self.by_coordinate = {c: i for i, c in enumerate(refs.coordinates)}
        if refs.ids is not None:
            for i, value in enumerate(refs.ids):
                form = id_form(value)
                if form is not None:
                    self.by_id[form].append(i)
        self.keys = np.asarray(refs.keys, dtype=object) if refs.keys is not None else None
        if refs.coordinates is not None:
            coords = refs.coordinates
            self.topics = np.asarray([c[0] for c in coords], dtype=object)
            self.partitions = np.asarray([c[1] for c in coords], dtype=np.int64)
            self.offsets = np.asarray([c[2] for c in coords], dtype=np.int64)

    def event_rows(self, event: EventRef) -> list[int]:
        """The row an event flagged: by id when the rows have ids, else by source coordinates."""
        if self.refs.ids is None:
            if event.topic is None or event.partition is None or event.offset is None:
                return []
            row = self.by_coordinate.get((event.topic, event.partition, event.offset))
            return [] if row is None else [row]
        form = id_form(event.record_id)
        return list(self.by_id.get(form, ())) if form is not None else []

    def incident_rows(self, incident: IncidentRef) -> np.ndarray:
        """The rows of the incident's key from its first anomaly to its last (record times)."""
        times = self.refs.times_ms
        if self.keys is None or times is None:
            return np.zeros(0, dtype=np.int64)
        mask = (self.keys == incident.key) & (times >= incident.first_ms)
        mask &= times <= incident.last_ms
        if self.refs.coordinates is not None and incident.partition is not None:
            mask &= self.partitions == incident.partition
            if incident.topic is not None:
                mask &= self.topics == incident.topic
            if incident.first_offset is not None:
                mask &= self.offsets >= incident.first_offset
        return np.flatnonzero(mask)


def _rows_of_ids(
    verdicts: Verdicts, outputs: Outputs, index: RowIndex
) -> tuple[list[tuple[str, str, np.ndarray]], list[str]]:
    """(id, verdict, rows) of every feedback id that found rows, and the ids that found none."""
    events_of_incident: dict[str, list[EventRef]] = defaultdict(list)
    for event in outputs.events.values():
        if event.incident_id is not None:
            events_of_incident[event.incident_id].append(event)
    found: list[tuple[str, str, np.ndarray]] = []
    unresolved: list[str] = []

    def add(feedback_id: str, verdict: str, rows: np.ndarray) -> None:
        if rows.size:
            found.append((feedback_id, verdict, rows))
        else:
            unresolved.append(feedback_id)

    for event_id, verdict in verdicts.events.items():
        flagged = outputs.events.get(event_id)
        add(event_id, verdict, np.asarray(index.event_rows(flagged) if flagged else [], np.int64))
    for incident_id, verdict in verdicts.incidents.items():
        incident = outputs.incidents.get(incident_id)
        parts = [index.incident_rows(incident)] if incident is not None else []
        parts += [
            np.asarray(index.event_rows(e), np.int64) for e in events_of_incident[incident_id]
        ]
        add(
            incident_id,
            verdict,
            np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64),
        )
    return found, unresolved


def label_rows(
    verdicts: Verdicts, outputs: Outputs, refs: RowRefs, source: str = ""
) -> FeedbackLabels:
    """Each row of DATA: confirmed, false positive or unlabelled (confirmed wins a conflict)."""
    found, unresolved = _rows_of_ids(verdicts, outputs, RowIndex(refs))
    labels = np.full(refs.n, UNLABELLED_ROW, dtype=np.int8)
    for _, verdict, rows in found:
        if verdict == FALSE_POSITIVE:
            labels[rows] = FALSE_POSITIVE_ROW
    for _, verdict, rows in found:
        if verdict == CONFIRMED:
            labels[rows] = CONFIRMED_ROW
    counts = FeedbackSummary(
        confirmed=sum(v == CONFIRMED for _, v, _ in found),
        false_positive=sum(v == FALSE_POSITIVE for _, v, _ in found),
        unresolved=len(unresolved),
        skipped=sum(verdicts.skipped.values()),
        confirmed_rows=int((labels == CONFIRMED_ROW).sum()),
        false_positive_rows=int((labels == FALSE_POSITIVE_ROW).sum()),
    )
    return FeedbackLabels(labels, counts.model_copy(update={"source": source}), unresolved, source)


def event_refs(events: Sequence[EventRef]) -> RowRefs:
    """The events themselves as rows, found by their source (else their event id), key and
    time: what `label_events` resolves feedback against."""
    located = all(
        e.topic is not None and e.partition is not None and e.offset is not None for e in events
    )
    coordinates = [(str(e.topic), int(e.partition or 0), int(e.offset or 0)) for e in events]
    times = [np.nan if e.timestamp_ms is None else float(e.timestamp_ms) for e in events]
    return RowRefs(
        n=len(events),
        ids=[e.event_id for e in events],
        coordinates=coordinates if located else None,
        keys=[e.key for e in events],
        times_ms=np.asarray(times, dtype=np.float64),
    )


def label_events(
    verdicts: Verdicts, outputs: Outputs, events: Sequence[EventRef]
) -> FeedbackLabels:
    """Each of ``events``: its own verdict, else its incident's (by id, or by key and time)."""
    # Each event is a row whose "id" is its event id, so an event without a source still matches.
    as_rows = {e.event_id: replace(e, record_id=e.event_id) for e in events}
    return label_rows(verdicts, Outputs(as_rows, outputs.incidents), event_refs(events))
