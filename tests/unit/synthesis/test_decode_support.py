"""Property: decoding never emits a value outside a column's declared support, for every kind.

The support is public (categories, listed values, bounds, whole numbers, date bounds); a value
outside it would be impossible data, and for lists a value nobody declared.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.synthesis import datetimes
from fedsynth.synthesis.encoding import ColumnCodec
from fedsynth.synthesis.schema import Column

_finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)


@st.composite
def columns(draw: st.DrawFn) -> Column:
    kind = draw(st.sampled_from(["categorical", "integer", "continuous", "discrete",
                                 "datetime"]))
    nullable = draw(st.booleans())
    if kind == "categorical":
        cats = draw(st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=8,
                             unique=True))
        return Column("c", "categorical", tuple(cats), nullable=nullable)
    if kind == "discrete":
        ints = draw(st.booleans())
        vals = draw(st.lists(st.integers(-10**6, 10**6) if ints else _finite, min_size=1,
                             max_size=40, unique_by=float))
        return Column("c", "discrete", values=tuple(vals), nullable=nullable)
    if kind == "datetime":
        res = draw(st.sampled_from(["day", "second"]))
        lo = draw(st.floats(min_value=-40000, max_value=40000))
        span = draw(st.one_of(st.floats(0, 2), st.floats(0, 300), st.floats(0, 30000)))
        if res == "day":
            lo, span = math.floor(lo), math.floor(span)
        else:
            lo, span = round(lo * 86400) / 86400, max(span, 1 / 86400)
        return Column("c", "datetime", lower=lo, upper=lo + span, resolution=res,
                      nullable=nullable)
    lo = draw(_finite)
    span = draw(st.one_of(st.floats(0, 3), st.floats(0, 400), st.floats(0, 1e7)))
    if kind == "integer":
        span = max(span, math.ceil(lo) - lo)  # at least one whole number inside
    hi = lo + span
    inner = [v for v in draw(st.lists(st.floats(lo, hi), max_size=5)) if lo < v <= hi]
    if kind == "integer":
        inner = [float(math.floor(v)) for v in inner if lo < math.floor(v)]
    points = tuple(sorted(set(inner)))  # frequent values, decoded exactly
    return Column("c", kind, lower=lo, upper=hi, nullable=nullable,  # type: ignore[arg-type]
                  points=points)


def _inside(col: Column, out: pd.Series) -> None:
    present = out.dropna()
    if col.kind == "categorical":
        assert set(present) <= set(col.categories)
        return
    assert col.lower is not None and col.upper is not None
    if col.kind == "datetime":
        assert col.resolution is not None
        u = datetimes.units(present, col.resolution)
        lo, hi = datetimes.bound_units(col.lower, col.upper, col.resolution)
        assert ((u >= lo) & (u <= hi)).all()
        ns = present.to_numpy(dtype="datetime64[ns]").astype(np.int64)
        assert (ns % datetimes.UNIT_NS[col.resolution] == 0).all()  # whole units
        return
    x = present.to_numpy(dtype=float)
    assert ((x >= col.lower) & (x <= col.upper)).all(), (col, x[(x < col.lower) | (x > col.upper)])
    if col.kind == "discrete":
        assert np.isin(x, np.asarray(col.values, dtype=float)).all()
    if col.integral:
        assert (np.mod(x, 1) == 0).all()


@settings(max_examples=300, deadline=None)
@given(col=columns(), data=st.data())
def test_decode_stays_inside_the_declared_support(col: Column, data: st.DataObject) -> None:
    codec = ColumnCodec.for_column(col)
    codes = np.asarray(data.draw(st.lists(st.integers(0, codec.size - 1), min_size=1,
                                          max_size=60)), dtype=np.int64)
    seed = data.draw(st.integers(0, 2**32 - 1))
    out = codec.decode(codes, np.random.default_rng(seed))
    assert len(out) == len(codes)
    missing = out.isna().to_numpy()
    expected = codes == codec.missing_code if codec.missing_code is not None else np.zeros(
        len(codes), dtype=bool)
    assert (missing == expected).all()
    _inside(col, out)
    if col.kind == "discrete" and col.integral:
        assert pd.api.types.is_integer_dtype(out)
