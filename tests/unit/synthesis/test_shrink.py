"""Decoding inside a model group: the bins of a binned column are drawn by noisy counts shrunk
toward their mean (empirical Bayes), exact-value codes by floored counts, never outside the
group."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.synthesis.encoding import (
    FLOOR_SDS,
    ColumnCodec,
    Grouping,
    decode_weights,
    shrunk_bins,
)
from fedsynth.synthesis.schema import Column


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.5, 1e4), min_size=2, max_size=64), st.floats(1e-3, 1e4))
def test_shrinking_keeps_the_mean_and_never_widens_the_spread(counts: list[float],
                                                              variance: float) -> None:
    c = np.asarray(counts)
    w = shrunk_bins(c, variance)
    assert np.all(w > 0)
    # no clipping can happen (all counts positive), so the total weight is kept
    assert abs((w - 1e-6).sum() - c.sum()) <= 1e-6 * max(1.0, c.sum())
    assert np.ptp(w) <= np.ptp(c) + 1e-6


def test_pure_noise_is_drawn_about_uniformly_and_a_strong_shape_is_kept() -> None:
    rng = np.random.default_rng(0)
    sd = 30.0
    flat = np.full(16, 25.0)
    errs_raw, errs_shrunk = [], []
    for _ in range(200):
        noisy = flat + rng.normal(0, sd, 16)
        p_raw = np.clip(noisy, 0, None) / np.clip(noisy, 0, None).sum()
        w = shrunk_bins(noisy, sd**2)
        errs_raw.append(np.abs(p_raw - 1 / 16).sum())
        errs_shrunk.append(np.abs(w / w.sum() - 1 / 16).sum())
    assert np.median(errs_shrunk) < 0.5 * np.median(errs_raw)
    steep = np.geomspace(5000, 50, 16)  # a decaying density far above the noise
    w = shrunk_bins(steep + rng.normal(0, sd, 16), sd**2)
    assert np.abs(w / w.sum() - steep / steep.sum()).sum() < 0.05


def test_exact_codes_keep_their_floored_counts_and_groups_stay_apart() -> None:
    col = Column("amount", "continuous", lower=0.0, upper=100.0, points=(50.0,))
    codec = ColumnCodec.for_column(col)
    n = codec.size
    rng = np.random.default_rng(1)
    counts = 40 + rng.normal(0, 10, n)
    counts[0], counts[codec.point_codes[0]] = 5.0, 500.0  # lower bound, one point
    index = np.zeros(n, dtype=np.int64)
    index[n // 2:] = 1
    floor = FLOOR_SDS * 10.0
    w = decode_weights(codec, Grouping(index), counts, floor)
    assert w[0] == 0.0  # below the floor: never drawn
    assert w[codec.point_codes[0]] == 500.0 - floor
    bins = codec.in_bins(np.arange(n))
    for k in (0, 1):  # each group's bins shrunk among themselves
        members = bins & (index == k)
        assert np.allclose(w[members], shrunk_bins(counts[members], 100.0))
