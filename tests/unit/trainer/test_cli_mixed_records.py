"""`anomaly-trainer` on JSON Lines whose records mix the three shapes, as a topic with several
producers holds: every record is read, as the worker reads it, and scored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from trainer_rows import FEATURES, anomalous_rows, correlated_rows

from anomaly_contract.model_dir import load_bundle
from trainer.cli import main
from worker.decode import FeatureSpec, decode_batch

FAST = ["--epochs", "3", "--patience", "2", "--quiet"]


def mixed_lines(x: np.ndarray, labels: np.ndarray) -> list[bytes]:
    """Row i as a positional list, a `features` object or top-level fields, in turn."""
    lines = []
    for i, row in enumerate(x.tolist()):
        named = dict(zip(FEATURES, row, strict=True))
        shape = [
            {"features": named},
            {"features": row},
            {"site": "plant-1", **dict(reversed(named.items()))},
        ][i % 3]
        lines.append(json.dumps({"id": f"r{i}", **shape, "label": int(labels[i])}).encode())
    return lines


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, list[bytes], Path]:
    """The mixed-shape file, its rows and lines, and a model fitted on it through the CLI."""
    root = tmp_path_factory.mktemp("mixed")
    x = np.vstack([correlated_rows(150, seed=7), anomalous_rows(15, seed=8)])
    labels = np.r_[np.zeros(150, int), np.ones(15, int)]
    lines = mixed_lines(x, labels)
    path = root / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    assert main(["fit", str(path), "--model-dir", str(root / "models"), *FAST]) == 0
    return path, x, lines, root / "models"


def test_fit_reads_every_record_of_mixed_shapes(mixed) -> None:  # type: ignore[no-untyped-def]
    _, x, _, model_dir = mixed
    bundle = load_bundle(model_dir)
    assert bundle.feature_names == FEATURES  # named by the first record, in its order
    assert bundle.manifest.rows.total == len(x)
    assert bundle.manifest.rows.excluded_labelled == 15


def test_score_gives_every_record_the_workers_score(mixed, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    path, x, lines, model_dir = mixed
    out = tmp_path / "scores.jsonl"
    assert main(["score", str(path), "--model-dir", str(model_dir), "--output", str(out)]) == 0
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [s["row"] for s in scored] == list(range(len(x)))
    assert [s["id"] for s in scored] == [f"r{i}" for i in range(len(x))]
    bundle = load_bundle(model_dir)
    decoded = decode_batch(lines, FeatureSpec(names=tuple(bundle.feature_names)))
    assert decoded.errors == [] and decoded.valid_index == list(range(len(x)))
    expected = bundle.score(decoded.x).scores  # the scores the worker gives the same records
    np.testing.assert_allclose([s["score"] for s in scored], expected, rtol=1e-6)
    assert f"scored {len(x)} rows" in capsys.readouterr().err


def test_evaluate_reads_the_labels_of_mixed_shapes(mixed, capsys) -> None:  # type: ignore[no-untyped-def]
    path, _, _, model_dir = mixed
    capsys.readouterr()
    assert main(["evaluate", str(path), "--model-dir", str(model_dir), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["roc_auc"] > 0.5
