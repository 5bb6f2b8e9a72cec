"""Tests for fedsynth.synthesis.schema: validation messages, inference, JSON round trip."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedsynth.synthesis.schema import (
    OTHER,
    Column,
    DataValidationError,
    Schema,
    SchemaError,
    infer_schema,
    validate_frame,
)


def _schema() -> Schema:
    return Schema((
        Column("colour", "categorical", ("blue", "red")),
        Column("age", "integer", lower=0, upper=120),
        Column("income", "continuous", lower=0.0, upper=1000.0),
        Column("note", "categorical", ("x", "y"), nullable=True),
        Column("region", "categorical", ("north", "south")),
    ))


def _bad_frame() -> pd.DataFrame:
    # file lines: header is line 1, so row i sits on line i + 2
    return pd.DataFrame({
        "colour": ["red", "PURPLE_SECRET", "blue", "red"],  # bad category on line 3
        "age": [30, 40.5, 9999, 50],  # not whole on line 3, out of bounds on line 4
        "income": [10.0, 20.0, np.nan, "lots"],  # NaN on line 4, not a number on line 5
        "note": ["x", None, "y", "x"],  # nullable: fine
        "surplus": [1, 2, 3, 4],  # not in the schema
        # "region" is missing
    })


def _problems(df: pd.DataFrame, **kw: bool) -> list[str]:
    with pytest.raises(DataValidationError) as info:
        validate_frame(df, _schema(), source="bank.csv", **kw)
    assert info.value.source == "bank.csv"
    assert str(info.value).startswith("bank.csv:")
    return info.value.problems


def _one(problems: list[str], *needles: str) -> str:
    hits = [p for p in problems if all(n in p for n in needles)]
    assert len(hits) == 1, (needles, problems)
    return hits[0]


def test_validate_frame_reports_every_problem_at_once() -> None:
    problems = _problems(_bad_frame())
    assert len(problems) == 7, problems

    missing = _one(problems, "missing column", "region")
    assert "add them" in missing

    extra = _one(problems, "surplus", "not in the schema")
    assert "drop them" in extra

    cat = _one(problems, "'colour'", "categories not in the schema")
    assert "file lines 3)" in cat and "PURPLE_SECRET" in cat
    assert "add them to its category list" in cat

    bounds = _one(problems, "'age'", "outside the declared bounds")
    assert "file lines 4)" in bounds and "9999" in bounds and "[0" in bounds and "120" in bounds
    assert "widen the bounds" in bounds

    whole = _one(problems, "'age'", "not whole numbers")
    assert "file lines 3)" in whole and "declare it continuous or round" in whole

    nan = _one(problems, "'income'", "missing values")
    assert "file lines 4)" in nan and "nullable" in nan

    nonnum = _one(problems, "'income'", "are not numbers")
    assert "file lines 5)" in nonnum and "lots" in nonnum and "continuous" in nonnum

    # the nullable column with a None is not a problem
    assert not any("'note'" in p for p in problems)


def test_validate_frame_empty_table_is_a_problem_with_a_fix() -> None:
    df = pd.DataFrame({c: pd.Series([], dtype=object) for c in _schema().names})
    problems = _problems(df)
    assert len(problems) == 1
    assert "no rows" in problems[0] and "at least one row" in problems[0]


def test_validate_frame_lists_at_most_five_lines_and_counts_the_rest() -> None:
    df = pd.DataFrame({"v": [-1.0] * 8})
    with pytest.raises(DataValidationError) as info:
        validate_frame(df, Schema((Column("v", "continuous", lower=0, upper=1),)), source="f")
    (msg,) = info.value.problems
    assert "8 row(s) (file lines 2, 3, 4, 5, 6 and 3 more)" in msg


def test_show_values_false_hides_the_offending_values() -> None:
    problems = _problems(_bad_frame(), show_values=False)
    text = "\n".join(problems)
    assert len(problems) == 7
    for secret in ("PURPLE_SECRET", "9999", "lots"):
        assert secret not in text
    # still names the columns and lines
    assert "'colour'" in text and "file lines 3)" in text
    assert "'age'" in text and "file lines 4)" in text


def test_validate_frame_returns_typed_columns_in_schema_order() -> None:
    schema = Schema((
        Column("n", "integer", lower=0, upper=5),
        Column("c", "categorical", ("1", "2", "True")),
    ))
    df = pd.DataFrame({"c": [1.0, 2, True], "n": ["3", 4, 5]})  # columns out of order
    out = validate_frame(df, schema, source="f")
    assert list(out.columns) == ["n", "c"]
    assert out["c"].tolist() == ["1", "2", "True"]
    assert out["n"].tolist() == [3, 4, 5]


def test_unknown_category_folds_into_other_when_schema_has_it() -> None:
    schema = Schema((Column("c", "categorical", ("a", OTHER)),))
    out = validate_frame(pd.DataFrame({"c": ["a", "zzz", "a"]}), schema, source="f")
    assert out["c"].tolist() == ["a", OTHER, "a"]


def test_infer_schema_kinds_bounds_and_categories() -> None:
    df = pd.DataFrame({
        "city": ["paris", "rome", None, "paris"],
        "n": [3, 1, 4, 1],
        "w": [2.0, 5.0, np.nan, 7.0],  # whole floats with a gap: integer, nullable
        "x": [0.5, -1.25, 2.0, 0.0],
        "flag": [True, False, True, True],
    })
    s = infer_schema(df, min_rows=1)  # list values held by one row (the default is 3)
    assert s.names == ["city", "n", "w", "x", "flag"]
    assert s["city"] == Column("city", "categorical", ("paris", "rome"), nullable=True)
    assert s["n"] == Column("n", "integer", lower=1.0, upper=4.0)
    assert s["w"] == Column("w", "integer", lower=2.0, upper=7.0, nullable=True)
    # one decimal: -1.25 alone (fewer than 3 rows) does not make a second one public
    assert s["x"] == Column("x", "continuous", lower=-1.25, upper=2.0, decimals=1)
    assert s["flag"] == Column("flag", "categorical", ("False", "True"))
    # the draft validates the very table it came from
    out = validate_frame(df, s, source="f")
    assert out["flag"].tolist() == ["True", "False", "True", "True"]


def test_infer_schema_folds_rare_categories_into_other() -> None:
    values = ["a"] * 5 + ["b"] * 4 + ["c"] * 3 + ["d"] * 2 + ["e"]
    df = pd.DataFrame({"c": values})
    s = infer_schema(df, max_categories=3)
    # the two most frequent values are kept, the rest become "__other__"
    assert s["c"].categories == tuple(sorted(["a", "b", OTHER]))
    out = validate_frame(df, s, source="f")
    assert out["c"].value_counts().to_dict() == {"a": 5, "b": 4, OTHER: 6}
    # at the limit only the values held by fewer than 3 rows fold
    assert infer_schema(df, max_categories=5)["c"].categories == (OTHER, "a", "b", "c")
    assert OTHER not in infer_schema(df[df["c"] < "d"], max_categories=3)["c"].categories


def test_schema_json_round_trip() -> None:
    s = Schema((
        Column("c", "categorical", ("a", "b", OTHER), nullable=True),
        Column("i", "integer", lower=-3.0, upper=7.0),
        Column("x", "continuous", lower=0.25, upper=1e6, nullable=True),
    ), meta={"title": "bank"})
    text = s.to_json()
    back = Schema.from_json(text)
    assert back == s
    assert back.meta == {"title": "bank"}
    assert back.to_json() == text
    assert json.loads(text)["version"] == 1


def test_schema_load_from_file(tmp_path: Path) -> None:
    s = infer_schema(pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}))
    path = tmp_path / "schema.json"
    path.write_text(s.to_json())
    assert Schema.load(path) == s
    path.write_text("{not json")
    with pytest.raises(SchemaError) as info:
        Schema.load(path)
    assert str(path) in str(info.value) and "not valid JSON" in str(info.value)


@pytest.mark.parametrize(("doc", "needle"), [
    ([], "'columns' list"),
    ({"cols": []}, "'columns' list"),
    ({"columns": "a,b"}, "'columns' list"),
    ({"columns": []}, "no columns"),
    ({"columns": [{"name": "a"}]}, "needs at least 'name' and 'kind'"),
    ({"columns": ["a"]}, "needs at least 'name' and 'kind'"),
    ({"columns": [{"name": "a", "kind": "text"}]}, "is not one of"),
    ({"columns": [{"name": "a", "kind": "categorical"}]}, "needs a category list"),
    ({"columns": [{"name": "a", "kind": "categorical", "categories": ["x", "x"]}]},
     "listed twice"),
    ({"columns": [{"name": "a", "kind": "integer", "lower": 0}]}, "finite lower and upper"),
    ({"columns": [{"name": "a", "kind": "continuous", "lower": 0, "upper": math.inf}]},
     "finite lower and upper"),
    ({"columns": [{"name": "a", "kind": "integer", "lower": 5, "upper": 1}]}, "above upper"),
    ({"columns": [{"name": "a", "kind": "integer", "lower": "low", "upper": 1}]}, "column #0"),
    ({"columns": [{"name": "a", "kind": "integer", "lower": 0, "upper": 1},
                  {"name": "a", "kind": "integer", "lower": 0, "upper": 1}]}, "unique"),
])
def test_malformed_schema_raises_schema_error(doc: Any, needle: str) -> None:
    with pytest.raises(SchemaError) as info:
        Schema.from_dict(doc, source="consortium.json")
    assert str(info.value).startswith("consortium.json:")
    assert any(needle in p for p in info.value.problems), info.value.problems


def test_schema_error_lists_every_problem() -> None:
    doc = {"columns": [
        {"name": "a", "kind": "categorical"},
        {"name": "b", "kind": "integer", "lower": 3, "upper": 1},
        {"name": "c", "kind": "wat"},
    ]}
    with pytest.raises(SchemaError) as info:
        Schema.from_dict(doc)
    assert len(info.value.problems) == 3
    assert [p.split(":")[0] for p in info.value.problems] == [
        "column 'a'", "column 'b'", "column 'c'"]


@pytest.mark.parametrize("column", [
    {"name": "c", "kind": "categorical", "categories": "abc"},
    {"name": "c", "kind": "categorical", "categories": ["a"], "nullable": "false"},
])
def test_wrongly_typed_schema_fields_are_rejected(column: dict[str, object]) -> None:
    with pytest.raises(SchemaError):
        Schema.from_dict({"columns": [column]})


def test_inferred_schema_validates_frame_with_integer_column_labels() -> None:
    df = pd.DataFrame(np.arange(6).reshape(3, 2))
    out = validate_frame(df, infer_schema(df), source="f")
    assert list(out.columns) == ["0", "1"]
