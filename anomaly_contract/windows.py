"""Causal sliding windows per series key: the one definition the trainer and the worker share.

A series is the rows of one key in time order. Row t of a key is scored by the window of the W
rows of that key ending at t (causal: the worker can score a record the moment it arrives); the
first W-1 rows of a key are *warming* and have no window. Two paths build the same windows:

- offline (`index_windows`, `materialise_windows`, `split_windows_in_time`): the whole table at
  once, vectorised, for fit, score and evaluate;
- streaming (`KeyedWindows`): one record at a time, a ring buffer per key, bounded by
  ``max_keys`` with least-recently-seen eviction, and a state export/import so a worker can
  restore every key's window after a restart.

For the same rows of a key in the same order both paths give identical windows (same values,
same rows). Series keys are ``str`` in the streaming store (the Kafka key as UTF-8, a JSON field,
or `partition_series_key` for keyless records); the offline path accepts any 1-D key column.
NumPy only: the worker imports this module.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np

STATE_FORMAT_VERSION = 1
WARMING = -1  # `WindowIndex.window_of_row` for a row that does not yet close a window of its key
_STATE_ARRAYS = ("keys", "filled", "seen", "values", "offsets", "meta")


def partition_series_key(partition: int) -> str:
    """The series key of records without a key: one series per partition (PRODUCT.md).

    The NUL prefix keeps it apart from every printable Kafka key."""
    return f"\x00partition:{int(partition)}"


# --------------------------------------------------------------------------------------------
# Offline
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class WindowIndex:
    """Where every window of a table lies, as row indices (nothing is copied).

    ``rows[w]`` are the W row indices of window ``w``, oldest first; windows are numbered in the
    input order of the row that closes them. ``window_of_row[i]`` is the window row ``i`` closes,
    or `WARMING`. ``key_codes[i]`` indexes ``key_names``; ``position[i]`` is row ``i``'s 0-based
    place in its key's time order and ``key_rows[k]`` the number of rows of key ``k``.
    """

    window: int
    rows: np.ndarray
    window_of_row: np.ndarray
    key_codes: np.ndarray
    key_names: np.ndarray
    position: np.ndarray
    key_rows: np.ndarray

    @property
    def n_windows(self) -> int:
        return int(self.rows.shape[0])

    @property
    def end_rows(self) -> np.ndarray:
        """The row each window ends at (the row it scores)."""
        return self.rows[:, -1]

    @property
    def window_keys(self) -> np.ndarray:
        """The key code of each window (index into ``key_names``)."""
        return self.key_codes[self.end_rows]

    @property
    def warming(self) -> np.ndarray:
        """True for rows that do not yet close a window of their key."""
        return self.window_of_row == WARMING


def index_windows(keys: Any, n_rows: int, window: int, order: Any = None) -> WindowIndex:
    """Index the causal windows of ``n_rows`` rows: per key (``keys`` is one value per row, or
    None for one series), in ``order`` (a numeric or datetime column; None: input order).

    Rows of one key with equal ``order`` values keep their input order (stable sort), which is
    the order a stream would deliver them in. Raises ValueError for a window below 1, a column
    of the wrong length, or missing (NaN/NaT) order values.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    if keys is None:
        key_names, codes = np.array([""], dtype=object), np.zeros(n_rows, dtype=np.int64)
    else:
        key_column = np.asarray(keys)
        if key_column.shape != (n_rows,):
            raise ValueError(f"keys must hold one value per row ({n_rows}), got {key_column.shape}")
        key_names, codes = np.unique(key_column, return_inverse=True)
        codes = codes.astype(np.int64).reshape(n_rows)
    if order is None:
        perm = np.argsort(codes, kind="stable")
    else:
        times = np.asarray(order)
        if times.shape != (n_rows,):
            raise ValueError(f"order must hold one value per row ({n_rows}), got {times.shape}")
        if times.dtype.kind in "fcmM" and bool(np.isnan(times).any()):
            raise ValueError("order holds missing values; every row needs a time")
        perm = np.lexsort((times, codes))  # lexsort is stable: equal times keep input order
    perm = perm.astype(np.int64)
    key_rows = np.bincount(codes, minlength=len(key_names)).astype(np.int64)
    starts = np.concatenate(([0], np.cumsum(key_rows)[:-1])).astype(np.int64)
    sorted_codes = codes[perm]
    position = np.empty(n_rows, dtype=np.int64)
    position[perm] = np.arange(n_rows, dtype=np.int64) - starts[sorted_codes]

    window_of_row = np.full(n_rows, WARMING, dtype=np.int64)
    if n_rows < window:
        rows = np.zeros((0, window), dtype=np.int64)
    else:
        candidates = np.lib.stride_tricks.sliding_window_view(perm, window)
        # A candidate is a window when its last row has W-1 rows of the same key before it.
        closes = position[candidates[:, -1]] >= window - 1
        rows = candidates[closes]
        rows = rows[np.argsort(rows[:, -1], kind="stable")].copy()
        window_of_row[rows[:, -1]] = np.arange(len(rows), dtype=np.int64)
    return WindowIndex(window, rows, window_of_row, codes, key_names, position, key_rows)


def materialise_windows(
    x: np.ndarray, index: WindowIndex, selection: np.ndarray | None = None
) -> np.ndarray:
    """The windows as one array ``(n_windows, W, channels)`` (or only the ``selection``)."""
    rows = index.rows if selection is None else index.rows[selection]
    values = np.asarray(x)
    if values.ndim != 2:
        raise ValueError(f"x must be (rows, channels), got shape {values.shape}")
    return values[rows]


class WindowSplit(NamedTuple):
    """Window numbers (into a `WindowIndex`) of each time part; ``dropped`` straddled a boundary."""

    train: np.ndarray
    validation: np.ndarray
    calibration: np.ndarray
    dropped: np.ndarray


def split_windows_in_time(
    index: WindowIndex, validation_share: float, calibration_share: float
) -> WindowSplit:
    """Split each key's rows in time: the first part trains, the next validates, the last
    calibrates. A window belongs to a part when all its rows do; windows straddling a boundary
    are dropped, so no calibration (or validation) window shares a row with a training window.

    Each key's boundaries are ``floor(n_k * (1 - v - c))`` and ``floor(n_k * (1 - c))`` of its
    ``n_k`` rows; a short key may give a part no windows at all (the caller decides whether
    that is enough data).
    """
    if validation_share < 0 or calibration_share < 0 or validation_share + calibration_share >= 1:
        raise ValueError("validation and calibration shares must be >= 0 and sum below 1")
    n_k = index.key_rows.astype(np.float64)
    first_boundary = np.floor(n_k * (1.0 - validation_share - calibration_share)).astype(np.int64)
    second_boundary = np.floor(n_k * (1.0 - calibration_share)).astype(np.int64)
    codes = index.key_codes
    part_of_row = (index.position >= first_boundary[codes]).astype(np.int64) + (
        index.position >= second_boundary[codes]
    )
    first_part = part_of_row[index.rows[:, 0]]
    last_part = part_of_row[index.rows[:, -1]]
    numbers = np.arange(index.n_windows, dtype=np.int64)
    inside = first_part == last_part  # parts are contiguous in time, so the ends decide
    return WindowSplit(
        train=numbers[inside & (last_part == 0)],
        validation=numbers[inside & (last_part == 1)],
        calibration=numbers[inside & (last_part == 2)],
        dropped=numbers[~inside],
    )


# --------------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------------
class Window(NamedTuple):
    """A full window of one key: ``values`` (W, channels), oldest first, and the offsets of its
    oldest and newest record."""

    values: np.ndarray
    first_offset: int
    last_offset: int


class WindowBatch(NamedTuple):
    """The full windows a batch of records closed, in batch order: ``rows`` (m,) the input rows
    that closed one, ``values`` (m, W, channels) their windows oldest first, ``first_offsets``
    and ``last_offsets`` (m,) the offsets of each window's oldest and newest record."""

    rows: np.ndarray
    values: np.ndarray
    first_offsets: np.ndarray
    last_offsets: np.ndarray

    def window(self, i: int) -> Window:
        """The ``i``-th window on its own."""
        return Window(self.values[i], int(self.first_offsets[i]), int(self.last_offsets[i]))


class KeyLearner(Protocol):
    """What learns from a key's first records before the key may be scored
    (`anomaly_contract.key_normaliser.KeyNormaliser`)."""

    def is_ready(self, key: str) -> bool: ...
    def observe(self, key: str, vector: np.ndarray) -> bool: ...


class KeyedWindows:
    """Per-key ring buffers of the last W records, at most ``max_keys`` keys.

    All keys share preallocated arrays (a slot per key) rather than an object per key: memory is
    ``W * (channels + 1) * 8`` bytes per key plus one dict entry, and exporting the state is
    array slicing. The least recently pushed key is evicted when a new key would exceed
    ``max_keys`` (``evicted`` counts them); an evicted key starts warming again when it returns,
    so with more live keys than ``max_keys`` the worker no longer matches offline scoring.
    ``on_evict`` is called with each evicted key, for the caller to drop what else it holds
    for that key (online normalisation, incidents).

    A batch is pushed at once (`push_many`): only the key look-up and the eviction order are
    Python per record; the windows are gathered and the rings rewritten by array indexing.
    """

    def __init__(
        self,
        window: int,
        channels: int,
        max_keys: int,
        on_evict: Callable[[str], None] | None = None,
    ) -> None:
        if window < 1 or channels < 1 or max_keys < 1:
            raise ValueError("window, channels and max_keys must be at least 1")
        self.window = int(window)
        self.channels = int(channels)
        self.max_keys = int(max_keys)
        self.evicted = 0
        self._on_evict = on_evict
        self._slots: OrderedDict[str, int] = OrderedDict()  # least recently seen first
        self._free: list[int] = []
        self._values = np.zeros((0, self.window, self.channels), dtype=np.float64)
        self._offsets = np.zeros((0, self.window), dtype=np.int64)
        # Per slot: where the ring's next write goes, its real records (<= W), records pushed.
        self._head = np.zeros(0, dtype=np.int64)
        self._filled = np.zeros(0, dtype=np.int64)
        self._seen = np.zeros(0, dtype=np.int64)
        self._allocate(min(self.max_keys, 1024))

    def _allocate(self, capacity: int) -> None:
        """Grow the slot arrays to ``capacity`` slots (the new ones go to the free list)."""
        used = self._values.shape[0]
        values = np.zeros((capacity, self.window, self.channels), dtype=np.float64)
        offsets = np.zeros((capacity, self.window), dtype=np.int64)
        values[:used], offsets[:used] = self._values, self._offsets
        self._values, self._offsets = values, offsets
        for name in ("_head", "_filled", "_seen"):
            grown = np.zeros(capacity, dtype=np.int64)
            grown[:used] = getattr(self, name)
            setattr(self, name, grown)
        self._free.extend(range(capacity - 1, used - 1, -1))

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: object) -> bool:
        return key in self._slots

    def keys(self) -> list[str]:
        """The keys held, least recently seen first (the eviction order)."""
        return list(self._slots)

    def _admit(self, key: str) -> int:
        """A slot for a key not held: a free one, or the least recently seen key's (evicted)."""
        if len(self._slots) >= self.max_keys:
            gone, slot = self._slots.popitem(last=False)
            self.evicted += 1
            if self._on_evict is not None:
                self._on_evict(gone)
        else:
            if not self._free:
                self._allocate(min(self.max_keys, 2 * self._values.shape[0]))
            slot = self._free.pop()
        self._slots[key] = slot
        return slot

    def push(self, key: str, vector: np.ndarray, offset: int) -> Window | None:
        """Add one record of ``key``; its full window (a copy), or None while the key warms up."""
        row = np.asarray(vector, dtype=np.float64)
        if row.shape != (self.channels,):
            raise ValueError(f"vector must have shape ({self.channels},), got {row.shape}")
        batch = self.push_many([key], row[None, :], np.array([offset], dtype=np.int64))
        return batch.window(0) if batch.rows.size else None

    def push_many(
        self,
        keys: Sequence[str],
        x: np.ndarray,
        offsets: np.ndarray,
        learner: KeyLearner | None = None,
    ) -> WindowBatch:
        """Add records in order: ``keys`` one per row of ``x`` (n, channels), ``offsets`` (n,).

        The same as pushing them one by one: each window holds the W latest records of its key
        up to its row (rows of one key within the batch see each other), and a key evicted
        within the batch loses its earlier rows. With a ``learner``, a row closes a window only
        once its key is ready: ``learner.observe`` sees every row of a key not yet ready, in
        order, after the row's key got its slot (so an eviction's ``on_evict`` comes first)."""
        x = np.asarray(x, dtype=np.float64)
        n = len(keys)
        if x.shape != (n, self.channels):
            raise ValueError(f"x must have shape ({n}, {self.channels}), got {x.shape}")
        offsets = np.asarray(offsets, dtype=np.int64).reshape(n)
        # Python per record: the slot and its incarnation (a slot taken by a new key within
        # the batch starts a new one, without history), and the learner's verdict.
        inc_of = np.empty(n, dtype=np.int64)
        inc_slot: list[int] = []
        inc_history: list[bool] = []
        current: dict[int, int] = {}  # slot -> its incarnation in this batch
        ready = np.ones(n, dtype=bool)
        slots = self._slots
        for i, key in enumerate(keys):
            slot = slots.get(key)
            if slot is None:
                slot = self._admit(key)
                inc = current[slot] = len(inc_slot)
                inc_slot.append(slot)
                inc_history.append(False)
            else:
                slots.move_to_end(key)
                inc = current.get(slot, -1)
                if inc < 0:
                    inc = current[slot] = len(inc_slot)
                    inc_slot.append(slot)
                    inc_history.append(True)
            inc_of[i] = inc
            if learner is not None and not learner.is_ready(key):
                ready[i] = learner.observe(key, x[i])
        return self._write_batch(x, offsets, inc_of, np.array(inc_slot, dtype=np.int64),
                                 np.array(inc_history, dtype=bool), ready)  # fmt: skip

    def _write_batch(
        self,
        x: np.ndarray,
        offsets: np.ndarray,
        inc_of: np.ndarray,
        inc_slot: np.ndarray,
        inc_history: np.ndarray,
        ready: np.ndarray,
    ) -> WindowBatch:
        """Gather the batch's windows and rewrite the rings (see `push_many`), vectorised.

        Each incarnation's records form a *virtual sequence*: its ring's W entries oldest first,
        then its batch rows. The batch row of rank k closes the window at virtual positions
        ``k+1 .. k+W``; after the batch the ring holds the last W of the sequence, right-aligned
        with head 0 (the layout `from_state` restores)."""
        w, n = self.window, x.shape[0]
        n_inc = inc_slot.shape[0]
        head = np.where(inc_history, self._head[inc_slot], 0)
        filled = np.where(inc_history, self._filled[inc_slot], 0)
        seen = np.where(inc_history, self._seen[inc_slot], 0)
        counts = np.bincount(inc_of, minlength=n_inc)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        by_inc = np.argsort(inc_of, kind="stable")  # batch rows grouped by incarnation, in order
        rank = np.empty(n, dtype=np.int64)
        rank[by_inc] = np.arange(n) - starts[inc_of[by_inc]]
        flat_values = self._values.reshape(-1, self.channels)
        flat_offsets = self._offsets.reshape(-1)

        def locate(inc: np.ndarray, position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """Virtual ``position`` of incarnation ``inc`` -> (in the ring?, flat ring index or
            batch row)."""
            in_ring = position < w
            ring = inc_slot[inc] * w + (head[inc] + position) % w
            row = by_inc[starts[inc] + np.where(in_ring, 0, position - w)]
            return in_ring, np.where(in_ring, ring, row)

        def gather(in_ring: np.ndarray, where: np.ndarray) -> np.ndarray:
            values = flat_values[np.where(in_ring, where, 0)]
            values[~in_ring] = x[where[~in_ring]]
            return values

        def gather_offsets(in_ring: np.ndarray, where: np.ndarray) -> np.ndarray:
            ring = flat_offsets[np.where(in_ring, where, 0)]
            return np.where(in_ring, ring, offsets[np.where(in_ring, 0, where)])

        closing = np.flatnonzero(ready & (filled[inc_of] + rank + 1 >= w))
        inc = inc_of[closing][:, None]
        in_ring, where = locate(inc, rank[closing][:, None] + 1 + np.arange(w)[None, :])
        windows = gather(in_ring, where)
        first_offsets = gather_offsets(in_ring[:, 0], where[:, 0])

        # The last incarnation of each slot is what the slot holds after the batch.
        last = np.zeros(self._values.shape[0], dtype=np.int64) - 1
        last[inc_slot] = np.arange(n_inc)  # later incarnations overwrite earlier ones
        final = last[last >= 0]
        tail = counts[final][:, None] + np.arange(w)[None, :]
        in_ring, where = locate(final[:, None], tail)
        slot = inc_slot[final]
        self._values[slot] = gather(in_ring, where)
        self._offsets[slot] = gather_offsets(in_ring, where)
        self._head[slot] = 0
        self._filled[slot] = np.minimum(w, filled[final] + counts[final])
        self._seen[slot] = seen[final] + counts[final]
        return WindowBatch(closing, windows, first_offsets, offsets[closing])

    def discard(self, key: str) -> bool:
        """Forget ``key`` (its partition was revoked); True when it was held. Not an eviction."""
        slot = self._slots.pop(key, None)
        if slot is None:
            return False
        self._free.append(slot)
        return True

    def records_seen(self, key: str) -> int:
        """Records pushed for ``key`` since it was (re)admitted; 0 when not held."""
        slot = self._slots.get(key)
        return 0 if slot is None else int(self._seen[slot])

    def export_state(self) -> dict[str, np.ndarray]:
        """Every key's window as plain arrays, least recently seen key first.

        ``values`` (K, W, channels) and ``offsets`` (K, W) hold each key's records oldest first,
        right-aligned: the last ``filled[k]`` entries are real, the rest is padding. ``meta`` is
        ``[format version, window, channels, evicted]``.
        """
        slots = np.fromiter(self._slots.values(), dtype=np.int64, count=len(self._slots))
        order = (self._head[slots][:, None] + np.arange(self.window)) % self.window  # oldest first
        values = self._values[slots[:, None], order]
        offsets = self._offsets[slots[:, None], order]
        keys = np.array(list(self._slots), dtype=np.str_) if len(slots) else np.zeros(0, "U1")
        return {
            "keys": keys,
            "filled": self._filled[slots],
            "seen": self._seen[slots],
            "values": values,
            "offsets": offsets,
            "meta": np.array(
                [STATE_FORMAT_VERSION, self.window, self.channels, self.evicted], dtype=np.int64
            ),
        }

    def state_bytes(self) -> bytes:
        """`export_state` as one uncompressed ``.npz`` blob (float64 kept exact)."""
        buffer = io.BytesIO()
        np.savez(buffer, **self.export_state())  # type: ignore[arg-type]
        return buffer.getvalue()

    @classmethod
    def from_state(
        cls,
        state: dict[str, np.ndarray],
        max_keys: int,
        on_evict: Callable[[str], None] | None = None,
    ) -> KeyedWindows:
        """A store holding exported windows, with the next push giving what the exporting store
        would have given. With fewer ``max_keys`` than exported keys the least recently seen
        ones are evicted (counted, and passed to ``on_evict``). ValueError for another format."""
        missing = [name for name in _STATE_ARRAYS if name not in state]
        if missing:
            raise ValueError(f"window state lacks {', '.join(missing)}")
        version, window, channels, evicted = (int(v) for v in state["meta"])
        if version != STATE_FORMAT_VERSION:
            raise ValueError(f"window state format {version}, expected {STATE_FORMAT_VERSION}")
        store = cls(window, channels, max_keys, on_evict)
        keys = [str(k) for k in state["keys"]]
        keep = max(0, len(keys) - store.max_keys)
        store.evicted = evicted + keep
        for gone in keys[:keep]:
            if on_evict is not None:
                on_evict(gone)
        n = len(keys) - keep
        if n > store._values.shape[0]:
            store._allocate(n)
        # Slots 0..n-1 in the exported (least recently seen first) order. Right-aligned rows
        # with head 0: the next write replaces the oldest record (or padding) and the ring reads
        # oldest first from its head, exactly as in the exporting store.
        store._values[:n] = state["values"][keep:]
        store._offsets[:n] = state["offsets"][keep:]
        store._head[:n] = 0
        store._filled[:n] = state["filled"][keep:]
        store._seen[:n] = state["seen"][keep:]
        store._slots = OrderedDict(zip(keys[keep:], range(n), strict=True))
        store._free = list(range(store._values.shape[0] - 1, n - 1, -1))
        return store

    @classmethod
    def from_state_bytes(
        cls, blob: bytes, max_keys: int, on_evict: Callable[[str], None] | None = None
    ) -> KeyedWindows:
        """The store `state_bytes` wrote."""
        with np.load(io.BytesIO(blob), allow_pickle=False) as arrays:
            state = {name: arrays[name] for name in arrays.files}
        return cls.from_state(state, max_keys, on_evict)
