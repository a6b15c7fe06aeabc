"""WorkerMetrics names, bulk histograms, drift and the recent window."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from worker.metrics import (
    BulkHistogram,
    RecentWindow,
    WorkerMetrics,
    clipped_histogram,
    population_stability_index,
)

PRODUCT_METRICS = [
    ("anomaly_worker_records_total", {"outcome": "normal"}),
    ("anomaly_worker_records_total", {"outcome": "anomaly"}),
    ("anomaly_worker_records_total", {"outcome": "invalid"}),
    ("anomaly_worker_reconstruction_error_count", {}),
    ("anomaly_worker_anomaly_ratio", {}),
    ("anomaly_worker_expected_anomaly_ratio", {}),
    ("anomaly_worker_batch_duration_seconds_count", {}),
    ("anomaly_worker_batch_size_count", {}),
    ("anomaly_worker_end_to_end_latency_seconds_count", {}),
    ("anomaly_worker_threshold", {}),
    ("anomaly_worker_model_reloads_total", {"result": "failed"}),
    ("anomaly_worker_model_reloads_total", {"result": "refused"}),
    ("anomaly_worker_dead_letters_total", {"reason": "not_json"}),
    ("anomaly_worker_error_drift", {}),
    ("anomaly_worker_up", {}),
    ("anomaly_worker_ready", {}),
]


def test_every_product_metric_exists_from_the_start() -> None:
    reg = CollectorRegistry()
    m = WorkerMetrics(reg)
    for name, labels in PRODUCT_METRICS:
        assert reg.get_sample_value(name, labels) is not None, name
    m.set_model("v2", 0.3, 0.01)
    m.set_model("v3", 0.4, 0.01)
    assert reg.get_sample_value("anomaly_worker_model_info", {"version": "v3"}) == 1
    assert reg.get_sample_value("anomaly_worker_model_info", {"version": "v2"}) is None
    m.consumer_lag.labels("in", "0").set(5)
    text = generate_latest(reg).decode()
    assert 'anomaly_worker_consumer_lag_records{partition="0",topic="in"} 5.0' in text


def test_bulk_histogram_equals_per_record_histogram() -> None:
    buckets = (0.1, 0.5, 1.0, 2.0)
    reg = CollectorRegistry()
    bulk = BulkHistogram("bulk", "x", buckets, reg)
    ref = Histogram("ref", "x", buckets=buckets, registry=reg)
    values = np.array([0.0, 0.1, 0.1000001, 0.5, 0.7, 1.0, 3.0, 100.0])
    bulk.observe_many(values)
    bulk.observe_many(np.zeros(0))
    for v in values:
        ref.observe(v)
    for le in ("0.1", "0.5", "1.0", "2.0", "+Inf"):
        assert reg.get_sample_value("bulk_bucket", {"le": le}) == reg.get_sample_value(
            "ref_bucket", {"le": le}
        )
    assert reg.get_sample_value("bulk_count") == len(values)
    assert reg.get_sample_value("bulk_sum") == reg.get_sample_value("ref_sum")


def test_psi_zero_for_same_distribution_and_large_for_shift() -> None:
    base = np.array([10, 40, 40, 10])
    assert population_stability_index(base, base * 3) < 1e-9
    assert population_stability_index(base, np.array([0, 0, 10, 90])) > 1.0
    assert population_stability_index(base, np.zeros(4)) == 0.0


def test_recent_window_expires_old_batches() -> None:
    w = RecentWindow(10.0, edges=[0.0, 1.0, 2.0])
    w.add(100.0, 10, 1, np.array([0.5] * 10))
    w.add(105.0, 10, 3, np.array([1.5] * 10))
    n, k, hist = w.totals()
    assert (n, k, hist.tolist()) == (20, 4, [10, 10])
    w.expire(112.0)
    n, k, hist = w.totals()
    assert (n, k, hist.tolist()) == (10, 3, [0, 10])
    w.set_edges([0.0, 1.0])
    assert w.totals()[0] == 0


def test_clipped_histogram_is_numpys_on_clipped_values() -> None:
    """The recent window's bins: values below the first edge count in the first bin, values at
    or beyond the last edge in the last, an interior edge opens its bin (as np.histogram)."""
    rng = np.random.default_rng(3)
    edges = np.sort(rng.lognormal(size=60))
    for scale in (0.01, 1.0, 100.0):
        values = np.concatenate(
            [rng.lognormal(size=500) * scale, edges[rng.integers(0, 60, 40)], [0.0, 1e300]]
        )
        expected = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)[0]
        got = clipped_histogram(values, edges)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, expected)
