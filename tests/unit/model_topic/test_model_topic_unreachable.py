"""An unreachable broker is an infrastructure failure: raised (as TopicReadError), not a refusal."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from anomaly_contract.errors import TopicReadError
from anomaly_contract.model_topic_io import read_topic_index
from worker.model_follow import ModelTopicReader


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # nothing listens once the socket is closed


def test_catch_up_raises_within_its_timeout_when_the_broker_is_unreachable(tmp_path: Path) -> None:
    reader = ModelTopicReader(f"127.0.0.1:{closed_port()}", "models", tmp_path / "cache")
    start = time.monotonic()
    with pytest.raises(TopicReadError, match="cannot reach Kafka"):
        reader.catch_up(timeout_s=1.5)
    assert time.monotonic() - start < 10
    assert reader.refused == []
    assert not (tmp_path / "cache").exists()


def test_reading_the_index_raises_when_the_broker_is_unreachable() -> None:
    with pytest.raises(TopicReadError, match="cannot reach Kafka"):
        read_topic_index(f"127.0.0.1:{closed_port()}", "models", timeout_s=1.5)
