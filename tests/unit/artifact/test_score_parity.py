"""Offline scores (`anomaly-trainer score`) and the worker's micro-batch scores agree record by
record, whatever batches the worker's polls happen to form.

The model reconstructs its rows almost exactly (the case where float32 arithmetic lost ~1e-5 of
a score to the batch a row arrived in), and the rows are cut into many different batch splits.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from anomaly_contract import artifact
from anomaly_contract.engines import DenseEngine
from trainer.evaluate import score_rows
from worker.scoring import score_batch

N_ROWS, N_FEATURES, N_FACTORS, N_HIDDEN = 20_000, 14, 3, 16
# README ("Scoring"): dense models, the worker and `anomaly-trainer score` differ by less than this.
PARITY_BOUND = 1e-12
ACTIVATIONS = ["tanh", "linear", "tanh", "linear"]  # builtin:sensors' default model: 14-16-3-16-14


def _rows_and_engine(weights_file: Path) -> tuple[np.ndarray, artifact.Scaler, DenseEngine]:
    """Rows near a 3-D subspace and a 14-16-3-16-14 tanh autoencoder that nearly reconstructs them
    (tanh kept in its near-linear range), so errors are small next to the values, as after
    training."""
    rng = np.random.default_rng(17)
    basis, _ = np.linalg.qr(rng.normal(size=(N_FEATURES, N_FACTORS)))
    mix, gain = rng.normal(size=(N_FACTORS, N_HIDDEN)), 0.1
    unmix = np.linalg.pinv(mix) / gain
    # float32 weights, as Keras trains them, read back the way the worker and the trainer do.
    kernels = [
        k.astype(np.float32) for k in (gain * basis @ mix, unmix, gain * mix, unmix @ basis.T)
    ]
    biases = [np.zeros(k.shape[1], np.float32) for k in kernels]
    DenseEngine(kernels, biases, ACTIVATIONS, n_encoder=2).save(weights_file)
    engine = DenseEngine.load(weights_file)
    xs = rng.normal(size=(N_ROWS, N_FACTORS)) @ basis.T
    xs += 0.01 * rng.normal(size=(N_ROWS, N_FEATURES))
    scaler = artifact.Scaler(
        kind="standard", offset=np.full(N_FEATURES, 5.0), scale=np.full(N_FEATURES, 2.0)
    )
    return scaler.inverse_transform(xs), scaler, engine


def _bundle(scaler: artifact.Scaler, engine: DenseEngine) -> artifact.ModelBundle:
    stats = artifact.CalibrationStats(
        n=1, mean=0.0, std=0.0, quantiles={}, histogram_edges=[], histogram_counts=[]
    )
    manifest = artifact.Manifest(
        version="v1", created_at=datetime.now(UTC), architecture="dense",
        feature_names=[f"f{i}" for i in range(N_FEATURES)], input_shape=[N_FEATURES],
        latent_dim=N_FACTORS, loss="mse", threshold=1e-3, percentile=99.0, calibration=stats,
        data_source="test", data_fingerprint="0", hyperparameters={}, validation_metrics={},
        library_versions={}, rows=artifact.RowCounts(total=1, train=1, validation=0, calibration=0),
    )  # fmt: skip
    return artifact.ModelBundle(
        manifest=manifest, scaler=scaler, path=Path("unused"), engine=engine
    )


def _batch_splits(n: int) -> dict[str, list[int]]:
    """Batch boundaries: fixed sizes, and the uneven sizes a worker's polls produce."""
    rng = np.random.default_rng(3)
    uneven = np.cumsum(rng.integers(1, 700, size=n)).tolist()
    splits = {f"every {k}": list(range(k, n, k)) for k in (1, 7, 64, 500, 4096)}
    splits["uneven"] = [b for b in uneven if b < n]
    return splits


def _max_relative_difference(scores: np.ndarray, reference: np.ndarray) -> float:
    return float(np.max(np.abs(scores - reference) / np.abs(reference)))


def _float32_scores(engine: DenseEngine, scaler: artifact.Scaler, x: np.ndarray) -> np.ndarray:
    """The arithmetic scoring used before: forward pass and errors in float32."""
    xs = h = scaler.transform(x)
    for kernel, activation in zip(engine.kernels, engine.activations, strict=True):
        h = h @ kernel.astype(np.float32)
        h = np.tanh(h) if activation == "tanh" else h
    return np.square(xs - h).mean(axis=1, dtype=np.float64)


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> tuple[np.ndarray, artifact.ModelBundle, np.ndarray]:
    weights_file = tmp_path_factory.mktemp("parity") / artifact.DENSE_WEIGHTS_FILE
    x, scaler, engine = _rows_and_engine(weights_file)
    bundle = _bundle(scaler, engine)
    return x, bundle, score_rows(bundle, x).scores


@pytest.mark.parametrize("split", sorted(_batch_splits(N_ROWS)))
def test_worker_batches_score_like_offline(case, split: str) -> None:
    x, bundle, offline = case
    batches = np.split(x, _batch_splits(len(x))[split])
    worker = np.concatenate([score_batch(bundle, batch).scores for batch in batches])
    assert worker.shape == offline.shape
    assert _max_relative_difference(worker, offline) < PARITY_BOUND


def test_the_rows_expose_the_float32_batch_wobble(case) -> None:
    """Precondition of the test above: these rows did show the issue's gap with float32."""
    x, bundle, _ = case
    assert bundle.engine is not None
    whole = _float32_scores(bundle.engine, bundle.scaler, x)
    parts = np.concatenate(
        [_float32_scores(bundle.engine, bundle.scaler, r) for r in np.split(x, range(7, N_ROWS, 7))]
    )
    wobble = _max_relative_difference(parts, whole)
    if wobble == 0.0:
        # Some BLAS builds (seen on an AVX-512 machine) sum float32 products in the same order
        # whatever the number of rows: the wobble cannot be shown here, and the float64 test
        # above still holds.
        pytest.skip("this machine's BLAS gives float32 scores independent of the batch")
    assert wobble > 1e-6
