"""The point model's ``feature_max`` score: chosen for tables, kept out of images, the same
numbers in training, in a published bundle and on the command line, and refused when its scales
are missing."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from trainer_rows import FEATURES, QUICK, anomalous_rows, correlated_rows, write_csv

from anomaly_contract import artifact
from anomaly_contract.model_dir import load_bundle
from trainer.cli import main
from trainer.fit import fit_model
from trainer.publish import publish_model
from trainer.training import FEATURE_SCALE_FLOOR, reconstruction_errors

HOLDOUT = replace(QUICK, calibration="holdout")


def test_row_scores_take_the_mean_or_the_largest_scaled_error() -> None:
    errors = np.array([[1.0, 4.0, 0.5], [2.0, 2.0, 2.0]])
    np.testing.assert_allclose(artifact.row_scores(errors, None), [5.5 / 3, 2.0])
    np.testing.assert_allclose(artifact.row_scores(errors, np.array([1.0, 8.0, 0.1])), [5.0, 20.0])
    assert artifact.row_scores(np.zeros((0, 3)), np.ones(3)).shape == (0,)


def test_tables_score_feature_max_and_images_the_mean() -> None:
    table = fit_model(correlated_rows(300, seed=2), FEATURES, None, HOLDOUT, quiet=True)
    m = table.manifest
    assert m.score == "feature_max" and m.hyperparameters["score"] == "feature_max"
    scales = m.point_feature_scales
    assert scales is not None and scales.shape == (len(FEATURES),)
    assert scales.min() >= FEATURE_SCALE_FLOOR * scales.mean() - 1e-15
    # The threshold is the percentile of the calibration rows' feature-max scores.
    xs = table.scaler.transform(correlated_rows(300, seed=2))
    cal = reconstruction_errors(
        table.model, xs, table.spec.input_shape, m.error, feature_scales=scales
    )
    assert cal.max() > m.threshold > np.median(cal)
    pixels = np.random.default_rng(0).random((80, 4))
    image = fit_model(pixels, FEATURES[:4], None, replace(HOLDOUT, image_shape=(2, 2)), quiet=True)
    assert image.manifest.score == "mean" and image.manifest.feature_scales is None
    mean = fit_model(
        correlated_rows(300, seed=2), FEATURES, None, replace(HOLDOUT, score="mean"), quiet=True
    )
    assert mean.manifest.point_feature_scales is None


def test_a_published_feature_max_model_scores_as_it_was_calibrated(tmp_path: Path) -> None:
    """The bundle's scores equal the trainer's, its feature errors are the scaled ones (the top
    feature is the one that set the score), and a mean manifest is written as before."""
    trained = fit_model(correlated_rows(300, seed=3), FEATURES, None, HOLDOUT, quiet=True)
    publish_model(trained, tmp_path / "fmax")
    bundle = load_bundle(tmp_path / "fmax")
    rows = np.vstack([correlated_rows(50, seed=4), anomalous_rows(50, seed=5)])
    scored = bundle.score(rows)
    m = trained.manifest
    np.testing.assert_allclose(scored.scores, trained.scores(rows), rtol=1e-5)
    np.testing.assert_allclose(scored.feature_errors.max(axis=1), scored.scores, rtol=1e-6)
    assert scored.scores[50:].mean() > 10 * scored.scores[:50].mean()
    written = json.loads((bundle.path / "manifest.json").read_text())
    assert written["score"] == "feature_max" and len(written["feature_scales"]) == 6
    mean = m.model_copy(update={"score": "mean", "feature_scales": None})
    assert "score" not in mean.model_dump() and "feature_scales" not in mean.model_dump()


def test_cross_fitting_scales_each_fold_network_by_its_own_rows() -> None:
    """Small data: the out-of-fold scores are feature-max scores too, so ~1 % of unseen normal
    rows exceed the threshold, and gross anomalies among the normal rows stay above it."""
    hidden = 10.0 + 6.0 * np.tile([1.0, -1.0], (3, 3))
    x = np.vstack([correlated_rows(200, seed=8), hidden])
    trained = fit_model(x, FEATURES, None, replace(QUICK, epochs=40, patience=10), quiet=True)
    m = trained.manifest
    assert m.hyperparameters["calibration"] == "cross_fit" and m.score == "feature_max"
    assert trained.calibration_errors.size == x.shape[0]
    # Fenced (at least two of the three: the fence sits on a wider log spread than the mean's)
    # and, fenced or not, each of them above the threshold.
    assert m.validation_metrics["calibration_outliers"] >= 2
    assert (trained.calibration_errors[200:] > m.threshold).all()
    errors = trained.scores(correlated_rows(20_000, seed=9))
    assert 0.002 <= float(np.mean(errors > m.threshold)) <= 0.03


def test_manifest_refuses_feature_max_without_its_scales() -> None:
    trained = fit_model(correlated_rows(300, seed=3), FEATURES, None, HOLDOUT, quiet=True)
    data = trained.manifest.model_dump(mode="json")
    for bad in (None, [1.0] * 5, [1.0, 1.0, 1.0, 1.0, 1.0, 0.0], [1.0] * 5 + [float("nan")]):
        with pytest.raises(ValueError, match="feature_max"):
            artifact.Manifest.model_validate({**data, "feature_scales": bad})
    with pytest.raises(ValueError, match="feature_scales belong"):
        artifact.Manifest.model_validate({**data, "score": "mean"})


def test_command_line_point_score(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_csv(tmp_path / "rows.csv", correlated_rows(300, seed=6), FEATURES)
    common = ["fit", str(data), "--epochs", "3", "--calibration", "holdout", "--quiet"]
    assert main([*common, "--model-dir", str(tmp_path / "m"), "--point-score", "mean"]) == 0
    assert load_bundle(tmp_path / "m").manifest.score == "mean"
    assert main([*common, "--model-dir", str(tmp_path / "f")]) == 0
    assert load_bundle(tmp_path / "f").manifest.score == "feature_max"
    capsys.readouterr()
    code = main(
        [*common, "--model-dir", str(tmp_path / "w"), "--window", "4", "--point-score", "mean"]
    )
    assert code != 0
    assert "--point-score applies to point models" in capsys.readouterr().err
