"""Loading, validation, splitting and normalisation: every bad input gets a clear DataError."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch.testing import assert_close

from training.data import chosen_split, file_digest, load_table, prepare, split_indices, to_tensors
from training.errors import DataError
from training.model import least_squares
from training.normalize import Normalizer, fit_normalizer
from training.serving import Predictor

from .conftest import DATA

GOOD = "t_u,t_c\n35.7,0.5\n55.9,14.0\n58.2,15.0\n"


def test_loads_the_books_data():
    frame = load_table(DATA, ["t_u"], "t_c")
    assert list(frame.columns) == ["t_u", "t_c"] and len(frame) == 11
    assert frame["t_u"].iloc[0] == 35.7 and frame["t_c"].iloc[7] == -4.0


def test_parquet_and_csv_give_the_same_table(tmp_path):
    path = tmp_path / "t.parquet"
    pd.read_csv(DATA).to_parquet(path)
    assert load_table(path, ["t_u"], "t_c").equals(load_table(DATA, ["t_u"], "t_c"))


def test_extra_columns_are_ignored_and_order_follows_features(write):
    path = write("x.csv", "note,t_c,b,t_u\nx,1,2,3\ny,4,5,6\n")
    frame = load_table(path, ["t_u", "b"], "t_c")
    assert list(frame.columns) == ["t_u", "b", "t_c"]
    assert frame.to_numpy().tolist() == [[3, 2, 1], [6, 5, 4]]


def test_digest_changes_with_content(write):
    a, b = write("a.csv", GOOD), write("b.csv", GOOD + "1,2\n")
    assert file_digest(a) == file_digest(write("c.csv", GOOD)) != file_digest(b)
    assert len(file_digest(a)) == 64


@pytest.mark.parametrize(
    ("name", "content", "column", "pattern"),
    [
        ("empty.csv", "", None, "empty"),
        ("blank.csv", "\n\n", None, "no columns"),
        ("header.csv", "t_u,t_c\n", None, "header but no data rows"),
        ("typo.csv", "t_U,t_c\n1,2\n", "t_u", "column not found.*'t_U', 't_c'"),
        ("semicolon.csv", "t_u;t_c\n1;2\n", "t_u", "delimiter"),
        ("text.csv", "t_u,t_c\n1,2\nabc,3\n", "t_u", "non-numeric value 'abc' in data row 2"),
        ("missing.csv", "t_u,t_c\n1,2\n3,\n", "t_c", "missing value in data row\\(s\\) 2"),
        ("inf.csv", "t_u,t_c\n1,2\ninf,3\n", "t_u", "infinite value in data row\\(s\\) 2"),
        ("ragged.csv", "t_u,t_c\n1,2\n3,4,5\n", None, "not a well-formed CSV"),
        (
            "binary.csv",
            bytes(range(256)) * 4,
            None,
            "cannot decode|not a well-formed|cannot read|column not found",
        ),
        ("bools.parquet", None, "t_u", "booleans"),
        ("data.xlsx", "whatever", None, "unsupported file type '.xlsx'"),
    ],
)
def test_bad_files_name_the_file_column_and_problem(write, tmp_path, name, content, column, pattern):
    if name == "bools.parquet":
        path = str(tmp_path / name)
        pd.DataFrame({"t_u": [True, False], "t_c": [1.0, 2.0]}).to_parquet(path)
    else:
        path = write(name, content)
    with pytest.raises(DataError, match=pattern) as info:
        load_table(path, ["t_u"], "t_c")
    assert str(info.value).startswith(path)
    if column is not None:
        assert info.value.column == column and f"column '{column}'" in str(info.value)


def test_parquet_with_string_numbers_is_refused_at_the_first_bad_row(tmp_path):
    path = tmp_path / "strings.parquet"
    pd.DataFrame({"t_u": ["1.5", "oops"], "t_c": [1.0, 2.0]}).to_parquet(path)
    with pytest.raises(DataError, match="column 't_u': non-numeric value 'oops' in data row 2"):
        load_table(path, ["t_u"], "t_c")


def test_corrupt_parquet_and_missing_path_and_directory(write, tmp_path):
    with pytest.raises(DataError, match="cannot read the file"):
        load_table(write("bad.parquet", b"PAR1 not really"), ["t_u"], "t_c")
    with pytest.raises(DataError, match="file not found"):
        load_table(tmp_path / "nope.csv", ["t_u"], "t_c")
    with pytest.raises(DataError, match="is a directory"):
        load_table(tmp_path, ["t_u"], "t_c")


def test_split_is_seeded_disjoint_and_keeps_the_books_sizes():
    train_a, val_a = split_indices(11, 0.2, seed=42)
    train_b, val_b = split_indices(11, 0.2, seed=42)
    assert torch.equal(train_a, train_b) and torch.equal(val_a, val_b)
    assert len(val_a) == 2 and len(train_a) == 9  # n_val = int(0.2 * 11)
    assert sorted(train_a.tolist() + val_a.tolist()) == list(range(11))
    assert not torch.equal(split_indices(11, 0.2, seed=43)[1], val_a) or not torch.equal(
        split_indices(11, 0.2, seed=44)[1], val_a
    )
    train_all, val_none = split_indices(11, 0.0, seed=1)
    assert len(train_all) == 11 and len(val_none) == 0


def test_too_few_rows_for_the_split():
    with pytest.raises(DataError, match="3 data rows are too few for val_fraction=0.2: it needs at least 5"):
        split_indices(3, 0.2, seed=0, source="f.csv")
    with pytest.raises(DataError, match="training needs at least 2"):
        split_indices(1, 0.0, seed=0, source="f.csv")
    with pytest.raises(DataError, match="^f.csv: "):
        split_indices(2, 0.5, seed=0, source="f.csv")


def test_validation_rows_by_position_override_the_fraction_and_the_seed():
    frame = load_table(DATA, ["t_u"], "t_c")
    p = prepare(frame, ["t_u"], "t_c", "zscore", 0.1, 0.5, seed=3, val_indices=[10, 7])
    assert p.val_index.tolist() == [10, 7] and p.train_index.tolist() == [
        0,
        1,
        2,
        3,
        4,
        5,
        6,
        8,
        9,
    ]  # file order
    assert p.val_frame["t_u"].tolist() == [68.4, 21.8] and p.val_frame["t_c"].tolist() == [21.0, -4.0]
    assert p.normalizer.shift[0] == pytest.approx(frame["t_u"].drop([7, 10]).mean())  # training rows only
    again = prepare(frame, ["t_u"], "t_c", "zscore", 0.1, 0.2, seed=99, val_indices=[10, 7])
    assert torch.equal(again.val_index, p.val_index) and torch.equal(again.x_train, p.x_train)


def test_validation_rows_beyond_the_table_or_leaving_too_few_are_refused():
    with pytest.raises(DataError, match=r"^f.csv: val_indices \[11, 12\] are beyond the 11 data rows"):
        chosen_split(11, [0, 11, 12], source="f.csv")
    with pytest.raises(DataError, match="3 data rows leave 1 for training; training needs at least 2"):
        chosen_split(3, [0, 2], source="f.csv")
    train, val = chosen_split(3, [1])
    assert train.tolist() == [0, 2] and val.tolist() == [1]


def test_normalisation_methods():
    x = torch.tensor([[1.0, 10.0], [3.0, 20.0], [5.0, 60.0]])
    assert torch.equal(fit_normalizer(x, ["a", "b"], "none").apply(x), x)
    assert torch.equal(fit_normalizer(x, ["a", "b"], "scale", 0.1).apply(x), 0.1 * x)
    z = fit_normalizer(x, ["a", "b"], "zscore").apply(x)
    assert_close(z.mean(0), torch.zeros(2), atol=1e-6, rtol=0)
    assert_close(z.std(0, correction=0), torch.ones(2))
    m = fit_normalizer(x, ["a", "b"], "minmax").apply(x)
    assert_close(m.min(0).values, torch.zeros(2))
    assert_close(m.max(0).values, torch.ones(2))


# a informs; b is constant, a copy of a or a copy of y on the training rows 0-4, but not on row 5
UNINFORMATIVE = [
    ("constant", "a,b,y\n1,5,2\n2,5,4\n4,5,7\n7,5,9\n8,5,13\n3,6,5\n", "is constant on the training split"),
    ("duplicate", "a,b,y\n1,1,2\n2,2,4\n4,4,7\n7,7,9\n8,8,13\n3,9,5\n", "is identical to column 'a'"),
    ("target", "a,b,y\n1,2,2\n2,4,4\n4,7,7\n7,9,9\n8,13,13\n3,1,5\n", "is identical to the target 'y'"),
]


@pytest.mark.parametrize("method", ["none", "scale", "zscore", "minmax"])
@pytest.mark.parametrize(("case", "content", "problem"), UNINFORMATIVE, ids=[c[0] for c in UNINFORMATIVE])
def test_an_uninformative_feature_on_the_training_split_is_refused(write, method, case, content, problem):
    path = write(f"{case}.csv", content)
    frame = load_table(path, ["a", "b"], "y")
    with pytest.raises(DataError) as info:
        prepare(frame, ["a", "b"], "y", method, 0.1, 0.5, seed=0, source=path, val_indices=[5])
    assert str(info.value).startswith(f"{path}: column 'b': {problem}"), str(info.value)
    assert info.value.source == path and info.value.column == "b"
    # the validation row does not rescue it, and is all that made it fail: with row 5 training too, it trains
    prepare(frame, ["a", "b"], "y", method, 0.1, 0.0, seed=0, source=path)


@pytest.mark.parametrize("method", ["none", "scale", "zscore", "minmax"])
def test_two_identical_features_are_both_named_and_a_constant_one_comes_first(write, method):
    path = write("copies.csv", "a,b,c,d,y\n1,3,1,5,2\n2,3,2,5,4\n4,3,4,5,1\n")
    frame = load_table(path, ["a", "b", "c", "d"], "y")
    for features, column, other in ((["a", "c"], "c", "a"), (["c", "a"], "a", "c")):
        with pytest.raises(DataError) as info:
            prepare(frame, features, "y", method, 0.1, 0.0, seed=0, source=path)
        assert str(info.value).startswith(
            f"{path}: column '{column}': is identical to column '{other}' on the training split"
        ), str(info.value)
    with pytest.raises(DataError) as info:
        prepare(frame, ["a", "c", "d", "b"], "y", method, 0.1, 0.0, seed=0, source=path)
    assert str(info.value).startswith(
        f"{path}: column 'd': is constant on the training split (all 3 training rows hold 5)"
    ), str(info.value)


def test_the_normalizer_still_refuses_to_divide_by_zero():
    x = torch.tensor([[1.0, 5.0], [2.0, 5.0]])
    for method in ("zscore", "minmax"):
        with pytest.raises(ValueError, match=f"feature 'b' is constant, so '{method}' would divide by zero"):
            fit_normalizer(x, ["a", "b"], method)


def test_a_constant_column_at_prediction_time_is_fine(write):
    frame = load_table(DATA, ["t_u"], "t_c")
    p = prepare(frame, ["t_u"], "t_c", "zscore", 0.1, 0.0, seed=0, source=str(DATA))
    predictor = Predictor(least_squares(p.x_train, p.y_train), p.normalizer, "t_c")
    inputs = load_table(write("readings.csv", "t_u\n50\n50\n50\n"), ["t_u"])
    book = 152075 / 283314 * 50 - 2451344 / 141657  # the book's optimum at t_u = 50
    assert predictor.predict(inputs)["t_c"].tolist() == pytest.approx([book] * 3, rel=1e-5)


def test_a_val_fraction_too_small_for_one_validation_row_is_refused_naming_it():
    frame = load_table(DATA, ["t_u"], "t_c")
    with pytest.raises(DataError) as info:
        prepare(frame, ["t_u"], "t_c", "scale", 0.1, 0.001, seed=0, source=str(DATA))
    assert str(info.value) == (
        f"{DATA}: 11 data rows are too few for val_fraction=0.001: it needs at least 1000 rows to hold one "
        "validation row (or set val_fraction=0)"
    )


def test_features_in_any_order_of_the_files_columns():
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0], "c": [5.0, 6.0], "y": [0.0, 1.0]})
    x, y = to_tensors(frame, ["c", "a"], "y")
    assert x.tolist() == [[5.0, 1.0], [6.0, 2.0]] and y.tolist() == [0.0, 1.0]


def test_statistics_come_from_the_training_rows_only():
    frame = load_table(DATA, ["t_u"], "t_c")
    train_idx, _ = split_indices(len(frame), 0.2, seed=42)
    x, _ = to_tensors(frame, ["t_u"], "t_c", torch.float64)
    fitted = fit_normalizer(x[train_idx], ["t_u"], "zscore")
    assert fitted.shift[0] == pytest.approx(float(x[train_idx].mean()))
    assert fitted.shift[0] != pytest.approx(float(x.mean()))


@pytest.mark.parametrize("method", ["none", "scale", "zscore", "minmax"])
def test_fold_turns_normalised_params_into_original_units(method):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(20, 3, generator=g, dtype=torch.float64) * 5 + 2
    n = fit_normalizer(x, ["a", "b", "c"], method, 0.1)
    params = torch.randn(4, generator=g, dtype=torch.float64)
    folded = n.fold(params)
    assert_close(n.apply(x) @ params[:-1] + params[-1], x @ folded[:-1] + folded[-1])
    assert Normalizer.from_dict(n.to_dict()) == n
