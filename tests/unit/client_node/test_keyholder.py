"""The he channel's key holder and the party's checks of it, through real Envelopes.

A party refuses an he job whose key holder its policy does not list, and a public context that
is not signed by the spec's key holder for this very job. The key holder decrypts one round's
sum once, for at least t contributors of a job it set up, and refuses everything else with a
refusal the coordinator reads like a party's.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from he_world import (
    IDS,
    KH,
    LENGTH,
    SIZES,
    Federation,
)
from he_world import federation as _federation
from he_world import run_round as _round
from he_world import setup as _setup
from he_world import spec as _spec

from fedsynth.client_node.keyholder import KeyHolderNode
from fedsynth.coordinator.exchange import (
    Exchange,
    JobRefused,
    PartyKeys,
    RoundResult,
    decrypt_at_key_holder,
    setup_request,
)
from fedsynth.crypto import he
from fedsynth.protocols import channels
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.protocols.messages import KEY_HOLDER, PartyRefused, pack, unpack
from fedsynth.simulations.parties import (
    key_holder_identity,
)


def _refusal_reasons(err: JobRefused) -> Mapping[int, str]:
    return {p: r.reason + " " + " ".join(r.problems) for p, r in err.refusals.items()}


# --- the party's checks ------------------------------------------------------------------------


def test_a_party_refuses_an_he_job_whose_key_holder_its_policy_does_not_list(tmp_path: Path):
    fed = _federation(tmp_path, accepted=frozenset({key_holder_identity().public}))
    with pytest.raises(JobRefused) as info:
        _setup(fed)
    reasons = _refusal_reasons(info.value)
    assert sorted(reasons) == [1, 2, 3, 4]
    assert all("key holder" in r and "not one this party's policy accepts" in r
               for r in reasons.values())


def test_a_party_refuses_a_context_whose_signature_does_not_verify(tmp_path: Path):
    fed = _federation(tmp_path)
    good = setup_request(fed.ex, fed.spec)
    # a key pair of the coordinator's own making, signed with an identity key it holds
    own = he.KeyHolder(fed.ex.job_id, IDS[0].private, threshold=3, params=channels.HE_PARAMS)
    ctx, sig = own.public_context()
    req = pb.SetupRequest(spec=fed.spec.to_proto(), he_context=ctx, he_context_signature=sig)
    with pytest.raises(JobRefused) as info:
        _setup(fed, req)
    assert all("not signed by the key holder" in r for r in _refusal_reasons(info.value).values())
    tampered = pb.SetupRequest()
    tampered.CopyFrom(good)
    tampered.he_context = good.he_context[:-1] + bytes([good.he_context[-1] ^ 1])
    with pytest.raises(JobRefused, match="not signed by the key holder"):
        _setup(fed, tampered)


def test_a_party_refuses_a_context_signed_for_another_job(tmp_path: Path):
    fed = _federation(tmp_path)
    other = Exchange(fed.transport, uuid.uuid4().hex,
                     identities={p: fed.spec.identity_of(p) for p in fed.nodes})
    replayed = setup_request(other, fed.spec)  # the real key holder's context, for another job
    with pytest.raises(JobRefused) as info:
        _setup(fed, replayed)
    assert all(f"for job {fed.ex.job_id!r}" in r for r in _refusal_reasons(info.value).values())


def test_an_he_round_sums_exactly_and_the_coordinator_holds_only_the_public_context(
        tmp_path: Path):
    fed = _federation(tmp_path)
    res = _round(fed, _setup(fed))
    assert res.contributors == [1, 2, 3, 4]
    assert fed.ex.he_context is not None and not fed.ex.he_context.context.is_private()
    assert res.total.dtype == np.int64 and len(res.total) == LENGTH
    # each party's counts plus its noise: the one-way blocks each add up to about 4 x 40 rows
    assert abs(int(res.total[:SIZES[0]].sum()) - 160) < 60


# --- the key holder's refusals, through the envelope path -----------------------------------------


def _decrypt(fed: Federation, req: pb.DecryptRequest) -> pb.DecryptReply:
    return decrypt_at_key_holder(fed.ex, req)


def _summed(fed: Federation, keys: PartyKeys) -> tuple[RoundResult, pb.DecryptRequest]:
    """One finished round and its decrypt request as the coordinator sent it."""
    seen: list[pb.DecryptRequest] = []
    real = fed.transport.exchange

    def spy(requests: Mapping[int, bytes], *, timeout: float) -> dict[int, bytes]:
        for p, data in requests.items():
            env = pb.Envelope.FromString(data)
            if p == KEY_HOLDER and env.WhichOneof("body") == "decrypt_request":
                seen.append(env.decrypt_request)
        return real(requests, timeout=timeout)

    fed.transport.exchange = spy  # type: ignore[method-assign]
    res = _round(fed, keys)
    fed.transport.exchange = real  # type: ignore[method-assign]
    return res, seen[0]


def test_the_key_holder_refuses_a_second_decryption_of_a_round(tmp_path: Path):
    fed = _federation(tmp_path)
    _, req = _summed(fed, _setup(fed))
    with pytest.raises(JobRefused, match="round 1 was already decrypted"):
        _decrypt(fed, req)


def test_the_key_holder_refuses_fewer_than_t_contributors(tmp_path: Path):
    fed = _federation(tmp_path)
    keys = _setup(fed)
    _round(fed, keys)  # round 1 is spent; round 2 is still open
    assert fed.ex.he_context is not None
    chunks = he.encrypt_counts(fed.ex.he_context, np.arange(LENGTH, dtype=np.int64))
    req = pb.DecryptRequest(round=2, length=LENGTH, contributors=[1, 2], chunks=chunks)
    with pytest.raises(JobRefused, match="2 distinct contributors, the job's threshold is 3"):
        _decrypt(fed, req)
    req = pb.DecryptRequest(round=2, length=LENGTH, contributors=[1, 2, 9], chunks=chunks)
    with pytest.raises(JobRefused, match=r"contributors \[9\] are not among the job's parties"):
        _decrypt(fed, req)


def _keyed(req: pb.DecryptRequest, keys: PartyKeys) -> pb.DecryptRequest:
    """`req` with its contributors' signed job keys, as the coordinator relays them."""
    for p in req.contributors:
        req.public_keys[p] = keys.publics[p]
        req.key_signatures[p] = keys.signatures[p]
    return req


def test_the_key_holder_refuses_an_unknown_job_and_a_foreign_ciphertext(tmp_path: Path):
    fed = _federation(tmp_path)
    keys = _setup(fed)
    stranger = Exchange(fed.transport, uuid.uuid4().hex, identities={KEY_HOLDER: KH.public})
    assert fed.ex.he_context is not None
    chunks = he.encrypt_counts(fed.ex.he_context, np.ones(LENGTH, dtype=np.int64))
    with pytest.raises(JobRefused, match="unknown to this key holder"):
        decrypt_at_key_holder(stranger, pb.DecryptRequest(
            round=1, length=LENGTH, contributors=[1, 2, 3], chunks=chunks))
    other = he.JobKeys.generate(channels.HE_PARAMS)  # same parameters, another key
    foreign = he.encrypt_counts(other.public, np.ones(LENGTH, dtype=np.int64))
    with pytest.raises(JobRefused, match="not made under this job's public context"):
        _decrypt(fed, _keyed(pb.DecryptRequest(round=1, length=LENGTH, contributors=[1, 2, 3],
                                               chunks=foreign), keys))
    forged = _keyed(pb.DecryptRequest(round=1, length=LENGTH, contributors=[1, 2, 3],
                                      chunks=foreign), keys)
    forged.public_keys[2] = keys.publics[3]  # a key that is not party 2's
    with pytest.raises(JobRefused, match="party 2's job key does not carry its identity"):
        _decrypt(fed, forged)


def test_the_key_holder_refuses_a_replayed_setup_and_a_job_naming_another_key_holder(
        tmp_path: Path):
    fed = _federation(tmp_path)
    _setup(fed)
    again = pb.Envelope(job_id=fed.ex.job_id, step=fed.ex.step + 1, party=KEY_HOLDER)
    again.key_setup_request.spec.CopyFrom(fed.spec.to_proto())
    with pytest.raises(PartyRefused, match="already set up"):
        unpack(fed.holder.handle(pack(again)), sender="key holder", expect="key_setup_reply")
    elsewhere = _spec(3, key_holder_identity())  # the spec names another key holder
    env = pb.Envelope(job_id=uuid.uuid4().hex, step=1, party=KEY_HOLDER)
    env.key_setup_request.spec.CopyFrom(elsewhere.to_proto())
    with pytest.raises(PartyRefused, match="names another key holder"):
        unpack(fed.holder.handle(pack(env)), sender="key holder", expect="key_setup_reply")


def test_the_key_holder_state_survives_a_restart_with_its_spent_rounds(tmp_path: Path):
    """A Flower ClientApp rebuilds the key holder from its node state at every message."""
    fed = _federation(tmp_path)
    keys = _setup(fed)
    _, req = _summed(fed, keys)
    restored = KeyHolderNode.from_state(fed.holder.policy, fed.holder.to_state())
    fed.transport.key_holder = restored
    with pytest.raises(JobRefused, match="already decrypted"):
        _decrypt(fed, req)
    result = _round(fed, keys, round_id=2)  # the restored key holder still removes the masks
    assert result.contributors == [1, 2, 3, 4] and len(result.total) == LENGTH


def test_a_party_never_answers_a_key_holder_request(tmp_path: Path):
    fed = _federation(tmp_path)
    env = pb.Envelope(job_id=fed.ex.job_id, step=1, party=1)
    env.key_setup_request.spec.CopyFrom(fed.spec.to_proto())
    reply, _ = fed.nodes[1].handle(pack(env), None)
    with pytest.raises(PartyRefused, match="expected a"):
        unpack(reply, sender="party 1", expect="key_setup_reply")
