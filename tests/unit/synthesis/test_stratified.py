"""Stratified draws: the rows of one code spread evenly, each number still uniform."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.synthesis.encoding import Grouping, draw_fine, stratified_uniform

codes_st = st.lists(st.integers(0, 5), min_size=1, max_size=300)


@given(codes=codes_st, seed=st.integers(0, 2**32 - 1))
@settings(max_examples=200, deadline=None)
def test_one_number_in_each_slice_per_code(codes: list[int], seed: int) -> None:
    arr = np.asarray(codes)
    u = stratified_uniform(arr, np.random.default_rng(seed))
    assert u.shape == arr.shape and np.all((u >= 0) & (u < 1))
    for c in np.unique(arr):
        mine = u[arr == c]
        slot = np.floor(mine * len(mine)).astype(int)
        assert sorted(slot) == list(range(len(mine)))  # exactly one in each [i/m, (i+1)/m)


def test_each_row_is_still_uniform_and_order_is_random() -> None:
    codes = np.zeros(4, dtype=int)
    firsts = np.array([stratified_uniform(codes, np.random.default_rng(s))[0]
                       for s in range(4000)])
    # the first row is not always in the first slice: its slot is random, its value uniform
    counts = np.bincount(np.floor(firsts * 4).astype(int), minlength=4)
    assert counts.min() > 850
    assert abs(firsts.mean() - 0.5) < 0.02


@given(weights=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=8),
       rows=st.integers(1, 500), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=200, deadline=None)
def test_fine_codes_follow_the_weights_up_to_rounding(weights: list[float], rows: int,
                                                      seed: int) -> None:
    w = np.asarray(weights) + np.r_[1e-6, np.zeros(len(weights) - 1)]  # some weight somewhere
    grouping = Grouping(np.zeros(len(w), dtype=np.int64))
    fine, inside = draw_fine(grouping, np.zeros(rows, dtype=np.int64), w,
                             np.random.default_rng(seed))
    got = np.bincount(fine, minlength=len(w))
    expected = rows * w / w.sum()
    assert np.all(np.abs(got - expected) < 1 + 1e-9)
    assert np.all(got[w == 0] == 0)  # a code of weight zero is never drawn
    # each code's rows get numbers in [0, 1) about 1/m apart: evenly spread inside the code
    assert np.all((inside >= 0) & (inside < 1))
    for code in np.flatnonzero(got >= 2):
        gaps = np.diff(np.sort(inside[fine == code]))
        assert gaps.max() <= 1.0 / (got[code] - 1) + 1e-9


def test_the_number_inside_a_code_is_uniform_and_independent_of_the_code() -> None:
    grouping = Grouping(np.array([0, 0, 0, 1]))
    w = np.array([1.0, 3.0, 6.0, 2.0])
    means, firsts = [], []
    for seed in range(400):
        codes = np.array([0, 1] * 30)
        fine, inside = draw_fine(grouping, codes, w, np.random.default_rng(seed))
        means.append([inside[fine == f].mean() for f in range(4)])
        firsts.append(inside[0])
    assert np.allclose(np.mean(means, axis=0), 0.5, atol=0.02)
    counts = np.bincount(np.floor(np.asarray(firsts) * 4).astype(int), minlength=4)
    assert counts.min() > 70  # a single row's number is uniform: 100 expected per quarter


def test_groups_draw_only_their_own_codes() -> None:
    grouping = Grouping(np.array([0, 0, 1, 1, 1]))
    group_codes = np.array([0, 1] * 50)
    fine, _ = draw_fine(grouping, group_codes, np.ones(5), np.random.default_rng(3))
    assert set(fine[group_codes == 0]) <= {0, 1} and set(fine[group_codes == 1]) <= {2, 3, 4}
    assert sorted(np.bincount(fine[group_codes == 1])[2:]) == [16, 17, 17]
