"""Shared fixtures. The Kafka broker is real (deploy/local/kafka.sh), started lazily once per session.

If the broker cannot start, every test that needs it fails with the broker's log; none is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kafka_helpers import LocalKafka, unique_name


@pytest.fixture(scope="session")
def kafka() -> Iterator[LocalKafka]:
    """One real Kafka broker for the whole session, on a free port with a temporary data dir."""
    broker = LocalKafka()
    try:
        broker.start()
    except Exception:
        broker.close()
        raise
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka: LocalKafka) -> str:
    """`127.0.0.1:PORT` of the session broker."""
    return kafka.bootstrap


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    """A topic name unique to this test (auto-created on first use, or create it explicitly)."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40].strip("-")
    return unique_name(stem or "topic")
