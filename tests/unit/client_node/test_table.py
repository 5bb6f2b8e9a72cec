"""Tests for fedsynth.client_node.table: a table read in chunks counts as the whole table does."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsynth.client_node import table as table_module
from fedsynth.client_node.data import DataFileError
from fedsynth.client_node.table import party_table
from fedsynth.synthesis import marginals
from fedsynth.synthesis.encoding import Encoding, Grouping
from fedsynth.synthesis.schema import Column, DataValidationError, Schema, validate_frame

SCHEMA = Schema((
    Column("colour", "categorical", ("blue", "green", "red"), nullable=True),
    Column("age", "integer", lower=18, upper=90),
    Column("score", "continuous", lower=0.0, upper=1.0, nullable=True),
    Column("term", "discrete", values=(36, 60)),
))
ENC = Encoding.from_schema(SCHEMA)
CLIQUES = [(0,), (1,), (2,), (3,), (0, 1), (1, 2), (0, 2, 3)]


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    table_module.forget()
    yield
    table_module.forget()


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    colour = rng.choice(np.array(["blue", "green", "red", None], dtype=object), n)
    score = np.where(rng.random(n) < 0.1, np.nan, rng.random(n))
    return pd.DataFrame({"colour": colour, "age": rng.integers(18, 91, n), "score": score,
                         "term": rng.choice([36, 60], n)})


def _groupings(seed: int) -> list[Grouping]:
    rng = np.random.default_rng(seed)
    out = []
    for size in ENC.sizes:  # a random coarsening of each column: groups 0..k-1, all used
        k = int(rng.integers(1, size + 1))
        index = np.concatenate([np.arange(k), rng.integers(0, k, size - k)])
        out.append(Grouping(rng.permutation(index).astype(np.int64)))
    return out


def _reference(codes: np.ndarray, groupings: list[Grouping]) -> np.ndarray:
    """Counts cell by cell through ravel_multi_index (the counting this module replaced)."""
    sizes = [g.size for g in groupings]
    grouped = np.stack([g.index[codes[:, j]] for j, g in enumerate(groupings)], axis=1)
    parts = []
    for c in CLIQUES:
        shape = marginals.clique_shape(c, sizes)
        flat = np.ravel_multi_index(tuple(grouped[:, i] for i in c), shape)
        parts.append(np.bincount(flat, minlength=int(np.prod(shape))))
    return np.concatenate(parts)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 400), st.lists(st.integers(0, 400), max_size=6), st.integers(0, 2**16))
def test_counts_of_chunks_add_up_to_the_counts_of_the_whole_table(n: int, cuts: list[int],
                                                                  seed: int) -> None:
    codes = ENC.encode(validate_frame(_frame(n, seed), SCHEMA, source="t")) if n else np.zeros(
        (0, 4), dtype=np.int64)
    groupings = _groupings(seed)
    whole = marginals.count(codes, groupings, CLIQUES)
    edges = [0, *sorted(min(c, n) for c in cuts), n]
    chunked = sum(marginals.count(codes[a:b], groupings, CLIQUES)
                  for a, b in itertools.pairwise(edges))
    assert np.array_equal(whole, chunked)
    if n:
        assert np.array_equal(whole, _reference(codes, groupings))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 300), st.integers(1, 120), st.integers(1, 200), st.booleans(),
       st.integers(0, 2**16))
def test_a_parquet_file_read_in_chunks_counts_as_the_whole_table_does(
        tmp_path: Path, n: int, chunk: int, row_group: int, keep: bool, seed: int) -> None:
    table_module.forget()
    df = _frame(n, seed)
    path = tmp_path / f"data-{seed}-{n}-{chunk}-{row_group}-{keep}.parquet"
    df.to_parquet(path, index=False, row_group_size=row_group)
    groupings = _groupings(seed)
    whole = marginals.count(ENC.encode(validate_frame(df, SCHEMA, source="t")), groupings,
                            CLIQUES)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(table_module, "CHUNK_ROWS", chunk)
        mp.setattr(table_module, "KEEP_BYTES", 1 << 30 if keep else 0)
        t = party_table(path, SCHEMA)
        assert (t.columns is not None) == keep
        assert np.array_equal(t.count(groupings, CLIQUES), whole)
        assert np.array_equal(t.fine(), ENC.encode(validate_frame(df, SCHEMA, source="t")))


def test_a_table_is_read_once_and_read_again_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    _frame(50, 1).to_parquet(path, index=False)
    first = party_table(path, SCHEMA)
    assert party_table(path, SCHEMA) is first
    _frame(70, 2).to_parquet(path, index=False)
    second = party_table(path, SCHEMA)
    assert second is not first and second.rows == 70


def test_problems_in_several_chunks_are_reported_at_once_with_their_file_lines(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    df = _frame(30, 3)
    df.loc[4, "age"] = 200
    df.loc[25, "age"] = 300
    df.loc[26, "term"] = 48
    path = tmp_path / "data.parquet"
    df.to_parquet(path, index=False)
    monkeypatch.setattr(table_module, "CHUNK_ROWS", 10)
    with pytest.raises(DataValidationError) as err:
        party_table(path, SCHEMA)
    text = str(err.value)
    assert "file lines 6)" in text and "file lines 27)" in text and "file lines 28)" in text
    assert "200" not in text and "300" not in text  # a party's log only: no values
    assert sorted(err.value.kinds) == ["column 'age': values outside the declared bounds",
                                       "column 'term': values that are not in the schema's "
                                       "value list"]


def test_an_empty_parquet_file_is_refused_as_a_table_without_rows(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    _frame(0, 0).to_parquet(path, index=False)
    with pytest.raises(DataValidationError, match="no rows"):
        party_table(path, SCHEMA)


def test_a_saved_index_and_ignored_columns_are_not_read_as_data(tmp_path: Path) -> None:
    df = _frame(20, 4).set_index(pd.Index([f"r{i}" for i in range(20)], name="row"))
    df["customer"] = [f"name {i}" for i in range(20)]
    schema = Schema(SCHEMA.columns, meta={"ignored_columns": ["customer"]})
    path = tmp_path / "data.parquet"
    df.to_parquet(path)  # the index is a column of the file
    t = party_table(path, schema)
    assert t.rows == 20


def test_a_file_that_is_not_parquet_is_refused_as_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataFileError, match="could not be read as PARQUET"):
        party_table(path, SCHEMA)


def test_a_csv_file_is_read_whole_and_counts_as_its_parquet_twin(tmp_path: Path) -> None:
    df = _frame(80, 5)
    df.to_csv(tmp_path / "data.csv", index=False)
    df.to_parquet(tmp_path / "data.parquet", index=False)
    groupings = _groupings(5)
    a = party_table(tmp_path / "data.csv", SCHEMA).count(groupings, CLIQUES)
    b = party_table(tmp_path / "data.parquet", SCHEMA).count(groupings, CLIQUES)
    assert np.array_equal(a, b)
