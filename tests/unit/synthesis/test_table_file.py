"""Synthetic tables on disk: our CSV writer's text is pandas' to_csv text, byte for byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.synthesis import table_file
from fedsynth.synthesis.table_file import csv_text, write_table

TEXT = st.sampled_from(["", "a", "a b", " x", "q\"uote", "c,d", "e\nf", "g\rh", "é", "No"])
FLOATS = st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                   st.floats(-1e6, 1e6), st.integers(-10**6, 10**6).map(float),
                   st.sampled_from([0.0, -0.0, 1e-4, 9.99e-5, 1e16, 9999999999999998.0, 0.1]))


@st.composite
def frames(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.integers(0, 30))
    floats = draw(st.lists(st.one_of(FLOATS, st.just(np.nan)), min_size=n, max_size=n))
    texts = draw(st.lists(st.one_of(TEXT, st.none()), min_size=n, max_size=n))
    ints = draw(st.lists(st.one_of(st.integers(-10**12, 10**12), st.none()), min_size=n,
                         max_size=n))
    days = draw(st.lists(st.one_of(st.integers(0, 20000), st.none()), min_size=n, max_size=n))
    with_time = draw(st.booleans())
    stamps = pd.to_datetime(pd.Series([None if d is None else d * 86400 + (
        3661 * (d % 3) if with_time else 0) for d in days], dtype="float"), unit="s")
    return pd.DataFrame({
        "f": pd.Series(floats, dtype=float), "s": pd.Series(texts, dtype=object),
        "i": pd.Series(ints, dtype="Int64"), "n": np.arange(n, dtype=np.int64),
        "d": stamps, "b": np.arange(n) % 2 == 0})


@settings(max_examples=120, deadline=None)
@given(frames())
def test_the_csv_text_is_pandas_to_csv_text(df: pd.DataFrame) -> None:
    assert csv_text(df) == df.to_csv(index=False)


@settings(max_examples=100, deadline=None)
@given(st.lists(FLOATS, min_size=1, max_size=50))
def test_floats_are_written_as_pandas_writes_them(values: list[float]) -> None:
    df = pd.DataFrame({"x": values, "y": values[::-1]})
    assert csv_text(df) == df.to_csv(index=False)


def test_chunks_join_into_one_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table_file, "CHUNK_ROWS", 7)
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": rng.choice(["x", "y"], 50), "z": rng.random(50)})
    assert csv_text(df) == df.to_csv(index=False)


@pytest.mark.parametrize("df", [
    pd.DataFrame({"only": ["a", None, ""]}),  # one column: the csv module quotes an empty row
    pd.DataFrame({"mixed": pd.Series([1, True, "1"], dtype=object), "z": [1.0, 2.0, 3.0]}),
    pd.DataFrame({"c": pd.Categorical(["a", "b", "a"]), "z": [1.0, 2.0, 3.0]}),
    pd.DataFrame({"t": pd.to_datetime(["2020-01-01 00:00:00.5", None, "2021-01-01 00:00:00.0"]),
                  "z": [1.0, 2.0, 3.0]}),
])
def test_other_tables_are_written_by_pandas(df: pd.DataFrame) -> None:
    assert csv_text(df) == df.to_csv(index=False)


def test_parquet_keeps_the_columns_and_their_types(tmp_path: Path) -> None:
    df = pd.DataFrame({"s": pd.Series(["a", None, "b"], dtype=object),
                       "i": pd.array([1, None, 3], dtype="Int64"), "f": [0.5, np.nan, 2.0],
                       "d": pd.to_datetime(["2020-01-01", None, "2021-01-01"])})
    write_table(df, tmp_path / "t.parquet", "parquet")
    back = pd.read_parquet(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(back, df)


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="not one of csv, parquet"):
        table_file.file_name("synthetic", "xlsx")
