"""builtin:machines and builtin:machines-ar: shapes, determinism, labelled kinds, per-key levels,
and that per-key windows (the shared window, normaliser and threshold pieces) can learn them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score

from anomaly_contract.key_normaliser import KeyNormaliser
from anomaly_contract.key_thresholds import fit_key_thresholds
from anomaly_contract.windows import index_windows, materialise_windows, split_windows_in_time
from trainer.builtin_machines import (
    AR_ANOMALY_KINDS,
    AR_CHANNELS,
    MACHINE_ANOMALY_KINDS,
    MACHINE_CHANNELS,
    machines_ar_table,
    machines_table,
)

FAMILIES = {
    "machines": (machines_table, MACHINE_CHANNELS, MACHINE_ANOMALY_KINDS),
    "machines-ar": (machines_ar_table, AR_CHANNELS, AR_ANOMALY_KINDS),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    make, channels, kinds = FAMILIES[request.param]
    return make, channels, kinds, pd.DataFrame(make(keys=20, length=1500, seed=3))


def test_columns_shapes_and_stream_order(family):
    _, channels, _, frame = family
    assert list(frame.columns) == ["key", "t", *channels, "label", "anomaly_kind"]
    assert len(frame) == 20 * 1500 and frame["key"].nunique() == 20
    assert np.isfinite(frame[list(channels)].to_numpy()).all()
    # Interleaved like a stream: every machine reports at each tick, ticks in order.
    assert frame["t"].is_monotonic_increasing
    assert frame.groupby("t")["key"].nunique().eq(20).all()
    assert frame["label"].dtype == np.int64


def test_the_same_seed_gives_the_same_set_and_fewer_keys_the_same_first_machines(family):
    make, _, _, frame = family
    again = pd.DataFrame(make(keys=20, length=1500, seed=3))
    pd.testing.assert_frame_equal(frame, again)
    small = pd.DataFrame(make(keys=5, length=1500, seed=3))
    pd.testing.assert_frame_equal(
        small.reset_index(drop=True),
        frame[frame["key"].isin(small["key"].unique())].reset_index(drop=True),
    )
    other = pd.DataFrame(make(keys=20, length=1500, seed=4))
    assert not np.allclose(other.iloc[:, 2].to_numpy(), frame.iloc[:, 2].to_numpy())


def test_every_kind_is_labelled_row_by_row_at_the_asked_share(family):
    _, _, kinds, frame = family
    labelled = frame["anomaly_kind"] != "none"
    assert (frame["label"] == labelled.astype(int)).all()
    assert set(frame["anomaly_kind"]) == {"none", *kinds}
    assert 0.04 <= frame["label"].mean() <= 0.06
    # Ranged kinds cover runs of consecutive ticks of one machine; spikes are single ticks.
    for key, rows in frame.groupby("key"):
        kind = rows["anomaly_kind"].to_numpy()
        starts = np.flatnonzero((kind[1:] != kind[:-1]) & (kind[1:] != "none")) + 1
        for start in starts:
            run = np.flatnonzero(kind[start:] != kind[start])
            length = run[0] if len(run) else len(kind) - start
            expected = (1, 1) if kind[start] == "spike" else (30, 120)
            assert expected[0] <= length <= expected[1], key
    # The first ticks stay normal so windows warm up on normal data.
    assert (frame.loc[frame["t"] < 64, "label"] == 0).all()
    clean = pd.DataFrame(family[0](keys=3, length=300, anomaly_share=0.0, seed=3))
    assert clean["label"].sum() == 0


def test_machines_differ_in_level():
    frame = pd.DataFrame(machines_table(keys=10, length=600, seed=0))
    normal = frame[frame["label"] == 0]
    temp = normal.groupby("key")["temp"].mean()
    assert temp["m000"] == pytest.approx(20.0, abs=1.0)
    assert temp["m001"] == pytest.approx(60.0, abs=1.0)
    assert temp.max() - temp.min() > 30.0
    # Levels differ far more between machines than the noise within one machine.
    within = normal.groupby("key")["temp"].std().max()
    assert temp.std() > 2 * within
    ar = pd.DataFrame(machines_ar_table(keys=10, length=600, seed=0))
    pressure = ar[ar["label"] == 0].groupby("key")["pressure"].mean()
    assert pressure.max() / pressure.min() > 1.5


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="keys"):
        machines_table(keys=0)
    with pytest.raises(ValueError, match="anomaly_share"):
        machines_ar_table(anomaly_share=0.9)
    with pytest.raises(ValueError, match="seed"):
        machines_table(seed=-1)


def test_per_key_windows_make_the_anomalies_learnable(family):
    """The shared pieces end to end: windows per key, time split, per-key normalisation learnt
    on training rows, a linear window model, per-key thresholds from calibration windows."""
    _, channels, _, frame = family
    x = frame[list(channels)].to_numpy()
    keys = frame["key"].to_numpy()
    index = index_windows(keys, len(x), window=16, order=frame["t"].to_numpy())
    split = split_windows_in_time(index, 0.1, 0.3)
    train_rows = np.unique(index.rows[split.train].ravel())
    normaliser = KeyNormaliser.fit(x[train_rows], keys[train_rows])
    windows = materialise_windows(normaliser.transform_rows(x, keys), index)
    flat = windows.reshape(index.n_windows, -1)
    model = PCA(6).fit(flat[split.train])
    errors = ((model.inverse_transform(model.transform(flat)) - flat) ** 2).mean(axis=1)
    labels = frame["label"].to_numpy()[index.end_rows]
    assert roc_auc_score(labels, errors) > 0.6
    window_keys = index.key_names[index.window_keys].astype(str)
    thresholds = fit_key_thresholds(errors[split.calibration], window_keys[split.calibration], 95.0)
    flagged = errors > thresholds.thresholds_for(window_keys)
    assert flagged[labels == 1].mean() > 2 * flagged[labels == 0].mean()
