"""Attacks of a deviating coordinator on the he channel, through the real Node, KeyHolderNode
and Exchange (as test_deviating_coordinator.py does for secagg).

Found by review (the details are in each test), and closed by the round-bound masks of
crypto.he_masks (each party's vector is masked with a stream only the key holder can remove,
bound to the round and to the digest of the request the party answered, with zero tag slots
the key holder checks):
- The key holder's "once per round" is keyed by a round id the coordinator chooses and that
  nothing a party signed binds to the ciphertext: the coordinator can have the same round's
  ciphertexts decrypted again under a fresh round id, over another (honestly listed) set of
  contributors, and difference out one party's vector with only its own noise share.
- Nothing binds the parties of one round to the same request: a coordinator can ask one
  party for the charged noise and the others for almost none, so the released sum carries
  less noise than that party was charged for (secagg binds the request digest; he does not).
- Round ids are unbounded, so the key holder is a decryption oracle for as many chosen
  ciphertexts as the coordinator likes (crypto.he states that such an oracle leaks the key);
  fixed here: at most `KeyHolderPolicy.max_decryptions` per job.
- Stated limit (README): the key holder takes the coordinator's word for the contributors,
  so one party's ciphertext can be passed off as a sum of t.

Every attack below relays the parties' real, signed job keys and the real request digests
(the coordinator has both), so what stops it is the masks, not a missing field.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import numpy as np
import pytest
from he_world import (
    CLIQUES,
    GROUPINGS,
    KH,
    LENGTH,
    Federation,
)
from he_world import counts as _counts
from he_world import federation as _federation
from he_world import run_round as _round
from he_world import setup as _setup

from fedsynth.client_node.keyholder import KeyHolderNode
from fedsynth.coordinator.exchange import (
    Exchange,
    JobRefused,
    PartyKeys,
    decrypt_at_key_holder,
    setup_request,
)
from fedsynth.crypto import he, he_masks
from fedsynth.protocols import channels
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.protocols.messages import KEY_HOLDER
from fedsynth.protocols.secure_sum import CoordinatorRound
from fedsynth.simulations.parties import (
    key_holder_policy,
)


def _measure_request(round_id: int, variance: float) -> pb.MeasureRequest:
    req = pb.MeasureRequest(round=round_id, label="test", noise_variance=variance,
                            participants=[1, 2, 3, 4])
    for g in GROUPINGS:
        req.groupings.add().index.extend(int(i) for i in g.index)
    for c in CLIQUES:
        req.cliques.add().columns.extend(c)
    return req


def _decrypt(fed: Federation, keys: PartyKeys, *, round_id: int, contributors: list[int],
             chunks: list[bytes], digest: bytes) -> pb.DecryptReply:
    """A decrypt request as a deviating coordinator can make it: with the contributors' real
    signed job keys and a real request digest."""
    req = pb.DecryptRequest(round=round_id, length=LENGTH, contributors=contributors,
                            chunks=chunks, request_digest=digest)
    for p in contributors:
        req.public_keys[p] = keys.publics[p]
        req.key_signatures[p] = keys.signatures[p]
    return decrypt_at_key_holder(fed.ex, req)



# --- breaks within the stated model's promises (a deviating coordinator, no collusion) ----------


def test_a_round_decrypted_again_under_another_round_id_does_not_reveal_a_party(
        tmp_path: Path) -> None:
    """Round 1 is summed honestly over parties 1..4. The coordinator adds the very same round-1
    ciphertexts of parties 1, 2 and 3 (t = 3, listed truthfully) and sends them as "round 2":
    the difference is party 4's counts with only its own noise share (variance 4/3)."""
    fed = _federation(tmp_path)
    keys = _setup(fed)
    res = _round(fed, keys)
    assert res.contributors == [1, 2, 3, 4]
    assert fed.ex.he_context is not None
    three = he.add_ciphertexts(fed.ex.he_context, [fed.sent[(1, p)] for p in (1, 2, 3)],
                               LENGTH + he_masks.TAG_SLOTS)
    for round_id in (2, 1):  # under a fresh round id: masks do not cancel; round 1: spent
        with pytest.raises(JobRefused, match=r"not the sum of the listed|already decrypted"):
            _decrypt(fed, keys, round_id=round_id, contributors=[1, 2, 3], chunks=three,
                     digest=fed.digests[1])


def test_parties_asked_for_different_noise_in_one_round_get_no_decryption(
        tmp_path: Path) -> None:
    """Party 4 is asked for the charged variance 4000 (its share 4000/3); parties 1..3 are asked
    for variance 4 (share 4/3). Party 4 is charged for a sum carrying variance 4000; released,
    the sum would carry about 1337, a third. Whichever request's digest the coordinator names,
    the masks of the parties that answered the other request stay in: refused."""
    weak, strong = _measure_request(1, 4.0), _measure_request(1, 4000.0)
    for told in (weak, strong):
        fed = _federation(tmp_path)
        keys = _setup(fed)
        replies = fed.ex.call({p: ("measure_request", strong if p == 4 else weak)
                               for p in fed.nodes}, "measure_reply")
        assert sorted(replies) == [1, 2, 3, 4]
        assert [e["variance"] for e in fed.ledger(4)] == [4000.0]  # charged for the full noise
        rnd = CoordinatorRound(
            round_id=1, channel="he", participants=[1, 2, 3, 4], length=LENGTH, threshold=3,
            job_id=fed.ex.job_id, identities=fed.ex.identities, he_context=fed.ex.he_context,
            job_keys=keys,
            request_digest=hashlib.sha256(told.SerializeToString(deterministic=True)).digest())
        rnd.collect({p: e.measure_reply for p, e in replies.items()})
        with pytest.raises(JobRefused, match="not the sum of the listed"):
            decrypt_at_key_holder(fed.ex, channels.get("he").decrypt_request(rnd))


# --- formerly a stated limit: the key holder took the coordinator's word for contributors ---


def test_one_partys_ciphertext_passed_off_as_a_sum_of_t_is_not_decrypted(tmp_path: Path) -> None:
    fed = _federation(tmp_path)
    keys = _setup(fed)
    _round(fed, keys)
    with pytest.raises(JobRefused, match="not the sum of the listed"):
        _decrypt(fed, keys, round_id=2, contributors=[1, 2, 3], chunks=fed.sent[(1, 1)],
                 digest=fed.digests[1])


# --- fixed here -------------------------------------------------------------------------------


def test_the_key_holder_is_no_unbounded_decryption_oracle(tmp_path: Path) -> None:
    """Round ids are the coordinator's (1..2^32 - 2): without a cap the key holder decrypts as
    many ciphertexts of the coordinator's own making as it likes, and an answer (or the range
    check's refusal) carries about a bit of the secret key each (chosen (c0, c1), crypto.he:
    BFV is not CCA-secure). The key holder decrypts at most `max_decryptions` rounds a job;
    a refused request that was never decrypted does not count."""
    fed = _federation(tmp_path, max_decryptions=3)
    keys = _setup(fed)
    assert fed.ex.he_context is not None
    chunks = he.encrypt_counts(fed.ex.he_context,
                               np.zeros(LENGTH + he_masks.TAG_SLOTS, dtype=np.int64))
    digest = bytes(32)
    with pytest.raises(JobRefused, match="distinct contributors"):
        _decrypt(fed, keys, round_id=7, contributors=[1], chunks=chunks, digest=digest)
    for r in (100, 2000, 30000):  # the coordinator's own ciphertext: the masks stay, refused
        with pytest.raises(JobRefused, match="not the sum of the listed"):
            _decrypt(fed, keys, round_id=r, contributors=[1, 2, 3], chunks=chunks,
                     digest=digest)
    with pytest.raises(JobRefused, match="at most 3 rounds"):
        _decrypt(fed, keys, round_id=40000, contributors=[1, 2, 3], chunks=chunks, digest=digest)
    # the count survives a restart (a Flower ClientApp rebuilds the key holder every message)
    fed.transport.key_holder = KeyHolderNode.from_state(fed.holder.policy, fed.holder.to_state())
    with pytest.raises(JobRefused, match="at most 3 rounds"):
        _decrypt(fed, keys, round_id=50000, contributors=[1, 2, 3], chunks=chunks, digest=digest)


def test_the_default_decryption_cap_is_far_below_what_key_recovery_needs() -> None:
    """A chosen-ciphertext query tells about one ternary coefficient of the N = 4096 secret
    key; the default cap leaves the rest of the key (thousands of coefficients) to RLWE."""
    policy = key_holder_policy(KH)
    assert 16 <= policy.max_decryptions <= 256


# --- what held under attack (kept as regression tests) -----------------------------------------


def test_a_party_charges_before_its_ciphertext_leaves_and_answers_a_round_once(
        tmp_path: Path) -> None:
    fed = _federation(tmp_path)
    _setup(fed)
    replies = fed.ex.call({1: ("measure_request", _measure_request(1, 4.0))}, "measure_reply")
    assert len(replies[1].measure_reply.ciphertexts) == 1
    assert [(e["round"], e["variance"]) for e in fed.ledger(1)] == [(1, 4.0)]
    with pytest.raises(JobRefused, match="already measured"):  # same round, other noise
        fed.ex.call({1: ("measure_request", _measure_request(1, 400.0))}, "measure_reply")
    with pytest.raises(JobRefused) as info:  # past its cap: refused, nothing sent or charged
        fed.ex.call({1: ("measure_request", _measure_request(2, 1e-4))}, "measure_reply")
    assert "cap" in str(info.value) or "budget" in str(info.value)
    assert [(e["round"], e["variance"]) for e in fed.ledger(1)] == [(1, 4.0)]
    assert (2, 1) not in fed.sent


def test_a_party_refuses_to_measure_without_a_noise_share(tmp_path: Path) -> None:
    fed = _federation(tmp_path)
    _setup(fed)
    for r, variance in enumerate((0.0, -1.0, float("nan")), start=1):
        with pytest.raises(JobRefused, match="not positive"):
            fed.ex.call({1: ("measure_request", _measure_request(r, variance))},
                        "measure_reply")
    assert fed.ledger(1) == [] and not fed.sent


def test_a_sum_from_another_jobs_key_holder_setup_is_refused(tmp_path: Path) -> None:
    """Two jobs set up at the same key holder: job B's round-1 sum re-tagged as job A's is
    decrypted under A's key to values outside the range, and not released."""
    fed = _federation(tmp_path)
    keys = _setup(fed)
    _round(fed, keys)
    other = Exchange(fed.transport, uuid.uuid4().hex, identities=dict(fed.ex.identities))
    setup_request(other, fed.spec)
    assert other.he_context is not None and fed.ex.he_context is not None
    theirs = he.encrypt_counts(other.he_context,
                               np.concatenate([_counts(1), np.zeros(he_masks.TAG_SLOTS, "i8")]))
    retagged = [he.CHUNK_MAGIC + fed.ex.he_context.fingerprint + c[he.TAG_BYTES:]
                for c in theirs]
    with pytest.raises(JobRefused, match=r"not the sum of the listed|not a sum of 3 bounded"):
        _decrypt(fed, keys, round_id=2, contributors=[1, 2, 3], chunks=retagged,
                 digest=fed.digests[1])
    assert KEY_HOLDER in fed.ex.identities
