"""The NumPy engines' activations: tanh and sigmoid by one exp, against NumPy's own."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_contract.engines import ACTIVATIONS

EXTREMES = [0.0, -0.0, 1e-300, -1e-12, 19.0, -19.0, 354.0, -355.0, 710.0, -710.0, 1e308, -1e308]


def _inputs() -> np.ndarray:
    rng = np.random.default_rng(11)
    return np.concatenate([rng.standard_normal(200_000) * 8.0, EXTREMES, [np.inf, -np.inf]])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):  # inf / inf in the branch not taken
        return np.where(x >= 0, 1.0 / (1.0 + np.exp(-x)), np.exp(x) / (1.0 + np.exp(x)))


@pytest.mark.parametrize(("name", "reference"), [("tanh", np.tanh), ("sigmoid", _sigmoid)])
def test_activation_within_an_ulp_or_two_of_numpy(name: str, reference) -> None:
    x = _inputs()
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # handled inside
        got = ACTIVATIONS[name](x.copy())
    want = reference(x)
    assert np.isfinite(got).all()
    assert np.max(np.abs(got - want)) <= 4.5e-16  # what the next layer's product sees


def test_activations_work_in_place_and_keep_nan() -> None:
    for name in ("tanh", "sigmoid"):
        x = np.array([[0.5, np.nan], [-2.0, 3.0]])
        out = ACTIVATIONS[name](x)
        assert out is x and np.isnan(out[0, 1])
