"""Unit and property tests for fedsynth.crypto.shamir (threshold sharing of 32-byte seeds)."""

from __future__ import annotations

import contextlib
import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.crypto.shamir import PRIME, SHARE_BYTES, ShamirError, combine, split

SECRETS = st.binary(min_size=32, max_size=32)


@st.composite
def sharing(draw: st.DrawFn) -> tuple[int, list[int]]:
    """A threshold t and n <= 12 distinct holder indices (not always 1..n)."""
    n = draw(st.integers(1, 12))
    t = draw(st.integers(1, n))
    if draw(st.booleans()):
        holders = list(range(1, n + 1))
    else:
        holders = draw(st.lists(st.integers(1, 2**40), min_size=n, max_size=n, unique=True))
    return t, holders


@settings(max_examples=150, deadline=None)
@given(params=sharing(), secret=SECRETS, data=st.data())
def test_any_t_of_n_shares_recover_the_secret(params, secret, data):
    t, holders = params
    shares = split(secret, threshold=t, holders=holders)
    assert sorted(shares) == sorted(holders)
    assert all(len(s) == SHARE_BYTES for s in shares.values())
    k = data.draw(st.integers(t, len(holders)), label="subset size")
    subset = data.draw(st.permutations(holders), label="order")[:k]
    assert combine({h: shares[h] for h in subset}, threshold=t) == secret


@settings(max_examples=100, deadline=None)
@given(params=sharing(), secret=SECRETS, data=st.data())
def test_fewer_than_t_shares_raise(params, secret, data):
    t, holders = params
    shares = split(secret, threshold=t, holders=holders)
    k = data.draw(st.integers(0, t - 1), label="subset size")
    subset = data.draw(st.permutations(holders), label="order")[:k]
    with pytest.raises(ShamirError, match="needed"):
        combine({h: shares[h] for h in subset}, threshold=t)


@settings(max_examples=150, deadline=None)
@given(n=st.integers(2, 12), secret=SECRETS, data=st.data())
def test_t_minus_1_shares_plus_a_forged_share_do_not_give_the_secret(n, secret, data):
    t = data.draw(st.integers(2, n), label="t")
    holders = list(range(1, n + 1))
    shares = split(secret, threshold=t, holders=holders)
    order = data.draw(st.permutations(holders), label="order")
    honest, forged_at = order[: t - 1], order[t - 1]
    forged_value = data.draw(st.integers(0, PRIME - 1), label="forged value")
    if forged_value == int.from_bytes(shares[forged_at], "big"):
        forged_value = (forged_value + 1) % PRIME  # a forgery differs from the real share
    chosen = {h: shares[h] for h in honest}
    chosen[forged_at] = forged_value.to_bytes(SHARE_BYTES, "big")
    try:
        recovered = combine(chosen, threshold=t)
    except ShamirError:
        return  # did not interpolate to a 32-byte value at all
    assert recovered != secret


@settings(max_examples=50, deadline=None)
@given(n=st.integers(2, 12), secret=SECRETS, other=SECRETS, data=st.data())
def test_t_minus_1_shares_are_consistent_with_any_secret(n, secret, other, data):
    """Information-theoretic hiding: some t-th point turns t - 1 shares into any other secret."""
    t = data.draw(st.integers(2, n), label="t")
    shares = split(secret, threshold=t, holders=list(range(1, n + 1)))
    known = dict(list(shares.items())[: t - 1])
    x_new = n + 1
    # Lagrange: f(0) = sum_j y_j L_j(0); solve for the y at x_new that gives `other`.
    xs = [*known, x_new]

    def basis_at_zero(xj: int) -> int:
        num, den = 1, 1
        for xm in xs:
            if xm != xj:
                num = num * -xm % PRIME
                den = den * (xj - xm) % PRIME
        return num * pow(den, -1, PRIME) % PRIME

    partial = sum(int.from_bytes(y, "big") * basis_at_zero(x) for x, y in known.items()) % PRIME
    y_new = (int.from_bytes(other, "big") - partial) * pow(basis_at_zero(x_new), -1, PRIME) % PRIME
    forged = {**known, x_new: y_new.to_bytes(SHARE_BYTES, "big")}
    assert combine(forged, threshold=t) == other


def test_shares_are_fresh_randomness_for_t_at_least_2():
    secret = secrets.token_bytes(32)
    a = split(secret, threshold=2, holders=[1, 2, 3])
    b = split(secret, threshold=2, holders=[1, 2, 3])
    assert a != b
    assert secret not in {s[-32:] for s in a.values()}


@pytest.mark.parametrize("secret", [b"\x00" * 32, b"\x00" * 31 + b"\x01", b"\xff" * 32])
def test_edge_secrets_round_trip_with_leading_zeros(secret):
    shares = split(secret, threshold=3, holders=[1, 2, 3, 4, 5])
    assert combine({2: shares[2], 4: shares[4], 5: shares[5]}, threshold=3) == secret


def test_extra_shares_are_ignored():
    secret = secrets.token_bytes(32)
    shares = split(secret, threshold=2, holders=[1, 2, 3, 4])
    assert combine(shares, threshold=2) == secret


@pytest.mark.parametrize(
    ("threshold", "holders"),
    [
        (0, [1, 2, 3]),
        (-1, [1, 2, 3]),
        (4, [1, 2, 3]),
        (1, []),
        (2, [1, 1, 2]),
        (2, [0, 1, 2]),
        (2, [-1, 1, 2]),
        (2, [1, 2, PRIME]),
    ],
)
def test_split_rejects_bad_thresholds_and_holders(threshold, holders):
    with pytest.raises(ShamirError):
        split(b"\x01" * 32, threshold=threshold, holders=holders)


def test_split_rejects_a_secret_larger_than_the_field():
    with pytest.raises(ShamirError, match="larger than the field"):
        split(b"\xff" * 66, threshold=2, holders=[1, 2])


@pytest.mark.parametrize("threshold", [0, -3])
def test_combine_rejects_non_positive_threshold(threshold):
    shares = split(b"\x07" * 32, threshold=2, holders=[1, 2, 3])
    with pytest.raises(ShamirError):
        combine(shares, threshold=threshold)
    with pytest.raises(ShamirError):
        combine({}, threshold=threshold)


def test_combine_rejects_out_of_range_index_and_value():
    shares = split(b"\x07" * 32, threshold=2, holders=[1, 2])
    with pytest.raises(ShamirError, match="index"):
        combine({0: shares[1], 2: shares[2]}, threshold=2)
    with pytest.raises(ShamirError, match="value"):
        combine({1: b"\xff" * SHARE_BYTES, 2: shares[2]}, threshold=2)


def test_combine_with_wrong_threshold_does_not_return_the_secret():
    secret = secrets.token_bytes(32)
    shares = split(secret, threshold=3, holders=[1, 2, 3, 4])
    pair = {1: shares[1], 2: shares[2]}
    with contextlib.suppress(ShamirError):
        assert combine(pair, threshold=2) != secret
