"""Series data in: a table's channels plus its key and time columns (PRODUCT.md "Series per key").

The key column names the series of each row (`series_key` gives every value one string form,
the worker's too); the time column orders each key's rows (numbers or timestamps; without it,
input order). Neither is a feature. The generated machine sets default to ``--key-column key
--time-column t``. Bad input is refused with one `DataError` line, as for every other source.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from anomaly_contract.errors import DataError
from anomaly_contract.series import series_keys
from trainer.data import read_table
from trainer.data_messages import quote_names
from trainer.data_tables import Table, table_to_arrays

# The generated machine sets are keyed series; their key and time columns are known.
_BUILTIN_SERIES_COLUMNS = {"machines": ("key", "t"), "machines-ar": ("key", "t")}


@dataclass(frozen=True, eq=False)
class SeriesData:
    """Rows of keyed series: ``x`` (rows, channels) float64, one key (str) per row, times."""

    x: np.ndarray
    channel_names: list[str]
    keys: np.ndarray  # object array of str
    times: np.ndarray | None  # float64 or datetime64 per row; None: input order
    labels: np.ndarray | None
    ids: list[Any] | None
    source: str
    key_column: str | None
    time_column: str | None

    @property
    def n_rows(self) -> int:
        return int(self.x.shape[0])


def default_series_columns(source: str) -> tuple[str | None, str | None]:
    """The key and time columns a source has without flags (the machine sets'), else None."""
    if source.startswith("builtin:"):
        name = source[len("builtin:") :].partition("?")[0]
        return _BUILTIN_SERIES_COLUMNS.get(name, (None, None))
    return None, None


def load_series(
    source: str,
    *,
    key_column: str | None,
    time_column: str | None,
    label_column: str | None = None,
    features: list[str] | None = None,
) -> SeriesData:
    """Load DATA as keyed series; ``features`` picks the channels (default: every numeric
    column but the label, id, key and time columns)."""
    table = read_table(source)
    frame = table.frame
    columns = [str(c) for c in frame.columns]
    for flag, column in (("--key-column", key_column), ("--time-column", time_column)):
        if column is not None and column not in columns:
            raise DataError(
                f"{source}: {flag} {column!r} not found; columns are {quote_names(columns)}"
            )
        if column is not None and (column == label_column or column in (features or [])):
            raise DataError(f"{source}: {flag} {column!r} cannot also be a label or a feature")
    n = int(frame.shape[0])
    keys = _keys(table, key_column) if key_column else series_keys(None, n)
    times = _times(table, time_column) if time_column else None
    series_columns = [c for c in (key_column, time_column) if c is not None]
    defaults = table.default_features
    channels_table = replace(
        table,
        frame=frame.drop(columns=series_columns),
        default_features=[c for c in defaults if c not in series_columns] if defaults else None,
    )
    x, names, labels, ids = table_to_arrays(channels_table, label_column, features)
    return SeriesData(
        x=np.ascontiguousarray(x, dtype=np.float64),
        channel_names=names,
        keys=keys,
        times=times,
        labels=labels,
        ids=ids,
        source=source,
        key_column=key_column,
        time_column=time_column,
    )


def _keys(table: Table, column: str) -> np.ndarray:
    values = table.frame[column]
    missing = values.isna().to_numpy()
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise DataError(
            f"{table.name}: key column {column!r} is empty at {table.where(row)}; "
            "every row needs a key"
        )
    return series_keys(values.to_numpy(dtype=object), int(values.shape[0]))


def _times(table: Table, column: str) -> np.ndarray:
    """The time column as float64 (numbers) or datetime64 (timestamps); refuses missing times."""
    values = table.frame[column]
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        times: np.ndarray = values.to_numpy(dtype=np.float64, na_value=np.nan)
        missing = np.isnan(times)
    else:
        try:
            stamps = pd.to_datetime(values, utc=True, errors="raise", format="mixed")
        except (ValueError, TypeError) as exc:
            raise DataError(
                f"{table.name}: time column {column!r} holds values that are neither numbers "
                f"nor timestamps ({str(exc).splitlines()[0]})"
            ) from None
        missing = stamps.isna().to_numpy()
        times = stamps.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise DataError(
            f"{table.name}: time column {column!r} is missing or NaN at {table.where(row)}; "
            "every row needs a time"
        )
    return times
