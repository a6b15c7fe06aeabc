"""Tables (CSV and Parquet files, the built-in sensor set) -> feature matrix, labels and ids.

A table is curated input: a non-numeric cell in a feature column, a missing or NaN value or a
label that is not an integer refuses the whole table with a `DataError` naming column and row.
Columns in which nothing is a number (``site``, ``name``) are not features and are ignored.
"""

from __future__ import annotations

import csv
import logging
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly_contract.errors import DataError
from trainer.data_messages import first_line, quote_cell, quote_names

log = logging.getLogger(__name__)

ID_COLUMN = "id"
DEFAULT_LABEL_COLUMN = "label"


@dataclass
class Table:
    """Named columns as read, maybe text; ``where`` names a row position for messages."""

    frame: pd.DataFrame
    name: str  # the source, for messages
    where: Callable[[int], str]  # row position -> "data row 7" / "row 7"
    # The features when none are asked for (None: every numeric column but label and id).
    default_features: list[str] | None = None


def read_csv(path: Path, source: str) -> Table:
    """A CSV file with a header row naming unique columns."""
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as fh:
        header = next(csv.reader(fh), [])
    names = [h.strip() for h in header]
    if not any(names):
        raise DataError(
            f"{source}: the first line is empty; it must be a header naming the columns"
        )
    if all(looks_numeric(h) for h in names):
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
            f"{source}: the header repeats column {quote_names(dupes)}; names must be unique"
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
        raise DataError(f"{source}: cannot parse CSV: {first_line(exc)}") from exc
    frame.columns = names
    return Table(frame, source, lambda i: f"data row {i + 1}")


def read_parquet(path: Path, source: str) -> Table:
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for a corrupt or foreign file
        raise DataError(f"{source}: cannot read it as Parquet: {first_line(exc)}") from exc
    frame.columns = [str(c) for c in frame.columns]
    return Table(frame.reset_index(drop=True), source, lambda i: f"row {i + 1}")


def table_to_arrays(
    table: Table, label_column: str | None, features: list[str] | None
) -> tuple[np.ndarray, list[str], np.ndarray | None, list | None]:
    """Pick features, labels and ids: ``(x, feature names, labels, ids)``; refuse bad values."""
    frame, name = table.frame, table.name
    columns = [str(c) for c in frame.columns]
    if frame.shape[0] == 0:
        raise DataError(f"{name}: no data rows; give at least one row after the header")
    if label_column is not None and label_column not in columns:
        raise DataError(
            f"{name}: label column {label_column!r} not found; columns are {quote_names(columns)}"
        )
    label_col = label_column or (DEFAULT_LABEL_COLUMN if DEFAULT_LABEL_COLUMN in columns else None)
    id_col = ID_COLUMN if ID_COLUMN in columns and label_col != ID_COLUMN else None
    if features is not None:
        unknown = [f for f in features if f not in columns]
        if unknown:
            raise DataError(
                f"{name}: unknown feature(s) {quote_names(unknown)}; "
                f"columns are {quote_names(columns)}"
            )
        if label_col in features:
            raise DataError(
                f"{name}: {label_col!r} is the label column and cannot also be a feature; "
                "drop it from --features or pick another --label-column"
            )
        candidates = list(features)
    elif table.default_features is not None:
        candidates = list(table.default_features)
    else:
        candidates = [c for c in columns if c not in (label_col, id_col)]

    chosen: list[str] = []
    values: list[np.ndarray] = []
    text_columns: list[str] = []
    for col in candidates:
        numbers = _feature_column(table, col, explicit=features is not None)
        if numbers is None:
            text_columns.append(col)
        else:
            chosen.append(col)
            values.append(numbers)
    if text_columns:
        log.info("%s: ignoring non-numeric column(s) %s", name, quote_names(text_columns))
    if not chosen:
        raise DataError(
            f"{name}: no numeric feature columns (columns are {quote_names(columns)}); "
            "features must be numbers"
        )
    labels = None if label_col is None else _labels(table, label_col)
    ids = None
    if id_col is not None:
        ids = [None if _is_missing(v) else v for v in frame[id_col].tolist()]
        if all(v is None for v in ids):
            ids = None
    return np.column_stack(values), chosen, labels, ids


def _feature_column(table: Table, col: str, *, explicit: bool) -> np.ndarray | None:
    """A feature column as float64, None for a text column; refuses non-numbers and NaN."""
    name, series = table.name, table.frame[col]
    numbers, nonnumeric = _numeric_column(series)
    if numbers is None:
        if explicit:
            raise DataError(f"{name}: feature {col!r} is not numeric; pick numeric columns only")
        return None
    if nonnumeric.any():
        row = int(np.flatnonzero(nonnumeric)[0])
        raise DataError(
            f"{name}: non-numeric value {quote_cell(series.iloc[row])} in column {col!r} at "
            f"{table.where(row)}; features must be numbers"
        )
    nonfinite = ~np.isfinite(numbers)
    if nonfinite.any():
        row = int(np.flatnonzero(nonfinite)[0])
        kind = "a missing or NaN value" if np.isnan(numbers[row]) else "an infinite value"
        raise DataError(
            f"{name}: {kind} in column {col!r} at {table.where(row)}; "
            "fill or drop rows with missing values"
        )
    return numbers


def _labels(table: Table, label_col: str) -> np.ndarray:
    series = table.frame[label_col]
    numbers, nonnumeric = _numeric_column(series)
    if numbers is None:
        numbers = np.full(len(series), np.nan)
    with np.errstate(invalid="ignore"):
        bad = nonnumeric | ~np.isfinite(numbers) | (np.round(numbers) != numbers)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{table.name}: label {quote_cell(series.iloc[row])} in column {label_col!r} is not "
            f"an integer at {table.where(row)}; labels must be 0 (normal) or another integer "
            "(anomaly), or pick another --label-column"
        )
    return numbers.astype(np.int64)


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


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool | np.bool_):
        return float(value)
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    if isinstance(value, str) and looks_numeric(value):
        return float(value)
    return None


def looks_numeric(text: str) -> bool:
    """Whether ``float(text)`` parses (``"1e3"``, ``" 7 "``, ``"nan"``)."""
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA
