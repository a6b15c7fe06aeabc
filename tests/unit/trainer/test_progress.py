"""Progress on stderr: a bar on a terminal, a few lines in a pipe, nothing with --quiet."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from trainer_rows import FEATURES, correlated_rows, write_csv

from trainer import progress
from trainer.progress import START_DELAY_S, SUMMARY_INTERVAL_S, SummaryLines, silenced, track

ROOT = Path(__file__).resolve().parents[3]
# Enough epochs that training outlasts START_DELAY_S (~4 s of CPU), few enough to stay quick.
EPOCHS = ["--epochs", "30", "--patience", "30", "--seed", "2"]
HOLDOUT = ["--calibration", "holdout"]  # no cross-fitting where it is not what is tested


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_summary_lines_are_few_and_spaced() -> None:
    clock, out = FakeClock(), io.StringIO()
    lines = SummaryLines("training", 1000, unit="epoch", stream=out, clock=clock)
    for _ in range(1000):  # 1,000 epochs of 1 s: far more updates than lines
        clock.now += 1.0
        lines.advance(1, loss=0.5, val_loss=0.25)
    lines.close()
    written = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    # the start, one per tenth (each > SUMMARY_INTERVAL_S apart here), the end
    assert 3 <= len(written) <= 12, written
    assert written[0].startswith("training: 1/1,000 epochs, 00:01 elapsed, ~16:39 left")
    assert written[-1] == "training: 1,000/1,000 epochs in 16:40; loss 0.50000  val_loss 0.25000"


def test_summary_lines_wait_for_the_interval() -> None:
    clock, out = FakeClock(), io.StringIO()
    lines = SummaryLines("reading t", 100, unit="record", stream=out, clock=clock)
    clock.now += START_DELAY_S
    lines.advance(50)  # the first line, at half way
    clock.now += SUMMARY_INTERVAL_S / 2
    lines.advance(40)  # four tenths more, but too soon after the first line
    lines.close()
    assert [line.split(",")[0] for line in out.getvalue().splitlines()] == [
        "reading t: 50/100 records",
        "reading t: 90/100 records in 00:16",
    ]


def test_a_short_step_shows_nothing() -> None:
    clock, out = FakeClock(), io.StringIO()
    lines = SummaryLines("sending v1", 10, unit="B", unit_scale=True, stream=out, clock=clock)
    clock.now += START_DELAY_S / 2
    lines.advance(10)
    lines.close()
    assert out.getvalue() == ""


def test_quiet_and_silenced_show_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with track("a", 3, unit="x", quiet=True) as p:
        p.advance(3)
    with silenced(), track("b", 3, unit="x") as p:
        p.advance(3)
    with silenced(False):
        assert isinstance(track("c", 3, unit="x"), SummaryLines)
    assert capsys.readouterr().err == ""
    assert not progress._silenced


def _read_all(fd: int) -> str:
    chunks = []
    while select.select([fd], [], [], 0.5)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def test_a_terminal_stream_gets_a_bar_redrawn_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bar itself, on a real pty, with tqdm's clock faked: no timing in the outcome."""
    clock = FakeClock()
    monkeypatch.setattr("tqdm.std.time", clock)
    leader, follower = pty.openpty()
    with os.fdopen(follower, "w") as terminal:
        with track("training", 50, unit="epoch", stream=terminal) as p:
            assert not isinstance(p, SummaryLines)
            clock.now += START_DELAY_S / 2
            p.advance(1, loss=0.9, val_loss=0.8)  # within the delay: nothing drawn yet
            terminal.flush()
            assert _read_all(leader) == ""
            for _ in range(49):
                clock.now += 0.5
                p.advance(1, loss=0.5, val_loss=0.25)
        terminal.flush()
        out = _read_all(leader)
    os.close(leader)
    assert out.count("\r") >= 10, out  # redrawn in place, once per step past the interval
    assert "training" in out and "50/50" in out and "val_loss 0.25000" in out, out
    assert "<" in out  # elapsed<remaining
    assert len([line for line in out.split("\n") if "epoch" in line]) <= 2, out


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x = correlated_rows(300, seed=4)
    return write_csv(tmp_path_factory.mktemp("progress") / "train.csv", x, FEATURES)


def _fit_command(data: Path, model_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "trainer",
        "fit",
        str(data),
        "--model-dir",
        str(model_dir),
        *EPOCHS,
        *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_a_terminal_gets_a_redrawn_bar(data_csv: Path, tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        # 100 epochs (the later flags win): 30 can all end within the bar's 1 s delay on a fast
        # machine once the first epoch's tracing is done, and then no bar is drawn at all
        _fit_command(data_csv, tmp_path / "m", *HOLDOUT, "--epochs", "100", "--patience", "100"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=follower,
        env=_env(),
    )
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 600)
        if not ready:
            proc.kill()
            pytest.fail("no output on the terminal for 600 s")
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    err = b"".join(chunks).decode(errors="replace")
    # A pty turns every "\n" into "\r\n", and TensorFlow's own log lines hold "<": neither may
    # pass for a bar (until 2026-12-03 they did, while a 0 x 0 pty made tqdm draw nothing).
    frames = [frame for frame in re.split(r"\r(?!\n)", err) if "epoch" in frame]
    assert len(frames) >= 3, err  # drawn, then redrawn in place at least twice ...
    drawn = [f for f in frames if re.search(r"\d+/100 \[\d\d:\d\d<", f) and "val_loss" in f]
    assert drawn, err  # ... with count/total, elapsed<remaining and the figures
    epoch_lines = [line for line in err.split("\n") if "epoch" in line]
    assert len(epoch_lines) <= 6, epoch_lines  # ... not one line per epoch


def test_a_pipe_gets_a_handful_of_lines(data_csv: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        _fit_command(data_csv, tmp_path / "m"),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    lines = proc.stderr.splitlines()
    progress_lines = [line for line in lines if line.startswith(("training:", "cross-fitting:"))]
    assert 1 <= len(progress_lines) <= 10, proc.stderr  # 30 epochs, then 3 x 30 cross-fitted
    training = [line for line in progress_lines if line.startswith("training:")]
    assert training[-1].startswith("training: 30/30 epochs in "), proc.stderr
    assert np.isfinite(float(training[-1].rsplit("val_loss ", 1)[-1]))


def test_quiet_fit_writes_no_progress(data_csv: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        _fit_command(data_csv, tmp_path / "m", *HOLDOUT, "--quiet"),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "epoch" not in proc.stderr and "\r" not in proc.stderr, proc.stderr
    assert "training" not in proc.stderr and "cross-fitting" not in proc.stderr, proc.stderr
    assert proc.stdout.startswith("published v1")
