"""Input checks of local evaluation (fedsynth.evaluation.local): which table is wrong, and how.

The tables are read with client_node.data.read_table, as `fedsynth evaluate` does, so the
messages can name their files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsynth.client_node.data import read_table
from fedsynth.evaluation.local import Run, evaluate_runs, evaluate_tables
from fedsynth.evaluation.plan import EvalOptions
from fedsynth.synthesis.schema import (
    IGNORED,
    OTHER,
    Column,
    DataValidationError,
    Schema,
    SchemaError,
)


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return pd.DataFrame({"x": x, "g": rng.choice(["f", "m"], n),
                         "y": np.where(x > 0.3, "yes", "no")})


def _file(tmp: Path, name: str, df: pd.DataFrame) -> pd.DataFrame:
    df.to_csv(tmp / name, index=False)
    return read_table(tmp / name)


def _run(tmp: Path, name: str, df: pd.DataFrame) -> Run:
    return Run(_file(tmp, name, df), str(tmp / name))


# --- columns ---------------------------------------------------------------------------------


def test_an_extra_synthetic_column_is_blamed_on_the_synthetic_table(tmp_path: Path) -> None:
    real = _file(tmp_path, "real.csv", _frame(200, 0))
    run = _run(tmp_path, "syn.csv", _frame(200, 1).assign(x2=1.0))
    with pytest.raises(ValueError) as info:
        evaluate_runs(real, [run])
    msg = str(info.value)
    assert msg == (f"the synthetic table {tmp_path}/syn.csv has columns the real table "
                   f"{tmp_path}/real.csv lacks: x2. Rename or drop them so both tables have "
                   "the same columns")
    assert "schema" not in msg


def test_a_renamed_column_is_reported_on_both_sides(tmp_path: Path) -> None:
    real = _file(tmp_path, "real.csv", _frame(200, 0))
    run = _run(tmp_path, "syn.csv", _frame(200, 1).rename(columns={"x": "x_renamed"}))
    with pytest.raises(ValueError) as info:
        evaluate_runs(real, [run])
    msg = str(info.value)
    assert f"syn.csv has columns the real table {tmp_path}/real.csv lacks: x_renamed" in msg
    assert f"real.csv has columns the synthetic table {tmp_path}/syn.csv lacks: x." in msg


def test_every_table_is_checked_before_any_is_scored(tmp_path: Path) -> None:
    real = _file(tmp_path, "real.csv", _frame(200, 0))
    train = _file(tmp_path, "train.csv", _frame(200, 2).drop(columns="g"))
    runs = [_run(tmp_path, "a.csv", _frame(200, 1)),
            _run(tmp_path, "b.csv", _frame(200, 3).assign(extra=0))]
    said: list[str] = []
    with pytest.raises(ValueError) as info:
        evaluate_runs(real, runs, train=train, progress=said.append)
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert "b.csv has columns" in lines[0] and "lacks: extra" in lines[0]
    assert f"real table {tmp_path}/real.csv has columns the train table" in lines[1]
    assert not any(m.startswith("evaluating") for m in said)


def test_tables_built_in_python_are_named_by_their_role() -> None:
    with pytest.raises(ValueError, match="the synthetic table has columns the real table "
                       "lacks: z"):
        evaluate_tables(_frame(50, 0), _frame(50, 1).assign(z=0))


def test_columns_the_schema_ignores_may_be_in_some_tables_only(tmp_path: Path) -> None:
    real_df = _frame(300, 0)
    real = _file(tmp_path, "real.csv", real_df.assign(id=np.arange(300)))
    schema = Schema((Column("x", "continuous", lower=-10, upper=10),
                     Column("g", "categorical", ("f", "m")),
                     Column("y", "categorical", ("no", "yes"))), meta={IGNORED: ["id"]})
    doc, _ = evaluate_runs(real, [_run(tmp_path, "syn.csv", _frame(300, 1))], schema=schema)
    assert [c["name"] for c in doc["columns"]] == ["x", "g", "y"]


# --- values ----------------------------------------------------------------------------------


def test_text_in_a_numeric_column_of_the_synthetic_table_is_refused(tmp_path: Path) -> None:
    real = _file(tmp_path, "real.csv", _frame(200, 0))
    syn = _frame(200, 1).astype({"x": object})
    syn.loc[[3, 7, 8], "x"] = ["x35", "x35", "unknown"]  # file lines 5, 9, 10
    with pytest.raises(DataValidationError) as info:
        evaluate_runs(real, [_run(tmp_path, "syn.csv", syn)])
    assert info.value.source == f"the synthetic table {tmp_path}/syn.csv"
    (problem,) = info.value.problems
    assert problem.startswith("column 'x': 3 row(s) (file lines 5, 9, 10)")
    assert "(e.g. 'x35')" in problem and f"only numbers in the real table {tmp_path}" in problem
    assert "fix or drop those rows" in problem


def test_a_synthetic_category_the_given_schema_lacks_is_refused_even_with_other(
        tmp_path: Path) -> None:
    schema = Schema((Column("x", "continuous", lower=-10, upper=10),
                     Column("g", "categorical", ("f", "m", OTHER)),
                     Column("y", "categorical", ("no", "yes"))))
    real_df = _frame(200, 0)
    real_df.loc[0, "g"] = "rare"  # a real value the public list left out: folds, as designed
    real = _file(tmp_path, "real.csv", real_df)
    syn = _frame(200, 1)
    syn.loc[[1, 2], "g"] = "x"
    with pytest.raises(DataValidationError) as info:
        evaluate_runs(real, [_run(tmp_path, "syn.csv", syn)], schema=schema)
    assert info.value.source.endswith("syn.csv")
    (problem,) = info.value.problems
    assert "column 'g': 2 row(s) (file lines 3, 4)" in problem and "['x']" in problem
    # the same synthetic table without the stray values is scored, the real "rare" folded
    doc, _ = evaluate_runs(real, [_run(tmp_path, "ok.csv", _frame(200, 1))], schema=schema)
    g = next(c for c in doc["columns"] if c["name"] == "g")
    assert {c["value"] for c in g["categories"]} == {"f", "m", OTHER}


def test_real_rows_outside_the_schema_are_refused_naming_the_real_file(tmp_path: Path) -> None:
    schema = Schema((Column("x", "continuous", lower=-1, upper=1),
                     Column("g", "categorical", ("f", "m")),
                     Column("y", "categorical", ("no", "yes"))))
    real_df, syn = _frame(200, 0), _frame(200, 1)
    syn["x"] = syn["x"].clip(-1, 1)
    real_df.loc[0, "x"] = 5.0
    real = _file(tmp_path, "real.csv", real_df)
    with pytest.raises(DataValidationError) as info:
        evaluate_runs(real, [_run(tmp_path, "syn.csv", syn)], schema=schema)
    assert info.value.source == f"the real table {tmp_path}/real.csv"
    assert any("outside the declared bounds" in p and "widen the bounds" in p
               for p in info.value.problems)


# --- drafted schema --------------------------------------------------------------------------


def test_the_drafted_schema_leaves_out_identifiers_and_says_so(tmp_path: Path) -> None:
    real = _file(tmp_path, "real.csv", _frame(300, 0).assign(
        name=[f"real-{i}" for i in range(300)]))
    run = _run(tmp_path, "syn.csv", _frame(300, 1).assign(name=[f"s-{i}" for i in range(300)]))
    said: list[str] = []
    doc, html = evaluate_runs(real, [run], progress=said.append)
    assert [c["name"] for c in doc["columns"]] == ["x", "g", "y"]
    assert any("column 'name'" in m and "identifier" in m for m in said)
    assert "real-1" not in html


def test_several_runs_share_one_drafted_schema(tmp_path: Path) -> None:
    real = _file(tmp_path, "real.csv", _frame(300, 0))
    a, b = _frame(300, 1), _frame(300, 2)
    b.loc[0, "g"] = "other"  # a category only run b has
    doc, _ = evaluate_runs(real, [_run(tmp_path, "a.csv", a), _run(tmp_path, "b.csv", b)])
    cats = [[c["value"] for c in next(col for col in r["columns"] if col["name"] == "g")
             ["categories"]] for r in doc["runs"]]
    assert cats[0] == cats[1] == ["f", "m", "other"]


@pytest.mark.parametrize("epsilon", [None, 1.0])
def test_an_all_missing_column_is_valid_input(tmp_path: Path, epsilon: float | None) -> None:
    real = _file(tmp_path, "real.csv", _frame(300, 0).assign(empty=np.nan))
    run = _run(tmp_path, "syn.csv", _frame(300, 1).assign(empty=np.nan))
    said: list[str] = []
    doc, _ = evaluate_runs(real, [run], options=EvalOptions(epsilon=epsilon),
                           progress=said.append)
    assert [c["name"] for c in doc["columns"]] == ["x", "g", "y", "empty"]
    assert any("column 'empty': every value is missing" in m for m in said)


def test_tables_with_nothing_to_evaluate_are_refused(tmp_path: Path) -> None:
    real = _file(tmp_path, "real.csv", pd.DataFrame({"id": [f"u{i}" for i in range(100)]}))
    syn = pd.DataFrame({"id": [f"s{i}" for i in range(100)]})
    with pytest.raises(SchemaError, match="every column was left out"):
        evaluate_runs(real, [_run(tmp_path, "syn.csv", syn)])
