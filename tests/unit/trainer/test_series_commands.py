"""``anomaly-trainer`` on windowed models: fit --window, score (one line per row with "key",
null while warming), evaluate (event recall), encode/decode/denoise, reports, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomaly_contract.model_dir import current_version, load_bundle
from trainer.builtin_machines import machines_table
from trainer.cli import main

WINDOW = 8
FAST = ["--epochs", "3", "--patience", "2", "--seed", "3", "-q"]


def _machines_csv(path: Path, keys: int = 4, length: int = 300, shuffle: bool = True) -> Path:
    """builtin:machines rows as a CSV, rows shuffled (the time column restores each key's order)."""
    frame = pd.DataFrame(machines_table(keys=keys, length=length, seed=2))
    if shuffle:
        frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def series_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("series")
    data = _machines_csv(root / "machines.csv")
    model_dir = root / "models"
    args = ["fit", str(data), "--model-dir", str(model_dir), "--window", str(WINDOW)]
    keyed = ["--key-column", "key", "--time-column", "t", "--architecture", "dense"]
    assert main([*args, *keyed, *FAST, "--report", str(root / "report")]) == 0
    return data, model_dir


def test_fit_publishes_a_windowed_version_with_per_key_statistics(series_model) -> None:  # type: ignore[no-untyped-def]
    data, model_dir = series_model
    bundle = load_bundle(model_dir)
    series = bundle.manifest.series
    assert series is not None and series.window == WINDOW
    assert (series.key_column, series.time_column) == ("key", "t")
    assert bundle.manifest.feature_names == ["temp", "load", "vibration"]
    assert sorted(series.normaliser["keys"]) == ["m000", "m001", "m002", "m003"]
    assert bundle.inference == "numpy"  # windowed dense scores without TensorFlow
    assert bundle.manifest.input_shape == [WINDOW * 3]
    report = data.parent / "report"
    assert {"loss.png", "errors.png", "series.png", "summary.json"} <= {
        p.name for p in report.iterdir()
    }


def test_score_writes_one_line_per_row_in_input_order_with_key(series_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data, model_dir = series_model
    out = tmp_path / "scores.jsonl"
    assert main(["score", str(data), "--model-dir", str(model_dir), "--output", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    frame = pd.read_csv(data)
    assert [r["row"] for r in lines] == list(range(len(frame)))
    assert [r["key"] for r in lines] == list(frame["key"])
    warming = [r for r in lines if r["score"] is None]
    # Each key's first W-1 rows in time order warm, wherever they sit in the file.
    assert len(warming) == 4 * (WINDOW - 1)
    assert all(not r["is_anomaly"] and r["threshold"] is None for r in warming)
    assert {frame["t"][r["row"]] for r in warming} == set(range(WINDOW - 1))
    bundle = load_bundle(model_dir)
    expected = bundle.series.score_rows(
        frame[["temp", "load", "vibration"]].to_numpy(), frame["key"], frame["t"]
    )
    got = np.array([np.nan if r["score"] is None else r["score"] for r in lines])
    np.testing.assert_allclose(got, expected.scores, rtol=1e-12)


def test_evaluate_reports_event_recall_and_the_normal_row_fpr(series_model, capsys) -> None:  # type: ignore[no-untyped-def]
    data, model_dir = series_model
    args = ["evaluate", str(data), "--model-dir", str(model_dir), "--label-column", "label"]
    assert main([*args, "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["events"] > 0 and 0.0 <= metrics["event_recall"] <= 1.0
    assert 0.0 <= metrics["normal_fpr"] < 0.5
    assert metrics["roc_auc"] > 0.6
    assert main(args) == 0
    assert "event recall" in capsys.readouterr().out


def test_encode_decode_denoise_on_windows(series_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data, model_dir = series_model
    codes, windows, clean = tmp_path / "codes.csv", tmp_path / "w.npy", tmp_path / "clean.csv"
    assert main(["encode", str(data), "--model-dir", str(model_dir), "-o", str(codes)]) == 0
    assert main(["decode", str(codes), "--model-dir", str(model_dir), "-o", str(windows)]) == 0
    assert main(["denoise", str(data), "--model-dir", str(model_dir), "-o", str(clean)]) == 0
    n_rows = len(pd.read_csv(data))
    assert len(pd.read_csv(codes)) == n_rows - 4 * (WINDOW - 1)
    assert np.load(windows).shape == (n_rows - 4 * (WINDOW - 1), WINDOW * 3)
    cleaned, raw = pd.read_csv(clean), pd.read_csv(data)
    assert cleaned.shape[0] == n_rows
    # A reconstruction is near its row (per-key units), not a copy of it.
    diff = np.abs(cleaned["temp"].to_numpy() - raw["temp"].to_numpy())
    assert 0 < np.median(diff) < raw["temp"].std()


def test_builtin_machines_fits_with_its_own_key_and_time_columns(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model_dir = tmp_path / "m"
    source = "builtin:machines?keys=3&length=200"
    assert main(["fit", source, "--model-dir", str(model_dir), "--window", "4", *FAST]) == 0
    series = load_bundle(model_dir).manifest.series
    assert series is not None and (series.key_column, series.time_column) == ("key", "t")
    assert load_bundle(model_dir).manifest.feature_names == ["temp", "load", "vibration"]


def _fit_with_series_score(tmp_path: Path, score: str) -> tuple[Path, Path]:
    """A windowed dense fit of 3 machines x 300 ticks with ``--series-score score``."""
    data = _machines_csv(tmp_path / "d.csv", keys=3, length=300)
    model_dir = tmp_path / "m"
    args = ["fit", str(data), "--model-dir", str(model_dir), "--window", str(WINDOW)]
    keyed = ["--key-column", "key", "--time-column", "t", "--architecture", "dense"]
    assert main([*args, *keyed, "--series-score", score, *FAST]) == 0
    return data, model_dir


def test_fit_series_score_channel_max_publishes_scales_and_scores_with_them(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from anomaly_contract.key_thresholds import KeyThresholds

    data, model_dir = _fit_with_series_score(tmp_path, "channel-max")
    bundle = load_bundle(model_dir)  # saved and loaded: the score and scales came through
    series = bundle.manifest.series
    assert series is not None and series.score == "channel_max"
    assert series.channel_scales is not None and len(series.channel_scales) == 3
    assert all(s > 0 for s in series.channel_scales)
    assert any("largest channel error" in note for note in bundle.manifest.notes)
    np.testing.assert_array_equal(bundle.series.channel_scales, series.channel_scales)
    # The thresholds were fitted on the new score: the pooled one is the p99 of calibration
    # scores, so about 1 % of the calibration windows lie above it (not 0 % nor most).
    frame = pd.read_csv(data)
    result = bundle.series.score_rows(
        frame[["temp", "load", "vibration"]].to_numpy(), frame["key"], frame["t"]
    )
    per_channel = result.element_errors[:, -1, :] / np.array(series.channel_scales)
    np.testing.assert_allclose(
        result.scores[result.scored_rows], per_channel.max(axis=1), rtol=1e-12
    )
    pooled = KeyThresholds.from_json(series.thresholds).pooled
    assert np.nanmedian(result.scores) < pooled < np.nanmax(result.scores)
    out = tmp_path / "scores.jsonl"
    assert main(["score", str(data), "--model-dir", str(model_dir), "--output", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    got = np.array([np.nan if r["score"] is None else r["score"] for r in lines])
    np.testing.assert_allclose(got, result.scores, rtol=1e-12)


def test_fit_series_score_channel_max_per_key_publishes_each_keys_scales(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data, model_dir = _fit_with_series_score(tmp_path, "channel-max-per-key")
    bundle = load_bundle(model_dir)
    series = bundle.manifest.series
    assert series is not None and series.score == "channel_max"
    # 300 rows a key give ~38 validation windows of W = 8: each key has its own scales
    assert series.key_channel_scales is not None
    assert sorted(series.key_channel_scales) == ["m000", "m001", "m002"]
    assert series.channel_scales is not None and len(series.channel_scales) == 3
    frame = pd.read_csv(data)
    result = bundle.series.score_rows(
        frame[["temp", "load", "vibration"]].to_numpy(), frame["key"], frame["t"]
    )
    rows = result.scored_rows
    scales = np.array([series.key_channel_scales[str(frame["key"][r])] for r in rows])
    expected = (result.element_errors[:, -1, :] / scales).max(axis=1)
    np.testing.assert_allclose(result.scores[rows], expected, rtol=1e-12)


def test_fit_without_series_score_blends_the_mean_and_each_keys_channel_max(series_model) -> None:  # type: ignore[no-untyped-def]
    from anomaly_contract.key_thresholds import KeyThresholds

    data, model_dir = series_model
    bundle = load_bundle(model_dir)
    series = bundle.manifest.series
    assert series is not None and series.score == "blend"
    assert series.key_channel_scales is not None and series.channel_scales is not None
    assert series.blend_scales is not None and all(s > 0 for s in series.blend_scales)
    assert any("blend_scales" in note for note in bundle.manifest.notes)
    frame = pd.read_csv(data)
    result = bundle.series.score_rows(
        frame[["temp", "load", "vibration"]].to_numpy(), frame["key"], frame["t"]
    )
    rows = result.scored_rows
    own = series.key_channel_scales
    scales = np.array([own.get(str(k), series.channel_scales) for k in frame["key"][rows]])
    tail = result.element_errors[:, -1, :]
    mean_scale, peak_scale = series.blend_scales
    expected = (tail.mean(axis=1) / mean_scale + (tail / scales).max(axis=1) / peak_scale) / 2
    np.testing.assert_allclose(result.scores[rows], expected, rtol=1e-12)
    # each part is over its p99 on the calibration windows, and so is the blend's threshold:
    # the threshold is near 1, and most windows score below it
    pooled = KeyThresholds.from_json(series.thresholds).pooled
    assert 0.5 < pooled < 1.5
    assert np.nanmedian(result.scores) < pooled < np.nanmax(result.scores)


def test_fit_series_score_mean_keeps_the_mean_score(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, model_dir = _fit_with_series_score(tmp_path, "mean")
    series = load_bundle(model_dir).manifest.series
    assert series is not None and (series.score, series.channel_scales) == ("mean", None)
    assert series.blend_scales is None


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str], *words: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for word in words:
        assert word in err


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--window", "1"], ("--window must be at least 2",)),
        (["--window", "8", "--key-column", "machine"], ("--key-column", "'machine' not found")),
        (["--window", "8", "--key-column", "key", "--architecture", "conv"], ("conv",)),
        (["--window", "150", "--key-column", "key"], ("too few", "rows")),
        (["--key-column", "key"], ("--key-column", "windowed")),
        (["--architecture", "lstm"], ("--window",)),
        (["--series-score", "channel-max"], ("--series-score", "windowed")),
        (["--history-clip", "2"], ("--history-clip", "windowed")),
        (["--window", "8", "--key-column", "key", "--history-clip", "-1"], ("--history-clip",)),
        (["--window", "8", "--key-column", "key", "--history-clip", "nan"], ("--history-clip",)),
        (["--window", "8", "--key-column", "key", "--history-clip", "wide"], ("--history-clip",)),
    ],
)
def test_bad_series_input_is_one_line_and_publishes_nothing(capsys, tmp_path, extra, words) -> None:  # type: ignore[no-untyped-def]
    data = _machines_csv(tmp_path / "d.csv", keys=3, length=200)
    model_dir = tmp_path / "models"
    _refused(capsys, ["fit", str(data), "--model-dir", str(model_dir), *FAST, *extra], *words)
    assert current_version(model_dir) is None


def test_a_missing_time_is_refused(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = _machines_csv(tmp_path / "d.csv", keys=2, length=200)
    frame = pd.read_csv(data)
    frame.loc[17, "t"] = np.nan
    frame.to_csv(data, index=False)
    argv = ["fit", str(data), "--model-dir", str(tmp_path / "m"), "--window", "4"]
    _refused(capsys, [*argv, "--key-column", "key", "--time-column", "t", *FAST], "time", "row 18")
    assert current_version(tmp_path / "m") is None


def test_point_model_commands_refuse_series_flags(capsys, published, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model_dir, _ = published
    data = _machines_csv(tmp_path / "d.csv", keys=2, length=100)
    _refused(
        capsys,
        ["score", str(data), "--model-dir", str(model_dir), "--key-column", "key"],
        "point model",
    )


def test_a_windowed_version_survives_the_model_topic_packing(series_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from anomaly_contract.model_dir import load_version_dir, version_dir
    from anomaly_contract.model_topic_format import pack_version_dir, unpack_blob

    data, model_dir = series_model
    (tmp_path / "v").mkdir()
    unpack_blob(pack_version_dir(version_dir(model_dir)), tmp_path / "v")

    frame = pd.read_csv(data)
    x, keys, t = frame[["temp", "load", "vibration"]].to_numpy(), frame["key"], frame["t"]
    again = load_version_dir(tmp_path / "v").series.score_rows(x, keys, t)
    first = load_bundle(model_dir).series.score_rows(x, keys, t)
    np.testing.assert_array_equal(again.scores, first.scores)


def test_fit_clips_the_history_by_default_and_calibrates_on_what_the_model_scores(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from anomaly_contract.key_thresholds import KeyThresholds
    from trainer.history_clip import MARGIN

    data, model_dir = _fit_with_series_score(tmp_path, "blend")
    bundle = load_bundle(model_dir)
    series = bundle.manifest.series
    assert series is not None and series.history_clip is not None
    # auto: each channel's range over the training rows (normalised: about +-3), widened
    low, high = np.array(series.history_clip.low), np.array(series.history_clip.high)
    assert low.shape == high.shape == (3,)
    assert np.all((low > -6) & (low < -1 - MARGIN)) and np.all((high > 1 + MARGIN) & (high < 6))
    # The thresholds are percentiles of the clipped scores: about 1 % of the rows score above
    # their key's, as calibrated (the unclipped scores of the same network would differ).
    frame = pd.read_csv(data)
    x = frame[["temp", "load", "vibration"]].to_numpy()
    result = bundle.series.score_rows(x, frame["key"], frame["t"])
    relative = result.scores / result.thresholds
    assert 0.0 < np.nanmean(relative > 1.0) < 0.05
    assert KeyThresholds.from_json(series.thresholds).pooled > 0
    out = tmp_path / "clean.csv"
    assert main(["denoise", str(data), "--model-dir", str(model_dir), "-o", str(out)]) == 0


def test_fit_history_clip_off_shows_the_windows_unclipped(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = _machines_csv(tmp_path / "d.csv", keys=3, length=300)
    model_dir = tmp_path / "m"
    args = ["fit", str(data), "--model-dir", str(model_dir), "--window", str(WINDOW)]
    keyed = ["--key-column", "key", "--time-column", "t", "--architecture", "dense"]
    assert main([*args, *keyed, "--history-clip", "off", *FAST]) == 0
    series = load_bundle(model_dir).manifest.series
    assert series is not None and series.history_clip is None
    version = (model_dir / "CURRENT").read_text().strip()
    written = json.loads((model_dir / "versions" / version / "manifest.json").read_text())
    assert "history_clip" not in written["series"]  # as before the field: older workers load it
