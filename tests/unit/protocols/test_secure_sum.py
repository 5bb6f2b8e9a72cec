"""Tests of one secure-sum round driven through both halves (parties and coordinator)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.crypto.secagg import KeyPair, SecAggError
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.protocols.messages import ProtocolError, bytes_vector
from fedsynth.protocols.secure_sum import (
    CoordinatorRound,
    RoundFailed,
    party_measure_reply,
    party_unmask_reply,
)

JOB = "job-secure-sum"
PARTIES = [1, 2, 3, 4, 5]
LENGTH = 24


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

    @classmethod
    def make(cls, *, threshold: int = 3, seed: int = 0, channel: str = "secagg",
             parties: Collection[int] = PARTIES) -> Federation:
        rng = np.random.default_rng(seed)
        values = {u: rng.integers(-(2**40), 2**40, LENGTH) for u in parties}
        values[min(parties)][:3] = [2**60, -(2**60), 0]  # large magnitudes too
        return cls(keys={u: KeyPair.generate() for u in parties}, values=values,
                   threshold=threshold, channel=channel)

    @property
    def publics(self) -> dict[int, bytes]:
        return {u: k.public for u, k in self.keys.items()}

    @property
    def participants(self) -> list[int]:
        return sorted(self.keys)

    def measure(self, u: int) -> tuple[pb.MeasureReply, bytes]:
        reply, own = party_measure_reply(
            self.values[u], channel=self.channel, job_id=JOB, me=u, round_id=self.round_id,
            participants=self.participants, threshold=self.threshold,
            private=self.keys[u].private, publics=self.publics)
        return _wire(reply), own

    def unmask(self, u: int, req: pb.UnmaskRequest, own: bytes) -> pb.UnmaskReply:
        return _wire(party_unmask_reply(
            _wire(req), job_id=JOB, me=u, threshold=self.threshold,
            participants=self.participants, private=self.keys[u].private,
            publics=self.publics, own_share=own))

    def coordinator(self) -> CoordinatorRound:
        return CoordinatorRound(round_id=self.round_id, channel=self.channel,
                                participants=self.participants, length=LENGTH,
                                threshold=self.threshold)

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


def test_survivor_leaving_during_unmask_after_a_dropout_fails_cleanly():
    fed = Federation.make(threshold=3)
    with pytest.raises(RoundFailed, match="cannot be removed"):
        fed.run(drop_measure=[5], drop_unmask=[4])


def test_measure_reply_is_masked_and_carries_a_share_for_every_peer():
    fed = Federation.make()
    reply, own = fed.measure(2)
    assert reply.round == fed.round_id
    masked = bytes_vector(reply.masked, length=LENGTH, sender="party 2")
    assert not np.array_equal(masked.view(np.int64), fed.values[2])
    assert sorted(reply.encrypted_shares) == [1, 3, 4, 5]
    assert own and own not in reply.encrypted_shares.values()


def test_unmask_reply_releases_self_shares_for_survivors_and_seeds_for_dropped_never_both():
    fed = Federation.make(threshold=3)
    coord = fed.coordinator()
    sent = {u: fed.measure(u) for u in (1, 2, 3, 4)}
    coord.collect({u: r for u, (r, _) in sent.items()})
    assert coord.dropped == [5]
    reply = fed.unmask(3, coord.unmask_requests()[3], sent[3][1])
    assert sorted(reply.self_mask_shares) == [1, 2, 3, 4]
    assert sorted(reply.dropped_pair_seeds) == [5]
    assert reply.round == fed.round_id


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
