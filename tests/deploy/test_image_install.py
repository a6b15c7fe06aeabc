"""The images' install steps give working installs: the Dockerfile's build stages (its COPY
instructions and the RUN of `build-worker` and `build-trainer`) replayed into two fresh virtual
environments. The worker's holds the base distribution only: `--help`, every architecture
loaded and scored without TensorFlow, the HEALTHCHECK against a running worker. The trainer's
adds `kafka-anomaly[train]` and fits a model the worker then serves.

No Docker engine runs here, so this is how the images are tested. It downloads the dependencies
unless pip's cache has them: slow (1-3 minutes with a warm cache)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_helpers import ROOT, build_copies, instructions, named_stage, stages

from anomaly_contract import artifact
from tests.contract.tf_free_models import (
    ALL_ARCHITECTURES,
    GRAPH_ARCHITECTURES,
)

DOCKERFILE = ROOT / "Dockerfile"
# The worker's runtime without TensorFlow (issue 14: from 1,581 MiB); the trainer's holds
# TensorFlow (~1 GB): a regression guard.
WORKER_SITE_PACKAGES_MB = 250
TRAINER_SITE_PACKAGES_MB = 1800
TRAINING_ONLY = ("tensorflow", "keras", "pandas", "matplotlib", "sklearn", "pyarrow", "scipy")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _du_mb(path: Path) -> float:
    return (
        sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20
    )


def _site(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The build context as the build stage's COPY instructions lay it out in /src."""
    src = tmp_path_factory.mktemp("image") / "src"
    src.mkdir()
    for sources, dest in build_copies(DOCKERFILE.read_text()):
        for name in sources:
            origin = ROOT / name
            if not origin.exists():
                pytest.fail(f"COPY {name}: missing, `docker build` would fail the same way")
            if dest.startswith("/usr/local/bin"):
                continue  # the install script: run from the repository below
            target = src / (name if dest in {"./", "."} else dest)
            if origin.is_dir():
                shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target)
    return src


def _start_install(build_stage: str, context: Path, venv: Path) -> subprocess.Popen[str]:
    """Start the one RUN of ``build_stage`` with /src and /opt/venv pointing at the test's."""
    runs = [a for k, a in named_stage(DOCKERFILE.read_text(), build_stage) if k == "RUN"]
    assert len(runs) == 1, f"{build_stage}: one RUN expected, got {runs}"
    words = shlex.split(runs[0])
    assert words[:3] == ["image-install.sh", "/src", "/opt/venv"], runs[0]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.pop("PIP_NO_CACHE_DIR", None)  # reuse pip's wheel cache here; the image build does not
    env.pop("PYTHONPATH", None)
    script = ROOT / "deploy" / "tools" / "image-install.sh"
    with open(venv.parent / f"{venv.name}.log", "w") as log:  # a file: a full pipe would block
        return subprocess.Popen(
            [str(script), str(context), str(venv), *words[3:]],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )


def _finish_install(proc: subprocess.Popen[str], venv: Path) -> Path:
    proc.wait(timeout=840)
    output = (venv.parent / f"{venv.name}.log").read_text()
    assert proc.returncode == 0, output[-4000:]
    return venv


@pytest.fixture(scope="module")
def trainer_install(context: Path) -> Iterator[subprocess.Popen[str]]:
    """The trainer's install, started first: it downloads and unpacks TensorFlow while the
    worker's tests run (pip is mostly waiting on I/O)."""
    proc = _start_install("build-trainer", context, context.parent / "trainer-venv")
    yield proc
    if proc.poll() is None:  # a failed test left it running
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def worker_venv(context: Path, trainer_install: subprocess.Popen[str]) -> Path:
    venv = context.parent / "worker-venv"
    return _finish_install(_start_install("build-worker", context, venv), venv)


@pytest.fixture(scope="module")
def trainer_venv(context: Path, trainer_install: subprocess.Popen[str]) -> Path:
    return _finish_install(trainer_install, context.parent / "trainer-venv")


def _runtime_env(venv: Path, target: str) -> dict[str, str]:
    """The ENV of the shared runtime stage and of ``target``, paths pointing at the test's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANOMALY_")}
    text = DOCKERFILE.read_text()
    for keyword, args in [*named_stage(text, "runtime"), *named_stage(text, target)]:
        if keyword == "ENV":
            for pair in args.split():
                key, _, value = pair.partition("=")
                env[key] = value
    env["PATH"] = f"{venv / 'bin'}:{os.environ['PATH']}"
    for key in ("VIRTUAL_ENV", "PYTHONPATH"):
        env.pop(key, None)
    for key in ("KERAS_HOME", "MPLCONFIGDIR"):
        if key in env:
            env[key] = str(venv.parent / Path(env[key]).name)
    return env


def test_worker_install_is_the_runtime_only_within_budget(worker_venv: Path) -> None:
    site = _site(worker_venv)
    size = _du_mb(site)
    print(f"\nworker venv: site-packages {size:.0f} MiB, whole venv {_du_mb(worker_venv):.0f} MiB")
    present = [name for name in TRAINING_ONLY if (site / name).exists()]
    assert present == [], f"training-only packages in the worker install: {present}"
    assert not (worker_venv / "bin" / "pip").exists(), "no installer in the runtime"
    assert size <= WORKER_SITE_PACKAGES_MB


_SCORE_EVERY_VERSION = """
import json, sys
import numpy as np
import worker.cli
from anomaly_contract.model_dir import load_bundle
out = {}
for name, model_dir in json.loads(sys.argv[1]).items():
    bundle = load_bundle(model_dir)
    bundle.warm_up()
    m = bundle.manifest
    if m.series is None:
        scores = bundle.score(np.full((5, m.n_features), 0.5)).scores
    else:
        windows = np.random.default_rng(0).normal(size=(5, m.series.window, m.n_features))
        keys = list(bundle.series.normaliser.trained_keys())[:1] * 5
        scores = bundle.series.score_windows(windows, keys).scores
    out[name] = [bundle.inference, bool(np.isfinite(scores).all())]
training = %r
out["imported"] = sorted(m for m in training if m in sys.modules)
print(json.dumps(out))
"""


def test_worker_install_scores_every_architecture_without_tensorflow(
    worker_venv: Path, tmp_path: Path, tf_free_published: dict[str, Path]
) -> None:
    # Published by this test process's trainer (the dev environment has the training extra).
    dirs = {name: str(path) for name, path in tf_free_published.items()}
    code = _SCORE_EVERY_VERSION % (TRAINING_ONLY,)
    proc = _run(worker_venv, "worker", "python", "-c", code, json.dumps(dirs), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result.pop("imported") == []
    # ONNX Runtime where the version carries a graph (published with tf2onnx installed: the
    # train extra), else the NumPy form.
    graphs = {n for n in GRAPH_ARCHITECTURES if any(Path(dirs[n]).rglob(artifact.ONNX_FILE))}
    assert result == {
        name: ["onnxruntime" if name in graphs else "numpy", True] for name in ALL_ARCHITECTURES
    }


def test_trainer_install_within_budget(trainer_venv: Path) -> None:
    site = _site(trainer_venv)
    size = _du_mb(site)
    print(
        f"\ntrainer venv: site-packages {size:.0f} MiB, whole venv {_du_mb(trainer_venv):.0f} MiB"
    )
    assert not (site / "tensorflow" / "include").exists(), "headers pruned"
    assert not (trainer_venv / "bin" / "pip").exists(), "no installer in the runtime"
    assert size < TRAINER_SITE_PACKAGES_MB


def _run(venv: Path, target: str, *args: str, cwd: Path | None = None, timeout: float = 120):  # type: ignore[no-untyped-def]
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        env=_runtime_env(venv, target),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def test_console_scripts_and_the_missing_extra(
    worker_venv: Path, trainer_venv: Path, tmp_path: Path
) -> None:
    for venv, target in ((worker_venv, "worker"), (trainer_venv, "trainer")):
        help_run = _run(venv, target, "anomaly-worker", "--help")
        assert help_run.returncode == 0 and "usage: anomaly-worker" in help_run.stdout, target
    trainer_help = _run(trainer_venv, "trainer", "anomaly-trainer", "--help")
    assert trainer_help.returncode == 0 and "usage: anomaly-trainer" in trainer_help.stdout
    refused = _run(worker_venv, "worker", "anomaly-trainer", "fit", "builtin:sensors",
                   "--model-dir", str(tmp_path))  # fmt: skip
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "kafka-anomaly[train]" in lines[0], refused.stderr


def test_trainer_fits_and_the_worker_serves_it_and_passes_its_healthcheck(
    worker_venv: Path, trainer_venv: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    fit = _run(trainer_venv, "trainer", "anomaly-trainer", "fit", "builtin:sensors",
               "--model-dir", str(models), "--epochs", "2", "--quiet", timeout=300)  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]

    # The worker image's HEALTHCHECK, run as Docker would, against a worker started from its
    # install (no broker: liveness means the process loop is alive, not that Kafka answers).
    health = next(a for k, a in named_stage(DOCKERFILE.read_text(), "worker") if k == "HEALTHCHECK")
    check_cmd = json.loads(health.split("CMD", 1)[1].strip())
    env = _runtime_env(worker_venv, "worker")
    env.update(
        ANOMALY_BOOTSTRAP_SERVERS="127.0.0.1:1", ANOMALY_MODEL_DIR=str(models),
        ANOMALY_METRICS_PORT=str(_free_port()),
    )  # fmt: skip
    worker = subprocess.Popen(
        [str(worker_venv / "bin" / "anomaly-worker")], env=env, cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        result = None
        while time.monotonic() < deadline and worker.poll() is None:
            result = subprocess.run(check_cmd, env=env, capture_output=True, timeout=10)
            if result.returncode == 0:
                break
            time.sleep(1)
        assert worker.poll() is None, "worker exited"
        assert result is not None and result.returncode == 0, result and result.stderr
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    # Unhealthy is detected too: nothing listening means a non-zero exit.
    dead = subprocess.run(check_cmd, env=env, capture_output=True, timeout=10)
    assert dead.returncode != 0


def test_every_stage_is_covered() -> None:
    """The targets this file replays are the Dockerfile's (a renamed stage fails here first)."""
    names = {s[0][1].split()[-1] for s in stages(DOCKERFILE.read_text())}
    assert {"build-worker", "build-trainer", "runtime", "worker", "trainer"} <= names
    assert any(k == "ENV" for k, _ in instructions(DOCKERFILE.read_text()))
