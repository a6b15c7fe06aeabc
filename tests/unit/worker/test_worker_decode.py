"""decode_record / decode_batch: the three shapes, image rows, and every kind of poison."""

from __future__ import annotations

import numpy as np
import pytest
from record_poison import enc, overflowing_floats, poison_records

from worker import decode as d
from worker.decode import DecodeError, FeatureSpec, decode_batch, decode_record

SPEC = FeatureSpec(names=("temp", "rpm", "load"), max_record_bytes=10_000, max_abs_value=1e9)
IMG = FeatureSpec(names=tuple(f"px{i}" for i in range(6)), image_shape=(2, 3, 1))


@pytest.mark.parametrize(
    "value",
    [
        {"id": "a1", "features": [21.5, 900, 0.5]},
        {"id": "a1", "features": {"rpm": 900, "temp": 21.5, "load": 0.5}},
        {"id": "a1", "temp": 21.5, "rpm": 900, "load": 0.5, "site": "x"},
    ],
    ids=["list", "by-name", "top-level"],
)
def test_three_shapes_give_the_same_vector(value: dict) -> None:
    rid, values = decode_record(enc(value), SPEC)
    assert rid == "a1"
    assert values == [21.5, 900, 0.5]


def test_id_is_optional_and_extra_keys_ignored() -> None:
    rid, values = decode_record(enc({"features": {"temp": 1, "rpm": 2, "load": 3, "x": "y"}}), SPEC)
    assert rid is None and values == [1, 2, 3]


def test_image_models_take_flat_or_nested_rows() -> None:
    flat = list(range(6))
    assert decode_record(enc({"features": flat}), IMG)[1] == flat
    assert decode_record(enc({"features": [[0, 1, 2], [3, 4, 5]]}), IMG)[1] == flat
    assert decode_record(enc({"features": [[[0], [1], [2]], [[3], [4], [5]]]}), IMG)[1] == flat
    bad = decode_record(enc({"features": [[0, 1], [2, 3], [4, 5]]}), IMG)
    assert isinstance(bad, DecodeError) and bad.kind == d.WRONG_SHAPE


POISON = poison_records(SPEC.max_record_bytes, SPEC.max_abs_value)


@pytest.mark.parametrize(
    ("value", "kind"), POISON, ids=[k + str(i) for i, (_, k) in enumerate(POISON)]
)
def test_poison_records_are_errors_with_a_kind(value: bytes | None, kind: str) -> None:
    out = decode_record(value, SPEC)
    assert isinstance(out, DecodeError), out
    assert out.kind == kind
    assert out.message


@pytest.mark.parametrize(("value", "kind"), overflowing_floats(SPEC.max_abs_value))
def test_batch_rejects_overflowing_floats(value: bytes, kind: str) -> None:
    good = enc({"features": [1.0, 2.0, 3.0]})
    batch = decode_batch([good, value, good], SPEC)
    assert batch.valid_index == [0, 2]
    assert [(i, e.kind) for i, e in batch.errors] == [(1, kind)]
    np.testing.assert_array_equal(batch.x, [[1, 2, 3], [1, 2, 3]])


def test_batch_keeps_order_ids_and_errors() -> None:
    values = [
        enc({"id": i, "features": [i, i + 1, i + 2]}) if i % 3 else b"oops" for i in range(10)
    ]
    batch = decode_batch(values, SPEC)
    assert batch.valid_index == [i for i in range(10) if i % 3]
    assert batch.ids == batch.valid_index
    assert [i for i, _ in batch.errors] == [0, 3, 6, 9]
    assert batch.x.dtype == np.float64 and batch.x.shape == (6, 3)
    np.testing.assert_array_equal(batch.x[:, 0], batch.valid_index)


def test_empty_batch_and_all_invalid() -> None:
    assert decode_batch([], SPEC).x.shape == (0, 3)
    batch = decode_batch([b"", b"x"], SPEC)
    assert batch.x.shape == (0, 3) and len(batch.errors) == 2
