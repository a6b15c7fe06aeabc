"""Hot reload: watch MODEL_DIR's CURRENT, load a new version off the hot path, hand it over.

A background thread loads and warms the new version (tracing its inference function), checks that
it reads the same input as the model in use (same feature names, input and image shapes), and
leaves it for the loop to swap in between batches. A version that fails to load or does not fit is
refused: the worker keeps the old model, logs why and counts it in
``anomaly_worker_model_reloads_total{result="failed"|"refused"}``.

With a model topic (`TopicModelWatcher`), a follower thread mirrors the topic's current version
into MODEL_DIR, which is then only a private cache, and the same load, check and hand-over runs
on each version it delivers. Versions the reader refuses (torn, corrupt, another schema) count as
``result="refused"``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anomaly_contract.artifact import Manifest, ModelBundle
from anomaly_contract.backoff import backoff_s
from anomaly_contract.errors import AnomalyError, TopicReadError
from anomaly_contract.model_dir import current_version, load_bundle
from anomaly_contract.model_topic_format import Refusal
from worker.metrics import WorkerMetrics
from worker.model_follow import RETRY_FIRST_S, ModelTopicReader, TopicModelUpdate

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

    def __init__(
        self,
        model_dir: Path,
        poll_interval_s: float,
        metrics: WorkerMetrics,
        heartbeat: Callable[[], None] | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.poll_interval_s = poll_interval_s
        self.metrics = metrics
        # Called while waiting for a first model: waiting is alive (/healthz), not stuck.
        self.heartbeat = heartbeat or (lambda: None)
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
        except (AnomalyError, OSError, ValueError) as exc:
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
            self.heartbeat()
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


class TopicModelWatcher(ModelWatcher):
    """Follows a compacted model topic; ``model_dir`` is the private cache the reader fills.

    The topic wins over whatever the cache held before: nothing is loaded until the reader has
    replayed the topic and delivered its current version (a cache left by an earlier run may be
    stale, e.g. after a rollback on the topic). Versions are checked against the accepted schema
    before their chunks are fetched, so an incompatible model is not even downloaded.
    """

    def __init__(
        self,
        cache_dir: Path,
        metrics: WorkerMetrics,
        bootstrap: str,
        topic: str,
        consumer_config: dict[str, Any] | None = None,
        heartbeat: Callable[[], None] | None = None,
        boot_timeout_s: float = 30.0,
        retry_s: float = 5.0,
    ) -> None:
        super().__init__(cache_dir, retry_s, metrics, heartbeat)
        self.topic = topic
        self.boot_timeout_s = boot_timeout_s
        self.reader = ModelTopicReader(
            bootstrap, topic, cache_dir, consumer_config=consumer_config, accept=self._accept
        )

    def _accept(self, manifest: Manifest) -> str | None:
        """Asked by the reader with a sealed version's manifest: why it cannot be used, or None."""
        accepted = self._accepted
        return schema_mismatch(accepted, manifest) if accepted is not None else None

    def _on_refused(self, refusal: Refusal) -> None:
        # The reader logged the reason already (logger worker.model_follow).
        self.metrics.model_reloads.labels("refused").inc()
        log.error(
            "model version %s from topic %s refused, keeping %s: %s",
            refusal.version,
            self.topic,
            self._accepted.version if self._accepted else "none",
            refusal.reason,
            extra={"version": refusal.version, "result": "refused"},
        )

    def _on_update(self, update: TopicModelUpdate) -> None:
        """The reader made ``update.version`` current in the cache: load it like any new CURRENT."""
        try:
            self.check_once()
        except Exception:  # the follower thread must survive whatever one version does
            log.exception(
                "loading model version %s from topic %s failed", update.version, self.topic
            )

    def _report_refusals(self) -> None:
        for refusal in self.reader.take_refused():
            self._on_refused(refusal)

    def wait_for_first(self, stop: threading.Event) -> ModelBundle | None:
        """Replay the topic, load its current version; wait for one if it has none yet."""
        announced = caught_up = False
        failures = 0
        while not stop.is_set():
            self.heartbeat()
            delay = backoff_s(
                failures, min(RETRY_FIRST_S, self.poll_interval_s), self.poll_interval_s
            )
            try:
                if not caught_up:
                    update = self.reader.catch_up(self.boot_timeout_s)
                    caught_up = True
                else:
                    update = self.reader.poll(1.0)
            except (TopicReadError, OSError) as exc:
                log.error("model topic %s: %s; retrying in %.0fs", self.topic, exc, delay)
                failures += 1
                stop.wait(delay)
                continue
            except Exception:  # unexpected; the broker or a later publish may fix it: retry
                log.exception("model topic %s: unexpected failure; retrying", self.topic)
                failures += 1
                stop.wait(delay)
                continue
            finally:
                self._report_refusals()
            failures = 0
            if update is not None:
                self._on_update(update)
                bundle = self.take_pending()
                if bundle is not None:
                    return bundle
            if not announced:
                log.warning(
                    "no usable model on topic %s yet: waiting for `anomaly-trainer fit ... "
                    "--publish-topic` or `anomaly-trainer publish` to send one",
                    self.topic,
                )
                announced = True
        self.reader.close()
        return None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._follow, name="model-topic", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        try:
            self.reader.follow(self._stop, on_update=self._on_update, on_refused=self._on_refused)
        finally:
            self.reader.close()
