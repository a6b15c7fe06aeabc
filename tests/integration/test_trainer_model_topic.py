"""`anomaly-trainer` with a model topic and retraining from the stream, on the real broker."""

from __future__ import annotations

import json

import pytest
from kafka_helpers import create_topic, produce_json, unique_name

from anomaly_contract.model_dir import current_version, load_bundle, load_version_dir
from trainer.builtin_data import make_sensor_records
from trainer.cli import main as trainer_main
from trainer.publish import list_topic_versions
from worker.model_follow import ModelTopicReader

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

# holdout: these tests are about topics, not thresholds (cross-fitting trains 3 more networks)
QUICK = ["--epochs", "25", "--quiet", "--seed", "3", "--calibration", "holdout"]
TRUTH = ("label", "anomaly_kind", "anomaly_sensor")


def _stream(bootstrap: str, topic: str, n: int, start: int) -> list[dict]:
    records = make_sensor_records(n, anomaly_rate=0.08, seed=11, start_index=start)
    produce_json(
        bootstrap,
        topic,
        [{k: v for k, v in r.items() if k not in TRUTH} for r in records],
        keys=[r["id"] for r in records],
    )
    return records


def test_fit_publishes_to_topic_and_retrain_from_stream_leaves_out_flagged_rows(
    kafka_bootstrap: str, tmp_path, capsys
) -> None:
    model_dir = tmp_path / "models"
    model_topic = f"kafka://{kafka_bootstrap}/{unique_name('models')}"
    base = "builtin:sensors?rows=1500&seed=4"
    assert (
        trainer_main(
            ["fit", base, "--model-dir", str(model_dir), *QUICK, "--publish-topic", model_topic]
        )
        == 0
    )
    bootstrap, topic = model_topic.removeprefix("kafka://").split("/", 1)
    on_topic = list_topic_versions(bootstrap, topic)
    assert [(v.version, v.is_current, v.problem) for v in on_topic] == [("v1", True, None)]

    # A fresh reader (another machine: empty cache) gets the same model.
    with ModelTopicReader(bootstrap, topic, tmp_path / "cache") as reader:
        update = reader.catch_up(timeout_s=30)
    assert update is not None and update.version == "v1"
    assert load_version_dir(update.path).threshold == pytest.approx(
        load_bundle(model_dir).threshold, rel=1e-12
    )

    # Retrain from the scored stream: rows v1 flags are left out by default.
    stream_topic = unique_name("scored")
    create_topic(kafka_bootstrap, stream_topic, partitions=2)
    records = _stream(kafka_bootstrap, stream_topic, 1200, start=50_000)
    injected = sum(r["label"] for r in records)
    source = f"kafka://{kafka_bootstrap}/{stream_topic}?max_records=1200"
    capsys.readouterr()
    assert (
        trainer_main(
            [
                "fit",
                source,
                "--model-dir",
                str(model_dir),
                *QUICK,
                "--publish-topic",
                model_topic,
            ]
        )
        == 0
    )
    v2 = load_bundle(model_dir)
    assert v2.version == "v2"
    excluded = v2.manifest.rows.excluded_flagged
    # v1 flags about 1% of normal rows plus most injected anomalies.
    assert injected * 0.6 <= excluded <= injected + 0.05 * len(records)
    assert any("flagged" in n for n in v2.manifest.notes)
    assert (
        v2.manifest.rows.train + v2.manifest.rows.validation + v2.manifest.rows.calibration
        == len(records) - excluded
    )

    # Opting out keeps every row.
    assert (
        trainer_main(
            ["fit", source, "--model-dir", str(model_dir), *QUICK, "--exclude-flagged", "no"]
        )
        == 0
    )
    assert load_bundle(model_dir).manifest.rows.excluded_flagged == 0

    # Rollback through the topic, then list it.
    assert (
        trainer_main(
            ["promote", "v1", "--model-dir", str(model_dir), "--publish-topic", model_topic]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        trainer_main(
            ["versions", "--model-dir", str(model_dir), "--json", "--publish-topic", model_topic]
        )
        == 0
    )
    listed = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["current"]) for r in listed] == [("v1", True), ("v2", False)]
    assert current_version(model_dir) == "v1"


def test_publish_command_refuses_unknown_version(kafka_bootstrap: str, tmp_path, capsys) -> None:
    model_dir = tmp_path / "models"
    assert (
        trainer_main(
            [
                "fit",
                "builtin:sensors?rows=600",
                "--model-dir",
                str(model_dir),
                "--epochs",
                "3",
                "--quiet",
            ]
        )
        == 0
    )
    url = f"kafka://{kafka_bootstrap}/{unique_name('models')}"
    capsys.readouterr()
    assert (
        trainer_main(["publish", "v9", "--model-dir", str(model_dir), "--publish-topic", url]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert "v9" in err and "\n" not in err
    assert trainer_main(["publish", "--model-dir", str(model_dir), "--publish-topic", url]) == 0
