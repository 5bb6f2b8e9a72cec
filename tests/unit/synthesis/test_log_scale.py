"""Heavy-tailed amounts: drafted on the log scale, binned geometrically, decoded inside the
bounds; schemas without a scale keep their hash."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.protocols.spec import schema_sha256
from fedsynth.synthesis.encoding import FINE_BINS, ColumnCodec
from fedsynth.synthesis.schema import Column, Schema, draft_schema_with_notes


def _incomes(n: int = 5000, seed: int = 0) -> pd.Series:
    rng = np.random.default_rng(seed)
    return pd.Series(np.round(rng.lognormal(10, 1.5, n), 2))  # up to millions


def test_a_heavy_tailed_amount_is_drafted_on_the_log_scale_and_said_so() -> None:
    df = pd.DataFrame({"income": _incomes(), "age": np.random.default_rng(1).integers(18, 90,
                                                                                      5000)})
    schema, notes = draft_schema_with_notes(df)
    income, age = schema.columns
    assert income.scale == "log" and age.scale == "linear"
    assert any("income" in n and "log scale" in n for n in notes)
    again = Schema.from_json(schema.to_json())
    assert again.columns[0].scale == "log"


def test_a_wage_with_a_few_far_outliers_goes_to_log_and_a_spread_out_column_does_not() -> None:
    rng = np.random.default_rng(2)
    # weekly wages: the middle 90% within 4% of the range because of a few very high ones
    wage = np.round(np.r_[rng.lognormal(6.2, 0.6, 4990), rng.uniform(5000, 19000, 10)], 2)
    spread = np.round(rng.normal(100, 15, 5000), 2)  # wide middle: equal-width bins do well
    schema, _ = draft_schema_with_notes(pd.DataFrame({"wage": wage, "score": spread}))
    assert [c.scale for c in schema.columns] == ["log", "linear"]


def test_log_bins_spread_a_heavy_tail_over_many_codes() -> None:
    values = _incomes()
    lo, hi = float(values.min()), float(values.max())
    linear = ColumnCodec.for_column(Column("x", "continuous", lower=lo, upper=hi))
    log = ColumnCodec.for_column(Column("x", "continuous", lower=lo, upper=hi, scale="log"))
    def busiest(codec: ColumnCodec) -> float:  # share of rows in the fullest code
        return float(np.bincount(codec.encode(values)).max() / len(values))

    assert busiest(log) < busiest(linear) / 4, (busiest(log), busiest(linear))
    assert log.edges is not None and log.edges[0] == lo and log.edges[-1] == hi
    assert np.all(np.diff(log.edges) > 0) and len(log.edges) == FINE_BINS + 1


@settings(max_examples=50, deadline=None)
@given(lo=st.floats(-1e9, 1e9), width=st.floats(1e-6, 1e9), integer=st.booleans(),
       seed=st.integers(0, 2**31))
def test_log_scale_decodes_inside_the_bounds(lo: float, width: float, integer: bool,
                                             seed: int) -> None:
    hi = lo + width
    if integer:
        lo, hi = float(np.floor(lo)), float(np.floor(lo) + max(300.0, np.ceil(width)))
    col = Column("x", "integer" if integer else "continuous", lower=lo, upper=hi, scale="log")
    codec = ColumnCodec.for_column(col)
    rng = np.random.default_rng(seed)
    out = codec.decode(rng.integers(0, codec.size, 500), rng).to_numpy(dtype=float)
    assert np.all(out >= lo) and np.all(out <= hi)
    if integer:
        assert np.all(np.mod(out, 1) == 0)


def test_a_linear_schema_keeps_its_hash_and_bad_scales_are_problems() -> None:
    plain = Schema((Column("x", "continuous", lower=0.0, upper=1.0),))
    assert "scale" not in plain.to_json()
    assert schema_sha256(plain) == schema_sha256(Schema.from_json(plain.to_json()))
    bad = Column("c", "categorical", ("a", "b"), scale="log").problems()
    assert any("scale" in p for p in bad)
    assert any("scale" in p for p in Column("x", "continuous", lower=0.0, upper=1.0,
                                            scale="sqrt").problems())
