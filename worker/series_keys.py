"""The series key of a consumed record, for windowed models: a pure function of the record.

The key is the Kafka record key as UTF-8 text, or, with ``ANOMALY_KEY_FIELD``, the value of that
top-level JSON field, in `anomaly_contract.series.series_key`'s one string form (what the
trainer makes of a key column: 3, 3.0 and "3" are one series). A record without a key (no Kafka key, or the field
missing or null) belongs to its partition's series, `partition_series_key`. A key that cannot
be one (a Kafka key that is not UTF-8, a field holding a list or an object)
is a `DecodeError` of kind ``bad_key``: the record is dead-lettered like any bad record.
"""

from __future__ import annotations

from collections.abc import Sequence

from anomaly_contract.records import DecodeError, fast_loads
from anomaly_contract.series import series_key
from anomaly_contract.windows import partition_series_key
from worker.client import InRecord
from worker.decode import BAD_KEY


def record_key(record: InRecord) -> str | DecodeError:
    """The series key from the Kafka record key (keyless: the partition's series)."""
    raw = record.key
    if raw is None:
        return partition_series_key(record.partition)
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return DecodeError(BAD_KEY, "the record's Kafka key is not UTF-8 text")


def field_key(record: InRecord, field: str) -> str | DecodeError:
    """The series key from the JSON field ``field`` of the record's value (already known to
    decode: only valid records are asked)."""
    try:
        obj = fast_loads(record.value or b"")
    except ValueError:  # cannot happen for a decoded record; refuse rather than guess
        return DecodeError(BAD_KEY, "the record value is not JSON")
    value = obj.get(field) if isinstance(obj, dict) else None
    if value is None:
        return partition_series_key(record.partition)
    if isinstance(value, (str, int, float)):  # bool is an int
        return series_key(value)
    return DecodeError(
        BAD_KEY,
        f"the key field {field!r} holds {type(value).__name__}; series keys are strings or numbers",
    )


def series_keys(
    records: Sequence[InRecord], positions: Sequence[int], key_field: str | None
) -> list[str | DecodeError]:
    """The key (or why there is none) of ``records[p]`` for each ``p`` in ``positions``."""
    if key_field is None:
        try:  # the common case, every record keyed with UTF-8 bytes, without a call per record
            return [records[p].key.decode("utf-8") for p in positions]  # type: ignore[union-attr]
        except (AttributeError, UnicodeDecodeError):  # a keyless record, a bad key, a memoryview
            return [record_key(records[p]) for p in positions]
    return [field_key(records[p], key_field) for p in positions]
