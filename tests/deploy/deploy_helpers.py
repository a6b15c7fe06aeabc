"""Paths and helpers shared by the deployment tests (a module of its own: `conftest` is not
importable by name when several test folders have one)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES_DIR = DEPLOY / "prometheus" / "rules"
RULE_TESTS_DIR = DEPLOY / "prometheus" / "tests"
DASHBOARDS_DIR = DEPLOY / "grafana" / "dashboards"
COMPOSE_FILE = DEPLOY / "compose" / "compose.yaml"
K8S = DEPLOY / "k8s"
VENV_BIN = Path(sys.executable).parent
KUSTOMIZE = ROOT / ".tools" / "bin" / "kustomize"


def require_tool(name: str, hint: str) -> str:
    """Absolute path of `name` (the venv's bin first), or fail the test saying how to get it."""
    candidate = VENV_BIN / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: {hint}")
    return found


def run(cmd: list[str], cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a command, failing the test with its output when it exits non-zero."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n"
            f"--- stderr\n{proc.stderr}"
        )
    return proc


def rule_files() -> list[Path]:
    files = sorted(RULES_DIR.glob("*.yml"))
    assert files, f"no rule files in {RULES_DIR}"
    return files


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for path in rule_files():
        groups.extend(yaml.safe_load(path.read_text())["groups"])
    return groups


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


# ---------------------------------------------------------------- Dockerfile parsing
def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            out.append((keyword.upper(), args.strip()))
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, args))
    return result


def named_stage(text: str, name: str) -> list[tuple[str, str]]:
    """The instructions of the stage ``FROM ... AS name`` (a build target)."""
    for stage in stages(text):
        words = stage[0][1].split()
        if len(words) == 3 and words[1].upper() == "AS" and words[2] == name:
            return stage
    pytest.fail(f"the Dockerfile has no stage named {name!r}")


def build_copies(text: str) -> list[tuple[list[str], str]]:
    """(sources, destination) of the build stage's COPY instructions from the context."""
    copies = []
    for keyword, args in stages(text)[0]:
        if keyword == "COPY" and "--from" not in args:
            parts = shlex.split(args)
            copies.append(([p for p in parts[:-1] if not p.startswith("--")], parts[-1]))
    return copies
