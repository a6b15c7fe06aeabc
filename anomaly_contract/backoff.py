"""How long to wait before retrying something that failed: one exponential backoff for both
processes (Kafka sends and commits, connecting, reading the model topic)."""

from __future__ import annotations


def backoff_s(attempt: int, first_s: float, max_s: float) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first): ``first_s`` doubling
    each attempt, never more than ``max_s``. A small ``first_s`` retries a brief hiccup at once;
    ``max_s`` bounds how late a recovery is noticed."""
    return min(max_s, first_s * 2 ** min(attempt, 32))
