"""TensorFlow's C++ log lines stay out of the trainer's and the worker's output.

Both packages set ``TF_CPP_MIN_LOG_LEVEL`` in their ``__init__`` (before TensorFlow can be
imported), so a plain console command is quiet without the Makefile's environment.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
# What TensorFlow/absl write from C++: "I0000 00:00:... file.cc:123] ...", absl's notice, oneDNN's.
CPP_LOG_LINE = re.compile(
    r"^[IWEF]\d{4} |\.cc:\d+\]|absl::InitializeLog|oneDNN|rebuild TensorFlow|cuda|cuDNN"
)


def _env_without_tf_level() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _level_after_import(package: str, env: dict[str, str]) -> str:
    code = f"import os, {package}; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return proc.stdout.strip()


@pytest.mark.parametrize(("package", "level"), [("trainer", "3"), ("worker", "2")])
def test_importing_a_package_sets_the_level_and_keeps_the_users(package: str, level: str) -> None:
    env = _env_without_tf_level()
    assert _level_after_import(package, env) == level
    assert _level_after_import(package, {**env, "TF_CPP_MIN_LOG_LEVEL": "0"}) == "0"


@pytest.mark.slow
def test_plain_fit_writes_only_the_trainers_own_lines(tmp_path: Path) -> None:
    command = [
        str(Path(sys.executable).parent / "anomaly-trainer"),
        "fit",
        "builtin:sensors",
        "--epochs",
        "2",
        "--model-dir",
        str(tmp_path / "models"),
    ]
    proc = subprocess.run(
        command, env=_env_without_tf_level(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines and lines[0].startswith("training a dense autoencoder"), proc.stderr
    assert any(line.startswith("trained ") for line in lines), proc.stderr
    noise = [line for line in lines if CPP_LOG_LINE.search(line)]
    assert not noise, "TensorFlow's C++ log lines on stderr:\n" + "\n".join(noise)
    assert "Traceback" not in proc.stderr
    assert proc.stdout.startswith("published v1 to ")
