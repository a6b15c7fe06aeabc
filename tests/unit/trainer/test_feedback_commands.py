"""``fit --feedback`` and ``threshold`` from local files (no broker): point and windowed models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from trainer_rows import anomalous_rows, correlated_rows

from anomaly_contract.key_thresholds import KeyThresholds
from anomaly_contract.model_dir import current_version, load_bundle
from trainer.builtin_machines import machines_table
from trainer.cli import main
from trainer.evaluate_series import load_model_series, score_series
from worker.incidents import event_id

QUICK = ["--epochs", "15", "--patience", "5", "--seed", "1", "-q", "--calibration", "holdout"]


def _write_jsonl(path: Path, records: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return path


def _events(rows: np.ndarray, scores, thresholds, version: str, keys=None) -> list[dict]:  # type: ignore[no-untyped-def]
    """The events the worker would emit for ``rows`` (ids = row numbers, offsets too)."""
    return [
        {
            "event_id": event_id("in", 0, int(i), version),
            "id": int(i),
            "score": float(scores[i]),
            "threshold": float(thresholds[i]),
            "model_version": version,
            "source": {"topic": "in", "partition": 0, "offset": int(i), "timestamp_ms": int(i)},
            **({"key": str(keys[i])} if keys is not None else {}),
        }
        for i in rows
    ]


def _verdicts(events: list[dict], truth: np.ndarray) -> list:
    out: list = [
        {
            "event_id": e["event_id"],
            "verdict": "confirmed" if truth[e["id"]] else "false_positive",
            "by": "test",
            "at": "2026-12-02T04:00:00Z",
        }
        for e in events
    ]
    return [*out, "not json", {"event_id": "unknown-id", "verdict": "confirmed"}]


@pytest.fixture(scope="module")
def point_setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("fb")
    x = np.vstack([correlated_rows(900, seed=4), anomalous_rows(40, seed=5)])
    truth = np.r_[np.zeros(900, bool), np.ones(40, bool)]
    frame = pd.DataFrame(x, columns=[f"s{i}" for i in range(6)])
    frame.insert(0, "id", np.arange(len(x)))
    data = root / "data.csv"
    frame.to_csv(data, index=False)
    model_dir = root / "models"
    assert main(["fit", str(data), "--model-dir", str(model_dir), *QUICK]) == 0
    v1 = load_bundle(model_dir)
    scores = v1.score(x).scores
    flagged = np.flatnonzero(scores > v1.threshold)
    events = _events(flagged, scores, np.full(len(x), v1.threshold), "v1")
    assert truth[flagged].any() and (~truth[flagged]).any(), "need both kinds of events"
    ev = _write_jsonl(root / "events.jsonl", events)
    fb = _write_jsonl(root / "feedback.jsonl", _verdicts(events, truth))
    return {"data": data, "models": model_dir, "x": x, "truth": truth, "flagged": flagged,
            "events": ev, "feedback": fb, "v1": v1}  # fmt: skip


def test_fit_with_feedback_leaves_confirmed_out_and_calibrates_over_false_positives(
    point_setup: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    s = point_setup
    flags = ["--feedback", str(s["feedback"]), "--feedback-events", str(s["events"])]
    assert main(["fit", str(s["data"]), "--model-dir", str(s["models"]), *QUICK, *flags]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 unusable feedback records (1 x not_json)" in err
    v2 = load_bundle(s["models"])
    fb = v2.manifest.feedback
    confirmed = int(s["truth"][s["flagged"]].sum())
    false_pos = int((~s["truth"][s["flagged"]]).sum())
    assert fb is not None and (fb.confirmed, fb.false_positive) == (confirmed, false_pos)
    assert (fb.unresolved, fb.skipped) == (1, 1)
    assert (fb.confirmed_rows, fb.false_positive_rows) == (confirmed, false_pos)
    assert v2.manifest.rows.excluded_labelled == confirmed
    # False-positive rows fall under the new threshold unless a confirmed one scores lower.
    scores = v2.score(s["x"]).scores
    fp_rows = s["flagged"][~s["truth"][s["flagged"]]]
    assert int((scores[fp_rows] > v2.threshold).sum()) == fb.false_positive_rows_above
    confirmed_rows = s["flagged"][s["truth"][s["flagged"]]]
    if fb.false_positive_rows_above == 0:
        assert scores[fp_rows].max() <= v2.threshold
    elif fb.threshold_before is not None:  # raised, but capped under a confirmed anomaly
        assert v2.threshold < scores[confirmed_rows].min()
    assert any(n.startswith("feedback from") for n in v2.manifest.notes)


def test_threshold_needs_events_of_the_versions_network_then_publishes_a_new_version(
    point_setup: dict, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    s = point_setup
    model_dir = s["models"]
    before = current_version(model_dir)
    flags = ["--feedback", str(s["feedback"]), "--feedback-events", str(s["events"])]
    capsys.readouterr()
    # The current version (a new network) has no events yet: not enough labels, nothing published.
    if before != "v1":
        assert (
            main(["threshold", "--model-dir", str(model_dir), *flags, "--max-f1", "--publish"]) == 2
        )
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "not enough labels" in err
        assert current_version(model_dir) == before
    args = ["threshold", "--model-dir", str(model_dir), "--version", "v1", *flags]
    assert main([*args, "--target-precision", "0.9", "--report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "proposed threshold" in out and (tmp_path / "threshold.png").is_file()
    assert current_version(model_dir) == before  # no --publish: nothing published
    assert main([*args, "--max-f1", "--publish"]) == 0
    new = load_bundle(model_dir)
    assert new.version != before and new.manifest.hyperparameters["network_of"] == "v1"
    assert new.threshold != s["v1"].threshold
    assert new.manifest.feedback is not None
    assert new.manifest.feedback.threshold_before == s["v1"].threshold
    # Same network: the same scores as v1, judged against the new threshold.
    np.testing.assert_allclose(new.score(s["x"]).scores, s["v1"].score(s["x"]).scores)
    assert (model_dir / "reports" / "threshold-v1.png").is_file()
    # The new version's network is v1's, so v1's events serve it too.
    capsys.readouterr()
    assert main(["threshold", "--model-dir", str(model_dir), *flags, "--max-f1"]) == 0
    assert f"proposed threshold {new.threshold:.6g}" in capsys.readouterr().out


def test_threshold_refuses_without_a_rule_and_without_feedback(point_setup: dict) -> None:
    s = point_setup
    with pytest.raises(SystemExit):
        main(["threshold", "--model-dir", str(s["models"]), "--feedback", str(s["feedback"])])
    flags = ["--feedback", str(s["feedback"])]
    assert main(["threshold", "--model-dir", str(s["models"]), *flags, "--max-f1"]) == 2


def test_windowed_feedback_fit_and_a_threshold_scaling_every_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = pd.DataFrame(machines_table(keys=4, length=300, seed=2))
    frame.insert(0, "id", np.arange(len(frame)))
    truth = frame.pop("label").to_numpy() != 0
    frame = frame.drop(columns=["anomaly_kind"])
    data = tmp_path / "machines.csv"
    frame.to_csv(data, index=False)
    model_dir = tmp_path / "models"
    fit = ["fit", str(data), "--model-dir", str(model_dir), "--window", "8"]
    keyed = ["--key-column", "key", "--time-column", "t", "--architecture", "dense"]
    fast = ["--epochs", "3", "--patience", "2", "--seed", "3", "-q", "--percentile", "95"]
    assert main([*fit, *keyed, *fast]) == 0
    v1 = load_bundle(model_dir)
    result = score_series(v1, load_model_series(str(data), v1))
    flagged = np.flatnonzero(result.is_anomaly)
    events = _events(flagged, result.scores, result.thresholds, "v1", keys=result.keys)
    assert truth[flagged].any() and (~truth[flagged]).any(), "need both kinds of events"
    ev = _write_jsonl(tmp_path / "events.jsonl", events)
    fb = _write_jsonl(tmp_path / "feedback.jsonl", _verdicts(events, truth))
    flags = ["--feedback", str(fb), "--feedback-events", str(ev)]

    assert main(["threshold", "--model-dir", str(model_dir), *flags, "--max-f1", "--publish"]) == 0
    v2 = load_bundle(model_dir)
    assert v2.manifest.series is not None and v1.manifest.series is not None
    old = KeyThresholds.from_json(v1.manifest.series.thresholds)
    new = KeyThresholds.from_json(v2.manifest.series.thresholds)
    factor = new.pooled / old.pooled
    assert factor != 1.0 and v2.threshold == pytest.approx(v1.threshold * factor)
    for key, value in old.per_key.items():
        assert new.per_key[key] == pytest.approx(value * factor)

    assert main([*fit, *keyed, *fast, *flags]) == 0
    v3 = load_bundle(model_dir)
    summary = v3.manifest.feedback
    assert summary is not None and v3.version == "v3"
    assert summary.confirmed == int(truth[flagged].sum())
    assert summary.false_positive == int((~truth[flagged]).sum())
    assert summary.unresolved == 1 and summary.skipped == 1
