"""Offline windows: indexing per key and in time, materialising, and the train/calibration split."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_contract.windows import (
    WARMING,
    index_windows,
    materialise_windows,
    split_windows_in_time,
)


def _interleaved(n_per_key: int = 10, keys: tuple[str, ...] = ("a", "b", "c"), seed: int = 0):
    """Rows of several keys in a shuffled arrival order; value = 100 * key number + step."""
    rng = np.random.default_rng(seed)
    key_col = [name for name in keys for _ in range(n_per_key)]
    # Shuffle the arrival order but keep each key's rows in step order (a merged stream).
    arrival = rng.permutation(len(key_col))
    per_key_rank = {name: iter(range(n_per_key)) for name in keys}
    shuffled_keys = np.array(key_col, dtype=object)[arrival]
    steps = np.array([next(per_key_rank[k]) for k in shuffled_keys])
    numbers = np.array([keys.index(k) for k in shuffled_keys])
    x = np.column_stack([100.0 * numbers + steps, -(100.0 * numbers + steps)])
    return x, shuffled_keys, steps


def test_each_row_is_scored_by_the_window_of_its_key_ending_at_it():
    x, keys, steps = _interleaved()
    index = index_windows(keys, len(x), window=4)
    windows = materialise_windows(x, index)
    assert windows.shape == (3 * (10 - 3), 4, 2)
    for row in range(len(x)):
        w = index.window_of_row[row]
        if steps[row] < 3:
            assert w == WARMING
            continue
        # The window holds steps t-3..t of the same key, oldest first, ending at this row.
        assert index.end_rows[w] == row
        assert windows[w, :, 0].tolist() == [x[row, 0] - 3, x[row, 0] - 2, x[row, 0] - 1, x[row, 0]]
        assert index.key_names[index.window_keys[w]] == keys[row]
    # Windows are numbered in the input order of the rows that close them.
    assert np.all(np.diff(index.end_rows) > 0)
    assert index.warming.sum() == 9


def test_the_time_column_orders_rows_within_a_key_and_ties_keep_input_order():
    keys = np.array(["a", "b", "a", "a", "b", "a"])
    times = np.array([3.0, 1.0, 1.0, 2.0, 0.0, 2.0])
    index = index_windows(keys, 6, window=3, order=times)
    # Key a in time order: row 2 (t=1), rows 3 and 5 (t=2, input order), row 0 (t=3).
    assert index.position.tolist() == [3, 1, 0, 1, 0, 2]
    assert index.rows.tolist() == [[3, 5, 0], [2, 3, 5]]  # numbered by input order of the end
    assert index.window_of_row.tolist() == [0, WARMING, WARMING, WARMING, WARMING, 1]


def test_keys_from_several_partitions_stay_separate_series():
    # The same key names under two partitions: the caller's series key tells them apart.
    partition = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    name = np.array(["k"] * 8)
    series = np.char.add(np.char.add(name, "@"), partition.astype(str))
    index = index_windows(series, 8, window=3)
    assert index.rows.tolist() == [[0, 2, 4], [1, 3, 5], [2, 4, 6], [3, 5, 7]]


def test_without_keys_the_whole_input_is_one_series():
    index = index_windows(None, 5, window=2)
    assert index.rows.tolist() == [[0, 1], [1, 2], [2, 3], [3, 4]]
    assert index.window_of_row.tolist() == [WARMING, 0, 1, 2, 3]


def test_fewer_rows_than_the_window_give_no_window_and_bad_input_is_refused():
    index = index_windows(np.array(["a", "a"]), 2, window=3)
    assert index.n_windows == 0 and index.warming.all()
    assert materialise_windows(np.zeros((2, 3)), index).shape == (0, 3, 3)
    with pytest.raises(ValueError, match="window"):
        index_windows(None, 5, window=0)
    with pytest.raises(ValueError, match="missing"):
        index_windows(None, 3, window=2, order=np.array([0.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match="one value per row"):
        index_windows(np.array(["a"]), 3, window=2)


def test_the_split_never_lets_a_calibration_window_share_a_row_with_a_training_window():
    rng = np.random.default_rng(3)
    for trial in range(20):
        lengths = rng.integers(5, 80, size=int(rng.integers(1, 6)))
        keys = np.repeat(np.arange(len(lengths)).astype(str), lengths)
        keys = keys[rng.permutation(len(keys))]
        window = int(rng.integers(1, 9))
        index = index_windows(keys, len(keys), window)
        split = split_windows_in_time(index, 0.15, 0.2)
        parts = [split.train, split.validation, split.calibration, split.dropped]
        every = np.sort(np.concatenate(parts))
        assert every.tolist() == list(range(index.n_windows)), trial
        train_rows = set(index.rows[split.train].ravel().tolist())
        for later in (split.validation, split.calibration):
            assert not train_rows & set(index.rows[later].ravel().tolist()), trial
        assert not set(index.rows[split.validation].ravel().tolist()) & set(
            index.rows[split.calibration].ravel().tolist()
        )
        # Within each key, training windows come first in time and calibration windows last.
        last = index.position[index.end_rows]
        for code in range(len(lengths)):
            own = index.window_keys == code
            tr = last[split.train[own[split.train]]]
            ca = last[split.calibration[own[split.calibration]]]
            if len(tr) and len(ca):
                assert tr.max() < ca.min()


def test_the_split_drops_exactly_the_windows_that_straddle_a_boundary():
    index = index_windows(None, 100, window=5)
    split = split_windows_in_time(index, 0.1, 0.2)
    # Rows 0-69 train, 70-79 validate, 80-99 calibrate; 4 windows straddle each boundary.
    assert len(split.train) == 70 - 4
    assert len(split.validation) == 10 - 4
    assert len(split.calibration) == 20 - 4
    assert len(split.dropped) == 8
    with pytest.raises(ValueError):
        split_windows_in_time(index, 0.5, 0.5)
