"""Model builders: shapes fit the data, sub-models are named, noise only acts in training."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_contract.errors import ConfigError
from trainer.models import build_autoencoder, default_hidden, default_latent, make_spec


@pytest.mark.parametrize("d", [3, 10, 30, 64, 784])
def test_default_sizes_follow_the_data(d: int) -> None:
    latent = default_latent(d)
    hidden = default_hidden(d, latent)
    assert 2 <= latent < d
    assert latent <= 32
    assert all(h > latent for h in hidden)
    assert max(hidden) <= 256
    assert list(hidden) == sorted(hidden, reverse=True)


@pytest.mark.parametrize(
    "shape",
    [(8, 8), (28, 28), (7, 7), (5, 9), (6, 6, 3), (3, 3)],
    ids=lambda s: "x".join(map(str, s)),
)
def test_conv_output_matches_input_shape(shape: tuple[int, ...]) -> None:
    n = int(np.prod(shape))
    spec = make_spec(n_features=n, architecture="conv", image_shape=shape)
    model = build_autoencoder(spec)
    x = np.random.default_rng(0).random((2, *spec.input_shape)).astype("float32")
    out = np.asarray(model(x))
    assert out.shape == x.shape
    assert model.get_layer("encoder").output.shape[-1] == spec.latent
    assert model.get_layer("decoder").input.shape[-1] == spec.latent


def test_dense_has_named_submodels_and_bce_sigmoid() -> None:
    spec = make_spec(n_features=10, loss="bce")
    model = build_autoencoder(spec)
    enc, dec = model.get_layer("encoder"), model.get_layer("decoder")
    assert enc.output.shape[-1] == spec.latent
    out = np.asarray(model(np.full((4, 10), 100.0, dtype="float32")))
    assert ((out >= 0) & (out <= 1)).all()
    assert dec.output.shape[-1] == 10


def test_noise_layer_only_in_training() -> None:
    spec = make_spec(n_features=10, denoise=0.5)
    model = build_autoencoder(spec)
    assert model.layers[1].name == "noise"
    x = np.ones((3, 10), dtype="float32")
    clean = np.asarray(model(x, training=False))
    assert np.allclose(clean, np.asarray(model(x, training=False)))
    assert not np.allclose(clean, np.asarray(model(x, training=True)))


def test_refusals() -> None:
    with pytest.raises(ConfigError, match="image"):
        make_spec(n_features=64, architecture="conv")
    with pytest.raises(ConfigError, match="holds 49"):
        make_spec(n_features=64, architecture="conv", image_shape=(7, 7))
    with pytest.raises(ConfigError, match="denoise"):
        make_spec(n_features=10, denoise=-1.0)
    with pytest.raises(ConfigError, match="latent"):
        make_spec(n_features=10, latent=0)
