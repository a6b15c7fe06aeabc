"""Training and scoring data in: files, a bounded read of a Kafka topic, built-in sets.

Every source becomes one `Dataset`: a finite float64 matrix with feature names, optional labels
and ids, and the image shape when rows are images. Anything unusable is refused here with a
one-line `DataError` naming the problem and what to do, so the code downstream never re-checks.

Files are curated input, so a bad value refuses the whole file. A Kafka topic is a live stream
that may hold records the worker would dead-letter; those are skipped, counted and reported
(a warning on the ``trainer.data`` logger) instead, and the read is refused only if none is usable.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import numpy as np
import pandas as pd

from anomaly_contract.errors import DataError
from trainer import builtin_data

if TYPE_CHECKING:
    from anomaly_contract.kafka_connection import KafkaConnection

log = logging.getLogger(__name__)

MIN_ROWS = 20
ID_COLUMN = "id"
DEFAULT_LABEL_COLUMN = "label"
FILE_TYPES = (".csv", ".jsonl", ".parquet", ".npy", ".npz")
BUILTIN_SETS = ("digits", "mnist", "sensors")
_NPZ_LABEL_ARRAYS = ("y", "labels")
_NPZ_ID_ARRAYS = ("ids", "id")
_SHAPE_RE = re.compile(r"^\s*(\d+)\s*[x×]\s*(\d+)(?:\s*[x×]\s*(\d+))?\s*$", re.IGNORECASE)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Rows ready for a model: ``x`` is ``(n, d)`` float64 and finite everywhere."""

    x: np.ndarray
    feature_names: list[str]
    labels: np.ndarray | None  # (n,) int64: 0 = normal, anything else = anomaly
    ids: list | None  # per-row id from an `id` column / field, None when the source has none
    image_shape: tuple[int, ...] | None  # e.g. (8, 8); its product equals d
    source: str  # the DATA argument as given

    @property
    def n_rows(self) -> int:
        return int(self.x.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.x.shape[1])


def parse_image_shape(text: str) -> tuple[int, ...]:
    """``"28x28"`` -> ``(28, 28)``, ``"28x28x1"`` -> ``(28, 28, 1)``."""
    match = _SHAPE_RE.match(text or "")
    if match is None or any(int(g) == 0 for g in match.groups() if g is not None):
        raise DataError(
            f"invalid image shape {text!r}: use HxW or HxWxC with positive sizes, e.g. 28x28 or 28x28x1"
        )
    return tuple(int(g) for g in match.groups() if g is not None)


def load_dataset(
    source: str,
    *,
    label_column: str | None = None,
    features: list[str] | None = None,
    image_shape: tuple[int, ...] | None = None,
    min_rows: int = MIN_ROWS,
    kafka: KafkaConnection | None = None,
) -> Dataset:
    """Load DATA as the trainer's commands take it (see module docstring for the sources).

    Features are every numeric column except the label column and an ``id`` column, in source
    order, unless ``features`` picks and orders them. A column named ``label`` is the label
    column unless ``label_column`` names another. ``min_rows`` guards against data too small to
    train on; pass 1 when only scoring. ``kafka`` carries the security settings for
    ``kafka://`` sources (default: PLAINTEXT).
    """
    if not isinstance(source, str) or not source.strip():
        raise DataError("no data given: pass a file, kafka://HOST:PORT/TOPIC or builtin:NAME")
    if features is not None:
        _check_feature_request(features)
    if image_shape is not None:
        image_shape = _check_image_shape_arg(image_shape)

    if source.startswith("builtin:"):
        raw = _read_builtin(source, label_column)
    elif source.startswith("kafka://"):
        raw = _read_kafka(source, label_column, kafka)
    else:
        raw = _read_file(source, label_column)

    if isinstance(raw, _Table):
        x, names, labels, ids = _table_to_arrays(raw, label_column, features)
    else:
        x, names, labels, ids = _select_array_features(raw, features)
    # Picking pixels breaks the image; only --image-shape can restore one then.
    source_shape = raw.image_shape if features is None else None

    n = x.shape[0]
    if n == 0:
        raise DataError(f"{source}: no data rows; give at least {max(min_rows, 1)} rows")
    if n < min_rows:
        raise DataError(
            f"{source}: only {n} rows, too few to train and hold out a validation set; "
            f"give at least {min_rows}"
        )
    final_shape = image_shape if image_shape is not None else source_shape
    if final_shape is not None and int(np.prod(final_shape)) != x.shape[1]:
        given = "x".join(map(str, final_shape))
        raise DataError(
            f"{source}: rows have {x.shape[1]} values but image shape {given} needs "
            f"{int(np.prod(final_shape))}; fix --image-shape or the data"
        )
    return Dataset(
        x=np.ascontiguousarray(x, dtype=np.float64),
        feature_names=names,
        labels=labels,
        ids=ids,
        image_shape=final_shape,
        source=source,
    )


# --------------------------------------------------------------------------------------------
# Intermediate forms: a table (named columns, maybe text) or arrays (images, matrices)
# --------------------------------------------------------------------------------------------
@dataclass
class _Table:
    frame: pd.DataFrame
    name: str  # the source, for messages
    where: Callable[[int], str]  # row position -> "line 7" / "row 7" / "partition 0 offset 42"
    strict: bool = True  # False: skip and report bad rows instead of refusing (Kafka)
    image_shape: tuple[int, ...] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, why) before the table
    n_read: int = 0  # records read, for the skip report


@dataclass
class _Arrays:
    x: np.ndarray  # (n, d) or (n, *image_shape)
    name: str
    feature_names: list[str] | None = None
    labels: np.ndarray | None = None
    ids: list | None = None
    image_shape: tuple[int, ...] | None = None


def _check_feature_request(features: Sequence[str]) -> None:
    if len(features) == 0:
        raise DataError("--features is empty: name at least one feature column")
    dupes = sorted(name for name, count in Counter(features).items() if count > 1)
    if dupes:
        raise DataError(f"--features names {_names(dupes)} more than once: list each feature once")


def _check_image_shape_arg(image_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(image_shape)
    if len(shape) not in (2, 3) or not all(
        isinstance(s, int | np.integer) and s > 0 for s in shape
    ):
        raise DataError(f"invalid image shape {shape}: use HxW or HxWxC with positive sizes")
    return tuple(int(s) for s in shape)


def _names(items: Sequence[Any], limit: int = 12) -> str:
    shown = ", ".join(repr(str(i)) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------
def _read_builtin(source: str, label_column: str | None) -> _Table | _Arrays:
    name, _, query = source[len("builtin:") :].partition("?")
    if name not in BUILTIN_SETS:
        choices = ", ".join(f"builtin:{n}" for n in BUILTIN_SETS)
        raise DataError(f"unknown built-in data set {source!r}: choose one of {choices}")
    if name == "sensors":
        options = _builtin_options(source, query)
        table = builtin_data.sensor_table(**options)
        return _Table(pd.DataFrame(table), source, lambda i: f"row {i + 1}")
    if query:
        raise DataError(f"{source}: builtin:{name} takes no options; use builtin:{name}")
    if label_column is not None:
        raise DataError(
            f"{source} has no label column (its classes are not anomaly labels); drop --label-column"
        )
    if name == "digits":
        images, _ = builtin_data.load_digits_images()
    else:
        images, _ = builtin_data.load_mnist_images()
    shape = tuple(images.shape[1:])
    return _Arrays(
        images.reshape(len(images), -1), source, builtin_data.pixel_names(shape), image_shape=shape
    )


def _builtin_options(source: str, query: str) -> dict[str, Any]:
    kinds: dict[str, Callable[[str], Any]] = {"rows": int, "anomaly_rate": float, "seed": int}
    options: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in kinds:
            raise DataError(
                f"{source}: unknown option {key!r}; builtin:sensors takes {_names(list(kinds))}"
            )
        try:
            options[key] = kinds[key](value)
        except ValueError:
            raise DataError(f"{source}: option {key}={value!r} is not a number") from None
    if options.get("rows", 1) < 1 or options.get("seed", 0) < 0:
        raise DataError(f"{source}: rows must be positive and seed not negative")
    if not 0.0 <= options.get("anomaly_rate", 0.0) <= 0.5:
        raise DataError(f"{source}: anomaly_rate must lie between 0 and 0.5")
    return options


def _read_kafka(source: str, label_column: str | None, kafka: KafkaConnection | None) -> _Table:
    from trainer import kafka_source  # kafka-python only when a topic is read

    read = kafka_source.read_topic(source, kafka)
    return _records_to_table(
        read.records,
        source,
        label_key=label_column or DEFAULT_LABEL_COLUMN,
        strict=False,
        skipped=list(read.undecodable),
        n_read=read.n_read,
    )


def _read_file(source: str, label_column: str | None) -> _Table | _Arrays:
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix not in FILE_TYPES:
        kinds = ", ".join(FILE_TYPES)
        what = f"file type {suffix!r}" if suffix else "a file without an extension"
        raise DataError(
            f"{source}: cannot read {what}; use {kinds}, kafka://HOST:PORT/TOPIC or builtin:NAME"
        )
    if not path.exists():
        raise DataError(f"data file not found: {source}")
    if not path.is_file():
        raise DataError(f"{source} is not a file")
    if path.stat().st_size == 0:
        raise DataError(f"{source} is empty: it needs a header and data rows")
    if suffix == ".csv":
        return _read_csv(path, source)
    if suffix == ".jsonl":
        return _read_jsonl(path, source, label_column)
    if suffix == ".parquet":
        return _read_parquet(path, source)
    if suffix == ".npy":
        if label_column is not None:
            raise DataError(
                f"{source}: .npy files hold no labels; save x and y in an .npz to use --label-column"
            )
        return _read_npy(path, source)
    return _read_npz(path, source, label_column)


def _read_csv(path: Path, source: str) -> _Table:
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as fh:
        header = next(csv.reader(fh), [])
    names = [h.strip() for h in header]
    if not any(names):
        raise DataError(
            f"{source}: the first line is empty; it must be a header naming the columns"
        )
    if all(_looks_numeric(h) for h in names):
        raise DataError(
            f"{source}: the first line holds numbers, not column names; add a header row"
        )
    if "" in names:
        raise DataError(
            f"{source}: column {names.index('') + 1} has no name in the header; name it"
        )
    dupes = sorted(n for n, c in Counter(names).items() if c > 1)
    if dupes:
        raise DataError(
            f"{source}: the header repeats column {_names(dupes)}; names must be unique"
        )
    try:
        with warnings.catch_warnings():
            # pandas only warns when rows are longer than the header, then drops the extra values
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                path,
                skipinitialspace=True,
                index_col=False,
                # ids stay text: "007" is not 7
                dtype={ID_COLUMN: str} if ID_COLUMN in names else None,
            )
    except pd.errors.ParserWarning:
        raise DataError(
            f"{source}: some rows have more values than the header has names; fix those rows"
        ) from None
    except UnicodeDecodeError:
        raise DataError(f"{source} is not UTF-8 text; save it as UTF-8 CSV") from None
    except (pd.errors.ParserError, ValueError) as exc:
        raise DataError(f"{source}: cannot parse CSV: {_first_line(exc)}") from exc
    frame.columns = names
    return _Table(frame, source, lambda i: f"data row {i + 1}")


def _read_parquet(path: Path, source: str) -> _Table:
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for a corrupt or foreign file
        raise DataError(f"{source}: cannot read it as Parquet: {_first_line(exc)}") from exc
    frame.columns = [str(c) for c in frame.columns]
    return _Table(frame.reset_index(drop=True), source, lambda i: f"row {i + 1}")


def _read_jsonl(path: Path, source: str, label_column: str | None) -> _Table:
    records: list[tuple[str, Any]] = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                records.append((f"line {lineno}", json.loads(raw)))
            except ValueError as exc:  # includes UnicodeDecodeError
                raise DataError(
                    f"{source}: line {lineno} is not valid JSON ({_first_line(exc)}); "
                    "every line must be one JSON object"
                ) from None
    if not records:
        raise DataError(f"{source} holds no records: each line must be one JSON object")
    return _records_to_table(records, source, label_key=label_column or DEFAULT_LABEL_COLUMN)


def _read_npy(path: Path, source: str) -> _Arrays:
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{source}: not a readable .npy array ({_first_line(exc)})") from exc
    if not isinstance(x, np.ndarray):
        raise DataError(f"{source}: not a .npy array")
    return _Arrays(_check_array(x, source, "the array"), source, image_shape=_array_image_shape(x))


def _read_npz(path: Path, source: str, label_column: str | None) -> _Arrays:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as exc:  # zipfile, pickle and format errors all mean "not a usable .npz"
        raise DataError(f"{source}: not a readable .npz archive ({_first_line(exc)})") from exc
    if label_column is not None and label_column not in arrays:
        raise DataError(
            f"{source}: no array named {label_column!r} for --label-column; arrays are {_names(list(arrays))}"
        )
    label_name = label_column or next((n for n in _NPZ_LABEL_ARRAYS if n in arrays), None)
    id_name = next((n for n in _NPZ_ID_ARRAYS if n in arrays), None)
    x_name: str | None = "x" if "x" in arrays else None
    if x_name is None:
        x_name = next((n for n in arrays if n not in (label_name, id_name)), None)
    if x_name is None:
        raise DataError(f"{source}: holds no data array; save the rows as an array named 'x'")
    x = _check_array(arrays[x_name], source, f"array {x_name!r}")
    labels = None
    if label_name is not None:
        labels = _label_values(arrays[label_name], len(x), source, f"array {label_name!r}")
    ids = None
    if id_name is not None:
        id_array = np.asarray(arrays[id_name])
        if id_array.shape != (len(x),):
            raise DataError(
                f"{source}: array {id_name!r} has shape {id_array.shape} but there are {len(x)} rows"
            )
        ids = id_array.tolist()
    return _Arrays(
        x, source, labels=labels, ids=ids, image_shape=_array_image_shape(arrays[x_name])
    )


def _check_array(x: np.ndarray, source: str, what: str) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise DataError(f"{source}: {what} holds {x.dtype} values, not numbers; save numeric data")
    if x.ndim < 2 or x.ndim > 4:
        raise DataError(
            f"{source}: {what} has shape {x.shape}; need (rows, features) or images "
            "(rows, height, width[, channels])"
        )
    if x.shape[0] == 0:
        raise DataError(f"{source}: {what} has no rows")
    flat = x.reshape(len(x), -1).astype(np.float64)
    finite = np.isfinite(flat)
    if not finite.all():
        row, col = (int(v[0]) for v in np.nonzero(~finite))
        what_bad = "NaN" if np.isnan(flat[row, col]) else "an infinite value"
        raise DataError(
            f"{source}: {what} has {what_bad} at row {row + 1}, value {col}; "
            "fill or drop non-finite values"
        )
    return flat


def _array_image_shape(x: np.ndarray) -> tuple[int, ...] | None:
    return tuple(int(s) for s in x.shape[1:]) if x.ndim >= 3 else None


def _select_array_features(
    raw: _Arrays, features: list[str] | None
) -> tuple[np.ndarray, list[str], np.ndarray | None, list | None]:
    names = raw.feature_names or [f"f{i}" for i in range(raw.x.shape[1])]
    x = raw.x
    if features is not None:
        index = {n: i for i, n in enumerate(names)}
        unknown = [f for f in features if f not in index]
        if unknown:
            raise DataError(
                f"{raw.name}: unknown feature(s) {_names(unknown)}; features are named "
                f"{names[0]} .. {names[-1]}"
            )
        x = x[:, [index[f] for f in features]]
        names = list(features)
    return x, list(names), raw.labels, raw.ids


# --------------------------------------------------------------------------------------------
# JSON records (JSON Lines files and Kafka topics) -> table
# --------------------------------------------------------------------------------------------
class _BadRecord(ValueError):
    """A record that cannot become a row; the message says why."""


def _normalize_record(obj: Any, label_key: str) -> tuple[str, dict[str, Any] | np.ndarray, dict]:
    """One record in any of the worker's three shapes -> (shape, features, extra fields).

    ``shape`` is "list" (positional features, maybe nested image rows) or "named". For "list",
    ``features`` is an ndarray; for "named" a dict of name -> value. ``extra`` holds the id and
    the label when present.
    """
    if not isinstance(obj, dict):
        raise _BadRecord(f"is a JSON {type(obj).__name__}, not an object")
    if "features" not in obj:
        extra = {ID_COLUMN: obj[ID_COLUMN]} if ID_COLUMN in obj else {}
        fields = {k: v for k, v in obj.items() if k != ID_COLUMN}
        if not fields:
            raise _BadRecord("has no feature fields")
        return "named", fields, extra
    extra = {k: obj[k] for k in (ID_COLUMN, label_key) if k in obj}
    feats = obj["features"]
    if isinstance(feats, dict):
        if not feats:
            raise _BadRecord("has an empty 'features' object")
        return "named", dict(feats), extra
    if isinstance(feats, list):
        if not feats:
            raise _BadRecord("has an empty 'features' list")
        try:
            arr = np.asarray(feats, dtype=np.float64)
        except (ValueError, TypeError):
            raise _BadRecord(
                "has a 'features' list with non-numbers or rows of different lengths"
            ) from None
        return "list", arr, extra
    raise _BadRecord("has 'features' that is neither a list nor an object")


def _records_to_table(
    records: Sequence[tuple[str, Any]],
    name: str,
    *,
    label_key: str,
    strict: bool = True,
    skipped: list[tuple[str, str]] | None = None,
    n_read: int = 0,
) -> _Table:
    """Records in the worker's shapes -> one table. ``strict`` refuses the first record that does
    not fit; otherwise such records are skipped with a reason and the majority shape wins."""
    skipped = list(skipped or [])
    parsed: list[tuple[str, str, Any, dict]] = []
    for where, obj in records:
        try:
            shape, feats, extra = _normalize_record(obj, label_key)
        except _BadRecord as exc:
            if strict:
                raise DataError(
                    f"{name}: {where} {exc}; every record needs the same numeric features"
                ) from None
            skipped.append((where, str(exc)))
            continue
        parsed.append((where, shape, feats, extra))
    if not parsed:
        return _Table(
            pd.DataFrame(), name, lambda i: f"record {i + 1}", strict, None, skipped, n_read
        )

    def reject(where: str, why: str) -> None:
        if strict:
            raise DataError(
                f"{name}: {where} {why}; every record must have the same fields (ragged records)"
            )
        skipped.append((where, why))

    shapes = Counter(p[1] for p in parsed)
    main_shape = parsed[0][1] if strict else shapes.most_common(1)[0][0]
    kept: list[tuple[str, Any, dict]] = []
    first_where = parsed[0][0]
    image_shape: tuple[int, ...] | None = None
    if main_shape == "list":
        dims = Counter(p[2].shape for p in parsed if p[1] == "list")
        want = parsed[0][2].shape if strict else dims.most_common(1)[0][0]
        for where, shape, feats, extra in parsed:
            if shape != "list":
                reject(where, f"names its features but {first_where} lists them by position")
            elif feats.shape != want:
                reject(
                    where,
                    f"has {_shape_text(feats.shape)} features but others have {_shape_text(want)}",
                )
            else:
                kept.append((where, feats.ravel(), extra))
        frame = pd.DataFrame(
            np.vstack([k[1] for k in kept]) if kept else np.zeros((0, int(np.prod(want)))),
            columns=[f"f{i}" for i in range(int(np.prod(want)))],
        )
        image_shape = tuple(int(s) for s in want) if len(want) >= 2 else None
    else:
        key_sets = Counter(frozenset(p[2]) for p in parsed if p[1] == "named")
        want_keys = frozenset(parsed[0][2]) if strict else key_sets.most_common(1)[0][0]
        order = list(next(p[2] for p in parsed if p[1] == "named" and frozenset(p[2]) == want_keys))
        for where, shape, feats, extra in parsed:
            if shape != "named":
                reject(where, f"lists features by position but {first_where} names them")
                continue
            keys = frozenset(feats)
            if keys != want_keys:
                missing, added = sorted(want_keys - keys), sorted(keys - want_keys)
                parts = []
                if missing:
                    parts.append(f"lacks {_names(missing, 5)}")
                if added:
                    parts.append(f"has extra {_names(added, 5)}")
                reject(where, " and ".join(parts) + f" compared with {first_where}")
                continue
            kept.append((where, feats, extra))
        frame = pd.DataFrame([k[1] for k in kept], columns=order)
    # The id and a top-level label of nested records become columns like the rest.
    for key in (ID_COLUMN, label_key):
        if any(key in k[2] for k in kept):
            if key in frame.columns:
                if strict:
                    raise DataError(
                        f"{name}: field {key!r} appears both inside and outside 'features'; keep one"
                    )
                continue
            frame[key] = [k[2].get(key) for k in kept]
    wheres = [k[0] for k in kept]
    return _Table(
        frame.reset_index(drop=True),
        name,
        lambda i: wheres[i],
        strict,
        image_shape,
        skipped,
        n_read or len(records),
    )


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) if len(shape) > 1 else str(shape[0])


# --------------------------------------------------------------------------------------------
# Table -> arrays: pick features, labels and ids; refuse (or skip) bad values
# --------------------------------------------------------------------------------------------
def _table_to_arrays(
    table: _Table, label_column: str | None, features: list[str] | None
) -> tuple[np.ndarray, list[str], np.ndarray | None, list | None]:
    frame, name = table.frame, table.name
    columns = [str(c) for c in frame.columns]
    if frame.shape[0] == 0 and not table.skipped:
        raise DataError(f"{name}: no data rows; give at least one row after the header")
    if frame.shape[0] == 0:
        _report_skipped(table, kept=0)
        first_where, first_why = table.skipped[0]
        raise DataError(
            f"{name}: none of the {table.n_read or len(table.skipped)} records is usable "
            f"({first_where} {first_why}); produce JSON objects in one of the worker's record shapes"
        )
    if label_column is not None and label_column not in columns:
        raise DataError(
            f"{name}: label column {label_column!r} not found; columns are {_names(columns)}"
        )
    label_col = label_column or (DEFAULT_LABEL_COLUMN if DEFAULT_LABEL_COLUMN in columns else None)
    id_col = ID_COLUMN if ID_COLUMN in columns and label_col != ID_COLUMN else None

    if features is not None:
        unknown = [f for f in features if f not in columns]
        if unknown:
            raise DataError(
                f"{name}: unknown feature(s) {_names(unknown)}; columns are {_names(columns)}"
            )
        if label_col in features:
            raise DataError(
                f"{name}: {label_col!r} is the label column and cannot also be a feature; "
                "drop it from --features or pick another --label-column"
            )
        candidates = list(features)
    else:
        candidates = [c for c in columns if c not in (label_col, id_col)]

    n = frame.shape[0]
    bad = np.zeros(n, dtype=bool)
    reasons: dict[int, str] = {}
    chosen: list[str] = []
    values: list[np.ndarray] = []
    text_columns: list[str] = []
    for col in candidates:
        numbers, nonnumeric = _numeric_column(frame[col])
        explicit = features is not None
        if numbers is None or (not table.strict and nonnumeric.sum() * 2 > n):
            if explicit:
                raise DataError(
                    f"{name}: feature {col!r} is not numeric; pick numeric columns only"
                )
            text_columns.append(col)
            continue
        if nonnumeric.any():
            row = int(np.flatnonzero(nonnumeric)[0])
            msg = f"non-numeric value {_cell(frame[col].iloc[row])} in column {col!r}"
            if table.strict:
                raise DataError(f"{name}: {msg} at {table.where(row)}; features must be numbers")
            _mark(bad, reasons, nonnumeric, msg)
        nonfinite = ~np.isfinite(numbers) & ~nonnumeric
        if nonfinite.any():
            row = int(np.flatnonzero(nonfinite)[0])
            kind = "a missing or NaN value" if np.isnan(numbers[row]) else "an infinite value"
            msg = f"{kind} in column {col!r}"
            if table.strict:
                raise DataError(
                    f"{name}: {msg} at {table.where(row)}; fill or drop rows with missing values"
                )
            _mark(bad, reasons, nonfinite, msg)
        chosen.append(col)
        values.append(numbers)
    if text_columns:
        log.info("%s: ignoring non-numeric column(s) %s", name, _names(text_columns))
    if not chosen:
        raise DataError(
            f"{name}: no numeric feature columns (columns are {_names(columns)}); "
            "features must be numbers"
        )

    labels = None
    if label_col is not None:
        labels, label_bad = _label_column(frame[label_col])
        if label_bad.any():
            row = int(np.flatnonzero(label_bad)[0])
            msg = f"label {_cell(frame[label_col].iloc[row])} in column {label_col!r} is not an integer"
            if table.strict:
                raise DataError(
                    f"{name}: {msg} at {table.where(row)}; labels must be 0 (normal) or another "
                    "integer (anomaly), or pick another --label-column"
                )
            _mark(bad, reasons, label_bad, msg)

    ids = None
    if id_col is not None:
        ids = [None if _is_missing(v) else v for v in frame[id_col].tolist()]
        if all(v is None for v in ids):
            ids = None

    x = np.column_stack(values)
    if bad.any():
        keep = ~bad
        for bad_row in np.flatnonzero(bad).tolist():
            table.skipped.append((table.where(bad_row), reasons[bad_row]))
        x = x[keep]
        labels = None if labels is None else labels[keep]
        ids = None if ids is None else [v for v, k in zip(ids, keep, strict=True) if k]
    if table.skipped:
        _report_skipped(table, kept=len(x))
        if len(x) == 0:
            first_where, first_why = table.skipped[0]
            raise DataError(f"{name}: no usable records ({first_where}: {first_why})")
    return x, chosen, labels, ids


def _numeric_column(series: pd.Series) -> tuple[np.ndarray | None, np.ndarray]:
    """A column as float64 plus a mask of non-numeric cells; ``None`` when nothing in it is a
    number (a text column). Missing cells become NaN and are not counted as non-numeric."""
    n = len(series)
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype) or (
        pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_complex_dtype(dtype)
    ):
        return series.to_numpy(dtype=np.float64, na_value=np.nan), np.zeros(n, dtype=bool)
    out = np.full(n, np.nan)
    nonnumeric = np.zeros(n, dtype=bool)
    any_number = False
    for i, value in enumerate(series.tolist()):
        if _is_missing(value):
            continue
        number = _as_number(value)
        if number is None:
            nonnumeric[i] = True
        else:
            out[i] = number
            any_number = True
    if not any_number:
        return None, nonnumeric
    return out, nonnumeric


def _label_column(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    numbers, nonnumeric = _numeric_column(series)
    if numbers is None:
        numbers = np.full(len(series), np.nan)
    with np.errstate(invalid="ignore"):
        bad = nonnumeric | ~np.isfinite(numbers) | (np.round(numbers) != numbers)
    labels = np.where(bad, 0, numbers).astype(np.int64)
    return labels, bad


def _label_values(values: np.ndarray, n: int, source: str, what: str) -> np.ndarray:
    labels = np.asarray(values)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.shape != (n,):
        raise DataError(f"{source}: {what} has shape {labels.shape} but there are {n} rows")
    if labels.dtype.kind not in "biuf":
        raise DataError(f"{source}: {what} holds {labels.dtype} values; labels must be integers")
    as_float = labels.astype(np.float64)
    if not np.isfinite(as_float).all() or (np.round(as_float) != as_float).any():
        raise DataError(f"{source}: {what} holds non-integer labels; use 0 for normal rows")
    return as_float.astype(np.int64)


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool | np.bool_):
        return float(value)
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    if isinstance(value, str) and _looks_numeric(value):
        return float(value)
    return None


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA


def _mark(bad: np.ndarray, reasons: dict[int, str], mask: np.ndarray, msg: str) -> None:
    for row in np.flatnonzero(mask & ~bad):
        reasons[int(row)] = msg
    bad |= mask


def _cell(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _report_skipped(table: _Table, kept: int) -> None:
    why = Counter(reason for _, reason in table.skipped)
    top = "; ".join(f"{count} x {reason}" for reason, count in why.most_common(3))
    first_where = table.skipped[0][0]
    log.warning(
        "%s: skipped %d of %d records that cannot be rows (%s; first at %s); using %d",
        table.name,
        len(table.skipped),
        table.n_read or kept + len(table.skipped),
        top,
        first_where,
        kept,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
