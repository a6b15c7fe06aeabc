"""The anomaly-trainer commands end to end on small CSV files, and every refusal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from trainer_rows import FEATURES, anomalous_rows, correlated_rows, write_csv

from anomaly_contract.model_dir import load_bundle
from trainer.cli import main

ROOT = Path(__file__).resolve().parents[3]
FAST = ["--epochs", "3", "--patience", "2", "--quiet"]


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """A model fitted through the CLI on a labelled CSV, plus that CSV and its labels."""
    root = tmp_path_factory.mktemp("cli")
    x = np.vstack([correlated_rows(200, seed=5), anomalous_rows(20, seed=6)])
    labels = np.r_[np.zeros(200, int), np.ones(20, int)]
    data = write_csv(root / "train.csv", x, FEATURES, labels)
    assert main(["fit", str(data), "--model-dir", str(root / "models"), *FAST]) == 0
    return root / "models", data, labels


def test_fit_publishes_and_excludes_labelled_rows(cli_model, capsys) -> None:  # type: ignore[no-untyped-def]
    model_dir, _, _ = cli_model
    bundle = load_bundle(model_dir)
    assert bundle.feature_names == FEATURES  # the label column is not a feature
    assert bundle.manifest.rows.excluded_labelled == 20
    assert bundle.manifest.rows.total == 220
    assert bundle.manifest.error == "mse"  # a table: squared errors by default


def test_fit_score_and_calibration_flags_reach_the_manifest(cli_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, data, _ = cli_model
    model_dir = tmp_path / "models"
    flags = ["--error", "mae", "--outlier-fence", "0", "--calibration", "holdout"]
    assert main(["fit", str(data), "--model-dir", str(model_dir), *FAST, *flags]) == 0
    m = load_bundle(model_dir).manifest
    assert m.error == "mae"
    assert m.hyperparameters["outlier_fence"] == 0.0
    assert m.validation_metrics["calibration_outliers"] == 0
    assert m.threshold == pytest.approx(m.validation_metrics["threshold_with_outliers"])


def test_score_output_is_in_order_and_equals_bundle_scores(cli_model, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    model_dir, data, _ = cli_model
    out = tmp_path / "scores.jsonl"
    assert main(["score", str(data), "--model-dir", str(model_dir), "--output", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["row"] for r in lines] == list(range(220))
    assert set(lines[0]) == {"row", "id", "score", "threshold", "is_anomaly"}
    bundle = load_bundle(model_dir)
    from trainer.data import load_dataset

    expected = bundle.score(load_dataset(str(data)).x).scores
    assert np.allclose([r["score"] for r in lines], expected, rtol=1e-6)
    assert all(r["is_anomaly"] == (r["score"] > r["threshold"]) for r in lines)
    assert "scored 220 rows" in capsys.readouterr().err


def test_evaluate_json_has_the_metrics(cli_model, capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model_dir, data, _ = cli_model
    assert (
        main(
            [
                "evaluate",
                str(data),
                "--label-column",
                "label",
                "--model-dir",
                str(model_dir),
                "--json",
                "--report",
                str(tmp_path / "rep"),
            ]
        )
        == 0
    )
    m = json.loads(capsys.readouterr().out)
    assert {
        "precision",
        "recall",
        "f1",
        "roc_auc",
        "pr_auc",
        "threshold",
        "confusion_matrix",
    } <= set(m)
    assert m["roc_auc"] > 0.8
    cm = m["confusion_matrix"]
    assert cm["tp"] + cm["fn"] == 20 and cm["tn"] + cm["fp"] == 200
    assert {"errors.png", "latent.png", "summary.md", "summary.json"} <= {
        p.name for p in (tmp_path / "rep").iterdir()
    }
    assert (
        main(["evaluate", str(data), "--label-column", "label", "--model-dir", str(model_dir)]) == 0
    )
    assert "confusion matrix" in capsys.readouterr().out


def test_encode_decode_denoise(cli_model, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    model_dir, data, _ = cli_model
    codes = tmp_path / "codes.npy"
    assert main(["encode", str(data), "--model-dir", str(model_dir), "--output", str(codes)]) == 0
    assert "compression" in capsys.readouterr().out
    latent = load_bundle(model_dir).manifest.latent_dim
    assert np.load(codes).shape == (220, latent)
    rec = tmp_path / "rec.csv"
    assert main(["decode", str(codes), "--model-dir", str(model_dir), "--output", str(rec)]) == 0
    assert rec.read_text().splitlines()[0] == ",".join(FEATURES)
    clean = tmp_path / "clean.jsonl"
    assert main(["denoise", str(data), "--model-dir", str(model_dir), "--output", str(clean)]) == 0
    first = json.loads(clean.read_text().splitlines()[0])
    assert list(first["features"]) == FEATURES
    # Codes of the wrong width are refused.
    np.save(tmp_path / "bad.npy", np.zeros((3, latent + 1)))
    assert (
        main(
            [
                "decode",
                str(tmp_path / "bad.npy"),
                "--model-dir",
                str(model_dir),
                "--output",
                str(rec),
            ]
        )
        == 2
    )
    assert "latent size" in capsys.readouterr().err


def _one_line_error(capsys: pytest.CaptureFixture[str], *words: str) -> None:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, err


def test_refusals_publish_nothing(cli_model, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    model_dir, _, _ = cli_model
    target = tmp_path / "models"
    fit = ["--model-dir", str(target), *FAST]
    assert main(["fit", str(tmp_path / "missing.csv"), *fit]) == 2
    _one_line_error(capsys, "missing.csv")
    (tmp_path / "empty.csv").write_text("")
    assert main(["fit", str(tmp_path / "empty.csv"), *fit]) == 2
    _one_line_error(capsys, "empty")
    x = correlated_rows(60)
    x[4, 1] = np.nan
    assert main(["fit", str(write_csv(tmp_path / "nan.csv", x, FEATURES)), *fit]) == 2
    _one_line_error(capsys)
    assert (
        main(["fit", str(write_csv(tmp_path / "few.csv", correlated_rows(15), FEATURES)), *fit])
        == 2
    )
    _one_line_error(capsys, "rows")
    labelled = write_csv(
        tmp_path / "lab.csv",
        correlated_rows(30),
        FEATURES,
        np.r_[np.zeros(12, int), np.ones(18, int)],
    )
    assert main(["fit", str(labelled), *fit]) == 2
    _one_line_error(capsys, "too few normal rows")
    assert main(["fit", str(labelled), "--label-column", "nope", *fit]) == 2
    _one_line_error(capsys, "nope")
    assert (
        main(
            [
                "fit",
                str(write_csv(tmp_path / "ok.csv", correlated_rows(40), FEATURES)),
                "--image-shape",
                "2x2",
                *fit,
            ]
        )
        == 2
    )
    _one_line_error(capsys)
    assert not target.exists() or model_dir.list_versions(target) == []

    # Scoring: wrong dimensions, unknown version, no model.
    narrow = write_csv(tmp_path / "narrow.csv", correlated_rows(30, d=4), ["a", "b", "c", "d"])
    assert main(["score", str(narrow), "--model-dir", str(model_dir)]) == 2
    _one_line_error(capsys, "expects 6")
    ok = tmp_path / "ok.csv"
    assert main(["score", str(ok), "--model-dir", str(model_dir), "--version", "v42"]) == 2
    _one_line_error(capsys, "v42 not found")
    assert main(["score", str(ok), "--model-dir", str(tmp_path / "none")]) == 2
    _one_line_error(capsys, "does not exist")
    assert main(["evaluate", str(ok), "--model-dir", str(model_dir)]) == 2
    _one_line_error(capsys, "--label-column")


def test_console_error_has_no_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer",
            "fit",
            str(tmp_path / "nope.csv"),
            "--model-dir",
            str(tmp_path / "m"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("anomaly-trainer")]
    assert len(lines) == 1 and "nope.csv" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "m" / "CURRENT").exists()
