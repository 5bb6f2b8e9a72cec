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
double-precision arithmetic in its acceptance tests. That rounding grows with λ (the test
compares log-probabilities of size about λ·log λ): above λ ≈ 2^47 the draws' spread is visibly
wrong, and from 2^53 on they are all even or multiples of 4, which would let a sum's low bits
show the un-noised vector. So no single draw here has λ above POISSON_CHUNK = 2^32: a larger λ
is the sum of m independent Poisson(λ / m) draws, which is exactly Poisson(λ) (additivity), and
a variance above MAX_VARIANCE is refused (the work grows with the variance: callers that draw
long vectors cap it lower). At λ <= 2^32 the relative error of an acceptance
probability is about 2^-16 at worst, far smaller at the variances counting rounds use; it is
named, with timing and message sizes, among what the guarantee does not cover. Outputs are
integers, so the low-order-bit leak that breaks floating-point Laplace samplers (Mironov 2012)
does not arise: an output reveals nothing beyond its value.
"""

from __future__ import annotations

import math
import secrets

import numpy as np
from randomgen import ChaCha

POISSON_CHUNK = 2.0**32  # the largest λ of one Poisson draw
# the largest Skellam variance drawn: λ = 2^51, 2^19 draws a value (evaluation's small blocks of
# moments reach 2e15; counting rounds and training steps are capped far lower by their callers)
MAX_VARIANCE = 2.0**52
DRAW_BATCH = 2**22  # Poisson draws held at once


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
    if np.any(v > MAX_VARIANCE):
        raise ValueError(f"a Skellam variance above {MAX_VARIANCE:.3g} cannot be drawn exactly "
                         "here (numpy's Poisson sampler loses its low bits at large λ)")
    lam = np.broadcast_to(v / 2.0, (size,))
    chunks = max(1, math.ceil(float(lam.max()) / POISSON_CHUNK))
    if chunks == 1:
        return rng.poisson(lam).astype(np.int64) - rng.poisson(lam).astype(np.int64)
    # Poisson(λ) = the sum of `chunks` independent Poisson(λ / chunks): exact; drawn in
    # batches of rows so memory stays bounded (a small block at a huge variance: many rows)
    part = lam / chunks
    out = np.zeros(size, dtype=np.int64)
    batch = max(1, DRAW_BATCH // max(size, 1))
    for start in range(0, chunks, batch):
        rows = min(batch, chunks - start)
        out += (rng.poisson(part, (rows, size)).astype(np.int64)
                - rng.poisson(part, (rows, size)).astype(np.int64)).sum(axis=0)
    return out


def share_variance(total_variance: float | np.ndarray, *,
                   honest_min: int) -> float | np.ndarray:
    """The variance each party adds so that `honest_min` honest shares reach `total_variance`."""
    if honest_min < 1:
        raise ValueError("at least one honest party is needed to carry the noise")
    return total_variance / honest_min
