"""The NumPy inference path for dense models: same scores as Keras, no TensorFlow import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from anomaly_contract import artifact  # noqa: E402
from anomaly_contract.errors import ArtifactError  # noqa: E402
from anomaly_contract.model_dir import load_bundle, load_version_dir  # noqa: E402
from trainer.fit import IMAGE_DENOISE, FitOptions, fit_model  # noqa: E402
from trainer.publish import publish_model  # noqa: E402


def _rows(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(7).normal(size=(3, d))
    return rng.normal(size=(n, 3)) @ basis + 0.05 * rng.normal(size=(n, d))


def _publish(tmp_path: Path, **options) -> Path:
    x = _rows(300)
    trained = fit_model(
        x, [f"f{i}" for i in range(x.shape[1])], None,
        FitOptions(epochs=3, seed=0, **options), source="test", quiet=True,
    )  # fmt: skip
    model_dir = tmp_path / "models"
    publish_model(trained, model_dir)
    return model_dir


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu"])
def test_numpy_scores_equal_keras_scores(tmp_path: Path, activation: str) -> None:
    model_dir = _publish(tmp_path, activation=activation, denoise=0.1)
    fast = load_bundle(model_dir)
    assert fast.inference == "numpy"
    slow = load_version_dir(fast.path, prefer_keras=True)
    assert slow.inference == "tensorflow"
    x = _rows(500, seed=3) * 3  # includes rows far from the training data
    a, b = fast.score(x), slow.score(x)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(a.feature_errors, b.feature_errors, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(fast.encode(x[:20]), slow.encode(x[:20]), rtol=1e-4, atol=1e-5)
    codes = fast.encode(x[:20])
    np.testing.assert_allclose(fast.decode(codes), slow.decode(codes), rtol=1e-4, atol=1e-5)


def test_bce_sigmoid_output_matches(tmp_path: Path) -> None:
    model_dir = _publish(tmp_path, loss="bce")
    fast = load_bundle(model_dir)
    slow = load_version_dir(fast.path, prefer_keras=True)
    x = _rows(200, seed=5)
    np.testing.assert_allclose(fast.score(x).scores, slow.score(x).scores, rtol=1e-5)


def test_conv_models_score_with_numpy_and_older_versions_with_tensorflow(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((120, 64))
    trained = fit_model(
        x, [f"p{i}" for i in range(64)], None,
        FitOptions(architecture="conv", image_shape=(8, 8), epochs=2, seed=0),
        source="test", quiet=True,
    )  # fmt: skip
    publish_model(trained, tmp_path / "conv")
    bundle = load_bundle(tmp_path / "conv")
    assert bundle.inference in ("numpy", "onnxruntime")
    assert not (bundle.path / artifact.DENSE_WEIGHTS_FILE).exists()
    for form in (artifact.LAYERS_FILE, artifact.ONNX_FILE):  # as a version published before
        (bundle.path / form).unlink(missing_ok=True)
    older = load_bundle(tmp_path / "conv")
    assert older.inference == "tensorflow"
    np.testing.assert_allclose(older.score(x[:10]).scores, bundle.score(x[:10]).scores, rtol=1e-5)


def test_corrupt_files_are_refused_without_keras(tmp_path: Path) -> None:
    model_dir = _publish(tmp_path)
    path = load_bundle(model_dir).path
    original = (path / artifact.MODEL_FILE).read_bytes()
    (path / artifact.MODEL_FILE).write_bytes(original[: len(original) // 2])
    with pytest.raises(ArtifactError, match="model.keras"):
        load_bundle(model_dir)
    (path / artifact.MODEL_FILE).write_bytes(original)
    weights = path / artifact.DENSE_WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError):
        load_bundle(model_dir)


def test_loading_and_scoring_a_dense_model_never_imports_tensorflow(tmp_path: Path) -> None:
    model_dir = _publish(tmp_path)
    code = (
        "import sys, numpy as np\n"
        "from anomaly_contract.model_dir import load_bundle\n"
        f"b = load_bundle({str(model_dir)!r})\n"
        "b.warm_up(); print(b.score(np.zeros((3, 8))).scores.shape)\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(3,)"


def test_absolute_error_scores_match_training_and_image_defaults(
    tmp_path: Path,
) -> None:
    """``error: mae`` scores the mean absolute error, the same in training and in the bundle."""
    from trainer.fit import reconstruction_errors

    def fit(rows: np.ndarray, columns: list[str], **options: object):  # type: ignore[no-untyped-def]
        # held-out calibration: cross-fitting trains more networks and is not tested here
        opts = FitOptions(calibration="holdout", **options)  # type: ignore[arg-type]
        return fit_model(rows, columns, None, opts, quiet=True)

    x = _rows(300)
    names = [f"f{i}" for i in range(x.shape[1])]
    trained = fit(x, names, epochs=3, seed=0, error="mae", score="mean")
    assert trained.manifest.error == "mae" and trained.manifest.hyperparameters["error"] == "mae"
    publish_model(trained, tmp_path / "mae")
    fast = load_bundle(tmp_path / "mae")
    slow = load_version_dir(fast.path, prefer_keras=True)
    rows = _rows(200, seed=4) * 2
    xs = fast.scaler.transform(rows)
    expected = np.abs(xs - slow.reconstruct_scaled(xs)).mean(axis=1)
    np.testing.assert_allclose(fast.score(rows).scores, expected, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(slow.score(rows).scores, expected, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(
        reconstruction_errors(trained.model, xs, trained.spec.input_shape, "mae"),
        expected,
        rtol=1e-5,
        atol=1e-8,
    )
    # Tables default to squared errors, images to absolute ones.
    assert fit(x, names, epochs=1).manifest.error == "mse"
    pixels = np.random.default_rng(0).random((60, 4))
    img = fit(pixels, names[:4], epochs=1, image_shape=(2, 2))
    assert img.manifest.error == "mae"
    # ... and images train as denoising autoencoders unless told otherwise.
    assert img.manifest.denoise == IMAGE_DENOISE == img.manifest.hyperparameters["denoise"]
    plain = fit(pixels, names[:4], epochs=1, image_shape=(2, 2), denoise=0)
    assert plain.manifest.denoise is None
    # A manifest written before the field existed loads as squared error.
    doc = json.loads((fast.path / artifact.MANIFEST_FILE).read_text())
    doc.pop("error")
    assert artifact.Manifest.model_validate(doc).error == "mse"
