"""One batch through a windowed model: key each record, push it into its key's window, score the
full windows in one call, build the events and dead letters.

Records that do not yet close a window of their key are *warming*: counted, never an event.
Bad records (undecodable, or an unusable series key) are dead-lettered and never enter a window,
in the live path and in a restore alike (`replay_rows` decodes and keys re-read records as
`push_batch` does live ones). Events add
``"key"`` and ``"window": {"first_offset", "last_offset"}`` to the point model's, and their
``top_features`` name the channels that contribute most to the score (their mean element error
over the window's scored last rows: the channels' errors average to the score, as a point
model's features' do), each with how many steps back its largest element error in the whole
window sits (0: the record itself).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from anomaly_contract.windows import Window
from worker import decode as dec
from worker.client import InRecord, OutRecord, Partition
from worker.decode import DecodedBatch, DecodeError, FeatureSpec, decode_batch
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


class WindowScorer(Protocol):
    """A windowed model (`anomaly_contract.series.SeriesModel`)."""

    @property
    def score_steps(self) -> int:
        """A window's score is the mean element error of its last ``score_steps`` rows."""

    def score_windows(self, windows: np.ndarray, keys: Sequence[str]) -> WindowScores: ...


def replay_rows(spec: FeatureSpec, key_field: str | None) -> RowsOf:
    """The rows a restore pushes from re-read records: exactly those the live path pushes
    (same decoding, same keys, bad records left out)."""

    def rows_of(records: list[InRecord]) -> Iterator[tuple[str, np.ndarray, int]]:
        decoded = decode_batch([r.value for r in records], spec)
        keys = series_keys(records, decoded.valid_index, key_field)
        for j, key in enumerate(keys):
            if not isinstance(key, DecodeError):
                yield key, decoded.x[j], records[decoded.valid_index[j]].offset

    return rows_of


@dataclass
class PushedBatch:
    """A batch pushed into the state: the full windows (in batch order) and what is left over."""

    windows: list[Window]
    keys: list[str]
    rows: list[int]  # row of decoded.x of each window
    errors: list[tuple[int, DecodeError]]  # position in the batch, why; in batch order
    n_warming: int


def push_batch(
    room: SeriesStateRoom,
    records: Sequence[InRecord],
    decoded: DecodedBatch,
    key_field: str | None,
) -> PushedBatch:
    """Push every decoded record with a usable key into its partition's state, in order."""
    out = PushedBatch([], [], [], list(decoded.errors), 0)
    key_errors: list[tuple[int, DecodeError]] = []
    tp: Partition | None = None
    x = decoded.x
    for j, key in enumerate(series_keys(records, decoded.valid_index, key_field)):
        pos = decoded.valid_index[j]
        if isinstance(key, DecodeError):
            key_errors.append((pos, key))
            continue
        r = records[pos]
        if tp is None or tp.partition != r.partition or tp.topic != r.topic:
            tp = Partition(r.topic, r.partition)
        window = room.push(tp, key, x[j], r.offset)
        if window is None:
            out.n_warming += 1
            continue
        out.windows.append(window)
        out.keys.append(key)
        out.rows.append(j)
    if key_errors:
        out.errors = sorted(out.errors + key_errors, key=lambda e: e[0])
    return out


def window_top_features(
    element_errors: np.ndarray, names: Sequence[str], k: int, score_steps: int
) -> list[list[dict[str, Any]]]:
    """Per window ``(W, C)``: the ``k`` channels with the largest mean error over the last
    ``score_steps`` rows (what the score averages), largest first, each with that error and how
    many steps back the channel's largest element error in the window sits (0: the newest
    record)."""
    n, width, channels = element_errors.shape
    k = min(k, channels)
    if n == 0 or k <= 0:
        return [[] for _ in range(n)]
    contribution = element_errors[:, -score_steps:, :].mean(axis=1)  # (n, C)
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
    window: Window,
    score: float,
    threshold: float,
    model_version: str,
    top_features: list[dict[str, Any]],
    detected_at: str,
) -> bytes:
    """One windowed model's anomaly event as UTF-8 JSON bytes."""
    event = {
        "id": record_id,
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
        "window": {"first_offset": window.first_offset, "last_offset": window.last_offset},
        "top_features": top_features,
        "detected_at": detected_at,
    }
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


def series_outputs(
    records: Sequence[InRecord],
    decoded: DecodedBatch,
    pushed: PushedBatch,
    model: WindowScorer,
    out: SeriesOutputSettings,
) -> BatchOutputs:
    """Score the batch's full windows in one call; events for the anomalous ones, dead letters
    for bad records and windows whose error overflowed."""
    errors = pushed.errors
    outs: list[OutRecord] = []
    finite_scores = np.zeros(0)
    n_anomalies = 0
    if pushed.windows:
        stacked = np.stack([w.values for w in pushed.windows])
        scored = model.score_windows(stacked, pushed.keys)
        scores = np.asarray(scored.scores, dtype=np.float64)
        thresholds = np.asarray(scored.thresholds, dtype=np.float64)
        finite = np.isfinite(scores)
        if not finite.all():
            overflowed = [
                (decoded.valid_index[pushed.rows[i]], DecodeError(dec.NON_FINITE_SCORE, "the reconstruction error overflowed"))
                for i in np.flatnonzero(~finite)
            ]  # fmt: skip
            errors = sorted(errors + overflowed, key=lambda e: e[0])
        finite_scores = scores[finite]
        anomalous = np.flatnonzero(finite & (scores > thresholds))
        n_anomalies = int(anomalous.size)
        if n_anomalies:
            element_errors = np.asarray(scored.element_errors)[anomalous]
            tops = window_top_features(
                element_errors, out.channel_names, out.top_k, model.score_steps
            )
            for i, top in zip(anomalous.tolist(), tops, strict=True):
                j = pushed.rows[i]
                r = records[decoded.valid_index[j]]
                value = series_event(
                    record=r,
                    record_id=decoded.ids[j],
                    key=pushed.keys[i],
                    window=pushed.windows[i],
                    score=float(scores[i]),
                    threshold=float(thresholds[i]),
                    model_version=out.model_version,
                    top_features=top,
                    detected_at=out.detected_at,
                )
                outs.append(OutRecord(out.output_topic, r.key, value, []))
    for pos, err in errors:
        outs.append(
            dead_letter(records[pos], err, out.dlq_topic, out.model_version, out.detected_at)
        )
    return BatchOutputs(outs, errors, n_anomalies, finite_scores, n_warming=pushed.n_warming)
