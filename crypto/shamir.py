"""Shamir secret sharing of 32-byte seeds over the prime field GF(2**521 - 1).

Why it is correct: a secret s is the constant term of a random polynomial f of degree
t - 1 whose other coefficients are uniform in the field; party i receives f(i). Any t points
determine f (Lagrange interpolation at 0 gives s); any t - 1 points are consistent with every
value of s, each with the same number of polynomials, so they reveal nothing about it
(information-theoretic). The field is larger than 2**256, so every 32-byte seed is an element.
Coefficients come from the operating system's CSPRNG (`secrets`).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

PRIME = 2**521 - 1
SHARE_BYTES = 66  # ceil(521 / 8)


class ShamirError(ValueError):
    """Shares that cannot be combined (too few, duplicated, out of range)."""


def split(secret: bytes, *, threshold: int, holders: list[int]) -> dict[int, bytes]:
    """Split `secret` into one share per holder index; any `threshold` of them recover it."""
    if not 1 <= threshold <= len(holders):
        raise ShamirError(f"threshold {threshold} must be between 1 and {len(holders)} holders")
    if len(set(holders)) != len(holders) or any(not 0 < h < PRIME for h in holders):
        raise ShamirError("holder indices must be distinct positive integers")
    s = int.from_bytes(secret, "big")
    if s >= PRIME:
        raise ShamirError("secret is larger than the field")
    coeffs = [s] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares: dict[int, bytes] = {}
    for h in holders:
        acc = 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * h + c) % PRIME
        shares[h] = acc.to_bytes(SHARE_BYTES, "big")
    return shares


def combine(shares: Mapping[int, bytes], *, threshold: int, secret_len: int = 32) -> bytes:
    """Recover the secret from at least `threshold` shares (extra shares are ignored)."""
    if threshold < 1:
        raise ShamirError(f"threshold {threshold} must be at least 1")
    if len(shares) < threshold:
        raise ShamirError(f"{len(shares)} shares given, {threshold} needed to recover the secret")
    points = sorted(shares.items())[:threshold]
    xs = [x for x, _ in points]
    if any(not 0 < x < PRIME for x in xs):
        raise ShamirError("share index out of range")
    ys = [int.from_bytes(y, "big") for _, y in points]
    if any(y >= PRIME for y in ys):
        raise ShamirError("share value out of range")
    secret = 0
    for j, (xj, yj) in enumerate(zip(xs, ys, strict=True)):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = (num * -xm) % PRIME
                den = (den * (xj - xm)) % PRIME
        secret = (secret + yj * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * secret_len):
        raise ShamirError("shares do not interpolate to a secret of the expected size")
    return secret.to_bytes(secret_len, "big")
