"""Custom Keras layers stored inside model files, so both processes can load them.

Importing this module imports Keras; `anomaly_contract.engines.load_keras_model` does so before
loading a model, which registers the layers for deserialization.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="anomaly_contract")
class GaussianCode(keras.layers.Layer):
    """The variational autoencoder's code: a mean and a log-variance from the same input.

    In training it samples ``mean + exp(log_var / 2) * eps`` (the reparameterisation trick) and
    adds ``kl_weight * KL(q(z|x) || N(0, I))`` per row, averaged over the batch, to the loss. At
    inference it returns the mean: scoring, encoding and calibration are deterministic, and the
    NumPy engine runs the mean branch as a plain dense layer.
    """

    def __init__(
        self,
        units: int,
        kl_weight: float = 1.0,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.units = int(units)
        self.kl_weight = float(kl_weight)
        self.seed = seed
        self.mean = keras.layers.Dense(self.units, name="mean")
        # Starting at log-variance 0 (unit variance) with small weights keeps early steps stable.
        self.log_var = keras.layers.Dense(self.units, name="log_var", kernel_initializer="zeros")
        self.noise = keras.random.SeedGenerator(seed)

    def build(self, input_shape: Any) -> None:
        self.mean.build(input_shape)
        self.log_var.build(input_shape)

    def call(self, h: Any, training: bool | None = None) -> Any:
        mean = self.mean(h)
        if not training:
            return mean
        log_var = ops.clip(self.log_var(h), -10.0, 10.0)
        kl = -0.5 * ops.sum(1.0 + log_var - ops.square(mean) - ops.exp(log_var), axis=-1)
        self.add_loss(self.kl_weight * ops.mean(kl))
        eps = keras.random.normal(ops.shape(mean), seed=self.noise)
        return mean + ops.exp(0.5 * log_var) * eps

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return (*tuple(input_shape)[:-1], self.units)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(units=self.units, kl_weight=self.kl_weight, seed=self.seed)
        return config
