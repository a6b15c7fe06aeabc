"""The quality benchmark's own logic: per-seed anomaly draws, the baselines' threshold rule, the
target check. (Running the benchmark itself is `python benchmarks/quality.py`.)"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import baselines, quality
from benchmarks.quality import Case, Summary, odds_case


def test_odds_sets_draw_their_anomalies_anew_per_seed() -> None:
    x = np.arange(100, dtype=float).reshape(50, 2)
    normal, rare = np.arange(30), np.arange(30, 50)
    case = odds_case("toy", x, normal, rare, 5)
    draws = [case.for_seed(seed) for seed in range(4)]
    for drawn in draws:
        assert drawn.labels.sum() == 5 and drawn.x.shape == (35, 2)
        np.testing.assert_array_equal(drawn.x[drawn.labels == 0], x[normal])
        assert set(drawn.x[drawn.labels == 1, 0]) <= set(x[rare, 0])
    samples = {tuple(sorted(d.x[d.labels == 1, 0])) for d in draws}
    assert len(samples) > 1, "every seed drew the same anomalies"
    np.testing.assert_array_equal(case.for_seed(2).x, draws[2].x)


def _gaussian_case(n_normal: int) -> Case:
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(n_normal, 4))
    anomalies = rng.normal(loc=4.0, size=(40, 4))
    labels = np.r_[np.zeros(n_normal, int), np.ones(40, int)]
    return Case("gaussian", np.vstack([normal, anomalies]), labels)


@pytest.mark.parametrize("n_normal", [600, 3000])  # cross-fitted and held-out thresholds
def test_a_baseline_is_thresholded_by_the_trainers_rule(n_normal: int) -> None:
    case = _gaussian_case(n_normal)
    normal = np.flatnonzero(case.labels == 0)
    fit_rows, test = (
        normal[: n_normal // 2],
        np.r_[normal[n_normal // 2 :], np.arange(n_normal, n_normal + 40)],
    )
    auc, f1, fpr = quality._baseline(
        baselines.isolation_forest(), case, fit_rows, test, quality.FitOptions(seed=1)
    )
    assert auc > 0.99 and f1 > 0.6  # 40 anomalies among 300 or 1,500 test normals
    assert fpr < 0.04  # the 99th percentile of held-out scores: ~1 % of unseen normals above


def test_the_target_check_names_the_best_baseline_and_the_gap() -> None:
    def summary(default: tuple[float, float], **others: tuple[float, float]) -> Summary:
        means = {"default": (*default, 0.01), **{k: (*v, 0.01) for k, v in others.items()}}
        return Summary(mean=means, sd={k: (0.0, 0.0, 0.0) for k in means}, all_f1=0.3)  # type: ignore[arg-type]

    behind = summary((0.960, 0.50), IF=(0.900, 0.60), recipe=(0.971, 0.40))
    best, gap = behind.auc_shortfall()  # type: ignore[misc]
    assert best == "recipe" and gap == pytest.approx(0.006)
    assert behind.f1_shortfall() == pytest.approx(0.10)
    row = quality.table_row("wine", behind)
    assert row.endswith("| no (recipe, short by 0.006) | no (short by 0.100) |")

    level = summary((0.967, 0.61), IF=(0.900, 0.60), recipe=(0.971, 0.40))
    assert quality.table_row("wine", level).endswith("| yes | yes |")
