"""Training: splits, scaling on train rows only, calibration, refusals, reproducibility."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from trainer_rows import FEATURES, QUICK, correlated_rows

from anomaly_contract import artifact
from anomaly_contract.errors import ConfigError, DataError
from trainer import calibration
from trainer.calibration import outlier_fence
from trainer.cross_fit import CROSS_FIT_FOLDS, CROSS_FIT_MAX_ROWS, cross_fit_folds
from trainer.fit import FitOptions, default_batch_size, fit_model, split_normal_rows
from trainer.fit_threshold import calibration_method
from trainer.training import reconstruction_errors


def test_split_is_disjoint_seeded_and_complete() -> None:
    tr, va, ca = split_normal_rows(200, 0.15, 0.15, seed=3)
    assert len(tr) + len(va) + len(ca) == 200
    assert len(set(tr) | set(va) | set(ca)) == 200
    assert (len(va), len(ca)) == (30, 30)
    again = split_normal_rows(200, 0.15, 0.15, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, ca), again, strict=True))
    assert not np.array_equal(tr, split_normal_rows(200, 0.15, 0.15, seed=4)[0])


def test_too_few_rows_is_a_data_error() -> None:
    with pytest.raises(DataError, match="too few normal rows"):
        split_normal_rows(12, 0.15, 0.15, seed=0)
    with pytest.raises(DataError, match="too few normal rows"):
        fit_model(correlated_rows(12), FEATURES, None, QUICK, quiet=True)


def test_bad_values_and_options_are_refused() -> None:
    x = correlated_rows(50)
    x[7, 2] = np.nan
    with pytest.raises(DataError, match="row 7"):
        fit_model(x, FEATURES, None, QUICK, quiet=True)
    with pytest.raises(DataError, match="empty"):
        fit_model(np.zeros((0, 6)), FEATURES, None, QUICK, quiet=True)
    with pytest.raises(ConfigError, match="minmax"):
        fit_model(
            correlated_rows(50),
            FEATURES,
            None,
            FitOptions(loss="bce", scaler="standard"),
            quiet=True,
        )
    with pytest.raises(ConfigError, match="percentile"):
        fit_model(correlated_rows(50), FEATURES, None, FitOptions(percentile=100), quiet=True)
    with pytest.raises(DataError, match="image shape"):
        fit_model(correlated_rows(50), FEATURES, None, FitOptions(image_shape=(2, 2)), quiet=True)


def test_batch_size_grows_with_data() -> None:
    assert default_batch_size(100) == 16
    assert default_batch_size(100_000) == 256


def test_scaler_fitted_on_train_rows_and_threshold_from_calibration(published) -> None:  # type: ignore[no-untyped-def]
    model_dir, trained = published
    m = trained.manifest
    assert m.rows.excluded_labelled == 30
    assert m.rows.train + m.rows.validation + m.rows.calibration == 300
    # Scaler equals one fitted on the train rows alone.
    x_normal = np.vstack([correlated_rows(300)])
    tr, _, _ = split_normal_rows(300, 0.15, 0.15, seed=QUICK.seed)
    expected = artifact.Scaler.fit(x_normal[tr], "standard")
    assert np.allclose(trained.scaler.offset, expected.offset)
    assert np.allclose(trained.scaler.scale, expected.scale)
    # 300 normal rows are small data: the threshold is the 99th percentile of cross-fitted
    # errors of all of them, and the stored distribution is theirs.
    assert m.hyperparameters["calibration"] == "cross_fit"
    assert m.hyperparameters["calibration_folds"] == CROSS_FIT_FOLDS
    assert m.threshold == pytest.approx(np.percentile(trained.calibration_errors, 99))
    assert m.calibration.n == 300 == trained.calibration_errors.size
    assert sum(m.calibration.histogram_counts) == 300
    assert any("cross-fitted" in note for note in m.notes)
    assert {"val_loss", "roc_auc", "pr_auc"} <= set(m.validation_metrics)
    assert m.validation_metrics["roc_auc"] > 0.8


def test_same_seed_same_threshold(tabular) -> None:  # type: ignore[no-untyped-def]
    x, labels = tabular
    a = fit_model(x, FEATURES, labels, QUICK, quiet=True)
    b = fit_model(x, FEATURES, labels, QUICK, quiet=True)
    assert a.manifest.hyperparameters["calibration"] == "cross_fit"
    assert abs(a.threshold - b.threshold) < 1e-6
    assert np.allclose(a.calibration_errors, b.calibration_errors, atol=1e-7)
    assert np.allclose(a.heldout_errors, b.heldout_errors, atol=1e-7)


def test_progress_lines_and_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    x = correlated_rows(60)
    fit_model(x, FEATURES, None, FitOptions(epochs=2, patience=2), quiet=False)
    err = capsys.readouterr().err
    # Not a terminal here: a few summary lines (trainer.progress), not one per epoch.
    assert "training: 1/2 epochs" in err and "val_loss" in err
    assert len(err.splitlines()) <= 8
    fit_model(x, FEATURES, None, FitOptions(epochs=2, patience=2), quiet=True)
    assert capsys.readouterr().err == ""


def test_calibration_method_and_folds() -> None:
    assert calibration_method("auto", CROSS_FIT_MAX_ROWS - 1) == "cross_fit"
    assert calibration_method("auto", CROSS_FIT_MAX_ROWS) == "holdout"
    assert calibration_method("holdout", 50) == "holdout"
    assert calibration_method("cross_fit", 5000) == "cross_fit"
    with pytest.raises(ConfigError, match="calibration"):
        calibration_method("bootstrap", 50)
    folds = cross_fit_folds(100, 3, seed=2)
    assert sorted(np.bincount(folds)) == [33, 33, 34]
    assert np.array_equal(folds, cross_fit_folds(100, 3, seed=2))
    assert not np.array_equal(folds, cross_fit_folds(100, 3, seed=3))


def test_cross_fitting_leaves_the_model_alone_and_holdout_is_the_old_rule() -> None:
    """Cross-fitting only changes the threshold; ``holdout`` (large data) is the plain rule."""
    x = correlated_rows(200, seed=4)
    cross = fit_model(x, FEATURES, None, QUICK, quiet=True)
    hold = fit_model(x, FEATURES, None, replace(QUICK, calibration="holdout"), quiet=True)
    # Same final network either way: the published model does not depend on the method.
    assert np.allclose(cross.heldout_errors, hold.heldout_errors, atol=1e-7)
    m = hold.manifest
    assert m.hyperparameters["calibration"] == "holdout"
    assert "calibration_folds" not in m.hyperparameters
    assert m.threshold == pytest.approx(np.percentile(hold.calibration_errors, 99))
    assert m.calibration.n == m.rows.calibration == hold.calibration_errors.size
    assert m.validation_metrics["holdout_threshold"] == pytest.approx(m.threshold)
    assert cross.manifest.validation_metrics["holdout_threshold"] == pytest.approx(m.threshold)
    assert cross.calibration_errors.size == 200
    assert cross.threshold != pytest.approx(hold.threshold)


@pytest.mark.parametrize("n_normal", [120, 400])
def test_cross_fitted_threshold_is_exceeded_by_about_one_percent(n_normal: int) -> None:
    """The documented meaning: ~1 % of unseen normal rows score above the p99 threshold."""
    trained = fit_model(correlated_rows(n_normal, seed=5), FEATURES, None, QUICK, quiet=True)
    assert trained.manifest.hyperparameters["calibration"] == "cross_fit"
    errors = trained.scores(correlated_rows(20_000, seed=6))
    rate = float(np.mean(errors > trained.threshold))
    assert 0.002 <= rate <= 0.03, rate


def test_outlier_fence_marks_gross_errors_only() -> None:
    rng = np.random.default_rng(0)
    clean = np.exp(rng.normal(-4.0, 0.6, size=10_000))  # log-normal, like reconstruction errors
    assert np.mean(clean > outlier_fence(clean)) < 1e-3
    spiked = np.r_[clean[:126], 10 * clean.max(), 30 * clean.max()]
    fence = outlier_fence(spiked)
    assert np.count_nonzero(spiked > fence) == 2
    assert outlier_fence(spiked, 0.0) == np.inf  # 0 turns the fence off
    assert outlier_fence(np.full(50, 0.01)) == np.inf  # no spread, nothing to measure against
    with_zero = np.r_[0.0, clean[:100], 100.0]  # an exact zero does not break the logs
    assert clean[:100].max() < outlier_fence(with_zero) < 100.0


def test_calibrate_leaves_fenced_errors_out_of_the_threshold_not_the_summary() -> None:
    errors = np.r_[np.linspace(0.01, 0.02, 99), 5.0]
    threshold, stats = calibration.calibrate(errors, 99.0, fence=0.1)
    assert threshold == pytest.approx(np.percentile(errors[:99], 99.0))
    assert stats.n == 100 and sum(stats.histogram_counts) == 100
    assert calibration.calibrate(errors, 99.0)[0] > 0.05  # unfenced: pulled up by the 5.0


def test_anomalies_hidden_in_normal_data_do_not_lift_the_threshold() -> None:
    """Unlabelled anomalies among the normal rows are left out of the percentile and named.

    Three broken-correlation rows hide among 200 normal ones (1.5 %). Counted, they would sit in
    the top 1 % and lift the p99 threshold to their level; fenced, the threshold keeps its meaning
    (about 1 % of unseen clean rows above it) and the note names their input rows.
    """
    hidden = 10.0 + 6.0 * np.tile([1.0, -1.0], (3, 3))
    x = np.vstack([correlated_rows(200, seed=8), hidden])
    # Trained enough for clean errors to bunch up; the mean score, whose clean errors bunch up
    # most (the feature-max score's case: tests/unit/trainer/test_point_score.py).
    opts = replace(QUICK, epochs=40, patience=10, score="mean")
    trained = fit_model(x, FEATURES, None, opts, quiet=True)
    m = trained.manifest
    assert m.hyperparameters["outlier_fence"] == 3.0
    assert m.validation_metrics["calibration_outliers"] >= 3
    assert m.threshold < m.validation_metrics["threshold_with_outliers"]
    note = next(n for n in m.notes if "look like anomalies in the training data" in n)
    assert "200, 201, 202" in note
    unseen = trained.scaler.transform(correlated_rows(20_000, seed=9))
    errors = reconstruction_errors(
        trained.model, unseen, trained.spec.input_shape, trained.manifest.error
    )
    assert 0.002 <= float(np.mean(errors > trained.threshold)) <= 0.04
    # Off: the plain percentile of every error, hidden anomalies included.
    plain = fit_model(x, FEATURES, None, replace(opts, outlier_fence=0.0), quiet=True)
    assert plain.manifest.validation_metrics["calibration_outliers"] == 0
    assert plain.threshold == pytest.approx(np.percentile(plain.calibration_errors, 99))
    with pytest.raises(ConfigError, match="outlier-fence"):
        fit_model(x, FEATURES, None, replace(opts, outlier_fence=-1.0), quiet=True)
