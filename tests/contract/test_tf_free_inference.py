"""Every architecture scores without TensorFlow, as Keras does (issue 14).

Per architecture: the published version carries a NumPy inference form, its scores, codes and
decodings match the Keras model's within a relative 1e-5, and the worker's scoring in a fresh
process never imports TensorFlow, Keras, pandas, matplotlib or scikit-learn. A version without
the form (published before it existed) still loads through TensorFlow.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from anomaly_contract import artifact, model_dir
from anomaly_contract.errors import ArtifactError
from anomaly_contract.layer_engine import LayerEngine
from anomaly_contract.model_dir import load_bundle, load_version_dir
from tests.contract.tf_free_models import (
    ALL_ARCHITECTURES,
    GRAPH_ARCHITECTURES,
    SERIES_ARCHITECTURES,
    digits_rows,
    machines_series,
)

RTOL, ATOL = 1e-5, 1e-7  # as the round-trip contract: relative 1e-5, absolute floor for ~0 scores
TRAINING_ONLY = ("tensorflow", "keras", "pandas", "matplotlib", "sklearn")
# A graph is published where tf2onnx (the train extra) is installed, run where onnxruntime is.
ONNX_SERVES = all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "tf2onnx"))


@pytest.fixture(scope="module")
def published(tf_free_published: dict[str, Path]) -> dict[str, Path]:
    return tf_free_published


def _expected_runtime(name: str) -> str:
    """Dense-family versions score with NumPy; the others with ONNX Runtime where it is
    installed (the worker's runtime has it), else with their NumPy layers."""
    return "onnxruntime" if name in GRAPH_ARCHITECTURES and ONNX_SERVES else "numpy"


def _inputs(name: str) -> np.ndarray:
    if name in SERIES_ARCHITECTURES:
        return machines_series().x
    return digits_rows()[0][:120]


def _scores(bundle: artifact.ModelBundle, name: str) -> np.ndarray:
    if name in SERIES_ARCHITECTURES:
        data = machines_series()
        result = bundle.series.score_rows(data.x, data.keys, data.times)
        return result.scores[~result.warming]
    return bundle.score(_inputs(name)).scores


@pytest.mark.parametrize("name", ALL_ARCHITECTURES)
def test_numpy_scores_match_keras(published: dict[str, Path], name: str) -> None:
    fast = load_bundle(published[name])
    slow = load_version_dir(fast.path, prefer_keras=True)
    assert fast.inference == _expected_runtime(name) and slow.inference == "tensorflow"
    assert {p.name for p in fast.path.iterdir()} & set(artifact.OPTIONAL_FILES)
    expected = _scores(slow, name)
    assert expected.size > 50 and np.isfinite(expected).all()
    np.testing.assert_allclose(_scores(fast, name), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", GRAPH_ARCHITECTURES)
def test_numpy_layers_match_keras_where_onnx_serves(published: dict[str, Path], name: str) -> None:
    """The NumPy layers written next to an ONNX graph (what a worker without onnxruntime
    runs) score as Keras does too."""
    version = load_bundle(published[name]).path
    assert (version / artifact.LAYERS_FILE).is_file()
    bundle = load_version_dir(version)
    layers = artifact.ModelBundle(
        bundle.manifest,
        bundle.scaler,
        version,
        engine=LayerEngine.load(version / artifact.LAYERS_FILE),
    )
    slow = load_version_dir(version, prefer_keras=True)
    np.testing.assert_allclose(_scores(layers, name), _scores(slow, name), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", ALL_ARCHITECTURES)
def test_numpy_codes_and_decodings_match_keras(published: dict[str, Path], name: str) -> None:
    fast = load_bundle(published[name])
    slow = load_version_dir(fast.path, prefer_keras=True)
    if name in SERIES_ARCHITECTURES:
        windows = np.random.default_rng(1).normal(size=(20, fast.series.window, 3))
        codes = fast.series.encode(windows)
        np.testing.assert_allclose(codes, slow.series.encode(windows), rtol=1e-4, atol=1e-5)
        got, want = fast.series.decode(codes), slow.series.decode(codes)
    else:
        rows = _inputs(name)[:20]
        codes = fast.encode(rows)
        np.testing.assert_allclose(codes, slow.encode(rows), rtol=1e-4, atol=1e-5)
        got, want = fast.decode(codes), slow.decode(codes)
    assert codes.shape == (20, fast.manifest.latent_dim)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_version_without_the_numpy_form_loads_through_tensorflow(
    published: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = tmp_path / "old"
    shutil.copytree(published["conv"], old)
    version = load_bundle(old).path
    (version / artifact.LAYERS_FILE).unlink()
    (version / artifact.ONNX_FILE).unlink(missing_ok=True)
    bundle = load_bundle(old)
    assert bundle.inference == "tensorflow"
    np.testing.assert_allclose(
        bundle.score(_inputs("conv")).scores,
        load_bundle(published["conv"]).score(_inputs("conv")).scores,
        rtol=RTOL,
        atol=ATOL,
    )
    # Where TensorFlow is not installed (the worker image): one line naming the missing form.
    monkeypatch.setattr(model_dir, "tensorflow_installed", lambda: False)
    with pytest.raises(ArtifactError) as refused:
        load_bundle(old)
    message = str(refused.value)
    assert "\n" not in message and artifact.LAYERS_FILE in message
    assert "kafka-anomaly[train]" in message


_WORKER_SCORING = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import worker.cli, worker.scoring, worker.reload, worker.outputs
    from anomaly_contract.model_dir import load_bundle
    from anomaly_contract.series import SeriesState

    dirs, inputs = json.loads(sys.argv[1]), np.load(sys.argv[2])
    for name, model_dir in dirs.items():
        bundle = load_bundle(model_dir)
        bundle.warm_up()
        x = inputs[name]
        if bundle.manifest.series is None:
            scores = worker.scoring.score_batch(bundle, x).scores
        else:
            state, found = SeriesState(bundle.series, max_keys=10), []
            for offset, row in enumerate(x):
                window = state.push("k", row, offset)
                if window is not None:
                    found.append(window.values)
            scores = bundle.series.score_windows(np.stack(found), ["k"] * len(found)).scores
        assert np.isfinite(scores).all() and scores.size > 0, name
        print(name, bundle.inference, scores.size)
    print("imported:", sorted(m for m in %r if m in sys.modules))
    """
)


def test_worker_scores_every_architecture_without_training_libraries(
    published: dict[str, Path], tmp_path: Path
) -> None:
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, **{name: _inputs(name)[:200] for name in published})
    code = _WORKER_SCORING % (TRAINING_ONLY,)
    dirs = json.dumps({name: str(path) for name, path in published.items()})
    run = subprocess.run(
        [sys.executable, "-c", code, dirs, str(inputs)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[-1] == "imported: []", run.stdout
    assert sorted(line.split()[0] for line in lines[:-1]) == sorted(published)
    assert {line.split()[0]: line.split()[1] for line in lines[:-1]} == {
        name: _expected_runtime(name) for name in published
    }
