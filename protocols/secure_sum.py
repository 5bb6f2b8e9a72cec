"""One secure-sum round, both halves: what a party sends and what the coordinator does with it.

Messages, in order (crypto.secagg has the keys and the masking):

0. Mask keys, once before the first masked round (and for any round whose keys the coordinator
   does not hold): MaskKeysRequest(round r, participants, job keys) -> each party answers with a
   MaskKeyAnnouncement for round r: its fresh X25519 mask key M_u(r), signed with its identity
   key over (job, u, r), and Shamir shares (threshold t, holders: the participants) of the
   private half m_u(r), each encrypted to its holder under their pair secret (kind "mask-key").
1. Measure (MeasureRequest or EvaluateRequest of round r, carrying every participant's signed
   M_v(r)): each party checks every signature, masks its vector with its pair seeds s_uv(r)
   (from m_u(r) and M_v(r)) and a fresh self-mask b_u(r), then deletes m_u(r). It replies with
   the masked vector, encrypted Shamir shares of b_u(r), and the announcement of its next
   round's mask key M_u(r + 1) with encrypted shares of m_u(r + 1): keys travel one round ahead.
2. Confirm (Bonawitz et al.'s consistency check): each survivor signs the survivor list with a
   digest of the request it answered, once per round.
3. Unmask: carrying t such signatures, the coordinator names the survivors U2 (replies
   received) and the dropped D (asked, not received) and relays to each survivor the shares
   addressed to it. Each party releases, for every survivor u, its share of b_u(r), and for
   every dropped d, its share of m_d(r), never the reverse. The coordinator recovers m_d(r)
   (checked against the signed M_d(r)), computes s_dv(r) with every survivor v and removes
   them; it needs nothing of v for that, so a survivor that also leaves during unmasking no
   longer stops the round: any t answers suffice.

A party checks that U2 and D are disjoint, that U2 holds at least t parties and that t
survivors signed exactly the list it confirmed (with the digest of the request it answered),
and it answers each round's unmask once. A survivor that did not sign may have been sent
another request (another noise level, or groupings that isolate it): its self-mask shares are
encrypted with the digest of the request it answered in their associated data, so a holder
can open them only if it answered that same request, and the coordinator never gets b_u(r) of
a survivor whose request differs from the signers'. So at least t - c honest noise shares of
one request are in every sum it can open. So for no (party, round) are both its
self-mask and its mask key released: each honest party releases one of the two for each party,
all honest parties that unmask see the same lists, and even a coordinator lying to different
parties would need t - c honest releases of each, more than the n - c honest parties when
2t >= n + c + 2 (protocols.spec). Who learns what (crypto.secagg has the full argument):
- the coordinator: masked vectors, encrypted shares, public keys, and per round the sum over
  U2 and the mask keys m_d(r) of the dropped. A party takes its round-r key out of its state
  the moment it opens round r, whatever follows (an answer, a refusal, an error), and never
  uses it again; if d did answer and is named dropped anyway, its self-mask b_d(r) is never
  released (one signed list per round), so m_d(r) reveals no vector; a survivor's vector keeps
  its pair masks with the other honest survivors, whose mask keys nobody releases. Mask keys
  are one-shot: reconstructing a job-long key would open the pair masks of d's earlier
  rounds, in which its self-mask was released, and with them d's earlier vectors.
- a coordinator colluding with c < t parties: also the colluders' keys, seeds and their
  fewer-than-t shares of every honest secret, which reveal nothing (Shamir); beyond the
  survivors' sum, only what the colluders' own inputs let it subtract (the noise is sized for
  t - c honest survivors).
- each party: its own secrets, its pair secrets, its pair seeds with each peer of a round in
  which it takes part, and one share of each peer's self-mask seed and mask key.
The sparse graph (SecAgg+, Bell et al. 2020; the spec's graph "sparse"). Everything above
holds with "every other participant" read as "every neighbour among the participants" and t
for Shamir read as t_k: crypto.secagg_graph derives one public Erdős–Rényi graph of expected
degree k = O(log n) per job (every role, from the job id, the spec and all n signed job keys;
why the coordinator cannot bias it is there) and the smallest k and t_k for n, t, c with
σ = 40, η = 30. A party masks with, and shares b_u(r) and m_u(r) to, its neighbours only; the
coordinator rebuilds b_u from t_k of u's neighbours, and m_d only for a dropped d that has a
surviving neighbour, pairing it with those neighbours only. The message flow, the one-shot
round keys, the signed survivor list with the global t and 2t >= n + c + 2 are unchanged, so
all honest parties that unmask still see the same survivors and dropped parties and none
releases both halves for any party (the argument above needs nothing of the graph). What the
graph changes, at (n, t, c) = (1000, 800, 50) with k = 102, t_k = 29 (`SparseParams`; the
graph is sized for at least 5% colluders whatever c the spec declares, so c = 0 gets the same
graph: sized for c = 0, t_k would be 2, and two colluding neighbours of a party could rebuild
its mask key):
- secret from whom: as above; in addition a party holds shares, pair secrets and pair seeds
  only for its neighbours, and learns nothing of the others beyond their public keys.
- a coordinator colluding with c parties: an honest u's secrets have |N(u) ∩ C| shares among
  the colluders, at most c_k < t_k for every honest u except with probability below 2^-σ
  (Binomial(c, p) tail, union over the n - c honest parties; the colluders are fixed before
  the keys that seed the graph are drawn). The masks between two honest survivors are
  removed only if one is rebuilt, which never happens; so what the coordinator can unmask is
  the sum over each connected part of the graph on the honest survivors. That graph stays
  connected except with probability below 2^-σ (both events together) when the dropouts do
  not depend on the graph (the paper's semi-honest model), so it learns, as with the
  complete graph, the sum over all survivors and nothing finer.
- dropouts: a round finishes when at least t parties survive (as before), every survivor
  keeps at least t_k surviving neighbours, every dropped party with a surviving neighbour
  keeps t_k of them, and t_k of each rebuilt secret's holders answer the unmask step. Up to
  n - t dropouts that do not depend on the graph meet this except with probability below
  2^-η; otherwise the coordinator stops the round (`check_graph`, `secagg_finish`:
  RoundFailed naming the parties short of neighbours), and every party refuses to unmask a
  survivor list that leaves a survivor fewer than t_k surviving neighbours. A wrong or
  partial sum is never returned.
- refusals when the guarantee cannot hold: a spec asking "sparse" for n, t, c where no graph
  sparser than complete reaches 2^-σ and 2^-η (small n) is refused by every party
  (protocols.spec, with the reason and "use the complete graph"); "auto" (asked for, not the
  default) picks the complete graph there and below `secagg_graph.SPARSE_FROM` parties. A
  sparse job missing any party's job key stops before its first round.
- a survivor list on which the graph is not connected is never unmasked: every party refuses
  it and the coordinator stops the round (`Graph.split`). Without this check a coordinator
  that chooses a round's participants (or names live parties dropped) after seeing the graph
  could leave out all outside neighbours of a few honest parties (a triangle at n = 1000 has
  about 76, within n - t = 200) and open their sum, noised for t - c parties, alone. For c = 0
  the check is exact; for c > 0, colluders could still bridge two honest parts (a cut needs
  the graph on the honest survivors to split while the colluders keep it connected), the
  case `SparseParams.adaptive_log2` bounds, far weaker at k = O(log n) than 2^-σ. This and
  colluding parties that grind their job keys after seeing the honest ones are outside the
  paper's semi-honest guarantee; jobs that must hold against such deviations use the
  complete graph, the default (sparse is asked for in the spec, never assumed).

This is the "secagg" channel of protocols.channels; with channel "plain" (simulation and tests
only) the vector goes unmasked, without keys or an unmask exchange; with channel "he" it goes
encrypted under the key holder's public context and the key holder decrypts the sum
(protocols.channels.HeChannel, crypto.he).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsynth.crypto import secagg, secagg_graph, shamir
from fedsynth.crypto.secagg_graph import Graph
from fedsynth.errors import JobStopped
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.protocols.messages import ProtocolError, bytes_vector, vector_bytes

if TYPE_CHECKING:
    from fedsynth.protocols.channels import Channel
    from fedsynth.protocols.spec import JobSpec

log = logging.getLogger("fedsynth.coordinator")


class RoundFailed(JobStopped):
    """A round that cannot finish safely (too few survivors); nothing was revealed."""


def pair_secrets(private: bytes, publics: Mapping[int, bytes], *, job_id: str, me: int,
                 peers: Sequence[int]) -> dict[int, bytes]:
    return {v: secagg.pair_secret(private, publics[v], job_id=job_id, me=me, peer=v)
            for v in peers if v != me}


def job_graph(spec: JobSpec | None, *, job_id: str,
              job_keys: Mapping[int, bytes]) -> Graph | None:
    """The job's sparse graph (crypto.secagg_graph), the same at every role: from the spec and
    every party's signed job key. None for the complete graph. ProtocolError if a sparse job
    lacks a party's job key."""
    params = spec.sparse_params() if spec is not None else None
    if spec is None or params is None:
        return None
    try:
        seed = secagg_graph.graph_seed(job_id=job_id, parties=spec.parties,
                                       threshold=spec.threshold, colluders=spec.colluders,
                                       identity_keys=spec.identity_keys, job_keys=job_keys)
    except secagg_graph.GraphError as exc:
        raise ProtocolError(str(exc)) from None
    return secagg_graph.sparse_graph(seed, params)


def peers_of(graph: Graph | None, me: int, participants: Sequence[int]) -> list[int]:
    """Whom `me` masks with and shares to in a round: every other participant (complete
    graph) or its neighbours among them (sparse graph)."""
    if graph is None:
        return [v for v in participants if v != me]
    return graph.among(me, participants)


def _peers_and_threshold(graph: Graph | None, me: int, members: Sequence[int], threshold: int,
                         round_id: int, what: str) -> tuple[list[int], int]:
    """Whom this party masks with and shares to among `members`, and the Shamir threshold of
    its shares; a ProtocolError when a sparse graph leaves it too few neighbours for them."""
    peers = peers_of(graph, me, members)
    t = share_threshold(graph, threshold)
    if graph is not None and len(peers) + 1 < t:
        raise ProtocolError(f"round {round_id}: this party has {len(peers)} neighbours among the "
                            f"participants, fewer than the {t} its {what} need; refusing")
    return peers, t


def share_threshold(graph: Graph | None, threshold: int) -> int:
    """Shares that rebuild a secret: the job's t (complete graph) or the graph's t_k."""
    return threshold if graph is None else graph.share_threshold


# --- the party's side ------------------------------------------------------------------------


def party_mask_key(*, job_id: str, me: int, round_id: int, holders: Sequence[int],
                   threshold: int, private: bytes, publics: Mapping[int, bytes],
                   identity_key: bytes, graph: Graph | None = None,
                   ) -> tuple[pb.MaskKeyAnnouncement, bytes]:
    """A fresh mask key for round `round_id`: its announcement and the private half to keep.

    The private half is Shamir-shared with threshold t among `holders` (the participants of
    the round in which it is announced, this party included; in a sparse graph, its
    neighbours among them, with the graph's t_k); the own share is discarded."""
    peers, t = _peers_and_threshold(graph, me, holders, threshold, round_id, "key shares")
    pairs = pair_secrets(private, publics, job_id=job_id, me=me, peers=peers)
    key = secagg.new_mask_key(me=me, round_id=round_id, job_id=job_id, threshold=t,
                              pairs=pairs)
    ann = pb.MaskKeyAnnouncement(round=round_id, public_key=key.keys.public,
                                 signature=secagg.sign_mask_key(
                                     identity_key, job_id=job_id, party=me, round_id=round_id,
                                     public_key=key.keys.public))
    for v, blob in key.encrypted_shares.items():
        ann.encrypted_shares[v] = blob
    return ann, key.keys.private


def verified_mask_keys(keys: Mapping[int, bytes], signatures: Mapping[int, bytes], *,
                       job_id: str, round_id: int, participants: Sequence[int],
                       identity_of: Callable[[int], bytes]) -> dict[int, bytes]:
    """Every participant's round mask key, each checked against its identity signature.

    The answer is remembered by everything it depends on, compared exactly (job, round, and
    each participant's index, identity key, mask key and signature): a pure function, which a
    simulation of n parties in one process would otherwise evaluate n times over n keys."""
    entries = tuple(
        (p, bytes(identity_of(p)), bytes(keys.get(p, b"")), bytes(signatures.get(p, b"")))
        for p in participants)
    return dict(_verified_mask_keys(job_id, round_id, entries))  # a copy: the memory's is kept


@lru_cache(maxsize=64)
def _verified_mask_keys(job_id: str, round_id: int,
                        entries: tuple[tuple[int, bytes, bytes, bytes], ...]) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for p, identity, key, signature in entries:
        if not secagg.verify_mask_key(identity, signature, job_id=job_id, party=p,
                                      round_id=round_id, public_key=key):
            raise ProtocolError(f"round {round_id}: the mask key of party {p} is missing or "
                                "does not carry its identity signature for this round; "
                                "refusing (possible key substitution)")
        out[p] = key
    return out


def party_measure_reply(values: np.ndarray, *, channel: str, job_id: str, me: int, round_id: int,
                        participants: Sequence[int], threshold: int, private: bytes,
                        publics: Mapping[int, bytes], mask_private: bytes = b"",
                        mask_publics: Mapping[int, bytes] | None = None,
                        identity_key: bytes = b"", request_digest: bytes = b"",
                        public_context: bytes = b"", key_holder_key: bytes = b"",
                        spec: JobSpec | None = None) -> tuple[pb.MeasureReply, bytes, bytes]:
    """The party's measure reply over `channel` (`protocols.channels`, `Channel.contribute`);
    under secagg, `secagg_measure_reply`."""
    return _channel(channel).contribute(
        values, job_id=job_id, me=me, round_id=round_id, participants=participants,
        threshold=threshold, private=private, publics=publics, mask_private=mask_private,
        mask_publics=mask_publics, identity_key=identity_key, request_digest=request_digest,
        public_context=public_context, key_holder_key=key_holder_key, spec=spec)


def secagg_measure_reply(values: np.ndarray, *, job_id: str, me: int, round_id: int,
                         participants: Sequence[int], threshold: int, private: bytes,
                         publics: Mapping[int, bytes], mask_private: bytes = b"",
                         mask_publics: Mapping[int, bytes] | None = None,
                         identity_key: bytes = b"", request_digest: bytes = b"",
                         graph: Graph | None = None,
                         ) -> tuple[pb.MeasureReply, bytes, bytes]:
    """The party's reply for a noised vector: (reply, own self-mask share to keep, private half
    of its next round's mask key to keep). `mask_private` is this party's round mask key and
    `mask_publics` every participant's (verified); the caller deletes `mask_private` after.
    In a sparse `graph` the party masks with, and shares to, its neighbours only."""
    mask_publics = mask_publics or {}
    if set(mask_publics) != set(participants):
        raise ProtocolError(f"round {round_id}: mask keys of parties {sorted(mask_publics)}, "
                            f"participants {sorted(participants)}")
    if secagg.public_of(mask_private) != mask_publics[me]:
        raise ProtocolError(f"round {round_id}: this party's own mask key was not relayed "
                            "faithfully; refusing")
    peers, t = _peers_and_threshold(graph, me, participants, threshold, round_id, "shares")
    pairs = pair_secrets(private, publics, job_id=job_id, me=me, peers=peers)
    seeds = secagg.round_pair_seeds(mask_private, {v: mask_publics[v] for v in peers},
                                    job_id=job_id, round_id=round_id, me=me)
    m = secagg.mask(values, me=me, round_id=round_id, job_id=job_id, threshold=t,
                    pairs=pairs, seeds=seeds, context=request_digest)
    reply = pb.MeasureReply(round=round_id, masked=vector_bytes(m.masked))
    for v, blob in m.encrypted_shares.items():
        reply.encrypted_shares[v] = blob
    ann, next_private = party_mask_key(job_id=job_id, me=me, round_id=round_id + 1,
                                       holders=participants, threshold=threshold,
                                       private=private, publics=publics,
                                       identity_key=identity_key, graph=graph)
    reply.next_mask_key.CopyFrom(ann)
    return reply, m.own_share, next_private


def party_unmask_reply(req: pb.UnmaskRequest, *, job_id: str, me: int, threshold: int,
                       participants: Sequence[int], private: bytes,
                       publics: Mapping[int, bytes], own_share: bytes,
                       request_digest: bytes = b"", graph: Graph | None = None,
                       ) -> pb.UnmaskReply:
    """Release self-mask shares for survivors and mask-key shares for dropped parties, never
    both for one party (the lists must be disjoint; the caller answers each round once). In a
    sparse `graph`, only for its neighbours, and only if every survivor keeps at least t_k
    surviving neighbours (else the honest survivors might not stay connected, and the sum of
    a small group could come out)."""
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
    if graph is not None:
        short = graph.short_of(survivors, survivors)
        if short:
            raise ProtocolError(f"round {req.round}: survivors {short[:10]} keep fewer than "
                                f"t_k={graph.share_threshold} surviving neighbours in the job's "
                                "graph, beyond the dropouts it is built for; refusing to unmask")
        if graph.split(survivors):
            raise ProtocolError(f"round {req.round}: the job's graph on the {len(survivors)} "
                                "survivors is not connected, so the sum of one part of it "
                                "could be opened alone; refusing to unmask")
        mine = graph.neighbours(me)
        survivors = {u for u in survivors if u in mine or u == me}
        dropped = {d for d in dropped if d in mine}
    reply = pb.UnmaskReply(round=req.round)
    for u in sorted(survivors):
        if u == me:
            reply.self_mask_shares[u] = own_share
            continue
        if u not in req.shares_for_you:
            raise ProtocolError(f"round {req.round}: no share from survivor {u} was relayed")
        pair = secagg.pair_secret(private, publics[u], job_id=job_id, me=me, peer=u)
        reply.self_mask_shares[u] = secagg.decrypt_share(
            pair, req.shares_for_you[u], job_id=job_id, round_id=req.round, sender=u, recipient=me,
            kind=secagg.SELF_MASK, context=request_digest)
    for d in sorted(dropped):
        if d not in req.key_shares_for_you:
            raise ProtocolError(f"round {req.round}: no share of dropped party {d}'s mask key "
                                "was relayed")
        pair = secagg.pair_secret(private, publics[d], job_id=job_id, me=me, peer=d)
        reply.dropped_key_shares[d] = secagg.decrypt_share(
            pair, req.key_shares_for_you[d], job_id=job_id, round_id=req.round, sender=d,
            recipient=me, kind=secagg.MASK_KEY)
    return reply


# --- the coordinator's side ------------------------------------------------------------------


@dataclass
class RoundKeys:
    """The mask keys of one round as the coordinator holds them: each party's signed public
    half and the encrypted shares of its private half (sender -> holder -> blob)."""

    round_id: int
    publics: dict[int, bytes] = field(default_factory=dict)
    signatures: dict[int, bytes] = field(default_factory=dict)
    shares: dict[int, dict[int, bytes]] = field(default_factory=dict)

    def add(self, party: int, ann: pb.MaskKeyAnnouncement, *, job_id: str, identity: bytes,
            holders: Sequence[int], graph: Graph | None = None) -> None:
        """Check and keep one party's announcement (ProtocolError if it is not usable): a
        share for every other holder (in a sparse graph, every neighbour among them)."""
        if ann.round != self.round_id:
            raise ProtocolError(f"party {party}: mask key for round {ann.round}, expected "
                                f"{self.round_id}")
        if not secagg.verify_mask_key(identity, ann.signature, job_id=job_id, party=party,
                                      round_id=self.round_id, public_key=ann.public_key):
            raise ProtocolError(f"party {party}: its round-{self.round_id} mask key does not "
                                "carry its identity signature")
        missing = set(peers_of(graph, party, holders)) - set(ann.encrypted_shares)
        if missing:
            raise ProtocolError(f"party {party}: no encrypted mask-key share for parties "
                                f"{sorted(missing)}")
        self.publics[party] = bytes(ann.public_key)
        self.signatures[party] = bytes(ann.signature)
        self.shares[party] = {int(v): bytes(b) for v, b in ann.encrypted_shares.items()}

    def fill(self, req: pb.MeasureRequest | pb.EvaluateRequest | pb.TrainRequest,
             participants: Sequence[int]) -> None:
        """Put the participants' signed mask keys into a round's request."""
        for p in participants:
            req.mask_keys[p] = self.publics[p]
            req.mask_key_signatures[p] = self.signatures[p]


@dataclass
class CoordinatorRound:
    """The coordinator's state for one round: it only ever holds masked vectors and the sum.

    `channel` names the round's channel (protocols.channels), which checks the round, takes
    what comes with each reply, builds the follow-up requests and finishes the sum. Under
    secagg, `keys` are this round's mask keys and `identities` the parties' identity keys, to
    check the next round's announcements, which `collect` gathers into `next_keys`. Under a
    channel with a key holder (he), `he_context` is the key holder's public context (it
    encrypts and adds, it cannot decrypt), `ciphertexts` each party's encrypted vector and
    `decryption` the key holder's answer for the round's sum."""

    round_id: int
    channel: str
    participants: list[int]
    length: int
    threshold: int
    job_id: str = ""
    keys: RoundKeys | None = None
    identities: Mapping[int, bytes] = field(default_factory=dict)
    graph: Graph | None = None  # secagg's sparse graph (crypto.secagg_graph); None: complete
    he_context: Any = None  # crypto.he.PublicContext, for channels with a key holder
    job_keys: Any = None  # the parties' signed job keys from setup (coordinator.exchange)
    request_digest: bytes = b""  # sha256 of the round's request as sent to every participant
    masked: dict[int, np.ndarray] = field(default_factory=dict)
    ciphertexts: dict[int, list[bytes]] = field(default_factory=dict)
    decryption: pb.DecryptReply | None = None
    shares_to: dict[int, dict[int, bytes]] = field(default_factory=dict)
    replied: set[int] = field(default_factory=set)
    next_keys: RoundKeys = field(init=False)

    def __post_init__(self) -> None:
        self.next_keys = RoundKeys(self.round_id + 1)
        _channel(self.channel).check_round(self)

    def collect(self, replies: Mapping[int, pb.MeasureReply]) -> list[int]:
        """Take the measure replies; return the survivors. Raises RoundFailed below t."""
        channel = _channel(self.channel)
        for u, r in replies.items():
            if r.round != self.round_id:
                raise ProtocolError(f"party {u}: reply for round {r.round}, expected "
                                    f"{self.round_id}")
            if not channel.key_holder:  # a key holder's channel sends ciphertexts instead
                self.masked[u] = bytes_vector(r.masked, length=self.length, sender=f"party {u}")
            channel.collect(self, u, r)
            self.replied.add(u)
        survivors = self.survivors
        if len(survivors) < self.threshold:
            raise RoundFailed(f"round {self.round_id}: {len(survivors)} of "
                              f"{len(self.participants)} parties replied, below the threshold "
                              f"t={self.threshold}; the job stops and no sum is revealed")
        return survivors

    @property
    def survivors(self) -> list[int]:
        return sorted(self.replied)

    @property
    def dropped(self) -> list[int]:
        return sorted(set(self.participants) - self.replied)

    def unmask_requests(self, confirmations: Mapping[int, bytes] | None = None,
                        ) -> dict[int, pb.UnmaskRequest]:
        """The channel's follow-up request for each party asked to release (none for a channel
        without a follow-up exchange)."""
        return _channel(self.channel).requests(self, confirmations or {})

    def plain_sum(self) -> np.ndarray:
        """The sum of the vectors as received (the whole sum for an unmasked channel)."""
        total = np.zeros(self.length, dtype=np.uint64)
        for y in self.masked.values():
            total += y
        return total.view(np.int64)

    def finish(self, replies: Mapping[int, pb.UnmaskReply]) -> np.ndarray:
        """The exact sum, from the follow-up replies (none for a channel without one)."""
        return _channel(self.channel).finish(self, replies)


# --- secagg's coordinator side (protocols.channels.SecAggChannel) ----------------------------


def secagg_check_round(rnd: CoordinatorRound) -> None:
    if rnd.keys is None or not set(rnd.participants) <= set(rnd.keys.publics):
        raise ProtocolError(f"round {rnd.round_id}: no mask keys for every participant")


def secagg_collect(rnd: CoordinatorRound, u: int, r: pb.MeasureReply) -> None:
    """Keep party u's encrypted self-mask shares (by holder) and its next round's mask key."""
    peers = set(peers_of(rnd.graph, u, rnd.participants))
    missing = peers - set(r.encrypted_shares)
    if missing:
        raise ProtocolError(f"party {u}: no encrypted share for parties {sorted(missing)}")
    for v, blob in r.encrypted_shares.items():
        if v in peers:
            rnd.shares_to.setdefault(v, {})[u] = blob
    try:  # a party without a usable next key just sits out the next round
        rnd.next_keys.add(u, r.next_mask_key, job_id=rnd.job_id,
                          identity=rnd.identities.get(u, b""), holders=rnd.participants,
                          graph=rnd.graph)
    except ProtocolError as exc:
        log.warning("%s; the party cannot take part in round %d", exc, rnd.round_id + 1)


def secagg_unmask_requests(rnd: CoordinatorRound, confirmations: Mapping[int, bytes],
                           ) -> dict[int, pb.UnmaskRequest]:
    """One request per confirming survivor (default: every survivor), carrying every
    survivor's confirmation, the self-mask shares of the survivors and the mask-key shares
    of the dropped parties addressed to it."""
    key_shares = rnd.keys.shares if rnd.keys is not None else {}
    check_graph(rnd)
    out = {}
    for v in sorted(confirmations) or rnd.survivors:
        req = pb.UnmaskRequest(round=rnd.round_id, survivors=rnd.survivors,
                               dropped=rnd.dropped)
        for u, sig in confirmations.items():
            req.confirmations[u] = sig
        for u, blob in rnd.shares_to.get(v, {}).items():
            if u in rnd.masked:
                req.shares_for_you[u] = blob
        for d in rnd.dropped:
            if v in key_shares.get(d, {}):
                req.key_shares_for_you[d] = key_shares[d][v]
        out[v] = req
    return out


def check_graph(rnd: CoordinatorRound) -> None:
    """In a sparse graph, refuse a round whose dropouts exceed what the graph is built for:
    a survivor with fewer than t_k surviving neighbours (the parties refuse to unmask it), or
    a dropped party whose pair masks fewer than t_k surviving neighbours could remove."""
    g = rnd.graph
    if g is None:
        return
    short = g.short_of(rnd.survivors, rnd.survivors)
    lost = g.short_of(rnd.survivors, rnd.dropped, isolated_ok=True)
    if g.split(rnd.survivors):
        raise RoundFailed(f"round {rnd.round_id}: the job's sparse graph on the "
                          f"{len(rnd.survivors)} survivors is not connected (the parties refuse "
                          "to unmask such a list): the job stops, no sum is revealed; rerun "
                          "with the complete graph or fewer dropouts")
    if short or lost:
        raise RoundFailed(f"round {rnd.round_id}: {len(rnd.dropped)} of {len(rnd.participants)} "
                          f"parties dropped out, and parties {sorted(short + lost)[:10]} keep "
                          f"fewer than t_k={g.share_threshold} surviving neighbours in the job's "
                          "sparse graph: beyond the dropouts it is built for, so the job stops "
                          "(no sum is revealed); rerun with the complete graph or fewer dropouts")


def secagg_finish(rnd: CoordinatorRound, replies: Mapping[int, pb.UnmaskReply]) -> np.ndarray:
    """Remove all masks using the released shares; return the exact sum.

    Complete graph: any t answers suffice, whoever else dropped in the measure or the unmask
    step. Sparse graph: at least t answers, and t_k of each rebuilt secret's neighbours."""
    t_k = share_threshold(rnd.graph, rnd.threshold)
    if len(replies) < rnd.threshold:
        raise RoundFailed(f"round {rnd.round_id}: {len(replies)} parties answered the unmask "
                          f"step, below the threshold t={rnd.threshold}; the job stops")
    shares: dict[int, dict[int, bytes]] = {}
    alive = set(rnd.survivors)
    key_shares: dict[int, dict[int, bytes]] = {  # the dropped whose masks are in the sum
        d: {} for d in rnd.dropped if rnd.graph is None or rnd.graph.neighbours(d) & alive}
    for v, r in replies.items():
        if r.round != rnd.round_id:
            raise ProtocolError(f"party {v}: unmask reply for round {r.round}, expected "
                                f"{rnd.round_id}")
        for u, s in r.self_mask_shares.items():
            if u in rnd.masked:
                shares.setdefault(u, {})[v] = s
        for d, s in r.dropped_key_shares.items():
            if d in key_shares:
                key_shares[d][v] = s
    short = sorted(d for d, ks in key_shares.items() if len(ks) < t_k)
    if short:
        raise RoundFailed(f"round {rnd.round_id}: fewer than t={t_k} shares of "
                          f"the mask keys of dropped parties {short}; the job stops (no "
                          "partial sum is revealed)")
    few = sorted(u for u in rnd.masked if len(shares.get(u, {})) < t_k)
    if few:
        raise RoundFailed(f"round {rnd.round_id}: fewer than t={t_k} shares of the self-masks "
                          f"of survivors {few[:10]}; the job stops (no partial sum is revealed)")
    if key_shares and rnd.keys is None:
        raise RoundFailed(f"round {rnd.round_id}: no mask keys for the dropped parties")
    try:
        seeds = secagg.dropped_pair_seeds(
            key_shares, rnd.keys.publics if rnd.keys is not None else {}, rnd.survivors,
            job_id=rnd.job_id, round_id=rnd.round_id, threshold=t_k,
            neighbours=None if rnd.graph is None else {
                d: rnd.graph.neighbours(d) for d in key_shares})
        return secagg.unmask_sum(rnd.masked, self_shares=shares, dropped_seeds=seeds,
                                 threshold=t_k)
    except (secagg.SecAggError, shamir.ShamirError) as exc:
        raise RoundFailed(f"round {rnd.round_id}: the released shares do not unmask the "
                          f"sum ({exc}); the job stops (no partial sum is revealed)") from exc


def _channel(name: str) -> Channel:
    """The registered channel `name` (protocols.channels imports this module for secagg's
    halves, so the registry is looked up when first needed, not at import)."""
    from fedsynth.protocols import channels

    return channels.get(name)
