"""Per-key thresholds: each key's own percentile, pooled fallback, JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anomaly_contract.key_thresholds import KeyThresholds, default_min_windows, fit_key_thresholds


def _errors(seed: int = 0):
    rng = np.random.default_rng(seed)
    easy = rng.exponential(0.1, size=400)  # a key whose series is easy to rebuild
    hard = rng.exponential(2.0, size=400)  # a key whose series is hard to rebuild
    rare = rng.exponential(0.5, size=5)  # a key with too few calibration windows
    errors = np.concatenate([easy, hard, rare])
    keys = np.array(["easy"] * 400 + ["hard"] * 400 + ["rare"] * 5)
    return errors, keys, easy, hard


def test_each_key_gets_its_own_percentile_and_scarce_keys_the_pooled_one():
    errors, keys, easy, hard = _errors()
    thresholds = fit_key_thresholds(errors, keys, percentile=99.0, min_windows=50)
    assert thresholds.threshold("easy") == pytest.approx(np.percentile(easy, 99.0))
    assert thresholds.threshold("hard") == pytest.approx(np.percentile(hard, 99.0))
    assert (
        thresholds.threshold("rare")
        == thresholds.pooled
        == pytest.approx(np.percentile(errors, 99.0))
    )
    assert thresholds.threshold("never-calibrated") == thresholds.pooled
    assert thresholds.windows == {"easy": 400, "hard": 400, "rare": 5}
    # The point of it: an anomaly of the easy key that the pooled threshold would miss.
    anomaly = 10 * np.percentile(easy, 99.0)
    assert anomaly < thresholds.pooled
    assert thresholds.relative_scores(np.array([anomaly]), ["easy"])[0] > 1.0
    assert thresholds.thresholds_for(["hard", "easy", "x"]).tolist() == [
        thresholds.threshold("hard"),
        thresholds.threshold("easy"),
        thresholds.pooled,
    ]


def test_the_default_minimum_expects_two_errors_above_the_percentile():
    assert default_min_windows(99.0) == 200
    assert default_min_windows(95.0) == 40
    assert default_min_windows(50.0) == 20
    errors, keys, _, _ = _errors()
    assert fit_key_thresholds(errors, keys, percentile=99.0).min_windows == 200


def test_the_json_round_trip_keeps_every_number():
    errors, keys, _, _ = _errors(1)
    thresholds = fit_key_thresholds(errors, keys, percentile=97.5)
    again = KeyThresholds.from_json(json.loads(json.dumps(thresholds.to_json())))
    assert again == thresholds
    with pytest.raises(ValueError, match="format"):
        KeyThresholds.from_json({**thresholds.to_json(), "format": "x"})


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="no calibration"):
        fit_key_thresholds(np.zeros(0), [], 99.0)
    with pytest.raises(ValueError, match="percentile"):
        fit_key_thresholds(np.ones(3), ["a"] * 3, 100.0)
    with pytest.raises(ValueError, match="one value per error"):
        fit_key_thresholds(np.ones(3), ["a"] * 2, 99.0)
