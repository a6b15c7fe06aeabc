"""score_batch and top_features on a real (small) published model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from worker_models import sensor_rows

from anomaly_contract.model_dir import load_bundle
from worker.scoring import score_batch, top_features


def test_batch_scores_match_bundle_score_and_flag_injected_anomalies(model_dir: Path) -> None:
    bundle = load_bundle(model_dir)
    x, labels = sensor_rows(400, 6, seed=7, anomaly_rate=0.1)
    scored = score_batch(bundle, x)
    ref = bundle.score(x)
    np.testing.assert_allclose(scored.scores, ref.scores, rtol=1e-6)
    assert scored.threshold == bundle.threshold
    assert scored.finite.all()
    np.testing.assert_array_equal(scored.is_anomaly, ref.scores > bundle.threshold)
    # the model is small but must separate gross deviations from normal rows
    recall = scored.is_anomaly[labels == 1].mean()
    false_alarms = scored.is_anomaly[labels == 0].mean()
    assert recall > 0.8, recall
    assert false_alarms < 0.05, false_alarms


def test_scores_do_not_depend_on_batch_composition(model_dir: Path) -> None:
    bundle = load_bundle(model_dir)
    x, _ = sensor_rows(300, 6, seed=3)
    whole = score_batch(bundle, x).scores
    parts = np.concatenate([score_batch(bundle, x[i : i + 7]).scores for i in range(0, 300, 7)])
    np.testing.assert_allclose(parts, whole, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_overflowing_error_is_not_finite_and_not_an_anomaly(model_dir: Path) -> None:
    bundle = load_bundle(model_dir)
    x, _ = sensor_rows(3, 6, seed=3)
    x[1, 2] = 1e300
    scored = score_batch(bundle, x)
    assert scored.finite.tolist() == [True, False, True]
    assert not scored.is_anomaly[1]


def test_top_features_ranked_largest_first() -> None:
    fe = np.array([[0.1, 0.5, 0.3, 0.0], [4.0, 1.0, 2.0, 3.0]], dtype=np.float32)
    names = ["a", "b", "c", "d"]
    out = top_features(fe, names, 2)
    assert [[n for n, _ in row] for row in out] == [["b", "c"], ["a", "d"]]
    assert out[0][0][1] == np.float32(0.5)
    assert [[n for n, _ in row] for row in top_features(fe, names, 10)] == [
        ["b", "c", "a", "d"],
        ["a", "d", "c", "b"],
    ]
    assert top_features(fe, names, 0) == [[], []]
    assert top_features(fe[:0], names, 3) == []
