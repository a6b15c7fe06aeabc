"""Progress of the trainer's long steps on stderr: a bar on a terminal, a few lines in a log.

On a terminal (stderr is a TTY) a step shows a tqdm bar redrawn in place: count and total,
elapsed and remaining time, and the step's figures (loss, val_loss). Elsewhere (CI logs,
``| tee``) redrawn frames would pile up, so the step writes summary lines instead: a first one
once it has run for ``START_DELAY_S``, then one each time another tenth of the work is done but
no sooner than ``SUMMARY_INTERVAL_S`` after the previous line, and one at the end. A step shorter
than ``START_DELAY_S`` shows nothing either way. ``quiet=True``, or any step run inside
`silenced` (``--quiet``), shows nothing at all.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TextIO

START_DELAY_S = 1.0
SUMMARY_INTERVAL_S = 30.0
SUMMARY_STEPS = 10  # a summary line at most every 1/SUMMARY_STEPS of the work

# A process-wide switch, not a context variable: a topic is read on a helper thread, which would
# not see the command's context.
_silenced = False


class Progress(Protocol):
    """What a long step reports: work done (with its latest figures), then the end."""

    def advance(self, n: int = 1, **figures: float) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Progress: ...

    def __exit__(self, *exc: object) -> None: ...


@contextmanager
def silenced(active: bool = True) -> Iterator[None]:
    """No progress output from any step while inside, when ``active`` (``--quiet``)."""
    global _silenced
    before = _silenced
    _silenced = before or active
    try:
        yield
    finally:
        _silenced = before


def track(
    desc: str,
    total: int,
    *,
    unit: str,
    unit_scale: bool = False,
    quiet: bool = False,
    stream: TextIO | None = None,
) -> Progress:
    """The progress display of one step of ``total`` units: a bar, summary lines, or nothing.

    ``unit_scale`` shows counts as 1.2M instead of 1234567 (for bytes). ``stream`` defaults to
    the current ``sys.stderr``.
    """
    if quiet or _silenced:
        return _Silent()
    out = stream or sys.stderr
    if _is_terminal(out):
        return _Bar(desc, total, unit=unit, unit_scale=unit_scale, stream=out)
    return SummaryLines(desc, total, unit=unit, unit_scale=unit_scale, stream=out)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _figures(figures: dict[str, float]) -> str:
    return "  ".join(f"{name} {value:.5f}" for name, value in figures.items())


class _Closing:
    """``with track(...) as p:`` closes the display however the step ends."""

    def __enter__(self) -> Progress:
        return self  # type: ignore[return-value]

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class _Silent(_Closing):
    def advance(self, n: int = 1, **figures: float) -> None:
        pass

    def close(self) -> None:
        pass


def _terminal_size(stream: Any) -> tuple[int, int]:
    """The terminal's columns and lines. A terminal that reports none (a fresh pty is 0 x 0)
    gets 100 x 24: tqdm draws an empty bar at width 0, and at 0 lines it takes the height
    as -1 and draws nothing at all (the bar is below the bottom of the screen)."""
    import os

    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return 100, 24
    return size.columns or 100, size.lines or 24


class _Bar(_Closing):
    """A tqdm bar redrawn in place; it appears only once the step has run for START_DELAY_S."""

    def __init__(self, desc: str, total: int, *, unit: str, unit_scale: bool, stream: Any) -> None:
        from tqdm import tqdm

        columns, lines = _terminal_size(stream)
        self._bar = tqdm(
            total=total,
            ncols=columns,
            nrows=lines,
            desc=desc,
            unit=unit,
            unit_scale=unit_scale,
            file=stream,
            leave=True,
            delay=START_DELAY_S,
            mininterval=0.2,
        )

    def advance(self, n: int = 1, **figures: float) -> None:
        if figures:
            self._bar.set_postfix_str(_figures(figures), refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()


class SummaryLines(_Closing):
    """A few whole lines for logs: after START_DELAY_S, about every tenth (at most every
    SUMMARY_INTERVAL_S), and at the end; nothing for a step shorter than the delay."""

    def __init__(
        self,
        desc: str,
        total: int,
        *,
        unit: str,
        unit_scale: bool = False,
        stream: Any,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._desc, self._total, self._unit, self._scale = desc, max(0, total), unit, unit_scale
        self._stream, self._clock = stream, clock
        self._started = clock()
        self._done = 0
        self._figures: dict[str, float] = {}
        self._last_line: float | None = None  # when the previous line was written
        self._next_mark = 0.0  # the done count that allows the next line

    def advance(self, n: int = 1, **figures: float) -> None:
        self._done += n
        self._figures.update(figures)
        now = self._clock()
        if self._last_line is None:
            if now - self._started >= START_DELAY_S:
                self._write(now)
        elif self._done >= self._next_mark and now - self._last_line >= SUMMARY_INTERVAL_S:
            self._write(now)

    def close(self) -> None:
        if self._last_line is not None:
            self._write(self._clock(), final=True)
            self._last_line = None

    def _count(self, n: float) -> str:
        if self._scale:
            from tqdm import tqdm

            return f"{tqdm.format_sizeof(n)}{self._unit}"
        return f"{int(n):,}"

    def _write(self, now: float, *, final: bool = False) -> None:
        from tqdm import tqdm

        elapsed = now - self._started
        done = f"{self._count(self._done)}/{self._count(self._total)}"
        if not self._scale:
            done += f" {self._unit}s"
        if final:
            timing = f"in {tqdm.format_interval(elapsed)}"
        else:
            left = elapsed / self._done * (self._total - self._done) if self._done else math.nan
            remaining = tqdm.format_interval(left) if math.isfinite(left) else "?"
            timing = f"{tqdm.format_interval(elapsed)} elapsed, ~{remaining} left"
        figures = f"; {_figures(self._figures)}" if self._figures else ""
        sep = " " if final else ", "
        print(f"{self._desc}: {done}{sep}{timing}{figures}", file=self._stream, flush=True)
        self._last_line = now
        step = self._total / SUMMARY_STEPS
        self._next_mark = (math.floor(self._done / step) + 1) * step if step > 0 else math.inf
