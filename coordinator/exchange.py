"""The coordinator's side of the wire: numbered steps, validated replies, secure-sum rounds.

Mask keys (protocols.secure_sum) travel one round ahead: the replies of round r carry the
parties' keys for round r + 1, which the Exchange keeps in `round_keys`. Before a masked round
whose keys it does not hold for every participant (the job's first one), `secure_sum_of` asks
the parties without one for it in an extra exchange (mask_keys_request); a party that does not
deliver a usable key sits that round out.

Under a channel with a key holder (he), the key holder is party `KEY_HOLDER` (0) of the
Exchange: `setup_request` first asks it for the job's public context (verified against the
key holder's identity in the spec) and hands that to the parties with the setup request; each
round then ends with one decrypt request to the key holder for the contributors' summed
ciphertext instead of the confirm and unmask exchanges. The coordinator only ever holds the
public context: it adds ciphertexts, it cannot decrypt them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedsynth.crypto import he
from fedsynth.crypto.keys import verify_key
from fedsynth.crypto.secagg_graph import Graph
from fedsynth.errors import JobStopped
from fedsynth.protocols import channels
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.protocols.messages import (
    KEY_HOLDER,
    PartyRefused,
    ProtocolError,
    pack,
    unpack,
    verify,
)
from fedsynth.protocols.secure_sum import CoordinatorRound, RoundFailed, RoundKeys, job_graph
from fedsynth.protocols.spec import JobSpec, spec_digest
from fedsynth.protocols.transport import Transport
from fedsynth.synthesis.encoding import Grouping

log = logging.getLogger("fedsynth.coordinator")


class JobRefused(JobStopped):
    """One or more parties refused the job; lists each party's reasons."""

    def __init__(self, refusals: Mapping[int, PartyRefused]) -> None:
        self.refusals = dict(refusals)
        lines = [str(r) for _, r in sorted(self.refusals.items())]
        super().__init__("the job was refused:\n  " + "\n  ".join(lines))


@dataclass
class Exchange:
    transport: Transport
    job_id: str
    timeout: float = 600.0
    step: int = 0
    identities: Mapping[int, bytes] = field(default_factory=dict)  # party -> identity key
    bytes_sent: dict[int, int] = field(default_factory=dict)  # party -> bytes it sent us
    round_keys: dict[int, RoundKeys] = field(default_factory=dict)  # round -> its mask keys
    he_context: he.PublicContext | None = None  # the key holder's public context (he)
    graph: Graph | None = None  # secagg's sparse graph (protocols.secure_sum.job_graph)

    def call(self, bodies: Mapping[int, tuple[str, object]], expect: str) -> dict[int, pb.Envelope]:
        """Send one request per party; return the valid replies (missing = dropped)."""
        self.step += 1
        requests = {}
        for p, (fname, msg) in bodies.items():
            env = pb.Envelope(job_id=self.job_id, step=self.step, party=p)
            getattr(env, fname).CopyFrom(msg)
            requests[p] = pack(env)
        raw = self.transport.exchange(requests, timeout=self.timeout)
        replies: dict[int, pb.Envelope] = {}
        refused: dict[int, PartyRefused] = {}
        for p, data in raw.items():
            if p not in requests:
                log.warning("ignored an unsolicited reply from party %d", p)
                continue
            self.bytes_sent[p] = self.bytes_sent.get(p, 0) + len(data)
            who = "the key holder" if p == KEY_HOLDER else f"party {p}"
            try:
                env = unpack(data, sender=who, expect=expect, job_id=self.job_id,
                             after_step=self.step - 1)
                if env.step != self.step or env.party != p:
                    raise ProtocolError(f"{who}: reply is for step {env.step} / party "
                                        f"{env.party}, expected step {self.step} / party {p}")
                verify(env, self.identities.get(p, b""), sender=who)
                if expect == "setup_reply" and not verify_key(
                        self.identities[p], env.setup_reply.key_signature, job_id=self.job_id,
                        party=p, public_key=env.setup_reply.public_key):
                    raise ProtocolError(f"party {p}: its key does not carry its identity "
                                        "signature")
            except PartyRefused as r:
                refused[p] = r
                continue
            except ProtocolError as exc:
                log.warning("%s; treated as no answer for this step", exc)
                continue
            replies[p] = env
        if refused:
            raise JobRefused(refused)
        return replies


@dataclass(frozen=True)
class PartyKeys:
    """The parties' X25519 keys from setup, each with its identity signature (to relay)."""

    publics: dict[int, bytes]
    signatures: dict[int, bytes]


def setup_request(ex: Exchange, spec: JobSpec) -> pb.SetupRequest:
    """The parties' setup request. Under a channel with a key holder, the key holder is asked
    first for the job's key pair; its public context, checked here against the key holder's
    identity in the spec (as each party checks it again), goes to the parties with the spec,
    and the coordinator keeps it (`ex.he_context`) to add ciphertexts."""
    req = pb.SetupRequest(spec=spec.to_proto())
    if not channels.get(spec.channel).key_holder:
        return req
    ex.identities = {**ex.identities, KEY_HOLDER: spec.key_holder}
    got = ex.call({KEY_HOLDER: ("key_setup_request", pb.KeyHolderSetupRequest(
        spec=spec.to_proto()))}, "key_setup_reply")
    if KEY_HOLDER not in got:
        raise RoundFailed(f"the key holder did not answer the setup of channel {spec.channel}; "
                          "check that the key holder's node is running and reachable")
    reply = got[KEY_HOLDER].key_setup_reply
    try:
        ex.he_context = he.verify_public_context(ex.job_id, reply.context, reply.signature,
                                                 spec.key_holder, channels.HE_PARAMS,
                                                 spec_digest(req.spec), reply.mask_key)
    except he.HEError as exc:
        raise RoundFailed(f"the key holder's public context is not usable: {exc}") from exc
    req.he_context, req.he_context_signature = reply.context, reply.signature
    req.he_mask_key = reply.mask_key
    return req


def secure_sum(ex: Exchange, *, round_id: int, label: str, channel: str, threshold: int,
               participants: Sequence[int], keys: PartyKeys,
               groupings: Sequence[Grouping], cliques: Sequence[tuple[int, ...]],
               length: int, noise_variance: float, options_json: str = "") -> RoundResult:
    """One measurement round over the secure channel: the noisy sum and who is still here.
    `options_json`: a method's public plan the round belongs to (dpsgd's domain round)."""
    req = pb.MeasureRequest(round=round_id, label=label, noise_variance=noise_variance,
                            participants=list(participants), options_json=options_json)
    for g in groupings:
        req.groupings.add().index.extend(int(i) for i in g.index)
    for c in cliques:
        req.cliques.add().columns.extend(c)
    return secure_sum_of(ex, "measure_request", req, round_id=round_id, label=label,
                         channel=channel, threshold=threshold, participants=participants,
                         keys=keys, length=length)


def secure_sum_of(ex: Exchange, body: str,
                  req: pb.MeasureRequest | pb.EvaluateRequest | pb.TrainRequest, *,
                  round_id: int, label: str, channel: str, threshold: int,
                  participants: Sequence[int], keys: PartyKeys,
                  length: int) -> RoundResult:
    """Send `req` (a request answered by a masked vector) and run the round to its sum.

    Every request carries the whole key set from setup with its identity signatures: a party
    pins all of it at its first round and checks it is unchanged afterwards. Under secagg it
    also carries every participant's signed mask key for this round; participants without
    one (none after the first round, in a job whose rounds are numbered 1, 2, ...) are left
    out of the round, and the request's participant list says so. A channel without a
    follow-up exchange (plain) sums the measure replies at once; a channel with a key holder
    (he) adds the contributors' ciphertexts and has the key holder decrypt that one sum."""
    ch = channels.get(channel)
    round_keys = None
    if ch.setup_keys:
        for p, key in keys.publics.items():
            req.public_keys[p] = key
            req.key_signatures[p] = keys.signatures[p]
    if ch.round_keys:
        round_keys = distribute_mask_keys(ex, round_id=round_id, participants=participants,
                                          keys=keys)
        keyed = [p for p in participants if p in round_keys.publics]
        if len(keyed) < len(participants):
            log.warning("round %d (%s): parties %s have no mask key for this round and sit it "
                        "out", round_id, label, sorted(set(participants) - set(keyed)))
        if len(keyed) < threshold:
            raise RoundFailed(f"round {round_id}: {len(keyed)} parties delivered a mask key, "
                              f"below the threshold t={threshold}; the job stops and no sum is "
                              "revealed")
        participants = keyed
        del req.participants[:]
        req.participants.extend(participants)
        round_keys.fill(req, participants)
    rnd = CoordinatorRound(round_id=round_id, channel=channel, participants=list(participants),
                           length=length, threshold=threshold, job_id=ex.job_id,
                           keys=round_keys, identities=ex.identities, graph=ex.graph,
                           he_context=ex.he_context, job_keys=keys,
                           request_digest=hashlib.sha256(
                               req.SerializeToString(deterministic=True)).digest())
    replies = ex.call({p: (body, req) for p in participants}, "measure_reply")
    survivors = rnd.collect({p: e.measure_reply for p, e in replies.items()})
    if rnd.dropped:
        log.warning("round %d (%s): parties %s dropped out; %d survivors continue", round_id,
                    label, rnd.dropped, len(survivors))
    ledgers = {p: e.measure_reply.ledger_epsilon for p, e in replies.items()}
    seeded = sorted(p for p, e in replies.items() if e.measure_reply.seeded_noise)
    if ch.key_holder:
        rnd.decryption = decrypt_at_key_holder(ex, ch.decrypt_request(rnd))
    if not ch.follow_up:
        return RoundResult(rnd.finish({}), survivors, survivors, ledgers, seeded)
    confirm = pb.ConfirmRequest(round=round_id, survivors=survivors)
    signed = ex.call({p: ("confirm_request", confirm) for p in survivors}, "confirm_reply")
    confirmations = {p: e.confirm_reply.signature for p, e in signed.items()}
    if len(confirmations) < threshold:
        raise RoundFailed(f"round {round_id}: {len(confirmations)} survivors confirmed the "
                          f"survivor list, below the threshold t={threshold}; the job stops")
    unmask = ex.call({p: ("unmask_request", r)
                      for p, r in rnd.unmask_requests(confirmations).items()}, "unmask_reply")
    total = rnd.finish({p: e.unmask_reply for p, e in unmask.items()})
    responsive = sorted(unmask)
    if ch.round_keys:
        ex.round_keys.pop(round_id, None)  # used up: each mask key serves one round
        ex.round_keys[round_id + 1] = rnd.next_keys
        # the next round asks those who finished this one and announced a usable key for it
        responsive = [p for p in responsive if p in rnd.next_keys.publics]
    return RoundResult(total, survivors, responsive, ledgers, seeded)


def decrypt_at_key_holder(ex: Exchange, req: pb.DecryptRequest) -> pb.DecryptReply:
    """The key holder's decryption of one round's summed ciphertext (asked once per round)."""
    got = ex.call({KEY_HOLDER: ("decrypt_request", req)}, "decrypt_reply")
    if KEY_HOLDER not in got:
        raise RoundFailed(f"round {req.round}: the key holder did not answer the decrypt "
                          "request; the job stops (the key holder decrypts a round once)")
    reply: pb.DecryptReply = got[KEY_HOLDER].decrypt_reply
    return reply


def distribute_mask_keys(ex: Exchange, *, round_id: int, participants: Sequence[int],
                         keys: PartyKeys) -> RoundKeys:
    """The mask keys of `round_id`, asking the participants that have none yet (with the
    participants as share holders). Round r's keys normally come with round r - 1's replies,
    so this exchange happens once, before the job's first masked round."""
    book = ex.round_keys.setdefault(round_id, RoundKeys(round_id))
    missing = [p for p in participants if p not in book.publics]
    if not missing:
        return book
    req = pb.MaskKeysRequest(round=round_id, participants=list(participants))
    for p, key in keys.publics.items():
        req.public_keys[p] = key
        req.key_signatures[p] = keys.signatures[p]
    replies = ex.call({p: ("mask_keys_request", req) for p in missing}, "mask_keys_reply")
    for p, env in replies.items():
        try:
            book.add(p, env.mask_keys_reply, job_id=ex.job_id,
                     identity=ex.identities.get(p, b""), holders=participants, graph=ex.graph)
        except ProtocolError as exc:
            log.warning("%s; the party sits out round %d", exc, round_id)
    return book


def set_graph(ex: Exchange, spec: JobSpec, keys: PartyKeys) -> None:
    """Derive the job's sparse secagg graph once setup is done (as every party derives it from
    the keys it pins); RoundFailed if a sparse job is missing a party's job key."""
    try:
        ex.graph = job_graph(spec, job_id=ex.job_id, job_keys=keys.publics)
    except ProtocolError as exc:
        raise RoundFailed(str(exc)) from None
    if ex.graph is not None and ex.graph.params is not None:
        p = ex.graph.params
        log.info("secagg graph: sparse, %d parties, expected degree %d, share threshold %d "
                 "(privacy 2^%.0f, correctness 2^%.0f)", p.parties, p.degree,
                 p.share_threshold, p.privacy_log2, p.correctness_log2)


@dataclass(frozen=True)
class RoundResult:
    total: np.ndarray  # the exact sum of the contributors' noised counts
    contributors: list[int]  # whose vectors (and noise shares) are in the sum
    responsive: list[int]  # who finished the round and is asked in the next one
    ledger_epsilon: dict[int, float] = field(default_factory=dict)  # as each party reported
    seeded_noise: list[int] = field(default_factory=list)  # parties whose noise was seeded (tests)
