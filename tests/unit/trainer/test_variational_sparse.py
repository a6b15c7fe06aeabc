"""The variational and sparse autoencoders: what makes them what they are, and that they score
deterministically, load without training code and run on the NumPy engine."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from trainer_rows import FEATURES, QUICK, correlated_rows

from anomaly_contract.errors import ConfigError
from anomaly_contract.model_dir import load_bundle
from trainer.fit import fit_model
from trainer.models import build_autoencoder, make_spec
from trainer.publish import publish_model
from trainer.report import active_code_units, write_report


def test_gaussian_code_samples_in_training_and_returns_the_mean_at_inference() -> None:
    model = build_autoencoder(make_spec(n_features=6, architecture="vae", latent=3, seed=0))
    encoder = model.get_layer("encoder")
    x = correlated_rows(8)
    mean = np.asarray(encoder(x, training=False))
    assert np.array_equal(mean, np.asarray(encoder(x, training=False)))
    assert not np.allclose(mean, np.asarray(encoder(x, training=True)))
    model(x, training=True)
    assert len(model.losses) == 1 and float(model.losses[0]) >= 0.0  # the KL term


def test_sparse_code_is_relu_with_an_l1_penalty_on_it() -> None:
    model = build_autoencoder(make_spec(n_features=6, sparsity=0.01))
    encoder = model.get_layer("encoder")
    code = encoder.get_layer("latent")
    assert code.get_config()["activation"] == "relu"
    x = np.r_[correlated_rows(8), -correlated_rows(8)]  # both signs: some units are on
    z = np.asarray(encoder(x, training=False))
    model(x, training=True)
    assert len(model.losses) == 1
    assert float(model.losses[0]) == pytest.approx(0.01 * np.abs(z).sum() / len(x), rel=1e-4)


def test_refusals() -> None:
    with pytest.raises(ConfigError, match="sparsity"):
        make_spec(n_features=6, sparsity=-1.0)
    with pytest.raises(ConfigError, match="kl-weight"):
        make_spec(n_features=6, kl_weight=0.1)  # not a VAE
    with pytest.raises(ConfigError, match="kl-weight"):
        make_spec(n_features=6, architecture="vae", kl_weight=0.0)
    with pytest.raises(ConfigError, match="KL term"):
        make_spec(n_features=6, architecture="vae", sparsity=0.1)
    with pytest.raises(ConfigError, match="architecture"):
        make_spec(n_features=6, architecture="lstm")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def vae_published(tabular, tmp_path_factory):  # type: ignore[no-untyped-def]
    x, labels = tabular
    trained = fit_model(x, FEATURES, labels, replace(QUICK, architecture="vae"), quiet=True)
    model_dir = tmp_path_factory.mktemp("vae")
    publish_model(trained, model_dir)
    return model_dir, trained


def test_vae_scores_its_mean_code_deterministically_on_numpy(vae_published) -> None:  # type: ignore[no-untyped-def]
    model_dir, trained = vae_published
    bundle = load_bundle(model_dir)
    assert bundle.inference == "numpy" and bundle.manifest.architecture == "vae"
    assert bundle.manifest.hyperparameters["kl_weight"] > 0
    first = bundle.score(trained.heldout_x).scores
    assert np.array_equal(first, bundle.score(trained.heldout_x).scores)
    assert np.allclose(first, trained.heldout_errors, rtol=1e-5, atol=1e-7)
    # The NumPy mean path equals Keras's inference path on the same rows.
    xs = bundle.scaler.transform(trained.heldout_x[:16]).astype(np.float32)
    keras_codes = np.asarray(bundle.model.get_layer("encoder")(xs, training=False))
    assert np.allclose(bundle.encode(trained.heldout_x[:16]), keras_codes, rtol=1e-5, atol=1e-6)


def test_sparsity_silences_code_units_and_the_report_shows_it(tabular, tmp_path: Path) -> None:
    x, labels = tabular
    opts = replace(QUICK, latent=6, seed=3)
    plain = fit_model(x, FEATURES, labels, opts, quiet=True)
    sparse = fit_model(x, FEATURES, labels, replace(opts, sparsity=0.05), quiet=True)

    def active(trained) -> float:  # type: ignore[no-untyped-def]
        xs = trained.scaler.transform(trained.heldout_x).astype(np.float32)
        codes = np.asarray(trained.model.get_layer("encoder")(xs, training=False))
        return float(active_code_units(codes).mean())

    assert active(sparse) < active(plain)
    written = write_report(
        tmp_path,
        manifest=sparse.manifest,
        scaler=sparse.scaler,
        model=sparse.model,
        x=sparse.heldout_x,
        labels=sparse.heldout_labels,
        errors=sparse.heldout_errors,
    )
    assert tmp_path / "code_activity.png" in written
    assert (tmp_path / "code_activity.png").stat().st_size > 5000
