"""NumPy inference for every other architecture (conv, lstm, conv1d, sparse and denoising ones):
the Keras layers as a list of `numpy_layers` ops, saved as ``inference_layers.npz``.

The trainer extracts the layers when it publishes (`LayerEngine.from_keras`, the one place that
reads Keras objects); the worker loads the file with NumPy alone. Float64 throughout, for the
reason `DenseEngine` gives: a record's score must not depend on the batch it arrives in.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from anomaly_contract.engines import ACTIVATIONS, INFERENCE_IDENTITY
from anomaly_contract.errors import ArtifactError
from anomaly_contract.numpy_layers import OPS

if TYPE_CHECKING:  # pragma: no cover
    import keras

# Rows per pass: a conv layer's activations for 512 rows of 28x28x32 are ~100 MB in float64.
ENGINE_CHUNK_ROWS = 512
_SPEC = "spec"


@dataclass(frozen=True)
class LayerOp:
    """One layer: an op name from `numpy_layers.OPS`, its settings and weights (float64)."""

    kind: str
    settings: dict[str, Any]
    weights: list[np.ndarray]

    def __call__(self, h: np.ndarray) -> np.ndarray:
        return OPS[self.kind](h, self.weights, self.settings)


@dataclass(frozen=True)
class LayerEngine:
    """An autoencoder's forward pass as NumPy ops: ``encoder`` then ``decoder``."""

    kind: ClassVar[str] = "numpy"
    input_shape: tuple[int, ...]
    encoder: list[LayerOp]
    decoder: list[LayerOp]

    def _run(self, h: np.ndarray, ops: Sequence[LayerOp]) -> np.ndarray:
        h = np.asarray(h, dtype=np.float64)
        pieces = []
        with np.errstate(over="ignore", invalid="ignore"):
            for start in range(0, h.shape[0], ENGINE_CHUNK_ROWS):
                out = h[start : start + ENGINE_CHUNK_ROWS]
                for op in ops:
                    out = op(out)
                pieces.append(out.reshape(out.shape[0], -1))
        if not pieces:
            return np.zeros((0, 0), dtype=np.float64)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def reconstruct(self, xs: np.ndarray) -> np.ndarray:
        """Scaled inputs (n, input_size) -> reconstructions (n, input_size), float64."""
        inputs = np.asarray(xs, dtype=np.float64).reshape(-1, *self.input_shape)
        return self._run(inputs, [*self.encoder, *self.decoder])

    def encode(self, xs: np.ndarray) -> np.ndarray:
        """Latent codes, float32 like the Keras encoder's."""
        inputs = np.asarray(xs, dtype=np.float64).reshape(-1, *self.input_shape)
        return self._run(inputs, self.encoder).astype(np.float32)

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Codes (n, latent) -> flat reconstructions (n, input_size)."""
        return self._run(z, self.decoder)

    @classmethod
    def from_keras(cls, model: keras.Model) -> LayerEngine | None:
        """The ops of ``model``'s encoder and decoder; None when a layer has no NumPy form."""
        parts = {layer.name: layer for layer in model.layers}
        others = [
            layer
            for layer in model.layers
            if layer.name not in ("encoder", "decoder")
            and type(layer).__name__ not in INFERENCE_IDENTITY
        ]
        if others or "encoder" not in parts or "decoder" not in parts:
            return None
        encoder = _ops_of(parts["encoder"])
        decoder = _ops_of(parts["decoder"])
        if encoder is None or decoder is None:
            return None
        return cls(tuple(int(d) for d in model.input_shape[1:]), encoder, decoder)

    def save(self, path: Path) -> None:
        spec: dict[str, Any] = {"input_shape": list(self.input_shape)}
        arrays: dict[str, np.ndarray] = {}
        for part, ops in (("encoder", self.encoder), ("decoder", self.decoder)):
            spec[part] = [{"kind": op.kind, "settings": op.settings} for op in ops]
            for i, op in enumerate(ops):
                for j, w in enumerate(op.weights):
                    arrays[f"{part}_{i}_{j}"] = w.astype(np.float32)
        arrays[_SPEC] = np.asarray(json.dumps(spec))
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path) -> LayerEngine:
        """Read ``inference_layers.npz``; ArtifactError when it is unreadable or names an op or
        activation this version of the package does not know."""
        try:
            with np.load(path, allow_pickle=False) as stored:
                spec = json.loads(str(stored[_SPEC]))
                arrays = {
                    name: stored[name].astype(np.float64) for name in stored.files if name != _SPEC
                }
            parts = {
                part: _ops_from_spec(part, spec[part], arrays) for part in ("encoder", "decoder")
            }
            input_shape = tuple(int(d) for d in spec["input_shape"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{path} cannot be loaded: {exc}") from exc
        return cls(input_shape, parts["encoder"], parts["decoder"])


def _ops_from_spec(
    part: str, entries: list[dict[str, Any]], arrays: dict[str, np.ndarray]
) -> list[LayerOp]:
    ops = []
    for i, entry in enumerate(entries):
        kind, settings = entry["kind"], entry["settings"]
        if kind not in OPS:
            raise ValueError(f"unknown layer op {kind!r}")
        for key in ("activation", "recurrent_activation"):
            if key in settings and settings[key] not in ACTIVATIONS:
                raise ValueError(f"unsupported activation {settings[key]!r}")
        count = sum(1 for name in arrays if name.startswith(f"{part}_{i}_"))
        ops.append(LayerOp(kind, settings, [arrays[f"{part}_{i}_{j}"] for j in range(count)]))
    return ops


# --------------------------------------------------------------------------------------------
# From Keras layers (publish time only)
# --------------------------------------------------------------------------------------------
def _ops_of(part: Any) -> list[LayerOp] | None:
    ops = []
    for layer in part.layers:
        if type(layer).__name__ in INFERENCE_IDENTITY:
            continue
        op = _op_of(layer)
        if op is None:
            return None
        ops.append(op)
    return ops


def _weights(layer: Any) -> list[np.ndarray]:
    return [np.asarray(w, dtype=np.float64) for w in layer.get_weights()]


def _activation(cfg: dict[str, Any], key: str = "activation") -> str | None:
    name = cfg.get(key)
    return name if isinstance(name, str) and name in ACTIVATIONS else None


def _dense_op(layer: Any) -> LayerOp | None:
    cfg = layer.get_config()
    act = _activation(cfg)
    if act is None:
        return None
    weights = _weights(layer)
    if len(weights) == 1:
        weights.append(np.zeros(weights[0].shape[-1], dtype=np.float64))
    return LayerOp("dense", {"activation": act}, weights)


def _conv_op(layer: Any) -> LayerOp | None:
    cfg = layer.get_config()
    act = _activation(cfg)
    plain = (
        all(s == 1 for s in cfg["strides"])
        and all(d == 1 for d in cfg["dilation_rate"])
        and cfg.get("groups", 1) == 1
        and cfg["padding"] in ("same", "valid")
        and cfg.get("data_format", "channels_last") == "channels_last"
    )
    if act is None or not plain:
        return None
    weights = _weights(layer)
    if len(weights) == 1:
        weights.append(np.zeros(weights[0].shape[-1], dtype=np.float64))
    return LayerOp("conv", {"activation": act, "padding": cfg["padding"]}, weights)


def _lstm_op(layer: Any) -> LayerOp | None:
    cfg = layer.get_config()
    act, rec = _activation(cfg), _activation(cfg, "recurrent_activation")
    if act is None or rec is None or cfg.get("go_backwards") or cfg.get("return_state"):
        return None
    weights = _weights(layer)
    if len(weights) == 2:
        weights.append(np.zeros(weights[0].shape[-1], dtype=np.float64))
    settings = {
        "activation": act,
        "recurrent_activation": rec,
        "return_sequences": bool(cfg["return_sequences"]),
    }
    return LayerOp("lstm", settings, weights)


def _shape_op(layer: Any, kind: str) -> LayerOp | None:
    cfg = layer.get_config()
    if cfg.get("data_format", "channels_last") != "channels_last":
        return None
    if kind == "max_pool":
        settings = {
            "pool_size": list(cfg["pool_size"]),
            "strides": list(cfg["strides"] or cfg["pool_size"]),
            "padding": cfg["padding"],
        }
    elif kind == "up_sample":
        if cfg.get("interpolation", "nearest") != "nearest":
            return None
        size = cfg["size"]
        settings = {"size": [size] if isinstance(size, int) else list(size)}
    elif kind == "crop":
        cropping = cfg["cropping"]
        pairs = [cropping] if isinstance(cropping[0], int) else cropping
        settings = {"cropping": [[int(b), int(e)] for b, e in pairs]}
    elif kind == "reshape":
        settings = {"target_shape": [int(d) for d in cfg["target_shape"]]}
    elif kind == "repeat_vector":
        settings = {"n": int(cfg["n"])}
    else:
        settings = {}
    return LayerOp(kind, settings, [])


_SHAPE_LAYERS = {
    "MaxPooling1D": "max_pool",
    "MaxPooling2D": "max_pool",
    "UpSampling1D": "up_sample",
    "UpSampling2D": "up_sample",
    "Cropping1D": "crop",
    "Cropping2D": "crop",
    "Flatten": "flatten",
    "Reshape": "reshape",
    "RepeatVector": "repeat_vector",
}


def _op_of(layer: Any) -> LayerOp | None:
    kind = type(layer).__name__
    if kind == "GaussianCode":  # a VAE's code: its mean branch at inference
        return _dense_op(layer.mean)
    if kind == "TimeDistributed":
        inner = layer.layer
        return _dense_op(inner) if type(inner).__name__ == "Dense" else None
    if kind == "Dense":
        return _dense_op(layer)
    if kind in ("Conv1D", "Conv2D"):
        return _conv_op(layer)
    if kind == "LSTM":
        return _lstm_op(layer)
    if kind in _SHAPE_LAYERS:
        return _shape_op(layer, _SHAPE_LAYERS[kind])
    return None
