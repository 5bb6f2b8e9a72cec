"""Statistical tests for fedsynth.crypto.noise (symmetric Skellam noise shares)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fedsynth.crypto.noise import share_variance, skellam

DRAWS = 200_000


@pytest.mark.parametrize("variance", [0.3, 2.0, 37.5, 1_000.0, 1e6])
def test_skellam_moments_match_the_requested_variance(variance):
    x = skellam(variance, DRAWS, np.random.default_rng(12345))
    assert x.dtype == np.int64
    assert x.shape == (DRAWS,)
    assert abs(x.var() / variance - 1) < 0.03
    # mean 0: within 5 standard errors
    assert abs(x.mean()) < 5 * np.sqrt(variance / DRAWS)


@pytest.mark.parametrize("variance", [1.0, 8.0])
def test_skellam_pmf_is_the_symmetric_skellam_distribution(variance):
    x = skellam(variance, DRAWS, np.random.default_rng(7))
    ks = np.arange(-4, 5)
    empirical = np.array([(x == k).mean() for k in ks])
    expected = stats.skellam.pmf(ks, variance / 2, variance / 2)
    np.testing.assert_allclose(empirical, expected, atol=0.004)


def test_skellam_zero_variance_and_validation():
    rng = np.random.default_rng(0)
    z = skellam(0.0, 10, rng)
    assert z.dtype == np.int64 and not z.any()
    with pytest.raises(ValueError, match="non-negative"):
        skellam(-1.0, 10, rng)


def test_skellam_is_reproducible_from_the_generator_and_varies_otherwise():
    a = skellam(5.0, 100, np.random.default_rng(3))
    np.testing.assert_array_equal(a, skellam(5.0, 100, np.random.default_rng(3)))
    assert not np.array_equal(a, skellam(5.0, 100, np.random.default_rng(4)))


@pytest.mark.parametrize(("total", "m"), [(10.0, 1), (50.0, 3), (400.0, 7)])
def test_sum_of_m_honest_shares_has_the_total_variance(total, m):
    rng = np.random.default_rng(99)
    v = share_variance(total, honest_min=m)
    assert v == pytest.approx(total / m)
    summed = sum(skellam(v, DRAWS, rng) for _ in range(m))
    assert summed.dtype == np.int64
    assert abs(summed.var() / total - 1) < 0.03
    assert abs(summed.mean()) < 5 * np.sqrt(total / DRAWS)


def test_extra_shares_only_add_noise():
    """Colluders may withhold their shares; the m honest ones already carry the total."""
    rng = np.random.default_rng(5)
    total, m, parties = 100.0, 3, 5
    v = share_variance(total, honest_min=m)
    all_shares = sum(skellam(v, DRAWS, rng) for _ in range(parties))
    assert all_shares.var() > total * 0.97


@pytest.mark.parametrize("m", [0, -2])
def test_share_variance_needs_an_honest_party(m):
    with pytest.raises(ValueError, match="honest"):
        share_variance(10.0, honest_min=m)
