"""One batch through a windowed model: key each record, push it into its key's window, score the
full windows in one call, build the events and dead letters.

Records that do not yet close a window of their key are *warming*: counted, never an event.
Bad records (undecodable, or an unusable series key) are dead-lettered and never enter a window,
in the live path and in a restore alike (`replay_rows` decodes and keys re-read records as
`push_batch` does live ones). Events add
``"key"`` and ``"window": {"first_offset", "last_offset"}`` to the point model's (``event_id``
and, in an incident, ``incident_id`` included), and their
``top_features`` name the channels that contribute most to the score (their mean element error
over the window's scored last rows, over the channel's calibrated scale for a ``channel_max``
model: the channels' errors average to a mean score, as a point model's features' do, and the
first one is a ``channel_max`` score), each with how many steps back its largest element error
in the whole window sits (0: the record itself).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np

from anomaly_contract.windows import WindowBatch
from worker import decode as dec
from worker.client import InRecord, OutRecord, Partition
from worker.decode import DecodedBatch, DecodeError, FeatureSpec, decode_batch
from worker.incident_room import IncidentOutcome, IncidentRoom, ScoredRow, tracker_key
from worker.incidents import ScoredRecord, event_id
from worker.outputs import BatchOutputs, dead_letter
from worker.series_keys import series_keys
from worker.state import RowsOf, SeriesStateRoom


class WindowScores(Protocol):
    """What `SeriesModel.score_windows` returns (`anomaly_contract.series.SeriesScores`)."""

    @property
    def scores(self) -> np.ndarray: ...
    @property
    def thresholds(self) -> np.ndarray: ...
    @property
    def element_errors(self) -> np.ndarray: ...
    @property
    def channel_errors(self) -> np.ndarray:
        """(n, C): each channel's error of the scored rows, as the score reduces them."""


class WindowScorer(Protocol):
    """A windowed model (`anomaly_contract.series.SeriesModel`)."""

    @property
    def score_steps(self) -> int:
        """A window's score is the mean element error of its last ``score_steps`` rows."""

    def score_windows(self, windows: np.ndarray, keys: Sequence[str]) -> WindowScores: ...


def replay_rows(spec: FeatureSpec, key_field: str | None) -> RowsOf:
    """The rows a restore pushes from re-read records: exactly those the live path pushes
    (same decoding, same keys, bad records left out)."""

    def rows_of(records: list[InRecord]) -> tuple[list[str], np.ndarray, np.ndarray]:
        decoded = decode_batch([r.value for r in records], spec)
        usable = usable_keys(records, decoded, key_field)
        return usable.keys, decoded.x[usable.rows], usable.offsets()

    return rows_of


@dataclass(frozen=True)
class UsableRows:
    """The decoded records of a batch with a usable series key, in batch order: ``keys[i]``
    is the key of ``records[i]``, whose features are row ``rows[i]`` of ``decoded.x``; and
    the others' key errors (position in the batch, why)."""

    keys: list[str]
    rows: np.ndarray
    records: list[InRecord]
    errors: list[tuple[int, DecodeError]]

    def offsets(self) -> np.ndarray:
        return np.fromiter(
            (r.offset for r in self.records), dtype=np.int64, count=len(self.records)
        )


def usable_keys(
    records: Sequence[InRecord], decoded: DecodedBatch, key_field: str | None
) -> UsableRows:
    """The decoded records with a usable series key (`UsableRows`)."""
    positions = decoded.valid_index
    found = series_keys(records, positions, key_field)
    if not any(isinstance(key, DecodeError) for key in found):
        chosen = [records[p] for p in positions]
        rows = np.arange(len(positions), dtype=np.int64)
        return UsableRows(cast("list[str]", found), rows, chosen, [])
    keys: list[str] = []
    picked: list[int] = []
    chosen = []
    errors: list[tuple[int, DecodeError]] = []
    for j, key in enumerate(found):
        position = positions[j]
        if isinstance(key, DecodeError):
            errors.append((position, key))
        else:
            keys.append(key)
            picked.append(j)
            chosen.append(records[position])
    return UsableRows(keys, np.array(picked, dtype=np.int64), chosen, errors)


@dataclass
class PushedBatch:
    """A batch pushed into the state: its full windows (in batch order) and what is left over.

    Window ``i`` belongs to ``keys[i]``, scores row ``rows[i]`` of ``decoded.x``, holds
    ``values[i]`` (W, C) and spans ``first_offsets[i]`` .. ``last_offsets[i]``."""

    keys: list[str]
    rows: np.ndarray
    values: np.ndarray
    first_offsets: np.ndarray
    last_offsets: np.ndarray
    errors: list[tuple[int, DecodeError]]  # position in the batch, why; in batch order
    n_warming: int

    def __len__(self) -> int:
        return len(self.keys)

    def select(self, chosen: np.ndarray) -> PushedBatch:
        """The windows ``chosen`` (indices), nothing left over."""
        return PushedBatch(
            [self.keys[i] for i in chosen.tolist()],
            self.rows[chosen],
            self.values[chosen],
            self.first_offsets[chosen],
            self.last_offsets[chosen],
            [],
            0,
        )


def push_batch(
    room: SeriesStateRoom,
    records: Sequence[InRecord],
    decoded: DecodedBatch,
    key_field: str | None,
) -> PushedBatch:
    """Push every decoded record with a usable key into its partition's state, in order: one
    `SeriesStateRoom.push_many` per run of records of one partition."""
    usable = usable_keys(records, decoded, key_field)
    keys, rows, chosen = usable.keys, usable.rows, usable.records
    errors = list(decoded.errors)
    if usable.errors:
        errors = sorted(errors + usable.errors, key=lambda e: e[0])
    if not keys:
        none = np.zeros(0, dtype=np.int64)
        return PushedBatch([], none, np.zeros((0, 0, 0)), none, none, errors, 0)
    offsets = usable.offsets()
    runs: list[tuple[Partition, int]] = []  # (partition, first index of its run)
    for i, r in enumerate(chosen):
        if not runs or runs[-1][0].partition != r.partition or runs[-1][0].topic != r.topic:
            runs.append((Partition(r.topic, r.partition), i))
    bounds = [start for _, start in runs[1:]] + [len(chosen)]
    x = decoded.x[rows]
    found: list[tuple[np.ndarray, WindowBatch]] = []
    for (tp, start), end in zip(runs, bounds, strict=True):
        batch = room.push_many(tp, keys[start:end], x[start:end], offsets[start:end])
        found.append((batch.rows + start, batch))
    closing = np.concatenate([at for at, _ in found])
    return PushedBatch(
        [keys[i] for i in closing.tolist()],
        rows[closing],
        np.concatenate([b.values for _, b in found]),
        np.concatenate([b.first_offsets for _, b in found]),
        np.concatenate([b.last_offsets for _, b in found]),
        errors,
        len(keys) - closing.shape[0],
    )


def window_top_features(
    element_errors: np.ndarray,
    names: Sequence[str],
    k: int,
    score_steps: int,
    contributions: np.ndarray | None = None,
) -> list[list[dict[str, Any]]]:
    """Per window ``(W, C)``: the ``k`` channels with the largest ``contributions`` (n, C), by
    default the mean error over the last ``score_steps`` rows (a ``channel_max`` model's are
    those over the channel scales: what the score takes the largest of), largest first, each
    with that error and how many steps back the channel's largest element error in the window
    sits (0: the newest record)."""
    n, width, channels = element_errors.shape
    k = min(k, channels)
    if n == 0 or k <= 0:
        return [[] for _ in range(n)]
    contribution = (
        element_errors[:, -score_steps:, :].mean(axis=1)
        if contributions is None
        else np.asarray(contributions, dtype=np.float64)
    )  # (n, C)
    peak_step = element_errors.argmax(axis=1)  # (n, C)
    order = np.argsort(-contribution, axis=1, kind="stable")[:, :k]
    out: list[list[dict[str, Any]]] = []
    for i in range(n):
        out.append(
            [
                {
                    "name": names[c],
                    "steps_back": int(width - 1 - peak_step[i, c]),
                    "error": float(contribution[i, c]),
                }
                for c in order[i].tolist()
            ]
        )
    return out


def series_event(
    *,
    record: InRecord,
    record_id: Any,
    key: str,
    window: tuple[int, int],
    score: float,
    threshold: float,
    model_version: str,
    top_features: list[dict[str, Any]],
    detected_at: str,
    incident_id: str | None = None,
) -> bytes:
    """One windowed model's anomaly event as UTF-8 JSON bytes (``window``: its first and last
    offset)."""
    event: dict[str, Any] = {
        "id": record_id,
        "event_id": event_id(record.topic, record.partition, record.offset, model_version),
        "key": key,
        "score": score,
        "threshold": threshold,
        "severity": score / threshold if threshold > 0 else None,
        "model_version": model_version,
        "source": {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp_ms": record.timestamp,
        },
        "window": {"first_offset": window[0], "last_offset": window[1]},
        "top_features": top_features,
        "detected_at": detected_at,
    }
    if incident_id is not None:
        event["incident_id"] = incident_id
    return json.dumps(event, allow_nan=False, separators=(",", ":")).encode()


@dataclass(frozen=True)
class SeriesOutputSettings:
    """What the outputs of a windowed batch depend on besides the batch."""

    model_version: str
    channel_names: list[str]
    top_k: int
    output_topic: str
    dlq_topic: str
    detected_at: str


@dataclass
class ScoredWindows:
    """A batch's full windows scored: scores, thresholds, which are finite and anomalous, and
    the top channels of each anomalous one (by its index among the windows)."""

    scores: np.ndarray
    thresholds: np.ndarray
    finite: np.ndarray
    anomalous: np.ndarray  # indices, ascending
    tops: dict[int, list[dict[str, Any]]]


def score_pushed(
    model: WindowScorer, windows: np.ndarray, keys: Sequence[str], names: list[str], k: int
) -> ScoredWindows:
    """Score full windows (n, W, C) in one call and rank the anomalous ones' channels."""
    scored = model.score_windows(windows, keys)
    scores = np.asarray(scored.scores, dtype=np.float64)
    thresholds = np.asarray(scored.thresholds, dtype=np.float64)
    finite = np.isfinite(scores)
    anomalous = np.flatnonzero(finite & (scores > thresholds))
    tops: dict[int, list[dict[str, Any]]] = {}
    if anomalous.size:
        element_errors = np.asarray(scored.element_errors)[anomalous]
        contributions = np.asarray(scored.channel_errors)[anomalous]
        ranked = window_top_features(element_errors, names, k, model.score_steps, contributions)
        tops = dict(zip(anomalous.tolist(), ranked, strict=True))
    return ScoredWindows(scores, thresholds, finite, anomalous, tops)


def window_rows(
    records: Sequence[InRecord],
    decoded: DecodedBatch,
    pushed: PushedBatch,
    scored: ScoredWindows,
    chosen: Sequence[int] | None = None,
) -> tuple[list[int], list[ScoredRow]]:
    """The scored windows (``chosen`` of them; default: every finite one) as rows for
    `IncidentRoom.track`, each with its window's first offset as where a replay starts."""
    index = np.flatnonzero(scored.finite).tolist() if chosen is None else list(chosen)
    rows: list[ScoredRow] = []
    for i in index:
        r = records[decoded.valid_index[pushed.rows[i]]]
        score, threshold = float(scored.scores[i]), float(scored.thresholds[i])
        top = scored.tops.get(i, ())
        record = ScoredRecord(
            key=tracker_key(pushed.keys[i], r.partition),
            timestamp_ms=r.timestamp,
            offset=r.offset,
            is_anomaly=score > threshold,
            severity=score / threshold if threshold > 0 else 0.0,
            contributions={f["name"]: f["error"] for f in top},
            replay_from=int(pushed.first_offsets[i]),
        )
        rows.append((r, record))
    return index, rows


def replay_window_rows(
    records: Sequence[InRecord],
    decoded: DecodedBatch,
    pushed: PushedBatch,
    model: WindowScorer,
    out: SeriesOutputSettings,
    from_offset: int,
) -> list[ScoredRow]:
    """A restore's re-read chunk (already pushed): its windows of records at ``from_offset``
    or later, scored as live, as rows to rebuild the incidents from."""
    sub = pushed.select(np.flatnonzero(pushed.last_offsets >= from_offset))
    if not len(sub):
        return []
    scored = score_pushed(model, sub.values, sub.keys, out.channel_names, out.top_k)
    return window_rows(records, decoded, sub, scored)[1]


def series_outputs(
    records: Sequence[InRecord],
    decoded: DecodedBatch,
    pushed: PushedBatch,
    model: WindowScorer,
    out: SeriesOutputSettings,
    incidents: IncidentRoom | None = None,
) -> BatchOutputs:
    """Score the batch's full windows in one call; events for the anomalous ones, dead letters
    for bad records and windows whose error overflowed. With ``incidents``, every scored window
    is fed to them first and the incident records follow the events."""
    errors = pushed.errors
    outs: list[OutRecord] = []
    finite_scores = np.zeros(0)
    n_anomalies = 0
    outcome: IncidentOutcome | None = None
    if len(pushed):
        scored = score_pushed(model, pushed.values, pushed.keys, out.channel_names, out.top_k)
        scores, thresholds, finite = scored.scores, scored.thresholds, scored.finite
        if not finite.all():
            overflowed = [
                (decoded.valid_index[pushed.rows[i]], DecodeError(dec.NON_FINITE_SCORE, "the reconstruction error overflowed"))
                for i in np.flatnonzero(~finite)
            ]  # fmt: skip
            errors = sorted(errors + overflowed, key=lambda e: e[0])
        finite_scores = scores[finite]
        n_anomalies = int(scored.anomalous.size)
        incident_of: dict[int, str | None] = {}
        if incidents is not None:
            index, rows = window_rows(records, decoded, pushed, scored)
            outcome = incidents.track(rows, out.model_version)
            incident_of = dict(zip(index, outcome.ids, strict=True))
        for i in scored.anomalous.tolist():
            j = pushed.rows[i]
            r = records[decoded.valid_index[j]]
            value = series_event(
                record=r,
                record_id=decoded.ids[j],
                key=pushed.keys[i],
                window=(int(pushed.first_offsets[i]), int(pushed.last_offsets[i])),
                score=float(scores[i]),
                threshold=float(thresholds[i]),
                model_version=out.model_version,
                top_features=scored.tops[i],
                detected_at=out.detected_at,
                incident_id=incident_of.get(i),
            )
            outs.append(OutRecord(out.output_topic, r.key, value, []))
        if outcome is not None:
            outs += outcome.records
    for pos, err in errors:
        outs.append(
            dead_letter(records[pos], err, out.dlq_topic, out.model_version, out.detected_at)
        )
    return BatchOutputs(
        outs, errors, n_anomalies, finite_scores, n_warming=pushed.n_warming, incidents=outcome
    )
