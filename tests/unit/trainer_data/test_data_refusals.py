"""Every unusable input is refused with a one-line DataError that names the problem."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from anomaly_contract.errors import AnomalyError, DataError
from trainer.data import load_dataset, parse_image_shape

N = 30


def refused(source: str, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(source, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    assert isinstance(info.value, AnomalyError)
    return message


def good_csv(n: int = N) -> str:
    return "a,b,label\n" + "".join(f"{i},{i * 2},0\n" for i in range(n))


def test_missing_file(tmp_path):
    message = refused(str(tmp_path / "nope.csv"))
    assert "not found" in message and "nope.csv" in message


def test_directory_is_not_a_file(tmp_path):
    (tmp_path / "d.csv").mkdir()
    assert "not a file" in refused(str(tmp_path / "d.csv"))


@pytest.mark.parametrize("name", ["data.txt", "data.json", "data"])
def test_unknown_extension(tmp_path, name):
    (tmp_path / name).write_text("a,b\n1,2\n")
    message = refused(str(tmp_path / name))
    assert "cannot read" in message and ".csv" in message and "builtin:" in message


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet", ".npy", ".npz"])
def test_empty_file(tmp_path, suffix):
    (tmp_path / f"e{suffix}").write_bytes(b"")
    assert "is empty" in refused(str(tmp_path / f"e{suffix}"))


def test_csv_with_header_only(write_csv):
    assert "no data rows" in refused(write_csv("a,b\n"))


def test_csv_without_header(write_csv):
    assert "add a header" in refused(write_csv("1,2\n3,4\n"))


def test_csv_duplicate_header(write_csv):
    assert "repeats column 'a'" in refused(write_csv("a,a\n1,2\n"))


def test_csv_row_longer_than_header(write_csv):
    assert "more values than the header" in refused(write_csv("a,b\n1,2,3\n4,5,6\n"))


def test_csv_non_numeric_value_names_column_and_row(write_csv):
    text = good_csv().replace("\n7,14,0\n", "\n7,oops,0\n")
    message = refused(write_csv(text))
    assert "non-numeric value 'oops'" in message and "'b'" in message and "data row 8" in message


@pytest.mark.parametrize(
    ("cell", "what"), [("", "missing or NaN"), ("nan", "missing or NaN"), ("inf", "infinite")]
)
def test_csv_nan_and_inf(write_csv, cell, what):
    text = good_csv().replace("\n3,6,0\n", f"\n3,{cell},0\n")
    message = refused(write_csv(text))
    assert what in message and "'b'" in message and "data row 4" in message


def test_label_column_not_there(write_csv):
    message = refused(write_csv(good_csv()), label_column="truth")
    assert "label column 'truth' not found" in message and "'label'" in message


def test_label_must_be_integers(write_csv):
    text = "a,label\n" + "".join(f"{i},{'x' if i == 4 else 0}\n" for i in range(N))
    message = refused(write_csv(text))
    assert "label 'x'" in message and "not an integer" in message


def test_unknown_feature_requested(write_csv):
    message = refused(write_csv(good_csv()), features=["a", "zz"])
    assert "unknown feature(s) 'zz'" in message and "'a'" in message


def test_label_column_requested_as_feature(write_csv):
    assert "cannot also be a feature" in refused(write_csv(good_csv()), features=["a", "label"])


def test_non_numeric_feature_requested(write_csv):
    text = "a,site\n" + "".join(f"{i},north\n" for i in range(N))
    assert "feature 'site' is not numeric" in refused(write_csv(text), features=["a", "site"])


def test_duplicate_and_empty_feature_requests(write_csv):
    assert "more than once" in refused(write_csv(good_csv()), features=["a", "a"])
    assert "empty" in refused(write_csv(good_csv()), features=[])


def test_no_numeric_columns(write_csv):
    text = "name,site\n" + "".join(f"n{i},north\n" for i in range(N))
    assert "no numeric feature columns" in refused(write_csv(text))


def test_too_few_rows(write_csv):
    message = refused(write_csv(good_csv(5)))
    assert "only 5 rows" in message and "at least 20" in message


def test_data_that_does_not_fit_the_image_shape(tmp_path):
    np.save(tmp_path / "m.npy", np.zeros((N, 10)))
    message = refused(str(tmp_path / "m.npy"), image_shape=(3, 3))
    assert "10 values" in message and "3x3" in message and "needs 9" in message


@pytest.mark.parametrize("text", ["28", "28x", "0x5", "axb", "2x2x2x2", "", "28*28"])
def test_bad_image_shape_text(text):
    with pytest.raises(DataError, match="invalid image shape"):
        parse_image_shape(text)


def test_image_shape_argument_checked():
    assert "invalid image shape" in refused("builtin:digits", image_shape=(8,))


def test_ragged_jsonl_list_lengths(write_jsonl):
    records = [{"features": [1.0, 2.0, 3.0]} for _ in range(N)]
    records[6] = {"features": [1.0, 2.0]}
    message = refused(write_jsonl(records))
    assert "line 7: 'features' has 2 values" in message and "(wrong_length)" in message
    assert "the 3 values of line 1" in message


def test_jsonl_record_lacking_a_named_feature(write_jsonl):
    records = [{"a": 1, "b": 2} for _ in range(N)]
    records[3] = {"a": 1, "c": 5}
    message = refused(write_jsonl(records))
    assert "line 4: record lacks feature(s) b (missing_feature)" in message
    assert "named by line 1 ('a', 'b')" in message


def test_jsonl_positional_record_must_match_the_named_features(write_jsonl):
    records = [{"features": [1.0, 2.0]} for _ in range(N)]
    records[2] = {"f0": 1.0, "f1": 2.0, "f2": 3.0}
    message = refused(write_jsonl(records))
    assert "line 1: 'features' has 2 values, the model expects 3" in message
    assert "named by line 3" in message


def test_jsonl_ragged_nested_image_rows(write_jsonl):
    records = [{"features": [[1, 2], [3, 4]]} for _ in range(N)]
    records[1] = {"features": [[1, 2], [3]]}
    message = refused(write_jsonl(records))
    assert "line 2: nested 'features' do not match the model's image shape 2x2" in message


def test_jsonl_invalid_json_and_non_objects(write_jsonl):
    message = refused(write_jsonl(['{"a": 1}', "{nope"]))
    assert "line 2: not JSON" in message and "(not_json)" in message
    message = refused(write_jsonl([[1, 2, 3]] * N))
    assert "line 1: expected a JSON object, got array (wrong_shape)" in message


def test_jsonl_non_numeric_and_null_values(write_jsonl):
    records = [{"a": i, "b": i} for i in range(N)]
    records[4] = {"a": "hot", "b": 1}
    assert "line 5: feature 'a' is a string, not a number" in refused(write_jsonl(records))
    records[4] = {"a": None, "b": 1}
    assert "line 5: feature 'a' is null (null_value)" in refused(write_jsonl(records))
    records[4] = {"a": 1e13, "b": 1}
    assert "line 5: feature 'a' = 1e+13 exceeds ±1e+12" in refused(write_jsonl(records))


def test_jsonl_labels_must_be_integers_and_present(write_jsonl):
    records = [{"a": i, "b": i, "label": 0} for i in range(N)]
    records[6]["label"] = 0.5
    message = refused(write_jsonl(records))
    assert "line 7: label 0.5 in field 'label' is not an integer" in message
    del records[6]["label"]
    assert "line 7: record lacks the label field 'label'" in refused(write_jsonl(records))
    message = refused(write_jsonl(records), label_column="truth")
    assert "label column 'truth' not found" in message


def test_jsonl_only_blank_lines(write_jsonl):
    assert "no records" in refused(write_jsonl(["", "   "]))


def test_npy_refusals(tmp_path):
    np.save(tmp_path / "one_d.npy", np.zeros(N))
    assert "shape (30,)" in refused(str(tmp_path / "one_d.npy"))
    np.save(tmp_path / "text.npy", np.array([["a", "b"]] * N))
    assert "not numbers" in refused(str(tmp_path / "text.npy"))
    bad = np.ones((N, 3))
    bad[4, 2] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    assert "NaN at row 5, value 2" in refused(str(tmp_path / "nan.npy"))
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    assert "no rows" in refused(str(tmp_path / "empty.npy"))
    (tmp_path / "junk.npy").write_bytes(b"not an array at all")
    assert "not a readable .npy" in refused(str(tmp_path / "junk.npy"))
    assert ".npy files hold no labels" in refused(str(tmp_path / "nan.npy"), label_column="y")


def test_npz_refusals(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((N, 2)), y=np.ones(N - 1))
    assert "array 'y' has shape (29,)" in refused(str(tmp_path / "d.npz"))
    np.savez(tmp_path / "f.npz", x=np.ones((N, 2)), y=np.full(N, 0.5))
    assert "non-integer labels" in refused(str(tmp_path / "f.npz"))
    assert "no array named 'truth'" in refused(str(tmp_path / "f.npz"), label_column="truth")
    (tmp_path / "junk.npz").write_bytes(b"PK not really a zip")
    assert "not a readable .npz" in refused(str(tmp_path / "junk.npz"))


def test_parquet_refusals(tmp_path):
    (tmp_path / "junk.parquet").write_bytes(b"definitely not parquet")
    assert "cannot read it as Parquet" in refused(str(tmp_path / "junk.parquet"))
    frame = pd.DataFrame({"a": np.arange(N, dtype=float)})
    frame.loc[3, "a"] = np.inf
    frame.to_parquet(tmp_path / "inf.parquet")
    assert "infinite value in column 'a' at row 4" in refused(str(tmp_path / "inf.parquet"))


def test_no_source_and_unknown_builtin():
    assert "no data given" in refused("")
    message = refused("builtin:cats")
    assert "unknown built-in data set" in message and "builtin:sensors" in message


def test_bad_kafka_url_is_refused_before_connecting():
    assert "max_records" in refused("kafka://localhost:9092/t?max_records=zero")
    assert "no topic" in refused("kafka://localhost:9092/")
