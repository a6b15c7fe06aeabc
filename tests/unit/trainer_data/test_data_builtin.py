"""Built-in data sets: shapes, determinism, anomaly share, and that builtin:sensors is learnable."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from anomaly_contract.errors import DataError
from trainer import builtin_data
from trainer.builtin_data import SENSOR_FEATURES, make_sensor_records, sensor_table
from trainer.data import load_dataset


@pytest.fixture(scope="module")
def sensors():
    return load_dataset("builtin:sensors")


@pytest.fixture(scope="module")
def sensor_truth():
    return sensor_table()


def test_sensors_shape_names_labels_ids(sensors):
    assert sensors.x.shape == (5000, len(SENSOR_FEATURES))
    assert sensors.feature_names == list(SENSOR_FEATURES)
    assert 10 <= len(SENSOR_FEATURES) <= 20
    assert np.isfinite(sensors.x).all()
    assert sensors.labels is not None and set(np.unique(sensors.labels)) == {0, 1}
    assert 0.03 <= sensors.labels.mean() <= 0.05
    assert sensors.ids is not None and len(set(sensors.ids)) == 5000
    assert sensors.image_shape is None and sensors.source == "builtin:sensors"


def test_sensors_hold_every_anomaly_kind(sensor_truth):
    kinds = np.asarray(sensor_truth["anomaly_kind"])
    labels = np.asarray(sensor_truth["label"])
    assert set(kinds) == {"none", "spike", "decoupled", "drift"}
    assert ((kinds != "none") == (labels == 1)).all()
    for kind in ("spike", "decoupled", "drift"):
        assert (kinds == kind).sum() >= 20, kind
    # A drift is a run of consecutive readings in one sensor.
    drift_rows = np.flatnonzero(kinds == "drift")
    assert np.any(np.diff(drift_rows) == 1)
    sensors_hit = {sensor_truth["anomaly_sensor"][i] for i in drift_rows}
    assert sensors_hit <= set(SENSOR_FEATURES)


def test_sensors_are_deterministic_and_seeded(sensors):
    again = load_dataset("builtin:sensors")
    np.testing.assert_array_equal(again.x, sensors.x)
    np.testing.assert_array_equal(again.labels, sensors.labels)
    other = load_dataset("builtin:sensors?seed=1&rows=1000")
    assert other.x.shape == (1000, len(SENSOR_FEATURES))
    assert not np.allclose(other.x, sensors.x[:1000])
    small = load_dataset("builtin:sensors?rows=1200&anomaly_rate=0")
    assert small.labels.sum() == 0
    np.testing.assert_array_equal(small.ids, sensors.ids[:1200])


def test_sensor_records_are_the_same_however_chunked():
    whole = make_sensor_records(2500, seed=3)
    chunks = []
    for start in range(0, 2500, 700):
        chunks.extend(make_sensor_records(min(700, 2500 - start), seed=3, start_index=start))
    assert chunks == whole
    assert make_sensor_records(0) == []
    first = whole[0]
    assert list(first)[:2] == ["id", SENSOR_FEATURES[0]]
    assert set(first) == {"id", *SENSOR_FEATURES, "label", "anomaly_kind", "anomaly_sensor"}
    labelled = [r for r in whole if r["label"] == 1]
    assert labelled and all(r["anomaly_sensor"] in SENSOR_FEATURES for r in labelled)
    assert all(
        r["anomaly_kind"] == "none" and r["anomaly_sensor"] is None for r in whole if not r["label"]
    )


def test_sensor_records_match_the_builtin_table(sensors):
    records = make_sensor_records(50, start_index=4950)
    rows = np.array([[r[name] for name in SENSOR_FEATURES] for r in records])
    np.testing.assert_array_equal(rows, sensors.x[4950:])
    assert [r["id"] for r in records] == sensors.ids[4950:]


def test_sensor_generator_rejects_bad_arguments():
    with pytest.raises(ValueError):
        make_sensor_records(10, anomaly_rate=0.9)
    with pytest.raises(ValueError):
        make_sensor_records(-1)


def test_sensors_have_low_dimensional_structure(sensors):
    """Most variance of the normal rows lies on a few directions: an autoencoder can compress."""
    normal = StandardScaler().fit_transform(sensors.x[sensors.labels == 0])
    explained = np.cumsum(PCA().fit(normal).explained_variance_ratio_)
    assert explained[2] > 0.95  # 3 latent factors
    assert explained[0] < 0.8  # ...but not a single one


def test_sensor_anomalies_are_detectable(sensors):
    """A linear reconstruction (PCA, what a tiny autoencoder can at least do) finds nearly all
    anomalies, and IsolationForest finds many, so quality numbers on this set mean something."""
    scaler = StandardScaler().fit(sensors.x[sensors.labels == 0])
    z = scaler.transform(sensors.x)
    pca = PCA(3).fit(z[sensors.labels == 0])
    errors = ((z - pca.inverse_transform(pca.transform(z))) ** 2).mean(axis=1)
    assert roc_auc_score(sensors.labels, errors) > 0.97
    forest_aucs = [
        roc_auc_score(sensors.labels, -IsolationForest(random_state=seed).fit(z).score_samples(z))
        for seed in range(3)
    ]
    assert np.mean(forest_aucs) > 0.7, forest_aucs


def test_digits():
    ds = load_dataset("builtin:digits")
    assert ds.x.shape == (1797, 64) and ds.image_shape == (8, 8)
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0
    assert ds.feature_names[:3] == ["px0_0", "px0_1", "px0_2"] and ds.feature_names[-1] == "px7_7"
    assert ds.labels is None and ds.ids is None
    images, classes = builtin_data.load_digits_images()
    np.testing.assert_array_equal(images.reshape(1797, 64), ds.x)
    assert sorted(set(classes.tolist())) == list(range(10))


def test_digits_take_no_options_or_labels():
    with pytest.raises(DataError, match="takes no options"):
        load_dataset("builtin:digits?rows=5")
    with pytest.raises(DataError, match="no label column"):
        load_dataset("builtin:digits", label_column="label")


def test_mnist_without_internet_is_one_clear_line():
    def offline():
        raise OSError("URL fetch failure on https://storage.googleapis.com/...: [Errno -3]\nmore")

    with pytest.raises(DataError) as info:
        builtin_data.load_mnist_images(loader=offline)
    message = str(info.value)
    assert "\n" not in message
    assert "builtin:mnist" in message and "internet" in message and "URL fetch failure" in message


def test_mnist_loader_scales_to_unit_range():
    fake = (np.full((3, 28, 28), 255, dtype=np.uint8), np.array([1, 2, 3]))
    images, classes = builtin_data.load_mnist_images(loader=lambda: fake)
    assert images.dtype == np.float64 and images.max() == 1.0 and classes.tolist() == [1, 2, 3]


def test_bad_sensor_options():
    for source, fragment in [
        ("builtin:sensors?rows=ten", "not a number"),
        ("builtin:sensors?anomaly_rate=0.9", "between 0 and 0.5"),
        ("builtin:sensors?rows=0", "rows must be positive"),
    ]:
        with pytest.raises(DataError, match=fragment):
            load_dataset(source)
