"""Round-bound masks of the he channel (crypto.he_masks): exact unmasking of the honest sum,
refusal of every other combination, and the two sides deriving the same secret."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.crypto import he_masks
from fedsynth.crypto.secagg import KeyPair

P = 17592186175489  # the he channel's plain modulus (crypto.he.BfvParams)
JOB = "job-1"
DIGEST = hashlib.sha256(b"the round's request").digest()


def _masks(parties: dict[int, KeyPair], holder: KeyPair, round_id: int, digest: bytes,
           length: int, *, side: str) -> dict[int, np.ndarray]:
    out = {}
    for p, kp in parties.items():
        secret = (he_masks.shared_secret(kp.private, holder.public, job_id=JOB, party=p)
                  if side == "party" else
                  he_masks.shared_secret(holder.private, kp.public, job_id=JOB, party=p))
        out[p] = he_masks.round_mask(secret, round_id=round_id, request_digest=digest,
                                     length=length + he_masks.TAG_SLOTS, modulus=P)
    return out


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 6), length=st.integers(1, 300), seed=st.integers(0, 2**31))
def test_the_honest_sum_unmasks_exactly(n: int, length: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    parties = {p: KeyPair.generate() for p in range(1, n + 1)}
    holder = KeyPair.generate()
    values = {p: rng.integers(-2**31, 2**31, length) for p in parties}
    sent = _masks(parties, holder, 3, DIGEST, length, side="party")
    total = sum(he_masks.mask(values[p], sent[p], P) for p in parties)  # what BFV adds mod p
    total = he_masks.centred(total, P)
    removed = _masks(parties, holder, 3, DIGEST, length, side="key holder")
    got = he_masks.unmask(total, list(removed.values()), P)
    assert np.array_equal(got, sum(values.values()))


def test_every_other_combination_is_refused() -> None:
    length = 50
    parties = {p: KeyPair.generate() for p in (1, 2, 3, 4)}
    holder = KeyPair.generate()
    values = {p: np.arange(length) * p for p in parties}
    r3 = _masks(parties, holder, 3, DIGEST, length, side="party")
    masked = {p: he_masks.mask(values[p], r3[p], P) for p in parties}

    def attempt(contributors: list[int], round_id: int, digest: bytes, parts: list[int]) -> None:
        total = he_masks.centred(sum(masked[p] for p in parts), P)
        removed = _masks({p: parties[p] for p in contributors}, holder, round_id, digest,
                         length, side="key holder")
        with pytest.raises(he_masks.MaskError, match="not the sum"):
            he_masks.unmask(total, list(removed.values()), P)

    attempt([1, 2, 3], 4, DIGEST, [1, 2, 3])  # the same answers under another round id
    attempt([1, 2, 3], 3, hashlib.sha256(b"another request").digest(), [1, 2, 3])
    attempt([1, 2, 3], 3, DIGEST, [1])  # one party's answer passed off as three
    attempt([1, 2, 3], 3, DIGEST, [1, 2, 3, 4])  # a contributor left off the list
    attempt([1, 2, 3, 4], 3, DIGEST, [1, 2, 3])  # a contributor listed who is not in the sum


def test_round_masks_look_uniform_and_differ_by_round_and_party() -> None:
    holder, kp = KeyPair.generate(), KeyPair.generate()
    secret = he_masks.shared_secret(kp.private, holder.public, job_id=JOB, party=1)
    m = he_masks.round_mask(secret, round_id=1, request_digest=DIGEST, length=20000, modulus=P)
    assert m.min() >= 0 and m.max() < P
    assert abs(m.mean() / P - 0.5) < 0.01  # mean of U[0, p) within 4.9 standard errors
    other = he_masks.round_mask(secret, round_id=2, request_digest=DIGEST, length=20000,
                                modulus=P)
    assert not np.array_equal(m, other)
    secret2 = he_masks.shared_secret(kp.private, holder.public, job_id=JOB, party=2)
    assert secret2 != secret


def test_a_low_order_key_gives_no_secret() -> None:
    with pytest.raises(he_masks.MaskError, match="low-order"):
        he_masks.shared_secret(KeyPair.generate().private, bytes(32), job_id=JOB, party=1)
