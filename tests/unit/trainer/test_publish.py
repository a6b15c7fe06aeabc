"""Publishing: round trip, atomic versions under SIGKILL, versions/promote/retention commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from trainer_rows import FEATURES, QUICK, anomalous_rows, correlated_rows

from anomaly_contract.model_dir import current_version, list_versions, load_bundle, load_version_dir
from trainer.cli import main
from trainer.fit import fit_model
from trainer.publish import publish_model

ROOT = Path(__file__).resolve().parents[3]


def test_loaded_model_gives_the_same_scores(published) -> None:  # type: ignore[no-untyped-def]
    model_dir, trained = published
    bundle = load_bundle(model_dir)
    assert bundle.version == "v1"
    assert bundle.threshold == trained.threshold
    scores = bundle.score(trained.heldout_x).scores
    assert np.allclose(scores, trained.heldout_errors, rtol=1e-5, atol=1e-8)
    # Reloading gives bit-identical scores.
    again = load_bundle(model_dir).score(trained.heldout_x).scores
    assert np.array_equal(scores, again)
    m = bundle.manifest
    assert m.feature_names == FEATURES and m.input_shape == [6]
    assert m.data_source == "test" and m.data_fingerprint.startswith("sha256:")
    assert set(m.library_versions) >= {"keras", "tensorflow", "numpy"}
    assert bundle.encode(trained.heldout_x[:4]).shape == (4, m.latent_dim)


def test_versions_promote_and_retention(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = correlated_rows(80)
    options = QUICK.__class__(epochs=1, patience=1, calibration="holdout")
    trained = fit_model(x, FEATURES, None, options, quiet=True)
    for _ in range(4):  # one fit published four times: four versions all the same
        publish_model(trained, tmp_path, keep=3)
    assert [v.version for v in list_versions(tmp_path)] == ["v2", "v3", "v4"]
    assert current_version(tmp_path) == "v4"

    assert main(["versions", "--model-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("* v4") and out[0].startswith("  v2")

    assert main(["promote", "v2", "--model-dir", str(tmp_path)]) == 0
    assert "now v2 (was v4)" in capsys.readouterr().out
    assert current_version(tmp_path) == "v2"
    assert main(["versions", "--model-dir", str(tmp_path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [v["version"] for v in listed if v["current"]] == ["v2"]

    # An unknown version is a one-line error, exit 2, and CURRENT is untouched.
    assert main(["promote", "v9", "--model-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "v9 not found" in err
    assert main(["promote", "banana", "--model-dir", str(tmp_path)]) == 2
    assert "not a version name" in capsys.readouterr().err
    assert current_version(tmp_path) == "v2"

    # Retention never removes the current version, even when it is old.
    publish_model(
        fit_model(
            x,
            FEATURES,
            None,
            QUICK.__class__(epochs=1, patience=1, calibration="holdout"),
            quiet=True,
        ),
        tmp_path,
        keep=1,
        make_current=False,
    )
    assert {v.version for v in list_versions(tmp_path)} == {"v2", "v5"}


def test_missing_model_dir_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["versions", "--model-dir", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


PUBLISH_LOOP = textwrap.dedent(
    """
    import sys, numpy as np
    sys.path.insert(0, {tests!r})
    from trainer_rows import correlated_rows, FEATURES
    from trainer.fit import FitOptions, fit_model
    from trainer.publish import publish_model
    x = correlated_rows(120)
    epochs = int(sys.argv[2])
    while True:
        trained = fit_model(x, FEATURES, None, FitOptions(epochs=epochs, patience=epochs, calibration="holdout"), quiet=True)
        print("training done", flush=True)
        print("published", publish_model(trained, sys.argv[1], keep=50), flush=True)
    """
)


def _start_publisher(model_dir: Path, epochs: int) -> subprocess.Popen[str]:
    code = PUBLISH_LOOP.format(tests=str(Path(__file__).parent))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code, str(model_dir), str(epochs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def _assert_consistent(model_dir: Path) -> str:
    current = current_version(model_dir)
    assert current is not None
    for info in list_versions(model_dir):
        bundle = load_version_dir(info.path)  # every visible version is complete
        assert bundle.manifest.version == info.version
    bundle = load_bundle(model_dir)
    assert np.isfinite(bundle.score(anomalous_rows(5)).scores).all()
    return current


@pytest.mark.slow
def test_sigkill_during_training_and_publishing_leaves_a_consistent_dir(tmp_path: Path) -> None:
    """Kill the writer while it trains, then at random points of train+publish loops."""
    seed_model = fit_model(correlated_rows(120), FEATURES, None, QUICK, quiet=True)
    publish_model(seed_model, tmp_path)
    # 1) Killed during a long training: v1 stays current and nothing else appears.
    proc = _start_publisher(tmp_path, epochs=10_000)
    time.sleep(8)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert _assert_consistent(tmp_path) == "v1"
    assert [v.version for v in list_versions(tmp_path)] == ["v1"]

    # 2) Killed at different moments of short train+publish cycles (some land mid-write).
    rng = np.random.default_rng(0)
    for _ in range(3):
        proc = _start_publisher(tmp_path, epochs=1)
        assert proc.stdout is not None
        proc.stdout.readline()  # the first training finished: publishing starts now
        time.sleep(float(rng.uniform(0.0, 0.6)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        _assert_consistent(tmp_path)
    # Staging leftovers of dead writers are cleaned by the next writer.
    publish_model(seed_model, tmp_path)
    assert not list(tmp_path.glob(".staging-*"))
    _assert_consistent(tmp_path)
