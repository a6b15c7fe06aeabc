"""Contract every windowed architecture passes: save/load round trip (offline scores through the
loaded bundle equal the trained network's), same seed same scores, well above chance.

Data: a small `builtin:machines` (4 machines x 500 ticks, labelled level shifts, stuck sensors,
rhythm and variance changes, drifts and spikes), W = 16, a few epochs: each case stays well
under 40 s on a laptop CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from anomaly_contract.model_dir import load_bundle  # noqa: E402
from anomaly_contract.series import window_scores  # noqa: E402
from trainer.data_series import SeriesData, load_series  # noqa: E402
from trainer.fit import FitOptions, TrainedModel  # noqa: E402
from trainer.fit_series import fit_series_model  # noqa: E402
from trainer.publish import publish_model  # noqa: E402
from trainer.training import reconstruction_errors  # noqa: E402

WINDOW = 16
MAX_TRAIN_WINDOWS = 1500
ARCHITECTURES = ("dense", "lstm", "conv1d", "sparse-conv1d")
SPARSITY = 1e-3  # "sparse-X": X with --sparsity, the seeds' sparse autoencoder on windows


@pytest.fixture(scope="module")
def machines() -> SeriesData:
    return load_series(
        "builtin:machines?keys=4&length=500&seed=1", key_column="key", time_column="t"
    )


def _architecture(name: str) -> str:
    return name.removeprefix("sparse-")


def _fit(data: SeriesData, name: str) -> TrainedModel:
    options = FitOptions(
        architecture=_architecture(name),  # type: ignore[arg-type]
        epochs=6,
        patience=3,
        seed=5,
        sparsity=SPARSITY if name.startswith("sparse-") else None,
    )
    return fit_series_model(data, WINDOW, options, quiet=True, max_train_windows=MAX_TRAIN_WINDOWS)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def fitted(request, machines, tmp_path_factory):  # type: ignore[no-untyped-def]
    trained = _fit(machines, request.param)
    model_dir = tmp_path_factory.mktemp(request.param)
    publish_model(trained, model_dir)
    return request.param, trained, Path(model_dir)


def test_round_trip_scores_match_the_trained_network(fitted, machines) -> None:  # type: ignore[no-untyped-def]
    name, trained, model_dir = fitted
    architecture = _architecture(name)
    bundle = load_bundle(model_dir)
    assert bundle.manifest.architecture == architecture
    # every published architecture scores without TensorFlow (ONNX Runtime, or NumPy layers
    # where onnxruntime is missing); windowed dense on the plain NumPy engine
    if architecture == "dense":
        assert bundle.inference == "numpy"
    else:
        assert bundle.inference in ("onnxruntime", "numpy")
    series = bundle.series
    found = series.row_windows(machines.x, machines.keys, machines.times)
    normalised = found.normalised()
    flat = normalised.reshape(normalised.shape[0], -1)
    # the Keras network is shown the windows with their history clipped, as the model shows them
    assert series.history_clip is not None
    shown = series.shown(normalised).reshape(flat.shape)
    element = reconstruction_errors(
        trained.model, shown, trained.spec.input_shape, bundle.manifest.error, reduce=False,
        targets=flat,
    )  # fmt: skip
    scales = series.channel_scales_for(found.keys[found.scored_rows])
    expected = window_scores(
        element.reshape(normalised.shape), series.score_steps, scales, series.blend_scales
    )
    result = series.score_rows(machines.x, machines.keys, machines.times)
    np.testing.assert_allclose(result.scores[found.scored_rows], expected, rtol=1e-4, atol=1e-7)
    codes = series.encode(normalised[:5])
    assert codes.shape == (5, bundle.manifest.latent_dim)
    assert series.decode(codes).shape == (5, WINDOW, 3)


def test_same_seed_same_scores(fitted, machines) -> None:  # type: ignore[no-untyped-def]
    architecture, trained, _ = fitted
    again = _fit(machines, architecture)
    np.testing.assert_array_equal(again.calibration_errors, trained.calibration_errors)
    assert again.manifest.series == trained.manifest.series


def test_held_out_windows_score_well_above_chance(fitted) -> None:  # type: ignore[no-untyped-def]
    from sklearn.metrics import roc_auc_score

    _, trained, _ = fitted
    labels = trained.heldout_labels
    assert 0 < labels.sum() < labels.size
    assert roc_auc_score(labels, trained.heldout_errors) > 0.75


def test_a_sparse_code_switches_units_off(fitted, machines) -> None:  # type: ignore[no-untyped-def]
    name, trained, model_dir = fitted
    bundle = load_bundle(model_dir)
    codes = bundle.series.encode(
        bundle.series.row_windows(machines.x, machines.keys, machines.times).normalised()
    )
    if not name.startswith("sparse-"):
        assert bundle.manifest.hyperparameters.get("sparsity") is None
        return
    assert bundle.manifest.hyperparameters["sparsity"] == SPARSITY
    latent = trained.model.get_layer("encoder").get_layer("latent")
    assert latent.activity_regularizer is not None
    assert codes.min() >= 0.0  # a ReLU code, exactly zero where off
    assert (codes <= 1e-6).mean() > 0.05, "the L1 penalty left every unit active"
