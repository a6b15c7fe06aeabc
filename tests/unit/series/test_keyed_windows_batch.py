"""A batch pushed at once (`KeyedWindows.push_many`) gives what pushing its records one by one
into a plain per-key deque gives: same windows, same evictions in the same order, same state.

The reference below shares no code with the store: an ordered dict of deques (least recently
seen first) and a learner that needs a few records of each new key before the key is ready.
"""

from __future__ import annotations

from collections import OrderedDict, deque

import numpy as np
import pytest

from anomaly_contract.windows import KeyedWindows


class CountingLearner:
    """Keys starting with "new" are ready after ``needed`` records; eviction forgets them."""

    def __init__(self, needed: int) -> None:
        self.needed = needed
        self.counts: dict[str, int] = {}
        self.calls: list[tuple[str, float]] = []

    def is_ready(self, key: str) -> bool:
        return not key.startswith("new") or self.counts.get(key, 0) >= self.needed

    def observe(self, key: str, vector: np.ndarray) -> bool:
        self.calls.append((key, float(vector[0])))
        self.counts[key] = self.counts.get(key, 0) + 1
        return self.is_ready(key)

    def forget(self, key: str) -> None:
        self.counts.pop(key, None)


class Reference:
    """One record at a time, the obvious way."""

    def __init__(self, window: int, max_keys: int, learner: CountingLearner | None) -> None:
        self.window, self.max_keys, self.learner = window, max_keys, learner
        self.held: OrderedDict[str, deque[tuple[np.ndarray, int]]] = OrderedDict()
        self.seen: dict[str, int] = {}
        self.gone: list[str] = []

    def push(self, key: str, row: np.ndarray, offset: int):
        if key in self.held:
            self.held.move_to_end(key)
        else:
            if len(self.held) >= self.max_keys:
                gone, _ = self.held.popitem(last=False)
                self.gone.append(gone)
                self.seen.pop(gone)
                if self.learner is not None:
                    self.learner.forget(gone)
            self.held[key] = deque(maxlen=self.window)
            self.seen[key] = 0
        ring = self.held[key]
        ring.append((row, offset))
        self.seen[key] += 1
        ready = True
        if self.learner is not None and not self.learner.is_ready(key):
            ready = self.learner.observe(key, row)
        if len(ring) < self.window or not ready:
            return None
        return np.stack([r for r, _ in ring]), ring[0][1], offset


def _batches(seed: int, n: int, n_keys: int, new_share: float):
    rng = np.random.default_rng(seed)
    names = [("new" if rng.random() < new_share else "k") + str(i) for i in range(n_keys)]
    # A few hot keys, so that one key often has several records in one batch.
    weights = rng.pareto(1.0, size=n_keys) + 0.05
    keys = [names[i] for i in rng.choice(n_keys, size=n, p=weights / weights.sum())]
    x = np.column_stack([np.arange(n, dtype=np.float64), rng.normal(size=n)])
    offsets = np.arange(100, 100 + n, dtype=np.int64)
    cuts = np.sort(rng.choice(np.arange(1, n), size=n // 15, replace=False))
    return keys, x, offsets, [0, *cuts.tolist(), n]


@pytest.mark.parametrize(
    ("window", "max_keys", "n_keys", "new_share", "seed"),
    [
        (4, 1000, 30, 0.0, 0),  # no eviction
        (4, 8, 30, 0.0, 1),  # evictions within batches, slots reused by new keys mid-batch
        (1, 5, 12, 0.0, 2),  # every record closes a window
        (6, 6, 15, 0.5, 3),  # new keys learning, evicted while learning
        (3, 2, 4, 0.5, 4),  # a key evicted and back within one batch
        (4, 5000, 3000, 0.0, 5),  # the store grows past its first 1,024 slots within a batch
    ],
)
def test_a_batch_pushes_as_its_records_one_by_one(window, max_keys, n_keys, new_share, seed):
    keys, x, offsets, bounds = _batches(seed, 900, n_keys, new_share)
    learner = CountingLearner(needed=3) if new_share else None
    ref_learner = CountingLearner(needed=3) if new_share else None
    gone: list[str] = []

    def on_evict(key: str) -> None:
        gone.append(key)
        if learner is not None:
            learner.forget(key)

    store = KeyedWindows(window, channels=2, max_keys=max_keys, on_evict=on_evict)
    reference = Reference(window, max_keys, ref_learner)
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        part = slice(start, end)
        got = store.push_many(keys[part], x[part], offsets[part], learner=learner)
        expected = [
            (i, found)
            for i in range(start, end)
            if (found := reference.push(keys[i], x[i], int(offsets[i]))) is not None
        ]
        assert got.rows.tolist() == [i - start for i, _ in expected]
        for j, (i, (values, first, last)) in enumerate(expected):
            assert np.array_equal(got.values[j], values)
            assert (
                (got.first_offsets[j], got.last_offsets[j])
                == (first, last)
                == (
                    first,
                    offsets[i],
                )
            )
        assert store.keys() == list(reference.held) and gone == reference.gone
    assert store.evicted == len(reference.gone)
    if learner is not None and ref_learner is not None:
        assert learner.calls == ref_learner.calls  # observed in the same order
    state = store.export_state()
    for k, key in enumerate(state["keys"].tolist()):
        ring = reference.held[key]
        filled = int(state["filled"][k])
        assert filled == len(ring) and int(state["seen"][k]) == reference.seen[key]
        assert np.array_equal(state["values"][k, window - filled :], np.stack([r for r, _ in ring]))
        assert state["offsets"][k, window - filled :].tolist() == [o for _, o in ring]


def test_an_empty_batch_changes_nothing():
    store = KeyedWindows(3, channels=2, max_keys=4)
    store.push("a", np.zeros(2), 0)
    got = store.push_many([], np.zeros((0, 2)), np.zeros(0, dtype=np.int64))
    assert got.rows.size == 0 and got.values.shape == (0, 3, 2)
    assert store.keys() == ["a"] and store.records_seen("a") == 1


def test_a_batch_of_the_wrong_shape_is_refused():
    store = KeyedWindows(3, channels=2, max_keys=4)
    with pytest.raises(ValueError, match="shape"):
        store.push_many(["a", "b"], np.zeros((2, 3)), np.zeros(2, dtype=np.int64))
