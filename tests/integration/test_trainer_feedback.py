"""``fit --feedback kafka://...`` and ``threshold --feedback kafka://... --publish`` on the real
broker: feedback and events topics produced here as the worker and an analyst would."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from kafka_helpers import create_topic, produce_json, unique_name

from anomaly_contract.model_dir import current_version, load_bundle
from trainer.builtin_data import make_sensor_records
from trainer.cli import main as trainer_main
from worker.incidents import event_id

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(400)]

QUICK = ["--epochs", "25", "--quiet", "--seed", "3", "--calibration", "holdout"]
TRUTH = ("label", "anomaly_kind", "anomaly_sensor")


def _event(
    record: dict, where: tuple[int, int], score: float, threshold: float, topic: str
) -> dict:
    partition, offset = where
    return {
        "event_id": event_id(topic, partition, offset, "v1"),
        "id": record["id"],
        "score": score,
        "threshold": threshold,
        "severity": score / threshold,
        "model_version": "v1",
        "source": {"topic": topic, "partition": partition, "offset": offset, "timestamp_ms": None},
        "top_features": [],
        "detected_at": datetime.now(UTC).isoformat(),
    }


def test_feedback_from_topics_moves_the_threshold_and_retrains(
    kafka_bootstrap: str, tmp_path, capsys
) -> None:
    model_dir = tmp_path / "models"
    assert trainer_main(["fit", "builtin:sensors?rows=1500&seed=4", "--model-dir", str(model_dir), *QUICK]) == 0  # fmt: skip
    v1 = load_bundle(model_dir)

    # The stream the worker scored, and the events it would have emitted for it.
    stream = unique_name("readings")
    create_topic(kafka_bootstrap, stream, partitions=2)
    records = make_sensor_records(1200, anomaly_rate=0.08, seed=11, start_index=50_000)
    where = produce_json(
        kafka_bootstrap,
        stream,
        [{k: v for k, v in r.items() if k not in TRUTH} for r in records],
        keys=[r["id"] for r in records],
    )
    x = np.array([[r[name] for name in v1.feature_names] for r in records])
    scores = v1.score(x).scores
    flagged = np.flatnonzero(scores > v1.threshold)
    truth = np.array([r["label"] != 0 for r in records])
    events = [_event(records[i], where[i], float(scores[i]), v1.threshold, stream) for i in flagged]
    n_confirmed, n_false = int(truth[flagged].sum()), int((~truth[flagged]).sum())
    assert n_confirmed and n_false, "the test needs both kinds of events"
    events_topic, feedback_topic = unique_name("events"), unique_name("feedback")
    create_topic(kafka_bootstrap, events_topic)
    create_topic(kafka_bootstrap, feedback_topic)
    produce_json(
        kafka_bootstrap, events_topic, events, keys=[str(records[i]["id"]) for i in flagged]
    )
    verdicts = [
        {"event_id": e["event_id"], "verdict": "confirmed" if truth[i] else "false_positive",
         "by": "analyst", "at": "2026-12-02T05:00:00Z"}
        for e, i in zip(events, flagged, strict=True)
    ]  # fmt: skip
    bad = [b"{not json", {"event_id": "nobody-knows", "verdict": "confirmed"}, {"verdict": "x"}]
    produce_json(kafka_bootstrap, feedback_topic, [*verdicts, *bad])
    feedback = f"kafka://{kafka_bootstrap}/{feedback_topic}?events={events_topic}"

    # threshold: v1's events are labelled; --publish makes v2 with v1's network.
    capsys.readouterr()
    args = ["threshold", "--model-dir", str(model_dir), "--feedback", feedback]
    assert trainer_main([*args, "--target-precision", "0.95", "--publish"]) == 0
    out = capsys.readouterr().out
    assert "proposed threshold" in out and "published v2" in out
    v2 = load_bundle(model_dir)
    assert v2.version == "v2" and v2.threshold > v1.threshold
    assert v2.manifest.hyperparameters["network_of"] == "v1"
    assert (
        v2.manifest.feedback is not None and v2.manifest.feedback.threshold_before == v1.threshold
    )
    at_v2 = scores[flagged] > v2.threshold
    assert truth[flagged][at_v2].mean() >= 0.95  # the promised precision on the labelled events

    # fit from the stream with the feedback: confirmed rows left out, false positives kept even
    # though the current model (v2) may flag them (--exclude-flagged auto is on for topics).
    source = f"kafka://{kafka_bootstrap}/{stream}?max_records=1200"
    assert trainer_main(["fit", source, "--model-dir", str(model_dir), *QUICK, "--feedback", feedback]) == 0  # fmt: skip
    v3 = load_bundle(model_dir)
    assert current_version(model_dir) == "v3"
    fb = v3.manifest.feedback
    assert fb is not None
    assert (fb.confirmed, fb.false_positive, fb.unresolved, fb.skipped) == (
        n_confirmed,
        n_false,
        1,
        2,
    )
    assert (fb.confirmed_rows, fb.false_positive_rows) == (n_confirmed, n_false)
    # v2 (v1's network, so v1's scores) flags some rows again: --exclude-flagged drops them,
    # except the false positives; confirmed rows it does not flag are left out as labelled.
    by_v2 = scores > v2.threshold
    confirmed_mask = np.zeros(len(records), bool)
    confirmed_mask[flagged[truth[flagged]]] = True
    assert v3.manifest.rows.excluded_flagged == int((by_v2 & confirmed_mask).sum())
    assert v3.manifest.rows.excluded_labelled == n_confirmed - int((by_v2 & confirmed_mask).sum())
    fp_rows = flagged[~truth[flagged]]
    v3_scores = v3.score(x).scores
    assert int((v3_scores[fp_rows] > v3.threshold).sum()) == fb.false_positive_rows_above
    rows = v3.manifest.rows
    assert rows.train + rows.validation + rows.calibration + rows.excluded_labelled + rows.excluded_flagged == 1200  # fmt: skip
