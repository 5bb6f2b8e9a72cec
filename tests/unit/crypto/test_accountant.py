"""Unit and property tests for fedsynth.crypto.accountant (Skellam RDP, (ε, δ), zCDP ρ)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.crypto import accountant as acct
from fedsynth.crypto.accountant import Accountant, StepBudget, calibrate, check_epsilon_delta

ORDERS = np.asarray(acct.ORDERS)

epsilons = st.floats(0.01, 20.0)
deltas = st.floats(-12.0, -3.0).map(lambda e: 10.0**e)
variances = st.floats(0.5, 1e7)


def closed_form_rho(epsilon: float, delta: float) -> float:
    """ρ solving ε = ρ + 2 sqrt(ρ log(1/δ)) (Bun & Steinke 2016, Prop. 1.3)."""
    log_inv = math.log(1 / delta)
    return (math.sqrt(log_inv + epsilon) - math.sqrt(log_inv)) ** 2


def test_skellam_rdp_matches_the_theorem_at_a_hand_checked_point():
    # v = 10 -> μ = 5; α = 2: α/(4μ) = 0.1; min((2α + 6)/(16 μ²), 3/(4μ)) = min(0.025, 0.15)
    assert acct.skellam_rdp(10.0, orders=[2.0])[0] == pytest.approx(0.125)
    # v = 1 -> μ = 0.5; α = 10: 10/2 = 5; min(26/4, 3/2) = 1.5
    assert acct.skellam_rdp(1.0, orders=[10.0])[0] == pytest.approx(6.5)


@pytest.mark.parametrize("variance", [1e6, 1e8, 1e10])
def test_skellam_rdp_approaches_the_gaussian_for_large_variance(variance):
    rdp = acct.skellam_rdp(variance)
    gauss = ORDERS / (2 * variance)
    np.testing.assert_allclose(rdp, gauss, rtol=1e-4 if variance == 1e6 else 1e-6)
    assert np.all(rdp >= gauss)


@settings(max_examples=50, deadline=None)
@given(variance=variances, l1=st.integers(1, 10))
def test_skellam_rdp_is_never_below_the_gaussian(variance, l1):
    l2 = math.sqrt(l1)
    rdp = acct.skellam_rdp(variance, l1=l1, l2=l2)
    assert np.all(rdp >= ORDERS * l2**2 / (2 * variance))
    assert np.all(np.diff(rdp) > 0)  # increasing in the order


@settings(max_examples=60, deadline=None)
@given(v=variances, scale=st.floats(1.0, 1e3), count=st.integers(1, 20))
def test_sensitivity_scaled_with_variance_keeps_the_gaussian_part_of_unit_sensitivity(
        v, scale, count):
    """Δ1 = Δ2 = Δ with variance Δ² v: the Gaussian term is that of (Δ = 1, variance v), and the
    discreteness term is the theorem's at Δ, which for Δ >= 1 never exceeds the one at Δ = 1."""
    scaled, unit = Accountant(), Accountant()
    scaled.add(step="s", count=count, variance=scale**2 * v, l1=scale, l2=scale)
    unit.add(step="s", count=count, variance=v)
    assert scaled.rho() == pytest.approx(unit.rho(), rel=1e-12)
    assert scaled.rho() == pytest.approx(count / (2 * v), rel=1e-12)
    mu = scale**2 * v / 2
    gauss = count * ORDERS / (2 * v)
    extra = count * np.minimum((2 * ORDERS * scale**2 + 6 * scale) / (16 * mu**2),
                               3 * scale / (4 * mu))
    np.testing.assert_allclose(scaled.rdp(), gauss + extra, rtol=1e-12)
    assert np.all(scaled.rdp() <= unit.rdp() * (1 + 1e-12))


@settings(max_examples=40, deadline=None)
@given(variance=variances, k=st.integers(1, 60), delta=deltas)
def test_a_release_of_count_k_is_k_releases_of_count_1_and_one_vector_of_sensitivity_k(
        variance, k, delta):
    counted, single, vector = Accountant(), Accountant(), Accountant()
    counted.add(step="a", count=k, variance=variance, l1=1.0, l2=1.0)
    for i in range(k):
        single.add(step=f"a{i}", count=1, variance=variance, l1=1.0, l2=1.0)
    vector.add(step="a", count=1, variance=variance, l1=float(k), l2=math.sqrt(k))
    np.testing.assert_allclose(counted.rdp(), single.rdp(), rtol=1e-12)
    np.testing.assert_allclose(counted.rdp(), vector.rdp(), rtol=1e-12)
    assert counted.epsilon(delta) == pytest.approx(single.epsilon(delta), rel=1e-9)
    assert counted.rho() == pytest.approx(single.rho(), rel=1e-12)


def test_default_sensitivity_is_that_of_a_marginal():
    default, explicit = Accountant(), Accountant()
    default.add(step="m", count=7, variance=321.0)
    explicit.add(step="m", count=7, variance=321.0, l1=1.0, l2=1.0)
    np.testing.assert_array_equal(default.rdp(), explicit.rdp())
    np.testing.assert_array_equal(default.rdp(), 7 * acct.skellam_rdp(321.0))


def test_larger_sensitivity_at_equal_noise_costs_more():
    small, large = Accountant(), Accountant()
    small.add(step="x", count=1, variance=1000.0)
    large.add(step="x", count=1, variance=1000.0, l1=4.0, l2=4.0)
    assert large.epsilon(1e-6) > small.epsilon(1e-6)
    assert large.rho() == pytest.approx(16 * small.rho())


@pytest.mark.parametrize(("l1", "l2"), [(-1.0, 1.0), (1.0, -0.5), (float("nan"), 1.0),
                                        (1.0, float("inf"))])
def test_skellam_rdp_rejects_unusable_sensitivities(l1, l2):
    with pytest.raises(ValueError, match="sensitivities"):
        acct.skellam_rdp(10.0, l1=l1, l2=l2)


def test_skellam_rdp_rejects_non_positive_variance():
    for v in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            acct.skellam_rdp(v)


@settings(max_examples=40, deadline=None)
@given(v1=variances, ratio=st.floats(1.001, 100.0), count=st.integers(1, 50), delta=deltas)
def test_epsilon_decreases_with_variance(v1, ratio, count, delta):
    small, large = Accountant(), Accountant()
    small.add(step="s", count=count, variance=v1)
    large.add(step="s", count=count, variance=v1 * ratio)
    assert large.epsilon(delta) <= small.epsilon(delta)
    assert large.rho() < small.rho()


@settings(max_examples=40, deadline=None)
@given(variance=variances, k1=st.integers(1, 100), extra=st.integers(1, 100), delta=deltas)
def test_epsilon_increases_with_the_number_of_releases(variance, k1, extra, delta):
    few = Accountant()
    few.add(step="a", count=k1, variance=variance)
    more = Accountant()
    more.add(step="a", count=k1, variance=variance)
    more.add(step="b", count=extra, variance=variance)
    assert few.epsilon(delta) <= more.epsilon(delta)
    counted = Accountant()
    counted.add(step="a", count=k1 + extra, variance=variance)
    np.testing.assert_allclose(counted.rdp(), more.rdp())
    assert more.rho() == pytest.approx((k1 + extra) / (2 * variance))


def test_epsilon_strictly_grows_where_it_is_not_saturated():
    acc, prev = Accountant(), 0.0
    for _ in range(5):
        acc.add(step="m", count=10, variance=500.0)
        eps = acc.epsilon(1e-6)
        assert eps > prev
        prev = eps


def test_empty_accountant_spends_nothing():
    acc = Accountant()
    assert acc.epsilon(1e-6) == 0.0
    assert acc.rho() == 0.0
    assert not acc.rdp().any()


@settings(max_examples=30, deadline=None)
@given(epsilon=st.floats(0.03, 20.0), delta=deltas)
def test_zcdp_rho_converts_back_within_epsilon_and_beats_the_closed_form(epsilon, delta):
    rho = acct.zcdp_rho_for(epsilon, delta)
    back = acct.rdp_to_epsilon(ORDERS * rho, delta)
    assert back <= epsilon
    assert back >= 0.99 * epsilon
    # The classic conversion ε = ρ + 2 sqrt(ρ log(1/δ)) is not tight: the conversion used by
    # dp-accounting certifies a ρ at least that large (never smaller beyond 1%).
    assert rho >= 0.99 * closed_form_rho(epsilon, delta)
    assert rho <= epsilon


@pytest.mark.parametrize(("epsilon", "delta"), [(1.0, 1e-6), (3.0, 1e-9), (0.1, 1e-5)])
def test_zcdp_rho_is_the_largest_that_fits(epsilon, delta):
    rho = acct.zcdp_rho_for(epsilon, delta)
    assert acct.rdp_to_epsilon(ORDERS * rho * 1.01, delta) > epsilon


@pytest.mark.parametrize(("epsilon", "delta"), [(0.01, 1e-9), (0.02, 1e-12), (0.005, 1e-6)])
def test_small_epsilon_still_gets_a_usable_rho(epsilon, delta):
    """A small but legitimate ε must not collapse to the degenerate ρ ≈ δ² (the KL corner)."""
    rho = acct.zcdp_rho_for(epsilon, delta)
    assert rho >= 0.99 * closed_form_rho(epsilon, delta)
    assert acct.rdp_to_epsilon(ORDERS * rho, delta) <= epsilon


@st.composite
def plans(draw: st.DrawFn) -> list[StepBudget]:
    n = draw(st.integers(1, 4))
    return [StepBudget(step=f"step{i}", count=draw(st.integers(1, 200)),
                       share=draw(st.floats(0.05, 5.0))) for i in range(n)]


@settings(max_examples=40, deadline=None)
@given(steps=plans(), epsilon=epsilons, delta=deltas)
def test_calibrate_never_exceeds_the_target_and_lands_within_1_percent(steps, epsilon, delta):
    v = calibrate(steps, epsilon=epsilon, delta=delta)
    assert set(v) == {s.step for s in steps}
    acc = Accountant()
    for s in steps:
        assert v[s.step] > 0
        acc.add(step=s.step, count=s.count, variance=v[s.step])
    spent = acc.epsilon(delta)
    assert spent <= epsilon
    assert spent >= 0.99 * epsilon
    # each step's Gaussian ρ is its share of the total: count / (2 v) ∝ share
    rhos = np.array([s.count / (2 * v[s.step]) for s in steps])
    shares = np.array([s.share for s in steps])
    np.testing.assert_allclose(rhos / rhos.sum(), shares / shares.sum(), rtol=1e-9)


def test_calibrate_needs_more_noise_for_a_smaller_epsilon():
    steps = [StepBudget("one-way", 10, 1.0), StepBudget("pairs", 30, 2.0)]
    tight = calibrate(steps, epsilon=0.5, delta=1e-6)
    loose = calibrate(steps, epsilon=2.0, delta=1e-6)
    assert all(tight[k] > loose[k] for k in tight)


@pytest.mark.parametrize(
    "steps",
    [[], [StepBudget("a", 0, 1.0)], [StepBudget("a", 3, 0.0)], [StepBudget("a", 3, -1.0)]],
)
def test_calibrate_rejects_unusable_plans(steps):
    with pytest.raises(ValueError, match="marginal"):
        calibrate(steps, epsilon=1.0, delta=1e-6)


@pytest.mark.parametrize(
    ("epsilon", "delta", "fix"),
    [
        (0.0, 1e-6, "--epsilon"),
        (-1.0, 1e-6, "--epsilon"),
        (float("nan"), 1e-6, "--epsilon"),
        (float("inf"), 1e-6, "--epsilon"),
        (1.0, 0.0, "--delta"),
        (1.0, 1.0, "--delta"),
        (1.0, -1e-6, "--delta"),
        (1.0, 1.5, "--delta"),
        (1.0, float("nan"), "--delta"),
    ],
)
def test_check_epsilon_delta_rejects_with_a_fix(epsilon, delta, fix):
    with pytest.raises(ValueError, match=fix):
        check_epsilon_delta(epsilon, delta)
    with pytest.raises(ValueError, match=fix):
        calibrate([StepBudget("a", 1, 1.0)], epsilon=epsilon, delta=delta)
    with pytest.raises(ValueError, match=fix):
        acct.zcdp_rho_for(epsilon, delta)


def test_check_epsilon_delta_reports_both_problems_at_once():
    with pytest.raises(ValueError, match=r"epsilon.*; delta"):
        check_epsilon_delta(-1.0, 2.0)


def test_check_epsilon_delta_accepts_usual_targets():
    for eps, delta in [(1.0, 1e-6), (0.1, 1e-9), (10.0, 0.5)]:
        check_epsilon_delta(eps, delta)


@pytest.mark.parametrize(("q", "multiplier", "steps"), [(0.01, 1.1, 1000), (0.1, 2.0, 50),
                                                         (1.0, 5.0, 3)])
def test_subsampled_gaussian_steps_match_dp_accounting(q: float, multiplier: float,
                                                       steps: int) -> None:
    """DP-SGD steps priced as dp-accounting prices PoissonSampled(Gaussian) self-composed, with
    the clip norm as L2 sensitivity (noise variance = (multiplier * l2)^2)."""
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant

    from fedsynth.crypto.accountant import ORDERS

    # the orders ours uses for this mechanism (above 1024 the series take seconds each)
    ref = rdp_privacy_accountant.RdpAccountant([o for o in ORDERS if o <= 1024])
    ref.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
        q, dp_accounting.GaussianDpEvent(multiplier)), steps))
    acc = Accountant()
    acc.add(step="train", count=steps, variance=(multiplier * 0.5) ** 2, l2=0.5,
            mechanism="subsampled_gaussian", sampling_rate=q)
    assert acc.epsilon(1e-5) == pytest.approx(ref.get_epsilon(1e-5), rel=1e-9)
    assert acc.rho() == 0.0  # no zCDP part of the Skellam form
