"""Small synthetic tables for the trainer's unit tests, importable by name (``trainer_rows``).

Not in ``conftest``: ``from conftest import ...`` resolves to whichever conftest was imported
first, so running this folder together with ``tests/unit/trainer_data`` (whose conftest has other
helpers) failed at collection.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from trainer.fit import FitOptions  # noqa: E402

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
