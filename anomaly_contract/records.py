"""The three record shapes, read in one place: a record value -> a feature vector, or why not.

The worker decodes every consumed value with this module (its batch decoder in `worker.decode`
adds fast paths on top) and the trainer reads JSON Lines files and Kafka topics with it, so
offline reading accepts exactly what the worker accepts, record by record. Pure functions, no
Kafka. A record that cannot be read is data: a `DecodeError` with a stable ``kind`` (metric label,
dead-letter header) and a message, never an exception. The shapes, given the model's features
(a `FeatureSpec`)::

    {"id": "a1", "features": [0.1, 0.2, ...]}          # model feature order
    {"id": "a1", "features": {"temp": 21.5, ...}}      # by feature name
    {"id": "a1", "temp": 21.5, "rpm": 900}             # top-level fields named like features

Image models also take nested rows (``[[...], ...]``) of the model's image shape. Keys that are not
features are ignored; missing features, wrong lengths and non-numbers are errors.

Records without a model (`infer_spec`: ``anomaly-trainer fit`` on JSON Lines or a topic, whose
records may mix the shapes, as a topic with several producers does) take their features from
the data:

- the names come from the first record that names its features (top-level fields or a
  ``features`` object): its fields holding a number or null, in its order. ``id``, the label
  field and fields holding text, booleans, lists or objects (metadata such as ``"site"``) are not
  features. A topic, a live stream that may hold stray records, takes the set of names most of
  its naming records share instead of the first record's;
- records listing their features by position are taken in that order and must have as many
  values;
- without any named record the names are ``f0, f1, ...``, the first positional record (a topic:
  the length most of them share) sets how many, and the first record with nested rows of that
  many values sets the image shape (flat lists stay accepted, as by an image model). Named
  features make a table: nested rows are refused there, as by a table model.

Every record is then read as the worker reads it with a model of those features: named records
by name (other fields ignored, so a producer adding a field breaks nothing), and a record lacking
one of the features, or holding a value the worker refuses, is refused with the worker's reason.
A reader that knows the model reads with its `FeatureSpec` instead and then matches the worker
even where the data alone cannot tell (a field only some producers add, a positional producer
whose order differs from the first naming record's).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

# The kinds a record can be refused for (the dead-letter "error class").
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
RECORD_ERROR_KINDS = (
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
)
DEFAULT_MAX_RECORD_BYTES = 1024 * 1024
DEFAULT_MAX_ABS_VALUE = 1e12

_MISSING = object()
_FLOATS = {float}
_NUMBERS = {float, int}
_ID_FIELD = "id"


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
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    max_abs_value: float = DEFAULT_MAX_ABS_VALUE

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


# --------------------------------------------------------------------------------------------
# Bytes -> JSON value
# --------------------------------------------------------------------------------------------
class _NonFiniteConstant(ValueError):
    pass


def _reject_constant(name: str) -> float:
    raise _NonFiniteConstant(name)


# Python's json accepts NaN/Infinity literals; the C scanner still runs with this hook.
_loads = json.JSONDecoder(parse_constant=_reject_constant).decode
fast_loads = orjson.loads  # ~3x faster than json; refuses NaN/Infinity and invalid UTF-8 itself


def parse_value(value: bytes | None, max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Any:
    """A record value -> its JSON value, or the `DecodeError` saying why it is not one."""
    if not value:
        return DecodeError(EMPTY, "record value is empty")
    if len(value) > max_bytes:
        return DecodeError(TOO_LARGE, f"record value is {len(value)} bytes, limit {max_bytes}")
    try:
        return fast_loads(value)
    except ValueError:
        # Whatever orjson refuses is parsed again by the standard library only to name the
        # reason precisely (bad records are rare; the fast path is the rule).
        return _parse_slowly(value)


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


# --------------------------------------------------------------------------------------------
# JSON value -> the model's values
# --------------------------------------------------------------------------------------------
def type_name(v: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
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


def _name(spec: FeatureSpec, i: int) -> str:
    return f"feature {spec.names[i]!r}" if i < len(spec.names) else f"value {i}"


def _short(v: Any) -> str:
    s = str(v) if not isinstance(v, int) or v.bit_length() < 200 else f"<{v.bit_length()}-bit int>"
    return s if len(s) <= 40 else s[:37] + "..."


def check_values(values: Sequence[Any], spec: FeatureSpec) -> DecodeError | None:
    """The first value that is not a number the model can take (types and integer range)."""
    types = set(map(type, values))  # one C-level pass: the common all-float case costs ~0.3 us
    if types <= _FLOATS:
        return None
    limit = spec.max_abs_value
    if types <= _NUMBERS and all(-limit <= v <= limit for v in values):
        return None
    for i, v in enumerate(values):
        t = type(v)
        if t is float:
            continue  # NaN cannot come out of the parser; inf (1e999): `out_of_range_rows`
        if t is int:
            if -limit <= v <= limit:
                continue
            return DecodeError(OUT_OF_RANGE, f"{_name(spec, i)} = {_short(v)} exceeds ±{limit:g}")
        if v is None:
            return DecodeError(NULL_VALUE, f"{_name(spec, i)} is null")
        if t is list or t is dict:
            return DecodeError(WRONG_SHAPE, f"{_name(spec, i)} is a nested {type_name(v)}")
        return DecodeError(NOT_A_NUMBER, f"{_name(spec, i)} is a {type_name(v)}, not a number")
    return None


def _by_name(obj: dict[str, Any], spec: FeatureSpec, where: str) -> list[Any] | DecodeError:
    values = [obj.get(name, _MISSING) for name in spec.names]
    if _MISSING in values:
        missing = [n for n, v in zip(spec.names, values, strict=True) if v is _MISSING]
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        return DecodeError(
            MISSING_FEATURE, f"{where} lacks feature(s) {', '.join(missing[:3])}{more}"
        )
    return values


def record_values(
    obj: Any, spec: FeatureSpec, *, check: bool = True
) -> tuple[Any, list[Any]] | DecodeError:
    """A parsed record in any of the three shapes -> ``(id, values)`` in the model's order.

    ``check`` also checks the values' types and integer range (`check_values`); float range and
    non-finite floats (from literals like ``1e999``) are checked on whole rows by
    `out_of_range_rows`, vectorised.
    """
    if type(obj) is not dict:
        return DecodeError(WRONG_SHAPE, f"expected a JSON object, got {type_name(obj)}")
    rid = obj.get(_ID_FIELD)
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
            WRONG_SHAPE, f"'features' must be a list or an object, got {type_name(feats)}"
        )
    if type(values) is DecodeError:
        return values
    if check:
        err = check_values(values, spec)  # type: ignore[arg-type]
        if err is not None:
            return err
    return rid, values  # type: ignore[return-value]


def decode_record(
    value: bytes | None, spec: FeatureSpec, *, check_values: bool = True
) -> tuple[Any, list[Any]] | DecodeError:
    """Decode one record value into ``(id, values)`` with values checked to be numbers.

    Non-finite floats (from literals like ``1e999``) and float magnitudes are checked on whole
    rows, vectorised, by `out_of_range_rows`.
    """
    obj = parse_value(value, spec.max_record_bytes)
    if type(obj) is DecodeError:
        return obj
    return record_values(obj, spec, check=check_values)


def out_of_range_rows(
    x: np.ndarray, spec: FeatureSpec
) -> tuple[np.ndarray, list[tuple[int, DecodeError]]]:
    """Rows of ``x`` holding a value beyond ``max_abs_value`` or not finite: a mask, and the
    reason for each such row (by row index), naming its first bad value."""
    limit = spec.max_abs_value
    bad = np.asarray(~(np.abs(x) <= limit).all(axis=1))  # also catches inf
    if not bad.any():
        return bad, []
    errors = []
    for j in np.flatnonzero(bad).tolist():
        row = x[j]
        col = int(np.flatnonzero(~(np.abs(row) <= limit))[0])
        bad_value = float(row[col])
        if np.isfinite(bad_value):
            err = DecodeError(
                OUT_OF_RANGE, f"{_name(spec, col)} = {bad_value:g} exceeds ±{limit:g}"
            )
        else:
            err = DecodeError(NON_FINITE, f"{_name(spec, col)} is not a finite number")
        errors.append((j, err))
    return bad, errors


# --------------------------------------------------------------------------------------------
# Records without a model: the features from the data (the rule in the module docstring)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InferredFeatures:
    """The spec that records without a model are read with, and which record set it."""

    spec: FeatureSpec
    origin: int  # index of the record whose names (or, positional only, whose length) are used
    named: bool  # names from a record naming its features, else f0, f1, ...


def infer_spec(
    objs: Sequence[Any], label_field: str | None = None, *, majority: bool = False
) -> InferredFeatures | None:
    """The features of parsed records read without a model; None when no record has any.

    ``majority=False`` takes the names from the first record naming its features (a file:
    curated input); ``majority=True`` from the set of names most such records share, and the
    length most positional records share (a topic, which may hold stray records). Entries of
    ``objs`` that are not JSON objects are passed over.
    """
    skip = {_ID_FIELD, label_field}
    named = _pick(_named_fields(objs, skip), majority, key=frozenset)
    if named is not None:
        origin, names = named
    else:
        positional = _pick(_positional_sizes(objs), majority, key=int)
        if positional is None:
            return None
        origin, count = positional
        names = [f"f{i}" for i in range(count)]
    image_shape = None if named is not None else _first_image_shape(objs, len(names))
    return InferredFeatures(FeatureSpec(tuple(names), image_shape), origin, named is not None)


def _pick(found: Iterator[tuple[int, Any]], majority: bool, key: Any) -> tuple[int, Any] | None:
    """The first entry, or the first of the most common kind (ties: the earliest kind)."""
    if not majority:
        return next(found, None)
    entries = list(found)
    if not entries:
        return None
    counts = Counter(key(value) for _, value in entries)
    common = counts.most_common(1)[0][0]  # equal counts keep first-seen order
    return next((i, value) for i, value in entries if key(value) == common)


def _named_fields(objs: Sequence[Any], skip: set[str | None]) -> Iterator[tuple[int, list[str]]]:
    """Per record naming its features: the names of its fields holding a number or null."""
    for i, obj in enumerate(objs):
        if type(obj) is not dict:
            continue
        feats = obj.get("features", _MISSING)
        fields = obj if feats is _MISSING else feats
        if type(fields) is not dict:
            continue
        names = [
            k for k, v in fields.items() if k not in skip and (v is None or type(v) in _NUMBERS)
        ]
        if names:
            yield i, names


def _positional_sizes(objs: Sequence[Any]) -> Iterator[tuple[int, int]]:
    """Per record listing its features: how many values (nested rows: all of them)."""
    for i, obj in enumerate(objs):
        feats = obj.get("features") if type(obj) is dict else None
        if type(feats) is not list or not feats:
            continue
        if type(feats[0]) is not list:
            yield i, len(feats)
            continue
        shape = _nested_shape(feats)
        if shape is not None:
            yield i, int(np.prod(shape))


def _first_image_shape(objs: Sequence[Any], size: int) -> tuple[int, ...] | None:
    for obj in objs:
        feats = obj.get("features") if type(obj) is dict else None
        if type(feats) is list and feats and type(feats[0]) is list:
            shape = _nested_shape(feats)
            if shape is not None and int(np.prod(shape)) == size:
                return shape
    return None


def _nested_shape(rows: list[Any]) -> tuple[int, ...] | None:
    """The shape of regular nested lists (at least two levels), or None when ragged."""
    shape = []
    level: Any = rows
    while type(level) is list and level:
        shape.append(len(level))
        level = level[0]
    if len(shape) < 2 or _flatten_nested(rows, tuple(shape)) is None:
        return None
    return tuple(shape)
