"""Contract every architecture passes: save/load round trip, same seed same scores, better than chance.

Data: `builtin:digits` one-class (digit 0 is normal, the other digits are anomalies) for every
architecture, and `builtin:sensors` for the dense ones.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from anomaly_contract.model_dir import load_bundle  # noqa: E402
from trainer.data import load_dataset  # noqa: E402
from trainer.fit import FitOptions, TrainedModel, fit_model  # noqa: E402
from trainer.publish import publish_model  # noqa: E402

ARCHITECTURES = {
    # Images denoise by default (noise 0.1); "conv" turns that off to keep the plain path covered.
    "dense": FitOptions(architecture="dense", epochs=15, patience=5, seed=7),
    "conv": FitOptions(architecture="conv", denoise=0.0, epochs=10, patience=5, seed=7),
    "denoising-dense": FitOptions(architecture="dense", denoise=0.2, epochs=15, patience=5, seed=7),
    "denoising-conv-bce": FitOptions(
        architecture="conv", denoise=0.2, loss="bce", epochs=10, patience=5, seed=7
    ),
    "vae": FitOptions(architecture="vae", denoise=0.0, epochs=15, patience=5, seed=7),
    "sparse-dense": FitOptions(
        architecture="dense", denoise=0.0, sparsity=1e-3, epochs=15, patience=5, seed=7
    ),
    "sparse-conv": FitOptions(
        architecture="conv", denoise=0.0, sparsity=1e-3, epochs=10, patience=5, seed=7
    ),
}


@pytest.fixture(scope="module")
def digits_one_class() -> tuple[np.ndarray, list[str], np.ndarray]:
    """Digit 0 (178 rows) as normal plus 120 other digits as labelled anomalies."""
    from sklearn.datasets import load_digits

    ds = load_dataset("builtin:digits")
    target = load_digits().target
    assert ds.x.shape == (1797, 64) and ds.image_shape == (8, 8)
    rows = np.r_[np.flatnonzero(target == 0), np.flatnonzero(target != 0)[:120]]
    return ds.x[rows], ds.feature_names, (target[rows] != 0).astype(np.int64)


def _auc(trained: TrainedModel) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(trained.heldout_labels != 0, trained.heldout_errors))


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def fitted(request, digits_one_class, tmp_path_factory):  # type: ignore[no-untyped-def]
    x, names, labels = digits_one_class
    opts = replace(ARCHITECTURES[request.param], image_shape=(8, 8))
    trained = fit_model(x, names, labels, opts, source="builtin:digits", quiet=True)
    model_dir = tmp_path_factory.mktemp(request.param)
    publish_model(trained, model_dir)
    return request.param, opts, trained, model_dir


def test_round_trip_scores_match(fitted) -> None:  # type: ignore[no-untyped-def]
    _, _, trained, model_dir = fitted
    bundle = load_bundle(model_dir)
    scores = bundle.score(trained.heldout_x).scores
    assert np.allclose(scores, trained.heldout_errors, rtol=1e-5, atol=1e-7)
    assert bundle.threshold == trained.threshold
    codes = bundle.encode(trained.heldout_x[:5])
    assert codes.shape == (5, bundle.manifest.latent_dim)
    assert bundle.decode(codes).shape == (5, 64)
    assert bundle.manifest.architecture == trained.spec.architecture
    if trained.spec.architecture in ("dense", "vae"):
        assert bundle.inference == "numpy"  # the VAE's mean path too: no TensorFlow in the worker


def test_same_seed_same_scores(fitted, digits_one_class) -> None:  # type: ignore[no-untyped-def]
    _, opts, trained, _ = fitted
    x, names, labels = digits_one_class
    again = fit_model(x, names, labels, opts, quiet=True)
    assert abs(again.threshold - trained.threshold) < 1e-6
    assert np.allclose(again.heldout_errors, trained.heldout_errors, atol=1e-7)


def test_roc_auc_well_above_chance(fitted) -> None:  # type: ignore[no-untyped-def]
    name, _, trained, _ = fitted
    assert _auc(trained) > 0.9, name
    assert trained.manifest.validation_metrics["roc_auc"] == pytest.approx(_auc(trained))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dense", "denoising-dense", "vae", "sparse-dense"])
def test_tabular_sensors_well_above_chance(name: str, tmp_path: Path) -> None:
    ds = load_dataset("builtin:sensors")
    assert ds.labels is not None
    trained = fit_model(
        ds.x, ds.feature_names, ds.labels, replace(ARCHITECTURES[name], epochs=25), quiet=True
    )
    assert _auc(trained) > 0.9
    publish_model(trained, tmp_path)
    scores = load_bundle(tmp_path).score(trained.heldout_x).scores
    assert np.allclose(scores, trained.heldout_errors, rtol=1e-5, atol=1e-7)
