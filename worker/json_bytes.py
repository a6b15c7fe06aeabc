"""The worker's outputs (events, incident records) as compact UTF-8 JSON bytes.

orjson, about 5x the standard library's ``json.dumps`` on an event. Its output differs from the
standard library's only in form: non-ASCII characters are written as UTF-8 rather than
``\\u`` escapes, and floats in their shortest form (``1e-5``, not ``1e-05``); both parse to the
same values. What orjson cannot write (an integer beyond 64 bits, say, from a record's ``id``)
falls back to the standard library. Non-finite floats are refused as the standard library's
``allow_nan=False`` refuses them (orjson would write ``null``): an output never carries one.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson


def json_bytes(obj: dict[str, Any], floats: tuple[float, ...] = ()) -> bytes:
    """``obj`` as compact JSON; ``floats`` are its numbers that must be finite (``ValueError``
    otherwise, as ``json.dumps(allow_nan=False)``; nested floats beyond them are the caller's)."""
    for v in floats:
        if not math.isfinite(v):
            raise ValueError(f"out of range float value in an output: {v!r}")
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        return json.dumps(obj, allow_nan=False, separators=(",", ":")).encode()
