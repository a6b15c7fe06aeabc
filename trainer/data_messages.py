"""How the data readers quote names, cells and library errors inside one-line `DataError`s."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def quote_names(items: Sequence[Any], limit: int = 12) -> str:
    """``'a', 'b' and 3 more``: a list of names short enough for one line."""
    shown = ", ".join(repr(str(i)) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def quote_cell(value: Any) -> str:
    """A value as it appears in the data, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def first_line(exc: BaseException) -> str:
    """The first line of a library's error (pandas and numpy errors can run to many lines)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
