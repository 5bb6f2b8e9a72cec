"""Tests of one secure-sum round driven through both halves (parties and coordinator)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.crypto.keys import Identity
from fedsynth.crypto.secagg import KeyPair, SecAggError
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.protocols.messages import ProtocolError, bytes_vector
from fedsynth.protocols.secure_sum import (
    CoordinatorRound,
    RoundFailed,
    RoundKeys,
    party_mask_key,
    party_measure_reply,
    party_unmask_reply,
)

JOB = "job-secure-sum"
PARTIES = [1, 2, 3, 4, 5]
LENGTH = 24
IDS = {u: Identity.generate(f"party-{u}") for u in PARTIES}


def _wire(msg):
    """Serialize and parse again, as every message crosses a process boundary."""
    return type(msg).FromString(msg.SerializeToString())


@dataclass
class Federation:
    keys: dict[int, KeyPair]
    values: dict[int, np.ndarray]
    threshold: int
    round_id: int = 3
    channel: str = "secagg"
    round_keys: RoundKeys | None = None  # as the coordinator holds them
    mask_private: dict[int, bytes] = field(default_factory=dict)  # as each party holds its own

    @classmethod
    def make(cls, *, threshold: int = 3, seed: int = 0, channel: str = "secagg",
             parties: Collection[int] = PARTIES) -> Federation:
        rng = np.random.default_rng(seed)
        values = {u: rng.integers(-(2**40), 2**40, LENGTH) for u in parties}
        values[min(parties)][:3] = [2**60, -(2**60), 0]  # large magnitudes too
        fed = cls(keys={u: KeyPair.generate() for u in parties}, values=values,
                  threshold=threshold, channel=channel)
        if channel != "plain":
            fed.announce()
        return fed

    def announce(self) -> None:
        """Step 0: every party announces its mask key for the round, the coordinator checks it."""
        book = RoundKeys(self.round_id)
        for u in self.participants:
            ann, self.mask_private[u] = party_mask_key(
                job_id=JOB, me=u, round_id=self.round_id, holders=self.participants,
                threshold=self.threshold, private=self.keys[u].private, publics=self.publics,
                identity_key=IDS[u].private)
            book.add(u, _wire(ann), job_id=JOB, identity=IDS[u].public,
                     holders=self.participants)
        self.round_keys = book

    @property
    def publics(self) -> dict[int, bytes]:
        return {u: k.public for u, k in self.keys.items()}

    @property
    def participants(self) -> list[int]:
        return sorted(self.keys)

    def measure(self, u: int) -> tuple[pb.MeasureReply, bytes]:
        reply, own, _ = party_measure_reply(
            self.values[u], channel=self.channel, job_id=JOB, me=u, round_id=self.round_id,
            participants=self.participants, threshold=self.threshold,
            private=self.keys[u].private, publics=self.publics,
            mask_private=self.mask_private.get(u, b""),
            mask_publics=self.round_keys.publics if self.round_keys else None,
            identity_key=IDS[u].private)
        return _wire(reply), own

    def unmask(self, u: int, req: pb.UnmaskRequest, own: bytes) -> pb.UnmaskReply:
        return _wire(party_unmask_reply(
            _wire(req), job_id=JOB, me=u, threshold=self.threshold,
            participants=self.participants, private=self.keys[u].private,
            publics=self.publics, own_share=own))

    def coordinator(self) -> CoordinatorRound:
        return CoordinatorRound(round_id=self.round_id, channel=self.channel,
                                participants=self.participants, length=LENGTH,
                                threshold=self.threshold, job_id=JOB, keys=self.round_keys,
                                identities={u: IDS[u].public for u in self.participants})

    def run(self, *, drop_measure: Collection[int] = (),
            drop_unmask: Collection[int] = ()) -> np.ndarray:
        coord = self.coordinator()
        sent = {u: self.measure(u) for u in self.participants if u not in drop_measure}
        survivors = coord.collect({u: r for u, (r, _) in sent.items()})
        assert survivors == sorted(sent)
        if self.channel == "plain":
            return coord.plain_sum()
        reqs = coord.unmask_requests()
        assert sorted(reqs) == survivors
        replies = {v: self.unmask(v, reqs[v], sent[v][1]) for v in survivors
                   if v not in drop_unmask}
        return coord.finish(replies)

    def expected(self, over: Collection[int]) -> np.ndarray:
        return np.array([sum(int(self.values[u][i]) for u in over) for i in range(LENGTH)],
                        dtype=np.int64)


def test_secagg_sum_is_exact_without_dropout():
    fed = Federation.make()
    np.testing.assert_array_equal(fed.run(), fed.expected(PARTIES))


@pytest.mark.parametrize("dropped", PARTIES)
def test_secagg_sum_is_exact_with_one_measure_dropout(dropped):
    fed = Federation.make(threshold=3, seed=dropped)
    got = fed.run(drop_measure=[dropped])
    np.testing.assert_array_equal(got, fed.expected([u for u in PARTIES if u != dropped]))


def test_secagg_sum_is_exact_with_two_measure_dropouts_at_t3():
    fed = Federation.make(threshold=3)
    np.testing.assert_array_equal(fed.run(drop_measure=[2, 5]), fed.expected([1, 3, 4]))


@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_secagg_sum_property_over_thresholds_and_dropouts(data):
    t = data.draw(st.integers(2, 5), label="t")
    n_drop = data.draw(st.integers(0, 5 - t), label="measure dropouts")
    dropped = data.draw(st.permutations(PARTIES), label="order")[:n_drop]
    fed = Federation.make(threshold=t, seed=data.draw(st.integers(0, 1000), label="seed"))
    survivors = [u for u in PARTIES if u not in dropped]
    np.testing.assert_array_equal(fed.run(drop_measure=dropped), fed.expected(survivors))


def test_round_fails_when_fewer_than_t_reply_to_measure():
    fed = Federation.make(threshold=3)
    with pytest.raises(RoundFailed, match="below the threshold"):
        fed.run(drop_measure=[1, 2, 3])


def test_round_fails_when_fewer_than_t_answer_unmask():
    fed = Federation.make(threshold=3)
    with pytest.raises(RoundFailed, match="unmask"):
        fed.run(drop_unmask=[1, 2, 3])


def test_survivor_leaving_during_unmask_without_earlier_dropout_still_sums_exactly():
    fed = Federation.make(threshold=3)
    # party 4's masked vector was received; its self-mask comes back from others' shares
    np.testing.assert_array_equal(fed.run(drop_unmask=[4]), fed.expected(PARTIES))


def test_survivor_leaving_during_unmask_after_a_measure_dropout_still_sums_exactly():
    """The known gap of the pair-seed design: 5 drops in measure, 4 leaves during unmasking.
    The pair mask of (4, 5) in 4's vector now comes off with 5's reconstructed mask key."""
    fed = Federation.make(threshold=3)
    np.testing.assert_array_equal(fed.run(drop_measure=[5], drop_unmask=[4]),
                                  fed.expected([1, 2, 3, 4]))


@pytest.mark.parametrize(("drop_measure", "drop_unmask"), [([5], [4, 1]), ([2, 5], [4])])
def test_exactly_t_unmask_answers_after_measure_dropouts_suffice(drop_measure, drop_unmask):
    fed = Federation.make(threshold=2)  # both leave exactly t = 2 answers
    survivors = [u for u in PARTIES if u not in drop_measure]
    np.testing.assert_array_equal(fed.run(drop_measure=drop_measure, drop_unmask=drop_unmask),
                                  fed.expected(survivors))


def test_round_fails_below_t_unmask_answers_after_a_measure_dropout():
    fed = Federation.make(threshold=3)
    with pytest.raises(RoundFailed, match="below the threshold t=3"):
        fed.run(drop_measure=[5], drop_unmask=[4, 1])


def test_measure_reply_is_masked_and_carries_a_share_for_every_peer():
    fed = Federation.make()
    reply, own = fed.measure(2)
    assert reply.round == fed.round_id
    masked = bytes_vector(reply.masked, length=LENGTH, sender="party 2")
    assert not np.array_equal(masked.view(np.int64), fed.values[2])
    assert sorted(reply.encrypted_shares) == [1, 3, 4, 5]
    assert own and own not in reply.encrypted_shares.values()
    # and the announcement of its next round's mask key, one share per peer
    nxt = reply.next_mask_key
    assert nxt.round == fed.round_id + 1 and len(nxt.public_key) == 32
    assert sorted(nxt.encrypted_shares) == [1, 3, 4, 5]
    assert nxt.public_key != fed.round_keys.publics[2]  # a fresh key every round


def test_unmask_reply_releases_self_shares_for_survivors_and_key_shares_for_dropped():
    fed = Federation.make(threshold=3)
    coord = fed.coordinator()
    sent = {u: fed.measure(u) for u in (1, 2, 3, 4)}
    coord.collect({u: r for u, (r, _) in sent.items()})
    assert coord.dropped == [5]
    req = coord.unmask_requests()[3]
    assert sorted(req.key_shares_for_you) == [5]
    reply = fed.unmask(3, req, sent[3][1])
    assert sorted(reply.self_mask_shares) == [1, 2, 3, 4]
    assert sorted(reply.dropped_key_shares) == [5]
    assert reply.round == fed.round_id


def test_a_party_never_releases_a_mask_key_share_of_a_survivor():
    """Even when the coordinator relays them, shares of survivors' mask keys stay unreleased:
    a survivor's self-mask is released, so its mask key must not be."""
    fed = Federation.make(threshold=3)
    coord = fed.coordinator()
    sent = {u: fed.measure(u) for u in (1, 2, 3, 4)}
    coord.collect({u: r for u, (r, _) in sent.items()})
    req = coord.unmask_requests()[3]
    assert fed.round_keys is not None
    for u in (1, 2, 4):
        req.key_shares_for_you[u] = fed.round_keys.shares[u][3]
    reply = fed.unmask(3, req, sent[3][1])
    assert sorted(reply.dropped_key_shares) == [5]


def test_party_unmask_reply_refuses_without_the_dropped_partys_key_share():
    fed = Federation.make(threshold=3)
    coord = fed.coordinator()
    sent = {u: fed.measure(u) for u in (1, 2, 3, 4)}
    coord.collect({u: r for u, (r, _) in sent.items()})
    req = coord.unmask_requests()[3]
    del req.key_shares_for_you[5]
    with pytest.raises(ProtocolError, match="no share of dropped party 5's mask key"):
        fed.unmask(3, req, sent[3][1])


def test_a_self_mask_share_relayed_as_a_key_share_is_rejected():
    """A coordinator that claims 5 dropped though it has 5's vector cannot have 5's self-mask
    share released in place of a mask-key share: the kind is authenticated."""
    fed = Federation.make(threshold=3)
    coord = fed.coordinator()
    sent = {u: fed.measure(u) for u in PARTIES}
    coord.collect({u: r for u, (r, _) in sent.items() if u != 5})
    req = coord.unmask_requests()[3]
    req.key_shares_for_you[5] = sent[5][0].encrypted_shares[3]
    with pytest.raises(SecAggError, match="does not authenticate"):
        fed.unmask(3, req, sent[3][1])


def test_a_corrupted_key_share_stops_the_round_instead_of_a_wrong_sum():
    fed = Federation.make(threshold=3)
    coord = fed.coordinator()
    sent = {u: fed.measure(u) for u in (1, 2, 3, 4)}
    coord.collect({u: r for u, (r, _) in sent.items()})
    reqs = coord.unmask_requests()
    replies = {v: fed.unmask(v, reqs[v], sent[v][1]) for v in (1, 2, 3)}
    bad = bytearray(replies[2].dropped_key_shares[5])
    bad[-1] ^= 0x01
    replies[2].dropped_key_shares[5] = bytes(bad)
    with pytest.raises(RoundFailed, match="do not unmask"):
        coord.finish(replies)


def _request(fed: Federation, survivors, dropped, *, round_id=None):
    """A hand-built unmask request for party 1, with real shares relayed from the others."""
    coord = fed.coordinator()
    sent = {u: fed.measure(u) for u in PARTIES}
    coord.collect({u: r for u, (r, _) in sent.items()})
    req = coord.unmask_requests()[1]
    del req.survivors[:]
    del req.dropped[:]
    req.survivors.extend(survivors)
    req.dropped.extend(dropped)
    if round_id is not None:
        req.round = round_id
    return req, sent[1][1]


@pytest.mark.parametrize(
    ("survivors", "dropped", "match"),
    [
        ([1, 2, 3, 4], [4, 5], "both survivor and dropped"),
        ([1, 2, 3, 4, 5], [5], "both survivor and dropped"),
        ([1, 2], [3, 4, 5], "below the threshold"),
        ([1, 2], [], "below the threshold"),
        ([2, 3, 4], [1, 5], "not listed as a survivor"),
        ([1, 2, 3], [4, 9], "not asked"),
        ([1, 2, 3, 7], [], "not asked"),
    ],
)
def test_party_unmask_reply_refuses_unsafe_requests(survivors, dropped, match):
    fed = Federation.make(threshold=3)
    req, own = _request(fed, survivors, dropped)
    with pytest.raises(ProtocolError, match=match):
        fed.unmask(1, req, own)


def test_party_unmask_reply_refuses_when_a_survivors_share_was_not_relayed():
    fed = Federation.make(threshold=3)
    req, own = _request(fed, [1, 2, 3, 4, 5], [])
    del req.shares_for_you[4]
    with pytest.raises(ProtocolError, match="no share from survivor 4"):
        fed.unmask(1, req, own)


def test_party_unmask_reply_rejects_shares_replayed_into_another_round():
    fed = Federation.make(threshold=3)
    req, own = _request(fed, [1, 2, 3, 4, 5], [], round_id=fed.round_id + 1)
    with pytest.raises(SecAggError, match="does not authenticate"):
        fed.unmask(1, req, own)


def test_party_unmask_reply_rejects_a_share_swapped_between_senders():
    fed = Federation.make(threshold=3)
    req, own = _request(fed, [1, 2, 3, 4, 5], [])
    req.shares_for_you[2], req.shares_for_you[3] = req.shares_for_you[3], req.shares_for_you[2]
    with pytest.raises(SecAggError):
        fed.unmask(1, req, own)


def test_collect_rejects_wrong_round_length_and_missing_shares():
    fed = Federation.make(threshold=3)
    reply, _ = fed.measure(1)

    stale = pb.MeasureReply()
    stale.CopyFrom(reply)
    stale.round = fed.round_id - 1
    with pytest.raises(ProtocolError, match="expected"):
        fed.coordinator().collect({1: stale})

    short = pb.MeasureReply()
    short.CopyFrom(reply)
    short.masked = reply.masked[:-8]
    with pytest.raises(ProtocolError, match="bytes"):
        fed.coordinator().collect({1: short})

    missing = pb.MeasureReply()
    missing.CopyFrom(reply)
    del missing.encrypted_shares[3]
    with pytest.raises(ProtocolError, match=r"no encrypted share for parties \[3\]"):
        fed.coordinator().collect({1: missing})


def test_a_bad_next_key_announcement_only_keeps_the_party_out_of_the_next_round():
    fed = Federation.make(threshold=3)
    sent = {u: fed.measure(u) for u in PARTIES}
    sent[2][0].next_mask_key.signature = sent[3][0].next_mask_key.signature
    del sent[4][0].next_mask_key.encrypted_shares[1]
    sent[5][0].next_mask_key.round = fed.round_id + 2
    coord = fed.coordinator()
    coord.collect({u: r for u, (r, _) in sent.items()})
    assert coord.survivors == PARTIES  # their vectors count in this round
    assert sorted(coord.next_keys.publics) == [1, 3]
    assert coord.next_keys.round_id == fed.round_id + 1


def test_a_secagg_round_needs_every_participants_mask_key():
    fed = Federation.make(threshold=3)
    assert fed.round_keys is not None
    del fed.round_keys.publics[4]
    with pytest.raises(ProtocolError, match="no mask keys for every participant"):
        fed.coordinator()


def test_measure_refuses_a_substituted_own_mask_key():
    fed = Federation.make(threshold=3)
    assert fed.round_keys is not None
    fed.round_keys.publics[2] = KeyPair.generate().public
    with pytest.raises(ProtocolError, match="own mask key was not relayed faithfully"):
        fed.measure(2)


def test_coordinator_relays_to_each_survivor_only_the_shares_addressed_to_it():
    fed = Federation.make(threshold=3)
    coord = fed.coordinator()
    sent = {u: fed.measure(u) for u in (1, 2, 4, 5)}
    coord.collect({u: r for u, (r, _) in sent.items()})
    reqs = coord.unmask_requests()
    for v, req in reqs.items():
        assert list(req.survivors) == [1, 2, 4, 5]
        assert list(req.dropped) == [3]
        assert sorted(req.shares_for_you) == sorted(u for u in (1, 2, 4, 5) if u != v)
        for u, blob in req.shares_for_you.items():
            assert blob == sent[u][0].encrypted_shares[v]


def test_plain_channel_sum_is_exact_and_unmasked():
    fed = Federation.make(channel="plain", threshold=2)
    reply, own = fed.measure(1)
    assert own == b""
    assert not reply.encrypted_shares
    np.testing.assert_array_equal(
        bytes_vector(reply.masked, length=LENGTH, sender="p").view(np.int64), fed.values[1])
    np.testing.assert_array_equal(fed.run(), fed.expected(PARTIES))
    np.testing.assert_array_equal(fed.run(drop_measure=[3]),
                                  fed.expected([1, 2, 4, 5]))


def test_plain_channel_still_enforces_the_threshold():
    fed = Federation.make(channel="plain", threshold=4)
    with pytest.raises(RoundFailed):
        fed.run(drop_measure=[1, 2])
