"""Inference engines for a model version: NumPy, so scoring needs no TensorFlow.

`DenseEngine` runs dense models (and the VAE's mean path); `anomaly_contract.layer_engine`
runs every other architecture, and `anomaly_contract.onnx_engine` runs those through ONNX
Runtime when the version has a graph. All satisfy `Engine`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from anomaly_contract.errors import ArtifactError

if TYPE_CHECKING:  # pragma: no cover
    import keras


class Engine(Protocol):
    """What `ModelBundle` needs of an inference engine: flat scaled rows in, reconstructions
    out; ``kind`` names the runtime ("numpy", "onnxruntime")."""

    kind: ClassVar[str]

    def reconstruct(self, xs: np.ndarray) -> np.ndarray: ...

    def encode(self, xs: np.ndarray) -> np.ndarray: ...

    def decode(self, z: np.ndarray) -> np.ndarray: ...


# --------------------------------------------------------------------------------------------
# NumPy inference for dense models
# --------------------------------------------------------------------------------------------
def _sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) in place; exp overflows to inf for x < -709, which gives 0 as it should."""
    with np.errstate(over="ignore"):
        np.negative(x, out=x)
        np.exp(x, out=x)
    x += 1.0
    return np.reciprocal(x, out=x)


def _tanh(x: np.ndarray) -> np.ndarray:
    """tanh in place as 2 / (1 + exp(-2x)) - 1: NumPy's float64 ``tanh`` costs ~2.5x its ``exp``
    here (no SIMD tanh for float64 below AVX-512) and was the largest part of scoring a batch.
    Absolute error <= 4e-16 of the true value (what the next layer's product sees); exp
    overflows to inf for x < -354, which gives -1 as it should."""
    with np.errstate(over="ignore"):
        np.multiply(x, -2.0, out=x)
        np.exp(x, out=x)
    x += 1.0
    np.divide(2.0, x, out=x)
    x -= 1.0
    return x


# Each works in place on the layer's fresh output and returns it.
ACTIVATIONS: dict[str, Any] = {
    "linear": None,
    "relu": lambda x: np.maximum(x, 0, out=x),
    "tanh": _tanh,
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
    "sigmoid": _sigmoid,
}
# Layers that are the identity at inference time.
INFERENCE_IDENTITY = {
    "InputLayer",
    "GaussianNoise",
    "GaussianDropout",
    "Dropout",
    "ActivityRegularization",
}


@dataclass(frozen=True)
class DenseEngine:
    """A dense autoencoder's forward pass in NumPy (Keras's maths, in float64).

    Float64, not Keras's float32: BLAS sums a matrix product in an order that depends on how many
    rows it is given, so in float32 a record's reconstruction changes in the last bits with the
    batch it arrives in, and the squared error of a well-reconstructed record magnifies that
    cancellation to ~1e-5 of its score. In float64 the same wobble is ~1e-12 of the score, so the
    worker's micro-batches and `anomaly-trainer score` agree whatever the batch split. The weights
    are the float32 ones Keras trained, widened exactly; the file keeps them in float32.
    """

    kind: ClassVar[str] = "numpy"
    kernels: list[np.ndarray]  # float64
    biases: list[np.ndarray]  # float64
    activations: list[str]
    n_encoder: int  # layers [0, n_encoder) form the encoder

    def _run(self, h: np.ndarray, layers: range) -> np.ndarray:
        h = np.asarray(h, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            return self._layers(h, layers)

    def _layers(self, h: np.ndarray, layers: range) -> np.ndarray:
        # Extreme inputs may overflow: the caller turns non-finite scores into dead letters.
        for i in layers:
            h = h @ self.kernels[i]
            h += self.biases[i]
            fn = ACTIVATIONS[self.activations[i]]
            if fn is not None:
                h = fn(h)
        return h

    def reconstruct(self, xs: np.ndarray) -> np.ndarray:
        """Scaled rows -> reconstructions, float64 (see the class docstring)."""
        return self._run(xs, range(len(self.kernels)))

    def encode(self, xs: np.ndarray) -> np.ndarray:
        """Latent codes, float32 like the Keras encoder's (what `anomaly-trainer encode` writes)."""
        return self._run(xs, range(self.n_encoder)).astype(np.float32)

    def decode(self, z: np.ndarray) -> np.ndarray:
        return self._run(z, range(self.n_encoder, len(self.kernels)))

    @classmethod
    def from_keras(cls, model: keras.Model) -> DenseEngine | None:
        """Extract the weights when every layer is Dense (or inference-time identity); else None."""
        parts = [layer for layer in model.layers if type(layer).__name__ not in INFERENCE_IDENTITY]
        if [p.name for p in parts] != ["encoder", "decoder"]:
            return None
        kernels, biases, acts = [], [], []
        n_encoder = 0
        for part in parts:
            for layer in part.layers:
                kind = type(layer).__name__
                if kind in INFERENCE_IDENTITY:
                    continue
                if kind == "GaussianCode":  # a VAE's code: its mean branch at inference
                    layer = layer.mean
                elif kind != "Dense":
                    return None
                act = layer.get_config().get("activation")
                if not isinstance(act, str) or act not in ACTIVATIONS:
                    return None
                weights = layer.get_weights()
                kernel = np.asarray(weights[0], np.float64)
                bias = (
                    np.asarray(weights[1], np.float64)
                    if len(weights) > 1
                    else np.zeros(kernel.shape[1], np.float64)
                )
                kernels.append(kernel)
                biases.append(bias)
                acts.append(act)
            if part.name == "encoder":
                n_encoder = len(kernels)
        return cls(kernels, biases, acts, n_encoder) if kernels else None

    def save(self, path: Path) -> None:
        arrays: dict[str, np.ndarray] = {
            "activations": np.asarray(self.activations, dtype=np.str_),
            "n_encoder": np.asarray(self.n_encoder),
        }
        for i, (k, b) in enumerate(zip(self.kernels, self.biases, strict=True)):
            arrays[f"kernel_{i}"], arrays[f"bias_{i}"] = k.astype(np.float32), b.astype(np.float32)
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path) -> DenseEngine:
        with np.load(path, allow_pickle=False) as z:
            acts = [str(a) for a in z["activations"]]
            n = len(acts)
            kernels = [z[f"kernel_{i}"].astype(np.float64) for i in range(n)]
            biases = [z[f"bias_{i}"].astype(np.float64) for i in range(n)]
            n_encoder = int(z["n_encoder"])
        unknown = set(acts) - set(ACTIVATIONS)
        if unknown:
            raise ArtifactError(f"{path}: unsupported activations {sorted(unknown)}")
        for i in range(1, n):
            if kernels[i].shape[0] != kernels[i - 1].shape[1]:
                raise ArtifactError(f"{path}: layer {i} does not fit layer {i - 1}")
        return cls(kernels, biases, acts, n_encoder)


# --------------------------------------------------------------------------------------------


def check_zip(path: Path) -> None:
    """Both .keras and .npz files are zip archives: verify every member's CRC without Keras."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (OSError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"{path} is missing or corrupt: {exc}") from exc
    if bad is not None:
        raise ArtifactError(f"{path} is corrupt: member {bad} fails its checksum")


def load_keras_model(model_file: Path, input_shape: Sequence[int]) -> keras.Model:
    """The Keras autoencoder in ``model_file``, refused unless it takes ``input_shape``."""
    import keras

    import anomaly_contract.layers  # noqa: F401  (registers the custom layers models may hold)

    try:
        model = keras.saving.load_model(model_file, compile=False)
    except Exception as exc:  # Keras raises many types for a corrupt file
        raise ArtifactError(f"{model_file} cannot be loaded: {exc}") from exc
    expected = tuple(input_shape)
    got = tuple(model.input_shape[1:])
    if got != expected:
        raise ArtifactError(f"{model_file.parent}: model input shape {got} != manifest {expected}")
    return model
