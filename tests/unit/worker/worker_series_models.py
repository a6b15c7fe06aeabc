"""A small real windowed model for the worker's series tests, published with
anomaly_contract.model_dir (no trainer.fit): a dense Keras autoencoder on flattened windows,
per-key normalisation and per-key thresholds, run by the NumPy engine in the worker.

`keyed_series` makes the stream: interleaved keys, each its own level and rhythm, a few spikes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CHANNELS = ("temp", "rpm", "load")


def keyed_series(
    n: int, keys: list[str], seed: int = 0, spike_rate: float = 0.01
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows of 3 channels, keys drawn at random (interleaved); (x, key of each row)."""
    rng = np.random.default_rng(seed)
    key_rng = np.random.default_rng(4321)  # levels and rhythms depend on the key, not the seed
    level = {k: key_rng.normal(40, 15, size=3) for k in keys}
    period = {k: key_rng.uniform(8, 30) for k in keys}
    key_of_row = np.array(keys, dtype=object)[rng.integers(0, len(keys), size=n)]
    step: dict[str, int] = dict.fromkeys(keys, 0)
    x = np.empty((n, 3))
    for i, k in enumerate(key_of_row):
        t = step[k] = step[k] + 1
        wave = np.sin(2 * np.pi * t / period[k])
        x[i] = level[k] + np.array([3.0, 50.0, 5.0]) * wave + rng.normal(0, 0.3, size=3)
    spikes = np.flatnonzero(rng.random(n) < spike_rate)
    x[spikes, rng.integers(0, 3, size=spikes.size)] += rng.choice([-1, 1], size=spikes.size) * 25
    return x, key_of_row


def records(x: np.ndarray, keys: np.ndarray, first_id: int = 0) -> list[bytes]:
    """The rows as input records with the key in a ``"key"`` field and features by name."""
    return [
        json.dumps(
            {"id": first_id + i, "key": str(k), **dict(zip(CHANNELS, row.tolist(), strict=True))}
        ).encode()
        for i, (row, k) in enumerate(zip(x, keys, strict=True))
    ]


def series_manifest(
    *,
    version: str,
    window: int,
    latent: int,
    normaliser: object,
    thresholds: object,
    calibration_errors: np.ndarray,
    percentile: float,
    rows: int,
    source: str,
) -> object:
    """The manifest of a windowed dense model of `CHANNELS` (``normaliser``: a KeyNormaliser,
    ``thresholds``: KeyThresholds; the pooled threshold and calibration statistics come from
    ``calibration_errors``)."""
    from anomaly_contract.artifact import Manifest, RowCounts, SeriesParams
    from anomaly_contract.model_dir import utc_now
    from trainer.calibration import calibrate

    pooled, stats = calibrate(calibration_errors, percentile)
    return Manifest(
        version=version,
        created_at=utc_now(),
        architecture="dense",
        feature_names=list(CHANNELS),
        input_shape=[window * len(CHANNELS)],
        latent_dim=latent,
        loss="mse",
        threshold=pooled,
        percentile=percentile,
        calibration=stats,
        data_source=source,
        data_fingerprint="sha256:test",
        rows=RowCounts(total=rows, train=rows, validation=0, calibration=rows),
        hyperparameters={"window": window},
        validation_metrics={},
        library_versions={},
        series=SeriesParams(
            window=window,
            key_column="key",
            normaliser=normaliser.to_json(),  # type: ignore[attr-defined]
            thresholds=thresholds.to_json(),  # type: ignore[attr-defined]
        ),
    )


def publish_series_model(
    model_dir: Path,
    x: np.ndarray,
    keys: np.ndarray,
    window: int = 8,
    percentile: float = 95.0,
    warmup_records: int = 16,
    epochs: int = 3,
    seed: int = 0,
) -> str:
    """Fit a windowed dense autoencoder on ``x`` (keys ``keys``) a few epochs, calibrate a
    threshold per key on the same windows' errors, publish it; returns the version name."""
    import keras

    from anomaly_contract.artifact import Scaler, SeriesParams
    from anomaly_contract.engines import DenseEngine
    from anomaly_contract.key_normaliser import KeyNormaliser
    from anomaly_contract.key_thresholds import fit_key_thresholds
    from anomaly_contract.model_dir import (
        next_version_name,
        publish_staged,
        staging_dir,
        write_version_files,
    )
    from anomaly_contract.series import window_scores
    from anomaly_contract.windows import index_windows

    keras.utils.set_random_seed(seed)
    key_list = [str(k) for k in keys]
    normaliser = KeyNormaliser.fit(x, key_list, warmup_records=warmup_records)
    index = index_windows(np.asarray(key_list, dtype=object), len(x), window)
    windows = normaliser.transform_rows(x, key_list)[index.rows]  # (n, W, C) normalised
    size = window * x.shape[1]
    flat = windows.reshape(len(windows), size)
    enc_in, dec_in = keras.Input((size,)), keras.Input((4,))
    encoder = keras.Model(
        enc_in, keras.layers.Dense(4)(keras.layers.Dense(16, "tanh")(enc_in)), name="encoder"
    )
    decoder = keras.Model(
        dec_in, keras.layers.Dense(size)(keras.layers.Dense(16, "tanh")(dec_in)), name="decoder"
    )
    inp = keras.Input((size,))
    model = keras.Model(inp, decoder(encoder(inp)), name="autoencoder")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.fit(flat, flat, epochs=epochs, batch_size=64, verbose=0)
    engine = DenseEngine.from_keras(model)
    assert engine is not None
    element_errors = np.square(flat - engine.reconstruct(flat)).reshape(windows.shape)
    errors = window_scores(element_errors, SeriesParams.model_fields["score_steps"].default)
    window_keys = np.asarray(key_list, dtype=object)[index.end_rows]
    thresholds = fit_key_thresholds(errors, window_keys, percentile, min_windows=20)
    with staging_dir(model_dir) as staging:
        manifest = series_manifest(
            version=next_version_name(model_dir),
            window=window,
            latent=4,
            normaliser=normaliser,
            thresholds=thresholds,
            calibration_errors=errors,
            percentile=percentile,
            rows=len(x),
            source="synthetic:worker-series-tests",
        )
        identity = Scaler("standard", np.zeros(x.shape[1]), np.ones(x.shape[1]))
        write_version_files(staging, model, identity, manifest)  # type: ignore[arg-type]
        return publish_staged(model_dir, staging)


def offline_in_log_order(
    bundle: object, x: np.ndarray, keys: np.ndarray, sources: list[tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offline (``bundle.series.score_rows``) scores, thresholds and warming flags of rows that
    landed at ``sources`` (partition, offset), scored in log order: each key's rows in the order
    of its partition, as the worker reads them. Returned in the order of ``sources``."""
    order = np.array(sorted(range(len(sources)), key=lambda i: sources[i]), dtype=np.int64)
    result = bundle.series.score_rows(x[order], keys[order])  # type: ignore[attr-defined]
    scores, thresholds, warming = (np.empty(len(sources)) for _ in range(3))
    scores[order], thresholds[order] = result.scores, result.thresholds
    warming[order] = result.warming
    return scores, thresholds, warming.astype(bool)


def series_flags(
    scores: np.ndarray, thresholds: np.ndarray, sources: list[tuple[int, int]], rel: float = 1e-6
) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
    """(records that must be flagged, records within ``rel`` of their key's threshold)."""
    with np.errstate(invalid="ignore"):
        margin = rel * thresholds
        must = np.flatnonzero(scores > thresholds + margin)
        maybe = np.flatnonzero(np.abs(scores - thresholds) <= margin)
    return {sources[i] for i in must.tolist()}, {sources[i] for i in maybe.tolist()}
