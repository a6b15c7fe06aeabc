"""Keyed series in: builtin:machines as a data set, key and time columns, labelled ranges."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from anomaly_contract.errors import DataError
from anomaly_contract.series import SeriesRowScores
from anomaly_contract.windows import index_windows
from trainer.data import load_dataset
from trainer.data_series import default_series_columns, load_series
from trainer.evaluate_series import event_metrics, labelled_ranges


def test_builtin_machines_features_are_the_channels_only():
    ds = load_dataset("builtin:machines?keys=3&length=100")
    assert ds.feature_names == ["temp", "load", "vibration"]
    assert ds.x.shape == (300, 3) and ds.labels is not None
    ar = load_dataset("builtin:machines-ar?keys=2&length=100&seed=4")
    assert ar.feature_names == ["pressure", "flow", "valve"]
    assert default_series_columns("builtin:machines?keys=3") == ("key", "t")
    assert default_series_columns("data.csv") == (None, None)


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("builtin:machines?rows=5", "unknown option 'rows'"),
        ("builtin:machines?keys=0", "keys must be positive"),
        ("builtin:machines?length=10", "length"),
    ],
)
def test_bad_machine_options_are_one_line(source: str, words: str):
    with pytest.raises(DataError, match=words):
        load_dataset(source)


def test_series_columns_are_not_channels_and_timestamps_order(tmp_path):
    path = tmp_path / "hosts.csv"
    pd.DataFrame(
        {
            "host": ["a", "b", "a", 7],
            "ts": [
                "2026-01-01T00:00:02Z",
                "2026-01-01T00:00:01Z",
                "2026-01-01T00:00:01Z",
                "2026-01-01T00:00:09Z",
            ],
            "cpu": [1.0, 2.0, 3.0, 4.0],
            "site": ["x", "y", "x", "y"],
        }
    ).to_csv(path, index=False)
    data = load_series(str(path), key_column="host", time_column="ts")
    assert data.channel_names == ["cpu"]
    assert list(data.keys) == ["a", "b", "a", "7"]
    assert data.times is not None and data.times[2] < data.times[0]
    with pytest.raises(DataError, match="neither numbers nor timestamps"):
        load_series(str(path), key_column="ts", time_column="site")
    with pytest.raises(DataError, match="windowed models read tables"):
        load_series("rows.npy", key_column=None, time_column=None)


def test_labelled_ranges_are_runs_per_key_in_time_order():
    keys = np.array(["a", "b", "a", "b", "a", "a", "b"])
    times = np.array([0, 0, 1, 1, 2, 3, 2])
    labels = np.array([0, 1, 1, 1, 1, 0, 0])
    index = index_windows(keys, 7, 2, times)
    ranges = sorted(sorted(int(r) for r in part) for part in labelled_ranges(labels, index))
    assert ranges == [[1, 3], [2, 4]]  # b at t 0-1, a at t 1-2


def test_event_metrics_count_ranges_with_a_flagged_row_and_the_normal_fpr():
    keys = np.array(["a"] * 8)
    labels = np.array([0, 0, 1, 1, 0, 1, 0, 0])
    index = index_windows(keys, 8, 2)
    scores = np.array([np.nan, 0.1, 0.9, 0.1, 0.8, 0.2, 0.1, 0.1])
    result = SeriesRowScores(
        scores=scores,
        thresholds=np.full(8, 0.5),
        keys=keys.astype(object),
        warming=np.isnan(scores),
        scored_rows=np.arange(1, 8),
        element_errors=np.zeros((7, 2, 1)),
        index=index,
    )
    m = event_metrics(result, labels)
    assert (m["events"], m["events_found"], m["event_recall"]) == (2, 1, 0.5)
    assert m["normal_fpr"] == pytest.approx(1 / 4)  # row 4 of the scored normals 1, 4, 6, 7
    assert m["warming_rows"] == 1
