"""Reading every partition of one topic from its end, outside any consumer group: the feedback
topic (`worker.feedback`), which every worker reads whole. kafka-python is imported here, in
`worker.client` and in `worker.replay_reader` only.
"""

from __future__ import annotations

from typing import Any

from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from worker.client import InRecord, _translated, client_config
from worker.settings import WorkerSettings


class TopicReader:
    """A group-less consumer assigned every partition of ``topic``, starting at its end (the
    partitions are looked up on the first poll, and again while the topic has none)."""

    def __init__(self, settings: WorkerSettings, topic: str, client_suffix: str) -> None:
        cfg = client_config(settings)
        cfg["client_id"] = f"{settings.client_id}-{client_suffix}"
        with _translated():
            self._consumer: Any = KafkaConsumer(
                **cfg, group_id=None, enable_auto_commit=False, auto_offset_reset="latest"
            )
        self.topic = topic
        self._assigned = False

    def poll(self, timeout_ms: int) -> list[InRecord]:
        """The records that arrived since the last poll (none until the topic exists)."""
        with _translated((AssertionError,)):
            if not self._assigned:
                partitions = self._consumer.partitions_for_topic(self.topic)
                if not partitions:
                    self._consumer.topics()  # refresh the metadata for the next look
                    return []
                tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
                self._consumer.assign(tps)
                self._consumer.seek_to_end(*tps)
                self._assigned = True
            polled = self._consumer.poll(timeout_ms=timeout_ms)
        return [r for records in polled.values() for r in records]

    def close(self) -> None:
        self._consumer.close(autocommit=False)
