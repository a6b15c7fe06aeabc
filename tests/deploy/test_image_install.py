"""The image's install steps give a working install: the Dockerfile's build stage (its COPY
instructions and its one RUN) replayed into a fresh virtual environment, then both commands, a
model trained and loaded, and the HEALTHCHECK command against a running worker.

No Docker engine runs here, so this is how the image is tested. It downloads the dependencies
unless pip's cache has them: slow (1-3 minutes)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from deploy_helpers import ROOT, build_copies, instructions, stages

DOCKERFILE = ROOT / "Dockerfile"
# Budget for the installed site-packages (TensorFlow alone is ~1 GB): a regression guard.
SITE_PACKAGES_BUDGET_MB = 1800

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _du_mb(path: Path) -> float:
    return (
        sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Replay the build stage: copy what it COPYs into a context, run its RUN with that context."""
    text = DOCKERFILE.read_text()
    base = tmp_path_factory.mktemp("image")
    context, venv = base / "src", base / "venv"
    context.mkdir()
    for sources, dest in build_copies(text):
        for src in sources:
            origin = ROOT / src
            if not origin.exists():
                pytest.fail(f"COPY {src}: missing, `docker build` would fail the same way")
            if dest.startswith("/usr/local/bin"):
                continue  # the install script: run from the repository below
            target = context / (src if dest in {"./", "."} else dest)
            if origin.is_dir():
                shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target)
    runs = [args for keyword, args in stages(text)[0] if keyword == "RUN"]
    assert runs == ["image-install.sh /src /opt/venv"], f"build stage RUN changed: {runs}"
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.pop("PIP_NO_CACHE_DIR", None)  # reuse pip's wheel cache here; the image build does not
    script = ROOT / "deploy" / "tools" / "image-install.sh"
    proc = subprocess.run(
        [str(script), str(context), str(venv)], env=env, capture_output=True, text=True, timeout=840
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return venv


def _runtime_env(venv: Path) -> dict[str, str]:
    """The runtime stage's ENV, with paths pointing at the test's venv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANOMALY_")}
    for keyword, args in instructions(DOCKERFILE.read_text()):
        if keyword == "ENV":
            for pair in args.split():
                key, _, value = pair.partition("=")
                env[key] = value
    env["PATH"] = f"{venv / 'bin'}:{os.environ['PATH']}"
    env.pop("VIRTUAL_ENV", None)
    for key in ("KERAS_HOME", "MPLCONFIGDIR"):
        env[key] = str(venv.parent / Path(env[key]).name)
    return env


def test_installed_size_is_within_budget(image_venv: Path) -> None:
    site = next((image_venv / "lib").glob("python3*/site-packages"))
    size = _du_mb(site)
    print(f"\nimage venv: site-packages {size:.0f} MiB, whole venv {_du_mb(image_venv):.0f} MiB")
    assert not (site / "tensorflow" / "include").exists(), "headers pruned"
    assert not (image_venv / "bin" / "pip").exists(), "no installer in the runtime"
    assert size < SITE_PACKAGES_BUDGET_MB


def test_both_console_scripts_run(image_venv: Path) -> None:
    env = _runtime_env(image_venv)
    for command in ("anomaly-trainer", "anomaly-worker"):
        proc = subprocess.run(
            [str(image_venv / "bin" / command), "--help"], env=env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert f"usage: {command}" in proc.stdout


def test_trains_and_loads_a_model_and_passes_its_healthcheck(
    image_venv: Path, tmp_path: Path
) -> None:
    env = _runtime_env(image_venv)
    models = tmp_path / "models"
    fit = subprocess.run(
        [str(image_venv / "bin" / "anomaly-trainer"), "fit", "builtin:sensors",
         "--model-dir", str(models), "--epochs", "2", "--quiet"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    load = (
        "import json, sys, numpy as np\n"
        "from anomaly_contract.model_dir import load_bundle\n"
        "b = load_bundle(sys.argv[1])\n"
        "r = b.score(np.zeros((3, len(b.feature_names))))\n"
        "print(json.dumps({'version': b.version, 'n': len(r.scores),"
        " 'finite': bool(np.isfinite(r.scores).all()), 'threshold': b.threshold}))\n"
    )
    proc = subprocess.run(
        [str(image_venv / "bin" / "python"), "-c", load, str(models)],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded["version"] == "v1" and loaded["n"] == 3 and loaded["finite"]
    assert loaded["threshold"] > 0

    # The image's HEALTHCHECK, run as Docker would, against a worker started from this install
    # (no broker: liveness means the process loop is alive, not that Kafka answers).
    runtime = stages(DOCKERFILE.read_text())[-1]
    health = next(a for k, a in runtime if k == "HEALTHCHECK")
    check_cmd = json.loads(health.split("CMD", 1)[1].strip())
    port = _free_port()
    env.update(
        ANOMALY_BOOTSTRAP_SERVERS="127.0.0.1:1", ANOMALY_MODEL_DIR=str(models),
        ANOMALY_METRICS_PORT=str(port),
    )  # fmt: skip
    worker = subprocess.Popen(
        [str(image_venv / "bin" / "anomaly-worker")], env=env, cwd=tmp_path,
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
