"""Per-key normalisation: one model serves keys that differ in level and spread.

One machine idles at 20 °C, another at 60 °C; a single global scaler would make the first look
permanently cold and the second permanently hot, and the model would spend its capacity on levels
instead of shapes. `KeyNormaliser` maps each key's channels to ``(x - mean_k) / std_k`` with that
key's own statistics, learnt from its training rows and stored with the model (`to_json`).

**Why mean/std, not median/IQR.** A key that was not in training learns its statistics online
from its first records, and the online estimate must be the same statistic as the offline one so
that a new key ends up normalised like a trained one. Welford's algorithm gives the exact
mean/std of the rows seen in O(channels) memory per key; a streaming median/IQR needs a sketch
and is only approximate, which would break "the worker emits exactly what ``score`` gives".
Anomalies are a few per cent of a key's rows, so their pull on the mean/std is small; a stuck
(constant) training channel is handled by a floor: ``std_k >= min_std_share * pooled std``.

**Warm-up rule for unseen keys.** A key without training statistics is *warming* for its first
``warmup_records`` records: each updates its Welford statistics and none is scored. When the
count reaches ``warmup_records`` the statistics freeze, and from then on the key is normalised
exactly like a trained key. Freezing (rather than learning forever) keeps a slow drift or a
level shift from being absorbed into the key's "normal", makes the result independent of how
long the worker has run, and lets ``score`` reproduce it by replaying the key's rows in order
through the same `observe`. Online statistics are worker state: `online_state` /
`restore_online` carry them across restarts. NumPy only: the worker imports this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from anomaly_contract.key_codes import key_codes

NORMALISER_FORMAT = "key-mean-std/1"
DEFAULT_WARMUP_RECORDS = 64
DEFAULT_MIN_STD_SHARE = 0.01


class KeyNormaliser:
    """Per-key channel means and standard deviations (trained keys frozen, new keys online)."""

    def __init__(
        self,
        means: dict[str, np.ndarray],
        stds: dict[str, np.ndarray],
        pooled_mean: np.ndarray,
        pooled_std: np.ndarray,
        *,
        warmup_records: int = DEFAULT_WARMUP_RECORDS,
        min_std_share: float = DEFAULT_MIN_STD_SHARE,
    ) -> None:
        if warmup_records < 2:
            raise ValueError("warmup_records must be at least 2 (a spread needs two records)")
        self.pooled_mean = np.asarray(pooled_mean, dtype=np.float64)
        self.pooled_std = np.asarray(pooled_std, dtype=np.float64)
        self.channels = int(self.pooled_mean.shape[0])
        self.warmup_records = int(warmup_records)
        self.min_std_share = float(min_std_share)
        spread = np.where(self.pooled_std > 0, self.pooled_std, 1.0)
        self._std_floor = np.maximum(self.min_std_share * spread, 1e-12)
        self._mean = {k: np.asarray(v, dtype=np.float64) for k, v in means.items()}
        self._std = {k: self._floored(np.asarray(v, dtype=np.float64)) for k, v in stds.items()}
        self._trained = frozenset(self._mean)
        # Welford accumulators of keys still warming: key -> (count, mean, m2).
        self._online: dict[str, tuple[int, np.ndarray, np.ndarray]] = {}

    def _floored(self, std: np.ndarray) -> np.ndarray:
        return np.maximum(std, self._std_floor)

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        keys: Sequence[str] | np.ndarray,
        *,
        warmup_records: int = DEFAULT_WARMUP_RECORDS,
        min_std_share: float = DEFAULT_MIN_STD_SHARE,
    ) -> KeyNormaliser:
        """Learn each key's statistics from its training rows ``x`` (rows, channels).

        ``keys`` is one ``str`` per row. Standard deviations are population ones (``ddof=0``),
        the same as Welford's ``m2 / n``, so a key learnt online from the same rows matches.
        """
        values = np.asarray(x, dtype=np.float64)
        if values.ndim != 2 or values.shape[0] == 0:
            raise ValueError(f"x must be a non-empty (rows, channels) array, got {values.shape}")
        names, codes = np.unique(np.asarray(keys, dtype=object), return_inverse=True)
        codes = codes.reshape(-1)
        if codes.shape[0] != values.shape[0]:
            raise ValueError("keys must hold one value per row")
        counts = np.bincount(codes, minlength=len(names)).astype(np.float64)[:, None]
        sums = np.zeros((len(names), values.shape[1]))
        np.add.at(sums, codes, values)
        means = sums / counts
        squares = np.zeros_like(sums)
        np.add.at(squares, codes, (values - means[codes]) ** 2)
        stds = np.sqrt(squares / counts)
        return cls(
            {str(k): means[i] for i, k in enumerate(names)},
            {str(k): stds[i] for i, k in enumerate(names)},
            values.mean(axis=0),
            values.std(axis=0),
            warmup_records=warmup_records,
            min_std_share=min_std_share,
        )

    # ----------------------------------------------------------------------------------------
    # Serving
    # ----------------------------------------------------------------------------------------
    def trained_keys(self) -> frozenset[str]:
        return self._trained

    def is_ready(self, key: str) -> bool:
        """True when ``key`` has statistics (trained, or learnt online and frozen)."""
        return key in self._mean

    def observe(self, key: str, vector: np.ndarray) -> bool:
        """Let an unseen key learn from one record (Welford); True once the key is ready.

        Trained and frozen keys ignore the record. Call it for every record of a key, in order,
        before scoring that record: the record that completes the warm-up is the first one
        normalised with the frozen statistics."""
        if key in self._mean:
            return True
        row = np.asarray(vector, dtype=np.float64)
        if row.shape != (self.channels,):
            raise ValueError(f"vector must have shape ({self.channels},), got {row.shape}")
        count, mean, m2 = self._online.get(
            key, (0, np.zeros(self.channels), np.zeros(self.channels))
        )
        count += 1
        delta = row - mean
        mean = mean + delta / count
        m2 = m2 + delta * (row - mean)
        if count < self.warmup_records:
            self._online[key] = (count, mean, m2)
            return False
        self._online.pop(key, None)
        self._mean[key] = mean
        self._std[key] = self._floored(np.sqrt(m2 / count))
        return True

    def forget(self, key: str) -> None:
        """Drop what was learnt online for ``key`` (evicted or revoked); trained keys stay."""
        self._online.pop(key, None)
        if key not in self._trained:
            self._mean.pop(key, None)
            self._std.pop(key, None)

    def statistics(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, std)`` of a ready key; KeyError while it warms up."""
        if key not in self._mean:
            raise KeyError(f"key {key!r} has no statistics yet (warming)")
        return self._mean[key], self._std[key]

    def transform(self, key: str, values: np.ndarray) -> np.ndarray:
        """``values`` (..., channels) of ``key`` normalised; KeyError while the key warms up."""
        mean, std = self.statistics(key)
        return (np.asarray(values, dtype=np.float64) - mean) / std

    def transform_rows(self, x: np.ndarray, keys: Sequence[str] | np.ndarray) -> np.ndarray:
        """Rows ``x`` (rows, channels), one key per row, each normalised with its key's
        statistics, vectorised (offline). KeyError names the first key without statistics."""
        values = np.asarray(x, dtype=np.float64)
        names, codes = key_codes(keys)
        missing = [k for k in names if k not in self._mean]
        if missing:
            raise KeyError(f"key {missing[0]!r} has no statistics yet (warming)")
        means = np.stack([self._mean[k] for k in names])
        stds = np.stack([self._std[k] for k in names])
        return (values - means[codes]) / stds[codes]

    # ----------------------------------------------------------------------------------------
    # Persistence
    # ----------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The trained statistics as JSON-able data, stored with the model (online keys are
        worker state, see `online_state`). Floats survive the JSON round trip exactly."""
        return {
            "format": NORMALISER_FORMAT,
            "warmup_records": self.warmup_records,
            "min_std_share": self.min_std_share,
            "pooled_mean": self.pooled_mean.tolist(),
            "pooled_std": self.pooled_std.tolist(),
            "keys": {
                k: {"mean": self._mean[k].tolist(), "std": self._std[k].tolist()}
                for k in sorted(self._trained)
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyNormaliser:
        """The normaliser `to_json` described; ValueError for another format."""
        if data.get("format") != NORMALISER_FORMAT:
            raise ValueError(
                f"normaliser format {data.get('format')!r}, expected {NORMALISER_FORMAT}"
            )
        keys = data["keys"]
        return cls(
            {k: np.asarray(v["mean"]) for k, v in keys.items()},
            {k: np.asarray(v["std"]) for k, v in keys.items()},
            np.asarray(data["pooled_mean"]),
            np.asarray(data["pooled_std"]),
            warmup_records=int(data["warmup_records"]),
            min_std_share=float(data["min_std_share"]),
        )

    def online_state(self) -> dict[str, Any]:
        """What unseen keys learnt so far (warming accumulators and frozen statistics),
        JSON-able, for the worker to carry across restarts."""
        frozen = sorted(k for k in self._mean if k not in self._trained)
        return {
            "warming": {
                k: {"count": c, "mean": m.tolist(), "m2": s.tolist()}
                for k, (c, m, s) in self._online.items()
            },
            "frozen": {
                k: {"mean": self._mean[k].tolist(), "std": self._std[k].tolist()} for k in frozen
            },
        }

    def restore_online(self, state: dict[str, Any]) -> None:
        """Take back what `online_state` exported (replacing what was learnt online so far)."""
        for key in [k for k in self._mean if k not in self._trained]:
            self.forget(key)
        self._online = {
            k: (
                int(v["count"]),
                np.asarray(v["mean"], dtype=np.float64),
                np.asarray(v["m2"], dtype=np.float64),
            )
            for k, v in state.get("warming", {}).items()
        }
        for k, v in state.get("frozen", {}).items():
            if k not in self._trained:
                self._mean[k] = np.asarray(v["mean"], dtype=np.float64)
                self._std[k] = np.asarray(v["std"], dtype=np.float64)
