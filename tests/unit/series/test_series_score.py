"""The ``channel_max`` score of windowed models (`anomaly_contract.series.window_scores`): each
channel's error of the scored rows over its calibrated scale, the largest of them; and the
``blend`` of that and the mean, each over its own scale. A manifest without the field scores
exactly as before (the mean over every channel); the offline and streaming paths agree for the
new scores too; the fields round-trip through the manifest."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from anomaly_contract.artifact import Manifest, ModelBundle, SeriesParams
from anomaly_contract.series import SeriesModel, channel_errors, window_scores
from tests.unit.series.series_fixtures import keyed_rows, series_bundle
from tests.unit.series.test_series_parity import _stream

WINDOW, CHANNELS, WARMUP = 6, 3, 16
SCALES = [0.5, 2.0, 8.0]


OWN = {"a": [4.0, 0.25, 1.0]}  # key "a" has its own scales; "b", "c" and unseen keys pool
BLEND = [0.3, 5.0]  # the mean's scale, the channel max's


def _bundle(  # type: ignore[no-untyped-def]
    steps: int = 1,
    scales: list[float] | None = None,
    own: dict[str, list[float]] | None = None,
    blend: list[float] | None = None,
):
    x, keys = keyed_rows(900, ["a", "b", "c"], CHANNELS, seed=1)
    return series_bundle(
        WINDOW,
        CHANNELS,
        x,
        keys,
        warmup=WARMUP,
        score_steps=steps,
        channel_scales=scales,
        key_channel_scales=own,
        blend_scales=blend,
    )


def test_a_manifest_without_the_score_field_scores_exactly_as_before():
    bundle = _bundle(steps=2)
    written = bundle.manifest.model_dump_json()
    # A "mean" manifest is written as before the field existed (older workers forbid extras)...
    assert '"score"' not in written and "channel_scales" not in written
    loaded = Manifest.model_validate_json(written)
    assert loaded.series is not None and loaded.series.score == "mean"
    reloaded = ModelBundle(
        manifest=loaded, scaler=bundle.scaler, path=bundle.path, engine=bundle.engine
    )
    old = SeriesModel(reloaded)
    assert old.channel_scales is None
    x, keys = keyed_rows(300, ["a", "b", "new"], CHANNELS, seed=2)
    result = old.score_rows(x, keys)
    # ...and scores with the mean element error of the last rows over every channel, bit for bit.
    tail = result.element_errors[:, -2:, :].reshape(result.scored_rows.size, -1)
    np.testing.assert_array_equal(result.scores[result.scored_rows], tail.mean(axis=1))
    np.testing.assert_array_equal(result.scores, bundle.series.score_rows(x, keys).scores)


def test_channel_max_is_the_largest_scaled_channel_error_of_the_scored_rows():
    model = _bundle(steps=2, scales=SCALES).series
    np.testing.assert_array_equal(model.channel_scales, SCALES)
    x, keys = keyed_rows(300, ["a", "b"], CHANNELS, seed=3)
    result = model.score_rows(x, keys)
    per_channel = result.element_errors[:, -2:, :].mean(axis=1) / np.array(SCALES)
    np.testing.assert_allclose(
        result.scores[result.scored_rows], per_channel.max(axis=1), rtol=1e-12, atol=0
    )
    windows = model.row_windows(x, keys)
    direct = model.score_windows_with(
        windows.windows, windows.keys[windows.scored_rows], windows.normaliser
    )
    np.testing.assert_allclose(direct.channel_errors, per_channel, rtol=1e-12, atol=0)


def test_one_channel_far_off_is_not_diluted_by_the_others():
    errors = np.zeros((2, 4, 3))
    errors[0, -1] = [0.9, 0.9, 0.9]  # every channel a bit off
    errors[1, -1] = [2.7, 0.0, 0.0]  # one channel far off: the same mean
    mean = window_scores(errors, 1)
    assert mean[0] == pytest.approx(mean[1])
    scaled = window_scores(errors, 1, np.ones(3))
    assert scaled[1] > 2 * scaled[0]
    np.testing.assert_array_equal(channel_errors(errors, 1), errors[:, -1, :])
    assert window_scores(np.zeros((0, 4, 3)), 1, np.ones(3)).shape == (0,)


def test_a_key_with_its_own_scales_uses_them_and_the_others_the_pooled_ones():
    model = _bundle(scales=SCALES, own=OWN).series
    x, keys = keyed_rows(400, ["a", "b", "new"], CHANNELS, seed=5)
    result = model.score_rows(x, keys)
    rows = result.scored_rows
    scales = np.array([OWN["a"] if keys[r] == "a" else SCALES for r in rows])
    expected = (result.element_errors[:, -1, :] / scales).max(axis=1)
    np.testing.assert_allclose(result.scores[rows], expected, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(model.channel_scales_for(["b", "a"]), [SCALES, OWN["a"]])
    assert _bundle().series.channel_scales_for(["a"]) is None


def test_blend_averages_the_mean_and_the_channel_max_each_over_its_scale():
    model = _bundle(steps=2, scales=SCALES, own=OWN, blend=BLEND).series
    x, keys = keyed_rows(400, ["a", "b", "new"], CHANNELS, seed=6)
    result = model.score_rows(x, keys)
    rows = result.scored_rows
    tail = result.element_errors[:, -2:, :]
    scales = np.array([OWN["a"] if keys[r] == "a" else SCALES for r in rows])
    peak = (tail.mean(axis=1) / scales).max(axis=1)
    mean = tail.reshape(rows.size, -1).mean(axis=1)
    expected = (mean / BLEND[0] + peak / BLEND[1]) / 2
    np.testing.assert_allclose(result.scores[rows], expected, rtol=1e-12, atol=0)
    # each part alone is another score: the blend is neither
    assert not np.allclose(result.scores[rows], mean / BLEND[0])
    assert not np.allclose(result.scores[rows], peak / BLEND[1])
    errors = np.zeros((2, 4, 3))
    errors[0, -1] = [0.9, 0.9, 0.9]
    errors[1, -1] = [2.7, 0.0, 0.0]
    # with one scale for both parts: the same mean, and the one-channel row's larger max counts
    blended = window_scores(errors, 1, np.ones(3), (1.0, 1.0))
    np.testing.assert_allclose(blended, [(0.9 + 0.9) / 2, (0.9 + 2.7) / 2])
    assert window_scores(np.zeros((0, 4, 3)), 1, np.ones(3), (1.0, 1.0)).shape == (0,)


@pytest.mark.parametrize(("own", "blend"), [(None, None), (OWN, None), (OWN, BLEND)])
@pytest.mark.parametrize("batch", [1, 7, 500])
def test_streaming_gives_the_offline_channel_max_and_blend_scores(
    batch: int, own: dict[str, list[float]] | None, blend: list[float] | None
):
    model = _bundle(scales=SCALES, own=own, blend=blend).series
    x, keys = keyed_rows(700, ["a", "b", "new-1", "new-2"], CHANNELS, seed=4)
    offline = model.score_rows(x, keys)
    streamed = _stream(model, x, keys, batch)
    np.testing.assert_array_equal(np.isnan(offline.scores), np.isnan(streamed))
    scored = ~np.isnan(streamed)
    np.testing.assert_allclose(offline.scores[scored], streamed[scored], rtol=1e-12, atol=0)
    # the new score is not the old one on these rows
    mean = _bundle().series.score_rows(x, keys).scores
    assert not np.allclose(mean[scored], offline.scores[scored])


@pytest.mark.parametrize(("own", "blend"), [(None, None), (OWN, None), (OWN, BLEND)])
def test_the_score_and_its_scales_round_trip_through_the_manifest(
    own: dict[str, list[float]] | None, blend: list[float] | None
):
    bundle = _bundle(scales=SCALES, own=own, blend=blend)
    written = bundle.manifest.model_dump_json()
    loaded = Manifest.model_validate_json(written)
    assert loaded == bundle.manifest
    assert loaded.series is not None
    score = "channel_max" if blend is None else "blend"
    assert (loaded.series.score, loaded.series.channel_scales) == (score, SCALES)
    assert loaded.series.key_channel_scales == own
    assert loaded.series.blend_scales == blend
    # a channel_max manifest is written without the blend's field (older workers load it)
    assert ("blend_scales" in written) == (blend is not None)


@pytest.mark.parametrize(
    "fields",
    [
        {"score": "channel_max"},
        {"score": "channel_max", "channel_scales": [1.0, 0.0, 1.0]},
        {"score": "channel_max", "channel_scales": [1.0, float("nan"), 1.0]},
        {"score": "mean", "channel_scales": [1.0, 1.0, 1.0]},
        {"score": "mean", "key_channel_scales": {"a": [1.0, 1.0, 1.0]}},
        {"score": "channel_max", "channel_scales": [1.0] * 3, "key_channel_scales": {"a": [1.0]}},
        {
            "score": "channel_max",
            "channel_scales": [1.0] * 3,
            "key_channel_scales": {"a": [1, -1, 1]},
        },
        {"score": "median"},
        {"score": "blend", "channel_scales": [1.0] * 3},
        {"score": "blend", "channel_scales": [1.0] * 3, "blend_scales": [1.0]},
        {"score": "blend", "channel_scales": [1.0] * 3, "blend_scales": [1.0, 0.0]},
        {"score": "blend", "channel_scales": [1.0] * 3, "blend_scales": [1.0, float("inf")]},
        {"score": "blend", "blend_scales": [1.0, 1.0]},
        {"score": "channel_max", "channel_scales": [1.0] * 3, "blend_scales": [1.0, 1.0]},
        {"score": "mean", "blend_scales": [1.0, 1.0]},
    ],
)
def test_inconsistent_score_fields_are_refused(fields: dict[str, object]):
    with pytest.raises(ValidationError):
        SeriesParams(window=WINDOW, normaliser={}, thresholds={}, **fields)  # type: ignore[arg-type]


def test_scales_for_another_number_of_channels_are_refused():
    with pytest.raises(ValueError, match="2 scales for 3 channels"):
        _ = _bundle(scales=[1.0, 2.0]).series
