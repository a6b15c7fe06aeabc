"""The worker following a compacted model topic (ANOMALY_MODEL_TOPIC), on the real broker.

Every scored record becomes an event (both versions get a threshold far below any score), so the
events name the version that scored each record and show exactly when the swap happened.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from kafka import KafkaProducer
from kafka_helpers import consume_all, produce_json, unique_name
from worker_harness import Topics, WorkerFactory, WorkerProcess, make_topics
from worker_models import TrainedModel, publish, sensor_rows, train_model

from anomaly_contract.artifact import VERSIONS_DIR  # noqa: E402
from anomaly_contract.model_dir import read_manifest  # noqa: E402
from anomaly_contract.model_topic_format import (
    MODEL_PARTITION,
    current_record,
    pack_version_dir,
    sha256_hex,
    version_records,
)
from trainer.publish import publish_to_topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

N_FEATURES = 6


@pytest.fixture(scope="module")
def trainer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trainer's model directory: v1 and v2 have the same schema and thresholds that flag every
    row; v3 reads 4 features instead of 6."""
    tm: TrainedModel = train_model(n_features=N_FEATURES, seed=0, epochs=2)
    path = tmp_path_factory.mktemp("trainer") / "models"
    assert publish(path, tm, threshold=1e-9) == "v1"
    assert publish(path, tm, threshold=2e-9, make_current=False) == "v2"
    other = train_model(n_features=4, seed=1, epochs=1)
    assert publish(path, other, make_current=False) == "v3"
    return path


@pytest.fixture
def topics(kafka_bootstrap: str, topic_name: str) -> Topics:
    return make_topics(kafka_bootstrap, topic_name, partitions=3)


@pytest.fixture
def start_worker(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """``start_worker(topics, model_topic, cache_dir)``: a worker with no model but the topic."""
    factory = WorkerFactory(kafka_bootstrap, tmp_path)

    def start(topics: Topics, model_topic: str, cache_dir: Path) -> WorkerProcess:
        w = factory.start(topics, cache_dir, MODEL_TOPIC=model_topic, BATCH_MAX_RECORDS=100)
        w.wait_port()
        return w

    yield start
    factory.close()


def wait_for(
    predicate: Callable[[], bool], what: str, worker: WorkerProcess, timeout_s: float = 30
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, (
            f"timed out waiting for {what}:\n{worker.log_text()[-4000:]}"
        )
        time.sleep(0.2)


def send_rows(bootstrap: str, topic: str, n: int, seed: int) -> list[tuple[int, int]]:
    x, _ = sensor_rows(n, N_FEATURES, seed=seed)
    return produce_json(bootstrap, topic, [{"features": r.tolist()} for r in x])


def versions_by_source(
    bootstrap: str, topics: Topics, expected: int
) -> dict[tuple[int, int], list[str]]:
    """(partition, offset) of each scored input record -> the versions its events name."""
    out: dict[tuple[int, int], list[str]] = {}
    for e in consume_all(bootstrap, topics.output, expected=expected, timeout_s=30):
        body = e.json()
        out.setdefault((body["source"]["partition"], body["source"]["offset"]), []).append(
            body["model_version"]
        )
    return out


def test_fresh_worker_with_empty_cache_loads_the_topic_version(
    kafka_bootstrap: str, topics: Topics, trainer_dir: Path, start_worker, tmp_path: Path
) -> None:
    model_topic = unique_name("models")
    publish_to_topic(kafka_bootstrap, model_topic, trainer_dir / VERSIONS_DIR / "v1")
    cache = tmp_path / "cache"  # does not exist: another machine, no shared volume
    t0 = time.monotonic()
    worker = start_worker(topics, model_topic, cache)
    assert requests.get(worker.url("/readyz"), timeout=5).status_code == 503
    worker.wait_ready()
    print(f"\nboot to ready with the model topic: {time.monotonic() - t0:.1f}s")
    assert "model source: topic" in worker.log_text()
    assert worker.metric("anomaly_worker_model_info", version="v1") == 1
    assert (cache / "CURRENT").read_text().strip() == "v1"

    placed = send_rows(kafka_bootstrap, topics.input, 300, seed=41)
    worker.wait_records(300)
    scored = versions_by_source(kafka_bootstrap, topics, expected=300)
    assert scored == {p: ["v1"] for p in placed}
    assert worker.metric("anomaly_worker_model_reloads_total", result="success") == 1
    assert worker.terminate()[0] == 0


def test_new_version_under_load_swaps_once_between_batches(
    kafka_bootstrap: str, topics: Topics, trainer_dir: Path, start_worker, tmp_path: Path
) -> None:
    model_topic = unique_name("models")
    publish_to_topic(kafka_bootstrap, model_topic, trainer_dir / VERSIONS_DIR / "v1")
    # The URL form: brokers named explicitly (here the same ones).
    worker = start_worker(topics, f"kafka://{kafka_bootstrap}/{model_topic}", tmp_path / "cache")
    worker.wait_ready()

    placed: list[tuple[int, int]] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def load() -> None:
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
        try:
            seed = 100
            while not stop.is_set():
                x, _ = sensor_rows(50, N_FEATURES, seed=seed)
                futures = [
                    producer.send(topics.input, value=json.dumps({"features": r.tolist()}).encode())
                    for r in x
                ]
                producer.flush()
                placed.extend((m.partition, m.offset) for m in (f.get(30) for f in futures))
                seed += 1
                time.sleep(0.05)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)
        finally:
            producer.close()

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        # 60 s: a consumer-group rejoin the worker retries after 30 s must not fail this test
        wait_for(lambda: worker.records_total() >= 500, "load before the swap", worker, 60)
        publish_to_topic(kafka_bootstrap, model_topic, trainer_dir / VERSIONS_DIR / "v2")
        wait_for(
            lambda: worker.metric("anomaly_worker_model_info", version="v2") == 1, "v2", worker
        )
        n_at_swap = worker.records_total()
        wait_for(lambda: worker.records_total() >= n_at_swap + 500, "load after the swap", worker)
    finally:
        stop.set()
        loader.join(30)
    assert not failures, failures
    worker.wait_records(len(placed))

    events = consume_all(kafka_bootstrap, topics.output, expected=len(placed), timeout_s=30)
    bodies = [e.json() for e in events]  # the output topic has one partition: batch order
    sources = [(b["source"]["partition"], b["source"]["offset"]) for b in bodies]
    assert sorted(sources) == sorted(placed), "every record scored exactly once, none lost"
    in_order = [b["model_version"] for b in bodies]
    first_v2 = in_order.index("v2")
    assert first_v2 > 0 and set(in_order[first_v2:]) == {"v2"}, "one swap, between batches"
    for partition in range(3):
        seq = [
            b["model_version"]
            for b in sorted(bodies, key=lambda b: b["source"]["offset"])
            if b["source"]["partition"] == partition
        ]
        assert seq == sorted(seq), f"partition {partition}: v1 after v2"
    assert worker.metric("anomaly_worker_model_reloads_total", result="success") == 2
    assert worker.metric("anomaly_worker_model_reloads_total", result="refused") == 0
    assert worker.metric("anomaly_worker_model_info", version="v1") == 0
    assert worker.terminate()[0] == 0


def test_corrupt_chunk_and_other_schema_are_refused_and_the_worker_keeps_its_model(
    kafka_bootstrap: str, topics: Topics, trainer_dir: Path, start_worker, tmp_path: Path
) -> None:
    model_topic = unique_name("models")
    publish_to_topic(kafka_bootstrap, model_topic, trainer_dir / VERSIONS_DIR / "v1")
    worker = start_worker(topics, model_topic, tmp_path / "cache")
    worker.wait_ready()
    placed = send_rows(kafka_bootstrap, topics.input, 200, seed=51)
    worker.wait_records(200)

    # v2 as a publisher would write it, in small chunks, one of them with other bytes (same
    # key and headers, so its chunk-sha256 no longer matches), then a current record naming it.
    v2_dir = trainer_dir / VERSIONS_DIR / "v2"
    blob = pack_version_dir(v2_dir)
    records = version_records(blob, read_manifest(v2_dir), chunk_bytes=16 * 1024)
    assert len(records) >= 4  # several chunks and the seal
    bad = records[1]
    assert bad.key.endswith(b"/chunk/000001") and bad.value is not None
    records[1] = type(bad)(
        bad.key, bytes(b ^ 0xFF for b in bad.value[:64]) + bad.value[64:], bad.headers
    )
    records.append(current_record("v2", sha256_hex(blob), "publish"))
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        for r in records:
            producer.send(
                model_topic,
                key=r.key,
                value=r.value,
                headers=r.headers or None,
                partition=MODEL_PARTITION,
            )
        producer.flush(30)
    finally:
        producer.close()

    wait_for(
        lambda: worker.metric("anomaly_worker_model_reloads_total", result="refused") == 1,
        "the refusal",
        worker,
    )
    assert "chunk 1 fails its checksum" in worker.log_text()
    assert worker.metric("anomaly_worker_model_info", version="v1") == 1
    # A sound version that reads other features is refused too, before it is downloaded.
    publish_to_topic(kafka_bootstrap, model_topic, trainer_dir / VERSIONS_DIR / "v3")
    wait_for(
        lambda: worker.metric("anomaly_worker_model_reloads_total", result="refused") == 2,
        "the schema refusal",
        worker,
    )
    assert "v3 expects 4 features, v1 6" in worker.log_text()
    more = send_rows(kafka_bootstrap, topics.input, 200, seed=52)
    worker.wait_records(400)
    scored = versions_by_source(kafka_bootstrap, topics, expected=400)
    assert scored == {p: ["v1"] for p in placed + more}
    assert requests.get(worker.url("/readyz"), timeout=5).status_code == 200
    assert worker.metric("anomaly_worker_model_reloads_total", result="refused") == 2
    assert worker.metric("anomaly_worker_model_reloads_total", result="success") == 1
    assert not (tmp_path / "cache" / VERSIONS_DIR / "v2").exists()
    assert not (tmp_path / "cache" / VERSIONS_DIR / "v3").exists()
    assert worker.terminate()[0] == 0


def test_threshold_far_below_scores(trainer_dir: Path) -> None:
    """The premise of the tests above: both versions flag every row, so every row has an event."""
    from anomaly_contract.model_dir import load_bundle

    x, _ = sensor_rows(200, N_FEATURES, seed=41)
    for v in ("v1", "v2"):
        bundle = load_bundle(trainer_dir, v)
        assert bool(np.all(bundle.score(x).scores > bundle.threshold))
