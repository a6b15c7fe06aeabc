"""Report files: the pictures a user needs exist, are real PNGs, and the summary says what was trained."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trainer.fit import FitOptions, fit_model
from trainer.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _report(trained, out: Path) -> set[str]:  # type: ignore[no-untyped-def]
    files = write_report(
        out,
        manifest=trained.manifest,
        scaler=trained.scaler,
        model=trained.model,
        x=trained.heldout_x,
        labels=trained.heldout_labels,
        errors=trained.heldout_errors,
        history=trained.history,
        best_epoch=trained.best_epoch,
    )
    for f in files:
        assert f.stat().st_size > 0
        if f.suffix == ".png":
            assert f.read_bytes()[:8] == PNG_MAGIC
    return {f.name for f in files}


def test_tabular_report(published, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, trained = published
    names = _report(trained, tmp_path)
    assert names == {"loss.png", "errors.png", "latent.png", "summary.md", "summary.json"}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["threshold"] == trained.threshold
    assert summary["report_anomalies"] == 30
    assert summary["score"] == "feature_max"
    md = (tmp_path / "summary.md").read_text()
    assert "![errors.png](errors.png)" in md
    assert "score = largest squared reconstruction error of a feature over its mean" in md


def test_image_denoising_report_has_the_grid(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = d.data[:300] / 16.0, d.target[:300]
    labels = (y > 1).astype(np.int64)  # 0s and 1s are normal
    opts = FitOptions(image_shape=(8, 8), denoise=0.3, epochs=2, patience=2)
    trained = fit_model(x, [f"p{i}" for i in range(64)], labels, opts, quiet=True)
    names = _report(trained, tmp_path)
    assert "reconstructions.png" in names
    md = (tmp_path / "summary.md").read_text()
    assert "denoising (noise 0.3)" in md
    assert "score = mean absolute reconstruction error" in md
