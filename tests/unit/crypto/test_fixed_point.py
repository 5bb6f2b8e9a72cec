"""Fixed point for real vectors through the integer channels: exact sums, unbiased rounding,
per-party values inside the he channel's bound."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.crypto import fixed_point as fp
from fedsynth.crypto.he import BfvParams


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 40), st.integers(1, 64), st.integers(0, 2**32 - 1))
def test_the_mean_of_encoded_vectors_is_within_one_unit_per_party(parties: int, length: int,
                                                                    seed: int) -> None:
    rng = np.random.default_rng(seed)
    xs = rng.uniform(-fp.BOUND, fp.BOUND, size=(parties, length))
    codes = np.stack([fp.encode(x, rng) for x in xs])
    assert np.abs(codes).max() <= BfvParams().bound  # what the he channel accepts per party
    total = codes.sum(axis=0)  # an exact integer sum, as both channels deliver it
    assert np.abs(fp.decode_mean(total, parties) - xs.mean(axis=0)).max() < 1.0 / fp.SCALE


def test_rounding_is_unbiased_and_large_values_are_clipped() -> None:
    rng = np.random.default_rng(0)
    x = np.full(200_000, 0.3 / fp.SCALE)  # a third of a unit: rounds to 0 or 1
    mean = fp.encode(x, rng).mean()
    assert abs(mean - 0.3) < 0.01
    big = fp.encode(np.array([5 * fp.BOUND, -5 * fp.BOUND]), rng)
    assert np.array_equal(big, np.array([fp.BOUND * fp.SCALE, -fp.BOUND * fp.SCALE]))


def test_non_finite_vectors_and_impossible_party_counts_are_refused() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(fp.FixedPointError, match="NaN or infinite"):
        fp.encode(np.array([0.0, np.nan]), rng)
    with pytest.raises(fp.FixedPointError, match="over 0 parties"):
        fp.decode_mean(np.zeros(3, dtype=np.int64), 0)
