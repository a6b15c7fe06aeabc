"""Training: splits, scaling on train rows only, calibration, refusals, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FEATURES, QUICK, correlated_rows

from trainer import artifact
from trainer.errors import ConfigError, DataError
from trainer.fit import FitOptions, default_batch_size, fit_model, split_normal_rows


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
    # Threshold is the 99th percentile of the calibration errors.
    assert m.threshold == pytest.approx(np.percentile(trained.calibration_errors, 99))
    assert m.calibration.n == m.rows.calibration
    assert sum(m.calibration.histogram_counts) == m.rows.calibration
    assert {"val_loss", "roc_auc", "pr_auc"} <= set(m.validation_metrics)
    assert m.validation_metrics["roc_auc"] > 0.8


def test_same_seed_same_threshold(tabular) -> None:  # type: ignore[no-untyped-def]
    x, labels = tabular
    a = fit_model(x, FEATURES, labels, QUICK, quiet=True)
    b = fit_model(x, FEATURES, labels, QUICK, quiet=True)
    assert abs(a.threshold - b.threshold) < 1e-6
    assert np.allclose(a.heldout_errors, b.heldout_errors, atol=1e-7)


def test_progress_lines_and_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    x = correlated_rows(60)
    fit_model(x, FEATURES, None, FitOptions(epochs=2, patience=2), quiet=False)
    err = capsys.readouterr().err
    assert "epoch   1/2" in err and "val_loss" in err
    fit_model(x, FEATURES, None, FitOptions(epochs=2, patience=2), quiet=True)
    assert capsys.readouterr().err == ""
