"""Unit and property tests for fedsynth.crypto.secagg (pairwise + self masking over Z_2^64)."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.crypto import secagg, shamir
from fedsynth.crypto.secagg import KeyPair, SecAggError

JOB = "job-under-test"
I64_MAX = 2**63 - 1
I64_MIN = -(2**63)


def _keys(parties: Collection[int]) -> dict[int, KeyPair]:
    return {u: KeyPair.generate() for u in parties}


def _pairs(keys: Mapping[int, KeyPair], me: int, *, job_id: str = JOB) -> dict[int, bytes]:
    return {v: secagg.pair_secret(keys[me].private, keys[v].public, job_id=job_id, me=me, peer=v)
            for v in keys if v != me}


def _seeds(mask_keys: Mapping[int, secagg.MaskKey], me: int, round_id: int) -> dict[int, bytes]:
    return secagg.round_pair_seeds(mask_keys[me].keys.private,
                                   {v: k.keys.public for v, k in mask_keys.items()},
                                   job_id=JOB, round_id=round_id, me=me)


def secure_round(values: Mapping[int, np.ndarray], *, threshold: int, round_id: int = 7,
                 dropped: Collection[int] = (), unmaskers: Collection[int] | None = None,
                 keys: Mapping[int, KeyPair] | None = None) -> np.ndarray:
    """One full round: every party masks, `dropped` never send, survivors reveal what is needed.

    Each party's round mask key was drawn and shared beforehand (as one round ahead on the
    wire). Shares are encrypted by the sender and decrypted by their recipient, as on the wire.
    `unmaskers` (default: all survivors) are the survivors that answer the unmask step: they
    release their shares of the survivors' self-masks and of the dropped parties' mask keys.
    """
    parties = sorted(values)
    keys = keys or _keys(parties)
    pairs = {u: _pairs(keys, u) for u in parties}
    mask_keys = {u: secagg.new_mask_key(me=u, round_id=round_id, job_id=JOB, threshold=threshold,
                                        pairs=pairs[u]) for u in parties}
    sent = {u: secagg.mask(values[u], me=u, round_id=round_id, job_id=JOB, threshold=threshold,
                           pairs=pairs[u], seeds=_seeds(mask_keys, u, round_id))
            for u in parties if u not in dropped}
    survivors = sorted(sent)
    helpers = survivors if unmaskers is None else sorted(unmaskers)
    assert set(helpers) <= set(survivors)
    self_shares: dict[int, dict[int, bytes]] = {}
    for u in survivors:
        got: dict[int, bytes] = {}
        for v in helpers:
            if v == u:
                got[v] = sent[u].own_share
            else:
                got[v] = secagg.decrypt_share(pairs[v][u], sent[u].encrypted_shares[v],
                                              job_id=JOB, round_id=round_id, sender=u,
                                              recipient=v)
        self_shares[u] = got
    key_shares = {d: {v: secagg.decrypt_share(pairs[v][d], mask_keys[d].encrypted_shares[v],
                                              job_id=JOB, round_id=round_id, sender=d,
                                              recipient=v, kind=secagg.MASK_KEY)
                      for v in helpers} for d in dropped}
    publics = {u: k.keys.public for u, k in mask_keys.items()}
    dropped_seeds = secagg.dropped_pair_seeds(key_shares, publics, survivors, job_id=JOB,
                                              round_id=round_id, threshold=threshold)
    masked = {u: m.masked for u, m in sent.items()}
    return secagg.unmask_sum(masked, self_shares=self_shares, dropped_seeds=dropped_seeds,
                             threshold=threshold)


def _exact_sum(values: Mapping[int, np.ndarray], over: Collection[int]) -> np.ndarray:
    length = next(iter(values.values())).shape[0]
    sums = [sum(int(values[u][i]) for u in over) for i in range(length)]
    assert all(I64_MIN <= s <= I64_MAX for s in sums), "test data must not overflow int64"
    return np.array(sums, dtype=np.int64)


@st.composite
def party_vectors(draw: st.DrawFn, *, min_parties: int = 2,
                  max_parties: int = 6) -> dict[int, np.ndarray]:
    n = draw(st.integers(min_parties, max_parties))
    length = draw(st.integers(1, 12))
    bound = I64_MAX // n  # any n of these sum without overflow
    elems = st.one_of(st.integers(-bound, bound), st.sampled_from([0, 1, -1, bound, -bound]))
    return {u: np.array(draw(st.lists(elems, min_size=length, max_size=length)), dtype=np.int64)
            for u in range(1, n + 1)}


@settings(max_examples=30, deadline=None)
@given(values=party_vectors(), data=st.data())
def test_masked_sum_is_exact_without_dropouts(values, data):
    t = data.draw(st.integers(1, len(values)), label="t")
    got = secure_round(values, threshold=t)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, _exact_sum(values, values))


def test_masked_sum_is_exact_near_plus_minus_2_62():
    big = 2**62
    values = {
        1: np.array([big, -big, big - 1, -big + 1, big, 0, I64_MAX, I64_MIN], dtype=np.int64),
        2: np.array([big - 1, -big, -5, 7, -big, -big, 0, 0], dtype=np.int64),
        3: np.array([-big, big - 1, 3, -3, big - 1, big - 1, -1, 1], dtype=np.int64),
        4: np.array([-big + 1, 1, -big + 2, big - 5, 0, -1, -big, big], dtype=np.int64),
    }
    expected = _exact_sum(values, values)
    np.testing.assert_array_equal(secure_round(values, threshold=3), expected)


def test_unsigned_input_is_summed_as_its_int64_bit_pattern():
    values = {1: np.array([2**63 + 5], dtype=np.uint64), 2: np.array([3], dtype=np.int64)}
    # 2**63 + 5 as int64 is -2**63 + 5
    np.testing.assert_array_equal(secure_round(values, threshold=2), [I64_MIN + 8])


@settings(max_examples=25, deadline=None)
@given(values=party_vectors(min_parties=3, max_parties=6), data=st.data())
def test_masked_sum_over_survivors_is_exact_with_dropouts(values, data):
    n = len(values)
    t = data.draw(st.integers(2, n - 1), label="t")
    n_drop = data.draw(st.integers(1, n - t), label="dropouts")
    dropped = data.draw(st.permutations(sorted(values)), label="order")[:n_drop]
    survivors = [u for u in values if u not in dropped]
    got = secure_round(values, threshold=t, dropped=dropped)
    np.testing.assert_array_equal(got, _exact_sum(values, survivors))


def test_exactly_t_unmaskers_suffice():
    rng = np.random.default_rng(1)
    values = {u: rng.integers(-1000, 1000, 50) for u in range(1, 6)}
    got = secure_round(values, threshold=3, dropped=[2], unmaskers=[1, 4, 5])
    np.testing.assert_array_equal(got, _exact_sum(values, [1, 3, 4, 5]))


@settings(max_examples=40, deadline=None)
@given(values=party_vectors(min_parties=2, max_parties=8), data=st.data())
def test_sum_is_exact_with_measure_and_unmask_dropouts_while_t_answer(values, data):
    """Parties drop in the measure step (D) and other parties, survivors of measure, leave
    during unmasking: as long as t survivors answer, the sum over all measure survivors is
    exact (the dropped parties' pair masks come from their reconstructed round mask keys)."""
    parties = sorted(values)
    t = data.draw(st.integers(1, len(parties)), label="t")
    order = data.draw(st.permutations(parties), label="order")
    n_drop = data.draw(st.integers(0, len(parties) - t), label="measure dropouts")
    dropped, survivors = sorted(order[:n_drop]), sorted(order[n_drop:])
    n_leave = data.draw(st.integers(0, len(survivors) - t), label="unmask dropouts")
    unmaskers = sorted(order[n_drop + n_leave:])
    assert len(unmaskers) >= t
    got = secure_round(values, threshold=t, dropped=dropped, unmaskers=unmaskers,
                       round_id=data.draw(st.integers(0, 2**32 - 1), label="round"))
    np.testing.assert_array_equal(got, _exact_sum(values, survivors))


@settings(max_examples=20, deadline=None)
@given(values=party_vectors(min_parties=2, max_parties=8), data=st.data())
def test_fewer_than_t_unmaskers_recover_nothing(values, data):
    parties = sorted(values)
    t = data.draw(st.integers(2, len(parties)), label="t")
    order = data.draw(st.permutations(parties), label="order")
    n_drop = data.draw(st.integers(0, len(parties) - t), label="measure dropouts")
    unmaskers = order[n_drop:][: data.draw(st.integers(0, t - 1), label="unmaskers")]
    with pytest.raises((shamir.ShamirError, SecAggError)):
        secure_round(values, threshold=t, dropped=order[:n_drop], unmaskers=unmaskers)


def test_fewer_than_t_unmaskers_cannot_remove_self_masks():
    values = {u: np.arange(4, dtype=np.int64) for u in range(1, 5)}
    with pytest.raises(shamir.ShamirError):
        secure_round(values, threshold=3, unmaskers=[1, 2])


def _masked_round(keys: Mapping[int, KeyPair], values: Mapping[int, np.ndarray], *,
                  round_id: int, threshold: int, senders: Collection[int],
                  ) -> tuple[dict[int, dict[int, bytes]], dict[int, secagg.MaskKey],
                             dict[int, secagg.MaskedInput]]:
    pairs = {u: _pairs(keys, u) for u in keys}
    mask_keys = {u: secagg.new_mask_key(me=u, round_id=round_id, job_id=JOB, threshold=threshold,
                                        pairs=pairs[u]) for u in keys}
    sent = {u: secagg.mask(values[u], me=u, round_id=round_id, job_id=JOB, threshold=threshold,
                           pairs=pairs[u], seeds=_seeds(mask_keys, u, round_id))
            for u in senders}
    return pairs, mask_keys, sent


def test_dropout_without_revealed_pair_seeds_leaves_garbage():
    """Sanity check of the test harness: the pair seeds really are needed."""
    keys = _keys(range(1, 5))
    values = {u: np.zeros(16, dtype=np.int64) for u in range(1, 5)}
    pairs, _, sent = _masked_round(keys, values, round_id=1, threshold=2, senders=(1, 2, 3))
    shares = {u: {u: sent[u].own_share,
                  **{v: secagg.decrypt_share(pairs[v][u], sent[u].encrypted_shares[v],
                                             job_id=JOB, round_id=1, sender=u, recipient=v)
                     for v in (1, 2, 3) if v != u}} for u in sent}
    total = secagg.unmask_sum({u: m.masked for u, m in sent.items()}, self_shares=shares,
                              dropped_seeds={}, threshold=2)
    assert np.any(total != 0)


def test_lone_masked_vector_hides_the_input_and_looks_uniform():
    keys = _keys(range(1, 4))
    length = 20_000
    _, _, sent = _masked_round(keys, {u: np.zeros(length, dtype=np.int64) for u in keys},
                               round_id=0, threshold=2, senders=(2,))
    m = sent[2]
    assert m.masked.dtype == np.uint64
    assert np.count_nonzero(m.masked) > length - 5
    bits = np.unpackbits(m.masked.view(np.uint8))
    assert abs(bits.mean() - 0.5) < 0.02
    # every bit position of the 64-bit words is balanced, not just the total
    per_position = np.unpackbits(m.masked.view(np.uint8).reshape(length, 8), axis=1).mean(axis=0)
    assert np.all(np.abs(per_position - 0.5) < 0.03)
    assert len(np.unique(m.masked)) == length


def test_lone_masked_vector_changes_every_round_and_is_not_the_input():
    keys = _keys(range(1, 4))
    x = np.arange(-50, 50, dtype=np.int64)
    pairs = _pairs(keys, 1)
    seeds = {v: secagg.new_seed() for v in pairs}
    a = secagg.mask(x, me=1, round_id=3, job_id=JOB, threshold=2, pairs=pairs, seeds=seeds)
    b = secagg.mask(x, me=1, round_id=3, job_id=JOB, threshold=2, pairs=pairs,
                    seeds=seeds)  # same pair seeds, fresh self-seed
    assert not np.array_equal(a.masked.view(np.int64), x)
    assert not np.array_equal(a.masked, b.masked)
    assert a.own_share != b.own_share


def test_mask_shares_one_encrypted_share_per_peer_and_rejects_floats():
    keys = _keys(range(1, 5))
    pairs = _pairs(keys, 3)
    seeds = {v: secagg.new_seed() for v in pairs}
    m = secagg.mask(np.zeros(3, dtype=np.int32), me=3, round_id=1, job_id=JOB, threshold=2,
                    pairs=pairs, seeds=seeds)
    assert sorted(m.encrypted_shares) == [1, 2, 4]
    assert len(set(m.encrypted_shares.values())) == 3
    with pytest.raises(SecAggError, match="integer"):
        secagg.mask(np.zeros(3), me=3, round_id=1, job_id=JOB, threshold=2, pairs=pairs,
                    seeds=seeds)
    with pytest.raises(SecAggError, match="same other parties"):
        secagg.mask(np.zeros(3, dtype=np.int64), me=3, round_id=1, job_id=JOB, threshold=2,
                    pairs=pairs, seeds={1: seeds[1]})


def test_pair_secret_is_symmetric_and_bound_to_job_and_pair():
    a, b, c = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    ab = secagg.pair_secret(a.private, b.public, job_id=JOB, me=1, peer=2)
    ba = secagg.pair_secret(b.private, a.public, job_id=JOB, me=2, peer=1)
    assert ab == ba
    assert len(ab) == secagg.SEED_BYTES
    assert ab != secagg.pair_secret(a.private, b.public, job_id=JOB + "-2", me=1, peer=2)
    assert ab != secagg.pair_secret(a.private, b.public, job_id=JOB, me=1, peer=3)
    assert ab != secagg.pair_secret(a.private, c.public, job_id=JOB, me=1, peer=2)


@settings(max_examples=20, deadline=None)
@given(job_a=st.text(max_size=20), job_b=st.text(max_size=20),
       me=st.integers(1, 1000), peer=st.integers(1, 1000))
def test_pair_secret_symmetry_and_job_separation_property(job_a, job_b, me, peer):
    if me == peer:
        peer += 1
    a, b = KeyPair.generate(), KeyPair.generate()
    s1 = secagg.pair_secret(a.private, b.public, job_id=job_a, me=me, peer=peer)
    assert s1 == secagg.pair_secret(b.private, a.public, job_id=job_a, me=peer, peer=me)
    s2 = secagg.pair_secret(a.private, b.public, job_id=job_b, me=me, peer=peer)
    assert (s1 == s2) == (job_a == job_b)


def test_pair_secret_rejects_self_and_bad_public_key():
    a = KeyPair.generate()
    with pytest.raises(SecAggError, match="itself"):
        secagg.pair_secret(a.private, a.public, job_id=JOB, me=1, peer=1)
    with pytest.raises(SecAggError, match="31 bytes"):
        secagg.pair_secret(a.private, a.public[:31], job_id=JOB, me=1, peer=2)


def test_round_pair_seed_is_symmetric_and_bound_to_job_round_and_pair():
    a, b, c = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    ab = secagg.round_pair_seed(a.private, b.public, job_id=JOB, round_id=4, me=1, peer=2)
    assert ab == secagg.round_pair_seed(b.private, a.public, job_id=JOB, round_id=4, me=2,
                                        peer=1)
    assert len(ab) == secagg.SEED_BYTES
    others = [secagg.round_pair_seed(a.private, b.public, job_id=JOB, round_id=5, me=1, peer=2),
              secagg.round_pair_seed(a.private, b.public, job_id=JOB + "x", round_id=4, me=1,
                                     peer=2),
              secagg.round_pair_seed(a.private, b.public, job_id=JOB, round_id=4, me=1, peer=3),
              secagg.round_pair_seed(a.private, c.public, job_id=JOB, round_id=4, me=1, peer=2),
              secagg.pair_secret(a.private, b.public, job_id=JOB, me=1, peer=2)]
    assert ab not in others
    with pytest.raises(SecAggError, match="itself"):
        secagg.round_pair_seed(a.private, b.public, job_id=JOB, round_id=4, me=1, peer=1)


def test_mask_key_shares_reconstruct_the_key_and_are_checked_against_it():
    keys = _keys(range(1, 6))
    pairs = _pairs(keys, 2)
    mk = secagg.new_mask_key(me=2, round_id=9, job_id=JOB, threshold=3, pairs=pairs)
    assert sorted(mk.encrypted_shares) == [1, 3, 4, 5]  # no own share: it is never needed
    shares = {v: secagg.decrypt_share(_pairs(keys, v)[2], blob, job_id=JOB, round_id=9,
                                      sender=2, recipient=v, kind=secagg.MASK_KEY)
              for v, blob in mk.encrypted_shares.items()}
    three = {v: shares[v] for v in (1, 4, 5)}
    assert secagg.recover_mask_key(three, threshold=3, public=mk.keys.public,
                                   party=2) == mk.keys.private
    with pytest.raises(SecAggError, match="cannot be recovered"):
        secagg.recover_mask_key({1: shares[1], 4: shares[4]}, threshold=3,
                                public=mk.keys.public, party=2)
    bad = dict(three)
    bad[4] = shamir.split(secagg.new_seed(), threshold=1, holders=[4])[4]  # a wrong share
    with pytest.raises(SecAggError):
        secagg.recover_mask_key(bad, threshold=3, public=mk.keys.public, party=2)
    with pytest.raises(SecAggError, match="survivor"):
        secagg.dropped_pair_seeds({2: three}, {2: mk.keys.public}, [1, 2], job_id=JOB,
                                  round_id=9, threshold=3)


def test_a_self_mask_share_cannot_pass_for_a_mask_key_share():
    """The share kind is authenticated: a coordinator cannot relay u's self-mask share as u's
    mask-key share (or the reverse) to have both halves released for one party and round."""
    pair_ab, _, share, blob = _share_setup()
    with pytest.raises(SecAggError, match="does not authenticate"):
        secagg.decrypt_share(pair_ab, blob, job_id=JOB, round_id=4, sender=1, recipient=2,
                             kind=secagg.MASK_KEY)
    key_blob = secagg.encrypt_share(pair_ab, share, job_id=JOB, round_id=4, sender=1,
                                    recipient=2, kind=secagg.MASK_KEY)
    with pytest.raises(SecAggError, match="does not authenticate"):
        secagg.decrypt_share(pair_ab, key_blob, job_id=JOB, round_id=4, sender=1, recipient=2)
    with pytest.raises(SecAggError, match="unknown share kind"):
        secagg.encrypt_share(pair_ab, share, job_id=JOB, round_id=4, sender=1, recipient=2,
                             kind="pair-seed")


def test_mask_key_signature_is_bound_to_job_party_round_and_key():
    from fedsynth.crypto.keys import Identity, sign_key, verify_key

    me = Identity.generate("p")
    key = KeyPair.generate().public
    sig = secagg.sign_mask_key(me.private, job_id=JOB, party=3, round_id=2, public_key=key)
    ok = {"job_id": JOB, "party": 3, "round_id": 2, "public_key": key}
    assert secagg.verify_mask_key(me.public, sig, **ok)
    for change in ({"job_id": JOB + "x"}, {"party": 4}, {"round_id": 3},
                   {"public_key": KeyPair.generate().public}, {"public_key": key[:31]}):
        assert not secagg.verify_mask_key(me.public, sig, **{**ok, **change})
    assert not secagg.verify_mask_key(Identity.generate("q").public, sig, **ok)
    # a job-key signature is no mask-key signature, nor the reverse
    job_sig = sign_key(me.private, job_id=JOB, party=3, public_key=key)
    assert not secagg.verify_mask_key(me.public, job_sig, **ok)
    assert not verify_key(me.public, sig, job_id=JOB, party=3, public_key=key)


def test_prg_is_deterministic_uint64_and_checks_seed_length():
    seed = secagg.new_seed()
    a = secagg.prg(seed, 1000)
    assert a.dtype == np.uint64 and a.shape == (1000,)
    np.testing.assert_array_equal(a, secagg.prg(seed, 1000))
    np.testing.assert_array_equal(a[:10], secagg.prg(seed, 10))  # a stream: prefix-stable
    assert not np.array_equal(a, secagg.prg(secagg.new_seed(), 1000))
    a[0] ^= np.uint64(1)  # callers may modify the result; it must not alias cipher state
    assert secagg.prg(seed, 1)[0] != a[0]
    with pytest.raises(SecAggError):
        secagg.prg(seed[:16], 4)


def test_pair_mask_sum_cancels_between_two_parties():
    seed = secagg.new_seed()
    total = (secagg.pair_mask_sum({2: seed}, me=1, length=64)
             + secagg.pair_mask_sum({1: seed}, me=2, length=64))
    assert not np.any(total)
    with pytest.raises(SecAggError):
        secagg.pair_mask_sum({1: seed}, me=1, length=4)


def _share_setup():
    a, b, c = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
    pair_ab = secagg.pair_secret(a.private, b.public, job_id=JOB, me=1, peer=2)
    pair_ac = secagg.pair_secret(a.private, c.public, job_id=JOB, me=1, peer=3)
    share = shamir.split(secagg.new_seed(), threshold=2, holders=[1, 2, 3])[2]
    blob = secagg.encrypt_share(pair_ab, share, job_id=JOB, round_id=4, sender=1, recipient=2)
    return pair_ab, pair_ac, share, blob


def test_encrypted_share_round_trips_and_hides_the_share():
    pair_ab, _, share, blob = _share_setup()
    assert share not in blob
    assert secagg.decrypt_share(pair_ab, blob, job_id=JOB, round_id=4, sender=1,
                                recipient=2) == share


@pytest.mark.parametrize(
    "override",
    [{"round_id": 5}, {"job_id": JOB + "x"}, {"recipient": 3}, {"sender": 3},
     {"sender": 2, "recipient": 1}],
)
def test_decrypt_share_rejects_replay_to_another_context(override):
    pair_ab, _, _, blob = _share_setup()
    ctx = {"job_id": JOB, "round_id": 4, "sender": 1, "recipient": 2, **override}
    with pytest.raises(SecAggError, match="does not authenticate"):
        secagg.decrypt_share(pair_ab, blob, **ctx)


def test_decrypt_share_rejects_another_pairs_key():
    _, pair_ac, _, blob = _share_setup()
    with pytest.raises(SecAggError):
        secagg.decrypt_share(pair_ac, blob, job_id=JOB, round_id=4, sender=1, recipient=2)


def test_decrypt_share_rejects_every_flipped_byte_and_truncation():
    pair_ab, _, _, blob = _share_setup()
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(SecAggError):
            secagg.decrypt_share(pair_ab, bytes(bad), job_id=JOB, round_id=4, sender=1,
                                 recipient=2)
    for cut in (0, 5, 12, len(blob) - 1):
        with pytest.raises(SecAggError):
            secagg.decrypt_share(pair_ab, blob[:cut], job_id=JOB, round_id=4, sender=1,
                                 recipient=2)


def test_unmask_sum_rejects_malformed_inputs():
    y = np.zeros(4, dtype=np.uint64)
    seed_shares = shamir.split(secagg.new_seed(), threshold=1, holders=[1])
    with pytest.raises(SecAggError, match="no masked"):
        secagg.unmask_sum({}, self_shares={}, dropped_seeds={}, threshold=1)
    with pytest.raises(SecAggError, match="wrong shape or type"):
        secagg.unmask_sum({1: y, 2: np.zeros(3, dtype=np.uint64)},
                          self_shares={1: seed_shares, 2: seed_shares}, dropped_seeds={},
                          threshold=1)
    with pytest.raises(SecAggError, match="wrong shape or type"):
        secagg.unmask_sum({1: y.view(np.int64)}, self_shares={1: seed_shares}, dropped_seeds={},
                          threshold=1)
    with pytest.raises(SecAggError, match="no shares"):
        secagg.unmask_sum({1: y}, self_shares={}, dropped_seeds={}, threshold=1)
    seed = secagg.new_seed()
    with pytest.raises(SecAggError, match="does not belong"):  # "dropped" party that did send
        secagg.unmask_sum({1: y, 2: y}, self_shares={1: seed_shares, 2: seed_shares},
                          dropped_seeds={(2, 1): seed}, threshold=1)
    with pytest.raises(SecAggError, match="does not belong"):  # seed for a non-survivor
        secagg.unmask_sum({1: y}, self_shares={1: seed_shares}, dropped_seeds={(3, 4): seed},
                          threshold=1)


@settings(max_examples=25, deadline=None)
@given(victim=st.integers(1, 4), what=st.sampled_from(["key", "signature", "grow", "shrink"]))
def test_remembered_mask_key_checks_never_pass_a_tampered_set(victim, what):
    """A set of mask keys checked once is remembered under all it depends on, compared
    exactly; a set that differs in any key or signature, even by bytes moved between the two,
    is checked afresh and refused."""
    from fedsynth.crypto.keys import Identity
    from fedsynth.protocols.messages import ProtocolError
    from fedsynth.protocols.secure_sum import verified_mask_keys

    ids = {u: Identity.generate(f"p{u}") for u in range(1, 5)}
    keys = {u: KeyPair.generate().public for u in ids}
    sigs = {u: secagg.sign_mask_key(ids[u].private, job_id=JOB, party=u, round_id=5,
                                    public_key=keys[u]) for u in ids}
    args = {"job_id": JOB, "round_id": 5, "participants": sorted(ids),
            "identity_of": lambda u: ids[u].public}
    assert verified_mask_keys(keys, sigs, **args) == keys
    assert verified_mask_keys(keys, sigs, **args) == keys  # remembered, same answer
    bad_keys, bad_sigs = dict(keys), dict(sigs)
    if what == "key":
        bad_keys[victim] = KeyPair.generate().public
    elif what == "signature":
        bad_sigs[victim] = bytes(64)
    elif what == "grow":  # a byte moved from the signature to the key
        bad_keys[victim] = keys[victim] + sigs[victim][:1]
        bad_sigs[victim] = sigs[victim][1:]
    else:
        bad_keys[victim] = keys[victim][:-1]
        bad_sigs[victim] = keys[victim][-1:] + sigs[victim]
    with pytest.raises(ProtocolError):
        verified_mask_keys(bad_keys, bad_sigs, **args)


def test_a_job_id_with_separators_cannot_borrow_another_sets_remembered_check():
    """Two argument sets that a separator-joined digest would confuse (a job id holding what
    looks like the next fields): the second, invalid one is checked afresh and refused."""
    from fedsynth.crypto.keys import Identity
    from fedsynth.protocols.messages import ProtocolError
    from fedsynth.protocols.secure_sum import verified_mask_keys

    ids = {p: Identity.generate(f"p{p}") for p in (2, 3)}
    ground = b"A" * 32
    tail = b"|7|"
    job_a = "x|5|1|32:" + ground.decode() + "0:" + f"{len(tail)}:"
    keys = {p: KeyPair.generate().public for p in ids}
    sigs = {p: secagg.sign_mask_key(ids[p].private, job_id=job_a, party=p, round_id=7,
                                    public_key=keys[p]) for p in ids}
    assert verified_mask_keys(keys, sigs, job_id=job_a, round_id=7, participants=[2, 3],
                              identity_of=lambda p: ids[p].public) == keys
    with pytest.raises(ProtocolError):
        verified_mask_keys({1: b"", **keys}, {1: tail, **sigs}, job_id="x", round_id=5,
                           participants=[1, 2, 3],
                           identity_of=lambda p: ground if p == 1 else ids[p].public)
