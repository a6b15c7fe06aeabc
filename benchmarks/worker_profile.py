"""py-spy on the worker process: sampled stacks while it runs, a ranked summary afterwards."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


def start_profile(pid: int, out: Path) -> subprocess.Popen:
    """py-spy (sampling, no slowdown of the target) on the worker, collapsed stacks to ``out``."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    proc = subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--nonblocking",
         "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)  # attached before the measured part goes on for long
    return proc


def stop_profile(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def summarize_profile(path: Path, top: int = 25) -> list[tuple[str, float]]:
    """Inclusive share of CPU samples per function (worker, kafka, json, numpy...)."""
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        for label in {re.sub(r":\d+\)$", ")", frame.strip()) for frame in stack.split(";")}:
            inclusive[label] = inclusive.get(label, 0) + int(count)
    ranked = sorted(inclusive.items(), key=lambda kv: -kv[1])
    return [(label, 100.0 * n / total) for label, n in ranked[:top]] if total else []
