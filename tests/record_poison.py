"""Record values the worker must refuse, one or more per error kind, for a model of three
features (``temp``, ``rpm``, ``load``) and the given limits."""

from __future__ import annotations

import json
from typing import Any

from anomaly_contract import records as r


def enc(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def poison_records(max_record_bytes: int, max_abs_value: float) -> list[tuple[bytes | None, str]]:
    """``(value, kind)`` pairs covering every kind in `records.RECORD_ERROR_KINDS`."""
    too_big_int = int(max_abs_value) * 10
    return [
        (b"", r.EMPTY),
        (None, r.EMPTY),
        (b'{"features": [1, 2, 3], "pad": "' + b"x" * max_record_bytes + b'"}', r.TOO_LARGE),
        (b"\xff\xfe\x00garbage", r.NOT_UTF8),
        (b"not json", r.NOT_JSON),
        (b'{"features": [1, 2', r.NOT_JSON),
        (b"[" * 4000 + b"]" * 4000, r.TOO_DEEP),
        (b'{"features": ' + b"[" * 4000 + b"]" * 4000 + b"}", r.TOO_DEEP),
        (b'{"features": [1, NaN, 3]}', r.NON_FINITE),
        (b'{"features": [1, Infinity, 3]}', r.NON_FINITE),
        (b'{"features": [1, -Infinity, 3]}', r.NON_FINITE),
        (enc([1, 2, 3]), r.WRONG_SHAPE),
        (b"null", r.WRONG_SHAPE),
        (b'"a string"', r.WRONG_SHAPE),
        (enc({"features": "1,2,3"}), r.WRONG_SHAPE),
        (enc({"features": [1, [2], 3]}), r.WRONG_SHAPE),
        (enc({"features": [[1, 2, 3]]}), r.WRONG_SHAPE),
        (enc({"features": [1, 2]}), r.WRONG_LENGTH),
        (enc({"features": [1, 2, 3, 4]}), r.WRONG_LENGTH),
        (enc({"features": []}), r.WRONG_LENGTH),
        (enc({"features": {"temp": 1, "rpm": 2}}), r.MISSING_FEATURE),
        (enc({"temp": 1}), r.MISSING_FEATURE),
        (enc({"id": "x"}), r.MISSING_FEATURE),
        (enc({"features": [1, "2", 3]}), r.NOT_A_NUMBER),
        (enc({"features": [1, True, 3]}), r.NOT_A_NUMBER),
        (enc({"temp": 1, "rpm": "fast", "load": 3}), r.NOT_A_NUMBER),
        (enc({"features": [1, None, 3]}), r.NULL_VALUE),
        (enc({"features": {"temp": 1, "rpm": None, "load": 3}}), r.NULL_VALUE),
        (enc({"features": [1, 10**400, 3]}), r.OUT_OF_RANGE),
        (enc({"features": [1, too_big_int, 3]}), r.OUT_OF_RANGE),
    ]


# Pass the decoder (`decode_record`) but refused on the whole row (`out_of_range_rows`).
def overflowing_floats(max_abs_value: float) -> list[tuple[bytes, str]]:
    return [
        (b'{"features": [1, 1e999, 3]}', r.NON_FINITE),
        (b'{"features": [1, -1e999, 3]}', r.NON_FINITE),
        (enc({"features": [1, max_abs_value * 5, 3]}), r.OUT_OF_RANGE),
    ]
