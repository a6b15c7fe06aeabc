"""Built-in keyed series: ``builtin:machines`` and ``builtin:machines-ar`` (generated, offline).

Both are many machines (series keys) reporting a few channels at every tick, interleaved in time
like a stream (row ``t * keys + k`` is machine ``k`` at tick ``t``), with labelled anomalies that
only show over time. They differ in how the normal series are made, so the time-series benchmark
has two families:

- `machines_table`: periodic load (a per-machine period and phase plus a harmonic) drives the
  temperature (with a lag) and the vibration (quadratically); smooth AR(1) noise; every machine
  has its own levels and amplitudes (machine 0 idles at 20 °C, machine 1 at 60 °C).
- `machines_ar_table`: mean-reverting (Ornstein-Uhlenbeck) pressure, a flow that follows it and a
  valve that counters the flow, around set points that switch between two operating regimes at
  random times (normal, unlabelled regime changes).

Anomalies are ranges of 30-120 ticks labelled row by row (``label`` 1, ``anomaly_kind`` names
the kind), plus a few single-row spikes. Machine ``k`` depends only on ``(seed, k, length,
anomaly_share)``: a set with fewer keys holds the same first machines. Only numpy is imported.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MACHINE_CHANNELS: tuple[str, ...] = ("temp", "load", "vibration")
MACHINE_ANOMALY_KINDS: tuple[str, ...] = (
    "level_shift",
    "stuck",
    "rhythm",
    "variance",
    "drift",
    "spike",
)
AR_CHANNELS: tuple[str, ...] = ("pressure", "flow", "valve")
AR_ANOMALY_KINDS: tuple[str, ...] = (
    "level_shift",
    "stuck",
    "reversion_loss",
    "variance",
    "decoupled",
    "spike",
)
MACHINES_KEYS = 40
MACHINES_LENGTH = 2000
MACHINES_ANOMALY_SHARE = 0.05
MACHINES_SEED = 0

_RANGE_LEN = (30, 120)
_SPIKE_SHARE = 0.1  # of the labelled rows
_GAP = 10  # normal ticks kept between two anomalies of one machine
_FAMILY_MACHINES, _FAMILY_AR = 0x3AC1, 0x3AC2


def _check_options(keys: int, length: int, anomaly_share: float, seed: int) -> None:
    if keys < 1 or length < 2 * _RANGE_LEN[0]:
        raise ValueError(f"keys must be >= 1 and length >= {2 * _RANGE_LEN[0]}")
    if not 0.0 <= anomaly_share <= 0.3:
        raise ValueError("anomaly_share must lie in [0, 0.3]")
    if seed < 0:
        raise ValueError("seed must not be negative")


def _plan_anomalies(
    rng: np.random.Generator, key: int, length: int, share: float, ranged: tuple[str, ...]
) -> list[tuple[str, int, int]]:
    """Non-overlapping ``(kind, start, stop)`` ranges and spikes covering ~``share`` of the
    machine's ticks. Kinds take turns across machines (machine k starts at kind k), so every
    kind is present once there are a handful of machines; the first ticks stay normal so that
    windows warm up on normal data."""
    margin = min(64, length // 8)
    free = np.ones(length, dtype=bool)
    free[:margin] = False
    plan: list[tuple[str, int, int]] = []
    target = share * length * (1.0 - _SPIKE_SHARE)
    longest = max(_RANGE_LEN[0], min(_RANGE_LEN[1], (length - margin) // 4))
    covered, attempts = 0, 0
    while target - covered >= _RANGE_LEN[0] / 2 and attempts < 200:
        attempts += 1
        size = int(rng.integers(_RANGE_LEN[0], longest + 1))
        size = min(size, max(_RANGE_LEN[0], int(round(target - covered))))
        start = int(rng.integers(margin, length - size + 1))
        lo, hi = max(0, start - _GAP), min(length, start + size + _GAP)
        if not free[lo:hi].all():
            continue
        free[lo:hi] = False
        plan.append((ranged[(key + len(plan)) % len(ranged)], start, start + size))
        covered += size
    for _ in range(int(round(share * length * _SPIKE_SHARE))):
        candidates = np.flatnonzero(free)
        if not len(candidates):
            break
        tick = int(rng.choice(candidates))
        free[max(0, tick - _GAP) : tick + _GAP + 1] = False  # spikes stay single ticks
        plan.append(("spike", tick, tick + 1))
    return plan


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], phi: float) -> np.ndarray:
    """AR(1)-like noise with unit variance along axis 0 (white noise through a truncated
    exponential kernel: vectorised, no loop over ticks)."""
    taps = phi ** np.arange(int(math.ceil(math.log(1e-3) / math.log(phi))))
    taps /= math.sqrt(float((taps**2).sum()))
    white = rng.standard_normal((shape[0] + len(taps) - 1, shape[1]))
    return np.column_stack([np.convolve(white[:, j], taps, mode="valid") for j in range(shape[1])])


def _apply_value_anomalies(
    rng: np.random.Generator, values: np.ndarray, plan: list[tuple[str, int, int]]
) -> None:
    """The kinds that act on finished values, sized by each channel's spread on this machine."""
    spread = values.std(axis=0)
    for kind, start, stop in plan:
        j = int(rng.integers(values.shape[1]))
        sign = float(rng.choice([-1.0, 1.0]))
        if kind == "level_shift":
            values[start:stop, j] += sign * rng.uniform(1.5, 2.5) * spread[j]
        elif kind == "stuck":
            values[start:stop, j] = values[start, j]
        elif kind == "drift":
            values[start:stop, j] += (
                sign * np.linspace(0.0, rng.uniform(2.0, 3.5), stop - start) * spread[j]
            )
        elif kind == "spike":
            values[start, j] += sign * rng.uniform(5.0, 8.0) * spread[j]


def _machine(seed: int, key: int, length: int, share: float) -> tuple[np.ndarray, np.ndarray]:
    """One machine of ``builtin:machines``: values (length, 3) and the anomaly kind per tick."""
    rng = np.random.default_rng([seed, _FAMILY_MACHINES, key])
    idle = 20.0 if key == 0 else 60.0 if key == 1 else rng.uniform(22.0, 58.0)
    period, phase0 = rng.uniform(24.0, 96.0), rng.uniform(0.0, 2.0 * math.pi)
    load_mean, load_amp = rng.uniform(0.35, 0.65), rng.uniform(0.15, 0.3)
    temp_gain, lag = rng.uniform(10.0, 25.0), int(rng.integers(2, 9))
    vib_base, vib_gain = rng.uniform(0.5, 3.0), rng.uniform(1.0, 4.0)
    noise = np.array([0.4, 0.03, 0.08]) * rng.uniform(0.7, 1.3, size=3)
    plan = _plan_anomalies(rng, key, length, share, MACHINE_ANOMALY_KINDS[:-1])

    step = np.full(length, 2.0 * math.pi / period)
    scale = np.ones(length)
    for kind, start, stop in plan:
        if kind == "rhythm":  # the load cycle runs ~2x faster or slower, phase-continuous
            step[start:stop] *= float(rng.choice([0.45, 2.2])) * rng.uniform(0.9, 1.1)
        elif kind == "variance":
            scale[start:stop] = rng.uniform(3.0, 5.0)
    phase = phase0 + np.cumsum(step)
    cycle = np.sin(phase) + 0.3 * np.sin(2.0 * phase + 1.0)
    load_clean = load_mean + load_amp * cycle
    lagged = np.concatenate([np.full(lag, load_clean[0]), load_clean[:-lag]])
    smooth = _smooth_noise(rng, (length, 3), phi=0.8) * scale[:, None]
    values = np.column_stack(
        [
            idle + temp_gain * (lagged - load_mean) + noise[0] * smooth[:, 0],
            load_clean + noise[1] * smooth[:, 1],
            vib_base + vib_gain * load_clean**2 + noise[2] * smooth[:, 2],
        ]
    )
    _apply_value_anomalies(rng, values, plan)
    return values, _kinds(plan, length)


def _kinds(plan: list[tuple[str, int, int]], length: int) -> np.ndarray:
    kinds = np.full(length, "none", dtype=object)
    for kind, start, stop in plan:
        kinds[start:stop] = kind
    return kinds


def _ar_machines(seed: int, keys: int, length: int, share: float) -> tuple[np.ndarray, np.ndarray]:
    """All machines of ``builtin:machines-ar``: values (keys, length, 3) and kinds (keys, length).

    Each machine's parameters, regimes, anomalies and noise come from its own random stream; the
    recursion runs over ticks, vectorised across machines."""
    noise = np.empty((keys, length, 3))
    set_point = np.empty((keys, length, 3))
    theta = np.empty((keys, length))
    coupling = np.empty((keys, length))
    sigma = np.empty((keys, 3))
    plans = []
    for k in range(keys):
        rng = np.random.default_rng([seed, _FAMILY_AR, k])
        level = np.array([rng.uniform(2.0, 8.0), rng.uniform(20.0, 80.0), rng.uniform(30.0, 70.0)])
        offset = level * rng.uniform(0.08, 0.2, size=3) * np.array([1.0, 1.0, -1.0])
        # Regimes: dwell times ~ geometric with a per-machine mean of 200-500 ticks.
        switches = rng.random(length) < 1.0 / rng.uniform(200.0, 500.0)
        regime = np.cumsum(switches) % 2
        set_point[k] = level + regime[:, None] * offset
        sigma[k] = level * rng.uniform(0.01, 0.02, size=3)
        theta[k] = rng.uniform(0.08, 0.2)
        coupling[k] = rng.uniform(0.8, 1.5) * offset[1] / offset[0]
        plan = _plan_anomalies(rng, k, length, share, AR_ANOMALY_KINDS[:-1])
        scale = np.ones(length)
        for kind, start, stop in plan:
            if kind == "reversion_loss":  # a random walk with a slight drift: the loop broke
                theta[k, start:stop] = 0.0  # its drift enters through the noise mean below
            elif kind == "variance":
                scale[start:stop] = rng.uniform(3.0, 5.0)
            elif kind == "decoupled":  # the flow answers the pressure the wrong way round
                coupling[k, start:stop] *= -1.0
        noise[k] = rng.standard_normal((length, 3)) * scale[:, None]
        for kind, start, stop in plan:
            if kind == "reversion_loss":
                noise[k, start:stop, 0] += float(rng.choice([-1.0, 1.0])) * 0.6
        plans.append((rng, plan))

    values = np.empty((keys, length, 3))
    values[:, 0] = set_point[:, 0]
    for t in range(1, length):
        prev, target = values[:, t - 1], set_point[:, t]
        pressure = (
            prev[:, 0] + theta[:, t] * (target[:, 0] - prev[:, 0]) + sigma[:, 0] * noise[:, t, 0]
        )
        flow_target = target[:, 1] + coupling[:, t] * (pressure - target[:, 0])
        flow = prev[:, 1] + 0.5 * (flow_target - prev[:, 1]) + sigma[:, 1] * noise[:, t, 1]
        valve_target = target[:, 2] - 0.5 * (flow - target[:, 1])
        valve = prev[:, 2] + 0.3 * (valve_target - prev[:, 2]) + sigma[:, 2] * noise[:, t, 2]
        values[:, t] = np.column_stack([pressure, flow, valve])
    kinds = np.empty((keys, length), dtype=object)
    for k, (rng, plan) in enumerate(plans):
        _apply_value_anomalies(rng, values[k], plan)
        kinds[k] = _kinds(plan, length)
    return values, kinds


def _table(
    prefix: str, channels: tuple[str, ...], values: np.ndarray, kinds: np.ndarray
) -> dict[str, Any]:
    """Columns interleaved in time: row ``t * keys + k`` is machine ``k`` at tick ``t``."""
    keys, length, _ = values.shape
    flat_values = np.round(values.transpose(1, 0, 2).reshape(keys * length, -1), 4)
    flat_kinds = kinds.T.reshape(-1).astype(str)
    table: dict[str, Any] = {
        "key": [f"{prefix}{k:03d}" for k in range(keys)] * length,
        "t": np.repeat(np.arange(length, dtype=np.int64), keys),
    }
    for j, name in enumerate(channels):
        table[name] = flat_values[:, j]
    table["label"] = (flat_kinds != "none").astype(np.int64)
    table["anomaly_kind"] = flat_kinds
    return table


def machines_table(
    keys: int = MACHINES_KEYS,
    length: int = MACHINES_LENGTH,
    anomaly_share: float = MACHINES_ANOMALY_SHARE,
    seed: int = MACHINES_SEED,
) -> dict[str, Any]:
    """``builtin:machines`` as columns: ``key`` (``m000``...), ``t``, ``temp``, ``load``,
    ``vibration``, ``label`` and ``anomaly_kind`` (one of `MACHINE_ANOMALY_KINDS` or ``none``);
    ``keys * length`` rows, about ``anomaly_share`` of them labelled."""
    _check_options(keys, length, anomaly_share, seed)
    parts = [_machine(seed, k, length, anomaly_share) for k in range(keys)]
    values = np.stack([v for v, _ in parts])
    kinds = np.stack([c for _, c in parts])
    return _table("m", MACHINE_CHANNELS, values, kinds)


def machines_ar_table(
    keys: int = MACHINES_KEYS,
    length: int = MACHINES_LENGTH,
    anomaly_share: float = MACHINES_ANOMALY_SHARE,
    seed: int = MACHINES_SEED,
) -> dict[str, Any]:
    """``builtin:machines-ar`` as columns: ``key`` (``u000``...), ``t``, ``pressure``, ``flow``,
    ``valve``, ``label`` and ``anomaly_kind`` (one of `AR_ANOMALY_KINDS` or ``none``)."""
    _check_options(keys, length, anomaly_share, seed)
    values, kinds = _ar_machines(seed, keys, length, anomaly_share)
    return _table("u", AR_CHANNELS, values, kinds)
