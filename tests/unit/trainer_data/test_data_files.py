"""Every file loader gives the same Dataset for the same rows; features, labels and ids."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trainer.data import Dataset, load_dataset, parse_image_shape

N = 30


def _csv_text(x: np.ndarray, names: list[str], extra: dict[str, list] | None = None) -> str:
    frame = pd.DataFrame(x, columns=names)
    for key, values in (extra or {}).items():
        frame[key] = values
    return frame.to_csv(index=False)


def test_csv_header_gives_feature_names(write_csv, numeric_rows):
    x = numeric_rows(N, 3)
    ds = load_dataset(write_csv(_csv_text(x, ["temp", "rpm", "load"])))
    assert isinstance(ds, Dataset)
    assert ds.feature_names == ["temp", "rpm", "load"]
    assert ds.x.dtype == np.float64 and ds.x.shape == (N, 3)
    np.testing.assert_allclose(ds.x, x)
    assert ds.labels is None and ds.ids is None and ds.image_shape is None


def test_csv_label_and_id_columns_are_not_features(write_csv, numeric_rows):
    x = numeric_rows(N, 2)
    labels = [0] * (N - 3) + [1, 2, 0]
    ids = [f"00{i}" for i in range(N)]
    path = write_csv(_csv_text(x, ["a", "b"], {"id": ids, "label": labels}))
    ds = load_dataset(path)
    assert ds.feature_names == ["a", "b"]
    assert ds.labels is not None and ds.labels.dtype == np.int64
    assert ds.labels.tolist() == labels
    assert ds.ids == ids  # kept as text: "001" is not 1
    assert ds.source == path


def test_csv_label_column_option_and_features_pick_and_order(write_csv, numeric_rows):
    x = numeric_rows(N, 3)
    truth = [1] + [0] * (N - 1)
    path = write_csv(_csv_text(x, ["a", "b", "c"], {"is_bad": truth, "label": [7] * N}))
    ds = load_dataset(path, label_column="is_bad", features=["c", "a"])
    assert ds.feature_names == ["c", "a"]
    np.testing.assert_allclose(ds.x, x[:, [2, 0]])
    assert ds.labels.tolist() == truth
    # With another label column, a numeric column named "label" is an ordinary feature.
    assert load_dataset(path, label_column="is_bad").feature_names == ["a", "b", "c", "label"]


def test_csv_text_columns_are_ignored_and_float_labels_accepted(write_csv, numeric_rows):
    x = numeric_rows(N, 2)
    path = write_csv(
        _csv_text(x, ["a", "b"], {"site": ["north"] * N, "label": [0.0] * (N - 1) + [1.0]})
    )
    ds = load_dataset(path)
    assert ds.feature_names == ["a", "b"]
    assert ds.labels.tolist() == [0] * (N - 1) + [1]


def test_csv_booleans_are_numeric(write_csv):
    rows = "\n".join(f"{i},{'true' if i % 2 else 'false'}" for i in range(N))
    ds = load_dataset(write_csv("a,flag\n" + rows + "\n"))
    assert ds.feature_names == ["a", "flag"]
    assert ds.x[:4, 1].tolist() == [0.0, 1.0, 0.0, 1.0]


def test_parquet_matches_csv(tmp_path, write_csv, numeric_rows):
    x = numeric_rows(N, 3)
    frame = pd.DataFrame(x, columns=["a", "b", "c"])
    frame["id"] = range(N)
    frame["label"] = [0] * (N - 1) + [1]
    frame.to_parquet(tmp_path / "d.parquet")
    from_parquet = load_dataset(str(tmp_path / "d.parquet"))
    from_csv = load_dataset(write_csv(frame.to_csv(index=False)))
    np.testing.assert_array_equal(from_parquet.x, from_csv.x)
    assert from_parquet.feature_names == from_csv.feature_names == ["a", "b", "c"]
    assert from_parquet.labels.tolist() == from_csv.labels.tolist()
    assert from_parquet.ids == list(range(N))  # Parquet keeps the id's type


@pytest.mark.parametrize("shape", ["list", "nested_object", "flat"])
def test_jsonl_accepts_the_three_worker_record_shapes(write_jsonl, numeric_rows, shape):
    x = numeric_rows(N, 3)
    names = ["temp", "rpm", "load"]
    records = []
    for i, row in enumerate(x.tolist()):
        if shape == "list":
            rec = {"id": f"r{i}", "features": row, "label": int(i == 5)}
        elif shape == "nested_object":
            rec = {
                "id": f"r{i}",
                "features": dict(zip(names, row, strict=True)),
                "label": int(i == 5),
            }
        else:
            rec = {"id": f"r{i}", **dict(zip(names, row, strict=True)), "label": int(i == 5)}
        records.append(rec)
    ds = load_dataset(write_jsonl(records))
    np.testing.assert_allclose(ds.x, x)
    expected_names = ["f0", "f1", "f2"] if shape == "list" else names
    assert ds.feature_names == expected_names
    assert ds.ids == [f"r{i}" for i in range(N)]
    assert ds.labels.tolist() == [int(i == 5) for i in range(N)]


def test_jsonl_mixing_the_three_shapes_gives_one_row_per_record(write_jsonl, numeric_rows):
    """Names from the first record naming its features, positional lists in that order."""
    x = numeric_rows(N, 3)
    names = ["temp", "rpm", "load"]
    records = []
    for i, row in enumerate(x.tolist()):
        named = dict(zip(names, row, strict=True))
        rec: dict = [
            {"features": named},
            {"features": row},
            {"site": "north", **dict(reversed(named.items()))},
        ][i % 3]
        records.append({"id": i, **rec, "label": int(i == 4)})
    ds = load_dataset(write_jsonl(records))
    assert ds.feature_names == names
    np.testing.assert_allclose(ds.x, x)
    assert ds.ids == list(range(N)) and ds.labels.tolist() == [int(i == 4) for i in range(N)]
    # Positional records before the first named one are read in its order too.
    ds = load_dataset(write_jsonl(records[1:2] + records[3:]))
    assert ds.feature_names == names
    np.testing.assert_allclose(ds.x, x[[1, *range(3, N)]])


def test_jsonl_text_boolean_and_nested_fields_are_not_features(write_jsonl):
    records = [
        {"a": i, "b": 0.5 * i, "site": "north", "ok": True, "tags": [1], "meta": {"k": 1}}
        for i in range(N)
    ]
    ds = load_dataset(write_jsonl(records))
    assert ds.feature_names == ["a", "b"]
    assert ds.labels is None and ds.ids is None


def test_jsonl_nested_pixel_rows_give_the_image_shape(write_jsonl):
    rng = np.random.default_rng(1)
    images = rng.random((N, 4, 5))
    ds = load_dataset(write_jsonl({"features": img.tolist()} for img in images))
    assert ds.image_shape == (4, 5)
    assert ds.x.shape == (N, 20)
    np.testing.assert_allclose(ds.x, images.reshape(N, -1))
    assert ds.ids is None


def test_jsonl_skips_blank_lines_and_ignores_text_fields(write_jsonl):
    lines = []
    for i in range(N):
        lines.append({"id": i, "a": i, "b": 2 * i, "site": "north", "label": 0})
        lines.append("")
    ds = load_dataset(write_jsonl(lines))
    assert ds.feature_names == ["a", "b"]
    assert ds.ids == list(range(N))


def test_jsonl_label_column_option_reads_a_top_level_field(write_jsonl):
    records = [{"features": [i, i + 1], "truth": int(i > 25)} for i in range(N)]
    ds = load_dataset(write_jsonl(records), label_column="truth")
    assert ds.labels.tolist() == [int(i > 25) for i in range(N)]
    assert ds.feature_names == ["f0", "f1"]


def test_npy_matrix_and_images(tmp_path):
    rng = np.random.default_rng(2)
    matrix = rng.random((N, 6)).astype(np.float32)
    np.save(tmp_path / "m.npy", matrix)
    ds = load_dataset(str(tmp_path / "m.npy"))
    assert ds.feature_names == [f"f{i}" for i in range(6)]
    assert ds.x.dtype == np.float64 and ds.image_shape is None
    np.testing.assert_allclose(ds.x, matrix.astype(np.float64))

    images = rng.integers(0, 255, size=(N, 7, 5, 1)).astype(np.uint8)
    np.save(tmp_path / "i.npy", images)
    ds = load_dataset(str(tmp_path / "i.npy"))
    assert ds.image_shape == (7, 5, 1) and ds.x.shape == (N, 35)
    np.save(tmp_path / "g.npy", images[..., 0])
    assert load_dataset(str(tmp_path / "g.npy")).image_shape == (7, 5)


def test_npz_x_with_labels_and_ids(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.random((N, 4))
    y = (np.arange(N) % 10 == 0).astype(np.int32)
    np.savez(tmp_path / "d.npz", x=x, y=y, ids=np.arange(100, 100 + N))
    ds = load_dataset(str(tmp_path / "d.npz"))
    np.testing.assert_array_equal(ds.x, x)
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == y.tolist()
    assert ds.ids == list(range(100, 100 + N))


def test_npz_first_array_and_named_label_array(tmp_path):
    rng = np.random.default_rng(4)
    images = rng.random((N, 3, 3))
    np.savez(tmp_path / "d.npz", images=images, labels=np.zeros(N), anomaly=np.ones(N))
    ds = load_dataset(str(tmp_path / "d.npz"))
    assert ds.image_shape == (3, 3) and ds.labels.tolist() == [0] * N
    ds = load_dataset(str(tmp_path / "d.npz"), label_column="anomaly")
    assert ds.labels.tolist() == [1] * N


def test_image_shape_option_reshapes_flat_rows(tmp_path, numeric_rows):
    np.save(tmp_path / "flat.npy", numeric_rows(N, 12))
    assert load_dataset(str(tmp_path / "flat.npy"), image_shape=(3, 4)).image_shape == (3, 4)
    assert load_dataset(str(tmp_path / "flat.npy"), image_shape=(2, 2, 3)).image_shape == (2, 2, 3)


def test_features_on_arrays_use_f_names(tmp_path, numeric_rows):
    x = numeric_rows(N, 4)
    np.save(tmp_path / "m.npy", x)
    ds = load_dataset(str(tmp_path / "m.npy"), features=["f3", "f1"])
    np.testing.assert_array_equal(ds.x, x[:, [3, 1]])
    assert ds.feature_names == ["f3", "f1"]


def test_min_rows_can_be_lowered_for_scoring(write_csv):
    ds = load_dataset(write_csv("a,b\n1,2\n3,4\n"), min_rows=1)
    assert ds.n_rows == 2 and ds.n_features == 2


@pytest.mark.parametrize(
    ("text", "shape"),
    [("28x28", (28, 28)), ("28x28x1", (28, 28, 1)), ("8x8", (8, 8)), (" 4X6x3 ", (4, 6, 3))],
)
def test_parse_image_shape(text, shape):
    assert parse_image_shape(text) == shape
