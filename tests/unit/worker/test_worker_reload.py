"""ModelWatcher: first load, hot swap, refusal of another schema, failure of a broken version."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry
from worker_models import TrainedModel, publish

from anomaly_contract.model_dir import set_current
from worker.metrics import WorkerMetrics
from worker.reload import ModelWatcher, schema_mismatch


def reloads(reg: CollectorRegistry, result: str) -> float:
    return reg.get_sample_value("anomaly_worker_model_reloads_total", {"result": result}) or 0.0


def test_first_load_then_swap_and_rollback(model_dir: Path, trained: TrainedModel) -> None:
    reg = CollectorRegistry()
    watcher = ModelWatcher(model_dir, 0.05, WorkerMetrics(reg))
    first = watcher.wait_for_first(threading.Event())
    assert first is not None and first.version == "v1"
    watcher.check_once()
    assert watcher.take_pending() is None  # CURRENT unchanged: nothing to do
    publish(model_dir, trained, threshold=trained.threshold * 2)
    watcher.check_once()
    new = watcher.take_pending()
    assert new is not None and new.version == "v2" and new.threshold == trained.threshold * 2
    assert watcher.take_pending() is None
    set_current(model_dir, "v1")  # rollback is just another change of CURRENT
    watcher.check_once()
    assert watcher.take_pending().version == "v1"
    assert reloads(reg, "success") == 3


def test_other_schema_is_refused(model_dir: Path, trained_other_schema: TrainedModel) -> None:
    reg = CollectorRegistry()
    watcher = ModelWatcher(model_dir, 0.05, WorkerMetrics(reg))
    assert watcher.wait_for_first(threading.Event()) is not None
    publish(model_dir, trained_other_schema)
    watcher.check_once()
    assert watcher.take_pending() is None
    assert reloads(reg, "refused") == 1


def test_broken_version_fails_and_the_old_one_stays(model_dir: Path, trained: TrainedModel) -> None:
    reg = CollectorRegistry()
    watcher = ModelWatcher(model_dir, 0.05, WorkerMetrics(reg))
    assert watcher.wait_for_first(threading.Event()) is not None
    version = publish(model_dir, trained)
    (model_dir / "versions" / version / "model.keras").write_bytes(b"corrupt")
    watcher.check_once()
    assert watcher.take_pending() is None
    assert reloads(reg, "failed") == 1
    watcher.check_once()  # not retried in a loop
    assert reloads(reg, "failed") == 1


def test_waits_for_a_model_to_be_published(tmp_path: Path, trained: TrainedModel) -> None:
    model_dir = tmp_path / "empty"
    watcher = ModelWatcher(model_dir, 0.05, WorkerMetrics(CollectorRegistry()))
    stop = threading.Event()
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(watcher.wait_for_first(stop)))
    t.start()
    publish(model_dir, trained)
    t.join(timeout=30)
    assert not t.is_alive()
    assert result[0] is not None and result[0].version == "v1"
    stop.set()
    shutil.rmtree(model_dir)
    stopped = ModelWatcher(model_dir, 0.05, WorkerMetrics(CollectorRegistry()))
    assert stopped.wait_for_first(stop) is None


def test_schema_mismatch_messages(model_dir: Path, trained: TrainedModel) -> None:
    from anomaly_contract.model_dir import read_manifest

    m = read_manifest(model_dir / "versions" / "v1")
    assert schema_mismatch(m, m) is None
    renamed = m.model_copy(update={"feature_names": ["x"] + m.feature_names[1:], "version": "v9"})
    assert "different feature names" in schema_mismatch(m, renamed)
    shorter = m.model_copy(update={"feature_names": m.feature_names[:3], "version": "v9"})
    assert "expects 3 features" in schema_mismatch(m, shorter)
