"""Autoencoder builders: dense (any tabular or flattened data), convolutional (images), denoising,
variational (``vae``) and sparse (an L1 activity penalty on the code of any of them).

Every model is an outer ``keras.Model`` holding two sub-models named ``encoder`` and ``decoder``
(`anomaly_contract.artifact.ModelBundle.encode`/``decode`` rely on those names). Denoising puts a
``GaussianNoise`` layer in front of the encoder: Keras only applies it in training, so scoring,
encoding and the calibration threshold all see clean inputs while the targets stay clean too.

The variational autoencoder is the dense one with a `GaussianCode` for its code layer: it samples
the code in training and adds the KL term to the loss; at inference it returns the mean code, so
its score is the reconstruction error of the mean code (deterministic, and the NumPy engine runs
it). ``kl_weight`` scales the KL term against the per-feature mean reconstruction loss: the KL
sum over code units is divided by the number of features, so 1.0 weighs both as the evidence
lower bound of a unit-variance Gaussian decoder would (up to its constant factor).

The sparse autoencoder follows the seeds' recipe: a ReLU code with an L1 activity penalty, so
code units are exactly zero where they are not needed (a linear code only shrinks under L1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from anomaly_contract.errors import ConfigError
from trainer.models_sequence import (
    SEQUENCE_ARCHITECTURES,
    default_sequence_hidden,
    sequence_parts,
)

if TYPE_CHECKING:  # pragma: no cover
    import keras

Architecture = Literal["dense", "conv", "vae", "lstm", "conv1d"]
ARCHITECTURES: tuple[str, ...] = ("dense", "conv", "vae", "lstm", "conv1d")
Loss = Literal["mse", "bce"]

# Caps keep the default model small enough to train on a laptop CPU for 784-pixel inputs while
# still leaving a real bottleneck for 10-feature tabular data.
MAX_LATENT = 32
MAX_HIDDEN = 256
# The VAE's default KL weight (see the module docstring); benchmarks/quality.py measures it.
DEFAULT_KL_WEIGHT = 0.05


@dataclass(frozen=True)
class ModelSpec:
    """What to build. ``hidden`` is layer widths for dense models and filter counts for conv."""

    architecture: Architecture
    n_features: int
    hidden: tuple[int, ...]
    latent: int
    loss: Loss = "mse"
    image_shape: tuple[int, ...] | None = None  # (H, W) or (H, W, C)
    denoise: float | None = None
    seed: int = 0
    activation: str = "relu"
    # L1 activity penalty on the code (the sparse autoencoder); None: off.
    sparsity: float | None = None
    kl_weight: float = DEFAULT_KL_WEIGHT  # the VAE's only
    # Sequence models (lstm, conv1d): steps per window; n_features is then the channels.
    window: int | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.architecture in ("dense", "vae"):
            return (self.n_features,)
        if self.architecture in SEQUENCE_ARCHITECTURES:
            assert self.window is not None
            return (self.window, self.n_features)
        assert self.image_shape is not None
        return _hwc(self.image_shape)


def _hwc(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) == 2:
        return (shape[0], shape[1], 1)
    if len(shape) == 3:
        return (shape[0], shape[1], shape[2])
    raise ConfigError(f"image shape must be HxW or HxWxC, got {'x'.join(map(str, shape))}")


def default_latent(n_features: int) -> int:
    """About a quarter of the inputs for small tables, shrinking relatively for wide inputs.

    10 features -> 3, 13 -> 4, 30 -> 7, 64 pixels -> 10, 784 pixels -> 32 (the cap).
    """
    if n_features <= 16:
        return max(2, math.ceil(n_features / 3.5))
    return int(min(MAX_LATENT, max(4, round(1.25 * math.sqrt(n_features)))))


def default_hidden(n_features: int, latent: int) -> tuple[int, ...]:
    """Dense widths between input and latent: halving steps from a power of two near the input."""
    first = min(MAX_HIDDEN, max(8, 2 ** math.ceil(math.log2(max(n_features, 2)))))
    if first >= n_features * 2 and n_features > 16:
        first //= 2
    widths = [first]
    while widths[-1] // 4 >= max(latent * 2, 16):
        widths.append(widths[-1] // 4)
    return tuple(widths)


def default_filters(image_shape: tuple[int, ...]) -> tuple[int, ...]:
    return (32, 64) if min(_hwc(image_shape)[:2]) >= 16 else (16, 32)


def pooling_stages(h: int, w: int, wanted: int) -> int:
    """How many 2x2 poolings fit while every side stays at least 2 pixels."""
    stages = 0
    while stages < wanted and math.ceil(min(h, w) / 2 ** (stages + 1)) >= 2:
        stages += 1
    return stages


def make_spec(
    *,
    n_features: int,
    architecture: Architecture | None = None,
    image_shape: tuple[int, ...] | None = None,
    hidden: tuple[int, ...] | None = None,
    latent: int | None = None,
    loss: Loss = "mse",
    denoise: float | None = None,
    seed: int = 0,
    activation: str = "relu",
    sparsity: float | None = None,
    kl_weight: float | None = None,
    window: int | None = None,
) -> ModelSpec:
    """Fill in defaults that follow the data and check the options fit together.

    ``window`` makes lstm and conv1d sequence models of ``n_features`` channels; their latent
    default follows the window's W * channels values, like a windowed dense model's."""
    if architecture is None:
        architecture = "dense"
    sequence = architecture in SEQUENCE_ARCHITECTURES
    if sequence and window is None:
        raise ConfigError(f"--architecture {architecture} scores windows: pass --window W")
    if architecture not in ARCHITECTURES:
        raise ConfigError(
            f"--architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture}"
        )
    if sparsity is not None and not sparsity >= 0:
        raise ConfigError(f"--sparsity must be an L1 weight >= 0 (0: off), got {sparsity}")
    if kl_weight is not None and not kl_weight > 0:
        raise ConfigError(f"--kl-weight must be positive, got {kl_weight}")
    if kl_weight is not None and architecture != "vae":
        raise ConfigError("--kl-weight applies to --architecture vae only")
    if sparsity and architecture == "vae":
        raise ConfigError(
            "--sparsity applies to dense and conv models: a VAE's code is regularised by its KL term"
        )
    if architecture == "conv":
        if image_shape is None:
            raise ConfigError(
                "--architecture conv needs image data: pass --image-shape HxW[xC] "
                "(or use an image data set such as builtin:digits)"
            )
        hwc = _hwc(image_shape)
        if hwc[0] * hwc[1] * hwc[2] != n_features:
            raise ConfigError(
                f"image shape {'x'.join(map(str, image_shape))} holds {hwc[0] * hwc[1] * hwc[2]} "
                f"values but the data has {n_features} features"
            )
    if latent is None:
        latent = default_latent(n_features * window if sequence and window else n_features)
    if latent < 1:
        raise ConfigError(f"--latent must be at least 1, got {latent}")
    if hidden is None:
        if sequence:
            hidden = default_sequence_hidden(architecture)
        elif architecture == "conv" and image_shape:
            hidden = default_filters(image_shape)
        else:
            hidden = default_hidden(n_features, latent)
    if any(h < 1 for h in hidden):
        raise ConfigError(f"--hidden sizes must be positive, got {','.join(map(str, hidden))}")
    if denoise is not None and not denoise >= 0:
        raise ConfigError(f"--denoise must be a noise factor >= 0 (0: off), got {denoise}")
    if loss not in ("mse", "bce"):
        raise ConfigError(f"--loss must be mse or bce, got {loss}")
    return ModelSpec(
        architecture=architecture,
        n_features=n_features,
        hidden=tuple(hidden),
        latent=latent,
        loss=loss,
        image_shape=tuple(image_shape) if image_shape else None,
        denoise=denoise or None,
        seed=seed,
        activation=activation,
        sparsity=sparsity or None,
        kl_weight=DEFAULT_KL_WEIGHT if kl_weight is None else float(kl_weight),
        window=window if sequence else None,
    )


def build_autoencoder(spec: ModelSpec) -> keras.Model:
    """Build (uncompiled) the autoencoder described by ``spec``."""
    import keras

    if spec.architecture in ("dense", "vae"):
        encoder, decoder = _dense_parts(spec)
    elif spec.architecture in SEQUENCE_ARCHITECTURES:
        encoder, decoder = sequence_parts(spec)
    else:
        encoder, decoder = _conv_parts(spec)
    inputs = keras.Input(shape=spec.input_shape, name="input")
    h = inputs
    if spec.denoise:
        h = keras.layers.GaussianNoise(spec.denoise, seed=spec.seed, name="noise")(h)
    outputs = decoder(encoder(h))
    return keras.Model(inputs, outputs, name=f"{spec.architecture}_autoencoder")


def _output_activation(spec: ModelSpec) -> str:
    # bce needs outputs in (0, 1); mse on standardised data needs an unbounded output.
    return "sigmoid" if spec.loss == "bce" else "linear"


def code_layer(spec: ModelSpec) -> keras.layers.Layer:
    """The bottleneck: a linear dense code, the VAE's Gaussian code, or a sparse ReLU code."""
    import keras

    if spec.architecture == "vae":
        from anomaly_contract.layers import GaussianCode

        return GaussianCode(
            spec.latent, kl_weight=spec.kl_weight / spec.n_features, seed=spec.seed, name="latent"
        )
    if spec.sparsity:
        return keras.layers.Dense(
            spec.latent,
            activation="relu",
            activity_regularizer=keras.regularizers.L1(spec.sparsity),
            name="latent",
        )
    return keras.layers.Dense(spec.latent, name="latent")


def _dense_parts(spec: ModelSpec) -> tuple[keras.Model, keras.Model]:
    import keras

    x_in = keras.Input(shape=(spec.n_features,), name="encoder_input")
    h = x_in
    for i, width in enumerate(spec.hidden):
        h = keras.layers.Dense(width, activation=spec.activation, name=f"enc_dense_{i}")(h)
    z = code_layer(spec)(h)
    encoder = keras.Model(x_in, z, name="encoder")

    z_in = keras.Input(shape=(spec.latent,), name="decoder_input")
    h = z_in
    for i, width in enumerate(reversed(spec.hidden)):
        h = keras.layers.Dense(width, activation=spec.activation, name=f"dec_dense_{i}")(h)
    out = keras.layers.Dense(
        spec.n_features, activation=_output_activation(spec), name="reconstruction"
    )(h)
    decoder = keras.Model(z_in, out, name="decoder")
    return encoder, decoder


def _conv_parts(spec: ModelSpec) -> tuple[keras.Model, keras.Model]:
    """Conv2D + max-pooling down to a dense latent code, up-sampling back, cropped to the input.

    Pooling uses "same" padding, so odd sides round up (7 -> 4 -> 2); the decoder doubles back
    (2 -> 4 -> 8) and crops the surplus so the output has exactly the input's shape.
    """
    import keras

    h_px, w_px, channels = spec.input_shape
    stages = pooling_stages(h_px, w_px, len(spec.hidden))
    x_in = keras.Input(shape=spec.input_shape, name="encoder_input")
    h = x_in
    hh, ww = h_px, w_px
    for i, filters in enumerate(spec.hidden):
        h = keras.layers.Conv2D(
            filters, 3, padding="same", activation="relu", name=f"enc_conv_{i}"
        )(h)
        if i < stages:
            h = keras.layers.MaxPooling2D(2, padding="same", name=f"enc_pool_{i}")(h)
            hh, ww = math.ceil(hh / 2), math.ceil(ww / 2)
    h = keras.layers.Flatten(name="flatten")(h)
    z = code_layer(spec)(h)
    encoder = keras.Model(x_in, z, name="encoder")

    z_in = keras.Input(shape=(spec.latent,), name="decoder_input")
    last = spec.hidden[-1]
    h = keras.layers.Dense(hh * ww * last, activation="relu", name="dec_dense")(z_in)
    h = keras.layers.Reshape((hh, ww, last), name="dec_reshape")(h)
    for i, filters in enumerate(reversed(spec.hidden)):
        stage = len(spec.hidden) - 1 - i
        if stage < stages:
            h = keras.layers.UpSampling2D(2, name=f"dec_up_{i}")(h)
            hh, ww = hh * 2, ww * 2
        h = keras.layers.Conv2D(
            filters, 3, padding="same", activation="relu", name=f"dec_conv_{i}"
        )(h)
    dh, dw = hh - h_px, ww - w_px
    if dh or dw:
        h = keras.layers.Cropping2D(
            ((dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2)), name="crop"
        )(h)
    out = keras.layers.Conv2D(
        channels, 3, padding="same", activation=_output_activation(spec), name="reconstruction"
    )(h)
    decoder = keras.Model(z_in, out, name="decoder")
    return encoder, decoder


def compile_autoencoder(model: keras.Model, loss: Loss, learning_rate: float) -> None:
    import keras

    keras_loss = "binary_crossentropy" if loss == "bce" else "mse"
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate), loss=keras_loss)
