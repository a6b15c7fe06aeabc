"""--short-fit: the training budget it gives, where "auto" applies, and the command line."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from trainer_rows import FEATURES, correlated_rows, write_csv

from anomaly_contract.errors import ConfigError
from anomaly_contract.model_dir import load_bundle
from trainer.cli import main
from trainer.fit import (
    CROSS_FIT_MAX_ROWS,
    SHORT_FIT_EPOCHS,
    FitOptions,
    fit_model,
    short_fit_applies,
)

# More epochs than a short fit's budget and a patience no early stop reaches: every network
# trains its whole budget, so the history's length is the budget.
LONG = FitOptions(epochs=SHORT_FIT_EPOCHS + 3, patience=1000, calibration="holdout", seed=2)


def test_auto_shortens_small_tables_only() -> None:
    assert short_fit_applies("auto", image=False, n_normal=CROSS_FIT_MAX_ROWS - 1)
    assert not short_fit_applies("auto", image=False, n_normal=CROSS_FIT_MAX_ROWS)
    assert not short_fit_applies("auto", image=True, n_normal=100)
    assert short_fit_applies("on", image=True, n_normal=10**6)
    assert not short_fit_applies("off", image=False, n_normal=100)
    with pytest.raises(ConfigError, match="--short-fit"):
        short_fit_applies("sometimes", image=False, n_normal=100)


@pytest.mark.parametrize(
    ("short_fit", "image_shape", "budget"),
    [
        ("off", None, SHORT_FIT_EPOCHS + 3),
        ("on", None, SHORT_FIT_EPOCHS),
        ("auto", None, SHORT_FIT_EPOCHS),  # 80 normal rows: a small table
        ("auto", (2, 3), SHORT_FIT_EPOCHS + 3),  # an image keeps the full fit
        ("on", (2, 3), SHORT_FIT_EPOCHS),
    ],
)
def test_short_fit_stops_training_at_its_budget(
    short_fit: str, image_shape: tuple[int, ...] | None, budget: int
) -> None:
    x = correlated_rows(80, seed=3)
    opts = replace(LONG, short_fit=short_fit, image_shape=image_shape)  # type: ignore[arg-type]
    trained = fit_model(x, FEATURES, None, opts, quiet=True)
    assert len(trained.history["loss"]) == budget
    hyper = trained.manifest.hyperparameters
    assert hyper["epochs"] == budget and hyper["short_fit"] == short_fit


def test_short_fit_never_raises_a_smaller_budget() -> None:
    x = correlated_rows(80, seed=3)
    trained = fit_model(x, FEATURES, None, replace(LONG, epochs=5, short_fit="on"), quiet=True)
    assert len(trained.history["loss"]) == 5


def test_short_fit_trains_a_different_network_than_the_full_fit() -> None:
    """Same rows and seed: the short fit is the full fit's first epochs, so its errors differ."""
    x = correlated_rows(80, seed=3)
    full = fit_model(x, FEATURES, None, LONG, quiet=True)
    short = fit_model(x, FEATURES, None, replace(LONG, short_fit="on"), quiet=True)
    assert full.history["loss"][:SHORT_FIT_EPOCHS] == pytest.approx(short.history["loss"])
    assert not np.allclose(full.heldout_errors, short.heldout_errors)


def test_cli_short_fit_reaches_the_manifest_and_is_refused_with_a_window(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = write_csv(tmp_path / "rows.csv", correlated_rows(80, seed=4), FEATURES)
    flags = ["--epochs", str(SHORT_FIT_EPOCHS + 5), "--calibration", "holdout", "--quiet"]
    model_dir = tmp_path / "models"
    assert main(["fit", str(data), "--model-dir", str(model_dir), *flags, "--short-fit", "on"]) == 0
    hyper = load_bundle(model_dir).manifest.hyperparameters
    assert hyper["short_fit"] == "on" and hyper["epochs"] == SHORT_FIT_EPOCHS
    windowed = ["--window", "4", "--short-fit", "auto"]
    assert main(["fit", str(data), "--model-dir", str(tmp_path / "w"), *flags, *windowed]) != 0
    assert "--short-fit applies to point models" in capsys.readouterr().err
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())
