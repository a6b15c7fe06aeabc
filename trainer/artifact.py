"""The versioned model artifact: the one contract between trainer and worker.

A model directory looks like this::

    MODEL_DIR/
      CURRENT                 # name of the current version, replaced atomically
      versions/v1/            # immutable once published
        manifest.json         # strict, format-versioned (see `Manifest`)
        scaler.json           # feature scaling fitted on training rows only
        model.keras           # the Keras autoencoder (sub-models "encoder" and "decoder")
      versions/v2/ ...

A version is written into a staging directory and renamed into ``versions/`` in one step, then
``CURRENT`` is replaced with ``os.replace``: a reader polling the directory sees the old version or
the new one, never a half-written or mixed one, even when the writer is killed midway.

This module holds no training code; the worker imports it (and nothing else from the trainer).
Keras and TensorFlow are imported lazily so that listing versions stays fast.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainer.errors import ArtifactError, VersionNotFoundError

if TYPE_CHECKING:  # pragma: no cover
    import keras

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
SCALER_FILE = "scaler.json"
MODEL_FILE = "model.keras"
# Optional: the same weights as plain arrays for dense models, so readers can score with NumPy
# alone (no TensorFlow import: the worker starts in ~1 s and stays ~5x smaller in memory).
DENSE_WEIGHTS_FILE = "dense_weights.npz"
OPTIONAL_FILES = (DENSE_WEIGHTS_FILE,)
CURRENT_FILE = "CURRENT"
VERSIONS_DIR = "versions"
DEFAULT_KEEP = 10
# Rows per inference call: bounds memory for large offline files without changing any score.
SCORE_CHUNK_ROWS = 4096
_VERSION_RE = re.compile(r"^v(\d+)$")


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScalerParams(_Strict):
    """Affine scaling ``(x - offset) / scale`` per feature; ``kind`` records how it was fitted."""

    kind: Literal["minmax", "standard"]
    offset: list[float]
    scale: list[float]


class CalibrationStats(_Strict):
    """Reconstruction errors of held-out normal rows: what the worker compares live errors with."""

    n: int
    mean: float
    std: float
    quantiles: dict[str, float]  # "0.5" -> error at that quantile
    histogram_edges: list[float]
    histogram_counts: list[int]


class RowCounts(_Strict):
    total: int
    train: int
    validation: int
    calibration: int
    excluded_labelled: int = 0
    excluded_flagged: int = 0


ScoreError = Literal["mse", "mae"]


def feature_errors(xs: np.ndarray, rec: np.ndarray, error: ScoreError) -> np.ndarray:
    """Per-feature reconstruction errors in scaled space: squared ("mse") or absolute ("mae")."""
    diff = np.subtract(xs, rec, dtype=np.float32)
    return np.square(diff, out=diff) if error == "mse" else np.abs(diff, out=diff)


class Manifest(_Strict):
    """Everything needed to use a version without its training code."""

    format_version: Literal[1] = 1
    version: str
    created_at: datetime
    architecture: Literal["dense", "conv"]
    feature_names: list[str]
    input_shape: list[int] = Field(
        description="the Keras model's input shape without the batch axis"
    )
    image_shape: list[int] | None = None
    latent_dim: int
    loss: Literal["mse", "bce"]
    # How a record's per-feature reconstruction errors are measured; the score is their mean.
    # Versions written before this field existed used squared errors, hence the default.
    error: ScoreError = "mse"
    denoise: float | None = None
    threshold: float
    percentile: float
    calibration: CalibrationStats
    data_source: str
    data_fingerprint: str
    rows: RowCounts
    hyperparameters: dict[str, Any]
    validation_metrics: dict[str, float]
    library_versions: dict[str, str]
    notes: list[str] = Field(default_factory=list)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def expected_anomaly_ratio(self) -> float:
        """Share of normal records above the threshold implied by its percentile."""
        return 1.0 - self.percentile / 100.0


# --------------------------------------------------------------------------------------------
# Scaling and calibration (pure numpy)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scaler:
    """Per-feature affine scaling; stored as JSON, never pickled."""

    kind: Literal["minmax", "standard"]
    offset: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, kind: Literal["minmax", "standard"]) -> Scaler:
        """Fit on training rows. Constant features get scale 1 so they never divide by zero."""
        x = np.asarray(x, dtype=np.float64)
        if kind == "minmax":
            offset = x.min(axis=0)
            scale = x.max(axis=0) - offset
        elif kind == "standard":
            offset = x.mean(axis=0)
            scale = x.std(axis=0)
        else:  # pragma: no cover - guarded by the CLI
            raise ValueError(f"unknown scaler {kind!r}")
        scale = np.where(scale > 1e-12, scale, 1.0)
        return cls(kind=kind, offset=offset, scale=scale)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float64) - self.offset) / self.scale).astype(np.float32)

    def inverse_transform(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) * self.scale + self.offset

    def to_params(self) -> ScalerParams:
        return ScalerParams(kind=self.kind, offset=self.offset.tolist(), scale=self.scale.tolist())

    @classmethod
    def from_params(cls, p: ScalerParams) -> Scaler:
        return cls(kind=p.kind, offset=np.asarray(p.offset), scale=np.asarray(p.scale))


CALIBRATION_QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999)


def calibrate(
    errors: np.ndarray, percentile: float, bins: int = 50, *, fence: float = math.inf
) -> tuple[float, CalibrationStats]:
    """Threshold = the ``percentile`` of held-out normal errors; also summarise their distribution.

    Errors above ``fence`` (suspected anomalies among the normal rows) are left out of the
    percentile but kept in the summary, which describes what live normal traffic looks like. The
    histogram uses log-spaced edges because reconstruction errors are heavy-tailed; the worker bins
    live errors on the same edges to measure drift.
    """
    errors = np.asarray(errors, dtype=np.float64)
    if errors.size == 0:
        raise ValueError("no calibration errors")
    if not 0.0 < percentile < 100.0:
        raise ValueError(f"percentile must be in (0, 100), got {percentile}")
    inside = errors[errors <= fence]
    threshold = float(np.percentile(inside if inside.size else errors, percentile))
    lo = max(float(errors.min()), 1e-12)
    hi = max(float(errors.max()), lo * 10)
    edges = np.geomspace(lo, hi * 1.0001, bins + 1)
    counts, _ = np.histogram(np.clip(errors, edges[0], edges[-1]), bins=edges)
    stats = CalibrationStats(
        n=int(errors.size),
        mean=float(errors.mean()),
        std=float(errors.std()),
        quantiles={str(q): float(np.quantile(errors, q)) for q in CALIBRATION_QUANTILES},
        histogram_edges=edges.tolist(),
        histogram_counts=counts.astype(int).tolist(),
    )
    return threshold, stats


# --------------------------------------------------------------------------------------------
# NumPy inference for dense models
# --------------------------------------------------------------------------------------------
def _sigmoid(x: np.ndarray) -> np.ndarray:
    # Split by sign so that exp never overflows.
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


_ACTIVATIONS: dict[str, Any] = {
    "linear": None,
    "relu": lambda x: np.maximum(x, 0, out=x),
    "tanh": lambda x: np.tanh(x, out=x),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0), dtype=np.float32)),
    "sigmoid": _sigmoid,
}
# Layers that are the identity at inference time.
_INFERENCE_IDENTITY = {"InputLayer", "GaussianNoise", "GaussianDropout", "Dropout"}


@dataclass(frozen=True)
class DenseEngine:
    """A dense autoencoder's forward pass in NumPy float32 (the same maths Keras runs)."""

    kernels: list[np.ndarray]
    biases: list[np.ndarray]
    activations: list[str]
    n_encoder: int  # layers [0, n_encoder) form the encoder

    def _run(self, h: np.ndarray, layers: range) -> np.ndarray:
        h = np.asarray(h, dtype=np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            return self._layers(h, layers)

    def _layers(self, h: np.ndarray, layers: range) -> np.ndarray:
        # Extreme inputs may overflow float32: the caller turns non-finite scores into dead letters.
        for i in layers:
            h = h @ self.kernels[i]
            h += self.biases[i]
            fn = _ACTIVATIONS[self.activations[i]]
            if fn is not None:
                h = fn(h)
        return h

    def reconstruct(self, xs: np.ndarray) -> np.ndarray:
        return self._run(xs, range(len(self.kernels)))

    def encode(self, xs: np.ndarray) -> np.ndarray:
        return self._run(xs, range(self.n_encoder))

    def decode(self, z: np.ndarray) -> np.ndarray:
        return self._run(z, range(self.n_encoder, len(self.kernels)))

    @classmethod
    def from_keras(cls, model: keras.Model) -> DenseEngine | None:
        """Extract the weights when every layer is Dense (or inference-time identity); else None."""
        parts = [layer for layer in model.layers if type(layer).__name__ not in _INFERENCE_IDENTITY]
        if [p.name for p in parts] != ["encoder", "decoder"]:
            return None
        kernels, biases, acts = [], [], []
        n_encoder = 0
        for part in parts:
            for layer in part.layers:
                kind = type(layer).__name__
                if kind in _INFERENCE_IDENTITY:
                    continue
                if kind != "Dense":
                    return None
                act = layer.get_config().get("activation")
                if not isinstance(act, str) or act not in _ACTIVATIONS:
                    return None
                weights = layer.get_weights()
                kernel = np.asarray(weights[0], np.float32)
                bias = (
                    np.asarray(weights[1], np.float32)
                    if len(weights) > 1
                    else np.zeros(kernel.shape[1], np.float32)
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
            arrays[f"kernel_{i}"], arrays[f"bias_{i}"] = k, b
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path) -> DenseEngine:
        with np.load(path, allow_pickle=False) as z:
            acts = [str(a) for a in z["activations"]]
            n = len(acts)
            kernels = [z[f"kernel_{i}"].astype(np.float32) for i in range(n)]
            biases = [z[f"bias_{i}"].astype(np.float32) for i in range(n)]
            n_encoder = int(z["n_encoder"])
        unknown = set(acts) - set(_ACTIVATIONS)
        if unknown:
            raise ArtifactError(f"{path}: unsupported activations {sorted(unknown)}")
        for i in range(1, n):
            if kernels[i].shape[0] != kernels[i - 1].shape[1]:
                raise ArtifactError(f"{path}: layer {i} does not fit layer {i - 1}")
        return cls(kernels, biases, acts, n_encoder)


# --------------------------------------------------------------------------------------------
# The loaded model
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoreResult:
    """Per-record anomaly scores and the per-feature errors they average."""

    # (n,) float64: mean reconstruction error in scaled space (squared or absolute: manifest.error)
    scores: np.ndarray
    feature_errors: np.ndarray  # (n, n_features) float32

    def is_anomaly(self, threshold: float) -> np.ndarray:
        return self.scores > threshold


@dataclass
class ModelBundle:
    """A published version, loaded: manifest, scaler and the fastest sound inference path.

    Dense models score with `DenseEngine` (NumPy only; TensorFlow is never imported). Other
    models use the Keras model through a traced tf.function. The Keras model itself is loaded
    on first use of `model`, `encoder` or `decoder` when the engine makes it unnecessary.
    """

    manifest: Manifest
    scaler: Scaler
    path: Path
    engine: DenseEngine | None = None
    _model: Any = field(default=None, repr=False)
    _infer: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def model(self) -> keras.Model:
        with self._lock:
            if self._model is None:
                self._model = _load_keras_model(self.path, self.manifest)
            return self._model

    @property
    def inference(self) -> str:
        """Which path scores: "numpy" or "tensorflow"."""
        return "numpy" if self.engine is not None else "tensorflow"

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def threshold(self) -> float:
        return self.manifest.threshold

    @property
    def feature_names(self) -> list[str]:
        return self.manifest.feature_names

    @property
    def encoder(self) -> keras.Model:
        return self.model.get_layer("encoder")

    @property
    def decoder(self) -> keras.Model:
        return self.model.get_layer("decoder")

    def _compiled(self) -> Any:
        # model.predict costs tens of milliseconds per call whatever the batch size; a traced
        # tf.function with a batch-polymorphic signature is traced once and then costs ~0.2 ms.
        model = self.model
        with self._lock:
            if self._infer is None:
                import tensorflow as tf

                spec = tf.TensorSpec([None, *self.manifest.input_shape], tf.float32)
                self._infer = tf.function(
                    lambda x: model(x, training=False), input_signature=[spec]
                )
            return self._infer

    def reconstruct_scaled(self, xs: np.ndarray) -> np.ndarray:
        """Reconstruct already-scaled rows, shape (n, n_features) -> (n, n_features)."""
        if self.engine is not None:
            return self.engine.reconstruct(xs)
        infer = self._compiled()
        n = xs.shape[0]
        out = np.empty((n, self.manifest.n_features), dtype=np.float32)
        for start in range(0, n, SCORE_CHUNK_ROWS):
            chunk = xs[start : start + SCORE_CHUNK_ROWS].reshape(-1, *self.manifest.input_shape)
            rec = infer(np.ascontiguousarray(chunk, dtype=np.float32)).numpy()
            out[start : start + chunk.shape[0]] = rec.reshape(chunk.shape[0], -1)
        return out

    def score(self, x: np.ndarray) -> ScoreResult:
        """Score raw (unscaled) rows of shape (n, n_features)."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.manifest.n_features:
            raise ValueError(
                f"expected rows of {self.manifest.n_features} features, got shape {x.shape}"
            )
        if x.shape[0] == 0:
            return ScoreResult(np.zeros(0), np.zeros((0, self.manifest.n_features), np.float32))
        xs = self.scaler.transform(x)
        rec = self.reconstruct_scaled(xs)
        fe = feature_errors(xs, rec, self.manifest.error)
        return ScoreResult(scores=fe.mean(axis=1, dtype=np.float64), feature_errors=fe)

    def encode(self, x: np.ndarray) -> np.ndarray:
        if self.engine is not None:
            return self.engine.encode(self.scaler.transform(x))
        xs = self.scaler.transform(x).reshape(-1, *self.manifest.input_shape)
        return np.asarray(self.encoder(xs, training=False)).reshape(xs.shape[0], -1)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Latent codes -> reconstructed rows in the original (unscaled) units."""
        if self.engine is not None:
            return self.scaler.inverse_transform(self.engine.decode(codes))
        rec = np.asarray(self.decoder(np.asarray(codes, np.float32), training=False))
        return self.scaler.inverse_transform(rec.reshape(rec.shape[0], -1))

    def warm_up(self) -> None:
        """Trace the inference function now so the first real batch pays nothing."""
        self.score(np.asarray(self.scaler.offset, dtype=np.float64)[None, :])


# --------------------------------------------------------------------------------------------
# Reading a model directory
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VersionInfo:
    version: str
    path: Path
    created_at: datetime | None
    threshold: float | None
    is_current: bool


def _version_number(name: str) -> int:
    m = _VERSION_RE.match(name)
    if not m:
        raise VersionNotFoundError(f"{name!r} is not a version name (expected v1, v2, ...)")
    return int(m.group(1))


def normalize_version(name: str) -> str:
    """Accept ``v3`` or ``3``."""
    name = name.strip()
    return f"v{int(name)}" if name.isdigit() else name


def current_version(model_dir: str | os.PathLike[str]) -> str | None:
    """The name in CURRENT, or None when nothing has been published."""
    try:
        name = (Path(model_dir) / CURRENT_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    return name or None


def _version_dirs(model_dir: Path) -> list[Path]:
    vdir = model_dir / VERSIONS_DIR
    if not vdir.is_dir():
        return []
    dirs = [p for p in vdir.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)]
    return sorted(dirs, key=lambda p: _version_number(p.name))


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate the manifest of a version directory."""
    mpath = Path(path) / MANIFEST_FILE
    try:
        return Manifest.model_validate_json(mpath.read_bytes())
    except FileNotFoundError as exc:
        raise ArtifactError(f"{mpath} is missing: this is not a published model version") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ArtifactError(
            f"{mpath} does not follow artifact format {FORMAT_VERSION}: {where}: {first['msg']}"
        ) from exc


def list_versions(model_dir: str | os.PathLike[str]) -> list[VersionInfo]:
    model_dir = Path(model_dir)
    current = current_version(model_dir)
    out = []
    for p in _version_dirs(model_dir):
        try:
            m = read_manifest(p)
            created, threshold = m.created_at, m.threshold
        except ArtifactError:
            created, threshold = None, None
        out.append(VersionInfo(p.name, p, created, threshold, p.name == current))
    return out


def load_version_dir(path: str | os.PathLike[str], *, prefer_keras: bool = False) -> ModelBundle:
    """Load one version directory (manifest, scaler, and the NumPy engine or the Keras model).

    ``prefer_keras`` scores through TensorFlow even when NumPy weights exist (for comparisons).
    """
    path = Path(path)
    manifest = read_manifest(path)
    try:
        scaler = Scaler.from_params(
            ScalerParams.model_validate_json((path / SCALER_FILE).read_bytes())
        )
    except (FileNotFoundError, ValidationError) as exc:
        raise ArtifactError(f"{path / SCALER_FILE} is missing or invalid: {exc}") from exc
    if len(scaler.offset) != manifest.n_features:
        raise ArtifactError(
            f"{path}: scaler has {len(scaler.offset)} features, manifest {manifest.n_features}"
        )
    engine = None
    if (path / DENSE_WEIGHTS_FILE).is_file() and not prefer_keras:
        _check_zip(path / DENSE_WEIGHTS_FILE)
        _check_zip(path / MODEL_FILE)
        try:
            engine = DenseEngine.load(path / DENSE_WEIGHTS_FILE)
        except (OSError, ValueError, KeyError) as exc:
            raise ArtifactError(f"{path / DENSE_WEIGHTS_FILE} cannot be loaded: {exc}") from exc
        dims = (engine.kernels[0].shape[0], engine.kernels[-1].shape[1])
        if dims != (manifest.n_features, manifest.n_features):
            raise ArtifactError(
                f"{path}: dense weights map {dims}, manifest has {manifest.n_features}"
            )
        return ModelBundle(manifest=manifest, scaler=scaler, path=path, engine=engine)
    model = _load_keras_model(path, manifest)
    return ModelBundle(manifest=manifest, scaler=scaler, path=path, _model=model)


def _check_zip(path: Path) -> None:
    """Both .keras and .npz files are zip archives: verify every member's CRC without Keras."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (OSError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"{path} is missing or corrupt: {exc}") from exc
    if bad is not None:
        raise ArtifactError(f"{path} is corrupt: member {bad} fails its checksum")


def _load_keras_model(path: Path, manifest: Manifest) -> keras.Model:
    import keras

    try:
        model = keras.saving.load_model(path / MODEL_FILE, compile=False)
    except Exception as exc:  # Keras raises many types for a corrupt file
        raise ArtifactError(f"{path / MODEL_FILE} cannot be loaded: {exc}") from exc
    expected = tuple(manifest.input_shape)
    got = tuple(model.input_shape[1:])
    if got != expected:
        raise ArtifactError(f"{path}: model input shape {got} != manifest {expected}")
    return model


def load_bundle(model_dir: str | os.PathLike[str], version: str | None = None) -> ModelBundle:
    """Load ``version`` (default: the current one) from a model directory."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ArtifactError(
            f"model directory {model_dir} does not exist: run `anomaly-trainer fit`"
        )
    name = normalize_version(version) if version else current_version(model_dir)
    if name is None:
        raise ArtifactError(f"{model_dir} has no current version: run `anomaly-trainer fit` first")
    path = model_dir / VERSIONS_DIR / name
    if not path.is_dir():
        raise VersionNotFoundError(
            f"version {name} not found in {model_dir}: see `anomaly-trainer versions`"
        )
    return load_version_dir(path)


# --------------------------------------------------------------------------------------------
# Publishing
# --------------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(root)


@contextlib.contextmanager
def staging_dir(model_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """A private directory inside MODEL_DIR to write a version into; removed if not published."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    _cleanup_stale_staging(model_dir)
    path = model_dir / f".staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _cleanup_stale_staging(model_dir: Path) -> None:
    """Remove staging directories left by writers that died (their pid no longer exists)."""
    for p in model_dir.glob(".staging-*"):
        try:
            pid = int(p.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            pass


def write_version_files(
    staging: Path, model: keras.Model, scaler: Scaler, manifest: Manifest
) -> None:
    """Write the files of a version into ``staging`` (manifest last)."""
    model.save(staging / MODEL_FILE)
    engine = DenseEngine.from_keras(model)
    if engine is not None:
        engine.save(staging / DENSE_WEIGHTS_FILE)
    (staging / SCALER_FILE).write_text(scaler.to_params().model_dump_json(indent=2))
    (staging / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))


def next_version_name(model_dir: str | os.PathLike[str]) -> str:
    dirs = _version_dirs(Path(model_dir))
    return f"v{_version_number(dirs[-1].name) + 1 if dirs else 1}"


def publish_staged(
    model_dir: str | os.PathLike[str],
    staging: Path,
    *,
    keep: int = DEFAULT_KEEP,
    make_current: bool = True,
) -> str:
    """Move a fully written staging directory into ``versions/`` and make it current.

    The manifest in ``staging`` must carry the version name returned by `next_version_name`; if
    another writer took that name meanwhile the caller gets an ArtifactError and nothing changes.
    """
    model_dir = Path(model_dir)
    manifest = read_manifest(staging)
    vroot = model_dir / VERSIONS_DIR
    vroot.mkdir(parents=True, exist_ok=True)
    target = vroot / manifest.version
    _fsync_tree(staging)
    if target.exists():
        raise ArtifactError(f"version {manifest.version} already exists in {model_dir}")
    try:
        os.rename(staging, target)  # atomic; fails if a concurrent writer created target
    except OSError as exc:
        raise ArtifactError(f"could not publish {manifest.version}: {exc}") from exc
    _fsync_dir(vroot)
    if make_current:
        set_current(model_dir, manifest.version)
    prune_versions(model_dir, keep=keep)
    return manifest.version


def set_current(model_dir: str | os.PathLike[str], version: str) -> None:
    """Point CURRENT at an existing version (the rollback primitive)."""
    model_dir = Path(model_dir)
    name = normalize_version(version)
    _version_number(name)
    path = model_dir / VERSIONS_DIR / name
    if not path.is_dir():
        raise VersionNotFoundError(
            f"version {name} not found in {model_dir}: see `anomaly-trainer versions`"
        )
    read_manifest(path)  # refuse to point at something that is not a valid version
    _write_atomic(model_dir / CURRENT_FILE, (name + "\n").encode())


def prune_versions(model_dir: str | os.PathLike[str], keep: int = DEFAULT_KEEP) -> list[str]:
    """Delete all but the newest ``keep`` versions; the current one is always kept."""
    if keep <= 0:
        return []
    model_dir = Path(model_dir)
    current = current_version(model_dir)
    dirs = _version_dirs(model_dir)
    removed = []
    for p in dirs[:-keep]:
        if p.name != current:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


def fingerprint_arrays(arrays: Sequence[np.ndarray], names: Sequence[str]) -> str:
    """A content hash of the training data: same data, same fingerprint."""
    import hashlib

    h = hashlib.sha256()
    h.update(json.dumps(list(names)).encode())
    for a in arrays:
        a = np.ascontiguousarray(a, dtype=np.float64)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return "sha256:" + h.hexdigest()


def utc_now() -> datetime:
    return datetime.now(UTC)
