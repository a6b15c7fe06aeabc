"""Sequence autoencoders on windows (W, channels): ``lstm`` and ``conv1d``.

``lstm`` is the Keras sequence-autoencoder recipe: an LSTM encoder whose last state feeds a
linear code, ``RepeatVector`` W times, an LSTM decoder returning sequences and a
``TimeDistributed`` dense layer back to the channels. With ``--sparsity`` both codes are
sparse ReLU codes with an L1 activity penalty, as the point models'. ``conv1d`` convolves along time, pools
down to a dense code and up-samples back (cropped to W). Both follow `trainer.models`' outer
model with sub-models ``encoder`` and ``decoder``. A windowed ``dense`` model needs nothing of
its own: it is the dense autoencoder on the flattened window (and scores with NumPy).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import keras

    from trainer.models import ModelSpec

SEQUENCE_ARCHITECTURES = ("lstm", "conv1d")
DEFAULT_LSTM_UNITS = (32,)
DEFAULT_CONV1D_FILTERS = (32, 16)
CONV1D_KERNEL = 5


def default_sequence_hidden(architecture: str) -> tuple[int, ...]:
    return DEFAULT_LSTM_UNITS if architecture == "lstm" else DEFAULT_CONV1D_FILTERS


def sequence_parts(spec: ModelSpec) -> tuple[keras.Model, keras.Model]:
    """The encoder and decoder of a sequence autoencoder for ``spec.input_shape`` (W, C)."""
    if spec.architecture == "lstm":
        return _lstm_parts(spec)
    return _conv1d_parts(spec)


def _code(spec: ModelSpec) -> keras.layers.Layer:
    """The bottleneck, as for point models: linear, or a sparse ReLU code with ``--sparsity``."""
    from trainer.models import code_layer

    return code_layer(spec)


def _lstm_parts(spec: ModelSpec) -> tuple[keras.Model, keras.Model]:
    import keras

    window, channels = spec.input_shape
    x_in = keras.Input(shape=(window, channels), name="encoder_input")
    h = x_in
    for i, units in enumerate(spec.hidden):
        last = i == len(spec.hidden) - 1
        h = keras.layers.LSTM(units, return_sequences=not last, name=f"enc_lstm_{i}")(h)
    z = _code(spec)(h)
    encoder = keras.Model(x_in, z, name="encoder")

    z_in = keras.Input(shape=(spec.latent,), name="decoder_input")
    h = keras.layers.RepeatVector(window, name="repeat")(z_in)
    for i, units in enumerate(reversed(spec.hidden)):
        h = keras.layers.LSTM(units, return_sequences=True, name=f"dec_lstm_{i}")(h)
    out = keras.layers.TimeDistributed(keras.layers.Dense(channels), name="reconstruction")(h)
    return encoder, keras.Model(z_in, out, name="decoder")


def conv1d_stages(window: int, wanted: int) -> int:
    """How many halvings of the time axis fit while it keeps at least 2 steps."""
    stages = 0
    while stages < wanted and math.ceil(window / 2 ** (stages + 1)) >= 2:
        stages += 1
    return stages


def _conv1d_parts(spec: ModelSpec) -> tuple[keras.Model, keras.Model]:
    import keras

    window, channels = spec.input_shape
    stages = conv1d_stages(window, len(spec.hidden))
    x_in = keras.Input(shape=(window, channels), name="encoder_input")
    h, steps = x_in, window
    for i, filters in enumerate(spec.hidden):
        h = keras.layers.Conv1D(
            filters, CONV1D_KERNEL, padding="same", activation="relu", name=f"enc_conv_{i}"
        )(h)
        if i < stages:
            h = keras.layers.MaxPooling1D(2, padding="same", name=f"enc_pool_{i}")(h)
            steps = math.ceil(steps / 2)
    h = keras.layers.Flatten(name="flatten")(h)
    z = _code(spec)(h)
    encoder = keras.Model(x_in, z, name="encoder")

    z_in = keras.Input(shape=(spec.latent,), name="decoder_input")
    last = spec.hidden[-1]
    h = keras.layers.Dense(steps * last, activation="relu", name="dec_dense")(z_in)
    h = keras.layers.Reshape((steps, last), name="dec_reshape")(h)
    for i, filters in enumerate(reversed(spec.hidden)):
        if len(spec.hidden) - 1 - i < stages:
            h = keras.layers.UpSampling1D(2, name=f"dec_up_{i}")(h)
            steps *= 2
        h = keras.layers.Conv1D(
            filters, CONV1D_KERNEL, padding="same", activation="relu", name=f"dec_conv_{i}"
        )(h)
    if steps > window:
        h = keras.layers.Cropping1D((0, steps - window), name="crop")(h)
    out = keras.layers.Conv1D(channels, CONV1D_KERNEL, padding="same", name="reconstruction")(h)
    return encoder, keras.Model(z_in, out, name="decoder")
