"""One published model shared by the trainer's unit tests (their data: `trainer_rows`)."""

from __future__ import annotations

import numpy as np
import pytest
from trainer_rows import FEATURES, QUICK, anomalous_rows, correlated_rows

from trainer.fit import fit_model
from trainer.publish import publish_model


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
