"""Tests for fedsynth.synthesis.encoding: codecs, round trips and groupings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedsynth.synthesis.encoding import (
    FINE_BINS,
    ColumnCodec,
    Encoding,
    Grouping,
    decode_groups,
    quantile_grouping,
    top_grouping,
)
from fedsynth.synthesis.schema import Column, Schema, validate_frame


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_categorical_round_trip_is_exact_including_missing() -> None:
    col = Column("c", "categorical", ("b", "a", "z"), nullable=True)
    codec = ColumnCodec.for_column(col)
    assert codec.size == 4 and codec.missing_code == 3 and codec.value_codes == 3
    s = pd.Series(["a", "z", None, "b", "a"], dtype=object)
    codes = codec.encode(s)
    assert codes.tolist() == [1, 2, 3, 0, 1]  # the schema's order, missing last
    back = codec.decode(codes, _rng())
    assert back.tolist() == ["a", "z", None, "b", "a"]


def test_small_integer_round_trip_is_exact() -> None:
    col = Column("k", "integer", lower=-3, upper=4)
    codec = ColumnCodec.for_column(col)
    assert codec.edges is None and codec.size == 8  # one code per value
    values = pd.Series(np.arange(-3, 5))
    codes = codec.encode(values)
    assert codes.tolist() == list(range(8))
    back = codec.decode(codes, _rng())
    assert back.dtype == np.int64
    assert back.tolist() == values.tolist()


def test_nullable_small_integer_round_trip_keeps_missing() -> None:
    codec = ColumnCodec.for_column(Column("k", "integer", lower=0, upper=9, nullable=True))
    s = pd.Series([0.0, 9.0, np.nan, 5.0])
    codes = codec.encode(s)
    assert codes.tolist() == [0, 9, 10, 5]
    back = codec.decode(codes, _rng())
    assert str(back.dtype) == "Int64"
    assert back.isna().tolist() == [False, False, True, False]
    assert back.dropna().tolist() == [0, 9, 5]


def test_encoding_of_a_validated_frame_round_trips() -> None:
    schema = Schema((
        Column("c", "categorical", ("no", "yes")),
        Column("k", "integer", lower=1, upper=6, nullable=True),
    ))
    rng = _rng(1)
    df = pd.DataFrame({"c": rng.choice(["no", "yes"], 200),
                       "k": np.where(rng.random(200) < 0.1, np.nan, rng.integers(1, 7, 200))})
    typed = validate_frame(df, schema, source="f")
    enc = Encoding.from_schema(schema)
    assert enc.sizes == (2, 7)
    codes = enc.encode(typed)
    assert codes.shape == (200, 2) and codes.dtype == np.int64
    back = pd.DataFrame({c.column.name: c.decode(codes[:, j], rng)
                         for j, c in enumerate(enc.codecs)})
    assert back["c"].tolist() == typed["c"].tolist()
    pd.testing.assert_series_equal(back["k"].astype("float64"), typed["k"].astype("float64"),
                                   check_names=False)
    assert enc.encode(typed.iloc[:0]).shape == (0, 2)


def test_continuous_values_decode_inside_their_bin() -> None:
    col = Column("x", "continuous", lower=-5.0, upper=3.0, nullable=True)
    codec = ColumnCodec.for_column(col)
    assert codec.edges is not None and len(codec.edges) == FINE_BINS + 1
    assert codec.size == 1 + FINE_BINS + 1  # the lower bound, the bins, missing
    rng = _rng(2)
    values = pd.Series(np.r_[rng.uniform(-5, 3, 2000), -5.0, 3.0, np.nan])
    codes = codec.encode(values)
    assert codes[-3] == 0 and codes[-2] == FINE_BINS and codes[-1] == FINE_BINS + 1
    for _ in range(3):
        back = codec.decode(codes, rng)
        assert back.isna().tolist() == values.isna().tolist()
        v = back.to_numpy()[:-1]
        c = codes[:-1]
        b = np.maximum(c - 1, 0)
        assert np.all(v >= codec.edges[b]) and np.all(v <= codec.edges[b + 1])
        assert np.all((v == -5.0) == (c == 0))  # the lower bound decodes exactly, only it
        assert (codec.encode(pd.Series(v)) == c).all()


@pytest.mark.parametrize("kind", ["integer", "continuous"])
def test_a_point_mass_at_the_lower_bound_stays_exact(kind: str) -> None:
    """Zero-inflated amounts (no debt, no assets): 0 keeps its own code and decodes to 0."""
    codec = ColumnCodec.for_column(Column("debt", kind, lower=0, upper=30000))
    values = pd.Series(np.r_[np.zeros(80), np.arange(1, 21) * 100.0])
    codes = codec.encode(values)
    assert (codes[:80] == 0).all() and (codes[80:] > 0).all()
    back = codec.decode(codes, _rng(5)).to_numpy(dtype=float)
    assert (back[:80] == 0).all() and (back[80:] > 0).all()
    assert (codec.encode(pd.Series(back)) == codes).all()


def test_wide_integer_values_decode_inside_their_bin() -> None:
    codec = ColumnCodec.for_column(Column("i", "integer", lower=0, upper=1000))
    assert codec.edges is not None
    codes = np.arange(codec.size)
    back = codec.decode(np.repeat(codes, 20), _rng(3))
    assert (codec.encode(back) == np.repeat(codes, 20)).all()


def test_single_valued_numeric_column_gets_one_code() -> None:
    codec = ColumnCodec.for_column(Column("x", "continuous", lower=2.0, upper=2.0))
    assert codec.size == 1
    assert codec.encode(pd.Series([2.0, 2.0])).tolist() == [0, 0]
    assert codec.decode(np.array([0, 0]), _rng()).tolist() == [2.0, 2.0]


def test_missing_value_in_non_nullable_column_is_an_error() -> None:
    codec = ColumnCodec.for_column(Column("x", "continuous", lower=0.0, upper=1.0))
    with pytest.raises(ValueError, match="not nullable"):
        codec.encode(pd.Series([0.5, np.nan]))


def _check_monotone_grouping(g: Grouping, codec: ColumnCodec, max_groups: int) -> None:
    idx = g.index
    assert len(idx) == codec.size
    values = idx[: codec.value_codes]
    assert np.all(np.diff(values) >= 0), "groups of adjacent bins must be monotone"
    assert values[0] == 0
    assert set(values.tolist()) == set(range(int(values.max()) + 1)), "groups are dense"
    assert int(values.max()) + 1 <= max_groups


def test_quantile_grouping_is_monotone_and_keeps_missing_separate() -> None:
    codec = ColumnCodec.for_column(Column("x", "continuous", lower=0, upper=1, nullable=True))
    rng = _rng(4)
    counts = rng.normal(5, 10, codec.size)  # noisy: some negative
    counts[100:110] += 500  # a spike of mass
    counts[-1] = 1000  # lots of missing: must not merge with any value group
    g = quantile_grouping(codec, counts, max_groups=8)
    _check_monotone_grouping(g, codec, 8)
    assert g.index[-1] == g.index[:-1].max() + 1
    assert g.size == g.index[-1] + 1
    assert np.sum(g.index == g.index[-1]) == 1
    # the heavy bins are split finely: the spike spans several groups
    assert len(set(g.index[100:110].tolist())) >= 2


def test_quantile_grouping_groups_have_about_equal_mass() -> None:
    codec = ColumnCodec.for_column(Column("x", "continuous", lower=0, upper=1))
    counts = np.full(codec.size, 10.0)
    g = quantile_grouping(codec, counts, max_groups=8)
    _check_monotone_grouping(g, codec, 8)
    assert g.size == 8
    sizes = np.bincount(g.index)  # 257 equal-count codes: 32 or 33 per group
    assert sizes.sum() == codec.size and sizes.max() - sizes.min() <= 1


def test_quantile_grouping_with_all_negative_noise_is_still_valid() -> None:
    codec = ColumnCodec.for_column(Column("x", "continuous", lower=0, upper=1, nullable=True))
    g = quantile_grouping(codec, np.full(codec.size, -3.0), max_groups=16)
    _check_monotone_grouping(g, codec, 16)
    assert g.index[-1] == g.index[:-1].max() + 1


def test_quantile_grouping_leaves_small_and_categorical_columns_alone() -> None:
    small = ColumnCodec.for_column(Column("k", "integer", lower=0, upper=4, nullable=True))
    assert quantile_grouping(small, np.ones(small.size), 8).index.tolist() == list(range(6))
    cat = ColumnCodec.for_column(Column("c", "categorical", tuple("abcdefghijk")))
    assert quantile_grouping(cat, np.ones(cat.size), 4).index.tolist() == list(range(11))


def test_top_grouping_unordered_keeps_the_largest_values_and_pools_the_rest() -> None:
    counts = np.array([1.0, 50.0, 3.0, 40.0, -2.0, 30.0])
    g = top_grouping(counts, 3, ordered=False)
    assert g.index.tolist() == [2, 0, 2, 1, 2, 2]
    ordered = top_grouping(np.full(12, 1.0), 3, ordered=True)
    assert ordered.index.tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_decode_groups_draws_fine_codes_inside_each_group() -> None:
    schema = Schema((Column("k", "integer", lower=0, upper=9),))
    enc = Encoding.from_schema(schema)
    grp = Grouping(np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2]))
    fine_counts = [np.array([0, 5, 0, 1, 1, 1, 1, 0, 0, 9], dtype=float)]
    group_codes = np.array([[0], [1], [2]] * 50)
    out = decode_groups(enc, [grp], group_codes, fine_counts, _rng(5))
    k = out["k"].to_numpy()
    assert set(k[0::3]) <= {0, 1, 2} and set(k[1::3]) <= {3, 4, 5, 6}
    assert set(k[2::3]) <= {7, 8, 9}
    # weighted by the noisy fine counts: value 1 dominates group 0, value 9 group 2
    assert np.mean(k[0::3] == 1) > 0.9 and np.mean(k[2::3] == 9) > 0.9
