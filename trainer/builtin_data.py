"""Built-in data sets: scikit-learn's digits, Keras' MNIST and synthetic sensor readings.

The sensor generator is also what the demo producer and the worker tests stream from: every
reading carries its ground truth (``label``, ``anomaly_kind``, ``anomaly_sensor``), and reading
``i`` is the same whatever chunks it is generated in, so a stream can be reproduced exactly.

Only numpy is imported at module level: the worker tests import this module and must stay light.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable
from typing import Any

import numpy as np

from anomaly_contract.errors import DataError

SENSOR_FEATURES: tuple[str, ...] = (
    "rpm",
    "motor_current_a",
    "power_kw",
    "vibration_mm_s",
    "noise_db",
    "ambient_temp_c",
    "motor_temp_c",
    "bearing_temp_c",
    "coolant_temp_c",
    "humidity_pct",
    "oil_pressure_kpa",
    "inlet_pressure_kpa",
    "outlet_pressure_kpa",
    "flow_rate_l_min",
)
ANOMALY_KINDS: tuple[str, ...] = ("spike", "decoupled", "drift")
SENSORS_ROWS = 5000
SENSORS_ANOMALY_RATE = 0.04
SENSORS_SEED = 0
MNIST_DOWNLOAD_TIMEOUT_S = 60.0

# Readings are generated in fixed blocks with their own random stream, so reading i does not
# depend on where a caller starts or how many it asks for at once.
_BLOCK = 1000
# How the labelled rows split between kinds; drift windows label ~25 consecutive rows each.
_KIND_SHARE = {"spike": 0.50, "decoupled": 0.25, "drift": 0.25}
_DRIFT_LEN = (15, 35)
# Per-sensor measurement noise (standard deviation, in the sensor's unit).
_NOISE = np.array([15.0, 0.4, 0.8, 0.15, 0.6, 0.3, 0.8, 0.7, 0.5, 1.5, 3.0, 1.2, 2.5, 2.0])


def _clean_readings(load: np.ndarray, ambient: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Noise-free sensor values from the three latent factors: machine load, ambient temperature
    and coolant flow. Several sensors share each factor (some non-linearly), which is the
    structure an autoencoder learns and the "decoupled" anomalies break."""
    da = ambient - 21.0
    cols = [
        600.0 + 1200.0 * load,  # rpm
        8.0 + 22.0 * load + 4.0 * flow,  # motor_current_a
        3.0 + 45.0 * load**1.3 + 6.0 * flow,  # power_kw
        1.2 + 4.5 * load**2,  # vibration_mm_s
        68.0 + 14.0 * load,  # noise_db
        ambient,  # ambient_temp_c
        ambient + 25.0 + 30.0 * load,  # motor_temp_c
        ambient + 15.0 + 22.0 * load + 6.0 * load**2,  # bearing_temp_c
        ambient + 8.0 + 12.0 * load - 6.0 * flow,  # coolant_temp_c
        55.0 - 1.5 * da,  # humidity_pct
        280.0 + 60.0 * load - 0.8 * da,  # oil_pressure_kpa
        110.0 + 35.0 * flow,  # inlet_pressure_kpa
        140.0 + 90.0 * load + 45.0 * flow,  # outlet_pressure_kpa
        40.0 + 110.0 * flow + 10.0 * load,  # flow_rate_l_min
    ]
    return np.column_stack(cols)


def _phases(seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 0xFAC7]).uniform(0.0, 2.0 * math.pi, size=4)


def _sensor_block(block: int, anomaly_rate: float, seed: int) -> dict[str, Any]:
    """Readings ``block * _BLOCK ... + _BLOCK - 1`` with their ground truth."""
    rng = np.random.default_rng([seed, block])
    t = np.arange(block * _BLOCK, (block + 1) * _BLOCK, dtype=np.float64)
    ph = _phases(seed)
    two_pi = 2.0 * math.pi
    load = (
        0.5
        + 0.22 * np.sin(two_pi * t / 977.0 + ph[0])
        + 0.12 * np.sin(two_pi * t / 131.0 + ph[1])
        + 0.08 * rng.standard_normal(_BLOCK)
    )
    load = np.clip(load, 0.02, 0.98)
    ambient = 21.0 + 5.0 * np.sin(two_pi * t / 1440.0 + ph[2]) + 0.8 * rng.standard_normal(_BLOCK)
    flow = 0.5 + 0.2 * np.sin(two_pi * t / 389.0 + ph[3]) + 0.1 * rng.standard_normal(_BLOCK)
    flow = np.clip(flow, 0.0, 1.0)

    clean = _clean_readings(load, ambient, flow)
    values = clean + rng.standard_normal(clean.shape) * _NOISE
    # Anomaly sizes are relative to each sensor's normal spread in this block.
    spread = clean.std(axis=0) + _NOISE
    centre = np.median(clean, axis=0)

    kind = np.array(["none"] * _BLOCK, dtype=object)
    sensor = np.full(_BLOCK, -1)
    n_features = clean.shape[1]

    # Drift: one sensor's calibration slides away over a window of consecutive readings.
    free = np.ones(_BLOCK, dtype=bool)
    # Drift windows are rare and long; spread them evenly over blocks (low-discrepancy rounding)
    # so every few thousand readings hold some instead of leaving it to chance.
    per_block = anomaly_rate * _KIND_SHARE["drift"] * _BLOCK / (sum(_DRIFT_LEN) / 2)
    shift = _phases(seed)[0] / (2.0 * math.pi)
    n_drift = math.floor((block + 1) * per_block + shift) - math.floor(block * per_block + shift)
    for _ in range(n_drift):
        length = int(rng.integers(_DRIFT_LEN[0], _DRIFT_LEN[1] + 1))
        start = int(rng.integers(0, _BLOCK - length))
        window = slice(start, start + length)
        if not free[window].all():
            continue
        j = int(rng.integers(n_features))
        peak = rng.uniform(2.5, 4.0)
        sign = rng.choice([-1.0, 1.0])
        values[window, j] += sign * np.linspace(0.5, peak, length) * spread[j]
        free[window] = False
        kind[window] = "drift"
        sensor[window] = j

    candidates = np.flatnonzero(free)
    n_spike = rng.binomial(_BLOCK, anomaly_rate * _KIND_SHARE["spike"])
    n_decoupled = rng.binomial(_BLOCK, anomaly_rate * _KIND_SHARE["decoupled"])
    rows = rng.choice(candidates, size=min(len(candidates), n_spike + n_decoupled), replace=False)
    for k, i in enumerate(rows):
        j = int(rng.integers(n_features))
        if k < n_spike:
            # Spike: one sensor jumps far outside its normal range for one reading.
            values[i, j] += rng.uniform(6.0, 12.0) * spread[j]
            kind[i] = "spike"
        else:
            # Decoupled: one sensor stops following its factor. The value moves towards (and past)
            # the sensor's typical level, so it stays plausible on its own; only the broken
            # relation to the other sensors gives it away.
            towards = -1.0 if clean[i, j] > centre[j] else 1.0
            values[i, j] = (
                clean[i, j]
                + towards * rng.uniform(2.0, 3.0) * spread[j]
                + rng.standard_normal() * _NOISE[j]
            )
            kind[i] = "decoupled"
        sensor[i] = j

    return {
        "index": t.astype(np.int64),
        "values": np.round(values, 3),
        "kind": kind,
        "sensor": sensor,
    }


def _sensor_columns(n: int, anomaly_rate: float, seed: int, start_index: int) -> dict[str, Any]:
    if n < 0 or start_index < 0:
        raise ValueError("n and start_index must not be negative")
    if not 0.0 <= anomaly_rate <= 0.5:
        raise ValueError("anomaly_rate must lie in [0, 0.5]")
    if seed < 0:
        raise ValueError("seed must not be negative")
    stop = start_index + n
    parts = [
        _sensor_block(b, anomaly_rate, seed)
        for b in range(start_index // _BLOCK, (stop + _BLOCK - 1) // _BLOCK)
    ]
    if not parts:
        return {
            "index": np.zeros(0, np.int64),
            "values": np.zeros((0, len(SENSOR_FEATURES))),
            "kind": np.zeros(0, object),
            "sensor": np.zeros(0, np.int64),
        }
    joined = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    offset = start_index - (start_index // _BLOCK) * _BLOCK
    return {key: value[offset : offset + n] for key, value in joined.items()}


def sensor_id(index: int) -> str:
    """The ``id`` of reading ``index`` (stable across runs and chunkings)."""
    return f"s{index:08d}"


def make_sensor_records(
    n: int,
    anomaly_rate: float = SENSORS_ANOMALY_RATE,
    seed: int = SENSORS_SEED,
    start_index: int = 0,
) -> list[dict[str, Any]]:
    """Readings ``start_index .. start_index + n - 1`` as worker input records (flat shape).

    Each record is ``{"id", <14 sensor fields>, "label", "anomaly_kind", "anomaly_sensor"}``:
    ``label`` is 1 for injected anomalies, ``anomaly_kind`` one of ``none|spike|decoupled|drift``
    and ``anomaly_sensor`` the affected sensor's name (None for normal readings). Strip the three
    truth fields before producing if the consumer should not see them. Reading ``i`` is identical
    for the same ``seed`` and ``anomaly_rate`` however the stream is chunked.
    """
    cols = _sensor_columns(n, anomaly_rate, seed, start_index)
    records: list[dict[str, Any]] = []
    for idx, row, kind, j in zip(
        cols["index"].tolist(),
        cols["values"].tolist(),
        cols["kind"],
        cols["sensor"].tolist(),
        strict=True,
    ):
        record: dict[str, Any] = {"id": sensor_id(idx)}
        record.update(zip(SENSOR_FEATURES, row, strict=True))
        record["label"] = 0 if kind == "none" else 1
        record["anomaly_kind"] = kind
        record["anomaly_sensor"] = None if j < 0 else SENSOR_FEATURES[j]
        records.append(record)
    return records


def sensor_table(
    rows: int = SENSORS_ROWS,
    anomaly_rate: float = SENSORS_ANOMALY_RATE,
    seed: int = SENSORS_SEED,
) -> dict[str, Any]:
    """``builtin:sensors`` as columns: ``id``, the sensors, ``label``, ``anomaly_kind``,
    ``anomaly_sensor`` (the same readings as ``make_sensor_records(rows, ..., start_index=0)``)."""
    cols = _sensor_columns(rows, anomaly_rate, seed, 0)
    table: dict[str, Any] = {"id": [sensor_id(i) for i in cols["index"].tolist()]}
    for j, name in enumerate(SENSOR_FEATURES):
        table[name] = cols["values"][:, j]
    table["label"] = (cols["kind"] != "none").astype(np.int64)
    table["anomaly_kind"] = cols["kind"].astype(str)
    table["anomaly_sensor"] = [None if j < 0 else SENSOR_FEATURES[j] for j in cols["sensor"]]
    return table


def pixel_names(image_shape: tuple[int, ...]) -> list[str]:
    """Feature names for a flattened image: ``px<row>_<col>`` (plus ``_<channel>``)."""
    return ["px" + "_".join(str(i) for i in idx) for idx in np.ndindex(*image_shape)]


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as ``(1797, 8, 8)`` float64 in [0, 1], and the digit classes.

    ``builtin:digits`` leaves the classes out (they are not anomaly labels); one-class
    benchmarks use them from here.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float64) / 16.0
    return images, np.asarray(bunch.target, dtype=np.int64)


def _keras_mnist() -> tuple[np.ndarray, np.ndarray]:
    import keras

    (x_train, y_train), _ = keras.datasets.mnist.load_data()
    return x_train, y_train


def load_mnist_images(
    loader: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """MNIST's 60,000 training images as ``(60000, 28, 28)`` float64 in [0, 1], and the classes.

    Keras downloads the file on first use (then caches it in ``~/.keras/datasets``); without the
    internet this raises a one-line `DataError`. ``loader`` replaces the Keras call (tests).
    """
    load = loader or _keras_mnist
    previous = socket.getdefaulttimeout()
    # Keras' downloader has no timeout of its own; bound it so a black-holed network fails.
    if previous is None:
        socket.setdefaulttimeout(MNIST_DOWNLOAD_TIMEOUT_S)
    try:
        x, y = load()
    except Exception as exc:  # any download or cache failure means the same thing to the user
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise DataError(
            "builtin:mnist could not be loaded: Keras downloads MNIST from the internet on first "
            f"use ({reason}); connect to the internet once, or pass the images as a .npy/.npz file"
        ) from exc
    finally:
        if previous is None:
            socket.setdefaulttimeout(None)
    return np.asarray(x, dtype=np.float64) / 255.0, np.asarray(y, dtype=np.int64)
