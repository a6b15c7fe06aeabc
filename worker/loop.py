"""The worker loop: poll -> decode -> score -> emit -> commit, one micro-batch at a time.

Each batch is finished (events and dead letters acknowledged, offsets committed) before the next
poll. Rebalances only happen inside ``poll``, so no batch is ever half-done across one; records
held from earlier polls of a batch whose partition was revoked meanwhile are dropped unprocessed
(they are uncommitted: the partition's new owner reads them; see `worker.membership`). A new
model version is swapped in between batches, so every batch is scored by one version, named in
its events. Kafka is reached only through `worker.client`'s seam.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from anomaly_contract.artifact import ModelBundle
from anomaly_contract.backoff import backoff_s
from worker.client import (
    ClientError,
    ConsumerClient,
    InRecord,
    Offsets,
    OutRecord,
    Partition,
    ProducerClient,
    ProducerFenced,
    make_consumer,
    make_producer,
)
from worker.decode import DecodedBatch, FeatureSpec, decode_batch
from worker.delivery import Delivery, WorkerStopped, make_delivery
from worker.http import HealthState
from worker.incident_room import IncidentRoom, incident_room_of
from worker.membership import GroupMembership, Held
from worker.metrics import PhaseClock, RecentWindow, WorkerMetrics, population_stability_index
from worker.outputs import BatchOutputs, iso_utc
from worker.point_scoring import PointScoring
from worker.reachability import PROBE_INTERVAL_S, PROBE_TIMEOUT_MS
from worker.reload import ModelWatcher
from worker.replay_reader import KafkaReplayReader
from worker.series_batch import SeriesOutputSettings
from worker.series_scoring import SeriesScoring, series_model_of
from worker.settings import WorkerSettings
from worker.state import ReplayReader

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
# poll timeout while no partition is assigned (rebalance in progress or idle)
REBALANCE_POLL_MS = 1000
# connecting while the broker is unreachable: retry from 0.5 s, doubling, at most 10 s apart
CONNECT_RETRY_FIRST_S = 0.5
CONNECT_RETRY_MAX_S = 10.0


class Worker:
    """Wires settings, Kafka, the model watcher, metrics and health into the running loop."""

    def __init__(
        self,
        settings: WorkerSettings,
        metrics: WorkerMetrics,
        health: HealthState,
        watcher: ModelWatcher,
        consumer_factory: Callable[[WorkerSettings], ConsumerClient] = make_consumer,
        producer_factory: Callable[[WorkerSettings], ProducerClient] = make_producer,
        replay_reader_factory: Callable[[WorkerSettings], ReplayReader] = KafkaReplayReader,
    ) -> None:
        self.s = settings
        self.metrics = metrics
        self.health = health
        self.watcher = watcher
        self._consumer_factory = consumer_factory
        self._producer_factory = producer_factory
        self._replay_reader_factory = replay_reader_factory
        self._replay_reader: ReplayReader | None = None
        self.scoring: SeriesScoring | PointScoring | None = None  # for the installed model
        self.incidents: IncidentRoom | None = incident_room_of(settings, metrics.incidents)
        self.on_delivered: Callable[[list[OutRecord]], None] = lambda outs: None  # (feedback)
        self._stop = threading.Event()
        self.membership = GroupMembership(settings, metrics, health, self._stop)
        self.membership.forget = self._forget
        self.window = RecentWindow(settings.stats_window_s)
        self.phases = PhaseClock(metrics.batch_phase_seconds)
        self._bundle: ModelBundle | None = None
        self._spec: FeatureSpec | None = None
        self._calibration_counts: np.ndarray | None = None
        # per partition: the offset after the last batch delivered (for the lag)
        self._positions: dict[Partition, int] = {}
        self._lag_labels: set[Partition] = set()
        self._ends: dict[Partition, int] = {}  # end offsets from the latest probe
        self._next_probe = 0.0
        self._next_lag = 0.0
        self._next_stats = 0.0
        self.consumer: ConsumerClient | None = None
        self.delivery: Delivery | None = None
        # read when scraped, so they follow the state even while the loop waits on the broker
        broker = health.broker
        metrics.broker_reachable.set_function(lambda: 1.0 if broker.reachable else 0.0)
        metrics.ready.set_function(lambda: 1.0 if health.ready()[0] else 0.0)

    # ---------------------------------------------------------------------------------- control
    def stop(self) -> None:
        """Ask the loop to finish its batch, commit and return (safe from signal handlers)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> int:
        """Run until `stop`; returns the process exit code."""
        self.metrics.up.set(1)
        try:
            first = self.watcher.wait_for_first(self._stop)
            if first is None:
                return EXIT_OK
            self._install(first)
            self.watcher.start()
            if not self._connect():
                return EXIT_OK
            while not self._stop.is_set():
                self.turn()
            log.info("stopping: last batch done")
            return EXIT_OK
        except WorkerStopped:
            log.warning("stopped while a batch was still unacknowledged: it will be re-read")
            return EXIT_OK
        except ProducerFenced as exc:
            log.error(
                "another producer with transactional id %s took over (%s): exiting",
                self.s.effective_transactional_id,
                exc,
            )
            return EXIT_OK
        except Exception:
            log.exception("worker loop failed")
            return EXIT_ERROR
        finally:
            self._close()

    def turn(self) -> None:
        """One turn of the loop: swap in a new model, collect a batch and process it (or
        commit the last one when none came), then the periodic checks."""
        self.health.beat()
        self._maybe_swap()
        self.phases.start()
        held = self._collect()
        self.phases.mark("poll")
        if held:
            self._process(held)
        else:
            assert self.delivery is not None
            self.delivery.tick()  # commit the last batch before a pause
        self._periodic()

    # ------------------------------------------------------------------------------ connecting
    def _connect(self) -> bool:
        """Create the consumer and the producer, retrying while the broker is unreachable."""
        attempt = 0
        while not self._stop.is_set():
            started = self.health.broker.now()
            try:
                if self.consumer is None:
                    consumer = self._consumer_factory(self.s)
                    consumer.set_offset_metadata(self._commit_metadata)
                    self.membership.join(consumer)
                    self.consumer = consumer
                self.delivery = make_delivery(
                    self.s,
                    self.consumer,
                    self._make_producer,
                    self.metrics,
                    self.health,
                    self._stop.is_set,
                )
                self.membership.drain = self.delivery.drain
                self.membership.tracker.before_revoke = self.delivery.settle_before_revoke
                self.health.broker.answered(started)
                log.info(
                    "connected",
                    extra={
                        "bootstrap_servers": self.s.bootstrap_servers,
                        "input_topic": self.s.input_topic,
                        "group_id": self.s.group_id,
                        "delivery": self.s.delivery,
                    },
                )
                return True
            except ClientError as exc:
                self.health.broker.report("cannot connect", started, exc)
                delay = backoff_s(attempt, CONNECT_RETRY_FIRST_S, CONNECT_RETRY_MAX_S)
                log.warning("cannot reach Kafka (%s), retrying in %.1fs", exc, delay)
                attempt += 1
                self.health.beat()
                self._stop.wait(delay)
        return False

    def _make_producer(self) -> ProducerClient:
        producer = self._producer_factory(self.s)
        producer.set_offset_metadata(self._commit_metadata)  # exactly_once commits through it
        return producer

    def _commit_metadata(self, tp: Partition, offset: int) -> str:
        """What each committed offset carries: the replay start of windows and incidents."""
        return "" if self.scoring is None else self.scoring.commit_metadata(tp, offset)

    def _forget(self, partitions: set[Partition] | None) -> None:
        """Partitions revoked (None: all, on a rejoin): their batches in flight, positions and
        series and incident state are void."""
        assert self.consumer is not None
        if self.scoring is not None:
            self.scoring.forget(partitions)
        if partitions is None:
            if self.delivery is not None:
                self.delivery.forget(set(self.consumer.assignment()))
            self._positions.clear()
            return
        if self.delivery is not None:
            self.delivery.forget(partitions)
        for tp in partitions:
            self._positions.pop(tp, None)

    def _close(self) -> None:
        self.health.stopping = True  # the ready gauge reads it
        self.watcher.stop()
        delivery, consumer, reader = self.delivery, self.consumer, self._replay_reader
        steps: list[tuple[str, Callable[[], None]]] = []  # in this order, each best effort
        if delivery is not None and consumer is not None:
            steps.append(("final commit", delivery.commit_final))
        if consumer is not None:
            steps.append(("closing the consumer", lambda: consumer.close(timeout_s=3.0)))
        if delivery is not None:
            steps.append(("closing the producer", lambda: delivery.close(timeout_s=3.0)))
        if reader is not None:
            steps.append(("closing the state replay reader", reader.close))
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - closing is best effort
                log.warning("%s: %s", what, exc)
        self.metrics.up.set(0)
        log.info("worker closed")

    # ----------------------------------------------------------------------------------- model
    def _install(self, bundle: ModelBundle) -> None:
        m = bundle.manifest
        self._bundle = bundle
        self._spec = FeatureSpec(
            names=tuple(m.feature_names),
            image_shape=tuple(m.image_shape) if m.image_shape else None,
            max_record_bytes=self.s.max_record_bytes,
            max_abs_value=self.s.max_abs_value,
        )
        self._install_scoring(bundle)
        self.window.set_edges(m.calibration.histogram_edges)
        self._calibration_counts = np.asarray(m.calibration.histogram_counts, dtype=np.float64)
        self.metrics.set_model(m.version, m.threshold, m.expected_anomaly_ratio)
        self.health.model_version = m.version
        log.info(
            "scoring with model %s",
            m.version,
            extra={"version": m.version, "threshold": m.threshold, "features": m.n_features},
        )

    def _install_scoring(self, bundle: ModelBundle) -> None:
        """A windowed model gets fresh series state (rebuilt from the input on demand, with
        the new model's normalisation); a point model none. Incidents carry over."""
        model = series_model_of(bundle)
        if (model is not None or self.incidents is not None) and self._replay_reader is None:
            self._replay_reader = self._replay_reader_factory(self.s)
        if model is None:
            self.scoring = PointScoring(
                bundle, self.s.key_field, self.incidents, lambda: self.consumer,
                self._replay_reader, mark=self.phases.mark,
            )  # fmt: skip
            return
        assert self._replay_reader is not None
        previous = self.scoring if isinstance(self.scoring, SeriesScoring) else None
        self.scoring = SeriesScoring(
            model, self.s, self.metrics.state, lambda: self.consumer, self._replay_reader,
            previous=previous, heartbeat=self.health.beat, incidents=self.incidents,
            mark=self.phases.mark,
        )  # fmt: skip

    def _maybe_swap(self) -> None:
        bundle = self.watcher.take_pending()
        if bundle is not None:
            old = self._bundle.version if self._bundle else None
            self._install(bundle)
            log.info("model swapped %s -> %s", old, bundle.version)

    # ----------------------------------------------------------------------------------- batch
    def _collect(self) -> Held:
        """Poll until the batch is full or its wait is over; drop records of revoked partitions."""
        assert self.consumer is not None
        held: Held = {}
        count = 0
        limit = self.s.batch_max_records
        deadline = time.monotonic() + self.s.batch_max_wait_ms / 1000.0
        while True:
            timeout_ms = max(0, int((deadline - time.monotonic()) * 1000))
            if not self.consumer.assignment() or self.membership.rebalancing:
                # Let poll run long enough to finish a JoinGroup/SyncGroup round: kafka-python
                # 3.0 can leave a join that a short poll gave up on unfinished for good (the
                # partitions stay assigned but are never fetched again; see worker.membership).
                timeout_ms = max(timeout_ms, REBALANCE_POLL_MS)
            started = self.health.broker.now()
            try:
                polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=limit - count)
            except ClientError as exc:
                log.warning("poll failed: %s", exc)
                self.health.broker.report("poll failed", started, exc)
                self._stop.wait(1.0)
                polled = {}
            count -= self.membership.after_poll(held, polled)
            for tp, recs in polled.items():
                held.setdefault(tp, []).extend(recs)
                count += len(recs)
            if count >= limit or time.monotonic() >= deadline or self._stop.is_set():
                return held
            self.health.beat()

    def _process(self, held: Held) -> None:
        """Decode, score, emit and commit one batch (a batch that lost partitions meanwhile
        is redone without them)."""
        t0 = time.perf_counter()
        assert self._spec is not None
        records = [r for recs in held.values() for r in recs]
        decoded = decode_batch([r.value for r in records], self._spec)
        self.phases.mark("decode")
        outputs = self._scored_outputs(held, records, decoded)
        if outputs is None:
            return
        # a partition lost outside poll (expired membership) must not be emitted for any more:
        # rare, so simply redo the batch without it
        revoked = self.membership.tracker.take()
        if revoked & held.keys():
            log.warning("partitions revoked mid-batch; their records are left to the new owner")
            if self.scoring is not None:
                self.scoring.forget(set(held))  # pushed already: rebuilt before the redo
            kept = dict(held)
            self.membership.release(revoked, kept, {})
            if kept:
                self._process(kept)
            return
        offsets: Offsets = {tp: recs[-1].offset + 1 for tp, recs in held.items()}
        assert self.delivery is not None
        delivered = self.delivery.deliver(outputs.records, offsets)
        self.phases.mark("deliver")
        if not delivered:
            self._rewind(held)  # aborted: read the batch again
            return
        self.on_delivered(outputs.records)
        self._account(records, outputs, t0)
        self.phases.mark("account")
        self._positions.update(offsets)

    def _scored_outputs(
        self, held: Held, records: list[InRecord], decoded: DecodedBatch
    ) -> BatchOutputs | None:
        """The batch's outputs; None when a partition's state could not be restored (the batch
        is read again after a pause)."""
        assert self.scoring is not None and self._spec is not None
        try:
            return self.scoring.batch_outputs(
                held, records, decoded, self._spec, self._output_settings()
            )
        except ClientError as exc:
            log.warning("cannot restore the partition state (%s): reading the batch again", exc)
            self._rewind(held)
            return None

    def _output_settings(self) -> SeriesOutputSettings:
        s, bundle = self.s, self._bundle
        assert bundle is not None
        now = iso_utc(time.time())
        return SeriesOutputSettings(bundle.version, bundle.feature_names, s.top_features, s.output_topic, s.dlq_topic, now)  # fmt: skip

    def _account(self, records: list[InRecord], outputs: BatchOutputs, t0: float) -> None:
        """A delivered batch's metrics and recent-window statistics."""
        now = time.time()
        n = len(records)
        n_invalid = len(outputs.errors)
        n_anom = outputs.n_anomalies
        m = self.metrics
        m.records.labels("anomaly").inc(n_anom)
        m.records.labels("normal").inc(n - n_anom - n_invalid - outputs.n_warming)
        if outputs.n_warming:
            m.records.labels("warming").inc(outputs.n_warming)
        if outputs.incidents is not None and self.incidents is not None:
            self.incidents.count(outputs.incidents)
        if n_invalid:
            m.records.labels("invalid").inc(n_invalid)
            for kind, k in collections.Counter(e.kind for _, e in outputs.errors).items():
                m.dead_letters.labels(kind).inc(k)
        m.events.inc(n_anom)
        m.reconstruction_error.observe_many(outputs.finite_scores)
        ts = np.fromiter((r.timestamp for r in records), dtype=np.float64, count=n)
        m.end_to_end_latency.observe_many(np.maximum(now - ts / 1000.0, 0.0))
        m.batch_size.observe(n)
        m.batch_duration.observe(time.perf_counter() - t0)
        m.last_batch_timestamp.set(now)
        self.window.add(now, outputs.finite_scores.size, n_anom, outputs.finite_scores)
        self._update_window_gauges()

    def _rewind(self, held: Held) -> None:
        """After an aborted transaction: read the batch again (same records, same results)."""
        assert self.consumer is not None
        if self.scoring is not None:
            self.scoring.forget(set(held))  # pushed already: rebuilt when read again
        assigned = self.consumer.assignment()
        for tp, recs in held.items():
            if tp in assigned:
                self.consumer.seek(tp, recs[0].offset)
        self._stop.wait(0.5)

    # -------------------------------------------------------------------------------- periodic
    def _periodic(self) -> None:
        assert self.consumer is not None
        now = time.monotonic()
        if now >= self._next_stats:
            self._next_stats = now + 1.0
            self._update_window_gauges()
            self._close_idle_incidents()
        self.health.broker.coordinator(self.consumer.coordinator_known())
        if now >= self._next_probe:
            self._next_probe = now + PROBE_INTERVAL_S
            self._probe()
        if now >= self._next_lag:
            self._next_lag = now + self.s.lag_refresh_s
            self._refresh_lag()
        n_assigned = len(self.consumer.assignment())
        self.health.partitions = n_assigned
        self.metrics.partitions_assigned.set(n_assigned)
        self.membership.check(n_assigned)

    def _close_idle_incidents(self) -> None:
        """Incidents of partitions with nothing new close by the wall clock, sent like a batch
        that commits the partitions' offsets again (an aborted one: rebuilt by replay).
        Partitions not polled from since their assignment are restored first, so theirs can."""
        if self.incidents is None or self.delivery is None or self.consumer is None:
            return
        if self.scoring is not None and self._spec is not None:
            restore = functools.partial(self.scoring.restore_missing, spec=self._spec, out=self._output_settings())  # fmt: skip
            self._positions = self.incidents.sweep(
                self.consumer, restore, self.delivery.deliver, self._positions,
                repositioning=self.membership.repositioning,
            )  # fmt: skip

    def _update_window_gauges(self) -> None:
        self.window.expire(time.time())
        n, k, hist = self.window.totals()
        self.metrics.anomaly_ratio.set(k / n if n else 0.0)
        if hist is not None and self._calibration_counts is not None and hist.sum() > 0:
            self.metrics.error_drift.set(population_stability_index(self._calibration_counts, hist))

    def _probe(self) -> None:
        """The broker round trip every `PROBE_INTERVAL_S` (end offsets of the assigned
        partitions, kept for the lag): what tells an idle worker the broker went or came back."""
        assert self.consumer is not None
        probe = sorted(self.consumer.assignment()) or [Partition(self.s.input_topic, 0)]
        started = self.health.broker.now()
        try:
            self._ends = self.consumer.end_offsets(probe, timeout_ms=PROBE_TIMEOUT_MS)
        except ClientError as exc:
            self._ends = {}
            self.health.broker.report("broker not answering", started, exc)
            return
        self.health.broker.answered(started)

    def _refresh_lag(self) -> None:
        """Lag per assigned partition, from the latest probe's end offsets."""
        assert self.consumer is not None
        assigned = set(self.consumer.assignment())
        self.health.partitions = len(assigned)
        self.metrics.partitions_assigned.set(len(assigned))
        ends = self._ends
        for tp in self._lag_labels - assigned:
            self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        self._lag_labels &= assigned
        for tp in assigned:
            end = ends.get(tp)
            pos = self._positions.get(tp)
            if pos is None:
                try:
                    pos = self.consumer.position(tp, timeout_ms=500)
                except ClientError:
                    pos = None
            if end is None or pos is None:
                continue
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, end - pos))
            self._lag_labels.add(tp)
