"""Following the model topic: mirror its current version into a local model directory."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anomaly_contract.artifact import (
    DEFAULT_KEEP,
    VERSIONS_DIR,
    Manifest,
)
from anomaly_contract.backoff import backoff_s
from anomaly_contract.errors import ArtifactError, TopicReadError
from anomaly_contract.model_dir import (
    publish_staged,
    read_manifest,
    set_current,
    staging_dir,
)
from anomaly_contract.model_topic_format import (
    ChunkInfo,
    Refusal,
    SealedVersion,
    TopicIndex,
    manifest_key,
    pack_version_dir,
    sha256_hex,
    unpack_blob,
)
from anomaly_contract.model_topic_io import (
    DEFAULT_TIMEOUT_S,
    POLL_MS,
    TOPIC_RETRY_S,
    TopicTail,
    fetch_version_blob,
    with_bootstrap_timeout,
)

log = logging.getLogger(__name__)
# Retrying a failed read of the model topic: from 1 s, doubling, up to the caller's retry period.
RETRY_FIRST_S = 1.0


# --------------------------------------------------------------------------------------------
# Following the topic
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TopicModelUpdate:
    """A verified version the topic made current, unpacked at ``path`` (a version directory)."""

    version: str
    path: Path
    sha256: str
    manifest: Manifest


class ModelTopicReader:
    """Follows the model topic and mirrors its current version into ``cache_dir``.

    ``cache_dir`` becomes an ordinary model directory (``versions/<v>/`` and ``CURRENT``), so
    ``load_bundle(cache_dir)`` and the directory watcher work on it unchanged. A version already
    in the cache with the same checksum is not fetched again (a restart costs one metadata
    replay). Not thread-safe: use it from one thread (see `follow`).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        cache_dir: str | os.PathLike[str],
        *,
        consumer_config: dict[str, Any] | None = None,
        keep: int = DEFAULT_KEEP,
        fetch_timeout_s: float = DEFAULT_TIMEOUT_S,
        max_refusals: int = 100,
        accept: Callable[[Manifest], str | None] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.cache_dir = Path(cache_dir)
        self.consumer_config = consumer_config
        self.keep = keep
        self.fetch_timeout_s = fetch_timeout_s
        # Why a version cannot be used (e.g. its features do not fit the input), or None; asked
        # with the manifest from the seal, before any chunk is fetched.
        self.accept = accept
        self.index = TopicIndex()
        self.refused: list[Refusal] = []  # newest last, at most max_refusals
        self._max_refusals = max_refusals
        self._new_refusals: list[Refusal] = []
        self._tail: TopicTail | None = None
        self._caught_up = False
        self._dirty = True
        self._delivered: tuple[str, str] | None = None  # (version, sha256)
        self._last_reason: dict[str, str] = {}

    # -- state ---------------------------------------------------------------------------
    @property
    def caught_up(self) -> bool:
        """True once everything on the topic when reading started has been read."""
        return self._caught_up

    @property
    def delivered_version(self) -> str | None:
        return self._delivered[0] if self._delivered else None

    def take_refused(self) -> list[Refusal]:
        """Refusals since the last call (for metrics and logs)."""
        out, self._new_refusals = self._new_refusals, []
        return out

    # -- reading -------------------------------------------------------------------------
    def catch_up(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> TopicModelUpdate | None:
        """Read the topic to the end it had when reading began; return its current version.

        Returns None when the topic is missing or holds no usable current version yet (see
        ``refused``); raises ArtifactError when the broker cannot be read in time.
        """
        deadline = time.monotonic() + timeout_s
        if self._tail is None:
            config = with_bootstrap_timeout(self.consumer_config, timeout_s)
            self._tail = TopicTail(self.bootstrap, self.topic, config)
        update = None
        while True:
            got = self.poll(min(POLL_MS / 1000, max(deadline - time.monotonic(), 0)))
            update = got or update
            if self._caught_up or (self._tail is not None and not self._tail.partitions):
                return update
            if time.monotonic() > deadline:
                raise TopicReadError(
                    f"could not read model topic {self.topic} at {self.bootstrap} to its end "
                    f"within {timeout_s:.0f}s"
                )

    def poll(self, timeout_s: float = 1.0) -> TopicModelUpdate | None:
        """Read what arrived; return the newest current version not yet delivered, if verified.

        Nothing is delivered before the reader has caught up with the topic, so a booting
        worker does not load each historical version in turn.
        """
        if self._tail is None:
            self._tail = TopicTail(self.bootstrap, self.topic, self.consumer_config)
        tail = self._tail
        if not tail.assign():
            time.sleep(min(timeout_s, TOPIC_RETRY_S))
            return None
        records = tail.poll(timeout_s)
        sealed_now: list[str] = []
        for r in records:
            touched = self.index.add(r.partition, r.offset, r.key, r.value, r.headers)
            if touched is None:
                continue
            cur = self.index.current
            if touched == "current" or (cur is not None and touched == cur.version):
                self._dirty = True
            if r.key == manifest_key(touched):
                sealed_now.append(touched)
        if not self._caught_up:
            if not tail.reached_boot_end():
                return None
            self._caught_up = True
            self._report_torn()
        elif sealed_now:
            self._report_torn()
        return self._evaluate()

    def follow(
        self,
        stop: threading.Event,
        on_update: Callable[[TopicModelUpdate], None] | None = None,
        on_refused: Callable[[Refusal], None] | None = None,
        poll_timeout_s: float = 1.0,
        retry_s: float = 5.0,
    ) -> None:
        """Poll until ``stop`` is set, calling back on updates and refusals (for a thread).

        Broker and disk trouble is logged and retried: a follower that died would freeze the
        model. Callbacks run in this thread.
        """
        failures = 0
        while not stop.is_set():
            delay = backoff_s(failures, min(RETRY_FIRST_S, retry_s), retry_s)
            try:
                update = self.poll(poll_timeout_s)
            except (TopicReadError, OSError) as exc:
                log.error("model topic %s: %s; retrying in %.0fs", self.topic, exc, delay)
                failures += 1
                stop.wait(delay)
                continue
            except Exception:  # a follower that died silently would freeze the model forever
                log.exception("model topic %s: unexpected failure; retrying", self.topic)
                failures += 1
                stop.wait(delay)
                continue
            failures = 0
            for refusal in self.take_refused():
                if on_refused is not None:
                    on_refused(refusal)
            if update is not None and on_update is not None:
                on_update(update)

    def close(self) -> None:
        if self._tail is not None:
            self._tail.close()
            self._tail = None

    def __enter__(self) -> ModelTopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------
    def _refuse(self, refusal: Refusal) -> None:
        refusal = Refusal(refusal.version, " ".join(refusal.reason.split()))  # one line
        if self._last_reason.get(refusal.version) == refusal.reason:
            return  # the same story told once (until the version is delivered again)
        self._last_reason[refusal.version] = refusal.reason
        log.error("model topic %s: refused %s: %s", self.topic, refusal.version, refusal.reason)
        self.refused.append(refusal)
        del self.refused[: -self._max_refusals]
        self._new_refusals.append(refusal)

    def _report_torn(self) -> None:
        """Unsealed chunks followed by another version's seal are an abandoned publish.

        Unsealed chunks at the end of the topic may be a publish still in progress: not reported.
        """
        if not self.index.sealed:
            return
        newest_seal = max(s.offset for s in self.index.sealed.values())
        for refusal in self.index.torn_versions():
            offsets = [c.offset for (v, _), c in self.index.chunks.items() if v == refusal.version]
            if offsets and max(offsets) < newest_seal:
                self._refuse(refusal)

    def _evaluate(self) -> TopicModelUpdate | None:
        if not self._dirty:
            return None
        self._dirty = False
        checked = self.index.check_current()
        if checked is None:
            return None
        if isinstance(checked, Refusal):
            self._refuse(checked)
            return None
        sealed, chunks = checked
        if self._delivered == (sealed.version, sealed.sha256):
            return None
        why = self.accept(sealed.manifest) if self.accept and sealed.manifest else None
        if why:
            self._refuse(Refusal(sealed.version, why))
            return None
        try:
            path = self._materialize(sealed, chunks)
            manifest = read_manifest(path)
        except (TopicReadError, OSError):
            self._dirty = True  # the broker or the disk failed, not the version: try again
            raise
        except ArtifactError as exc:
            self._refuse(Refusal(sealed.version, str(exc)))
            return None
        self._delivered = (sealed.version, sealed.sha256)
        self._last_reason.pop(sealed.version, None)
        log.info("model topic %s: %s is current (%s)", self.topic, sealed.version, path)
        return TopicModelUpdate(sealed.version, path, sealed.sha256, manifest)

    def _materialize(self, sealed: SealedVersion, chunks: list[ChunkInfo]) -> Path:
        """The version as a directory of the cache: reused if intact, else fetched and unpacked."""
        target = self.cache_dir / VERSIONS_DIR / sealed.version
        if target.is_dir() and _dir_sha(target) == sealed.sha256:
            set_current(self.cache_dir, sealed.version)
            return target
        blob = fetch_version_blob(
            self.bootstrap,
            self.topic,
            sealed,
            chunks,
            consumer_config=self.consumer_config,
            timeout_s=self.fetch_timeout_s,
        )
        with staging_dir(self.cache_dir) as staging:
            unpack_blob(blob, staging)
            del blob
            manifest = read_manifest(staging)
            if manifest.version != sealed.version:
                raise ArtifactError(f"the blob of {sealed.version} holds {manifest.version}")
            if target.exists():
                # The topic is the source of truth: a different local copy is set aside.
                stale = self.cache_dir / f".stale-{sealed.version}-{uuid.uuid4().hex[:8]}"
                os.rename(target, stale)
                shutil.rmtree(stale, ignore_errors=True)
            publish_staged(self.cache_dir, staging, keep=self.keep, make_current=True)
        return target


def _dir_sha(path: Path) -> str | None:
    try:
        return sha256_hex(pack_version_dir(path))
    except (ArtifactError, OSError):
        return None
