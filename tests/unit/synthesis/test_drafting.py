"""Drafting a schema from a table: review notes, identifiers, long category lists, empty columns.

A draft's categories become public (in the schema and in the synthetic table), so the drafter
must not turn an identifier's values into categories, and must say what it guessed.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsynth.client_node.data import read_table
from fedsynth.synthesis.schema import (
    IGNORED,
    MAX_CATEGORIES,
    MIN_CATEGORY_ROWS,
    MIN_IDENTIFIER_VALUES,
    OTHER,
    Column,
    DataValidationError,
    Schema,
    SchemaError,
    draft_schema_with_notes,
    infer_schema,
    validate_frame,
)


def _note(notes: list[str], column: str) -> str:
    hits = [n for n in notes if n.startswith(f"column {column!r}: ")]
    assert len(hits) == 1, notes
    return hits[0]


def _ages(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(18, 93, n)


# --- numbers mixed with text -----------------------------------------------------------------


def test_a_column_of_mostly_numbers_with_some_text_is_drafted_categorical_with_a_note() -> None:
    age = _ages(5000).astype(object)
    age[[3, 10, 50]] = ["unknown", "40s", "unknown"]
    df = pd.DataFrame({"age": age, "x": np.linspace(0, 1, 5000)})
    schema, notes = draft_schema_with_notes(df)
    assert schema["age"].kind == "categorical"
    note = _note(notes, "age")
    assert "mostly numbers" in note and "3 of 5,000 values are not" in note
    assert "'unknown'" in note and "'40s'" in note
    assert "drafted as categorical" in note and "declare it numeric" in note
    assert infer_schema(df) == schema  # the old entry point drafts the same schema
    validate_frame(df, schema, source="f")


def test_a_few_number_labels_in_a_text_column_are_not_worth_a_note() -> None:
    df = pd.DataFrame({"size": ["S", "M", "L", "10", "S", "M"] * 10})
    schema, notes = draft_schema_with_notes(df)
    assert schema["size"].categories == ("10", "L", "M", "S")
    assert notes == []


def test_a_large_csv_with_text_after_many_numbers_reads_as_one_type(tmp_path: Path) -> None:
    # pandas reads big CSVs in chunks by default: numbers from some chunks, text from others
    n = 300_000
    rows = ["age,x,y", "unknown,1,2", *(f"{18 + i % 70},{i},{i % 7}" for i in range(n))]
    path = tmp_path / "big.csv"
    path.write_text("\n".join(rows) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mixed types" warning either
        df = read_table(path)
    assert set(df["age"].map(type)) == {str}
    assert df.attrs["source"] == str(path)
    schema, notes = draft_schema_with_notes(df)
    assert "1 of 300,001 values are not ('unknown')" in _note(notes, "age")
    assert "18" in schema["age"].categories


# --- identifiers -----------------------------------------------------------------------------


def test_an_identifier_like_text_column_is_left_out_with_a_note() -> None:
    rng = np.random.default_rng(1)
    names = [f"person-{i}" for i in rng.integers(0, 1_000_000, 5000)]
    df = pd.DataFrame({"name": names, "age": _ages(5000)})
    schema, notes = draft_schema_with_notes(df)
    assert schema.names == ["age"]
    assert schema.meta[IGNORED] == ["name"] and schema.ignored == ["name"]
    distinct = len(set(names))
    note = _note(notes, "name")
    assert f"{distinct:,} distinct values in 5,000 rows" in note
    assert "identifier" in note and "left out" in note and "declare it in a schema" in note
    text = schema.to_json()
    assert not any(n in text for n in names)  # no real value in the public schema
    # the table it came from validates: the identifier is dropped unread
    assert list(validate_frame(df, schema, source="f").columns) == ["age"]
    assert Schema.from_json(text).ignored == ["name"]


@pytest.mark.parametrize(("distinct", "rows", "identifier", "kept"), [
    # a short list is not an identifier, but values held by fewer than 3 rows stay private
    (MIN_IDENTIFIER_VALUES - 1, MIN_IDENTIFIER_VALUES - 1, False, False),
    (MIN_IDENTIFIER_VALUES - 1, 3 * (MIN_IDENTIFIER_VALUES - 1), False, True),
    (MIN_IDENTIFIER_VALUES, MIN_IDENTIFIER_VALUES, True, False),
    (60, 120, False, False),  # exactly half as many values as rows: two rows per value
    (60, 180, False, True),  # three rows per value: public categories
    (61, 120, True, False),
    (5000, 5000, True, False),
])
def test_identifier_rule_distinct_values_against_rows(distinct: int, rows: int,
                                                      identifier: bool, kept: bool) -> None:
    values = [f"v{i % distinct}" for i in range(rows)]
    schema, notes = draft_schema_with_notes(pd.DataFrame({"c": values, "k": [1] * rows}))
    assert ("c" in schema.names) == kept
    assert any("identifier" in n for n in notes) == identifier
    if not kept and not identifier:
        assert any(f"none held by {MIN_CATEGORY_ROWS} rows" in n for n in notes)


def test_a_category_held_by_fewer_than_three_rows_is_not_made_public() -> None:
    c = ["x", "y"] * 50
    c[0] = "RARE_SECRET"
    c[1] = "TWICE"
    c[3] = "TWICE"
    schema, notes = draft_schema_with_notes(pd.DataFrame({"c": c}))
    assert schema["c"].categories == (OTHER, "x", "y")
    assert "RARE_SECRET" not in schema.to_json() and "TWICE" not in schema.to_json()
    # the owner is told which values folded, to list them if they are public
    assert any("'RARE_SECRET'" in n and "'TWICE'" in n and OTHER in n for n in notes)
    # the table still validates: the folded values are read as the other category
    assert set(validate_frame(pd.DataFrame({"c": c}), schema, source="f")["c"]) == {
        OTHER, "x", "y"}


def test_integer_row_numbers_are_left_out_but_integer_measures_stay_numeric() -> None:
    rng = np.random.default_rng(2)
    n = 2000
    sampled_ids = np.sort(rng.choice(np.arange(10_000, 10_000 + n * 5 // 4), n, replace=False))
    days = rng.integers(1, 3000, n)  # like a survival time: many values, some repeated
    amounts = rng.choice(10**9, n, replace=False)  # every value distinct, spread wide
    df = pd.DataFrame({
        "row": np.arange(n),  # a row number: 0..n-1
        "id": sampled_ids,  # numbered ids with gaps (rows removed)
        "days": days,
        "cents": amounts,
        "w": rng.normal(size=n),  # floats are never identifiers
        "age": rng.integers(18, 93, n),
    })
    schema, notes = draft_schema_with_notes(df)
    assert schema.ignored == ["row", "id"]
    assert "row number or identifier" in _note(notes, "row")
    assert schema["days"].kind == "integer" and schema["age"].kind == "integer"
    assert len(np.unique(days)) > MAX_CATEGORIES and len(np.unique(days)) * 2 > n
    assert schema["cents"].kind == "integer"
    assert "every value is distinct" in _note(notes, "cents")  # maybe an id: the owner decides
    assert schema["w"].kind == "continuous"
    assert not any(n.startswith(("column 'days'", "column 'w'", "column 'age'")) for n in notes)


def test_a_numbered_id_with_missing_values_read_as_floats_is_left_out() -> None:
    ids = np.arange(1, 501, dtype=float)
    ids[::50] = np.nan
    schema, _ = draft_schema_with_notes(pd.DataFrame({"id": ids, "v": np.ones(500)}))
    assert schema.ignored == ["id"]


# --- long category lists ---------------------------------------------------------------------


def test_a_long_category_list_keeps_only_frequent_values() -> None:
    rng = np.random.default_rng(3)
    common = [f"town{i}" for i in range(300)]
    rare = [f"hamlet{i}" for i in range(50)]  # held by one row each
    values = list(rng.choice(common, 6000)) + rare
    schema, notes = draft_schema_with_notes(pd.DataFrame({"town": values}))
    cats = schema["town"].categories
    assert len(cats) == MAX_CATEGORIES and OTHER in cats
    assert not any(c.startswith("hamlet") for c in cats)
    counts = pd.Series(values).value_counts()
    assert all(counts[c] >= MIN_CATEGORY_ROWS for c in cats if c != OTHER)
    note = _note(notes, "town")
    assert "350 distinct values" in note and f"fold into {OTHER!r}" in note


def test_a_long_list_with_no_frequent_value_is_left_out() -> None:
    values = [f"code{i}" for i in range(150)] * 2  # each held by two rows
    schema, notes = draft_schema_with_notes(pd.DataFrame({"code": values, "k": [0] * 300}))
    assert schema.ignored == ["code"]
    assert f"none held by {MIN_CATEGORY_ROWS} rows or more" in _note(notes, "code")


def test_a_long_list_holding_the_other_marker_does_not_list_it_twice() -> None:
    values = [OTHER] * 50 + [f"v{i}" for i in range(200) for _ in range(3)]
    schema, _ = draft_schema_with_notes(pd.DataFrame({"c": values}))
    assert schema["c"].categories.count(OTHER) == 1


# --- columns with no values ------------------------------------------------------------------


@pytest.mark.parametrize("empty", [
    pd.Series([np.nan] * 6),  # an empty CSV column
    pd.Series([None] * 6, dtype=object),  # an all-null Parquet column
])
def test_an_all_missing_column_is_drafted_and_validates(empty: pd.Series) -> None:
    df = pd.DataFrame({"k": [1, 2, 3, 1, 2, 3], "e": empty})
    schema, notes = draft_schema_with_notes(df)
    assert schema["e"] == Column("e", "continuous", lower=0.0, upper=0.0, nullable=True)
    assert "every value is missing" in _note(notes, "e")
    out = validate_frame(df, schema, source="f")
    assert out["e"].isna().all() and len(out) == 6


@pytest.mark.parametrize("column", [
    Column("e", "categorical", ("a", "b"), nullable=True),
    Column("e", "integer", lower=0, upper=9, nullable=True),
    Column("e", "continuous", lower=0, upper=1, nullable=True),
])
def test_an_all_missing_column_validates_against_any_nullable_kind(column: Column) -> None:
    schema = Schema((Column("k", "integer", lower=0, upper=9), column))
    for empty in (pd.Series([np.nan] * 3), pd.Series([None] * 3, dtype=object)):
        out = validate_frame(pd.DataFrame({"k": [1, 2, 3], "e": empty}), schema, source="f")
        assert out["e"].isna().all()
    not_nullable = Schema((Column("k", "integer", lower=0, upper=9),
                           Column(column.name, column.kind, column.categories, column.lower,
                                  column.upper, nullable=False)))
    with pytest.raises(DataValidationError, match="missing values"):
        validate_frame(pd.DataFrame({"k": [1, 2, 3], "e": [np.nan] * 3}), not_nullable,
                       source="f")


# --- nothing to draft ------------------------------------------------------------------------


def test_a_table_whose_every_column_is_left_out_is_refused_with_the_reasons() -> None:
    n = 500
    df = pd.DataFrame({"id": np.arange(n), "email": [f"u{i}@example.org" for i in range(n)]})
    with pytest.raises(SchemaError) as info:
        draft_schema_with_notes(df)
    text = str(info.value)
    assert "every column was left out" in text and "declare the columns you need" in text
    assert "column 'id'" in text and "column 'email'" in text
    assert "u1@example.org" not in text


def test_an_empty_table_is_refused() -> None:
    with pytest.raises(SchemaError, match="no rows"):
        draft_schema_with_notes(pd.DataFrame({"a": pd.Series([], dtype=float)}))
    with pytest.raises(SchemaError, match="no columns"):
        draft_schema_with_notes(pd.DataFrame(index=range(3)))


# --- ignored columns and strict categories in validation -------------------------------------


def test_ignored_columns_are_dropped_but_other_extra_columns_are_still_refused() -> None:
    schema = Schema((Column("a", "integer", lower=0, upper=9),), meta={IGNORED: ["id"]})
    df = pd.DataFrame({"id": [7, 8], "a": [1, 2]})
    assert list(validate_frame(df, schema, source="f").columns) == ["a"]
    assert list(validate_frame(df[["a"]], schema, source="f").columns) == ["a"]  # optional
    with pytest.raises(DataValidationError, match=r"\['typo'\] are not in the schema"):
        validate_frame(df.assign(typo=0), schema, source="f")


@pytest.mark.parametrize(("ignored", "needle"), [
    ("id", "must be a list of column names"),
    ([1], "must be a list of column names"),
    (["a"], "that the schema also declares"),
])
def test_malformed_ignored_columns_are_a_schema_error(ignored: object, needle: str) -> None:
    doc = {"columns": [{"name": "a", "kind": "integer", "lower": 0, "upper": 1}],
           IGNORED: ignored}
    with pytest.raises(SchemaError, match=needle) as info:
        Schema.from_dict(doc, source="consortium.json")
    assert str(info.value).startswith("consortium.json:")


def test_fold_unknown_false_refuses_categories_the_schema_does_not_list() -> None:
    schema = Schema((Column("c", "categorical", ("a", OTHER)),))
    df = pd.DataFrame({"c": ["a", "zzz", OTHER]})
    assert validate_frame(df, schema, source="f")["c"].tolist() == ["a", OTHER, OTHER]
    with pytest.raises(DataValidationError) as info:
        validate_frame(df, schema, source="syn.csv", fold_unknown=False)
    (problem,) = info.value.problems
    assert "'zzz'" in problem and "1 row(s) (file lines 3)" in problem
    assert "schema of the job that made the table" in problem


def test_numbers_written_for_people_are_named_as_such_not_as_identifiers() -> None:
    rng = np.random.default_rng(5)
    amounts = rng.integers(1000, 5_000_000, 500)
    df = pd.DataFrame({"amt": [f"{v:,}" for v in amounts],
                       "price": [f"${v / 100:,.2f}" for v in amounts],
                       "rate": ["5%", "10%", "12.5%"] * 166 + ["5%", "10%"],
                       "k": rng.integers(0, 3, 500)})
    schema, notes = draft_schema_with_notes(df)
    assert set(schema.ignored) == {"amt", "price"}
    for name in ("amt", "price"):
        note = _note(notes, name)
        assert "thousands separators" in note and "plain numbers" in note
        assert "identifier" not in note
    # a few such values are ordinary categories
    assert schema["rate"].categories == ("10%", "12.5%", "5%")


def test_decimal_commas_in_a_comma_separated_table_are_named() -> None:
    rng = np.random.default_rng(6)
    df = pd.DataFrame({"dc": [f"{v:.1f}".replace(".", ",") for v in rng.uniform(0, 20, 500)],
                       "k": rng.integers(0, 3, 500)})
    schema, notes = draft_schema_with_notes(df)
    assert schema.ignored == ["dc"] and "decimal comma" in _note(notes, "dc")


def test_accounting_and_trailing_minus_negatives_are_named_as_numbers_for_people() -> None:
    rng = np.random.default_rng(7)
    v = rng.uniform(1, 999, 400)
    df = pd.DataFrame({"acct": [f"({x:.2f})" if i % 2 else f"{x:.2f}" for i, x in enumerate(v)],
                       "sap": [f"{x:.2f}-" if i % 2 else f"{x:.2f}" for i, x in enumerate(v)],
                       "k": rng.integers(0, 3, 400)})
    schema, notes = draft_schema_with_notes(df)
    assert set(schema.ignored) == {"acct", "sap"}
    assert all("plain numbers" in _note(notes, c) for c in ("acct", "sap"))
