"""Statistical tests for fedsynth.crypto.noise (symmetric Skellam noise shares)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fedsynth.crypto.noise import secure_generator, share_variance, skellam

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


def test_secure_generators_never_repeat_each_other():
    """Two generators from the OS's entropy draw different noise: nothing to regenerate."""
    a = skellam(50.0, 1000, secure_generator())
    b = skellam(50.0, 1000, secure_generator())
    assert not np.array_equal(a, b)


def test_secure_generator_draws_the_skellam_law():
    x = skellam(8.0, DRAWS, secure_generator())
    ks = np.arange(-4, 5)
    empirical = np.array([(x == k).mean() for k in ks])
    np.testing.assert_allclose(empirical, stats.skellam.pmf(ks, 4.0, 4.0), atol=0.004)


def test_secure_generator_is_a_chacha20_stream_keyed_from_the_os():
    g = secure_generator()
    assert type(g.bit_generator).__name__ == "ChaCha"
    assert g.bit_generator.state["state"]["rounds"] == 20


def test_skellam_takes_one_variance_per_value():
    v = np.array([0.0, 4.0, 400.0] * 40_000)
    x = skellam(v, len(v), np.random.default_rng(1))
    assert not x[v == 0].any()
    assert abs(x[v == 4.0].var() / 4.0 - 1) < 0.05
    assert abs(x[v == 400.0].var() / 400.0 - 1) < 0.05
    with pytest.raises(ValueError, match="numbers"):
        skellam(np.ones(3), 4, np.random.default_rng(1))
    with pytest.raises(ValueError, match="finite"):
        skellam(np.array([1.0, np.nan]), 2, np.random.default_rng(1))
