"""Per-key normalisation: learnt per key, JSON round trip, online learning for unseen keys."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anomaly_contract.key_normaliser import KeyNormaliser


def _two_machines(n: int = 500, seed: int = 0):
    rng = np.random.default_rng(seed)
    cold = rng.normal([20.0, 0.3], [1.0, 0.05], size=(n, 2))
    hot = rng.normal([60.0, 0.7], [3.0, 0.10], size=(n, 2))
    x = np.vstack([cold, hot])
    keys = np.array(["cold"] * n + ["hot"] * n)
    return x, keys


def test_each_key_is_centred_and_scaled_with_its_own_statistics():
    x, keys = _two_machines()
    normaliser = KeyNormaliser.fit(x, keys)
    z = normaliser.transform_rows(x, keys)
    for key in ("cold", "hot"):
        own = z[keys == key]
        assert np.allclose(own.mean(axis=0), 0.0, atol=1e-9)
        assert np.allclose(own.std(axis=0), 1.0, atol=1e-9)
    # 40 °C is far above normal for the cold machine and far below it for the hot one.
    probe = np.array([40.0, 0.5])
    assert normaliser.transform("cold", probe)[0] > 15
    assert normaliser.transform("hot", probe)[0] < -5
    # The row-at-a-time path gives the same numbers as the vectorised one.
    assert np.allclose(normaliser.transform("hot", x[-1]), z[-1])


def test_the_json_round_trip_keeps_every_number():
    x, keys = _two_machines()
    normaliser = KeyNormaliser.fit(x, keys, warmup_records=10, min_std_share=0.05)
    again = KeyNormaliser.from_json(json.loads(json.dumps(normaliser.to_json())))
    assert again.to_json() == normaliser.to_json()
    assert np.array_equal(again.transform_rows(x, keys), normaliser.transform_rows(x, keys))
    assert again.trained_keys() == {"cold", "hot"} and again.warmup_records == 10
    with pytest.raises(ValueError, match="format"):
        KeyNormaliser.from_json({**normaliser.to_json(), "format": "other"})


def test_a_stuck_training_channel_gets_a_floor_instead_of_a_zero_spread():
    x, keys = _two_machines()
    x[keys == "cold", 1] = 0.3  # the cold machine's second sensor never moved in training
    normaliser = KeyNormaliser.fit(x, keys)
    _, std = normaliser.statistics("cold")
    assert std[1] == pytest.approx(0.01 * x[:, 1].std())
    assert np.isfinite(normaliser.transform("cold", np.array([20.0, 0.31]))).all()


def test_an_unseen_key_warms_up_then_matches_its_own_batch_statistics():
    x, keys = _two_machines()
    normaliser = KeyNormaliser.fit(x, keys, warmup_records=200)
    rng = np.random.default_rng(5)
    new = rng.normal([45.0, 0.5], [2.0, 0.2], size=(300, 2))
    ready = [normaliser.observe("new", row) for row in new]
    # Warming for the first 199 records; the 200th completes the warm-up.
    assert ready.index(True) == 199 and all(ready[199:])
    assert not any(ready[:199])
    mean, std = normaliser.statistics("new")
    assert np.allclose(mean, new[:200].mean(axis=0), rtol=1e-12)
    assert np.allclose(std, new[:200].std(axis=0), rtol=1e-12)
    # ... and it converged to the key's true level and spread.
    assert np.allclose(mean, [45.0, 0.5], atol=[0.4, 0.04])
    assert np.allclose(std, [2.0, 0.2], rtol=0.15)
    # Frozen: later records (a level shift) do not move the statistics.
    normaliser.observe("new", np.array([90.0, 3.0]))
    assert np.array_equal(normaliser.statistics("new")[0], mean)
    # Trained keys never learn online.
    before = normaliser.statistics("hot")[0].copy()
    assert normaliser.observe("hot", np.array([1e6, 1e6]))
    assert np.array_equal(normaliser.statistics("hot")[0], before)


def test_a_warming_key_cannot_be_transformed_and_forgetting_starts_it_over():
    x, keys = _two_machines()
    normaliser = KeyNormaliser.fit(x, keys, warmup_records=3)
    normaliser.observe("new", np.array([1.0, 1.0]))
    assert not normaliser.is_ready("new")
    with pytest.raises(KeyError, match="warming"):
        normaliser.transform("new", np.array([1.0, 1.0]))
    with pytest.raises(KeyError, match="new"):
        normaliser.transform_rows(x[:1], ["new"])
    normaliser.forget("new")
    normaliser.forget("hot")  # trained statistics stay
    assert normaliser.is_ready("hot")
    assert [normaliser.observe("new", np.array([float(i), 0.0])) for i in range(3)] == [
        False,
        False,
        True,
    ]


def test_online_state_survives_a_restart():
    x, keys = _two_machines()
    trained = KeyNormaliser.fit(x, keys, warmup_records=50).to_json()
    rng = np.random.default_rng(9)
    stream = [("a", rng.normal(size=2)) for _ in range(70)] + [
        ("b", rng.normal(size=2)) for _ in range(30)
    ]
    first = KeyNormaliser.from_json(trained)
    for key, row in stream[:90]:
        first.observe(key, row)
    second = KeyNormaliser.from_json(trained)
    second.restore_online(json.loads(json.dumps(first.online_state())))
    for key, row in stream[90:] + [("b", rng.normal(size=2)) for _ in range(30)]:
        assert first.observe(key, row) == second.observe(key, row)
    for key in ("a", "b"):
        assert np.array_equal(first.statistics(key)[0], second.statistics(key)[0])
        assert np.array_equal(first.statistics(key)[1], second.statistics(key)[1])
