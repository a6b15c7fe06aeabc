"""The streaming window store: same windows as the offline path, eviction, state round trip."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_contract.windows import (
    KeyedWindows,
    index_windows,
    materialise_windows,
    partition_series_key,
)


def _stream(n: int = 400, n_keys: int = 7, channels: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    keys = np.array([f"m{k}" for k in rng.integers(0, n_keys, size=n)])
    return rng.normal(size=(n, channels)), keys


def test_streaming_and_offline_give_identical_windows_for_the_same_rows():
    x, keys = _stream()
    window = 5
    index = index_windows(keys, len(x), window)
    offline = materialise_windows(x, index)
    store = KeyedWindows(window, channels=3, max_keys=100)
    for row in range(len(x)):
        got = store.push(str(keys[row]), x[row], offset=row)
        w = index.window_of_row[row]
        if w < 0:
            assert got is None
            continue
        assert got is not None
        assert np.array_equal(got.values, offline[w])
        assert (got.first_offset, got.last_offset) == (index.rows[w, 0], row)


def test_interleaved_partitions_give_each_key_the_same_windows_in_any_merge_order():
    # Two partitions, each with its own keys in partition order; the consumer may interleave
    # the partitions differently from run to run, and each key's windows must not change.
    rng = np.random.default_rng(1)
    partitions = {
        p: [
            (f"p{p}k{int(k)}", rng.normal(size=2), offset)
            for offset, k in enumerate(rng.integers(0, 3, 60))
        ]
        for p in (0, 1)
    }
    partitions[1] += [(partition_series_key(1), rng.normal(size=2), 60 + i) for i in range(10)]

    def run(merge_seed: int) -> dict[str, list[tuple[int, int, list[float]]]]:
        order = np.random.default_rng(merge_seed).permutation([0] * 60 + [1] * 70)
        cursors = {0: 0, 1: 0}
        store = KeyedWindows(4, channels=2, max_keys=50)
        seen: dict[str, list[tuple[int, int, list[float]]]] = {}
        for p in order:
            key, vector, offset = partitions[p][cursors[p]]
            cursors[p] += 1
            got = store.push(key, vector, offset)
            if got is not None:
                seen.setdefault(key, []).append(
                    (got.first_offset, got.last_offset, got.values.ravel().tolist())
                )
        return seen

    first, second = run(0), run(1)
    assert first == second
    assert partition_series_key(1) in first and len(first) == 7


def test_the_least_recently_seen_key_is_evicted_and_counted():
    gone: list[str] = []
    store = KeyedWindows(2, channels=1, max_keys=3, on_evict=gone.append)
    for key in ("a", "b", "c"):
        store.push(key, np.array([1.0]), 0)
    store.push("a", np.array([2.0]), 1)  # b is now the least recently seen
    store.push("d", np.array([1.0]), 2)
    assert store.keys() == ["c", "a", "d"] and store.evicted == 1
    store.push("e", np.array([1.0]), 3)
    assert store.keys() == ["a", "d", "e"] and store.evicted == 2
    # An evicted key comes back cold: it warms up again.
    assert store.push("b", np.array([5.0]), 4) is None
    assert store.evicted == 3 and "b" in store and "a" not in store
    # Discarding (a revoked partition) frees the slot without counting an eviction.
    assert store.discard("d") and not store.discard("zz")
    store.push("f", np.array([1.0]), 5)
    assert store.evicted == 3 and len(store) == 3
    assert gone == ["b", "c", "a"]


def test_the_store_grows_past_its_first_allocation():
    store = KeyedWindows(3, channels=2, max_keys=5000)
    for i in range(3000):
        store.push(f"k{i}", np.array([float(i), 0.0]), i)
    for i in range(3000):
        store.push(f"k{i}", np.array([float(i), 1.0]), 3000 + i)
    got = store.push("k1234", np.array([0.0, 2.0]), 9999)
    assert got is not None and got.values[:, 1].tolist() == [0.0, 1.0, 2.0]
    assert (got.first_offset, got.last_offset) == (1234, 9999) and store.evicted == 0


@pytest.mark.parametrize("window", [1, 4])
def test_a_restored_store_gives_the_same_next_windows(window: int):
    x, keys = _stream(n=300, n_keys=9, seed=2)
    # Cut mid-stream so that some keys are full, some are warming, some wrapped around.
    cut = 37
    store = KeyedWindows(window, channels=3, max_keys=6)
    for row in range(cut):
        store.push(str(keys[row]), x[row], row)
    restored = KeyedWindows.from_state_bytes(store.state_bytes(), max_keys=6)
    held = store.keys()
    assert restored.keys() == held and restored.evicted == store.evicted
    assert [restored.records_seen(k) for k in held] == [store.records_seen(k) for k in held]
    for row in range(cut, len(x)):
        a = store.push(str(keys[row]), x[row], row)
        b = restored.push(str(keys[row]), x[row], row)
        if a is None:
            assert b is None
        else:
            assert b is not None
            assert np.array_equal(a.values, b.values)
            assert (a.first_offset, a.last_offset) == (b.first_offset, b.last_offset)
    assert restored.evicted == store.evicted


def test_restoring_into_fewer_keys_evicts_the_least_recently_seen():
    store = KeyedWindows(2, channels=1, max_keys=10)
    for i, key in enumerate(["a", "b", "c", "d"]):
        store.push(key, np.array([float(i)]), i)
    gone: list[str] = []
    small = KeyedWindows.from_state(store.export_state(), max_keys=2, on_evict=gone.append)
    assert small.keys() == ["c", "d"] and small.evicted == 2 and gone == ["a", "b"]


def test_the_state_is_compact_and_refuses_another_format():
    store = KeyedWindows(32, channels=3, max_keys=2000)
    for i in range(1000 * 32):
        store.push(f"k{i % 1000}", np.full(3, float(i)), i)
    blob = store.state_bytes()
    # 32 * (3 + 1) * 8 bytes of window per key, plus the key and two counters.
    assert len(blob) / 1000 < 32 * 4 * 8 + 64
    state = store.export_state()
    state["meta"] = state["meta"].copy()
    state["meta"][0] = 99
    with pytest.raises(ValueError, match="format 99"):
        KeyedWindows.from_state(state, max_keys=10)
    with pytest.raises(ValueError, match="lacks"):
        KeyedWindows.from_state({"keys": state["keys"]}, max_keys=10)
    with pytest.raises(ValueError, match="shape"):
        store.push("k0", np.zeros(2), 0)


def test_streaming_in_time_order_matches_offline_windows_ordered_by_a_time_column():
    x, keys = _stream(n=200, n_keys=4, seed=4)
    times = np.random.default_rng(4).permutation(200).astype(float)  # input order is not time
    index = index_windows(keys, len(x), 6, order=times)
    offline = materialise_windows(x, index)
    store = KeyedWindows(6, channels=3, max_keys=10)
    for row in np.argsort(times):
        got = store.push(str(keys[row]), x[row], offset=int(row))
        w = index.window_of_row[row]
        assert (got is None) == (w < 0)
        if got is not None:
            assert np.array_equal(got.values, offline[w]) and got.first_offset == index.rows[w, 0]
