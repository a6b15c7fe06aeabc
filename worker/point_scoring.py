"""The loop's point-model path: score a batch, feed the incidents, build the outputs.

The counterpart of `worker.series_scoring` for models without windows: the loop talks to either
through the same four calls (`batch_outputs`, `commit_metadata`, `forget`). Without incidents it
only scores; with them (`worker.incident_room`) it restores the incidents of a partition that has
none before its first batch is scored (re-reading the input from the replay start its commit
carried, scoring, feeding, emitting nothing) and notes each batch's replay start for the commit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from anomaly_contract.artifact import ModelBundle
from worker.client import ConsumerClient, InRecord, Partition
from worker.decode import DecodedBatch, FeatureSpec, decode_batch
from worker.incident_room import IncidentRoom, ScoredRow, first_offsets, point_rows
from worker.membership import COMMITTED_TIMEOUT_MS, Held
from worker.outputs import BatchOutputs, batch_outputs
from worker.scoring import score_batch, top_features
from worker.series_batch import SeriesOutputSettings
from worker.state import ReplayReader


class PointScoring:
    """Point-model scoring of the loop's batches, with incidents restored on assignment."""

    def __init__(
        self,
        bundle: ModelBundle,
        key_field: str | None,
        incidents: IncidentRoom | None,
        consumer: Callable[[], ConsumerClient | None],
        reader: ReplayReader | None,
        mark: Callable[[str], None] = lambda phase: None,
    ) -> None:
        self.bundle = bundle
        self.key_field = key_field
        self.incidents = incidents
        self._consumer = consumer
        self._reader = reader
        self._mark = mark  # the loop's phase clock: scoring and outputs are timed apart

    def commit_metadata(self, tp: Partition, offset: int) -> str:
        return "" if self.incidents is None else self.incidents.commit_metadata(tp, offset, "")

    def forget(self, partitions: set[Partition] | None) -> None:
        if self.incidents is not None:
            self.incidents.forget(partitions)

    def batch_outputs(
        self,
        held: Held,
        records: list[InRecord],
        decoded: DecodedBatch,
        spec: FeatureSpec,
        out: SeriesOutputSettings,
    ) -> BatchOutputs:
        """Score one batch and build its outputs (incidents restored first where missing).
        Raises `ClientError` when a restore cannot read the input."""
        if self.incidents is not None:
            self.restore_missing(first_offsets(held), spec, out)
        scored = score_batch(self.bundle, decoded.x) if decoded.x.shape[0] else None
        self._mark("score")
        outputs = batch_outputs(
            records,
            decoded,
            scored,
            model_version=out.model_version,
            feature_names=out.channel_names,
            top_k=out.top_k,
            output_topic=out.output_topic,
            dlq_topic=out.dlq_topic,
            detected_at=out.detected_at,
            incidents=self.incidents,
            key_field=self.key_field,
        )
        if self.incidents is not None:
            self.incidents.end_batch({tp: recs[-1].offset + 1 for tp, recs in held.items() if recs})
        self._mark("outputs")
        return outputs

    def restore_missing(
        self, firsts: Mapping[Partition, int], spec: FeatureSpec, out: SeriesOutputSettings
    ) -> None:
        """Rebuild the incidents of each partition of ``firsts`` (partition -> the first offset
        about to be scored) that has none, up to that offset. Raises `ClientError` when the
        broker cannot serve the restore."""
        if self.incidents is None or self._reader is None:
            return
        missing = self.incidents.to_restore(firsts)
        if not missing:
            return
        consumer = self._consumer()
        assert consumer is not None

        def score(chunk: list[InRecord]) -> list[ScoredRow]:
            return self._rows_of(chunk, spec)

        for tp in missing:
            metadata = consumer.committed_metadata(tp, timeout_ms=COMMITTED_TIMEOUT_MS)
            self.incidents.restore(tp, firsts[tp], metadata, self._reader, score, out.model_version)

    def _rows_of(self, chunk: list[InRecord], spec: FeatureSpec) -> list[ScoredRow]:
        """Re-read records scored as live, as rows for the incidents."""
        decoded = decode_batch([r.value for r in chunk], spec)
        if not decoded.x.shape[0]:
            return []
        scored = score_batch(self.bundle, decoded.x)
        anomalous = np.flatnonzero(scored.is_anomaly)
        names = self.bundle.feature_names
        k = self.incidents.rules.top_features if self.incidents is not None else 0
        tops = top_features(scored.feature_errors[anomalous], names, k)
        top_of = dict(zip(anomalous.tolist(), tops, strict=True))
        return point_rows(chunk, decoded, scored, top_of, self.key_field)[1]
