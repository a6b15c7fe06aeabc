"""The loop's windowed-model path: restore what a batch's partitions need, push, score, output.

Built by the loop when the installed model is windowed (its manifest has a ``series`` section);
point models never reach this module. It owns the state room (`worker.state`) and the reader a
restore re-reads the input with, and tells the client what to commit with each offset.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from anomaly_contract.artifact import ModelBundle
from anomaly_contract.series import SeriesModel, SeriesState
from worker.client import ConsumerClient, InRecord, Partition
from worker.decode import DecodedBatch, FeatureSpec
from worker.membership import COMMITTED_TIMEOUT_MS, Held
from worker.metrics import StateMetrics
from worker.outputs import BatchOutputs
from worker.series_batch import SeriesOutputSettings, push_batch, replay_rows, series_outputs
from worker.settings import WorkerSettings
from worker.state import ReplayReader, SeriesStateRoom

log = logging.getLogger(__name__)


def series_model_of(bundle: ModelBundle) -> SeriesModel | None:
    """The bundle's windowed model, or None for a point model."""
    return bundle.series if bundle.manifest.series is not None else None


class SeriesScoring:
    """Windowed scoring of the loop's batches, with state restored on assignment."""

    def __init__(
        self,
        model: SeriesModel,
        settings: WorkerSettings,
        metrics: StateMetrics,
        consumer: Callable[[], ConsumerClient | None],
        reader: ReplayReader,
        previous: SeriesScoring | None = None,
        heartbeat: Callable[[], None] = lambda: None,
    ) -> None:
        self.model = model
        self._heartbeat = heartbeat
        self.key_field = settings.key_field
        self._consumer = consumer
        self._reader = reader
        trained = model.normaliser.trained_keys()
        same_shape = previous is not None and (
            previous.model.window,
            previous.model.warmup_records,
        ) == (model.window, model.warmup_records)
        self.room: SeriesStateRoom = SeriesStateRoom(
            new_store=lambda: SeriesState(model, settings.max_keys),
            learns_online=lambda key: key not in trained,
            replay_cap=settings.state_replay_max_records,
            metrics=metrics,
            # batches the previous version scored may still be committed: keep their plans
            marks=previous.room.marks if same_shape and previous is not None else None,
        )

    def commit_metadata(self, tp: Partition, offset: int) -> str:
        return self.room.commit_metadata(tp, offset)

    def restore_missing(self, held: Held, spec: FeatureSpec) -> None:
        """Restore every partition of the batch the room holds no state for (just assigned, or
        dropped after a model swap or an aborted batch), up to its first record in the batch.
        Raises `ClientError` when the broker cannot serve the restore."""
        missing = [tp for tp in held if tp not in self.room and held[tp]]
        if not missing:
            return
        consumer = self._consumer()
        assert consumer is not None
        rows_of = replay_rows(spec, self.key_field)
        for tp in sorted(missing):
            metadata = consumer.committed_metadata(tp, timeout_ms=COMMITTED_TIMEOUT_MS)
            self.room.restore(
                tp, held[tp][0].offset, metadata, self._reader, rows_of, self._heartbeat
            )

    def batch_outputs(
        self,
        held: Held,
        records: list[InRecord],
        decoded: DecodedBatch,
        spec: FeatureSpec,
        out: SeriesOutputSettings,
    ) -> BatchOutputs:
        """Restore, push and score one batch (its offsets' replay starts are noted for the
        commit before anything is sent)."""
        self.restore_missing(held, spec)
        pushed = push_batch(self.room, records, decoded, self.key_field)
        self.room.end_batch({tp: recs[-1].offset + 1 for tp, recs in held.items() if recs})
        return series_outputs(records, decoded, pushed, self.model, out)

    def forget(self, partitions: set[Partition] | None) -> None:
        """Partitions revoked, or a batch redone (None: all): their state is rebuilt on demand."""
        self.room.drop(partitions)
