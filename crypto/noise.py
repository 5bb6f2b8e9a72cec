"""Integer DP noise shares: symmetric Skellam, which stays Skellam when parties' shares are summed.

A symmetric Skellam variable with variance v is Poisson(v/2) - Poisson(v/2). Independent
Skellam variables with variances v_1..v_m sum to a Skellam variable with variance sum v_i, so
when each of the parties adds a share of variance v / (t - c), any t - c honest survivors
together contribute Skellam noise of variance at least v: exactly the mechanism the accountant
charges for, whatever the other parties (colluders included) add or withhold.
"""

from __future__ import annotations

import numpy as np


def skellam(variance: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw `size` symmetric Skellam values with the given variance (int64)."""
    if variance < 0:
        raise ValueError("noise variance must be non-negative")
    if variance == 0:
        return np.zeros(size, dtype=np.int64)
    lam = variance / 2.0
    return rng.poisson(lam, size).astype(np.int64) - rng.poisson(lam, size).astype(np.int64)


def share_variance(total_variance: float, *, honest_min: int) -> float:
    """The variance each party adds so that `honest_min` honest shares reach `total_variance`."""
    if honest_min < 1:
        raise ValueError("at least one honest party is needed to carry the noise")
    return total_variance / honest_min
