"""Arrays (``.npy`` / ``.npz`` files, built-in image sets, decoded JSON records) as the loader
takes them: a finite float64 matrix with optional names, labels, ids and image shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anomaly_contract.errors import DataError
from trainer.data_messages import first_line, quote_names

_NPZ_LABEL_ARRAYS = ("y", "labels")
_NPZ_ID_ARRAYS = ("ids", "id")


@dataclass
class Arrays:
    """Rows already numeric: ``x`` is ``(n, d)`` float64 and finite."""

    x: np.ndarray
    name: str  # the source, for messages
    feature_names: list[str] | None = None  # None: f0, f1, ...
    labels: np.ndarray | None = None
    ids: list | None = None
    image_shape: tuple[int, ...] | None = None
    # Records left out of a stream read: (where, kind, message), and how many were read.
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    n_read: int = 0
    # Decoded records: the input position of each row (records left out leave gaps).
    positions: list[int] | None = None


def read_npy(path: Path, source: str) -> Arrays:
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{source}: not a readable .npy array ({first_line(exc)})") from exc
    if not isinstance(x, np.ndarray):
        raise DataError(f"{source}: not a .npy array")
    return Arrays(_check_array(x, source, "the array"), source, image_shape=_image_shape(x))


def read_npz(path: Path, source: str, label_column: str | None) -> Arrays:
    """The rows are array ``x`` (else the first array), labels ``y``/``labels``, ids ``ids``/``id``."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as exc:  # zipfile, pickle and format errors all mean "not a usable .npz"
        raise DataError(f"{source}: not a readable .npz archive ({first_line(exc)})") from exc
    if label_column is not None and label_column not in arrays:
        raise DataError(
            f"{source}: no array named {label_column!r} for --label-column; "
            f"arrays are {quote_names(list(arrays))}"
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
    return Arrays(x, source, labels=labels, ids=ids, image_shape=_image_shape(arrays[x_name]))


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


def _image_shape(x: np.ndarray) -> tuple[int, ...] | None:
    return tuple(int(s) for s in x.shape[1:]) if x.ndim >= 3 else None


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


def select_array_features(
    raw: Arrays, features: list[str] | None
) -> tuple[np.ndarray, list[str], np.ndarray | None, list | None]:
    """``(x, feature names, labels, ids)``, with ``features`` picking and ordering columns."""
    names = raw.feature_names or [f"f{i}" for i in range(raw.x.shape[1])]
    x = raw.x
    if features is not None:
        index = {n: i for i, n in enumerate(names)}
        unknown = [f for f in features if f not in index]
        if unknown:
            raise DataError(
                f"{raw.name}: unknown feature(s) {quote_names(unknown)}; features are named "
                f"{names[0]} .. {names[-1]}"
            )
        x = x[:, [index[f] for f in features]]
        names = list(features)
    return x, list(names), raw.labels, raw.ids
