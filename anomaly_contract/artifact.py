"""The versioned model artifact: the one contract between trainer and worker.

A version directory holds::

    manifest.json         # strict, format-versioned (see `Manifest`)
    scaler.json           # feature scaling fitted on training rows only
    model.keras           # the Keras autoencoder (sub-models "encoder" and "decoder")
    dense_weights.npz     # optional: a dense model's weights as plain arrays, for NumPy scoring
    inference_layers.npz  # optional: any other model's layers as NumPy ops (`LayerEngine`)
    inference.onnx        # optional: the same model for ONNX Runtime (`OnnxEngine`)

`ModelBundle` is a loaded version: it scales, reconstructs and scores. How versions are laid out
in a model directory and published atomically lives in `anomaly_contract.model_dir`.
This package holds no training code. Keras and TensorFlow are imported lazily.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from anomaly_contract.engines import Engine, load_keras_model

if TYPE_CHECKING:  # pragma: no cover
    import keras

    from anomaly_contract.series import SeriesModel

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
SCALER_FILE = "scaler.json"
MODEL_FILE = "model.keras"
# Optional: the same weights as plain arrays for dense models, so readers can score with NumPy
# alone (no TensorFlow import: the worker starts in ~1 s and stays ~5x smaller in memory).
DENSE_WEIGHTS_FILE = "dense_weights.npz"
# Optional: every other architecture's layers as NumPy ops (see `anomaly_contract.layer_engine`).
LAYERS_FILE = "inference_layers.npz"
# Optional, next to LAYERS_FILE: the same model as an ONNX graph (`anomaly_contract.onnx_engine`).
ONNX_FILE = "inference.onnx"
OPTIONAL_FILES = (DENSE_WEIGHTS_FILE, LAYERS_FILE, ONNX_FILE)
CURRENT_FILE = "CURRENT"
VERSIONS_DIR = "versions"
DEFAULT_KEEP = 10
# Rows per inference call: bounds memory for large offline files without changing any score.
SCORE_CHUNK_ROWS = 4096


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


class FeedbackSummary(_Strict):
    """What analyst feedback did to a version (``fit --feedback``, ``threshold``).

    ``confirmed`` / ``false_positive`` count feedback ids (events or incidents) that resolved to
    rows, ``unresolved`` those that did not, ``skipped`` unusable feedback records; ``*_rows``
    count the rows they labelled. ``threshold_before`` is the threshold the feedback moved
    (None when it did not move it); ``false_positive_rows_above`` counts false-positive rows
    still above the published threshold.
    """

    confirmed: int = 0
    false_positive: int = 0
    unresolved: int = 0
    skipped: int = 0
    confirmed_rows: int = 0
    false_positive_rows: int = 0
    false_positive_rows_above: int = 0
    threshold_before: float | None = None
    source: str = ""


ScoreError = Literal["mse", "mae"]
# How a point model's per-feature errors become a row's score: their "mean" (images, and every
# version published before the choice), or "feature_max": each feature's error divided by its
# scale (``Manifest.feature_scales``, the feature's mean error on the training rows), then the
# largest. On tables the network rebuilds some features (strongly correlated ones) far better
# than others; a plain mean lets the poorly rebuilt ones drown a deviation in a well rebuilt one.
PointScore = Literal["mean", "feature_max"]


def scored_errors(
    feature_errors: np.ndarray, feature_scales: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, reduced)``: rows' scores (n,) from their per-feature errors (n, f), and the
    errors the score reduces. Without scales (``"mean"``) the mean of the errors as given; with
    them (``"feature_max"``) each error divided by its feature's scale, and the largest."""
    if feature_scales is None:
        return feature_errors.mean(axis=1, dtype=np.float64), feature_errors
    scaled = feature_errors / feature_scales
    return scaled.max(axis=1), scaled


def row_scores(feature_errors: np.ndarray, feature_scales: np.ndarray | None) -> np.ndarray:
    """Rows' scores (n,) from their per-feature errors (n, f): see `scored_errors`."""
    return scored_errors(feature_errors, feature_scales)[0]


def feature_errors(xs: np.ndarray, rec: np.ndarray, error: ScoreError) -> np.ndarray:
    """Per-feature reconstruction errors in scaled space: squared ("mse") or absolute ("mae").

    Float64: a well-reconstructed row's difference is small next to its values, so rounding it
    to float32 would cost the score ~1e-5 of its value (and differently for the same row in
    another batch, see `DenseEngine`).
    """
    diff = np.subtract(xs, rec, dtype=np.float64)
    return np.square(diff, out=diff) if error == "mse" else np.abs(diff, out=diff)


class HistoryClip(_Strict):
    """Per-channel bounds, in key standard deviations, of what a windowed model's network is
    shown of a window's history: ``low[c] < 0 < high[c]``, finite."""

    low: list[float] = Field(min_length=1)
    high: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _bounds_hold_zero(self) -> HistoryClip:
        if len(self.low) != len(self.high):
            raise ValueError("history_clip needs one low and one high bound per channel")
        for lo, hi in zip(self.low, self.high, strict=True):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < 0.0 < hi):
                raise ValueError("history_clip bounds must be finite with low < 0 < high")
        return self


class SeriesParams(_Strict):
    """A windowed (series per key) model: how rows become windows, and the per-key statistics.

    ``normaliser`` is `KeyNormaliser.to_json`, ``thresholds`` `KeyThresholds.to_json`; a
    version's scaler is then the identity (normalisation is per key). Read through
    `ModelBundle.series` (`anomaly_contract.series.SeriesModel`).
    """

    window: int = Field(ge=2)
    # The score of a window is the mean element error of its last ``score_steps`` rows: the row
    # it scores and the few before. Averaging the whole window (``score_steps = window``) lets one
    # spike raise the score of the W-1 normal rows after it.
    score_steps: int = Field(default=1, ge=1)
    key_column: str | None = None
    time_column: str | None = None
    normaliser: dict[str, Any]
    thresholds: dict[str, Any]
    # How those rows' element errors become the score: "mean" over every channel (every version
    # published before this field), or "channel_max": each channel's error divided by its scale
    # in ``channel_scales`` (learnt from the calibration windows, pooled over keys), then the
    # largest, so an anomaly in one channel of several is not averaged away.
    # ``key_channel_scales``: a key's own scales (learnt from its validation windows); keys
    # without them (too few windows, or unseen in training) use ``channel_scales``.
    # "blend": the mean and that channel max, each divided by its own scale in
    # ``blend_scales`` ([mean, channel max], learnt from the calibration windows), averaged.
    score: Literal["mean", "channel_max", "blend"] = "mean"
    channel_scales: list[float] | None = None
    key_channel_scales: dict[str, list[float]] | None = None
    blend_scales: list[float] | None = None
    # The rows before the scored ones are clipped to these per-channel bounds (in key standard
    # deviations) before the network sees a window (`anomaly_contract.series.clip_history`);
    # None (every version published before this field) shows them unclipped.
    history_clip: HistoryClip | None = None

    @model_validator(mode="after")
    def _scales_match_the_score(self) -> SeriesParams:
        if self.score != "mean":
            every = [self.channel_scales or [], *(self.key_channel_scales or {}).values()]
            n = len(every[0])
            for scales in every:
                if not scales or len(scales) != n:
                    raise ValueError(f"score {self.score!r} needs one scale per channel")
                if not _positive_finite(scales):
                    raise ValueError(f"score {self.score!r} needs positive finite channel_scales")
        elif self.channel_scales is not None or self.key_channel_scales is not None:
            raise ValueError("channel scales belong to scores 'channel_max' and 'blend' only")
        if self.score == "blend":
            if self.blend_scales is None or len(self.blend_scales) != 2:
                raise ValueError("score 'blend' needs blend_scales [mean, channel max]")
            if not _positive_finite(self.blend_scales):
                raise ValueError("score 'blend' needs positive finite blend_scales")
        elif self.blend_scales is not None:
            raise ValueError("blend_scales belong to score 'blend' only")
        return self

    @model_serializer(mode="wrap")
    def _mean_is_written_as_before(self, handler: Any) -> Any:
        # A "mean" manifest is written without the score fields, as before they existed, and a
        # "channel_max" one without blend_scales, one without a clip without history_clip, so a
        # worker of an older release
        # (extra="forbid") still loads what it can score.
        data = handler(self)
        if isinstance(data, dict):
            unused = {
                "mean": ("score", "channel_scales", "key_channel_scales", "blend_scales"),
                "channel_max": ("blend_scales",),
            }
            for name in unused.get(self.score, ()):
                data.pop(name, None)
            if self.history_clip is None:  # as before the field existed
                data.pop("history_clip", None)
        return data


def _positive_finite(values: list[float]) -> bool:
    return all(math.isfinite(v) and v > 0 for v in values)


# Windowed models add "lstm" and "conv1d"; a windowed "dense" is dense on the flattened window.
Architecture = Literal["dense", "conv", "vae", "lstm", "conv1d"]


class Manifest(_Strict):
    """Everything needed to use a version without its training code.

    For windowed models (``series`` set) ``feature_names`` are the channels, ``input_shape`` is
    ``[W, channels]`` (lstm, conv1d) or ``[W * channels]`` (dense), and ``threshold`` is the
    pooled one (each key's own lives in ``series.thresholds``).
    """

    format_version: Literal[1] = 1
    version: str
    created_at: datetime
    architecture: Architecture
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
    # How those errors become the score (see `PointScore`); point models only.
    score: PointScore = "mean"
    feature_scales: list[float] | None = None
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
    series: SeriesParams | None = None
    feedback: FeedbackSummary | None = None

    @model_validator(mode="after")
    def _scales_match_the_score(self) -> Manifest:
        if self.score == "feature_max":
            scales = self.feature_scales or []
            if len(scales) != len(self.feature_names) or self.series is not None:
                raise ValueError("score 'feature_max' needs one scale per feature (point models)")
            if not _positive_finite(scales):
                raise ValueError("score 'feature_max' needs positive finite feature_scales")
        elif self.feature_scales is not None:
            raise ValueError("feature_scales belong to score 'feature_max' only")
        return self

    @model_serializer(mode="wrap")
    def _mean_is_written_as_before(self, handler: Any) -> Any:
        # A "mean" manifest is written without the score fields, as before they existed, so a
        # worker of an older release (extra="forbid") still loads it.
        data = handler(self)
        if isinstance(data, dict) and self.score == "mean":
            data.pop("score", None)
            data.pop("feature_scales", None)
        return data

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def point_feature_scales(self) -> np.ndarray | None:
        """The scales `row_scores` divides by, or None for a mean score."""
        if self.score != "feature_max" or self.feature_scales is None:
            return None
        return np.asarray(self.feature_scales, dtype=np.float64)

    @property
    def input_size(self) -> int:
        """Values one network input holds: the features, or a window's W * channels."""
        return int(np.prod(self.input_shape))

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


# The loaded model
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoreResult:
    """Per-record anomaly scores and the per-feature errors they average."""

    # (n,) float64: the reconstruction error in scaled space (squared or absolute:
    # manifest.error), reduced over the features by manifest.score (see `row_scores`)
    scores: np.ndarray
    # (n, n_features) float32: what the score reduces, each feature's error (divided by its
    # scale for "feature_max", so the top feature is the one that set the score)
    feature_errors: np.ndarray

    def is_anomaly(self, threshold: float) -> np.ndarray:
        return self.scores > threshold


@dataclass
class ModelBundle:
    """A published version, loaded: manifest, scaler and the fastest sound inference path.

    Versions with a NumPy inference form score with it (`DenseEngine` for dense models,
    `LayerEngine` for the others; TensorFlow is never imported). Older versions without one use
    the Keras model through a traced tf.function. The Keras model itself is loaded on first use
    of `model`, `encoder` or `decoder` when the engine makes it unnecessary.
    """

    manifest: Manifest
    scaler: Scaler
    path: Path
    engine: Engine | None = None
    _model: Any = field(default=None, repr=False)
    _infer: Any = field(default=None, repr=False)
    _series: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def model(self) -> keras.Model:
        with self._lock:
            if self._model is None:
                self._model = load_keras_model(self.path / MODEL_FILE, self.manifest.input_shape)
            return self._model

    @property
    def inference(self) -> str:
        """Which runtime scores: "numpy", "onnxruntime" or "tensorflow"."""
        return self.engine.kind if self.engine is not None else "tensorflow"

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
    def series(self) -> SeriesModel:
        """The windowed view of this version (`SeriesModel`); ValueError for a point model."""
        from anomaly_contract.series import SeriesModel

        with self._lock:
            if self._series is None:
                self._series = SeriesModel(self)
            return self._series

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
        """Reconstruct already-scaled inputs, shape (n, input_size) -> (n, input_size).

        ``input_size`` is the feature count for point models and W * channels for windows."""
        if self.engine is not None:
            return self.engine.reconstruct(xs)
        infer = self._compiled()
        n = xs.shape[0]
        out = np.empty((n, self.manifest.input_size), dtype=np.float32)
        for start in range(0, n, SCORE_CHUNK_ROWS):
            chunk = xs[start : start + SCORE_CHUNK_ROWS].reshape(-1, *self.manifest.input_shape)
            rec = infer(np.ascontiguousarray(chunk, dtype=np.float32)).numpy()
            out[start : start + chunk.shape[0]] = rec.reshape(chunk.shape[0], -1)
        return out

    def score(self, x: np.ndarray) -> ScoreResult:
        """Score raw (unscaled) rows of shape (n, n_features) (point models; windowed ones
        score windows through `series`)."""
        if self.manifest.series is not None:
            raise ValueError("a windowed model scores windows: use bundle.series.score_windows")
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
        scores, reduced = scored_errors(fe, self.manifest.point_feature_scales)
        return ScoreResult(scores=scores, feature_errors=reduced.astype(np.float32))

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
        if self.manifest.series is not None:
            self.reconstruct_scaled(np.zeros((1, self.manifest.input_size), dtype=np.float32))
            return
        self.score(np.asarray(self.scaler.offset, dtype=np.float64)[None, :])


# --------------------------------------------------------------------------------------------
