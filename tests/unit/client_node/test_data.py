"""Reading a party's CSV as its owner meant it: separators, missing tokens, codes, names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsynth.client_node.data import DataFileError, read_table
from fedsynth.synthesis.schema import Column, Schema, draft_schema_with_notes, validate_frame


def _csv(tmp: Path, text: str, name: str = "t.csv") -> Path:
    p = tmp / name
    p.write_text(text, encoding="utf-8")
    return p


def test_missing_tokens_are_missing_in_numbers_and_dates_but_values_in_text(tmp_path: Path
                                                                           ) -> None:
    p = _csv(tmp_path, "region,resp,x,d,flag\n"
                       "NA,None,1.5,2015-01-01,True\n"
                       "EU,yes,NA,NA,NA\n"
                       "APAC,null,?,2015-02-03,False\n"
                       ",no,3,,True\n")
    df = read_table(p)
    # read as written: the schema decides what a token means
    assert df["region"].tolist()[:3] == ["NA", "EU", "APAC"] and pd.isna(df["region"][3])
    assert df["x"].tolist() == ["1.5", "NA", "?", "3"]
    schema, notes = draft_schema_with_notes(df, min_rows=1)
    # "NA" (North America) and "None"/"null" (answers) are text values, kept as written
    assert schema["region"].categories == ("APAC", "EU", "NA") and schema["region"].nullable
    assert schema["resp"].categories == ("None", "no", "null", "yes")
    # among numbers, dates and booleans they are missing
    assert schema["x"].kind == "discrete" and schema["x"].nullable
    assert schema["d"].kind == "datetime" and schema["d"].nullable
    assert schema["flag"].categories == ("False", "True") and schema["flag"].nullable
    assert any("'?', 'NA' read as missing" in n and "'x'" in n for n in notes)
    out = validate_frame(df, schema, source="t")
    assert out["x"].isna().tolist() == [False, True, True, False]
    assert out["d"].isna().tolist() == [False, True, False, True]
    assert out["flag"].isna().tolist() == [False, True, False, False]
    assert out["region"].tolist()[:3] == ["NA", "EU", "APAC"]


def test_a_party_whose_text_column_holds_only_a_token_keeps_its_values(tmp_path: Path) -> None:
    schema = Schema((Column("region", "categorical", ("AS", "EU", "NA")),
                     Column("x", "integer", lower=0.0, upper=9.0)))
    p = _csv(tmp_path, "region,x\n" + "NA,1\n" * 5)  # a North-America-only party
    out = validate_frame(read_table(p, schema), schema, source="t")
    assert out["region"].tolist() == ["NA"] * 5


def test_codes_with_leading_zeros_and_long_numbers_stay_text(tmp_path: Path) -> None:
    p = _csv(tmp_path, "zip,acct,n,age\n" + "".join(
        f"{z},{a},{i},{g}\n" for i, (z, a, g) in enumerate(zip(
            ["01234", "10001", "00501", "02110"] * 3000 + ["00601"],
            [9007199254740993 + 2 * (i % 3) for i in range(12001)],
            ["07"] + [str(30 + i % 40) for i in range(12000)], strict=True))))
    df = read_table(p)
    assert df["zip"].tolist()[:3] == ["01234", "10001", "00501"] and df["zip"].iloc[-1] == "00601"
    assert df["acct"].iloc[0] == "9007199254740993"
    assert df["n"].dtype == np.int64
    assert df["age"].dtype == np.int64 and df["age"].iloc[0] == 7  # one "07" is a number


def test_leading_zeros_after_the_first_rows_still_make_codes(tmp_path: Path) -> None:
    rows = [str(10000 + i) for i in range(10_000)] + ["00501", "01234", "00601"]
    df = read_table(_csv(tmp_path, "zip\n" + "\n".join(rows) + "\n"))
    assert df["zip"].iloc[-3:].tolist() == ["00501", "01234", "00601"]


def test_the_schema_reads_its_categories_as_text(tmp_path: Path) -> None:
    schema = Schema((Column("zip", "categorical", ("00501", "10001")),))
    df = read_table(_csv(tmp_path, "zip\n00501\n10001\n"), schema)
    assert df["zip"].tolist() == ["00501", "10001"]


def test_integers_too_long_for_a_float_are_drafted_as_text() -> None:
    big = [9007199254740993 + 2 * (k % 3) for k in range(30)]
    schema, _ = draft_schema_with_notes(pd.DataFrame({"acct": pd.Series(big, dtype="int64")}))
    assert schema["acct"].kind == "categorical"
    assert set(schema["acct"].categories) == {str(v) for v in big}  # exact, not rounded


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_semicolon_tab_and_bar_separated_files_are_read(tmp_path: Path, sep: str) -> None:
    p = _csv(tmp_path, sep.join(["a", "b"]) + "\n" + sep.join(["1", "x"]) + "\n")
    df = read_table(p)
    assert list(df.columns) == ["a", "b"] and df["b"].tolist() == ["x"]


@pytest.mark.parametrize(("text", "columns"), [
    ('"amount (1,000s)";year\n5;2020\n6;2021\n', ["amount (1,000s)", "year"]),
    ("Amount, USD\tYear\n5\t2020\n6\t2021\n", ["Amount, USD", "Year"]),
    ("a,b\n1,2\n", ["a", "b"]),
])
def test_the_separator_is_the_one_that_splits_every_record_alike(tmp_path: Path, text: str,
                                                                  columns: list[str]) -> None:
    assert list(read_table(_csv(tmp_path, text)).columns) == columns


def test_decimal_commas_in_a_semicolon_file_are_numbers(tmp_path: Path) -> None:
    df = read_table(_csv(tmp_path, "id;gewicht;preis\na;71,3;87,932\nb;80;1,5\n"))
    assert df["gewicht"].tolist() == [71.3, 80.0] and df["preis"].tolist() == [87.932, 1.5]


def test_trailing_separators_give_unnamed_columns_not_a_refusal(tmp_path: Path) -> None:
    assert list(read_table(_csv(tmp_path, "a,b,,\n1,2,,\n")).columns)[:2] == ["a", "b"]


def test_duplicate_column_names_are_refused(tmp_path: Path) -> None:
    p = _csv(tmp_path, "cat,x,x\na,1,2\n")
    with pytest.raises(DataFileError, match=r"columns 2 and 3 are both named 'x'"):
        read_table(p)


def test_read_errors_are_one_line_and_say_what_is_wrong(tmp_path: Path) -> None:
    ragged = _csv(tmp_path, "a,b\n1,2\n3,4,5\n")
    with pytest.raises(DataFileError) as exc:
        read_table(ragged)
    assert "\n" not in str(exc.value) and "t.csv" in str(exc.value)
    latin = tmp_path / "l.csv"
    latin.write_bytes("name\nStra\xdfe\n".encode("latin-1"))
    with pytest.raises(DataFileError, match="not UTF-8"):
        read_table(latin)
    with pytest.raises(DataFileError, match="is a folder"):
        read_table(tmp_path)


def test_infinite_values_leave_the_column_out_naming_the_lines(tmp_path: Path) -> None:
    p = _csv(tmp_path, "r,k\n1.5,a\ninf,a\n2,a\n-inf,b\n3,b\n4,b\n")
    schema, notes = draft_schema_with_notes(read_table(p))
    assert schema.names == ["k"] and schema.ignored == ["r"]
    assert any("infinite values in 2 row(s) (file lines 3, 5)" in n for n in notes)


def test_export_conventions_of_databases_and_erps(tmp_path: Path) -> None:
    mysql_null = "\\N"  # MySQL writes a missing value as \N
    rows = ["id;amt;ende;x;"] + [
        f"{i};{'1.675,49' if i % 2 else '12,5'};{'9999-12-31' if i % 3 == 0 else '2020-05-01'};"
        f"{mysql_null if i % 4 == 0 else i};" for i in range(12)]
    df = read_table(_csv(tmp_path, "\n".join(rows) + "\n"))
    assert list(df.columns) == ["id", "amt", "ende", "x"]  # no phantom trailing column
    assert df["amt"].tolist()[:2] == [12.5, 1675.49]
    schema, notes = draft_schema_with_notes(df, min_rows=1)
    assert schema["ende"].kind == "datetime" and schema["ende"].nullable
    assert any("'9999-12-31'" in n and "placeholders" in n for n in notes)
    assert schema["x"].kind in ("integer", "discrete") and schema["x"].nullable
    out = validate_frame(df, schema, source="t")
    assert out["ende"].isna().sum() == 4 and out["x"].isna().sum() == 3


def test_number_categories_match_a_float_column_as_before(tmp_path: Path) -> None:
    # a party's export of an integer code with missing values writes "1.0"; the label is "1"
    schema = Schema((Column("code", "categorical", ("1", "2"), nullable=True),
                     Column("n", "integer", lower=0.0, upper=9.0)))
    df = read_table(_csv(tmp_path, "code,n\n1.0,1\n2.0,2\n,3\n1.0,4\n"), schema)
    out = validate_frame(df, schema, source="t")
    assert out["code"].tolist()[:2] == ["1", "2"] and out["code"].isna().sum() == 1
