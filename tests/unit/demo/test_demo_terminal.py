"""The demo's terminal handling without a broker: stop signals and a closed stdout become a stop
request; nothing raises, so the demo always reaches the code that stops the worker and broker.
(tests/integration/test_demo.py presses Ctrl-C on a real pseudo-terminal.)"""

from __future__ import annotations

import io
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.demo_terminal import STOP_SIGNALS, Console, StopRequest


@pytest.fixture
def stop() -> Iterator[StopRequest]:
    """A StopRequest installed in this process; the previous handlers come back afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (*STOP_SIGNALS, signal.SIGPIPE)}
    request = StopRequest()
    request.install()
    yield request
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_stop_signal_requests_a_stop_and_a_second_one_hurries(stop: StopRequest, sig) -> None:
    os.kill(os.getpid(), sig)
    assert stop.wait(5) and not stop.hurry.is_set()
    assert stop.exit_status == 128 + sig
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.hurry.wait(5)
    assert stop.exit_status == 128 + sig  # the first signal is what stopped the demo


def test_sigpipe_is_ignored_so_a_closed_pipe_is_an_error_not_a_death(stop: StopRequest) -> None:
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN
    os.kill(os.getpid(), signal.SIGPIPE)  # would end the process with status 141 otherwise
    assert not stop.is_set()


def _text_stream(fd: int) -> io.TextIOWrapper:
    return io.TextIOWrapper(os.fdopen(fd, "wb"), encoding="utf-8")


def test_a_closed_stdout_sends_the_lines_to_stderr_and_requests_a_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (tee) is gone
    stdout = _text_stream(write_end)
    stderr = _text_stream(os.open(tmp_path / "stderr", os.O_WRONLY | os.O_CREAT))
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    stop = StopRequest()
    console = Console(stop)
    console.line("[demo] 10 records sent, 10 accounted for")
    console.line("[demo] stopped")
    console.note("kafka.sh: stopped")
    assert stop.is_set() and stop.exit_status == 1
    stdout.close()  # flushes what stayed buffered: to /dev/null now, without an error
    stderr.close()
    assert (tmp_path / "stderr").read_text().splitlines() == [
        "[demo] 10 records sent, 10 accounted for",
        "[demo] stopped",
        "kafka.sh: stopped",
    ]


def test_lines_are_dropped_when_stderr_is_closed_too(monkeypatch: pytest.MonkeyPatch) -> None:
    streams = []
    for _ in range(2):
        read_end, write_end = os.pipe()
        os.close(read_end)
        streams.append(_text_stream(write_end))
    monkeypatch.setattr(sys, "stdout", streams[0])
    monkeypatch.setattr(sys, "stderr", streams[1])
    stop = StopRequest()
    console = Console(stop)
    console.line("[demo] stopped")  # neither stream can take it: no exception either
    console.note("kafka.sh: stopped")
    assert stop.is_set()
    for stream in streams:
        stream.close()
