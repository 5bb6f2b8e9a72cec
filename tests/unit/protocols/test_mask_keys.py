"""One-shot mask keys over several chained rounds: dropouts in the measure and unmask steps.

Each round's keys come from the previous round's replies (the first round's from a key
exchange), as on the wire; every message is serialized and parsed again. Checked: the sum is
exact whenever t parties answer the unmask step, whoever dropped in measure or unmask of the
same round; below t nothing is summed; for no (party, round) are both the self-mask and the
mask key released; and a reconstructed mask key opens no earlier vector of its party.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.crypto import secagg, shamir
from fedsynth.crypto.keys import Identity
from fedsynth.crypto.secagg import KeyPair
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.protocols.secure_sum import (
    CoordinatorRound,
    RoundFailed,
    RoundKeys,
    party_mask_key,
    party_measure_reply,
    party_unmask_reply,
)

JOB = "job-mask-keys"
LENGTH = 6
IDS = {u: Identity.generate(f"party-{u}") for u in range(1, 9)}


def _wire(msg):
    return type(msg).FromString(msg.SerializeToString())


@dataclass
class Released:
    """What the coordinator saw in one finished round (for the checks on what is revealed)."""

    masked: dict[int, np.ndarray]
    self_seed: dict[int, bytes]  # party -> its self-mask seed, rebuilt from released shares
    mask_key_of: dict[int, bytes]  # dropped party -> its reconstructed round mask key
    mask_publics: dict[int, bytes]


@dataclass
class Job:
    n: int
    threshold: int
    rng: np.random.Generator
    jobkeys: dict[int, KeyPair] = field(default_factory=dict)
    pending: dict[int, dict[int, bytes]] = field(default_factory=dict)  # party -> round -> key
    own_share: dict[tuple[int, int], bytes] = field(default_factory=dict)
    values: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    released: dict[int, Released] = field(default_factory=dict)
    used_keys: dict[tuple[int, int], bytes] = field(default_factory=dict)  # test's eyes only
    participants: list[int] = field(default_factory=list)
    book: RoundKeys | None = None

    @classmethod
    def start(cls, n: int, threshold: int, seed: int = 0) -> Job:
        job = cls(n, threshold, np.random.default_rng(seed))
        job.participants = list(range(1, n + 1))
        job.jobkeys = {u: KeyPair.generate() for u in job.participants}
        book = RoundKeys(1)  # step 0: the key exchange before the first masked round
        for u in job.participants:
            ann, priv = party_mask_key(job_id=JOB, me=u, round_id=1,
                                       holders=job.participants, threshold=threshold,
                                       private=job.jobkeys[u].private, publics=job.publics,
                                       identity_key=IDS[u].private)
            book.add(u, _wire(ann), job_id=JOB, identity=IDS[u].public,
                     holders=job.participants)
            job.pending[u] = {1: priv}
        job.book = book
        return job

    @property
    def publics(self) -> dict[int, bytes]:
        return {u: k.public for u, k in self.jobkeys.items()}

    def round(self, r: int, *, drop_measure: Sequence[int] = (),
              drop_unmask: Sequence[int] = ()) -> tuple[np.ndarray, list[int]]:
        """Run round r among the current participants; return (sum, contributors)."""
        assert self.book is not None and self.book.round_id == r
        parts = list(self.participants)
        mask_publics = {p: self.book.publics[p] for p in parts}
        coord = CoordinatorRound(round_id=r, channel="secagg", participants=parts,
                                 length=LENGTH, threshold=self.threshold, job_id=JOB,
                                 keys=self.book, identities={u: IDS[u].public for u in parts})
        replies: dict[int, pb.MeasureReply] = {}
        for u in parts:
            if u in drop_measure:
                continue
            x = self.rng.integers(-(2**40), 2**40, LENGTH)
            self.values[(u, r)] = x
            self.used_keys[(u, r)] = self.pending[u][r]
            reply, own, nxt = party_measure_reply(
                x, channel="secagg", job_id=JOB, me=u, round_id=r, participants=parts,
                threshold=self.threshold, private=self.jobkeys[u].private, publics=self.publics,
                mask_private=self.pending[u].pop(r), mask_publics=mask_publics,
                identity_key=IDS[u].private)
            self.pending[u] = {r + 1: nxt}  # the round's key is gone once it has masked
            self.own_share[(u, r)] = own
            replies[u] = _wire(reply)
        survivors = coord.collect(replies)
        unmasked: dict[int, pb.UnmaskReply] = {}
        for v, req in coord.unmask_requests().items():
            if v in drop_unmask:
                continue
            unmasked[v] = _wire(party_unmask_reply(
                _wire(req), job_id=JOB, me=v, threshold=self.threshold, participants=parts,
                private=self.jobkeys[v].private, publics=self.publics,
                own_share=self.own_share[(v, r)]))
        total = coord.finish(unmasked)
        self._record(r, coord, unmasked, mask_publics)
        self.participants = sorted(p for p in unmasked if p in coord.next_keys.publics)
        self.book = coord.next_keys
        return total, survivors

    def _record(self, r: int, coord: CoordinatorRound, replies: Mapping[int, pb.UnmaskReply],
                mask_publics: dict[int, bytes]) -> None:
        self_shares: dict[int, dict[int, bytes]] = {}
        key_shares: dict[int, dict[int, bytes]] = {}
        for v, rep in replies.items():
            for u, s in rep.self_mask_shares.items():
                self_shares.setdefault(u, {})[v] = s
            for d, s in rep.dropped_key_shares.items():
                key_shares.setdefault(d, {})[v] = s
        seeds = {u: shamir.combine(s, threshold=self.threshold) for u, s in self_shares.items()}
        keys = {d: secagg.recover_mask_key(s, threshold=self.threshold, public=mask_publics[d],
                                           party=d) for d, s in key_shares.items()}
        self.released[r] = Released(dict(coord.masked), seeds, keys, mask_publics)

    def expected(self, r: int, over: Sequence[int]) -> np.ndarray:
        return np.array([sum(int(self.values[(u, r)][i]) for u in over) for i in range(LENGTH)],
                        dtype=np.int64)


@st.composite
def _drops(draw: st.DrawFn, parts: Sequence[int], t: int) -> tuple[list[int], list[int]]:
    """Measure dropouts and (other) unmask dropouts that leave at least t unmask answers."""
    order = draw(st.permutations(parts))
    n_drop = draw(st.integers(0, len(parts) - t))
    n_leave = draw(st.integers(0, len(parts) - n_drop - t))
    return sorted(order[:n_drop]), sorted(order[n_drop:n_drop + n_leave])


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_chained_rounds_sum_exactly_while_t_answer_the_unmask_step(data):
    n = data.draw(st.integers(2, 8), label="n")
    t = data.draw(st.integers(1, n), label="t")
    job = Job.start(n, t, seed=data.draw(st.integers(0, 2**16), label="seed"))
    for r in range(1, data.draw(st.integers(1, 4), label="rounds") + 1):
        if len(job.participants) < t:
            break
        dm, du = data.draw(_drops(job.participants, t), label=f"round {r} drops")
        total, contributors = job.round(r, drop_measure=dm, drop_unmask=du)
        assert contributors == sorted(set(job.released[r].masked))
        assert set(contributors) == set(job.released[r].mask_publics) - set(dm)
        np.testing.assert_array_equal(total, job.expected(r, contributors))
        # the mask keys reconstructed are exactly those of the measure dropouts
        assert sorted(job.released[r].mask_key_of) == dm
        # and the next round asks exactly those who answered unmask
        assert job.participants == sorted(set(contributors) - set(du))
    for rel in job.released.values():  # never both halves for one (party, round)
        assert not set(rel.self_seed) & set(rel.mask_key_of)


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_below_t_unmask_answers_no_sum_is_returned(data):
    n = data.draw(st.integers(2, 8), label="n")
    t = data.draw(st.integers(2, n), label="t")
    job = Job.start(n, t)
    order = data.draw(st.permutations(job.participants), label="order")
    n_drop = data.draw(st.integers(0, n - t), label="measure dropouts")
    answering = data.draw(st.integers(0, t - 1), label="unmask answers")
    with pytest.raises(RoundFailed, match="below the threshold"):
        job.round(1, drop_measure=order[:n_drop], drop_unmask=order[n_drop + answering:])


@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_below_t_measure_replies_no_sum_is_returned(data):
    n = data.draw(st.integers(2, 8), label="n")
    t = data.draw(st.integers(2, n), label="t")
    job = Job.start(n, t)
    order = data.draw(st.permutations(job.participants), label="order")
    with pytest.raises(RoundFailed, match="below the threshold"):
        job.round(1, drop_measure=order[: n - t + 1])


def _strip(job: Job, r: int, u: int, key: bytes, *, seed_round: int) -> np.ndarray:
    """The coordinator's attempt on y_u(r): remove u's released self-mask, and u's pair masks
    as seeded by `key` (a private mask key of u) with round r's public mask keys."""
    rel = job.released[r]
    y = rel.masked[u].copy()
    y -= secagg.prg(rel.self_seed[u], LENGTH)
    for v, pub in rel.mask_publics.items():
        if v == u:
            continue
        mask = secagg.prg(secagg.round_pair_seed(key, pub, job_id=JOB, round_id=seed_round,
                                                 me=u, peer=v), LENGTH)
        if v > u:  # u added +PRG(s_uv) for v > u and -PRG(s_uv) for v < u
            y -= mask
        else:
            y += mask
    return y.view(np.int64)


def test_a_partys_later_mask_key_does_not_open_its_earlier_vector():
    """Party 5 survives round 1 (its self-mask released) and drops in round 2 (its round-2 mask
    key reconstructed, while party 4 leaves during unmasking). Its round-1 vector stays masked:
    the round-2 key seeds other pair masks. A key reused across rounds would have opened it,
    as the same steps with the round-1 key show: why mask keys are one-shot."""
    job = Job.start(5, 3)
    job.round(1)
    total, contributors = job.round(2, drop_measure=[5], drop_unmask=[4])
    assert contributors == [1, 2, 3, 4]
    np.testing.assert_array_equal(total, job.expected(2, [1, 2, 3, 4]))
    one, two = job.released[1], job.released[2]
    assert 5 in one.self_seed and 5 in two.mask_key_of and 5 not in two.self_seed
    later = two.mask_key_of[5]
    assert secagg.public_of(later) == two.mask_publics[5] != one.mask_publics[5]
    x = job.values[(5, 1)]
    for seed_round in (1, 2):
        assert not np.array_equal(_strip(job, 1, 5, later, seed_round=seed_round), x)
    np.testing.assert_array_equal(_strip(job, 1, 5, job.used_keys[(5, 1)], seed_round=1), x)
