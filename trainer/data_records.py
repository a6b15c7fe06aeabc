"""JSON records (JSON Lines files, Kafka topic values) -> rows, read with the worker's parser.

Every value is read by `anomaly_contract.records` as the worker reads it, so offline reading
accepts exactly what the worker accepts, record by record, with the worker's reason for what it
refuses. Without a model the features come from the data (`infer_spec`; the rule is in that
module's docstring), so records that mix the three shapes, as a topic with several producers
holds, each give a row. Ids come from the ``id`` field; labels from the field named by
``--label-column`` (default ``label``, used when some record has one), top-level or inside a
``features`` object.

A file is curated input: the first record the worker would refuse (or whose label is not an
integer) refuses the whole file, naming its line and the reason. A topic is a live stream: such
records are left out with their reason, for the caller to report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_contract.errors import DataError
from anomaly_contract.records import (
    MISSING_FEATURE,
    WRONG_LENGTH,
    WRONG_SHAPE,
    DecodeError,
    FeatureSpec,
    InferredFeatures,
    infer_spec,
    out_of_range_rows,
    parse_value,
    record_values,
)
from trainer.data_arrays import Arrays
from trainer.data_messages import quote_cell, quote_names

DEFAULT_LABEL_FIELD = "label"
LABEL = "label"  # the kind of a refused label (a trainer-only reason: the worker reads no labels)
_SHAPE_KINDS = (WRONG_SHAPE, WRONG_LENGTH, MISSING_FEATURE)
_PARSE_KINDS = ("empty", "too_large", "not_utf8", "not_json", "too_deep")
_BOM = b"\xef\xbb\xbf"


def read_jsonl(
    path: Path, source: str, label_column: str | None, model: FeatureSpec | None = None
) -> Arrays:
    """A JSON Lines file, one record per line (blank lines skipped); refused at the first bad one."""
    data = path.read_bytes()
    if data.startswith(_BOM):  # editors on Windows write one; it belongs to the file, not a record
        data = data[len(_BOM) :]
    values = [
        (f"line {lineno}", line.rstrip(b"\r"))
        for lineno, line in enumerate(data.split(b"\n"), start=1)
        if line.strip()
    ]
    if not values:
        raise DataError(f"{source} holds no records: each line must be one JSON object")
    return records_to_arrays(values, source, label_column, strict=True, model=model)


def records_to_arrays(
    values: Sequence[tuple[str, bytes | None]],
    name: str,
    label_column: str | None,
    *,
    strict: bool,
    model: FeatureSpec | None = None,
) -> Arrays:
    """Record values with where each one sits (``"line 7"``) -> rows in input order.

    ``strict`` refuses the first unusable record with a `DataError`; otherwise such records are
    left out and listed in ``Arrays.skipped`` as ``(where, kind, message)``. ``model`` reads the
    records against a model's features, exactly as the worker does; without it they come from
    the data (`infer_spec`).
    """
    objs = [parse_value(value) for _, value in values]
    label_field = label_column or DEFAULT_LABEL_FIELD
    with_labels = any(_label_value(obj, label_field) is not _ABSENT for obj in objs)
    if label_column is not None and not with_labels:
        raise DataError(
            f"{name}: label column {label_column!r} not found: no record has a field of that name"
        )
    inferred = None if model is not None else infer_spec(objs, label_field, majority=not strict)
    spec = model or (inferred.spec if inferred is not None else FeatureSpec(()))
    refused: list[tuple[int, DecodeError]] = []
    kept: list[int] = []
    rows: list[list[Any]] = []
    ids: list[Any] = []
    labels: list[int] = []
    for pos, obj in enumerate(objs):
        out = obj if type(obj) is DecodeError else _values(obj, spec, model or inferred)
        if type(out) is DecodeError:
            refused.append((pos, out))
            continue
        if with_labels:
            label = _label(obj, label_field)
            if type(label) is DecodeError:
                refused.append((pos, label))
                continue
            labels.append(label)  # type: ignore[arg-type]
        ids.append(out[0])  # type: ignore[index]
        rows.append(out[1])  # type: ignore[index]
        kept.append(pos)
    x = np.array(rows, dtype=np.float64).reshape(len(rows), spec.n_features)
    bad, range_errors = out_of_range_rows(x, spec)
    if range_errors:
        refused.extend((kept[j], err) for j, err in range_errors)
        refused.sort(key=lambda r: r[0])
        keep = ~bad
        x, kept = x[keep], [p for p, k in zip(kept, keep.tolist(), strict=True) if k]
        ids = [v for v, k in zip(ids, keep.tolist(), strict=True) if k]
        labels = [v for v, k in zip(labels, keep.tolist(), strict=True) if k] if labels else []
    if strict and refused:
        pos, err = refused[0]
        raise _refusal(name, values[pos][0], err, model or inferred, values)
    return Arrays(
        x,
        name,
        feature_names=list(spec.names),
        labels=np.asarray(labels, dtype=np.int64) if with_labels else None,
        ids=ids if any(v is not None for v in ids) else None,
        image_shape=spec.image_shape,
        skipped=[(values[pos][0], err.kind, err.message) for pos, err in refused],
        n_read=len(values),
        positions=kept,
    )


def _values(
    obj: Any, spec: FeatureSpec, source: FeatureSpec | InferredFeatures | None
) -> tuple[Any, list[Any]] | DecodeError:
    if source is None and type(obj) is dict:
        return DecodeError(
            MISSING_FEATURE, "record has no features: no numeric fields and no 'features' list"
        )
    return record_values(obj, spec)


_ABSENT = object()


def _label_value(obj: Any, field: str) -> Any:
    """The record's label: its top-level field, else the field inside a ``features`` object."""
    if type(obj) is not dict:
        return _ABSENT
    if field in obj:
        return obj[field]
    feats = obj.get("features")
    return feats.get(field, _ABSENT) if type(feats) is dict else _ABSENT


def _label(obj: Any, field: str) -> int | DecodeError:
    value = _label_value(obj, field)
    if value is _ABSENT:
        return DecodeError(LABEL, f"record lacks the label field {field!r}")
    number: Any = value
    if type(value) is str:
        try:
            number = float(value)
        except ValueError:
            number = None
    if type(number) is float and math.isfinite(number) and number.is_integer():
        number = int(number)
    if type(number) is bool or (type(number) is int and -(2**63) <= number < 2**63):
        return int(number)
    return DecodeError(LABEL, f"label {quote_cell(value)} in field {field!r} is not an integer")


def _refusal(
    name: str,
    where: str,
    err: DecodeError,
    source: FeatureSpec | InferredFeatures | None,
    values: Sequence[tuple[str, Any]],
) -> DataError:
    """The one-line refusal of a file at its first unusable record, with what to do."""
    if err.kind == LABEL:
        advice = (
            "labels must be 0 (normal) or another integer (anomaly), or pick another --label-column"
        )
    elif err.kind in _PARSE_KINDS:
        advice = "every line must be one JSON object in one of the worker's record shapes"
    elif err.kind in _SHAPE_KINDS and isinstance(source, FeatureSpec):
        advice = f"the model's features are {quote_names(source.names, 6)}"
    elif err.kind in _SHAPE_KINDS and isinstance(source, InferredFeatures):
        origin = values[source.origin][0]
        names = source.spec.names
        features = (
            f"the features named by {origin} ({quote_names(names, 6)})"
            if source.named
            else f"the {len(names)} values of {origin}"
        )
        advice = f"records are read as the worker reads them, with {features}"
    else:
        advice = "features must be finite numbers; fix or drop that record"
    return DataError(f"{name}: {where}: {err.message} ({err.kind}); {advice}")
