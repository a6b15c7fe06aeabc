"""Fixtures for the deployment tests: the external tools they need and the rendered Kubernetes
manifests. A missing tool fails the test with how to install it; nothing is skipped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import DEPLOY, K8S, KUSTOMIZE, require_tool, run


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_tool("promtool", "run scripts/bootstrap.sh (Debian package `prometheus`)")


@pytest.fixture(scope="session")
def kustomize() -> str:
    """The pinned kustomize in .tools/bin, installed by deploy/tools/install-kustomize.sh."""
    run([str(DEPLOY / "tools" / "install-kustomize.sh")], timeout=600)
    assert KUSTOMIZE.exists(), f"{KUSTOMIZE} missing after install-kustomize.sh"
    return str(KUSTOMIZE)


def _build(kustomize: str, path: Path) -> list[dict[str, Any]]:
    out = run([kustomize, "build", str(path)]).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="session")
def k8s_base(kustomize: str) -> list[dict[str, Any]]:
    return _build(kustomize, K8S / "base")


@pytest.fixture(scope="session")
def k8s_overlay(kustomize: str) -> list[dict[str, Any]]:
    return _build(kustomize, K8S / "overlays" / "example")
