"""Small synthetic data and one published model shared by the trainer's unit tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from trainer.fit import FitOptions, fit_model  # noqa: E402
from trainer.publish import publish_model  # noqa: E402

FEATURES = [f"s{i}" for i in range(6)]
QUICK = FitOptions(epochs=15, patience=5, seed=1)


def correlated_rows(n: int, seed: int = 0, d: int = 6) -> np.ndarray:
    """Rows on a 2-D subspace plus small noise: an autoencoder has structure to learn."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).normal(size=(2, d))
    return rng.normal(size=(n, 2)) @ basis + 0.05 * rng.normal(size=(n, d)) + 10.0


def anomalous_rows(n: int, seed: int = 1, d: int = 6) -> np.ndarray:
    """Same marginal scale, broken correlations."""
    rng = np.random.default_rng(seed)
    return rng.normal(scale=1.5, size=(n, d)) + 10.0


@pytest.fixture(scope="session")
def tabular() -> tuple[np.ndarray, np.ndarray]:
    x = np.vstack([correlated_rows(300), anomalous_rows(30)])
    labels = np.r_[np.zeros(300, np.int64), np.ones(30, np.int64)]
    return x, labels


@pytest.fixture(scope="session")
def published(tmp_path_factory: pytest.TempPathFactory, tabular):  # type: ignore[no-untyped-def]
    """A model directory with one version trained on `tabular` (labels exclude anomalies)."""
    x, labels = tabular
    model_dir = tmp_path_factory.mktemp("models")
    trained = fit_model(x, FEATURES, labels, QUICK, source="test", quiet=True)
    publish_model(trained, model_dir)
    return model_dir, trained


def write_csv(
    path: Path, x: np.ndarray, names: list[str], labels: np.ndarray | None = None
) -> Path:
    header = ",".join(names + (["label"] if labels is not None else []))
    rows = [
        ",".join(
            [repr(float(v)) for v in row] + ([str(int(labels[i]))] if labels is not None else [])
        )
        for i, row in enumerate(x)
    ]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path
