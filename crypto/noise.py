"""Integer DP noise shares: symmetric Skellam, which stays Skellam when parties' shares are summed.

A symmetric Skellam variable with variance v is Poisson(v/2) - Poisson(v/2). Independent
Skellam variables with variances v_1..v_m sum to a Skellam variable with variance sum v_i, so
when each of the parties adds a share of variance v / (t - c), any t - c honest survivors
together contribute Skellam noise of variance at least v: exactly the mechanism the accountant
charges for, whatever the other parties (colluders included) add or withhold.

Where the randomness comes from (who could predict the noise): `secure_generator()` keys a
ChaCha20 stream cipher (20 rounds, a 256-bit key) with 32 bytes from the operating system's
CSPRNG (`secrets`), and wraps it as numpy's bit generator. The key lives only in this process
and is never stored, logged or derived from a job id, a party index or a user's `--seed`, so
nobody else (coordinator, other parties, a reader of the outputs) can regenerate the noise and
subtract it: ChaCha20's keystream is indistinguishable from random without the key. A seeded
generator (`seeded_generator`) exists only for tests; whoever uses it must mark the output as
"not differentially private: noise was seeded" (the node reports it in every reply).

Why the sampler is sound: numpy's Poisson sampler (inversion for λ < 10, the PTRS transformed
rejection method above) returns integers whose law equals Poisson(λ) up to the rounding of
double-precision arithmetic in its acceptance tests (relative error around 2^-53 per
probability). Its outputs are integers, so the low-order-bit leak that breaks floating-point
Laplace samplers (Mironov 2012) does not arise: an output reveals nothing beyond its value.
The residual deviation from the exact law is far below the δ we report and is named, with
timing and message sizes, among what the guarantee does not cover.
"""

from __future__ import annotations

import secrets

import numpy as np
from randomgen import ChaCha


def secure_generator() -> np.random.Generator:
    """A generator keyed from the OS's CSPRNG: the only source of DP noise outside tests."""
    key = int.from_bytes(secrets.token_bytes(32), "big")
    return np.random.Generator(ChaCha(key=key, rounds=20))


def seeded_generator(seed: int | list[int]) -> np.random.Generator:
    """A reproducible generator, FOR TESTS ONLY: noise drawn from it is not private."""
    return np.random.default_rng(seed)


def skellam(variance: float | np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw `size` symmetric Skellam values (int64) with the given variance, one for all
    values or one per value (an array of length `size`)."""
    v = np.asarray(variance, dtype=float)
    if v.ndim not in (0, 1) or (v.ndim == 1 and v.shape[0] != size):
        raise ValueError(f"variance must be a number or {size} numbers")
    if not np.all(np.isfinite(v)) or np.any(v < 0):
        raise ValueError("noise variance must be finite and non-negative")
    if not np.any(v > 0):
        return np.zeros(size, dtype=np.int64)
    lam = np.broadcast_to(v / 2.0, (size,))
    return rng.poisson(lam).astype(np.int64) - rng.poisson(lam).astype(np.int64)


def share_variance(total_variance: float | np.ndarray, *,
                   honest_min: int) -> float | np.ndarray:
    """The variance each party adds so that `honest_min` honest shares reach `total_variance`."""
    if honest_min < 1:
        raise ValueError("at least one honest party is needed to carry the noise")
    return total_variance / honest_min
