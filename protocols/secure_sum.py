"""One secure-sum round, both halves: what a party sends and what the coordinator does with it.

A round is three exchanges. Measure: each party replies with its masked vector and encrypted
Shamir shares of a fresh self-mask seed (crypto.secagg). Confirm (Bonawitz et al.'s
consistency check): each survivor signs the survivor list with a digest of the request it
answered, once per round. Unmask: carrying t such signatures, the coordinator names the
survivors U2 (replies received) and the dropped D (asked, not received); each party releases,
for every survivor, its share of that survivor's self-mask seed, and for every dropped party,
this round's pair seed with it. A party checks that U2 and D are disjoint, that U2 holds at
least t parties (so at least t - c honest noise shares are in the sum), and answers each round
once, so for no (party, round) are both its self-mask and its pair masks released.
With channel "plain" (simulation and tests only) the vector goes unmasked and there is no
unmask exchange.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedsynth.crypto import secagg
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.protocols.messages import ProtocolError, bytes_vector, vector_bytes


class RoundFailed(RuntimeError):
    """A round that cannot finish safely (too few survivors); nothing was revealed."""


def pair_secrets(private: bytes, publics: Mapping[int, bytes], *, job_id: str, me: int,
                 peers: Sequence[int]) -> dict[int, bytes]:
    return {v: secagg.pair_secret(private, publics[v], job_id=job_id, me=me, peer=v)
            for v in peers if v != me}


def party_measure_reply(values: np.ndarray, *, channel: str, job_id: str, me: int, round_id: int,
                        participants: Sequence[int], threshold: int, private: bytes,
                        publics: Mapping[int, bytes]) -> tuple[pb.MeasureReply, bytes]:
    """The party's reply for a noised vector, and its own self-mask share to keep."""
    if channel == "plain":
        return pb.MeasureReply(round=round_id, masked=vector_bytes(
            values.astype(np.int64).view(np.uint64))), b""
    pairs = pair_secrets(private, publics, job_id=job_id, me=me, peers=participants)
    m = secagg.mask(values, me=me, round_id=round_id, job_id=job_id, threshold=threshold,
                    pairs=pairs)
    reply = pb.MeasureReply(round=round_id, masked=vector_bytes(m.masked))
    for v, blob in m.encrypted_shares.items():
        reply.encrypted_shares[v] = blob
    return reply, m.own_share


def party_unmask_reply(req: pb.UnmaskRequest, *, job_id: str, me: int, threshold: int,
                       participants: Sequence[int], private: bytes,
                       publics: Mapping[int, bytes], own_share: bytes) -> pb.UnmaskReply:
    """Release self-mask shares for survivors and pair seeds for dropped parties, never both."""
    survivors, dropped = set(req.survivors), set(req.dropped)
    if survivors & dropped:
        raise ProtocolError(f"round {req.round}: parties {sorted(survivors & dropped)} are named "
                            "both survivor and dropped; refusing to unmask")
    if not survivors | dropped <= set(participants):
        raise ProtocolError(f"round {req.round}: unmask names parties that were not asked")
    if len(survivors) < threshold:
        raise ProtocolError(f"round {req.round}: only {len(survivors)} survivors, below the "
                            f"threshold {threshold}; refusing to unmask")
    if me not in survivors:
        raise ProtocolError(f"round {req.round}: this party is not listed as a survivor")
    reply = pb.UnmaskReply(round=req.round)
    for u in survivors:
        if u == me:
            reply.self_mask_shares[u] = own_share
            continue
        if u not in req.shares_for_you:
            raise ProtocolError(f"round {req.round}: no share from survivor {u} was relayed")
        pair = secagg.pair_secret(private, publics[u], job_id=job_id, me=me, peer=u)
        reply.self_mask_shares[u] = secagg.decrypt_share(
            pair, req.shares_for_you[u], job_id=job_id, round_id=req.round, sender=u, recipient=me)
    for d in dropped:
        pair = secagg.pair_secret(private, publics[d], job_id=job_id, me=me, peer=d)
        reply.dropped_pair_seeds[d] = secagg.round_seed(pair, req.round)
    return reply


@dataclass
class CoordinatorRound:
    """The coordinator's state for one round: it only ever holds masked vectors and the sum."""

    round_id: int
    channel: str
    participants: list[int]
    length: int
    threshold: int
    masked: dict[int, np.ndarray] = field(default_factory=dict)
    shares_to: dict[int, dict[int, bytes]] = field(default_factory=dict)

    def collect(self, replies: Mapping[int, pb.MeasureReply]) -> list[int]:
        """Take the measure replies; return the survivors. Raises RoundFailed below t."""
        for u, r in replies.items():
            if r.round != self.round_id:
                raise ProtocolError(f"party {u}: reply for round {r.round}, expected "
                                    f"{self.round_id}")
            self.masked[u] = bytes_vector(r.masked, length=self.length, sender=f"party {u}")
            if self.channel != "plain":
                missing = set(self.participants) - {u} - set(r.encrypted_shares)
                if missing:
                    raise ProtocolError(f"party {u}: no encrypted share for parties "
                                        f"{sorted(missing)}")
                for v, blob in r.encrypted_shares.items():
                    self.shares_to.setdefault(v, {})[u] = blob
        survivors = sorted(self.masked)
        if len(survivors) < self.threshold:
            raise RoundFailed(f"round {self.round_id}: {len(survivors)} of "
                              f"{len(self.participants)} parties replied, below the threshold "
                              f"t={self.threshold}; the job stops and no sum is revealed")
        return survivors

    @property
    def survivors(self) -> list[int]:
        return sorted(self.masked)

    @property
    def dropped(self) -> list[int]:
        return sorted(set(self.participants) - set(self.masked))

    def unmask_requests(self, confirmations: Mapping[int, bytes] | None = None,
                        ) -> dict[int, pb.UnmaskRequest]:
        """One request per confirming survivor (default: every survivor), carrying every
        survivor's confirmation."""
        confirmations = confirmations or {}
        out = {}
        for v in sorted(confirmations) or self.survivors:
            req = pb.UnmaskRequest(round=self.round_id, survivors=self.survivors,
                                   dropped=self.dropped)
            for u, sig in confirmations.items():
                req.confirmations[u] = sig
            for u, blob in self.shares_to.get(v, {}).items():
                if u in self.masked:
                    req.shares_for_you[u] = blob
            out[v] = req
        return out

    def plain_sum(self) -> np.ndarray:
        total = np.zeros(self.length, dtype=np.uint64)
        for y in self.masked.values():
            total += y
        return total.view(np.int64)

    def finish(self, replies: Mapping[int, pb.UnmaskReply]) -> np.ndarray:
        """Remove all masks using the released shares and seeds; return the exact sum."""
        if len(replies) < self.threshold:
            raise RoundFailed(f"round {self.round_id}: {len(replies)} parties answered the unmask "
                              f"step, below the threshold t={self.threshold}; the job stops")
        shares: dict[int, dict[int, bytes]] = {}
        seeds: dict[tuple[int, int], bytes] = {}
        for v, r in replies.items():
            for u, s in r.self_mask_shares.items():
                shares.setdefault(u, {})[v] = s
            for d, s in r.dropped_pair_seeds.items():
                seeds[(d, v)] = s
        lost = [(d, v) for d in self.dropped for v in self.survivors if (d, v) not in seeds]
        if lost:
            raise RoundFailed(
                f"round {self.round_id}: survivors {sorted({v for _, v in lost})} left during "
                f"unmasking while {sorted({d for d, _ in lost})} had dropped earlier; their pair "
                "masks cannot be removed, so the job stops (no partial sum is revealed)")
        return secagg.unmask_sum(self.masked, self_shares=shares, dropped_seeds=seeds,
                                 threshold=self.threshold)
