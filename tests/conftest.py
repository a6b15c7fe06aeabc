"""Shared fixtures. The Kafka broker is real (deploy/local/kafka.sh), started lazily once per session.

If the broker cannot start, every test that needs it fails with the broker's log; none is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture(scope="session")
def tf_free_published(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small published version per architecture (`tests.contract.tf_free_models`), fitted
    once for the contract and deployment tests that score them; read only (copy to change)."""
    from tests.contract.tf_free_models import ALL_ARCHITECTURES, publish_architecture

    root = tmp_path_factory.mktemp("tf-free")
    return {name: publish_architecture(name, root / name) for name in ALL_ARCHITECTURES}
