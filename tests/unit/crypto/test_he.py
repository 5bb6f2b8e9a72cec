"""BFV/CKKS sums, public contexts and the key holder's refusals (crypto.he)."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest
import tenseal as ts
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.crypto import he
from fedsynth.crypto.keys import Identity

SMALL = he.BfvParams(max_parties=8)  # same bound argument, a smaller prime: fast tests
B = SMALL.bound
N = SMALL.slots
_rounds = itertools.count(1)


@pytest.fixture(scope="module")
def identity() -> Identity:
    return Identity.generate("key-holder")


@pytest.fixture(scope="module")
def small_keys() -> he.JobKeys:
    return he.JobKeys.generate(SMALL)


@pytest.fixture(scope="module")
def ckks_keys() -> he.JobKeys:
    return he.JobKeys.generate(he.CkksParams())


def _holder(identity: Identity, job: str = "job-1", params: he.Params = SMALL,
            threshold: int = 2) -> tuple[he.KeyHolder, he.PublicContext]:
    kh = he.KeyHolder(job, identity.private, threshold=threshold, params=params)
    data, sig = kh.public_context()
    return kh, he.verify_public_context(job, data, sig, identity.public, params,
                                        mask_key=kh.mask_key)


def _sum(public: he.PublicContext, vectors: list[np.ndarray]) -> list[bytes]:
    return he.add_ciphertexts(public, [he.encrypt_counts(public, v) for v in vectors],
                              len(vectors[0]))


# --- parameters ------------------------------------------------------------------------------
@pytest.mark.parametrize("params", [he.BfvParams(), SMALL, he.BfvParams(8192)])
def test_plain_modulus_is_a_prime_1_mod_2n_above_twice_the_largest_sum(params: he.BfvParams
                                                                         ) -> None:
    p = params.plain_modulus
    assert he.is_prime(p)
    assert p % (2 * params.poly_modulus_degree) == 1
    assert p > 2 * params.max_parties * params.bound
    # the smallest such prime: no smaller candidate of the progression qualifies
    q = p - 2 * params.poly_modulus_degree
    assert q <= 2 * params.max_parties * params.bound or not he.is_prime(q)


def test_default_plain_modulus_is_45_bits() -> None:
    assert he.BfvParams().plain_modulus == 17592186175489


@given(st.integers(0, 20000))
def test_is_prime_agrees_with_trial_division(n: int) -> None:
    assert he.is_prime(n) == (n > 1 and all(n % d for d in range(2, int(n**0.5) + 1)))


def test_parameters_beyond_the_noise_budget_are_refused() -> None:
    with pytest.raises(he.HEError, match="noise budget"):
        he.BfvParams(bound=2**40, max_parties=2**12)


# --- BFV sums --------------------------------------------------------------------------------
@settings(max_examples=12, deadline=None)
@given(st.data())
def test_bfv_sums_are_exact_for_bounded_vectors(small_keys: he.JobKeys,
                                                data: st.DataObject) -> None:
    length = data.draw(st.integers(1, 2 * N + 7))
    parties = data.draw(st.integers(1, SMALL.max_parties))
    seed = data.draw(st.integers(0, 2**32))
    rng = np.random.default_rng(seed)
    vectors = [rng.integers(-B, B, length, endpoint=True) for _ in range(parties)]
    total = he.decrypt_sum(small_keys, _sum(small_keys.public, vectors), length)
    assert total.dtype == np.int64
    np.testing.assert_array_equal(total, np.sum(vectors, axis=0))


@pytest.mark.parametrize("value", [B, -B])
def test_n_max_parties_at_the_bound_do_not_wrap(small_keys: he.JobKeys, value: int) -> None:
    vectors = [np.full(N + 3, value, dtype=np.int64)] * SMALL.max_parties
    total = he.decrypt_sum(small_keys, _sum(small_keys.public, vectors), N + 3)
    assert (total == SMALL.max_parties * value).all()


@pytest.mark.parametrize("value", [2**31, -2**31])
def test_default_parameters_decrypt_n_max_times_the_bound(value: int) -> None:
    # 12 doublings of one ciphertext: the noise of 2^12 = n_max fully correlated additions
    params = he.BfvParams()
    keys = he.JobKeys.generate(params)
    (chunk,) = he.encrypt_counts(keys.public, np.array([value, -value, 0, 1]))
    vec = ts.bfv_vector_from(keys.public.context, chunk[he.TAG_BYTES:])
    for _ in range(12):
        vec = vec + vec
    doubled = chunk[:he.TAG_BYTES] + vec.serialize()
    expected = np.array([value, -value, 0, 1]) * params.max_parties
    np.testing.assert_array_equal(he.decrypt_sum(keys, [doubled], 4), expected)


def test_encrypt_refuses_values_beyond_the_bound(small_keys: he.JobKeys) -> None:
    for bad in (np.array([0, B + 1]), np.array([-B - 1]), np.array([2**64 - 1], np.uint64)):
        with pytest.raises(he.HEError, match="bound"):
            he.encrypt_counts(small_keys.public, bad)
    with pytest.raises(he.HEError):
        he.encrypt_counts(small_keys.public, np.array([0.5, 1.0]))
    with pytest.raises(he.HEError, match="empty"):
        he.encrypt_counts(small_keys.public, np.array([], dtype=np.int64))


def test_coordinator_refuses_more_than_max_parties_and_ragged_contributions(
        small_keys: he.JobKeys) -> None:
    one = he.encrypt_counts(small_keys.public, np.arange(N + 1))
    with pytest.raises(he.HEError, match="max_parties"):
        he.add_ciphertexts(small_keys.public, [one] * (SMALL.max_parties + 1), N + 1)
    with pytest.raises(he.HEError, match="chunks"):
        he.add_ciphertexts(small_keys.public, [one, one[:1]], N + 1)
    with pytest.raises(he.ForeignCiphertext):
        he.add_ciphertexts(small_keys.public, [one, [one[0], one[0]]], N + 1)  # wrong size


# --- public contexts -------------------------------------------------------------------------
def test_public_context_has_no_secret_key_and_cannot_decrypt(small_keys: he.JobKeys) -> None:
    public = small_keys.public
    assert not public.context.is_private() and not public.context.has_secret_key()
    assert not public.context.has_relin_keys() and not public.context.has_galois_keys()
    chunks = he.encrypt_counts(public, np.array([1, -2, 3]))
    without_secret = he.JobKeys(secret=public.context, public=public, public_bytes=b"")
    with pytest.raises(ValueError, match="secret"):
        he.decrypt_sum(without_secret, chunks, 3)


def test_a_context_holding_a_secret_or_relin_key_is_refused_as_public(
        small_keys: he.JobKeys) -> None:
    with_secret = small_keys.secret.serialize(save_secret_key=True, save_galois_keys=False,
                                              save_relin_keys=False)
    with pytest.raises(he.HEError, match="secret key"):
        he.load_public_context(with_secret, SMALL)
    with_relin = small_keys.secret.serialize(save_secret_key=False, save_galois_keys=False,
                                             save_relin_keys=True)
    with pytest.raises(he.HEError, match="relinearisation"):
        he.load_public_context(with_relin, SMALL)


def test_a_context_with_other_parameters_is_refused(small_keys: he.JobKeys,
                                                    ckks_keys: he.JobKeys) -> None:
    with pytest.raises(he.HEError, match="parameters"):
        he.load_public_context(small_keys.public_bytes, he.BfvParams())
    with pytest.raises(he.HEError, match="parameters"):
        he.load_public_context(ckks_keys.public_bytes, SMALL)
    with pytest.raises(he.HEError, match="parse"):
        he.load_public_context(b"not a context", SMALL)


def test_context_signature_fails_for_a_tampered_context_or_another_job(
        identity: Identity) -> None:
    kh = he.KeyHolder("job-1", identity.private, threshold=2, params=SMALL)
    data, sig = kh.public_context()
    assert he.verify_public_context("job-1", data, sig, identity.public, SMALL,
                                    mask_key=kh.mask_key).fingerprint
    other = he.JobKeys.generate(SMALL).public_bytes
    forged = Identity.generate("coordinator")
    for job, ctx, key in [("job-2", data, identity.public), ("job-1", other, identity.public),
                          ("job-1", data[:-1] + bytes([data[-1] ^ 1]), identity.public),
                          ("job-1", data, forged.public)]:
        with pytest.raises(he.HEError, match="not signed"):
            he.verify_public_context(job, ctx, sig, key, SMALL, mask_key=kh.mask_key)
    with pytest.raises(he.HEError, match="not signed"):  # a BFV signature is no CKKS one
        he.verify_public_context("job-1", data, sig, identity.public, he.CkksParams(),
                                 mask_key=kh.mask_key)


def test_context_signature_binds_the_spec_the_key_holder_was_set_up_with(
        identity: Identity) -> None:
    """A coordinator that shows the key holder a spec with a lower t than the parties' gets a
    context the parties refuse: the signed statement holds the spec's digest."""
    told = hashlib.sha256(b"spec with t = 2").digest()
    agreed = hashlib.sha256(b"spec with t = 4").digest()
    kh = he.KeyHolder("job-1", identity.private, threshold=2, params=SMALL, spec_digest=told)
    data, sig = kh.public_context()
    assert he.verify_public_context("job-1", data, sig, identity.public, SMALL, told,
                                    kh.mask_key)
    with pytest.raises(he.HEError, match="not signed"):
        he.verify_public_context("job-1", data, sig, identity.public, SMALL, agreed,
                                 kh.mask_key)
    restored = he.KeyHolder.from_state(kh.to_state(), identity.private, params=SMALL)
    assert restored.spec_digest == told


# --- the key holder --------------------------------------------------------------------------
def test_key_holder_decrypts_a_round_once_even_with_identical_input(identity: Identity) -> None:
    kh, public = _holder(identity)
    vectors = [np.arange(-5, 5), np.ones(10, dtype=np.int64)]
    chunks = _sum(public, vectors)
    np.testing.assert_array_equal(kh.decrypt("job-1", 1, chunks, 10, [0, 1]), vectors[0] + 1)
    with pytest.raises(he.RoundAlreadyDecrypted):
        kh.decrypt("job-1", 1, chunks, 10, [0, 1])
    assert (kh.decrypt("job-1", 2, chunks, 10, [0, 1]) == vectors[0] + 1).all()


def test_key_holder_refuses_other_jobs_rounds_out_of_range_and_too_few(identity: Identity) -> None:
    kh, public = _holder(identity, threshold=3)
    chunks = _sum(public, [np.arange(4)] * 3)
    with pytest.raises(he.WrongJob):
        kh.decrypt("job-2", 1, chunks, 4, [0, 1, 2])
    for bad in (0, -1, he.MAX_ROUND + 1, True):
        with pytest.raises(he.RoundOutOfRange):
            kh.decrypt("job-1", bad, chunks, 4, [0, 1, 2])
    with pytest.raises(he.TooFewContributors):
        kh.decrypt("job-1", 1, chunks, 4, [0, 1, 1, 0])  # duplicates count once
    assert (kh.decrypt("job-1", he.MAX_ROUND, chunks, 4, [0, 1, 2]) == np.arange(4) * 3).all()


def test_key_holder_refuses_a_ciphertext_from_another_jobs_key(identity: Identity) -> None:
    kh, _ = _holder(identity, job="job-1")
    _, other = _holder(identity, job="job-2")
    foreign = _sum(other, [np.arange(6)] * 2)
    with pytest.raises(he.ForeignCiphertext, match="not made under"):
        kh.decrypt("job-1", 1, foreign, 6, [0, 1])
    # relabelled with this job's fingerprint, it decrypts to noise mod p: refused, not released
    mine = kh._keys.public.fingerprint
    relabelled = [he.CHUNK_MAGIC + mine + c[he.TAG_BYTES:] for c in foreign]
    with pytest.raises(he.ForeignCiphertext, match="not released"):
        kh.decrypt("job-1", 1, relabelled, 6, [0, 1])
    with pytest.raises(he.ForeignCiphertext, match="parse"):
        kh.decrypt("job-1", 2, [he.CHUNK_MAGIC + mine + b"garbage"], 6, [0, 1])


# --- CKKS ------------------------------------------------------------------------------------
def test_ckks_sum_is_within_the_stated_precision(identity: Identity) -> None:
    params = he.CkksParams()
    kh, public = _holder(identity, params=params)
    rng = np.random.default_rng(7)
    length = params.slots + 100
    vectors = [rng.normal(0, 1e3, length) for _ in range(5)]
    chunks = he.add_ciphertexts(public, [he.encrypt_reals(public, v) for v in vectors], length)
    total = kh.decrypt("job-1", 1, chunks, length, range(5))
    assert np.max(np.abs(total - np.sum(vectors, axis=0))) < he.CkksParams.PRECISION


def test_ckks_refuses_non_finite_or_unbounded_values(ckks_keys: he.JobKeys) -> None:
    for bad in ([np.nan], [np.inf], [he.CkksParams().bound * 2]):
        with pytest.raises(he.HEError, match="finite"):
            he.encrypt_reals(ckks_keys.public, np.array(bad))
