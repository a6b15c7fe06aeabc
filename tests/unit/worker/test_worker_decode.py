"""decode_record / decode_batch: the three shapes, image rows, and every kind of poison."""

from __future__ import annotations

import json

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


@pytest.mark.parametrize(
    ("value", "kind"), POISON, ids=[k + str(i) for i, (_, k) in enumerate(POISON)]
)
def test_batch_names_every_poison_record_as_decode_record_does(
    value: bytes | None, kind: str
) -> None:
    """The batch's fast path (msgspec, the common shape) refuses what the general path refuses,
    with the same kind, and keeps the good records around it."""
    good = enc({"id": "g", "features": [1.0, 2.0, 3.0]})
    batch = decode_batch([good, value, good], SPEC)
    assert [(i, e.kind) for i, e in batch.errors] == [(1, kind)]
    assert batch.valid_index == [0, 2] and batch.ids == ["g", "g"]


WIDE = FeatureSpec(names=("a", "b", "c"), max_record_bytes=10_000, max_abs_value=1.8e308)


def _general_path(values: list[bytes]) -> tuple[np.ndarray, list]:
    """What decode_record (orjson and the per-record checks) makes of good records."""
    out = [decode_record(v, WIDE) for v in values]
    assert all(type(o) is tuple for o in out)
    return np.array([o[1] for o in out], dtype=np.float64), [o[0] for o in out]  # type: ignore[index]


def test_fast_path_gives_the_general_paths_floats_and_ids() -> None:
    """Floats written every way JSON allows (shortest repr, fixed, exponent forms, integers,
    extremes), ids of every JSON type: the same matrix bit for bit, the same ids."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3000, 3)) * 10.0 ** rng.integers(-300, 300, (3000, 3))
    forms = [repr, "{:.6f}".format, "{:.17g}".format, "{:E}".format, lambda v: str(int(v) % 10**9)]
    ids: list = ["a", 7, 2**70, 1.5, None, True, [1, "x"], {"k": "ü"}]
    values = []
    for i, row in enumerate(x.tolist()):
        text = ", ".join(forms[(i + j) % len(forms)](v) for j, v in enumerate(row))
        rid = ids[i % len(ids)]
        head = "" if rid is None and i % 2 else f'"id": {json.dumps(rid)}, '
        values.append(f'{{{head}"features": [{text}], "extra": {{"a": [1, 2]}}}}'.encode())
    values += [b'{"features": [-0.0, 5e-324, 1.7976931348623157e308]}', b' {"features":[1,2,3]} ']
    batch = decode_batch(values, WIDE)
    expected_x, expected_ids = _general_path(values)
    assert batch.errors == [] and batch.valid_index == list(range(len(values)))
    np.testing.assert_array_equal(batch.x, expected_x)
    assert np.array_equal(np.signbit(batch.x), np.signbit(expected_x))
    assert [type(i) for i in batch.ids[:8]] == [str, int, int, float, type(None), bool, list, dict]
    assert batch.ids[2] == 2**70 and type(batch.ids[2]) is int  # exact (orjson: a float)
    assert batch.ids == expected_ids


def test_fast_path_takes_integers_as_the_matrix_would() -> None:
    batch = decode_batch([b'{"features": [1, -2, 300000000]}', b'{"features": [1, 2]}'], SPEC)
    np.testing.assert_array_equal(batch.x, [[1.0, -2.0, 3e8]])
    assert [(i, e.kind) for i, e in batch.errors] == [(1, d.WRONG_LENGTH)]
    too_big = decode_batch([b'{"features": [1, 2, 10000000000]}'], SPEC)  # beyond max_abs_value
    assert [(i, e.kind) for i, e in too_big.errors] == [(0, d.OUT_OF_RANGE)]
