"""The key holder of the he channel: a node of the federation that decrypts one sum per round.

Transport-free like the party's `Node`: `KeyHolderNode.handle(request) -> reply` takes and
returns Envelope bytes, addressed to party `messages.KEY_HOLDER` (0), every reply signed with
the key holder's own identity key (the key the job spec names and every party's policy lists).

Who knows what:
- The key holder makes a fresh BFV key pair per job (crypto.he.KeyHolder) when the
  coordinator asks (key_setup_request, carrying the job spec), and answers with the public
  context (public key only) signed for that job. The secret key stays in this object (in a
  simulation: this in-process object, which the coordinator reaches only through the
  transport; under Flower: the key holder's own ClientApp state, `to_state`).
- It decrypts a round's summed ciphertext (decrypt_request) once, only for at least the
  job's t distinct contributors among the job's parties, only ciphertexts made under this
  job's context, and releases it only if it is within the bound of a sum of that many
  bounded vectors (crypto.he). Anything else is refused, as a party refuses: the reason goes
  back, no decryption.
- It sees only those sums: the noised vectors of at least t parties added, each party's
  noise share sized so that t - c honest shares carry the full noise. It never sees one
  party's ciphertext alone, unless the coordinator deviates and lies about the contributors,
  which is outside the semi-honest model (crypto.he states it); the coordinator and the key
  holder must not collude (README, threat model).

The job's t comes from the spec in the setup request: the coordinator's claim. The parties
check the same spec against their own policy, and each refuses a round naming fewer than t
participants.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedsynth.crypto import he
from fedsynth.crypto.keys import public_identity, verify_key
from fedsynth.protocols import channels
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.protocols.messages import (
    KEY_HOLDER,
    MAX_VECTOR_LENGTH,
    ProtocolError,
    pack,
    refusal,
    sign,
    unpack,
    vector_bytes,
)
from fedsynth.protocols.spec import JobSpec, JobSpecError, spec_digest

log = logging.getLogger("fedsynth.keyholder")
REQUESTS = ("key_setup_request", "decrypt_request")


@dataclass(frozen=True)
class KeyHolderPolicy:
    """The key holder's own rules: its name (for routing only), its private identity key, the
    channel's parameters, and how many jobs' keys it keeps (the oldest job's key is dropped,
    so a later decrypt request for it is refused), how many parties a job may have, and how
    many rounds of one job it decrypts at most. Round ids are the coordinator's to choose, so
    "once per round" alone would let a deviating coordinator query the secret key with as many
    chosen ciphertexts as it likes (BFV is not CCA-secure: each answer, or range refusal,
    tells about a coefficient of the key); `max_decryptions` bounds that to far fewer
    coefficients than the key has (N = 4096), and to more rounds than a job uses."""

    name: str
    identity_key: bytes = field(repr=False)
    params: he.Params = channels.HE_PARAMS
    max_jobs: int = 8
    max_parties: int = 1000
    max_decryptions: int = 64


@dataclass
class _Job:
    holder: he.KeyHolder
    parties: int
    step: int
    identities: tuple[bytes, ...] = ()  # the spec's parties' identity keys, 1..n


class KeyHolderNode:
    """One key holder, serving the jobs it was set up for (one `crypto.he.KeyHolder` each)."""

    def __init__(self, policy: KeyHolderPolicy) -> None:
        self.policy = policy
        self._jobs: dict[str, _Job] = {}

    # --- entry point -------------------------------------------------------------------
    def handle(self, request: bytes) -> bytes:
        env = pb.Envelope()
        try:
            env = unpack(request, sender="coordinator", expect=REQUESTS)
            if env.party != KEY_HOLDER:
                raise ProtocolError(f"message addressed to party {env.party}; this is the key "
                                    "holder")
            if env.WhichOneof("body") == "key_setup_request":
                reply = self._setup(env)
            else:
                reply = self._decrypt(env)
            sign(reply, self.policy.identity_key)
            return pack(reply)
        except (ProtocolError, JobSpecError, he.HEError) as exc:
            log.warning("key holder refused a request: %s", exc)
            return refusal(job_id=env.job_id, step=env.step, party=KEY_HOLDER,
                           reason=str(exc).splitlines()[0],
                           problems=list(getattr(exc, "problems", [])))
        except Exception:
            log.exception("key holder failed on a request")
            return refusal(job_id=env.job_id, step=env.step, party=KEY_HOLDER,
                           reason="internal error at the key holder (details in its own log)",
                           problems=[])

    # --- steps ---------------------------------------------------------------------------
    def _setup(self, env: pb.Envelope) -> pb.Envelope:
        job_id = env.job_id
        if not 0 < len(job_id) <= 64:
            raise ProtocolError("a job id must have 1 to 64 characters")
        if job_id in self._jobs:
            raise ProtocolError(f"job {job_id} was already set up at this key holder; a "
                                "replayed setup is refused")
        spec = JobSpec.from_proto(env.key_setup_request.spec)
        problems = []
        if not channels.get(spec.channel).key_holder:
            problems.append(f"channel {spec.channel!r} has no key holder")
        if spec.key_holder != public_identity(self.policy.identity_key):
            problems.append("the job names another key holder")
        if spec.parties > self.policy.max_parties:
            problems.append(f"{spec.parties} parties is above this key holder's limit of "
                            f"{self.policy.max_parties}")
        if problems:
            raise ProtocolError("the job is outside this key holder's policy: "
                                + "; ".join(problems))
        holder = he.KeyHolder(job_id, self.policy.identity_key, threshold=spec.threshold,
                              params=self.policy.params,
                              spec_digest=spec_digest(env.key_setup_request.spec))
        while len(self._jobs) >= self.policy.max_jobs:
            oldest = next(iter(self._jobs))
            log.warning("key holder: dropped the key of job %s (at most %d jobs kept)", oldest,
                        self.policy.max_jobs)
            del self._jobs[oldest]
        self._jobs[job_id] = _Job(holder, spec.parties, env.step, tuple(spec.identity_keys))
        context, signature = holder.public_context()
        out = pb.Envelope(job_id=job_id, step=env.step, party=KEY_HOLDER)
        out.key_setup_reply.context = context
        out.key_setup_reply.signature = signature
        out.key_setup_reply.mask_key = holder.mask_key
        log.info("key holder: job %s set up (t=%d, %d parties)", job_id, spec.threshold,
                 spec.parties)
        return out

    def _decrypt(self, env: pb.Envelope) -> pb.Envelope:
        job = self._jobs.get(env.job_id)
        if job is None:
            raise ProtocolError(f"job {env.job_id!r} is unknown to this key holder (never set "
                                "up here, or its key was dropped); nothing is decrypted")
        if env.step <= job.step:
            raise ProtocolError(f"step {env.step} is not after step {job.step}: a replayed or "
                                "out-of-order message was refused")
        job.step = env.step
        req = env.decrypt_request
        contributors = list(req.contributors)
        if len(set(contributors)) != len(contributors):
            raise ProtocolError(f"round {req.round}: a contributor is listed twice")
        strangers = [p for p in contributors if not 1 <= p <= job.parties]
        if strangers:
            raise ProtocolError(f"round {req.round}: contributors {strangers} are not among the "
                                f"job's parties 1..{job.parties}")
        if not 1 <= req.length <= MAX_VECTOR_LENGTH:
            raise ProtocolError(f"round {req.round}: length {req.length} is out of range")
        if job.holder.decryptions >= self.policy.max_decryptions:
            raise ProtocolError(f"round {req.round}: this key holder decrypts at most "
                                f"{self.policy.max_decryptions} rounds of a job; nothing is "
                                "decrypted")
        job.holder.check_request(env.job_id, req.round, contributors)
        total = job.holder.decrypt(env.job_id, req.round, list(req.chunks), req.length,
                                   contributors, party_keys=self._party_keys(job, env),
                                   request_digest=bytes(req.request_digest))
        out = pb.Envelope(job_id=env.job_id, step=env.step, party=KEY_HOLDER)
        out.decrypt_reply.round = req.round
        out.decrypt_reply.total = vector_bytes(total.astype(np.int64).view(np.uint64))
        log.info("key holder: job %s round %d: decrypted the sum of %d parties (%d values)",
                 env.job_id, req.round, len(contributors), req.length)
        return out

    @staticmethod
    def _party_keys(job: _Job, env: pb.Envelope) -> dict[int, bytes]:
        """Each contributor's X25519 job key, checked against its identity signature for this
        job (the spec's identity keys, kept from setup): the masks to remove are derived from
        these, so a key the coordinator made up would leave its masks in place."""
        req = env.decrypt_request
        keys = {}
        for p in req.contributors:
            key, sig = bytes(req.public_keys.get(p, b"")), bytes(req.key_signatures.get(p, b""))
            if not verify_key(job.identities[p - 1], sig, job_id=env.job_id, party=p,
                              public_key=key):
                raise ProtocolError(f"round {req.round}: party {p}'s job key does not carry its "
                                    "identity signature; nothing is decrypted")
            keys[p] = key
        return keys

    # --- state between messages (a Flower ClientApp's node state) ----------------------------
    def to_state(self) -> bytes:
        """This node's jobs, secret keys included: for its own state store only."""
        jobs: dict[str, Any] = {}
        for job_id, job in self._jobs.items():
            st = job.holder.to_state()
            st["secret"] = base64.b64encode(st["secret"]).decode()
            st["public"] = base64.b64encode(st["public"]).decode()
            jobs[job_id] = {"holder": st, "parties": job.parties, "step": job.step,
                            "identities": [k.hex() for k in job.identities]}
        return json.dumps({"jobs": jobs}).encode()

    @classmethod
    def from_state(cls, policy: KeyHolderPolicy, state: bytes | None) -> KeyHolderNode:
        node = cls(policy)
        for job_id, job in (json.loads(state)["jobs"] if state else {}).items():
            st = dict(job["holder"])
            st["secret"] = base64.b64decode(st["secret"])
            st["public"] = base64.b64decode(st["public"])
            holder = he.KeyHolder.from_state(st, policy.identity_key, params=policy.params)
            node._jobs[job_id] = _Job(holder, int(job["parties"]), int(job["step"]),
                                      tuple(bytes.fromhex(k) for k in job["identities"]))
        return node
