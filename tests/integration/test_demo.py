"""`make demo` stopped by Ctrl-C on a real pseudo-terminal, as a user stops it.

Two ways, one demo run each: the demo alone on the terminal, and the demo piped into `tee` (then
the terminal's SIGINT ends `tee` too, and the demo's next line meets a closed pipe). Ctrl-C is the
terminal's: byte 0x03 written to the pty, which the line discipline turns into SIGINT for the
whole foreground process group. Either way the broker's JVM and the worker must be gone when the
demo exits, within a bound, and the demo must report every record it sent as accounted for.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
KAFKA_SH = ROOT / "deploy" / "local" / "kafka.sh"
START_TIMEOUT_S = 420  # broker, TensorFlow import and a 2-epoch fit on a busy 2-CPU machine
STOP_BOUND_S = 60  # Ctrl-C to the demo's exit, broker and worker stopped
CTRL_C = b"\x03"
# The pipe keeps the demo's exit status: bash ignores nothing (its trap only delays it past the
# pipeline), so `tee` and the demo get the terminal's SIGINT as under an interactive shell.
PIPE_SCRIPT = 'trap : INT; "$@" | tee "$DEMO_TEE_LOG"; exit "${PIPESTATUS[0]}"'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PtyReader(threading.Thread):
    """Keeps reading the terminal's screen so the demo never blocks on a full pty."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd, self.chunks, self.lock = fd, [], threading.Lock()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # EIO: every slave end closed
                return
            if not data:
                return
            with self.lock:
                self.chunks.append(data)

    @property
    def text(self) -> str:
        with self.lock:
            return b"".join(self.chunks).decode(errors="replace").replace("\r\n", "\n")

    def wait_for(self, pattern: str, timeout: float, pid: int) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.text, re.MULTILINE)
            if match:
                return match
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                break
            time.sleep(0.5)
        raise AssertionError(f"no {pattern!r} on the terminal; it shows:\n{self.text[-4000:]}")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _pids_with_environ(entry: str) -> list[int]:
    """Processes of this user whose environment holds ``entry`` (the demo's worker)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if entry.encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@dataclass
class DemoRun:
    """What one Ctrl-C'd demo left behind."""

    mode: str
    screen: str
    exit_status: int
    stop_seconds: float
    broker_pid: int
    worker_pids: list[int]
    broker_alive_after: bool
    workers_alive_after: list[int]
    tee_log: str


def _wait_exit(pid: int, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.2)
    return None


def _run_demo_and_press_ctrl_c(mode: str, workdir: Path) -> DemoRun:
    demo = [
        sys.executable, "-m", "scripts.demo", "--epochs", "2", "--rate", "150",
        "--kafka-port", str(_free_port()), "--metrics-port", str(_free_port()),
        "--workdir", str(workdir),
    ]  # fmt: skip
    tee_log = workdir.parent / f"{mode}-tee.log"
    argv = demo if mode == "terminal" else ["bash", "-c", PIPE_SCRIPT, "demo", *demo]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DEMO_TEE_LOG": str(tee_log)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    pid, fd = pty.fork()
    if pid == 0:  # the child: session leader with the pty as its terminal, like a shell's job
        os.chdir(ROOT)
        os.execvpe(argv[0], argv, env)
    reader = PtyReader(fd)
    reader.start()
    kafka_dir = workdir / "kafka"
    status: int | None = None
    try:
        reader.wait_for(r"^\[demo\] streaming; Ctrl-C to stop", START_TIMEOUT_S, pid)
        reader.wait_for(r"^sent +\d+ \| scored +[1-9]\d* ", 60, pid)  # the worker scores
        broker_pid = int((kafka_dir / "kafka.pid").read_text())
        worker_pids = _pids_with_environ(f"ANOMALY_MODEL_DIR={workdir / 'models'}")
        assert _alive(broker_pid) and worker_pids
        pressed = time.monotonic()
        os.write(fd, CTRL_C)
        status = _wait_exit(pid, STOP_BOUND_S)
        stop_seconds = time.monotonic() - pressed
        if status is None:
            raise AssertionError(
                f"the demo did not exit within {STOP_BOUND_S}s of Ctrl-C:\n{reader.text[-4000:]}"
            )
        time.sleep(0.5)  # the pty's last bytes
        return DemoRun(
            mode=mode,
            screen=reader.text,
            exit_status=status,
            stop_seconds=stop_seconds,
            broker_pid=broker_pid,
            worker_pids=worker_pids,
            broker_alive_after=_alive(broker_pid),
            workers_alive_after=[p for p in worker_pids if _alive(p)],
            tee_log=tee_log.read_text() if tee_log.exists() else "",
        )
    finally:
        reader.done.set()
        if status is None:  # never reaped: the demo hangs, or stopped before streaming
            with contextlib.suppress(ChildProcessError, ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        _clean_up_after_the_demo(workdir)
        os.close(fd)


def _clean_up_after_the_demo(workdir: Path) -> None:
    """Whatever a failing demo left running (its own processes only): the test must not leak."""
    for worker in _pids_with_environ(f"ANOMALY_MODEL_DIR={workdir / 'models'}"):
        os.kill(worker, signal.SIGKILL)
    env = {**os.environ, "KAFKA_DATA_DIR": str(workdir / "kafka")}
    subprocess.run([str(KAFKA_SH), "stop"], env=env, capture_output=True, check=False)


@pytest.fixture(scope="module", params=["terminal", "pipe"])
def demo_run(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[DemoRun]:
    workdir = tmp_path_factory.mktemp(f"demo-{request.param}") / "demo"
    yield _run_demo_and_press_ctrl_c(request.param, workdir)


def test_ctrl_c_stops_the_broker_and_the_worker(demo_run: DemoRun) -> None:
    assert not demo_run.broker_alive_after, f"broker JVM {demo_run.broker_pid} still running"
    assert not demo_run.workers_alive_after, f"worker {demo_run.workers_alive_after} still running"
    assert demo_run.stop_seconds < STOP_BOUND_S
    assert re.search(r"^\[demo\] stopped$", demo_run.screen, re.MULTILINE), demo_run.screen[-3000:]
    if demo_run.mode == "pipe":  # what the pipe carried before Ctrl-C reached the log
        assert "[demo] streaming; Ctrl-C to stop" in demo_run.tee_log


def test_ctrl_c_accounts_for_every_record(demo_run: DemoRun) -> None:
    report = re.search(
        r"^\[demo\] (\d+) records sent, (\d+) accounted for", demo_run.screen, re.MULTILINE
    )
    assert report, demo_run.screen[-3000:]
    sent, accounted = int(report[1]), int(report[2])
    assert sent > 0 and accounted >= sent
    assert demo_run.exit_status == 0, demo_run.screen[-3000:]
    assert "Traceback" not in demo_run.screen, demo_run.screen[-3000:]
