"""The offline path (`SeriesModel.score_rows`) and the streaming path (`SeriesState.push` +
`score_windows`) give the same scores for the same rows of each key, with interleaved, trained
and unseen keys (NumPy engine: identical to 1e-12)."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_contract.artifact import Manifest
from anomaly_contract.series import SeriesModel, SeriesState, series_key, series_keys
from tests.unit.series.series_fixtures import keyed_rows, series_bundle

WINDOW, CHANNELS, WARMUP = 6, 3, 16


def _model(trained: list[str]) -> SeriesModel:
    x, keys = keyed_rows(900, trained, CHANNELS, seed=1)
    return _series(x, keys)


def _series(x: np.ndarray, keys: np.ndarray) -> SeriesModel:
    return series_bundle(WINDOW, CHANNELS, x, keys, warmup=WARMUP).series


def _stream(model: SeriesModel, x: np.ndarray, keys: np.ndarray, batch: int) -> np.ndarray:
    """Push every row in input order; score the windows in micro-batches of ``batch``."""
    state = SeriesState(model, max_keys=1000)
    scores = np.full(x.shape[0], np.nan)
    pending: list[tuple[int, np.ndarray, str]] = []

    def flush() -> None:
        if pending:
            rows = [p[0] for p in pending]
            result = model.score_windows(np.stack([p[1] for p in pending]), [p[2] for p in pending])
            scores[rows] = result.scores
            pending.clear()

    for offset, (row, key) in enumerate(zip(x, keys, strict=True)):
        window = state.push(str(key), row, offset)
        if window is not None:
            assert window.last_offset == offset
            pending.append((offset, window.values, str(key)))
        if len(pending) >= batch:
            flush()
    flush()
    return scores


@pytest.mark.parametrize("batch", [1, 7, 500])
def test_streaming_gives_the_offline_scores_with_trained_and_unseen_keys(batch: int):
    model = _model(["a", "b", "c", "d"])
    x, keys = keyed_rows(700, ["a", "b", "c", "new-1", "new-2"], CHANNELS, seed=2)
    offline = model.score_rows(x, keys)
    streamed = _stream(model, x, keys, batch)
    np.testing.assert_array_equal(np.isnan(offline.scores), np.isnan(streamed))
    scored = ~np.isnan(streamed)
    np.testing.assert_allclose(offline.scores[scored], streamed[scored], rtol=1e-12, atol=0)
    # Trained keys warm for W-1 rows; unseen keys until the normaliser has WARMUP records.
    for key, warming_rows in (("a", WINDOW - 1), ("new-1", WARMUP - 1)):
        rows_of_key = np.flatnonzero(keys == key)
        assert offline.warming[rows_of_key[:warming_rows]].all()
        assert not offline.warming[rows_of_key[warming_rows:]].any()


@pytest.mark.parametrize("steps", [1, 3, WINDOW])
def test_a_score_averages_the_errors_of_the_last_score_steps_rows(steps: int):
    x, keys = keyed_rows(300, ["a", "b"], CHANNELS, seed=8)
    model = series_bundle(WINDOW, CHANNELS, x, keys, warmup=WARMUP, score_steps=steps).series
    result = model.score_rows(x, keys)
    tail = result.element_errors[:, -steps:, :].reshape(result.scored_rows.size, -1)
    np.testing.assert_allclose(result.scores[result.scored_rows], tail.mean(axis=1), rtol=1e-12)
    streamed = _stream(model, x, keys, batch=9)
    np.testing.assert_allclose(streamed, result.scores, rtol=1e-12)


def test_offline_scores_do_not_depend_on_the_row_order_across_keys():
    model = _model(["a", "b"])
    x, keys = keyed_rows(400, ["a", "b", "z"], CHANNELS, seed=3)
    t = np.arange(400, dtype=np.float64)
    perm = np.random.default_rng(0).permutation(400)
    in_order = model.score_rows(x, keys, t)
    shuffled = model.score_rows(x[perm], keys[perm], t[perm])
    np.testing.assert_allclose(shuffled.scores, in_order.scores[perm], rtol=1e-12)
    assert np.array_equal(shuffled.warming, in_order.warming[perm])


def test_thresholds_are_per_key_with_the_pooled_one_for_unseen_keys():
    model = _model(["a", "b"])
    x, keys = keyed_rows(300, ["a", "b", "q"], CHANNELS, seed=4)
    result = model.score_rows(x, keys)
    for key in ("a", "b", "q"):
        rows = np.flatnonzero((keys == key) & ~result.warming)
        assert np.all(result.thresholds[rows] == model.thresholds.threshold(key))
    assert model.thresholds.threshold("q") == model.thresholds.pooled
    assert not result.is_anomaly[result.warming].any()
    assert result.element_errors.shape == (result.scored_rows.size, WINDOW, CHANNELS)


def test_a_key_with_fewer_rows_than_the_warm_up_is_never_scored():
    model = _model(["a"])
    x, keys = keyed_rows(60, ["a"], CHANNELS, seed=5)
    keys[:5] = "short"
    result = model.score_rows(x, keys)
    assert result.warming[:5].all() and np.isnan(result.scores[:5]).all()


def test_the_exported_state_continues_exactly_where_it_stopped():
    model = _model(["a", "b"])
    x, keys = keyed_rows(300, ["a", "b", "new"], CHANNELS, seed=6)
    uninterrupted = SeriesState(model, max_keys=100)
    first = [uninterrupted.push(str(k), r, i) for i, (r, k) in enumerate(zip(x, keys, strict=True))]
    model_b = _model(["a", "b"])
    state = SeriesState(model_b, max_keys=100)
    for i in range(150):
        state.push(str(keys[i]), x[i], i)
    restored = SeriesState.from_state(state.export_state(), _model(["a", "b"]), max_keys=100)
    assert len(restored) == len(state) and restored.keys() == state.keys()
    for i in range(150, 300):
        again = restored.push(str(keys[i]), x[i], i)
        assert (again is None) == (first[i] is None)
        if again is not None and first[i] is not None:
            assert np.array_equal(again.values, first[i].values)
            a = restored.model.score_windows(again.values[None], [str(keys[i])]).scores
            b = model.score_windows(first[i].values[None], [str(keys[i])]).scores
            assert np.array_equal(a, b)


def test_eviction_forgets_what_an_unseen_key_learnt_online():
    model = _model(["a"])
    state = SeriesState(model, max_keys=2)
    rng = np.random.default_rng(0)
    for i in range(WARMUP):
        state.push("new", rng.normal(size=CHANNELS), i)
    assert model.normaliser.is_ready("new")
    state.push("other", rng.normal(size=CHANNELS), 100)
    state.push("third", rng.normal(size=CHANNELS), 101)
    assert state.evicted == 1 and "new" not in state
    assert not model.normaliser.is_ready("new")
    assert state.push("new", rng.normal(size=CHANNELS), 102) is None


def test_a_state_of_another_shape_or_garbage_is_refused():
    model = _model(["a"])
    with pytest.raises(ValueError):
        SeriesState.from_state(b"not a state", model, max_keys=10)
    other = series_bundle(WINDOW + 1, CHANNELS, *keyed_rows(100, ["a"], CHANNELS)).series
    blob = SeriesState(other, max_keys=10).export_state()
    with pytest.raises(ValueError, match="windows of"):
        SeriesState.from_state(blob, model, max_keys=10)


def test_point_models_have_no_series_view_and_windowed_ones_refuse_rows():
    bundle = series_bundle(WINDOW, CHANNELS, *keyed_rows(100, ["a"], CHANNELS))
    with pytest.raises(ValueError, match="windows"):
        bundle.score(np.zeros((2, CHANNELS)))
    data = bundle.manifest.model_dump(mode="json")
    data.pop("series")
    point = Manifest.model_validate(data)
    assert point.series is None
    bundle.manifest = point
    bundle._series = None
    with pytest.raises(ValueError, match="point model"):
        _ = bundle.series


def test_key_values_have_one_string_form():
    assert [series_key(v) for v in (3, 3.0, "3", np.int64(3), b"3")] == ["3"] * 5
    assert series_key(2.5) == "2.5"
    assert list(series_keys([1, 2.0, 1], 3)) == ["1", "2", "1"]
    assert list(series_keys(None, 2)) == ["", ""]


def test_the_series_core_imports_without_tensorflow():
    import subprocess
    import sys

    probe = "import sys, anomaly_contract.series; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
