"""Record values (bytes) -> feature vectors, or a `DecodeError` saying why not.

Pure functions, no Kafka. A bad record is data, never an exception: the loop routes it to the
dead-letter topic with the error's ``kind`` and ``message``. Three shapes are accepted::

    {"id": "a1", "features": [0.1, 0.2, ...]}          # model feature order
    {"id": "a1", "features": {"temp": 21.5, ...}}      # by feature name
    {"id": "a1", "temp": 21.5, "rpm": 900}             # top-level fields named like features

Image models also take nested rows (``[[...], ...]``) of the model's image shape. Keys that are not
features are ignored; missing features, wrong lengths and non-numbers are errors.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

# The kinds a record can be rejected for (the dead-letter "error class").
EMPTY = "empty"
TOO_LARGE = "too_large"
NOT_UTF8 = "not_utf8"
NOT_JSON = "not_json"
TOO_DEEP = "too_deep"
NON_FINITE = "non_finite"
WRONG_SHAPE = "wrong_shape"
WRONG_LENGTH = "wrong_length"
MISSING_FEATURE = "missing_feature"
NOT_A_NUMBER = "not_a_number"
NULL_VALUE = "null_value"
OUT_OF_RANGE = "out_of_range"
NON_FINITE_SCORE = "non_finite_score"
ERROR_KINDS = (
    EMPTY,
    TOO_LARGE,
    NOT_UTF8,
    NOT_JSON,
    TOO_DEEP,
    NON_FINITE,
    WRONG_SHAPE,
    WRONG_LENGTH,
    MISSING_FEATURE,
    NOT_A_NUMBER,
    NULL_VALUE,
    OUT_OF_RANGE,
    NON_FINITE_SCORE,
)

_MISSING = object()


@dataclass(frozen=True)
class DecodeError:
    """Why a record cannot be scored: a stable ``kind`` (metric label, DLQ header) and a message."""

    kind: str
    message: str


@dataclass(frozen=True)
class FeatureSpec:
    """What the current model expects from a record."""

    names: tuple[str, ...]
    image_shape: tuple[int, ...] | None = None
    max_record_bytes: int = 1024 * 1024
    max_abs_value: float = 1e12

    @property
    def n_features(self) -> int:
        return len(self.names)

    @property
    def nested_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Nested-row shapes accepted for image models (with and without a trailing channel 1)."""
        if not self.image_shape or len(self.image_shape) < 2:
            return ()
        shapes = [tuple(self.image_shape)]
        if self.image_shape[-1] == 1 and len(self.image_shape) > 2:
            shapes.append(tuple(self.image_shape[:-1]))
        return tuple(shapes)


@dataclass
class DecodedBatch:
    """The outcome of decoding a batch: a matrix of valid rows and the errors, by position."""

    x: np.ndarray  # (n_valid, n_features) float64
    valid_index: list[int]  # position in the batch of each row of x
    ids: list[Any]  # the record's "id" (None if absent) for each row of x
    errors: list[tuple[int, DecodeError]] = field(default_factory=list)


class _NonFiniteConstant(ValueError):
    pass


def _reject_constant(name: str) -> float:
    raise _NonFiniteConstant(name)


# Python's json accepts NaN/Infinity literals; the C scanner still runs with this hook.
_loads = json.JSONDecoder(parse_constant=_reject_constant).decode
_fast_loads = orjson.loads


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    return {bool: "boolean", str: "string", list: "array", dict: "object", int: "number",
            float: "number"}.get(type(v), type(v).__name__)  # fmt: skip


def _flatten_nested(rows: list[Any], shape: tuple[int, ...]) -> list[Any] | None:
    """Flatten nested lists of exactly ``shape``; None if the nesting does not match."""
    if len(rows) != shape[0]:
        return None
    if len(shape) == 1:
        return rows
    out: list[Any] = []
    for row in rows:
        if type(row) is not list:
            return None
        flat = _flatten_nested(row, shape[1:])
        if flat is None:
            return None
        out.extend(flat)
    return out


_FLOATS = {float}
_NUMBERS = {float, int}


def _check_values(values: Sequence[Any], spec: FeatureSpec) -> DecodeError | None:
    types = set(map(type, values))  # one C-level pass: the common all-float case costs ~0.3 us
    if types <= _FLOATS:
        return None
    limit = spec.max_abs_value
    if types <= _NUMBERS and all(-limit <= v <= limit for v in values):
        return None
    for i, v in enumerate(values):
        t = type(v)
        if t is float:
            continue  # NaN cannot come out of the decoder; inf (1e999) is caught in the batch
        if t is int:
            if -limit <= v <= limit:
                continue
            return DecodeError(OUT_OF_RANGE, f"{_name(spec, i)} = {_short(v)} exceeds ±{limit:g}")
        if v is None:
            return DecodeError(NULL_VALUE, f"{_name(spec, i)} is null")
        if t is list or t is dict:
            return DecodeError(WRONG_SHAPE, f"{_name(spec, i)} is a nested {_type_name(v)}")
        return DecodeError(NOT_A_NUMBER, f"{_name(spec, i)} is a {_type_name(v)}, not a number")
    return None


def _name(spec: FeatureSpec, i: int) -> str:
    return f"feature {spec.names[i]!r}" if i < len(spec.names) else f"value {i}"


def _short(v: Any) -> str:
    s = str(v) if not isinstance(v, int) or v.bit_length() < 200 else f"<{v.bit_length()}-bit int>"
    return s if len(s) <= 40 else s[:37] + "..."


def _by_name(obj: dict[str, Any], spec: FeatureSpec, where: str) -> list[Any] | DecodeError:
    values = [obj.get(name, _MISSING) for name in spec.names]
    if _MISSING in values:
        missing = [n for n, v in zip(spec.names, values, strict=True) if v is _MISSING]
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        return DecodeError(
            MISSING_FEATURE, f"{where} lacks feature(s) {', '.join(missing[:3])}{more}"
        )
    return values


def _parse_slowly(value: bytes) -> Any:
    """The standard library's parse, classifying why a value is not a JSON document."""
    try:
        text = value.decode("utf-8") if type(value) is bytes else bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        return DecodeError(NOT_UTF8, f"record value is not UTF-8: {exc.reason} at byte {exc.start}")
    try:
        return _loads(text)
    except _NonFiniteConstant as exc:
        return DecodeError(NON_FINITE, f"{exc} is not a finite number")
    except json.JSONDecodeError as exc:
        return DecodeError(NOT_JSON, f"not JSON: {exc}")
    except RecursionError:
        return DecodeError(TOO_DEEP, "JSON nested too deeply")


def decode_record(
    value: bytes | None, spec: FeatureSpec, *, check_values: bool = True
) -> tuple[Any, list[Any]] | DecodeError:
    """Decode one record value into ``(id, values)`` with values checked to be numbers.

    Non-finite floats (from literals like ``1e999``) and magnitudes are checked per batch in
    `decode_batch`, vectorised.
    """
    if not value:
        return DecodeError(EMPTY, "record value is empty")
    if len(value) > spec.max_record_bytes:
        return DecodeError(
            TOO_LARGE, f"record value is {len(value)} bytes, limit {spec.max_record_bytes}"
        )
    try:
        # orjson parses bytes directly, ~3x faster than json; it refuses NaN/Infinity literals
        # and invalid UTF-8 itself. Whatever it refuses is parsed again by the standard library
        # only to name the reason precisely (bad records are rare; the fast path is the rule).
        obj = _fast_loads(value)
    except ValueError:
        parsed = _parse_slowly(value)
        if type(parsed) is DecodeError:
            return parsed
        obj = parsed
    if type(obj) is not dict:
        return DecodeError(WRONG_SHAPE, f"expected a JSON object, got {_type_name(obj)}")

    rid = obj.get("id")
    feats = obj.get("features", _MISSING)
    values: list[Any] | DecodeError
    if feats is _MISSING:
        values = _by_name(obj, spec, "record")
    elif type(feats) is list:
        values = feats
        if feats and type(feats[0]) is list:
            flat = None
            for shape in spec.nested_shapes:
                flat = _flatten_nested(feats, shape)
                if flat is not None:
                    break
            if flat is None:
                want = " or ".join("x".join(map(str, s)) for s in spec.nested_shapes)
                return DecodeError(
                    WRONG_SHAPE,
                    f"nested 'features' do not match the model's image shape {want}"
                    if want
                    else "'features' must be a flat list of numbers for this model",
                )
            values = flat
        elif len(feats) != spec.n_features:
            return DecodeError(
                WRONG_LENGTH,
                f"'features' has {len(feats)} values, the model expects {spec.n_features}",
            )
    elif type(feats) is dict:
        values = _by_name(feats, spec, "'features'")
    else:
        return DecodeError(
            WRONG_SHAPE, f"'features' must be a list or an object, got {_type_name(feats)}"
        )
    if isinstance(values, DecodeError):
        return values
    if check_values:
        err = _check_values(values, spec)
        if err is not None:
            return err
    return rid, values


def decode_batch(values: Sequence[bytes | None], spec: FeatureSpec) -> DecodedBatch:
    """Decode a batch; valid rows become one float64 matrix, in batch order."""
    rows: list[list[Any]] = []
    ids: list[Any] = []
    index: list[int] = []
    errors: list[tuple[int, DecodeError]] = []
    n = spec.n_features
    limit = spec.max_record_bytes
    for i, v in enumerate(values):
        # Fast path for the common shape {"id": ..., "features": [n numbers]}; anything else
        # (or anything odd) takes decode_record, which names the problem.
        if v and len(v) <= limit:
            try:
                obj = _fast_loads(v)
            except ValueError:
                obj = None
            if type(obj) is dict:
                feats = obj.get("features")
                if (
                    type(feats) is list
                    and len(feats) == n
                    and (n == 0 or type(feats[0]) is not list)
                ):
                    ids.append(obj.get("id"))
                    rows.append(feats)
                    index.append(i)
                    continue
        out = decode_record(v, spec, check_values=False)
        if type(out) is tuple:
            ids.append(out[0])
            rows.append(out[1])
            index.append(i)
        else:
            errors.append((i, out))  # type: ignore[arg-type]
    # The value types of the whole batch in one C-level pass; only a batch holding something
    # other than floats is checked record by record.
    if not set(map(type, itertools.chain.from_iterable(rows))) <= _FLOATS:
        checked = [_check_values(r, spec) for r in rows]
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
    bad = np.asarray(~(np.abs(x) <= spec.max_abs_value).all(axis=1))  # also catches inf
    if bad.any():
        keep = [not b for b in bad.tolist()]
        for j in np.flatnonzero(bad):
            row = x[j]
            col = int(np.flatnonzero(~(np.abs(row) <= spec.max_abs_value))[0])
            bad_value = float(row[col])
            if math.isfinite(bad_value):
                err = DecodeError(
                    OUT_OF_RANGE,
                    f"{_name(spec, col)} = {bad_value:g} exceeds ±{spec.max_abs_value:g}",
                )
            else:
                err = DecodeError(NON_FINITE, f"{_name(spec, col)} is not a finite number")
            errors.append((index[j], err))
        x = x[~bad]
        index = [p for p, k in zip(index, keep, strict=True) if k]
        ids = [r for r, k in zip(ids, keep, strict=True) if k]
        errors.sort(key=lambda e: e[0])
    return DecodedBatch(x, index, ids, errors)
