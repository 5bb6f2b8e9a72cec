"""Privacy accounting for summed Skellam noise in Rényi DP, reported as (ε, δ) and zCDP ρ.

Unit of privacy: one row of one party; neighbours differ by adding or removing a row. What is
noised is always an integer vector (counts, or clipped values that the caller scales and rounds
to integers), and a `Release` is `count` such vectors, each with its own independent noise. Its
sensitivities `l1` = Δ1 and `l2` = Δ2 are the largest L1 and L2 norms by which one row can move
that integer vector (after any scaling and rounding; the caller bounds them). A row falls in
exactly one cell of each marginal, so a marginal has Δ1 = Δ2 = 1 (the default), and a round
that measures k marginals composes k such mechanisms: exactly the same curve as one vector with
Δ1 = k, Δ2 = sqrt(k) and equal noise (both terms below are linear in Δ1 and Δ2², hence in k).
The noise on each coordinate is symmetric Skellam of variance at least v (the t - c honest
survivors' shares, see `noise`), independent across coordinates and releases. For variance
v = 2μ the Skellam mechanism is (α, ε(α))-RDP with (Agarwal, Kairouz, Liu 2021, Thm. 3.5; we
use 2α in place of 2α - 1, a slightly looser and so safe bound):

    ε(α) = α Δ2² / (4μ) + min( (2α Δ2² + 6 Δ1) / (16 μ²), 3 Δ1 / (4μ) )

The first term is the Gaussian mechanism's (ρ = Δ2² / (2v) zCDP): a release with Δ1 = Δ2 = Δ
and variance Δ² v has the same Gaussian part as one with Δ = 1 and variance v. The second is
the price of discreteness; it vanishes as v grows (and for Δ ≥ 1 is at most its value at Δ = 1).
RDP composes by addition per order, and dp-accounting's optimal RDP-to-(ε, δ) conversion gives
the reported ε. `calibrate` scales a budget split so that the composed guarantee is never above
the (ε, δ) asked for. Nothing here is secret: the accountant sees only the public plan (counts,
variances, sensitivities), never data or noise.

Releases are events of one of MECHANISMS, composed the same way in the coordinator's
accountant and in every party's ledger:
  "skellam"              `count` integer vectors with summed Skellam noise, as above;
  "subsampled_gaussian"  `count` steps of a Poisson-subsampled Gaussian mechanism (DP-SGD: each
                         row enters a step with probability `sampling_rate`, its clipped
                         contribution has L2 norm at most `l2`, and the sum carries Gaussian
                         noise of `variance` per coordinate, i.e. noise multiplier
                         sqrt(variance) / l2). Its RDP curve is dp-accounting's
                         PoissonSampledDpEvent(q, GaussianDpEvent(multiplier)) (Mironov, Talwar,
                         Zhang 2019), self-composed `count` times.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import dp_accounting
import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant

# Orders up to 2**20: a small ε at a small δ needs a large order (ε ≈ log(1/δ) / α); with the
# grid stopping at 1024, e.g. ε = 0.01 at δ = 1e-9 had no usable order and calibrate fell into
# the degenerate ρ ≈ δ² corner (noise variance ~1e17).
ORDERS: tuple[float, ...] = tuple(
    [1.0 + x / 10.0 for x in range(1, 100)] + list(range(11, 64))
    + [float(2**k) for k in range(6, 21)])


def check_epsilon_delta(epsilon: float, delta: float) -> None:
    """Raise a ValueError a user can act on if (ε, δ) is not a usable target."""
    problems = []
    if not np.isfinite(epsilon) or epsilon <= 0:
        problems.append(f"epsilon must be a positive number, got {epsilon} (e.g. --epsilon 1)")
    if not 0 < delta < 1:
        problems.append(f"delta must lie strictly between 0 and 1, got {delta} "
                        "(e.g. --delta 1e-6, below 1/rows)")
    if problems:
        raise ValueError("; ".join(problems))


def skellam_rdp(variance: float, *, l1: float = 1.0, l2: float = 1.0,
                orders: Sequence[float] = ORDERS) -> np.ndarray:
    """RDP curve of one Skellam release with total variance `variance` (= 2μ) per coordinate
    of an integer vector whose L1 and L2 sensitivities are `l1` and `l2`."""
    if not variance > 0:
        raise ValueError("Skellam variance must be positive")
    if not (np.isfinite(l1) and np.isfinite(l2) and l1 >= 0 and l2 >= 0):
        raise ValueError(f"sensitivities must be finite and non-negative, got l1={l1}, l2={l2}")
    mu = variance / 2.0
    a = np.asarray(orders, dtype=float)
    gauss = a * l2**2 / (4.0 * mu)
    extra = np.minimum((2.0 * a * l2**2 + 6.0 * l1) / (16.0 * mu**2), 3.0 * l1 / (4.0 * mu))
    return np.asarray(gauss + extra)


class _QuietSeries(logging.Filter):
    """dp-accounting warns when its series for a fractional order does not converge and then
    leaves that order out (an infinite curve there: safe). Not a user's concern: not shown."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("_compute_log_a_frac failed to converge")


logging.getLogger("absl").addFilter(_QuietSeries())
SUBSAMPLED_MAX_ORDER = 1024.0  # above it dp-accounting's series take seconds per order


def subsampled_gaussian_rdp(variance: float, *, sampling_rate: float, l2: float = 1.0,
                            orders: Sequence[float] = ORDERS) -> np.ndarray:
    """RDP curve of one step of a Poisson-subsampled Gaussian mechanism (see the module
    docstring), from dp-accounting's RDP accountant. Orders above SUBSAMPLED_MAX_ORDER are
    given an infinite curve (never chosen by the conversion: a safe, looser bound)."""
    if not variance > 0 or not 0 < sampling_rate <= 1 or not l2 > 0:
        raise ValueError(f"a subsampled Gaussian step needs variance > 0, 0 < sampling_rate "
                         f"<= 1 and l2 > 0, got {variance}, {sampling_rate}, {l2}")
    return _subsampled_gaussian_rdp(float(np.sqrt(variance)) / l2, float(sampling_rate),
                                    tuple(float(a) for a in orders))


@functools.lru_cache(maxsize=256)
def _subsampled_gaussian_rdp(multiplier: float, rate: float,
                             orders: tuple[float, ...]) -> np.ndarray:
    low = [a for a in orders if a <= SUBSAMPLED_MAX_ORDER]
    acc = rdp_privacy_accountant.RdpAccountant(low)
    acc.compose(dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(
        multiplier)))
    curve = np.full(len(orders), np.inf)
    curve[: len(low)] = np.asarray(acc._rdp, dtype=float)  # its curve at our orders (tested)
    curve.setflags(write=False)
    return curve


def rdp_to_epsilon(rdp: np.ndarray, delta: float) -> float:
    eps, _ = rdp_privacy_accountant.compute_epsilon(ORDERS, list(rdp), delta)
    return float(eps)


@functools.lru_cache(maxsize=256)
def zcdp_rho_for(epsilon: float, delta: float) -> float:
    """The largest ρ whose ρ-zCDP guarantee converts to at most (ε, δ)."""
    check_epsilon_delta(epsilon, delta)
    lo, hi = 0.0, max(epsilon, 1.0) * 4
    orders = np.asarray(ORDERS)
    for _ in range(100):
        mid = (lo + hi) / 2
        if rdp_to_epsilon(orders * mid, delta) <= epsilon:
            lo = mid
        else:
            hi = mid
    return lo


MECHANISMS = ("skellam", "subsampled_gaussian")


@dataclass
class Release:
    """`count` events of one mechanism (see MECHANISMS): noisy vectors with variance `variance`
    per coordinate and L1 / L2 sensitivities `l1` / `l2` (1 and 1 for a marginal); for
    "subsampled_gaussian", steps in which each row takes part with probability
    `sampling_rate`."""

    step: str
    count: int
    variance: float
    l1: float = 1.0
    l2: float = 1.0
    mechanism: str = "skellam"
    sampling_rate: float = 1.0

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"mechanism {self.mechanism!r} is not one of {MECHANISMS}")
        if self.mechanism == "skellam" and self.sampling_rate != 1.0:
            raise ValueError("a Skellam release is not subsampled (sampling_rate must be 1)")

    def rdp(self) -> np.ndarray:
        """The RDP curve of all `count` events at ORDERS."""
        if self.mechanism == "skellam":
            one = skellam_rdp(self.variance, l1=self.l1, l2=self.l2)
        else:
            one = subsampled_gaussian_rdp(self.variance, sampling_rate=self.sampling_rate,
                                          l2=self.l2)
        return self.count * one


@dataclass
class Accountant:
    """Composes releases in RDP and reports (ε, δ) and the Gaussian-equivalent ρ."""

    releases: list[Release] = field(default_factory=list)

    def add(self, *, step: str, count: int, variance: float, l1: float = 1.0,
            l2: float = 1.0, mechanism: str = "skellam", sampling_rate: float = 1.0) -> None:
        self.releases.append(Release(step=step, count=count, variance=variance, l1=l1, l2=l2,
                                     mechanism=mechanism, sampling_rate=sampling_rate))

    def rdp(self) -> np.ndarray:
        total = np.zeros(len(ORDERS))
        for r in self.releases:
            total = total + r.rdp()
        return total

    def epsilon(self, delta: float) -> float:
        return rdp_to_epsilon(self.rdp(), delta) if self.releases else 0.0

    def rho(self) -> float:
        """zCDP ρ of the Skellam releases' Gaussian part (the Skellam extra is in `epsilon`,
        not here; subsampled Gaussian steps have no ρ of this form and count only in
        `epsilon`)."""
        return float(sum(r.count * r.l2**2 / (2.0 * r.variance) for r in self.releases
                         if r.mechanism == "skellam"))


@dataclass(frozen=True)
class StepBudget:
    """A planned step: `count` marginals sharing `share` of the total budget."""

    step: str
    count: int
    share: float


def calibrate(steps: Sequence[StepBudget], *, epsilon: float, delta: float) -> dict[str, float]:
    """Per-marginal Skellam variance for each step, the largest budget that stays within (ε, δ).

    Step i gets ρ_i = share_i * ρ split evenly over its marginals (variance 1 / (2 ρ_i / k_i)).
    ρ is bisected so that the composed Skellam RDP converts to at most ε at δ.
    """
    check_epsilon_delta(epsilon, delta)
    if not steps or any(s.count < 1 or s.share <= 0 for s in steps):
        raise ValueError("each planned step needs at least one marginal and a positive share")
    total_share = sum(s.share for s in steps)

    def variances(rho: float) -> dict[str, float]:
        return {s.step: s.count / (2.0 * rho * s.share / total_share) for s in steps}

    def eps_of(rho: float) -> float:
        acc = Accountant()
        for s in steps:
            acc.add(step=s.step, count=s.count, variance=variances(rho)[s.step])
        return acc.epsilon(delta)

    lo, hi = 0.0, zcdp_rho_for(epsilon, delta)
    if eps_of(hi) <= epsilon:
        return variances(hi)
    for _ in range(60):
        mid = (lo + hi) / 2
        if eps_of(mid) <= epsilon:
            lo = mid
        else:
            hi = mid
    if lo == 0.0:
        raise ValueError(f"no noise level meets epsilon={epsilon}, delta={delta}")
    return variances(lo)


def remaining_variance(acc: Accountant, *, count: int, epsilon: float, delta: float) -> float:
    """Smallest Skellam variance for `count` more marginals that keeps the total within (ε, δ)."""
    check_epsilon_delta(epsilon, delta)
    if count < 1:
        raise ValueError("count must be at least 1")

    def fits(v: float) -> bool:
        trial = Accountant(list(acc.releases))
        trial.add(step="trial", count=count, variance=v)
        return trial.epsilon(delta) <= epsilon

    lo, hi = 1e-6, 1.0
    while not fits(hi):
        lo, hi = hi, hi * 4
        if hi > 1e18:
            raise ValueError(f"the budget ε={epsilon} is already spent; nothing is left for "
                             f"{count} more marginals")
    for _ in range(80):  # geometric bisection: the answer spans many orders of magnitude
        mid = (lo * hi) ** 0.5
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi
