"""ONNX Runtime for the architectures it runs faster than NumPy (conv, lstm, conv1d: see the
README's inference figures): the whole autoencoder as ``inference.onnx``.

The trainer exports the graph when it publishes (`export_onnx`, Keras 3's
``model.export(format="onnx")``, which needs tf2onnx from the ``train`` extra); the worker runs
it with onnxruntime, imported only when a version has the file. The graph reconstructs; codes
and decodings come from the version's `LayerEngine`, which is always written next to it. ONNX
Runtime computes in float32 like Keras, so a record's score may move by ~1e-6 of its value with
the batch it arrives in (NumPy's float64 engines move it by ~1e-12).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from anomaly_contract.errors import ArtifactError
from anomaly_contract.layer_engine import LayerEngine

if TYPE_CHECKING:  # pragma: no cover
    import keras

# Rows per session call: bounds the activations' memory for large offline files.
ONNX_CHUNK_ROWS = 1024


@dataclass(frozen=True)
class OnnxEngine:
    """Reconstruction through an ONNX Runtime session; encode/decode through ``layers``."""

    kind: ClassVar[str] = "onnxruntime"
    session: Any
    input_name: str
    input_shape: tuple[int, ...]
    layers: LayerEngine

    def reconstruct(self, xs: np.ndarray) -> np.ndarray:
        """Scaled inputs (n, input_size) -> reconstructions (n, input_size), float32."""
        n = xs.shape[0]
        inputs = np.ascontiguousarray(xs, dtype=np.float32).reshape(n, *self.input_shape)
        out = np.empty((n, int(np.prod(self.input_shape))), dtype=np.float32)
        for start in range(0, n, ONNX_CHUNK_ROWS):
            chunk = inputs[start : start + ONNX_CHUNK_ROWS]
            (rec,) = self.session.run(None, {self.input_name: chunk})
            out[start : start + chunk.shape[0]] = rec.reshape(chunk.shape[0], -1)
        return out

    def encode(self, xs: np.ndarray) -> np.ndarray:
        return self.layers.encode(xs)

    def decode(self, z: np.ndarray) -> np.ndarray:
        return self.layers.decode(z)

    @classmethod
    def load(cls, path: Path, layers: LayerEngine) -> OnnxEngine | None:
        """A session of ``path``; None when onnxruntime is not installed (NumPy scores then)."""
        try:
            import onnxruntime as ort
        except ImportError:
            return None
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: ORT's warnings are not the worker's log
        # Idle pool threads sleep instead of spinning: spinning took the CPUs kafka-python's
        # I/O thread needs (as OpenBLAS's did, see worker/__init__.py).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own types for a bad graph
            raise ArtifactError(f"{path} cannot be loaded: {str(exc).splitlines()[0]}") from exc
        (graph_input,) = session.get_inputs()
        return cls(session, graph_input.name, layers.input_shape, layers)


def export_onnx(model: keras.Model, path: Path) -> bool:
    """Write ``model`` as an ONNX graph; False when tf2onnx is not installed or cannot convert
    it (the version's NumPy form serves then). The export's prints and warnings (tf2onnx's)
    are swallowed: the trainer's output stays its own."""
    import importlib.util

    if importlib.util.find_spec("tf2onnx") is None:
        return False
    sink = io.StringIO()
    # An activity regulariser only adds a training loss, but its ops make TensorFlow's graph
    # optimiser fail in tf2onnx ("Failed to import metagraph"): off for the export.
    regularised = [(layer, layer.activity_regularizer) for layer in _all_layers(model)]
    regularised = [(layer, reg) for layer, reg in regularised if reg is not None]
    try:
        for layer, _ in regularised:
            layer.activity_regularizer = None
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            model(np.zeros((1, *model.input_shape[1:]), np.float32))  # export needs a call
            model.export(str(path), format="onnx", verbose=False)
    except Exception:  # tf2onnx raises many types; the NumPy form serves then
        path.unlink(missing_ok=True)
        return False
    finally:
        for layer, reg in regularised:
            layer.activity_regularizer = reg
    return True


def _all_layers(model: Any) -> list[Any]:
    """Every layer of ``model``, inside its sub-models too."""
    found = []
    for layer in model.layers:
        found.append(layer)
        if hasattr(layer, "layers"):
            found.extend(_all_layers(layer))
    return found
