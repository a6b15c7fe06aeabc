"""Hot reload: watch MODEL_DIR's CURRENT, load a new version off the hot path, hand it over.

A background thread loads and warms the new version (tracing its inference function), checks that
it reads the same input as the model in use (same feature names, input and image shapes), and
leaves it for the loop to swap in between batches. A version that fails to load or does not fit is
refused: the worker keeps the old model, logs why and counts it in
``anomaly_worker_model_reloads_total{result="failed"|"refused"}``.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from trainer.artifact import Manifest, ModelBundle, current_version, load_bundle
from trainer.errors import TrainerError
from worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)


def schema_mismatch(active: Manifest, candidate: Manifest) -> str | None:
    """Why ``candidate`` cannot replace ``active`` on the same input topic, or None if it can."""
    if candidate.feature_names != active.feature_names:
        if len(candidate.feature_names) != len(active.feature_names):
            return (
                f"{candidate.version} expects {candidate.n_features} features,"
                f" {active.version} {active.n_features}"
            )
        return f"{candidate.version} has different feature names than {active.version}"
    if candidate.input_shape != active.input_shape:
        return f"{candidate.version} input shape {candidate.input_shape} != {active.input_shape}"
    if candidate.image_shape != active.image_shape:
        return f"{candidate.version} image shape {candidate.image_shape} != {active.image_shape}"
    return None


class ModelWatcher:
    """Polls CURRENT every ``poll_interval_s``; `take_pending` hands a loaded version to the loop."""

    def __init__(self, model_dir: Path, poll_interval_s: float, metrics: WorkerMetrics) -> None:
        self.model_dir = Path(model_dir)
        self.poll_interval_s = poll_interval_s
        self.metrics = metrics
        self._lock = threading.Lock()
        self._pending: ModelBundle | None = None
        self._accepted: Manifest | None = None  # schema reference: the newest accepted version
        self._seen: str | None = None  # last CURRENT value acted upon
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check_once(self) -> None:
        """Load CURRENT if it changed since the last check (the first load is never refused)."""
        try:
            name = current_version(self.model_dir)
        except OSError as exc:
            log.warning("cannot read %s/CURRENT: %s", self.model_dir, exc)
            return
        if name is None or name == self._seen:
            return
        self._seen = name
        try:
            bundle = load_bundle(self.model_dir, name)
            bundle.warm_up()
        except (TrainerError, OSError, ValueError) as exc:
            self.metrics.model_reloads.labels("failed").inc()
            log.error(
                "model version %s cannot be loaded, keeping %s: %s",
                name,
                self._accepted.version if self._accepted else "none",
                exc,
                extra={"version": name, "result": "failed"},
            )
            return
        if self._accepted is not None:
            why = schema_mismatch(self._accepted, bundle.manifest)
            if why is not None:
                self.metrics.model_reloads.labels("refused").inc()
                log.error(
                    "model version %s refused, keeping %s: %s",
                    name,
                    self._accepted.version,
                    why,
                    extra={"version": name, "result": "refused"},
                )
                return
        with self._lock:
            self._pending = bundle
            self._accepted = bundle.manifest
        self.metrics.model_reloads.labels("success").inc()
        log.info("model version %s loaded", name, extra={"version": name, "result": "success"})

    def take_pending(self) -> ModelBundle | None:
        """The newest loaded version not yet taken (called by the loop between batches)."""
        with self._lock:
            bundle, self._pending = self._pending, None
        return bundle

    def wait_for_first(self, stop: threading.Event) -> ModelBundle | None:
        """Block until a first version is loaded (the trainer may publish after we start)."""
        announced = False
        while not stop.is_set():
            self.check_once()
            bundle = self.take_pending()
            if bundle is not None:
                return bundle
            if not announced:
                log.warning(
                    "no usable model in %s yet: waiting for `anomaly-trainer fit` to publish one",
                    self.model_dir,
                )
                announced = True
            stop.wait(self.poll_interval_s)
        return None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.check_once()
            except Exception:  # a watcher that dies silently would freeze the model forever
                log.exception("model watcher check failed")

    def stop(self) -> None:
        self._stop.set()
