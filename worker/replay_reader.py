"""Re-reading a stretch of one input partition to restore series state (`worker.state`).

A consumer of its own, outside the group (no group id, no commits, assigned one partition at a
time), so the group consumer's positions, fetches and membership are untouched while a
partition is rebuilt. ``read_committed`` like the group consumer: records of aborted
transactions were never scored, so they are not replayed either. kafka-python is imported here
and in `worker.client` only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from worker.client import ClientError, InRecord, Partition, _translated, client_config
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

# A replay that makes no progress for this long fails (the caller retries later).
STALL_TIMEOUT_S = 30.0
POLL_MS = 500
OFFSETS_TIMEOUT_MS = 5000


class KafkaReplayReader:
    """`worker.state.ReplayReader` on a group-less kafka-python consumer, made on first use."""

    def __init__(self, settings: WorkerSettings) -> None:
        self._settings = settings
        self._consumer: Any = None

    def _client(self) -> Any:
        if self._consumer is None:
            s = self._settings
            cfg = client_config(s)
            cfg["client_id"] = f"{s.client_id}-state-replay"
            with _translated():
                self._consumer = KafkaConsumer(
                    **cfg,
                    group_id=None,
                    enable_auto_commit=False,
                    isolation_level="read_committed",
                    auto_offset_reset="earliest",  # below the log start: from the oldest kept
                    max_poll_records=max(s.batch_max_records, 5000),
                    fetch_max_bytes=s.fetch_max_bytes,
                    max_partition_fetch_bytes=s.max_partition_fetch_bytes,
                )
        return self._consumer

    def read(self, tp: Partition, start: int, end: int) -> Iterator[list[InRecord]]:
        """The records of ``tp`` with offsets in ``[start, end)``, in order, a poll at a time.

        Offsets that hold no record (transaction markers, aborted or compacted records) are
        skipped; records below the log start (deleted by retention) are not there: the read
        starts at the log start, with a warning, since the keys whose history lay below it
        warm up again."""
        if end <= start:
            return
        consumer = self._client()
        ktp = TopicPartition(tp.topic, tp.partition)
        with _translated((AssertionError,)):
            consumer.assign([ktp])
            consumer.seek(ktp, start)
            log_start = consumer.beginning_offsets([ktp], timeout_ms=OFFSETS_TIMEOUT_MS)[ktp]
        if log_start > start:
            log.warning(
                "re-reading %s[%d] from %d: offsets %d-%d are gone from the topic (retention or"
                " deleted records), so the keys whose history lay there warm up again",
                tp.topic, tp.partition, start, start, min(log_start, end) - 1,
                extra={"partition": tp.partition, "replay_start": start, "log_start": log_start},
            )  # fmt: skip
        last_progress = time.monotonic()
        try:
            while True:
                with _translated((AssertionError,)):
                    position = consumer.position(ktp, timeout_ms=5000)
                if position is not None and position >= end:
                    return
                with _translated((AssertionError,)):
                    polled = consumer.poll(timeout_ms=POLL_MS)
                records = [r for r in polled.get(ktp, []) if r.offset < end]
                if records:
                    last_progress = time.monotonic()
                    yield records
                    if records[-1].offset >= end - 1:
                        return
                elif time.monotonic() - last_progress > STALL_TIMEOUT_S:
                    raise ClientError(
                        f"re-reading {tp.topic}[{tp.partition}] from {start} to {end} made no"
                        f" progress for {STALL_TIMEOUT_S:.0f}s (stuck at {position})"
                    )
        finally:
            consumer.assign([])

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
            self._consumer = None
