"""`key_codes`: the distinct keys of a column, first seen first, and each entry's index."""

from __future__ import annotations

import numpy as np

from anomaly_contract.key_codes import key_codes


def test_codes_index_the_names_first_seen_first() -> None:
    keys = ["b", "a", "b", "c", "a"]
    names, codes = key_codes(keys)
    assert names == ["b", "a", "c"]
    assert codes.dtype == np.int64
    assert codes.tolist() == [0, 1, 0, 2, 1]


def test_the_same_grouping_as_np_unique() -> None:
    rng = np.random.default_rng(3)
    keys = np.array([f"machine-{i}" for i in rng.integers(0, 50, 1000)], dtype=object)
    names, codes = key_codes(keys)
    assert [names[c] for c in codes] == keys.tolist()
    assert sorted(names) == np.unique(keys).tolist()


def test_an_object_column_is_flattened_and_names_are_plain_str() -> None:
    names, codes = key_codes(np.array([[np.str_("x")], [np.str_("y")]], dtype=object))
    assert names == ["x", "y"] and all(type(n) is str for n in names)
    assert codes.tolist() == [0, 1]


def test_no_keys() -> None:
    names, codes = key_codes([])
    assert names == [] and codes.shape == (0,)
