"""A batch of record values (bytes) -> one matrix of feature vectors, plus a `DecodeError` per
record that cannot be scored.

The three record shapes and every reason a record is refused live in `anomaly_contract.records`,
which the trainer reads files and topics with too; this module adds the worker's hot path on
top: the common shape ``{"id": ..., "features": [n numbers]}`` is parsed by msgspec straight
into typed floats (its parser checks every value is a number, so these rows skip the per-record
checks; ~1.9x orjson with the checks it spares), anything else takes the general path, the value
types of the rows it gives are checked in one pass, and float ranges are checked on the matrix. A bad record is data, never an exception: the loop routes it to the dead-letter topic
with the error's ``kind`` and ``message``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from anomaly_contract.records import (
    EMPTY,
    MISSING_FEATURE,
    NON_FINITE,
    NOT_A_NUMBER,
    NOT_JSON,
    NOT_UTF8,
    NULL_VALUE,
    OUT_OF_RANGE,
    RECORD_ERROR_KINDS,
    TOO_DEEP,
    TOO_LARGE,
    WRONG_LENGTH,
    WRONG_SHAPE,
    DecodeError,
    FeatureSpec,
    check_values,
    decode_record,
    out_of_range_rows,
)

__all__ = [
    "BAD_KEY",
    "EMPTY",
    "ERROR_KINDS",
    "MISSING_FEATURE",
    "NON_FINITE",
    "NON_FINITE_SCORE",
    "NOT_A_NUMBER",
    "NOT_JSON",
    "NOT_UTF8",
    "NULL_VALUE",
    "OUT_OF_RANGE",
    "TOO_DEEP",
    "TOO_LARGE",
    "WRONG_LENGTH",
    "WRONG_SHAPE",
    "DecodeError",
    "DecodedBatch",
    "FeatureSpec",
    "decode_batch",
    "decode_record",
]

# A record can also fail after decoding: its reconstruction error overflows while scoring.
NON_FINITE_SCORE = "non_finite_score"
# Windowed models: the record's series key is unusable (not UTF-8, or a JSON field of the wrong
# type); see `worker.series_keys`.
BAD_KEY = "bad_key"
# The kinds a record can be rejected for (the dead-letter "error class", a metric label).
ERROR_KINDS = (*RECORD_ERROR_KINDS, NON_FINITE_SCORE, BAD_KEY)

_FLOATS = {float}


class _Common(msgspec.Struct):
    """The common record shape: ``{"features": [numbers], "id": any JSON}``, other fields
    ignored. JSON integers become floats (as the matrix would make them); ``true``, ``null``,
    strings and nested lists are refused by the parser, and such records take the general
    path, which names the problem."""

    features: list[float]
    id: Any = None


_decode_common = msgspec.json.Decoder(_Common).decode


@dataclass
class DecodedBatch:
    """The outcome of decoding a batch: a matrix of valid rows and the errors, by position."""

    x: np.ndarray  # (n_valid, n_features) float64
    valid_index: list[int]  # position in the batch of each row of x
    ids: list[Any]  # the record's "id" (None if absent) for each row of x
    errors: list[tuple[int, DecodeError]] = field(default_factory=list)


def decode_batch(values: Sequence[bytes | None], spec: FeatureSpec) -> DecodedBatch:
    """Decode a batch; valid rows become one float64 matrix, in batch order."""
    rows: list[list[Any]] = []
    ids: list[Any] = []
    index: list[int] = []
    errors: list[tuple[int, DecodeError]] = []
    n = spec.n_features
    limit = spec.max_record_bytes
    general = False  # a row came from the general path: the batch's value types need a check
    for i, v in enumerate(values):
        # Fast path for the common shape (see `_Common`); anything else, or anything odd (a
        # length that is not the model's, integers beyond the float range, invalid JSON), takes
        # decode_record, which names the problem.
        if v and len(v) <= limit:
            try:
                common = _decode_common(v)
            except msgspec.DecodeError:  # ValidationError included
                common = None
            if common is not None and len(common.features) == n:
                ids.append(common.id)
                rows.append(common.features)
                index.append(i)
                continue
        out = decode_record(v, spec, check_values=False)
        if type(out) is tuple:
            ids.append(out[0])
            rows.append(out[1])
            index.append(i)
            general = True
        else:
            errors.append((i, out))  # type: ignore[arg-type]
    # The value types of the whole batch in one C-level pass; only a batch holding something
    # other than floats is checked record by record.
    if general and not set(map(type, itertools.chain.from_iterable(rows))) <= _FLOATS:
        checked = [check_values(r, spec) for r in rows]
        if any(e is not None for e in checked):
            keep_rows = [e is None for e in checked]
            errors.extend((p, e) for p, e in zip(index, checked, strict=True) if e is not None)
            errors.sort(key=lambda e: e[0])
            rows = [r for r, k in zip(rows, keep_rows, strict=True) if k]
            ids = [r for r, k in zip(ids, keep_rows, strict=True) if k]
            index = [p for p, k in zip(index, keep_rows, strict=True) if k]
    if not rows:
        return DecodedBatch(np.zeros((0, n)), [], [], errors)
    x = np.array(rows, dtype=np.float64)
    bad, range_errors = out_of_range_rows(x, spec)
    if range_errors:
        keep = [not b for b in bad.tolist()]
        # The fast path made integers floats: a row refused here is read again by the general
        # path, which names an integer as it was written (the trainer's reader does too).
        errors.extend(
            (index[j], _exact_reason(values[index[j]], spec, err)) for j, err in range_errors
        )
        x = x[~bad]
        index = [p for p, k in zip(index, keep, strict=True) if k]
        ids = [r for r, k in zip(ids, keep, strict=True) if k]
        errors.sort(key=lambda e: e[0])
    return DecodedBatch(x, index, ids, errors)


def _exact_reason(value: bytes | None, spec: FeatureSpec, found: DecodeError) -> DecodeError:
    """The reason the general path gives a record `out_of_range_rows` refused, else ``found``."""
    out = decode_record(value, spec)
    return out if isinstance(out, DecodeError) else found
