"""The worker loop: poll -> decode -> score -> emit -> commit, one micro-batch at a time.

Each batch is finished (events and dead letters acknowledged, offsets committed) before the next
poll. Rebalances only happen inside ``poll``, so no batch is ever half-done across one; records
held from earlier polls of a batch whose partition was revoked meanwhile are dropped unprocessed
(they are uncommitted: the partition's new owner reads them). A new model version is swapped in
between batches, so every batch is scored by one version, named in its events.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from kafka import errors as kerr
from kafka.structs import MemberState, OffsetAndMetadata, TopicPartition

from anomaly_contract.artifact import ModelBundle
from worker import decode as dec
from worker.decode import DecodeError, FeatureSpec, decode_batch
from worker.events import anomaly_event, dead_letter_headers, iso_utc
from worker.http import HealthState
from worker.kafka_io import (
    AtLeastOnceDelivery,
    OutRecord,
    ProducerFenced,
    RevocationTracker,
    TransactionalDelivery,
    WorkerStopped,
    make_consumer,
    make_producer,
    restart_orphaned_join,
)
from worker.metrics import RecentWindow, WorkerMetrics, population_stability_index
from worker.reload import ModelWatcher
from worker.scoring import score_batch, top_features
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
# poll timeout while no partition is assigned (rebalance in progress or idle)
REBALANCE_POLL_MS = 1000
# with no partition for this long although the topic has some, rejoin (a bounded number of times)
UNASSIGNED_REJOIN_S = 10.0
# reading a partition's committed offset after it came back in a rebalance
COMMITTED_TIMEOUT_MS = 5000
# a rebalance begun (partitions revoked) but not ended for this long is taken as stuck
REBALANCE_STUCK_S = 10.0


class Worker:
    """Wires settings, Kafka, the model watcher, metrics and health into the running loop."""

    def __init__(
        self,
        settings: WorkerSettings,
        metrics: WorkerMetrics,
        health: HealthState,
        watcher: ModelWatcher,
        consumer_factory: Callable[[WorkerSettings], Any] = make_consumer,
        producer_factory: Callable[[WorkerSettings], Any] = make_producer,
    ) -> None:
        self.s = settings
        self.metrics = metrics
        self.health = health
        self.watcher = watcher
        self._consumer_factory = consumer_factory
        self._producer_factory = producer_factory
        self._stop = threading.Event()
        self.tracker = RevocationTracker(metrics)
        self.window = RecentWindow(settings.stats_window_s)
        self._bundle: ModelBundle | None = None
        self._spec: FeatureSpec | None = None
        self._calibration_counts: np.ndarray | None = None
        self._positions: dict[TopicPartition, int] = {}
        # partitions revoked and not yet re-positioned: lowest offset dropped (or None)
        self._reseek: dict[TopicPartition, int | None] = {}
        self._lag_labels: set[TopicPartition] = set()
        self._next_lag = 0.0
        self._next_stats = 0.0
        self._unassigned_since = time.monotonic()
        self._rejoins_left = 3
        self._had_partitions = False
        self.consumer: Any = None
        self.delivery: AtLeastOnceDelivery | TransactionalDelivery | None = None

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
                self.health.beat()
                self._maybe_swap()
                held = self._collect()
                if held:
                    self._process(held)
                else:
                    assert self.delivery is not None
                    self.delivery.tick()  # commit the last batch before a pause
                self._periodic()
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

    # ------------------------------------------------------------------------------ connecting
    def _connect(self) -> bool:
        """Create the consumer and the producer, retrying while the broker is unreachable."""
        attempt = 0
        while not self._stop.is_set():
            try:
                if self.consumer is None:
                    consumer = self._consumer_factory(self.s)
                    self._await_topic_metadata(consumer)
                    consumer.subscribe([self.s.input_topic], listener=self.tracker)
                    self.consumer = consumer
                    self._unassigned_since = time.monotonic()
                stop = self._stop.is_set
                if self.s.delivery == "exactly_once":
                    self.delivery = TransactionalDelivery(
                        lambda: self._producer_factory(self.s),
                        self.consumer,
                        self.metrics,
                        self.health,
                        stop,
                    )
                else:
                    self.delivery = AtLeastOnceDelivery(
                        self._producer_factory(self.s),
                        self.consumer,
                        self.metrics,
                        self.health,
                        stop,
                        pipeline=self.s.pipeline,
                    )
                    self.tracker.before_revoke = self.delivery.settle_before_revoke
                self.health.broker_reachable = True
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
            except ProducerFenced:
                raise
            except kerr.KafkaError as exc:
                self.health.broker_reachable = False
                self.metrics.broker_reachable.set(0)
                delay = min(10.0, 0.5 * 2**attempt)
                log.warning("cannot reach Kafka (%s), retrying in %.1fs", exc, delay)
                attempt += 1
                self.health.beat()
                self._stop.wait(delay)
        return False

    def _await_topic_metadata(self, consumer: Any, timeout_s: float = 10.0) -> None:
        """Know the input topic's partitions before joining the group: a join without them
        leaves kafka-python with an empty assignment until the next metadata refresh."""
        deadline = time.monotonic() + timeout_s
        while not self._stop.is_set():
            consumer.topics()  # forces a metadata request
            if consumer.partitions_for_topic(self.s.input_topic):
                return
            if time.monotonic() > deadline:
                log.warning(
                    "input topic %s has no partitions yet: waiting for it to be created",
                    self.s.input_topic,
                )
                return
            self.health.beat()
            time.sleep(0.5)

    def _check_assignment(self, n_assigned: int) -> None:
        """Rejoin when we hold no partitions for long although the topic has some and either
        the membership is not stable (a rejoin that never completed) or we never had any (a
        first join that raced the topic's metadata). A stable idle member of a group with more
        members than partitions is left alone."""
        now = time.monotonic()
        if n_assigned:
            self._unassigned_since = now
            self._rejoins_left = 0
            self._had_partitions = True
            return
        if self._had_partitions:
            # Lost every partition: kafka-python 3.0 can end a rejoin without re-awaiting the
            # SyncGroup (it then believes it is stable with nothing assigned); allow a few
            # rejoins again, bounded so an idle extra replica does not cause rebalance storms.
            self._had_partitions = False
            self._rejoins_left = 3
            self._unassigned_since = now
        if now - self._unassigned_since < max(
            UNASSIGNED_REJOIN_S, self.s.session_timeout_ms / 1000
        ):
            return
        self._unassigned_since = now
        state = getattr(self.consumer.group_metadata(), "state", None)
        if self._rejoins_left <= 0 and state == MemberState.STABLE:
            return
        self.consumer.topics()
        if self.consumer.partitions_for_topic(self.s.input_topic):
            self._rejoins_left -= 1
            log.warning(
                "no partitions assigned although %s has some (membership %s): rejoining",
                self.s.input_topic,
                state,
            )
            self._rejoin()

    def _check_rebalance(self) -> None:
        """Rejoin when a rebalance began long ago and never ended.

        kafka-python 3.0.12: when a poll gives up on a join that the group leader started for
        a metadata change, the join completes in the background but its assignment is never
        applied (the coordinator no longer thinks it needs to rejoin, so nothing awaits the
        result). The member then keeps its partitions marked as being revoked: assigned, never
        fetched, while the group believes it owns them. Leaving and joining again ends that."""
        since = self.tracker.rebalancing_since
        if since is None:
            return
        if time.monotonic() - since < max(REBALANCE_STUCK_S, self.s.session_timeout_ms / 1000):
            return
        log.warning(
            "a rebalance began %.0fs ago and never completed: rejoining the group",
            time.monotonic() - since,
        )
        self._rejoin()

    def _rejoin(self) -> None:
        """Leave the group and join again (settling the batches in flight first)."""
        assert self.delivery is not None
        self.delivery.drain()  # unsubscribing leaves the group without calling the listener
        self.delivery.forget(set(self.consumer.assignment()))
        self.consumer.unsubscribe()
        self._reseek.clear()  # a new subscription starts every partition at its committed offset
        self._positions.clear()
        self.tracker.rebalancing_since = time.monotonic()
        self.consumer.subscribe([self.s.input_topic], listener=self.tracker)

    def _close(self) -> None:
        self.health.stopping = True
        self.metrics.ready.set(0)
        self.watcher.stop()
        if self.delivery is not None and self.consumer is not None:
            try:
                self.delivery.commit_final()
            except Exception as exc:  # noqa: BLE001 - closing is best effort
                log.warning("final commit: %s", exc)
        if self.consumer is not None:
            try:
                self.consumer.close(autocommit=False, timeout_ms=3000)
            except Exception as exc:  # noqa: BLE001 - closing is best effort
                log.warning("closing the consumer: %s", exc)
        if self.delivery is not None:
            try:
                self.delivery.close(timeout_s=3.0)
            except Exception as exc:  # noqa: BLE001
                log.warning("closing the producer: %s", exc)
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
        self.window.set_edges(m.calibration.histogram_edges)
        self._calibration_counts = np.asarray(m.calibration.histogram_counts, dtype=np.float64)
        self.metrics.set_model(m.version, m.threshold, m.expected_anomaly_ratio)
        self.health.model_version = m.version
        log.info(
            "scoring with model %s",
            m.version,
            extra={"version": m.version, "threshold": m.threshold, "features": m.n_features},
        )

    def _maybe_swap(self) -> None:
        bundle = self.watcher.take_pending()
        if bundle is not None:
            old = self._bundle.version if self._bundle else None
            self._install(bundle)
            log.info("model swapped %s -> %s", old, bundle.version)

    # ----------------------------------------------------------------------------------- batch
    def _collect(self) -> dict[TopicPartition, list[Any]]:
        """Poll until the batch is full or its wait is over; drop records of revoked partitions."""
        held: dict[TopicPartition, list[Any]] = {}
        count = 0
        limit = self.s.batch_max_records
        deadline = time.monotonic() + self.s.batch_max_wait_ms / 1000.0
        while True:
            timeout_ms = max(0, int((deadline - time.monotonic()) * 1000))
            if not self.consumer.assignment() or self.tracker.rebalancing_since is not None:
                # Let poll run long enough to finish a JoinGroup/SyncGroup round: kafka-python
                # 3.0 can leave a join that a short poll gave up on unfinished for good (the
                # partitions stay assigned but are never fetched again; see _check_rebalance).
                timeout_ms = max(timeout_ms, REBALANCE_POLL_MS)
            try:
                polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=limit - count)
            except kerr.KafkaError as exc:
                log.warning("poll failed: %s", exc)
                self.health.broker_reachable = False
                self._stop.wait(1.0)
                polled = {}
            revoked = self.tracker.take()
            if revoked:
                count -= self._release(revoked, held, polled)
            if self.tracker.rebalancing_since is not None and restart_orphaned_join(self.consumer):
                log.warning("a join finished after poll gave up on it was never applied: rejoining")
            if self._reseek:
                self._reposition(polled)
            for tp, recs in polled.items():
                held.setdefault(tp, []).extend(recs)
                count += len(recs)
            if count >= limit or time.monotonic() >= deadline or self._stop.is_set():
                return held
            self.health.beat()

    def _release(
        self,
        revoked: set[TopicPartition],
        held: dict[TopicPartition, list[Any]],
        polled: dict[TopicPartition, list[Any]],
    ) -> int:
        """Drop unprocessed records of revoked partitions; returns how many were held.

        They are uncommitted, so whoever owns the partition next reads them again from the
        committed offset. When that owner is this consumer (revoked and assigned back in one
        rebalance), kafka-python keeps its old fetch position, past the dropped records (and
        past a batch the rebalance could not commit): such partitions are sent back to the
        committed offset once the rebalance is over (`_reposition`).
        """
        n_held = 0
        for tp in revoked:
            dropped = held.pop(tp, None) or []
            n_held += len(dropped)
            fresh = polled.pop(tp, None) or []
            lowest = self._reseek.get(tp)
            if dropped or fresh:
                self.metrics.dropped_revoked.inc(len(dropped) + len(fresh))
                first = min(r.offset for r in (*dropped, *fresh))
                lowest = first if lowest is None else min(lowest, first)
            self._reseek[tp] = lowest
            self._positions.pop(tp, None)
        if self.delivery is not None:
            self.delivery.forget(revoked)
        return n_held

    def _reposition(self, polled: dict[TopicPartition, list[Any]]) -> None:
        """Once a rebalance is over, resume the partitions that came back where their committed
        offset says, as a fresh owner would. Records fetched before that, from the old
        position, are dropped (the seek reads them again)."""
        for tp in self._reseek.keys() & polled.keys():
            self.metrics.dropped_revoked.inc(len(polled.pop(tp)))
        if self.tracker.rebalancing_since is not None:
            return
        assigned = self.consumer.assignment()
        for tp, lowest in self._reseek.items():
            if tp in assigned:
                self._seek_committed(tp, lowest)
        self._reseek.clear()

    def _seek_committed(self, tp: TopicPartition, lowest_dropped: int | None) -> None:
        """Resume ``tp`` where its committed offset says, as a fresh owner would."""
        try:
            committed = self.consumer.committed(tp, timeout_ms=COMMITTED_TIMEOUT_MS)
        except (kerr.KafkaError, AssertionError) as exc:
            # cannot ask the group: the dropped records are certainly uncommitted, so at least
            # go back to them
            log.warning("cannot read the committed offset of %s (%s)", tp, exc)
            if lowest_dropped is not None:
                self.consumer.seek(tp, lowest_dropped)
            return
        if committed is not None:
            self.consumer.seek(tp, committed)
        elif self.s.auto_offset_reset == "earliest":
            self.consumer.seek_to_beginning(tp)
        elif lowest_dropped is not None:
            self.consumer.seek(tp, lowest_dropped)

    def _process(self, held: dict[TopicPartition, list[Any]]) -> None:
        t0 = time.perf_counter()
        bundle, spec = self._bundle, self._spec
        assert bundle is not None and spec is not None
        records = [r for recs in held.values() for r in recs]
        decoded = decode_batch([r.value for r in records], spec)
        errors: list[tuple[int, DecodeError]] = decoded.errors
        n_valid = decoded.x.shape[0]
        anomaly_rows: np.ndarray = np.zeros(0, dtype=np.intp)
        finite_scores = np.zeros(0)
        if n_valid:
            scored = score_batch(bundle, decoded.x)
            if not scored.finite.all():
                bad = np.flatnonzero(~scored.finite)
                errors = sorted(
                    errors
                    + [
                        (decoded.valid_index[j], DecodeError(dec.NON_FINITE_SCORE, "the reconstruction error overflowed"))
                        for j in bad
                    ],
                    key=lambda e: e[0],
                )  # fmt: skip
            finite_scores = scored.scores[scored.finite]
            anomaly_rows = np.flatnonzero(scored.is_anomaly)
        detected_at = iso_utc(time.time())
        version = bundle.version
        outs: list[tuple[TopicPartition, OutRecord]] = []
        if anomaly_rows.size:
            tops = top_features(
                scored.feature_errors[anomaly_rows], bundle.feature_names, self.s.top_features
            )
            threshold = scored.threshold
            for j, top in zip(anomaly_rows.tolist(), tops, strict=True):
                r = records[decoded.valid_index[j]]
                value = anomaly_event(
                    record_id=decoded.ids[j],
                    score=float(scored.scores[j]),
                    threshold=threshold,
                    model_version=version,
                    topic=r.topic,
                    partition=r.partition,
                    offset=r.offset,
                    timestamp_ms=r.timestamp,
                    top_features=top,
                    detected_at=detected_at,
                )
                outs.append(
                    (
                        TopicPartition(r.topic, r.partition),
                        OutRecord(self.s.output_topic, r.key, value, []),
                    )
                )
        for pos, err in errors:
            r = records[pos]
            headers = dead_letter_headers(
                list(r.headers or []),
                error_class=err.kind,
                message=err.message,
                topic=r.topic,
                partition=r.partition,
                offset=r.offset,
                timestamp_ms=r.timestamp,
                model_version=version,
                failed_at=detected_at,
            )
            value = r.value if (r.value is not None or r.key is not None) else b""
            outs.append(
                (
                    TopicPartition(r.topic, r.partition),
                    OutRecord(self.s.dlq_topic, r.key, value, headers),
                )
            )

        # a partition lost outside poll (expired membership) must not be emitted for any more:
        # rare, so simply redo the batch without it
        revoked = self.tracker.take()
        if revoked & held.keys():
            log.warning("partitions revoked mid-batch; their records are left to the new owner")
            held = dict(held)
            self._release(revoked, held, {})
            kept = held
            if kept:
                self._process(kept)
            return
        offsets = {tp: OffsetAndMetadata(recs[-1].offset + 1, "", -1) for tp, recs in held.items()}
        assert self.delivery is not None
        ok = self.delivery.deliver([o for _, o in outs], offsets)
        if not ok and self.s.delivery == "exactly_once":
            self._rewind(held)
            return
        now = time.time()
        n = len(records)
        n_invalid = len(errors)
        n_anom = int(anomaly_rows.size)
        m = self.metrics
        m.records.labels("anomaly").inc(n_anom)
        m.records.labels("normal").inc(n - n_anom - n_invalid)
        if n_invalid:
            m.records.labels("invalid").inc(n_invalid)
            for kind, k in collections.Counter(e.kind for _, e in errors).items():
                m.dead_letters.labels(kind).inc(k)
        m.events.inc(n_anom)
        m.reconstruction_error.observe_many(finite_scores)
        ts = np.fromiter((r.timestamp for r in records), dtype=np.float64, count=n)
        m.end_to_end_latency.observe_many(np.maximum(now - ts / 1000.0, 0.0))
        m.batch_size.observe(n)
        m.batch_duration.observe(time.perf_counter() - t0)
        m.last_batch_timestamp.set(now)
        self.window.add(now, finite_scores.size, n_anom, finite_scores)
        self._update_window_gauges()
        for tp, om in offsets.items():
            self._positions[tp] = om.offset

    def _rewind(self, held: dict[TopicPartition, list[Any]]) -> None:
        """After an aborted transaction: read the batch again (same records, same results)."""
        assigned = self.consumer.assignment()
        for tp, recs in held.items():
            if tp in assigned:
                self.consumer.seek(tp, recs[0].offset)
        self._stop.wait(0.5)

    # -------------------------------------------------------------------------------- periodic
    def _periodic(self) -> None:
        now = time.monotonic()
        if now >= self._next_stats:
            self._next_stats = now + 1.0
            self._update_window_gauges()
        if now >= self._next_lag:
            self._next_lag = now + self.s.lag_refresh_s
            self._refresh_lag()
        n_assigned = len(self.consumer.assignment())
        self.health.partitions = n_assigned
        self.metrics.partitions_assigned.set(n_assigned)
        self._check_assignment(n_assigned)
        self._check_rebalance()
        ready, _ = self.health.ready()
        self.metrics.ready.set(1 if ready else 0)

    def _update_window_gauges(self) -> None:
        self.window.expire(time.time())
        n, k, hist = self.window.totals()
        self.metrics.anomaly_ratio.set(k / n if n else 0.0)
        if hist is not None and self._calibration_counts is not None and hist.sum() > 0:
            self.metrics.error_drift.set(population_stability_index(self._calibration_counts, hist))

    def _refresh_lag(self) -> None:
        """Lag per assigned partition, and a broker round trip that tells /readyz it answers."""
        assigned = set(self.consumer.assignment())
        self.health.partitions = len(assigned)
        self.metrics.partitions_assigned.set(len(assigned))
        probe = sorted(assigned) or [TopicPartition(self.s.input_topic, 0)]
        try:
            ends = self.consumer.end_offsets(probe, timeout_ms=2000)
            self.health.broker_reachable = True
        except (kerr.KafkaError, AssertionError) as exc:
            if self.health.broker_reachable:
                log.warning("broker not answering: %s", exc)
            self.health.broker_reachable = False
            ends = {}
        self.metrics.broker_reachable.set(1 if self.health.broker_reachable else 0)
        for tp in self._lag_labels - assigned:
            self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        self._lag_labels &= assigned
        for tp in assigned:
            end = ends.get(tp)
            pos = self._positions.get(tp)
            if pos is None:
                try:
                    pos = self.consumer.position(tp, timeout_ms=500)
                except (kerr.KafkaError, AssertionError):
                    pos = None
            if end is None or pos is None:
                continue
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, end - pos))
            self._lag_labels.add(tp)
