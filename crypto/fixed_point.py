"""Real vectors through the integer channels: fixed point with unbiased stochastic rounding.

A party's real vector x (a model update) is clipped coordinate-wise to [-BOUND, BOUND] and sent
as integers q_i = floor(x_i * SCALE + u_i), u_i uniform in [0, 1): E[q_i] = x_i * SCALE, so the
decoded average over parties is unbiased, and each coordinate is off by less than 1 / SCALE per
party.

Why a sum never wraps. |q_i| <= BOUND * SCALE + 1 = 2^30 + 1 <= 2^31, which is the per-party
bound B the he channel's plaintext modulus is sized for (crypto.he: p > 2 * n_max * B, with
n_max = 2^12 parties), and far inside secagg's 2^64 ring. A sum over n <= MAX_PARTIES parties
is therefore the exact integer sum, and `decode` gives the exact mean of the rounded values.

Privacy. Encoding is post-processing of a vector that is already differentially private (what
a party encodes is its DP-SGD output), so neither the clipping nor the rounding's randomness
needs to be secret; the rounding draws from the OS entropy generator all the same.
"""

from __future__ import annotations

import numpy as np

FRAC_BITS = 20
SCALE = float(2**FRAC_BITS)
BOUND = 2.0**10  # largest magnitude of a coordinate; larger ones are clipped
MAX_PARTIES = 2**12


class FixedPointError(ValueError):
    """A vector that cannot be encoded (not finite), or a sum over too many parties."""


def encode(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """int64 fixed-point codes of `x` (clipped to [-BOUND, BOUND], stochastically rounded)."""
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise FixedPointError("a vector with NaN or infinite values cannot be sent")
    scaled = np.clip(x, -BOUND, BOUND) * SCALE
    return np.floor(scaled + rng.random(scaled.shape)).astype(np.int64)


def decode_mean(total: np.ndarray, parties: int) -> np.ndarray:
    """The mean of `parties` encoded vectors from their integer sum."""
    if not 1 <= parties <= MAX_PARTIES:
        raise FixedPointError(f"a fixed-point sum over {parties} parties (1..{MAX_PARTIES})")
    return np.asarray(total, dtype=np.int64).astype(np.float64) / (SCALE * parties)


# --- a distributed DP-SGD step's integer vector (noised after rounding) ----------------------

STEP_BOUND = 2**30  # |coordinate| of a party's rounded gradient sum, before its noise share


def to_grid(x: np.ndarray, scale: float) -> np.ndarray:
    """int64 codes round(x * scale), clipped to ±STEP_BOUND: a vector that is NOT yet private
    (a party's clipped gradient sum), noised by the caller after this.

    Deterministic rounding to the nearest integer, so that the sensitivity argument is
    simple (synthesis.dpsgd.step_grid): for neighbouring tables whose real
    vectors differ by d, the rounded vectors differ by d * scale plus, in each coordinate, less
    than 1; clipping each coordinate to an interval never increases a difference. The bound
    keeps a sum of 2^12 parties' codes plus their Skellam shares inside the channels' ranges
    (secagg's ring is 2^64; the he channel's per-party bound is 2^31, which a code plus a
    share of variance at most synthesis.dpsgd.STEP_VARIANCE_LIMIT = 2^38, sd 2^19, passes with
    probability below e^-2000000: so the he channel's refusal of an out-of-range vector, which
    would depend on the party's rows, does not happen).
    """
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise FixedPointError("a vector with NaN or infinite values cannot be sent")
    return np.clip(np.rint(x * scale), -STEP_BOUND, STEP_BOUND).astype(np.int64)
