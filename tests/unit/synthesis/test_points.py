"""Values many rows hold in a binned column (`points`): drafted like categories, each encoded
to its own code and decoded exactly; bins keep their meaning; schemas without points keep
their hash."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedsynth.protocols.spec import schema_sha256
from fedsynth.synthesis.conditions import parse_conditions
from fedsynth.synthesis.encoding import (
    FINE_BINS,
    ColumnCodec,
    Encoding,
    decode_groups,
    quantile_grouping,
)
from fedsynth.synthesis.schema import (
    MAX_POINTS,
    Column,
    Schema,
    SchemaError,
    draft_schema_with_notes,
)


def _wages(n: int = 20000, seed: int = 0) -> pd.Series:
    """Weekly wages: most continuous, a fifth on a few round amounts, one capped maximum."""
    rng = np.random.default_rng(seed)
    w = np.round(rng.lognormal(6.2, 0.6, n), 2)
    common = rng.random(n) < 0.2
    w[common] = rng.choice([400.0, 500.0, 712.25, 1000.0], common.sum())
    w[rng.random(n) < 0.01] = 5000.0  # top-coded
    return pd.Series(np.clip(w, 10.0, 5000.0))


def test_values_held_by_many_rows_are_drafted_as_points() -> None:
    schema, _ = draft_schema_with_notes(pd.DataFrame({"wage": _wages()}))
    col = schema.columns[0]
    assert col.kind == "continuous"
    assert {400.0, 500.0, 712.25, 1000.0, 5000.0} <= set(col.points)
    assert len(col.points) <= MAX_POINTS and col.lower not in col.points
    again = Schema.from_json(schema.to_json())
    assert again.columns[0].points == col.points and schema_sha256(again) == schema_sha256(schema)


def test_a_column_without_frequent_values_has_no_points_and_its_hash_is_unchanged() -> None:
    x = pd.Series(np.random.default_rng(0).normal(0, 1, 5000))
    schema, _ = draft_schema_with_notes(pd.DataFrame({"x": x}))
    assert schema.columns[0].points == ()
    assert "points" not in schema.to_json()


def test_points_encode_to_their_own_codes_and_decode_exactly() -> None:
    col = Column("w", "continuous", lower=10.0, upper=5000.0, points=(500.0, 712.25, 5000.0))
    codec = ColumnCodec.for_column(col)
    assert codec.size == 1 + FINE_BINS + 3
    codes = codec.encode(pd.Series([10.0, 499.99, 500.0, 712.25, 712.26, 5000.0]))
    assert list(codes[[2, 3, 5]]) == [FINE_BINS + 1, FINE_BINS + 2, FINE_BINS + 3]
    assert codes[0] == 0 and 1 <= codes[1] <= FINE_BINS and 1 <= codes[4] <= FINE_BINS
    out = codec.decode(np.array([FINE_BINS + 1, FINE_BINS + 2, FINE_BINS + 3]),
                       np.random.default_rng(0))
    assert list(out) == [500.0, 712.25, 5000.0]


def test_value_order_puts_each_point_after_the_bin_that_holds_it() -> None:
    col = Column("w", "integer", lower=0, upper=100000, points=(7, 50000))
    codec = ColumnCodec.for_column(col)
    order = list(codec.value_order())
    assert sorted(order) == list(range(codec.value_codes))
    bin_of = {7: int(codec.encode(pd.Series([6]))[0]), 50000: int(codec.encode(
        pd.Series([50001]))[0])}
    for p, code in zip((7, 50000), codec.point_codes, strict=True):
        assert order.index(int(code)) == order.index(bin_of[p]) + 1


def test_model_groups_follow_values_and_a_point_mass_decodes_exactly() -> None:
    wages = _wages()
    col = Column("wage", "continuous", lower=10.0, upper=5000.0,
                 points=(400.0, 500.0, 712.25, 1000.0))
    schema = Schema((col,))
    enc = Encoding.from_schema(schema)
    codec = enc.codecs[0]
    counts = np.bincount(codec.encode(wages), minlength=codec.size).astype(float)
    grp = quantile_grouping(codec, counts, 16)
    order = codec.value_order()
    assert np.all(np.diff(grp.index[order]) >= 0)  # groups are runs of adjacent values
    codes = np.bincount(grp.index[codec.encode(wages)], minlength=grp.size)
    rows = np.repeat(np.arange(grp.size), codes)[:, None]
    out = decode_groups(enc, [grp], rows, [counts], np.random.default_rng(0))["wage"]
    for p in (400.0, 712.25):
        assert abs((out == p).mean() - (wages == p).mean()) < 0.01


@pytest.mark.parametrize("points, says", [
    ((5.0,), "above the lower bound"), ((3.0, 3.0), "twice"), ((200.0,), "at most at the upper"),
    ((2.5,), "whole numbers")])
def test_bad_points_are_schema_errors(points: tuple[float, ...], says: str) -> None:
    with pytest.raises(SchemaError, match=says):
        Schema((Column("n", "integer", lower=5, upper=100, points=points),))


def test_points_are_refused_on_a_categorical_column() -> None:
    with pytest.raises(SchemaError, match="'points' are for integer and continuous"):
        Schema((Column("c", "categorical", ("a", "b"), points=(1.0,)),))


def test_a_range_condition_keeps_the_points_inside_it_whole() -> None:
    col = Column("wage", "continuous", lower=10.0, upper=5000.0,
                 points=(400.0, 500.0, 712.25, 1000.0))
    enc = Encoding.from_schema(Schema((col,)))
    keep = parse_conditions(enc, ["wage=500..800"])[0]
    codes = enc.codecs[0].point_codes
    assert list(keep.share[codes]) == [0.0, 1.0, 1.0, 0.0]
    bins = keep.share[1:FINE_BINS + 1]
    assert bins.max() == 1.0 and 0 < bins[bins > 0].min() < 1  # partial bins at the ends
