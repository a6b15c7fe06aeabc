"""The worker's Prometheus metrics, built once on a registry passed in.

Per-record histograms (reconstruction error, end-to-end latency) are fed a whole batch at once
through `BulkHistogram` (numpy bucketing): ``Histogram.observe`` per record would cost more than
the model itself at tens of thousands of records per second.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from worker.decode import ERROR_KINDS

# Squared errors in scaled space span decades; ~3 buckets per decade from 1e-5 to 1e3.
ERROR_BUCKETS = tuple(float(f"{b:.3g}") for b in np.geomspace(1e-5, 1e3, 25))
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 0.75,
                   1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0)  # fmt: skip
BATCH_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                          10.0)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
RELOAD_RESULTS = ("success", "failed", "refused")
# Where a batch's time goes (`anomaly_worker_batch_phase_seconds_total`): poll (collecting the
# batch, including waiting for records), decode, score, outputs (events and dead letters built),
# deliver (send, acknowledgement wait, commit), account (metrics of the batch).
BATCH_PHASES = ("poll", "decode", "score", "outputs", "deliver", "account")


class BulkHistogram(Collector):
    """A histogram observed a numpy array at a time; exposed like a prometheus_client Histogram."""

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self._name = name
        self._doc = documentation
        self._bounds = np.asarray(sorted(buckets), dtype=np.float64)
        self._counts = np.zeros(len(self._bounds) + 1, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64).ravel()
        if values.size == 0:
            return
        # bucket i counts values <= bounds[i]; the last slot is +Inf
        counts = np.bincount(
            np.searchsorted(self._bounds, values, side="left"), minlength=len(self._counts)
        )
        total = float(values.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def observe(self, value: float) -> None:
        self.observe_many(np.asarray([value]))

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self._name, self._doc)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            cum = np.cumsum(self._counts)
            total = self._sum
        buckets = [
            (floatToGoString(b), int(c)) for b, c in zip(self._bounds, cum[:-1], strict=True)
        ]
        buckets.append(("+Inf", int(cum[-1])))
        yield HistogramMetricFamily(self._name, self._doc, buckets=buckets, sum_value=total)


def population_stability_index(
    expected: np.ndarray, actual: np.ndarray, eps: float = 1e-4
) -> float:
    """PSI between two histograms on the same bins (0: same; > 0.25 is commonly 'drifted')."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.sum() <= 0 or a.sum() <= 0:
        return 0.0
    e = np.clip(e / e.sum(), eps, None)
    a = np.clip(a / a.sum(), eps, None)
    return float(np.sum((a - e) * np.log(a / e)))


def clipped_histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``np.histogram(np.clip(values, edges[0], edges[-1]), edges)[0]`` as int64, by one sorted
    search (``np.histogram`` sorts the values for uneven bins: ~5x slower on a batch)."""
    bins = np.searchsorted(edges, values, side="right") - 1  # bin i holds [edges[i], edges[i+1])
    # below the first edge: the first bin; the last edge and beyond: the last bin
    np.clip(bins, 0, len(edges) - 2, out=bins)
    return np.bincount(bins, minlength=len(edges) - 1).astype(np.int64, copy=False)


class RecentWindow:
    """Counts of recent records (anomalies, error histogram) over a sliding time window.

    One entry per batch with running totals, so an update costs O(bins), not O(records).
    """

    def __init__(self, window_s: float, edges: Sequence[float] | None = None) -> None:
        self.window_s = window_s
        self._entries: deque[tuple[float, int, int, np.ndarray | None]] = deque()
        self.set_edges(edges)

    def set_edges(self, edges: Sequence[float] | None) -> None:
        """New calibration bins (a new model): the old histogram no longer compares, drop it."""
        self._edges = None if edges is None else np.asarray(edges, dtype=np.float64)
        self._entries.clear()
        self._n = 0
        self._k = 0
        self._hist = None if self._edges is None else np.zeros(len(self._edges) - 1, np.int64)

    def add(self, now: float, n: int, n_anomalies: int, errors: np.ndarray) -> None:
        hist = None
        if self._edges is not None and errors.size:
            hist = clipped_histogram(errors, self._edges)
            self._hist += hist  # type: ignore[operator]
        self._entries.append((now, n, n_anomalies, hist))
        self._n += n
        self._k += n_anomalies
        self.expire(now)

    def expire(self, now: float) -> None:
        while self._entries and self._entries[0][0] < now - self.window_s:
            _, n, k, hist = self._entries.popleft()
            self._n -= n
            self._k -= k
            if hist is not None:
                self._hist -= hist  # type: ignore[operator]

    def totals(self) -> tuple[int, int, np.ndarray | None]:
        """(records, anomalies, error histogram on the calibration bins) over the window."""
        return self._n, self._k, None if self._hist is None else self._hist.copy()


class PhaseClock:
    """Splits the loop's time into `BATCH_PHASES`: `mark(phase)` adds the time since the last
    mark (or `start`) to that phase's counter. Two clock reads and a counter add per phase."""

    def __init__(self, counter: Counter) -> None:
        self._counters = {phase: counter.labels(phase) for phase in BATCH_PHASES}
        self._last = time.perf_counter()

    def start(self) -> None:
        self._last = time.perf_counter()

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self._counters[phase].inc(now - self._last)
        self._last = now


RESTORE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class StateMetrics:
    """The series state's metrics (windowed models): keys held, evictions, restores."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.keys = Gauge(
            "anomaly_worker_series_keys", "Series keys held (all assigned partitions).", registry=r
        )
        self.evicted = Counter(
            "anomaly_worker_series_evicted",
            "Series keys evicted, least recently seen first, beyond ANOMALY_MAX_KEYS.",
            registry=r,
        )
        self.restores = Counter(
            "anomaly_worker_state_restores",
            "Partition state restores (re-reading the input partition on assignment).",
            registry=r,
        )
        self.restore_seconds = Histogram(
            "anomaly_worker_state_restore_seconds",
            "Time to restore one partition's series state.",
            buckets=RESTORE_BUCKETS,
            registry=r,
        )
        self.restore_records = Counter(
            "anomaly_worker_state_restore_records",
            "Input records re-read to restore series state (not scored).",
            registry=r,
        )
        self.keys_cut = Counter(
            "anomaly_worker_state_keys_cut",
            "Series keys whose window began before ANOMALY_STATE_REPLAY_MAX_RECORDS records"
            " back: a restore could not rebuild them and they warm up again.",
            registry=r,
        )


INCIDENT_STATUSES = ("opened", "closed")
# Why a feedback record was skipped (`worker.feedback`).
FEEDBACK_REJECTIONS = ("not_json", "no_id", "two_ids", "bad_verdict", "unknown_id")


class IncidentMetrics:
    """Incidents (``ANOMALY_INCIDENT_TOPIC``): how many are open, how many opened and closed."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.open = Gauge(
            "anomaly_worker_incidents_open",
            "Incidents open on this worker's partitions (opened, not yet closed).",
            registry=registry,
        )
        self.total = Counter(
            "anomaly_worker_incidents",
            "Incident records written, by status (opened or closed; updates not counted).",
            ["status"],
            registry=registry,
        )
        for status in INCIDENT_STATUSES:
            self.total.labels(status)


class FeedbackMetrics:
    """Analyst feedback (``ANOMALY_FEEDBACK_TOPIC``): verdicts by kind and model version, the
    records skipped, and the precision of the recent verdicts."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.verdicts = Counter(
            "anomaly_worker_feedback_verdicts",
            "Verdicts on events and incidents this worker emitted.",
            ["verdict", "kind", "model_version"],
            registry=registry,
        )
        self.invalid = Counter(
            "anomaly_worker_feedback_invalid",
            "Feedback records skipped, by reason (not_json, no_id, two_ids, bad_verdict,"
            " unknown_id).",
            ["reason"],
            registry=registry,
        )
        for reason in FEEDBACK_REJECTIONS:
            self.invalid.labels(reason)
        self.precision = Gauge(
            "anomaly_worker_feedback_precision",
            "Share of confirmed among the verdicts received over ANOMALY_FEEDBACK_WINDOW_S"
            " (NaN while there are none).",
            registry=registry,
        )


class WorkerMetrics:
    """Every metric the worker exports (names and labels are an interface, see PRODUCT.md)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """One declaration per metric: long, but a flat list with no logic to split."""
        self.registry = registry
        r = registry
        self.records = Counter(
            "anomaly_worker_records", "Records consumed, by outcome.", ["outcome"], registry=r
        )
        for outcome in ("normal", "anomaly", "invalid", "warming"):
            self.records.labels(outcome)
        self.dead_letters = Counter(
            "anomaly_worker_dead_letters",
            "Records sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        for kind in ERROR_KINDS:
            self.dead_letters.labels(kind)
        self.events = Counter(
            "anomaly_worker_events", "Anomaly events written to the output topic.", registry=r
        )
        self.reconstruction_error = BulkHistogram(
            "anomaly_worker_reconstruction_error",
            "Reconstruction error (score) of every scored record.",
            ERROR_BUCKETS,
            r,
        )
        self.end_to_end_latency = BulkHistogram(
            "anomaly_worker_end_to_end_latency_seconds",
            "Record timestamp to its batch's outputs acknowledged, per record.",
            LATENCY_BUCKETS,
            r,
        )
        self.anomaly_ratio = Gauge(
            "anomaly_worker_anomaly_ratio",
            "Share of anomalies among records scored over the recent window.",
            registry=r,
        )
        self.expected_anomaly_ratio = Gauge(
            "anomaly_worker_expected_anomaly_ratio",
            "Share of normal records above the threshold implied by its percentile.",
            registry=r,
        )
        self.error_drift = Gauge(
            "anomaly_worker_error_drift",
            "Population stability index of recent errors vs the model's calibration errors.",
            registry=r,
        )
        self.batch_duration = Histogram(
            "anomaly_worker_batch_duration_seconds",
            "Time to decode, score, emit and commit one batch.",
            buckets=BATCH_DURATION_BUCKETS,
            registry=r,
        )
        self.batch_phase_seconds = Counter(
            "anomaly_worker_batch_phase_seconds",
            "Loop time spent per batch phase (poll includes waiting for records).",
            ["phase"],
            registry=r,
        )
        for phase in BATCH_PHASES:
            self.batch_phase_seconds.labels(phase)
        self.batch_size = Histogram(
            "anomaly_worker_batch_size",
            "Records per batch.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "anomaly_worker_consumer_lag_records",
            "Records behind the end of each assigned input partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.model_info = Gauge(
            "anomaly_worker_model_info",
            "The model version in use (value 1).",
            ["version"],
            registry=r,
        )
        self.threshold = Gauge(
            "anomaly_worker_threshold", "Anomaly threshold of the model in use.", registry=r
        )
        self.model_reloads = Counter(
            "anomaly_worker_model_reloads",
            "Model (re)load attempts, by result.",
            ["result"],
            registry=r,
        )
        for result in RELOAD_RESULTS:
            self.model_reloads.labels(result)
        self.up = Gauge("anomaly_worker_up", "1 while the worker process runs.", registry=r)
        self.ready = Gauge(
            "anomaly_worker_ready",
            "1 when a model is loaded, partitions are assigned and the broker answers.",
            registry=r,
        )
        self.partitions_assigned = Gauge(
            "anomaly_worker_partitions_assigned", "Input partitions assigned.", registry=r
        )
        self.broker_reachable = Gauge(
            "anomaly_worker_broker_reachable",
            "1 when the last broker round trip worked.",
            registry=r,
        )
        self.produce_errors = Counter(
            "anomaly_worker_produce_errors",
            "Event or dead-letter sends that failed (retried).",
            registry=r,
        )
        self.commit_errors = Counter(
            "anomaly_worker_commit_errors",
            "Offset commits or transactions that failed.",
            registry=r,
        )
        self.transactions = Counter(
            "anomaly_worker_transactions",
            "Transactions (exactly_once), by result.",
            ["result"],
            registry=r,
        )
        for result in ("committed", "aborted"):
            self.transactions.labels(result)
        self.rebalances = Counter(
            "anomaly_worker_rebalances", "Partition revocations seen by this worker.", registry=r
        )
        self.dropped_revoked = Counter(
            "anomaly_worker_dropped_revoked_records",
            "Fetched records dropped unprocessed because their partition was revoked"
            " (the new owner reads them).",
            registry=r,
        )
        self.state = StateMetrics(r)
        self.incidents = IncidentMetrics(r)
        self.feedback = FeedbackMetrics(r)
        self.last_batch_timestamp = Gauge(
            "anomaly_worker_last_batch_timestamp_seconds",
            "Unix time of the last processed batch.",
            registry=r,
        )

    def set_model(self, version: str, threshold: float, expected_ratio: float) -> None:
        self.model_info.clear()
        self.model_info.labels(version).set(1)
        self.threshold.set(threshold)
        self.expected_anomaly_ratio.set(expected_ratio)
