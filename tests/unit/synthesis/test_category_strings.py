"""Category strings computed once per distinct value equal the row-by-row strings."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.synthesis.schema import _cat_str, category_codes, category_strings

VALUES = st.one_of(st.none(), st.just(np.nan), st.booleans(), st.integers(-3, 3),
                   st.sampled_from([0.0, 1.0, 2.5, -1.0]), st.sampled_from(["1", "1.0", "a", "True",
                                                                             "b", ""]))


def _row_by_row(values: list[object]) -> list[object]:
    return [None if pd.isna(v) else _cat_str(v) for v in values]


@settings(max_examples=200, deadline=None)
@given(st.lists(VALUES, max_size=40))
def test_category_strings_of_a_mixed_object_column_equal_the_strings_row_by_row(
        values: list[object]) -> None:
    s = pd.Series(values, dtype=object)
    assert list(category_strings(s)) == _row_by_row(values)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([0.0, 1.0, 2.5, np.nan]), max_size=40))
def test_category_strings_of_a_float_column_equal_the_strings_row_by_row(
        values: list[float]) -> None:
    s = pd.Series(values, dtype=float)
    assert list(category_strings(s)) == _row_by_row(list(s.astype(object)))


@settings(max_examples=100, deadline=None)
@given(st.lists(VALUES, min_size=1, max_size=40))
def test_category_labels_are_distinct_and_in_the_order_of_their_first_row(
        values: list[object]) -> None:
    codes, labels = category_codes(pd.Series(values, dtype=object))
    strings = [x for x in _row_by_row(values) if x is not None]
    assert list(labels) == list(dict.fromkeys(strings))
    assert len(set(labels)) == len(labels)
    assert ((codes == -1) == np.array([pd.isna(v) for v in values])).all()
