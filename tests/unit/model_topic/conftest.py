"""Fixtures for the model topic's pure tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from topic_fixtures import write_version_dir


@pytest.fixture
def version_dir(tmp_path: Path) -> Path:
    write_version_dir(tmp_path / "v1", "v1")
    return tmp_path / "v1"
