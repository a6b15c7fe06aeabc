"""The worker's decoder and the trainer's offline reader give the same bytes the same outcome.

Every shape and every poison kind goes through `worker.decode.decode_batch` (with the model's
features) and through `trainer.data_records.records_to_arrays` (a topic read: features from the
data, bad records skipped with their reason; a file read: refused at the first). Both must give
the same vector, or the same kind and message.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from record_poison import enc, overflowing_floats, poison_records

from anomaly_contract import records as r
from anomaly_contract.errors import DataError
from trainer.data_records import records_to_arrays
from worker.decode import ERROR_KINDS, FeatureSpec, decode_batch

NAMES = ("temp", "rpm", "load")
SPEC = FeatureSpec(names=NAMES)  # the worker's default limits, which offline reading uses
IMAGE = FeatureSpec(names=tuple(f"f{i}" for i in range(6)), image_shape=(2, 3, 1))
# Records ahead of the one under test from which the offline reader takes the model's features.
ANCHORS = [{"temp": 1.5, "rpm": 2.5, "load": 3.5}, {"temp": 4.5, "rpm": 5.5, "load": 6.5}]
IMAGE_ANCHORS = [{"features": [[[0.0], [1.0], [2.0]], [[3.0], [4.0], [5.0]]]}]


def worker_outcomes(values: list[bytes | None], spec: FeatureSpec) -> list[Any]:
    batch = decode_batch(values, spec)
    out: list[Any] = [None] * len(values)
    for row, i in zip(batch.x.tolist(), batch.valid_index, strict=True):
        out[i] = ("row", row)
    for i, err in batch.errors:
        out[i] = ("error", err.kind, err.message)
    return out


def offline_outcomes(values: list[bytes | None], model: FeatureSpec | None = None) -> list[Any]:
    wheres = [f"value {i}" for i in range(len(values))]
    pairs = list(zip(wheres, values, strict=True))
    rows = records_to_arrays(pairs, "topic", None, strict=False, model=model)
    out: dict[str, Any] = {w: ("error", kind, msg) for w, kind, msg in rows.skipped}
    kept = [w for w in wheres if w not in out]
    out.update((w, ("row", row)) for w, row in zip(kept, rows.x.tolist(), strict=True))
    return [out[w] for w in wheres]


def assert_same(values: list[bytes | None], spec: FeatureSpec, anchors: list[dict]) -> list[Any]:
    """Both readers on anchors + values; returns the outcomes of ``values``."""
    batch = [enc(a) for a in anchors] + values
    worker = worker_outcomes(batch, spec)[len(anchors) :]
    offline = offline_outcomes(batch)[len(anchors) :]
    assert offline == worker
    return worker


SHAPES = [
    {"id": "a1", "features": [21.5, 900, 0.5]},
    {"id": "a1", "features": {"rpm": 900, "temp": 21.5, "load": 0.5}},
    {"id": "a1", "temp": 21.5, "rpm": 900, "load": 0.5, "site": "x", "ok": True},
    {"features": [21, 900, 1]},
    {"features": {"temp": 21.5, "rpm": 900, "load": 0.5, "note": [1, 2]}},
]


@pytest.mark.parametrize("record", SHAPES, ids=["list", "by-name", "top-level", "ints", "no-id"])
def test_every_shape_gives_the_same_vector(record: dict) -> None:
    [outcome] = assert_same([enc(record)], SPEC, ANCHORS)
    assert outcome[0] == "row"


def test_mixed_shapes_in_one_read_give_the_same_rows() -> None:
    values = [enc(rec) for rec in SHAPES * 3]
    outcomes = assert_same(values, SPEC, ANCHORS)
    assert all(o[0] == "row" for o in outcomes)


IMAGE_ROWS = [
    [0, 1, 2, 3, 4, 5],
    [[0, 1, 2], [3, 4, 5]],
    [[[0], [1], [2]], [[3], [4], [5]]],
    [[0, 1], [2, 3], [4, 5]],
    [[0, 1, 2], [3, 4]],
    [0, 1, 2],
]


@pytest.mark.parametrize(
    "rows", IMAGE_ROWS, ids=["flat", "nested", "nested-channel", "wrong-nesting", "ragged", "short"]
)
def test_image_records_give_the_same_outcome(rows: list) -> None:
    assert_same([enc({"features": rows})], IMAGE, IMAGE_ANCHORS)


POISON = poison_records(SPEC.max_record_bytes, SPEC.max_abs_value) + overflowing_floats(
    SPEC.max_abs_value
)


def test_the_poison_list_covers_every_record_kind() -> None:
    assert {kind for _, kind in POISON} == set(r.RECORD_ERROR_KINDS)
    assert set(r.RECORD_ERROR_KINDS) <= set(ERROR_KINDS)


@pytest.mark.parametrize(
    ("value", "kind"), POISON, ids=[f"{k}{i}" for i, (_, k) in enumerate(POISON)]
)
def test_every_poison_kind_gives_the_same_reason(value: bytes | None, kind: str) -> None:
    [outcome] = assert_same([value], SPEC, ANCHORS)
    assert outcome[:2] == ("error", kind)


@pytest.mark.parametrize(
    ("value", "kind"), POISON, ids=[f"{k}{i}" for i, (_, k) in enumerate(POISON)]
)
def test_a_file_is_refused_with_the_workers_reason(value: bytes | None, kind: str) -> None:
    [(_, _, message)] = worker_outcomes([value], SPEC)
    lines = [("line 1", enc(ANCHORS[0])), ("line 2", value)]
    with pytest.raises(DataError) as info:
        records_to_arrays(lines, "data.jsonl", None, strict=True)
    assert f"data.jsonl: line 2: {message} ({kind});" in str(info.value)


def test_a_topic_takes_the_features_most_records_name() -> None:
    """A stray record at the start of a topic does not decide the features (a file's first
    record does)."""
    stray = {"id": "x1", "rpm": 1.0}
    values = [enc(stray)] + [enc({**a, "id": f"r{i}"}) for i, a in enumerate(ANCHORS * 3)]
    wheres = [f"offset {i}" for i in range(len(values))]
    topic = records_to_arrays(list(zip(wheres, values, strict=True)), "t", None, strict=False)
    assert topic.feature_names == list(NAMES)
    assert topic.skipped == [("offset 0", r.MISSING_FEATURE, "record lacks feature(s) temp, load")]
    np.testing.assert_array_equal(topic.x, [list(a.values()) for a in ANCHORS * 3])
    assert topic.ids == [f"r{i}" for i in range(6)]
    whole = records_to_arrays(list(zip(wheres, values, strict=True)), "f", None, strict=True)
    assert whole.feature_names == ["rpm"] and len(whole.x) == 7


def test_with_the_models_features_every_value_gives_the_workers_outcome() -> None:
    values = [enc(rec) for rec in SHAPES] + [value for value, _ in POISON]
    assert offline_outcomes(values, model=SPEC) == worker_outcomes(values, SPEC)
    images = [enc({"features": rows}) for rows in IMAGE_ROWS]
    assert offline_outcomes(images, model=IMAGE) == worker_outcomes(images, IMAGE)


def test_a_field_only_the_first_record_has_is_needed_only_without_a_model() -> None:
    """The worker ignores fields its model lacks; a reader taking the features from the data
    cannot know which those are."""
    values = [enc({**ANCHORS[0], "battery": 0.9}), enc(ANCHORS[1])]
    assert offline_outcomes(values)[1][:2] == ("error", r.MISSING_FEATURE)
    assert offline_outcomes(values, model=SPEC) == worker_outcomes(values, SPEC)
