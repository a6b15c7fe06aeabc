"""A windowed model's event (`worker.series_batch`): its fields, and top features that name the
channel, its share of the score and how many steps back its largest error sits."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
from fake_client import FakeRecord

from worker.incidents import event_id
from worker.series_batch import score_pushed, series_event, window_top_features

NAMES = ["temp", "rpm", "load"]


def test_top_features_rank_by_the_scored_rows_and_say_where_the_peak_is():
    errors = np.zeros((1, 6, 3))
    errors[0, -1] = [4.0, 1.0, 0.5]  # the newest row: temp contributes most to the score
    errors[0, 2, 1] = 9.0  # rpm's largest error sits 3 steps back
    top = window_top_features(errors, NAMES, 2, score_steps=1)[0]
    assert top == [
        {"name": "temp", "steps_back": 0, "error": 4.0},
        {"name": "rpm", "steps_back": 3, "error": 1.0},
    ]
    # with the whole window scored, rpm's spike counts: (9 + 1) / 6 > 4 / 6
    assert window_top_features(errors, NAMES, 1, score_steps=6)[0][0]["name"] == "rpm"
    assert window_top_features(errors, NAMES, 0, score_steps=1) == [[]]


def test_top_features_of_a_channel_max_model_rank_by_the_scaled_errors():
    errors = np.zeros((1, 6, 3))
    errors[0, -1] = [4.0, 1.0, 0.5]  # temp's raw error is the largest...
    scales = np.array([8.0, 0.5, 1.0])  # ...but rpm's is 4x its usual: the score is rpm's
    scaled = errors[:, -1, :] / scales
    top = window_top_features(errors, NAMES, 3, score_steps=1, contributions=scaled)[0]
    assert [t["name"] for t in top] == ["rpm", "temp", "load"]
    assert [t["error"] for t in top] == [2.0, 0.5, 0.5]
    assert top[0]["error"] == (errors[0, -1] / scales).max()  # the first one is the score


def test_score_pushed_ranks_a_channel_max_model_by_its_scales():
    """The worker's batch step hands the model's scales to the ranking: the first channel's
    error is the window's score."""
    from tests.unit.series.series_fixtures import keyed_rows, series_bundle

    x, keys = keyed_rows(400, ["a", "b"], 3, seed=1)
    model = series_bundle(6, 3, x, keys, channel_scales=[0.05, 3.0, 0.5]).series
    model.thresholds = replace(model.thresholds, pooled=0.0, per_key={})  # every window flags
    windows = np.stack([x[i : i + 6] for i in range(0, 60, 6)])
    scored = score_pushed(model, windows, ["a"] * len(windows), NAMES, 3)
    assert scored.anomalous.size == len(windows)
    for i in range(len(windows)):
        assert scored.tops[i][0]["error"] == scored.scores[i]


def test_the_errors_of_the_top_features_average_to_the_score_over_all_channels():
    rng = np.random.default_rng(0)
    errors = rng.gamma(2.0, 1.0, size=(4, 8, 3))
    tops = window_top_features(errors, NAMES, 3, score_steps=2)
    scores = errors[:, -2:, :].reshape(4, -1).mean(axis=1)
    for top, score in zip(tops, scores, strict=True):
        assert np.isclose(np.mean([t["error"] for t in top]), score, rtol=1e-12, atol=0)


def test_a_series_event_carries_the_key_and_the_window():
    record = FakeRecord("in", 2, 41, b"{}", b"m1", timestamp=1_700_000_000_123)
    event = json.loads(
        series_event(
            record=record,
            record_id="r41",
            key="m1",
            window=(30, 41),
            score=3.0,
            threshold=1.5,
            model_version="v2",
            top_features=[{"name": "temp", "steps_back": 1, "error": 5.0}],
            detected_at="2026-12-02T00:00:00.000Z",
            incident_id="i-1",
        )
    )
    assert event == {
        "id": "r41",
        "event_id": event_id("in", 2, 41, "v2"),
        "key": "m1",
        "score": 3.0,
        "threshold": 1.5,
        "severity": 2.0,
        "model_version": "v2",
        "source": {"topic": "in", "partition": 2, "offset": 41, "timestamp_ms": 1_700_000_000_123},
        "window": {"first_offset": 30, "last_offset": 41},
        "top_features": [{"name": "temp", "steps_back": 1, "error": 5.0}],
        "detected_at": "2026-12-02T00:00:00.000Z",
        "incident_id": "i-1",
    }
