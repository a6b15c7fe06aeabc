"""Training and scoring data in: files, a bounded read of a Kafka topic, built-in sets.

Every source becomes one `Dataset`: a finite float64 matrix with feature names, optional labels
and ids, and the image shape when rows are images. Anything unusable is refused here with a
one-line `DataError` naming the problem and what to do, so the code downstream never re-checks.
The readers live by the form they produce: `data_tables` (CSV, Parquet, the sensor set),
`data_arrays` (``.npy``, ``.npz``, image sets) and `data_records` (JSON Lines and Kafka values,
read with the worker's own record parser, so they accept exactly what the worker accepts).

Files are curated input, so a bad value refuses the whole file. A Kafka topic is a live stream
that may hold records the worker would dead-letter; those are skipped, counted and reported
(a warning on the ``trainer.data`` logger) instead, and the read is refused only if none is usable.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import numpy as np
import pandas as pd

from anomaly_contract.errors import DataError
from anomaly_contract.records import FeatureSpec
from trainer import builtin_data, builtin_machines, data_arrays, data_records, data_tables
from trainer.builtin_machines import AR_CHANNELS, MACHINE_CHANNELS
from trainer.data_arrays import Arrays
from trainer.data_messages import quote_names
from trainer.data_tables import DEFAULT_LABEL_COLUMN, ID_COLUMN, Table

if TYPE_CHECKING:
    from anomaly_contract.kafka_connection import KafkaConnection
    from trainer.kafka_source import RecordOrigin

log = logging.getLogger(__name__)

__all__ = [
    "BUILTIN_SETS",
    "DEFAULT_LABEL_COLUMN",
    "FILE_TYPES",
    "ID_COLUMN",
    "MIN_ROWS",
    "Dataset",
    "load_dataset",
    "parse_image_shape",
]

MIN_ROWS = 20
FILE_TYPES = (".csv", ".jsonl", ".parquet", ".npy", ".npz")
BUILTIN_SETS = ("digits", "mnist", "sensors", "machines", "machines-ar")
# Options of the generated table sets, with the type of each value.
_TABLE_OPTIONS: dict[str, dict[str, Callable[[str], Any]]] = {
    "sensors": {"rows": int, "anomaly_rate": float, "seed": int},
    "machines": {"keys": int, "length": int, "anomaly_share": float, "seed": int},
    "machines-ar": {"keys": int, "length": int, "anomaly_share": float, "seed": int},
}
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
    # kafka:// sources: where each row's record sits (topic, partition, offset, timestamp, key)
    origins: list[RecordOrigin] | None = None

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
    model: FeatureSpec | None = None,
) -> Dataset:
    """Load DATA as the trainer's commands take it (see module docstring for the sources).

    Features are every numeric column except the label column and an ``id`` column, in source
    order, unless ``features`` picks and orders them. A column named ``label`` is the label
    column unless ``label_column`` names another. ``min_rows`` guards against data too small to
    train on; pass 1 when only scoring. ``kafka`` carries the security settings for
    ``kafka://`` sources (default: PLAINTEXT). ``model`` (the features of the model that will
    score the rows) reads JSON records against them exactly as the worker does; without it their
    features come from the data (rule in `anomaly_contract.records`).
    """
    if not isinstance(source, str) or not source.strip():
        raise DataError("no data given: pass a file, kafka://HOST:PORT/TOPIC or builtin:NAME")
    if features is not None:
        _check_feature_request(features)
    if image_shape is not None:
        image_shape = _check_image_shape_arg(image_shape)

    origins = None
    if source.startswith("builtin:"):
        raw = _read_builtin(source, label_column)
    elif source.startswith("kafka://"):
        raw, origins = _read_kafka(source, label_column, kafka, model)
    else:
        raw = _read_file(source, label_column, model)

    if isinstance(raw, Table):
        x, names, labels, ids = data_tables.table_to_arrays(raw, label_column, features)
        source_shape = None
    else:
        x, names, labels, ids = data_arrays.select_array_features(raw, features)
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
        origins=origins,
    )


def _check_feature_request(features: Sequence[str]) -> None:
    if len(features) == 0:
        raise DataError("--features is empty: name at least one feature column")
    dupes = sorted(name for name, count in Counter(features).items() if count > 1)
    if dupes:
        raise DataError(
            f"--features names {quote_names(dupes)} more than once: list each feature once"
        )


def _check_image_shape_arg(image_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(image_shape)
    if len(shape) not in (2, 3) or not all(
        isinstance(s, int | np.integer) and s > 0 for s in shape
    ):
        raise DataError(f"invalid image shape {shape}: use HxW or HxWxC with positive sizes")
    return tuple(int(s) for s in shape)


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------
def _read_builtin(source: str, label_column: str | None) -> Table | Arrays:
    name, _, query = source[len("builtin:") :].partition("?")
    if name not in BUILTIN_SETS:
        choices = ", ".join(f"builtin:{n}" for n in BUILTIN_SETS)
        raise DataError(f"unknown built-in data set {source!r}: choose one of {choices}")
    if name in _TABLE_OPTIONS:
        return builtin_table(source)
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
    return Arrays(
        images.reshape(len(images), -1), source, builtin_data.pixel_names(shape), image_shape=shape
    )


def builtin_table(source: str) -> Table:
    """A generated table set (``builtin:sensors``, ``builtin:machines``, ``builtin:machines-ar``).

    The machine sets are series: their ``t`` column is time, not a feature, so a model on them
    takes the channels by default (`Table.default_features`)."""
    name, _, query = source[len("builtin:") :].partition("?")
    options = _builtin_options(source, name, query)
    if name == "sensors":
        return Table(pd.DataFrame(builtin_data.sensor_table(**options)), source, _row_name)
    try:
        if name == "machines":
            columns, channels = builtin_machines.machines_table(**options), MACHINE_CHANNELS
        else:
            columns, channels = builtin_machines.machines_ar_table(**options), AR_CHANNELS
    except ValueError as exc:
        raise DataError(f"{source}: {exc}") from None
    return Table(pd.DataFrame(columns), source, _row_name, default_features=list(channels))


def _row_name(i: int) -> str:
    return f"row {i + 1}"


def _builtin_options(source: str, name: str, query: str) -> dict[str, Any]:
    kinds = _TABLE_OPTIONS[name]
    options: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in kinds:
            raise DataError(
                f"{source}: unknown option {key!r}; builtin:{name} takes {quote_names(list(kinds))}"
            )
        try:
            options[key] = kinds[key](value)
        except ValueError:
            raise DataError(f"{source}: option {key}={value!r} is not a number") from None
    size = "rows" if "rows" in kinds else "keys"
    if options.get(size, 1) < 1 or options.get("seed", 0) < 0:
        raise DataError(f"{source}: {size} must be positive and seed not negative")
    if not 0.0 <= options.get("anomaly_rate", 0.0) <= 0.5:
        raise DataError(f"{source}: anomaly_rate must lie between 0 and 0.5")
    return options


def _read_kafka(
    source: str,
    label_column: str | None,
    kafka: KafkaConnection | None,
    model: FeatureSpec | None,
) -> tuple[Arrays, list[RecordOrigin]]:
    from trainer import kafka_source  # kafka-python only when a topic is read

    read = kafka_source.read_topic(source, kafka)
    rows = data_records.records_to_arrays(
        read.values, source, label_column, strict=False, model=model
    )
    if rows.skipped:
        _report_skipped(rows)
    if len(rows.x) == 0:
        first_where, _, first_why = rows.skipped[0]
        raise DataError(
            f"{source}: none of the {rows.n_read} records is usable ({first_where}: {first_why}); "
            "produce JSON objects in one of the worker's record shapes"
        )
    return rows, [read.origins[i] for i in rows.positions or []]


def _report_skipped(rows: Arrays) -> None:
    examples: dict[str, str] = {}
    for _, kind, message in rows.skipped:
        examples.setdefault(kind, message)
    why = Counter(kind for _, kind, _ in rows.skipped)
    top = "; ".join(f"{count} x {kind}: {examples[kind]}" for kind, count in why.most_common(3))
    log.warning(
        "%s: skipped %d of %d records that cannot be rows (%s; first at %s); using %d",
        rows.name,
        len(rows.skipped),
        rows.n_read,
        top,
        rows.skipped[0][0],
        len(rows.x),
    )


def read_table(source: str) -> Table:
    """DATA as a table of named columns, for series (which need their key and time columns):
    a generated table set, CSV, Parquet, or JSON Lines of flat records (one field per column)."""
    if source.startswith("builtin:"):
        name = source[len("builtin:") :].partition("?")[0]
        if name not in _TABLE_OPTIONS:
            raise DataError(f"{source} is not a table; series need builtin:machines or a table")
        return builtin_table(source)
    if source.startswith("kafka://") or Path(source).suffix.lower() in (".npy", ".npz"):
        raise DataError(
            f"{source}: windowed models read tables with a key column: CSV, Parquet, JSON Lines "
            "of flat records, or builtin:machines"
        )
    if Path(source).suffix.lower() != ".jsonl":
        table = _read_file(source, None, None)
        assert isinstance(table, Table)
        return table
    _check_file(Path(source), source)
    try:
        frame = pd.read_json(source, lines=True, dtype=False)
    except ValueError as exc:
        raise DataError(f"{source}: cannot read it as JSON Lines of flat records: {exc}") from None
    frame.columns = [str(c) for c in frame.columns]
    return Table(frame, source, lambda i: f"record {i + 1}")


def _check_file(path: Path, source: str) -> None:
    if not path.exists():
        raise DataError(f"data file not found: {source}")
    if not path.is_file():
        raise DataError(f"{source} is not a file")
    if path.stat().st_size == 0:
        raise DataError(f"{source} is empty: it needs a header and data rows")


def _read_file(source: str, label_column: str | None, model: FeatureSpec | None) -> Table | Arrays:
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix not in FILE_TYPES:
        kinds = ", ".join(FILE_TYPES)
        what = f"file type {suffix!r}" if suffix else "a file without an extension"
        raise DataError(
            f"{source}: cannot read {what}; use {kinds}, kafka://HOST:PORT/TOPIC or builtin:NAME"
        )
    _check_file(path, source)
    if suffix == ".csv":
        return data_tables.read_csv(path, source)
    if suffix == ".jsonl":
        return data_records.read_jsonl(path, source, label_column, model)
    if suffix == ".parquet":
        return data_tables.read_parquet(path, source)
    if suffix == ".npy":
        if label_column is not None:
            raise DataError(
                f"{source}: .npy files hold no labels; save x and y in an .npz to use --label-column"
            )
        return data_arrays.read_npy(path, source)
    return data_arrays.read_npz(path, source, label_column)
