"""The history clip of windowed models (`anomaly_contract.series.clip_history`): the network is
shown each window with the rows before the scored ones clipped to +-Z key standard deviations,
and the errors are measured against the window as it is: a spike in the history no longer
reaches the network, one in the scored row counts in full, a window within the clip scores
exactly as without it (what the clip gains on trained networks is measured in
`benchmarks/quality_series.py`); the offline and streaming paths agree; the field round-trips through the manifest
and a manifest without it is written and scored as before."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from anomaly_contract.artifact import HistoryClip, Manifest, ModelBundle
from anomaly_contract.series import clip_history, normalise_windows
from tests.unit.series.series_fixtures import keyed_rows, series_bundle
from tests.unit.series.test_series_parity import _stream

WINDOW, CHANNELS, WARMUP = 6, 3, 16
CLIP = 2.5


def _model(clip: float | None):  # type: ignore[no-untyped-def]
    x, keys = keyed_rows(900, ["a", "b", "c"], CHANNELS, seed=1)
    return series_bundle(WINDOW, CHANNELS, x, keys, warmup=WARMUP, history_clip=clip).series


def test_only_the_rows_before_the_scored_ones_are_clipped():
    windows = np.arange(2 * 4 * 2, dtype=np.float64).reshape(2, 4, 2) - 8.0  # -8 ... 7
    before = windows.copy()
    bounds = (np.array([-2.0, -3.0]), np.array([2.0, 3.0]))  # per channel
    shown = clip_history(windows, bounds, score_steps=1)
    np.testing.assert_array_equal(shown[:, :3, 0], np.clip(windows[:, :3, 0], -2.0, 2.0))
    np.testing.assert_array_equal(shown[:, :3, 1], np.clip(windows[:, :3, 1], -3.0, 3.0))
    np.testing.assert_array_equal(shown[:, 3], windows[:, 3])  # the scored row as it is
    np.testing.assert_array_equal(windows, before)  # the caller's windows are not changed
    two = clip_history(windows, bounds, score_steps=2)
    np.testing.assert_array_equal(two[:, 2:], windows[:, 2:])
    assert clip_history(windows, None, score_steps=1) is windows
    assert clip_history(windows, bounds, score_steps=4).tolist() == windows.tolist()


def _windows(model, spike_at: int | None, size: float = 40.0) -> np.ndarray:  # type: ignore[no-untyped-def]
    """A window of key "a" at its own level (normalised ~0), a spike of ``size`` key
    standard deviations in channel 1 at row ``spike_at``."""
    stats = model.normaliser.to_json()["keys"]["a"]
    mean, std = np.asarray(stats["mean"]), np.asarray(stats["std"])
    z = np.random.default_rng(3).normal(0, 0.3, size=(1, WINDOW, CHANNELS))
    if spike_at is not None:
        z[0, spike_at, 1] += size
    return mean + z * std


def test_the_network_sees_the_clipped_history_and_the_errors_the_window_as_it_is():
    clipped, plain = _model(CLIP), _model(None)
    windows = np.concatenate([_windows(plain, at) for at in (None, 0, 2, WINDOW - 1)])
    keys = ["a"] * windows.shape[0]
    got = clipped.score_windows(windows, keys)
    normalised = normalise_windows(windows, np.array(keys, dtype=object), plain.normaliser)
    bounds = (np.full(CHANNELS, -CLIP), np.full(CHANNELS, CLIP))
    rec = plain.reconstruct(clip_history(normalised, bounds, 1))
    errors = (normalised - rec) ** 2
    np.testing.assert_allclose(got.element_errors, errors, rtol=1e-12)
    np.testing.assert_allclose(got.scores, errors[:, -1, :].mean(axis=1), rtol=1e-12)
    # a past spike's own error still shows in the window's element errors (top_features' "steps
    # back"), and one in the scored row counts in full
    assert got.element_errors[1, 0, 1] > 100 * got.element_errors[0, 0, 1]
    assert got.scores[3] > 100 * got.scores[0]
    # the unclipped model shows the network the spike: another reconstruction
    assert not np.allclose(plain.score_windows(windows, keys).scores[1:3], got.scores[1:3])


def test_a_window_within_the_clip_scores_exactly_as_without_it():
    clipped, plain = _model(CLIP), _model(None)
    windows = _windows(plain, None)
    np.testing.assert_array_equal(
        clipped.score_windows(windows, ["a"]).scores, plain.score_windows(windows, ["a"]).scores
    )


@pytest.mark.parametrize("batch", [1, 7, 500])
def test_streaming_gives_the_offline_clipped_scores(batch: int):
    model = _model(CLIP)
    x, keys = keyed_rows(700, ["a", "b", "new-1"], CHANNELS, seed=4)
    x[::37, 1] += 30.0  # spikes, so that the clip is at work
    offline = model.score_rows(x, keys)
    streamed = _stream(model, x, keys, batch)
    np.testing.assert_array_equal(np.isnan(offline.scores), np.isnan(streamed))
    scored = ~np.isnan(streamed)
    np.testing.assert_allclose(offline.scores[scored], streamed[scored], rtol=1e-12, atol=0)
    unclipped = _model(None).score_rows(x, keys).scores
    assert not np.allclose(unclipped[scored], offline.scores[scored])


def test_the_clip_round_trips_and_a_manifest_without_it_is_written_as_before():
    with_clip = series_bundle(
        WINDOW, CHANNELS, *keyed_rows(300, ["a"], CHANNELS, seed=1), history_clip=CLIP
    )
    written = with_clip.manifest.model_dump_json()
    loaded = Manifest.model_validate_json(written)
    assert loaded == with_clip.manifest
    assert loaded.series is not None and loaded.series.history_clip is not None
    assert loaded.series.history_clip.high == [CLIP] * CHANNELS
    without = series_bundle(WINDOW, CHANNELS, *keyed_rows(300, ["a"], CHANNELS, seed=1))
    assert "history_clip" not in without.manifest.model_dump_json()  # older workers forbid it
    assert without.series.history_clip is None


@pytest.mark.parametrize(
    ("low", "high"),
    [
        ([-1.0, -1.0], [1.0]),
        ([0.0], [1.0]),
        ([-1.0], [-0.5]),
        ([float("nan")], [1.0]),
        ([-1.0], [float("inf")]),
        ([], []),
    ],
)
def test_bounds_that_do_not_hold_zero_on_each_channel_are_refused(low, high):  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError):
        HistoryClip(low=low, high=high)


def test_bounds_for_another_number_of_channels_are_refused():
    bundle = series_bundle(WINDOW, CHANNELS, *keyed_rows(300, ["a"], CHANNELS, seed=1))
    assert bundle.manifest.series is not None
    series = bundle.manifest.series.model_copy(
        update={"history_clip": HistoryClip(low=[-1.0], high=[1.0])}
    )
    manifest = bundle.manifest.model_copy(update={"series": series})
    with pytest.raises(ValueError, match="1 bounds for 3 channels"):
        _ = ModelBundle(
            manifest=manifest, scaler=bundle.scaler, path=bundle.path, engine=bundle.engine
        ).series
