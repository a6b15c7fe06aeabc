"""What the demo's terminal can do to it, each turned into a request to stop cleanly.

Ctrl-C sends SIGINT to the terminal's whole foreground process group; a closed terminal sends
SIGHUP; a supervisor sends SIGTERM. Under `make demo | tee demo.log` that same Ctrl-C also ends
`tee`, so the demo's next line meets a closed pipe. None of these may end the demo before it has
stopped the worker and the broker: signals only set a `StopRequest`, and `Console` survives a
closed stdout (its lines go on to stderr) and counts that as a stop request too.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType
from typing import TextIO

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequest:
    """Set by the first stop signal or a closed stdout; a second signal asks to skip the drain."""

    def __init__(self) -> None:
        self._requested = threading.Event()
        self.hurry = threading.Event()
        self.first_signal: int | None = None

    def install(self) -> None:
        """Route the stop signals here. SIGPIPE is ignored, so a closed pipe is an error that
        `Console` handles rather than a silent death (exit 141) with the broker left running."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._requested.is_set():
            self.hurry.set()
            return
        self.first_signal = signum
        self._requested.set()

    def set(self) -> None:
        self._requested.set()

    def is_set(self) -> bool:
        return self._requested.is_set()

    def wait(self, timeout: float) -> bool:
        return self._requested.wait(timeout)

    @property
    def exit_status(self) -> int:
        """What a shell expects of a program its signal stopped early: 128 + the signal."""
        return 128 + self.first_signal if self.first_signal is not None else 1


def _detach(stream: TextIO) -> None:
    """Point the stream's descriptor at /dev/null: its buffered rest (flushed again at exit)
    and later writes, ours or a child's, go nowhere instead of failing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)


class Console:
    """The demo's output lines: stdout while someone reads it, then stderr, then nowhere.

    A write that fails (EPIPE from a closed pipe, EIO from a hung-up terminal) detaches that
    stream and requests a stop: nobody is watching the demo any more.
    """

    def __init__(self, stop: StopRequest) -> None:
        self._stop = stop
        self._detached: set[int] = set()  # id() of the streams that failed once
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        """A line of the demo's output (summaries, relayed trainer lines)."""
        self._write(text, (sys.stdout, sys.stderr))

    def note(self, text: str) -> None:
        """A line for the terminal only (what the broker's script says), on stderr as before."""
        self._write(text, (sys.stderr,))

    def _write(self, text: str, streams: tuple[TextIO, ...]) -> None:
        with self._lock:
            for stream in streams:
                if id(stream) in self._detached:
                    continue
                try:
                    stream.write(text + "\n")
                    stream.flush()
                    return
                except OSError:
                    self._detached.add(id(stream))
                    _detach(stream)
                    self._stop.set()
