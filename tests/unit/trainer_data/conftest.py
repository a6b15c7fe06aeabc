"""Small writers for data files used by the loader tests."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest


@pytest.fixture
def write_csv(tmp_path: Path) -> Callable[..., str]:
    """Write CSV text (header first) and return its path."""

    def write(text: str, name: str = "data.csv") -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[..., str]:
    """Write one JSON value per line (str items are written as they are) and return the path."""

    def write(records: Iterable[Any], name: str = "data.jsonl") -> str:
        path = tmp_path / name
        lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
        path.write_text("\n".join(lines) + "\n")
        return str(path)

    return write


@pytest.fixture
def numeric_rows() -> Callable[..., np.ndarray]:
    """A reproducible (n, d) float matrix."""

    def make(n: int = 30, d: int = 3, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).normal(size=(n, d)).round(4)

    return make
