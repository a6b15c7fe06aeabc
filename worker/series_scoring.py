"""The loop's windowed-model path: restore what a batch's partitions need, push, score, output.

Built by the loop when the installed model is windowed (its manifest has a ``series`` section);
point models never reach this module. It owns the state room (`worker.state`) and the reader a
restore re-reads the input with, and tells the client what to commit with each offset. With
incidents on (`worker.incident_room`) it feeds them every scored window, and a restore of a
partition without incident state also scores the re-read records from the incidents' replay
start on and feeds them (nothing emitted).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping

from anomaly_contract.artifact import ModelBundle
from anomaly_contract.series import SeriesModel, SeriesState
from worker.client import ConsumerClient, InRecord, Partition
from worker.decode import DecodedBatch, FeatureSpec, decode_batch
from worker.incident_room import IncidentRoom, ScoredRow, first_offsets
from worker.membership import COMMITTED_TIMEOUT_MS, Held
from worker.metrics import StateMetrics
from worker.outputs import BatchOutputs
from worker.series_batch import (
    SeriesOutputSettings,
    push_batch,
    replay_rows,
    replay_window_rows,
    series_outputs,
)
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
        incidents: IncidentRoom | None = None,
        mark: Callable[[str], None] = lambda phase: None,
    ) -> None:
        self.model = model
        self._mark = mark  # the loop's phase clock
        self.incidents = incidents
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
        metadata = self.room.commit_metadata(tp, offset)
        if self.incidents is None:
            return metadata
        return self.incidents.commit_metadata(tp, offset, metadata)

    def restore_missing(
        self, firsts: Mapping[Partition, int], spec: FeatureSpec, out: SeriesOutputSettings
    ) -> None:
        """Restore every partition of ``firsts`` (partition -> the first offset about to be
        scored) the room holds no state for (just assigned, or dropped after a model swap or an
        aborted batch), or, incidents on, whose incidents are missing, up to that offset. Raises
        `ClientError` when the broker cannot serve the restore."""
        incidents = self.incidents
        lost = set(incidents.to_restore(firsts)) if incidents is not None else set()
        missing = [
            tp for tp, first in firsts.items() if not self.room.holds(tp, first) or tp in lost
        ]
        if not missing:
            return
        consumer = self._consumer()
        assert consumer is not None
        rows_of = replay_rows(spec, self.key_field)
        for tp in sorted(missing):
            metadata = consumer.committed_metadata(tp, timeout_ms=COMMITTED_TIMEOUT_MS)
            until = firsts[tp]
            if incidents is None or tp not in lost:
                self.room.restore(tp, until, metadata, self._reader, rows_of, self._heartbeat)
                continue
            incidents.set_model_version(out.model_version)
            start = incidents.replay_start(tp, metadata, until)
            feed = incidents.begin_replay(tp, until)

            replay_chunk = functools.partial(
                self._replay_chunk, spec=spec, out=out, start=start, feed=feed
            )
            try:
                self.room.restore(
                    tp, until, metadata, self._reader, rows_of, self._heartbeat,
                    needed_from=start, replay_chunk=replay_chunk,
                )  # fmt: skip
            except BaseException:
                incidents.forget([tp])
                raise

    def _replay_chunk(
        self,
        chunk: list[InRecord],
        *,
        spec: FeatureSpec,
        out: SeriesOutputSettings,
        start: int,
        feed: Callable[[list[ScoredRow]], None],
    ) -> None:
        """Push one re-read chunk as live, score its windows from ``start`` on for the
        incidents."""
        decoded = decode_batch([r.value for r in chunk], spec)
        pushed = push_batch(self.room, chunk, decoded, self.key_field)
        feed(replay_window_rows(chunk, decoded, pushed, self.model, out, start))

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
        self.restore_missing(first_offsets(held), spec, out)
        pushed = push_batch(self.room, records, decoded, self.key_field)
        offsets = {tp: recs[-1].offset + 1 for tp, recs in held.items() if recs}
        self.room.end_batch(offsets)
        outputs = series_outputs(records, decoded, pushed, self.model, out, self.incidents)
        if self.incidents is not None:
            self.incidents.end_batch(offsets)
        self._mark("score")  # restore (when due), push, score and events in one
        self._mark("outputs")
        return outputs

    def forget(self, partitions: set[Partition] | None) -> None:
        """Partitions revoked, or a batch redone (None: all): their state is rebuilt on demand."""
        self.room.drop(partitions)
        if self.incidents is not None:
            self.incidents.forget(partitions)
