"""Channels: how a party's noised vector reaches the coordinator, as one interface and a registry.

A channel has two sides, in the style of Flower's secagg mod/workflow pair:

- the party's side: keys at setup (`announce`, a one-shot round key with shares, for channels
  with `round_keys`), `contribute` a vector to a round (the measure reply), and `release` on
  request what lets the coordinator finish the round (the unmask reply, for channels with a
  `follow_up` exchange);
- the coordinator's side, on a `protocols.secure_sum.CoordinatorRound`: `collect` what comes
  with each measure reply, build the `follow_up` requests, and `finish` the round to the
  exact sum.

What a channel declares, and what the roles read instead of comparing channel names:
- `protected`: the coordinator only ever sees sums over at least t parties, never one
  party's own vector. An unprotected channel ("plain") shows each party's vector to the
  coordinator, so each party must carry the full noise alone (`noise_divisor` 1).
- `setup_keys`: every request carries the parties' job keys from setup, which each party pins
  at its first round.
- `round_keys`: one-shot round keys, exchanged before the job's first round and then
  announced one round ahead in each reply (protocols.secure_sum, step 0).
- `follow_up`: after the measure step, the coordinator runs a confirm and an unmask
  exchange with the survivors before it can finish the sum.
- `key_holder`: measure replies carry ciphertexts under a key holder's public context (sent to
  each party at setup, signed by the key holder named in the spec); the coordinator adds them
  and sends the one sum of the round to the key holder (party `messages.KEY_HOLDER`), which
  decrypts it once (`decrypt_request`, then `finish`).
- `spec_problems`: the channel's own conditions on n, t and c (protocols.spec).

Roles (coordinator/, client_node/) find a channel with `get(spec.channel)`; job specs accept
exactly the names in `CHANNELS`. "secagg" (protocols.secure_sum, which has the security
argument), "he" (crypto.he, which has the security argument) and "plain" (tests and
simulations only) are registered here; a new channel
implements `Channel` and calls `register`, and tests/unit/protocols/test_channel_contract.py
then runs the contract every channel must meet against it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from fedsynth.crypto import he, he_masks
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.protocols import secure_sum
from fedsynth.protocols.messages import ProtocolError, bytes_vector, vector_bytes

if TYPE_CHECKING:
    from fedsynth.protocols.secure_sum import CoordinatorRound
    from fedsynth.protocols.spec import JobSpec


class UnknownChannel(KeyError):
    """A channel name that is not registered; the message names the registered ones."""

    def __str__(self) -> str:
        return str(self.args[0])


class Channel(ABC):
    """One way to sum the parties' vectors: the party's side and the coordinator's side."""

    name: ClassVar[str]
    protected: ClassVar[bool]  # the coordinator never sees one party's vector
    setup_keys: ClassVar[bool]  # requests carry the setup keys, pinned by each party
    round_keys: ClassVar[bool]  # one-shot round keys, announced one round ahead
    follow_up: ClassVar[bool]  # confirm + unmask exchange after the measure step
    key_holder: ClassVar[bool] = False  # ciphertexts; the key holder decrypts each round's sum

    # --- properties of a job over this channel ----------------------------------------------
    def noise_divisor(self, spec: JobSpec) -> int:
        """Each party adds variance / noise_divisor: t - c honest survivors' shares reach
        every sum a protected channel releases; on an unprotected channel the coordinator
        sees each party's own vector, which must carry the full noise alone."""
        return spec.honest_min if self.protected else 1

    def spec_problems(self, *, parties: int, threshold: int, colluders: int) -> list[str]:
        """This channel's own conditions on n, t and c (none by default)."""
        return []

    # --- the party's side --------------------------------------------------------------------
    def announce(self, *, job_id: str, me: int, round_id: int, holders: Sequence[int],
                 threshold: int, private: bytes, publics: Mapping[int, bytes],
                 identity_key: bytes, spec: JobSpec | None = None,
                 ) -> tuple[pb.MaskKeyAnnouncement, bytes]:
        """A round key for `round_id`: its announcement and the private half to keep
        (channels with `round_keys`; any other refuses)."""
        raise ProtocolError(f"a job over the {self.name} channel has no mask keys")

    @abstractmethod
    def contribute(self, values: np.ndarray, *, job_id: str, me: int, round_id: int,
                   participants: Sequence[int], threshold: int, private: bytes,
                   publics: Mapping[int, bytes], mask_private: bytes = b"",
                   mask_publics: Mapping[int, bytes] | None = None,
                   identity_key: bytes = b"", request_digest: bytes = b"",
                   public_context: bytes = b"", key_holder_key: bytes = b"",
                   spec: JobSpec | None = None) -> tuple[pb.MeasureReply, bytes, bytes]:
        """The measure reply for a noised vector: (reply, state to keep for `release`, private
        half of the next round's key to keep). `public_context` and `key_holder_key`: the
        key holder's public context and X25519 mask key, verified at setup (channels with a
        key holder). `spec`: the job's spec, for what it says about the channel (secagg's
        graph)."""

    def release(self, req: pb.UnmaskRequest, *, job_id: str, me: int, threshold: int,
                participants: Sequence[int], private: bytes, publics: Mapping[int, bytes],
                own_share: bytes, request_digest: bytes = b"",
                spec: JobSpec | None = None) -> pb.UnmaskReply:
        """What the party releases on the coordinator's follow-up request, answered once
        (channels with a `follow_up`; any other refuses)."""
        raise ProtocolError(f"round {req.round}: a job over the {self.name} channel has no "
                            "unmask step; refusing")

    # --- the coordinator's side ----------------------------------------------------------------
    @abstractmethod
    def check_round(self, rnd: CoordinatorRound) -> None:
        """Raise ProtocolError if the round cannot start (e.g. missing round keys)."""

    @abstractmethod
    def collect(self, rnd: CoordinatorRound, party: int, reply: pb.MeasureReply) -> None:
        """Keep what comes with one party's measure reply beside its vector."""

    @abstractmethod
    def requests(self, rnd: CoordinatorRound, confirmations: Mapping[int, bytes],
                 ) -> dict[int, pb.UnmaskRequest]:
        """The follow-up request for each party asked to release."""

    def decrypt_request(self, rnd: CoordinatorRound) -> pb.DecryptRequest:
        """The round's one request to the key holder (channels with a key holder only)."""
        raise ProtocolError(f"a job over the {self.name} channel has no key holder")

    @abstractmethod
    def finish(self, rnd: CoordinatorRound, replies: Mapping[int, pb.UnmaskReply]) -> np.ndarray:
        """The exact sum over the survivors (RoundFailed if it cannot be had safely)."""


class SecAggChannel(Channel):
    """Pairwise masking with one-shot round keys (Bonawitz et al. 2017); the protocol and its
    security argument are in protocols.secure_sum and crypto.secagg. The spec's `graph` says
    whom each party masks with: everyone (complete) or its neighbours in the job's SecAgg+
    graph (sparse, crypto.secagg_graph), derived by every role from the spec and the job keys."""

    name = "secagg"
    protected = True
    setup_keys = True
    round_keys = True
    follow_up = True

    def spec_problems(self, *, parties: int, threshold: int, colluders: int) -> list[str]:
        """t >= 2 and 2t >= n + c + 2 (why: protocols.spec)."""
        from fedsynth.protocols.spec import min_threshold  # spec reads this registry

        problems = []
        if parties > 1 and threshold < 2:
            problems.append("secagg needs t >= 2 so that no single share reveals a self-mask")
        low = min_threshold(parties, colluders)
        if parties >= 2 and threshold < low:
            problems.append(f"threshold t={threshold} is too low for n={parties} parties "
                            f"and c={colluders} colluders: t must be at least {low} "
                            "(2t >= n + c + 2), or differing survivor lists could unmask a party")
        return problems

    def announce(self, *, job_id: str, me: int, round_id: int, holders: Sequence[int],
                 threshold: int, private: bytes, publics: Mapping[int, bytes],
                 identity_key: bytes, spec: JobSpec | None = None,
                 ) -> tuple[pb.MaskKeyAnnouncement, bytes]:
        return secure_sum.party_mask_key(job_id=job_id, me=me, round_id=round_id,
                                         holders=holders, threshold=threshold, private=private,
                                         publics=publics, identity_key=identity_key,
                                         graph=secure_sum.job_graph(spec, job_id=job_id,
                                                                    job_keys=publics))

    def contribute(self, values: np.ndarray, *, job_id: str, me: int, round_id: int,
                   participants: Sequence[int], threshold: int, private: bytes,
                   publics: Mapping[int, bytes], mask_private: bytes = b"",
                   mask_publics: Mapping[int, bytes] | None = None,
                   identity_key: bytes = b"", request_digest: bytes = b"",
                   public_context: bytes = b"", key_holder_key: bytes = b"",
                   spec: JobSpec | None = None) -> tuple[pb.MeasureReply, bytes, bytes]:
        return secure_sum.secagg_measure_reply(
            values, job_id=job_id, me=me, round_id=round_id, participants=participants,
            threshold=threshold, private=private, publics=publics, mask_private=mask_private,
            mask_publics=mask_publics, identity_key=identity_key,
            request_digest=request_digest,
            graph=secure_sum.job_graph(spec, job_id=job_id, job_keys=publics))

    def release(self, req: pb.UnmaskRequest, *, job_id: str, me: int, threshold: int,
                participants: Sequence[int], private: bytes, publics: Mapping[int, bytes],
                own_share: bytes, request_digest: bytes = b"",
                spec: JobSpec | None = None) -> pb.UnmaskReply:
        return secure_sum.party_unmask_reply(
            req, job_id=job_id, me=me, threshold=threshold, participants=participants,
            private=private, publics=publics, own_share=own_share,
            request_digest=request_digest,
            graph=secure_sum.job_graph(spec, job_id=job_id, job_keys=publics))

    def check_round(self, rnd: CoordinatorRound) -> None:
        secure_sum.secagg_check_round(rnd)

    def collect(self, rnd: CoordinatorRound, party: int, reply: pb.MeasureReply) -> None:
        secure_sum.secagg_collect(rnd, party, reply)

    def requests(self, rnd: CoordinatorRound, confirmations: Mapping[int, bytes],
                 ) -> dict[int, pb.UnmaskRequest]:
        return secure_sum.secagg_unmask_requests(rnd, confirmations)

    def finish(self, rnd: CoordinatorRound, replies: Mapping[int, pb.UnmaskReply]) -> np.ndarray:
        return secure_sum.secagg_finish(rnd, replies)


class PlainChannel(Channel):
    """No protection (simulations and tests only): each party's noised vector goes as it is,
    without keys or a follow-up exchange, and the sum is taken at once. A party accepts it only
    when its policy lists "plain"; each party then carries the full noise (`noise_divisor`)."""

    name = "plain"
    protected = False
    setup_keys = False
    round_keys = False
    follow_up = False

    def contribute(self, values: np.ndarray, *, job_id: str, me: int, round_id: int,
                   participants: Sequence[int], threshold: int, private: bytes,
                   publics: Mapping[int, bytes], mask_private: bytes = b"",
                   mask_publics: Mapping[int, bytes] | None = None,
                   identity_key: bytes = b"", request_digest: bytes = b"",
                   public_context: bytes = b"", key_holder_key: bytes = b"",
                   spec: JobSpec | None = None) -> tuple[pb.MeasureReply, bytes, bytes]:
        return pb.MeasureReply(round=round_id, masked=vector_bytes(
            values.astype(np.int64).view(np.uint64))), b"", b""

    def check_round(self, rnd: CoordinatorRound) -> None:
        return None

    def collect(self, rnd: CoordinatorRound, party: int, reply: pb.MeasureReply) -> None:
        return None

    def requests(self, rnd: CoordinatorRound, confirmations: Mapping[int, bytes],
                 ) -> dict[int, pb.UnmaskRequest]:
        return {}

    def finish(self, rnd: CoordinatorRound, replies: Mapping[int, pb.UnmaskReply]) -> np.ndarray:
        return rnd.plain_sum()


HE_PARAMS = he.BfvParams()  # the he channel's BFV parameters, the same at every role


@lru_cache(maxsize=4)
def he_public_context(data: bytes) -> he.PublicContext:
    """A public context already verified against the key holder's signature, loaded once."""
    return he.load_public_context(data, HE_PARAMS)


class HeChannel(Channel):
    """BFV homomorphic encryption (crypto.he) with a key holder that is never the coordinator.

    Each party encrypts its noised vector under the key holder's public context (verified at
    setup against the key holder's identity in the spec, which the party's policy must list);
    the coordinator keeps the ciphertexts of whoever answered, adds those of the contributors
    under the public context (it holds no secret key) and sends the one sum to the key holder,
    which decrypts each round once and only for at least t contributors. Before encrypting,
    each party adds a mask only the key holder can remove, bound to the round and to the
    digest of the request it answered (crypto.he_masks): a decryption is released only when it
    is exactly the sum of the listed contributors' answers to one request, so re-labelled,
    sub-set, mixed or forged sums are refused. Dropouts cost nothing and a round takes one
    round trip with the parties; no pairwise keys are needed. The coordinator and the key
    holder must not collude (crypto.he, README's threat model)."""

    name = "he"
    protected = True
    setup_keys = False
    round_keys = False
    follow_up = False
    key_holder = True

    def spec_problems(self, *, parties: int, threshold: int, colluders: int) -> list[str]:
        """t >= 2: the key holder decrypts sums of at least t parties; a "sum" of one party
        would be that party's own noised counts."""
        if threshold < 2:
            return [f"he needs t >= 2 (got t={threshold}): the key holder decrypts only sums of "
                    "at least t parties, and a sum of one party is its own noised counts"]
        return []

    def contribute(self, values: np.ndarray, *, job_id: str, me: int, round_id: int,
                   participants: Sequence[int], threshold: int, private: bytes,
                   publics: Mapping[int, bytes], mask_private: bytes = b"",
                   mask_publics: Mapping[int, bytes] | None = None,
                   identity_key: bytes = b"", request_digest: bytes = b"",
                   public_context: bytes = b"", key_holder_key: bytes = b"",
                   spec: JobSpec | None = None) -> tuple[pb.MeasureReply, bytes, bytes]:
        if not public_context:
            raise ProtocolError(f"round {round_id}: no key holder's public context from setup; "
                                "refusing to send the vector")
        if len(key_holder_key) != 32 or len(request_digest) != 32:
            raise ProtocolError(f"round {round_id}: no key holder's mask key or request digest;"
                                " refusing to send the vector")
        values = values.astype(np.int64)
        p = HE_PARAMS.plain_modulus
        if len(values) and np.max(np.abs(values)) > HE_PARAMS.bound:
            raise ProtocolError(f"round {round_id}: a value exceeds the he channel's bound "
                                f"{HE_PARAMS.bound}; refusing (a larger one could wrap the sum)")
        try:
            secret = he_masks.shared_secret(private, key_holder_key, job_id=job_id, party=me)
            mask = he_masks.round_mask(secret, round_id=round_id, request_digest=request_digest,
                                       length=len(values) + he_masks.TAG_SLOTS, modulus=p)
        except he_masks.MaskError as exc:
            raise ProtocolError(f"round {round_id}: {exc}") from None
        reply = pb.MeasureReply(round=round_id)
        reply.ciphertexts.extend(he.encrypt_counts(he_public_context(public_context),
                                                   he_masks.mask(values, mask, p), residues=True))
        return reply, b"", b""

    def check_round(self, rnd: CoordinatorRound) -> None:
        if rnd.he_context is None:
            raise ProtocolError(f"round {rnd.round_id}: no public context from the key holder")

    def collect(self, rnd: CoordinatorRound, party: int, reply: pb.MeasureReply) -> None:
        chunks = [bytes(c) for c in reply.ciphertexts]
        expected = -(-(rnd.length + he_masks.TAG_SLOTS) // HE_PARAMS.slots)
        if len(chunks) != expected or any(len(c) > he.MAX_CHUNK_BYTES for c in chunks):
            raise ProtocolError(f"party {party}: {len(chunks)} ciphertext chunks, expected "
                                f"{expected} of at most {he.MAX_CHUNK_BYTES} bytes")
        rnd.ciphertexts[party] = chunks

    def requests(self, rnd: CoordinatorRound, confirmations: Mapping[int, bytes],
                 ) -> dict[int, pb.UnmaskRequest]:
        return {}

    def decrypt_request(self, rnd: CoordinatorRound) -> pb.DecryptRequest:
        """The contributors' ciphertexts added under the public context: one sum to decrypt."""
        from fedsynth.protocols.secure_sum import RoundFailed

        contributors = rnd.survivors
        try:
            total = he.add_ciphertexts(rnd.he_context, [rnd.ciphertexts[p] for p in contributors],
                                       rnd.length + he_masks.TAG_SLOTS)
        except he.HEError as exc:
            raise RoundFailed(f"round {rnd.round_id}: the ciphertexts do not add up under the "
                              f"job's public context ({exc}); nothing was decrypted") from exc
        req = pb.DecryptRequest(round=rnd.round_id, length=rnd.length,
                                contributors=contributors, chunks=total,
                                request_digest=rnd.request_digest)
        for p in contributors:  # the key holder removes the masks these keys give
            req.public_keys[p] = rnd.job_keys.publics[p]
            req.key_signatures[p] = rnd.job_keys.signatures[p]
        return req

    def finish(self, rnd: CoordinatorRound, replies: Mapping[int, pb.UnmaskReply]) -> np.ndarray:
        from fedsynth.protocols.secure_sum import RoundFailed

        got = rnd.decryption
        if got is None or got.round != rnd.round_id:
            raise RoundFailed(f"round {rnd.round_id}: no decryption of the round's sum from the "
                              "key holder")
        return bytes_vector(got.total, length=rnd.length, sender="the key holder").view(np.int64)


# --- the registry ----------------------------------------------------------------------------

CHANNELS: dict[str, Channel] = {}


def register(name: str, channel: Channel) -> None:
    """Make `channel` available to job specs, parties and the coordinator under `name`."""
    if name in CHANNELS:
        raise ValueError(f"a channel named {name!r} is already registered")
    CHANNELS[name] = channel


def get(name: str) -> Channel:
    """The channel registered as `name`; UnknownChannel names the registered ones."""
    try:
        return CHANNELS[name]
    except KeyError:
        raise UnknownChannel(f"channel {name!r} is not one of the registered channels: "
                             f"{', '.join(CHANNELS)}") from None


def names() -> tuple[str, ...]:
    """The registered channel names, in registration order."""
    return tuple(CHANNELS)


register("secagg", SecAggChannel())
register("plain", PlainChannel())
register("he", HeChannel())
