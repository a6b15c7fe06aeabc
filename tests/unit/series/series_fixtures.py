"""A windowed model held in memory for the series unit tests: a random dense network on the
flattened window run by the NumPy engine (no TensorFlow), per-key statistics fitted on rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anomaly_contract.artifact import HistoryClip, ModelBundle, Scaler, SeriesParams
from anomaly_contract.engines import DenseEngine
from anomaly_contract.key_normaliser import KeyNormaliser
from anomaly_contract.key_thresholds import fit_key_thresholds
from tests.unit.model_topic.topic_fixtures import make_manifest


def keyed_rows(
    n: int, keys: list[str], channels: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Interleaved rows of ``keys`` (each key its own level and spread) and the key of each row."""
    rng = np.random.default_rng(seed)
    key_of_row = np.array(keys, dtype=object)[rng.integers(0, len(keys), size=n)]
    levels = {k: rng.normal(0, 20, size=channels) for k in keys}
    spreads = {k: rng.uniform(0.5, 3.0, size=channels) for k in keys}
    x = np.stack([levels[k] + spreads[k] * rng.normal(size=channels) for k in key_of_row])
    return x, key_of_row


def series_bundle(
    window: int,
    channels: int,
    train_x: np.ndarray,
    train_keys: np.ndarray,
    warmup: int = 16,
    score_steps: int = 1,
    channel_scales: list[float] | None = None,
    key_channel_scales: dict[str, list[float]] | None = None,
    blend_scales: list[float] | None = None,
    history_clip: float | None = None,
) -> ModelBundle:
    """A windowed dense model whose normaliser knows ``train_keys``; thresholds from noise.
    ``channel_scales`` makes it a ``channel_max`` model (the mean score without them), with
    ``key_channel_scales`` for some keys; ``blend_scales`` too a ``blend`` one. ``history_clip``
    clips the windows' history to +-history_clip before the network sees them."""
    rng = np.random.default_rng(7)
    size, hidden = window * channels, 5
    engine = DenseEngine(
        kernels=[rng.normal(0, 0.3, size=(size, hidden)), rng.normal(0, 0.3, size=(hidden, size))],
        biases=[rng.normal(0, 0.1, size=hidden), rng.normal(0, 0.1, size=size)],
        activations=["tanh", "linear"],
        n_encoder=1,
    )
    normaliser = KeyNormaliser.fit(train_x, [str(k) for k in train_keys], warmup_records=warmup)
    calibration_keys = np.array(sorted(set(train_keys)) * 30, dtype=object)
    thresholds = fit_key_thresholds(
        rng.gamma(2.0, 1.0, size=calibration_keys.size), calibration_keys, 99.0
    )
    manifest = make_manifest(n_features=channels).model_copy(
        update={
            "input_shape": [size],
            "latent_dim": hidden,
            "threshold": thresholds.pooled,
            "series": SeriesParams(
                window=window,
                score_steps=score_steps,
                key_column="key",
                normaliser=normaliser.to_json(),
                thresholds=thresholds.to_json(),
                history_clip=None
                if history_clip is None
                else HistoryClip(low=[-history_clip] * channels, high=[history_clip] * channels),
                **(
                    {}
                    if channel_scales is None
                    else {
                        "score": "channel_max" if blend_scales is None else "blend",
                        "channel_scales": channel_scales,
                        "key_channel_scales": key_channel_scales,
                        "blend_scales": blend_scales,
                    }
                ),
            ),
        }
    )
    identity = Scaler("standard", np.zeros(channels), np.ones(channels))
    return ModelBundle(manifest=manifest, scaler=identity, path=Path("."), engine=engine)
