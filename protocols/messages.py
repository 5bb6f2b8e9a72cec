"""Parsing, size checks and validation of every Envelope that crosses a party boundary."""

from __future__ import annotations

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import DecodeError

from fedsynth.protocols import fedsynth_pb2 as pb

PROTOCOL_VERSION = 4  # 2: one-shot per-round mask keys (secure_sum); 3: the secagg graph;
# 4: dpsgd domain round (TrainRequest.groupings)
MAX_MESSAGE_BYTES = 512 * 1024 * 1024
MAX_VECTOR_LENGTH = 50_000_000
RECORD_KEY = "fedsynth"  # the ConfigRecord entry that carries the serialized Envelope
HELLO_KEY = "fedsynth-hello"  # a node's answer to "which party are you?" (its public name)
# The he channel's key holder is addressed as party 0 in Envelopes and transports; the job's
# parties are 1..n (`Transport.parties()` lists only them).
KEY_HOLDER = 0
KEY_HOLDER_HELLO = "key_holder"  # the hello answer's field naming a key holder (not a party)

Envelope = pb.Envelope


class ProtocolError(ValueError):
    """A message that is corrupted, replayed, out of order or not for this job."""


def _signed_bytes(env: pb.Envelope) -> bytes:
    unsigned = pb.Envelope()
    unsigned.CopyFrom(env)
    unsigned.ClearField("signature")
    return unsigned.SerializeToString(deterministic=True)


def sign(env: pb.Envelope, private: bytes) -> None:
    """Sign an envelope in place: a reply altered in transit then fails `verify`."""
    env.version = PROTOCOL_VERSION
    env.signature = Ed25519PrivateKey.from_private_bytes(private).sign(_signed_bytes(env))


def verify(env: pb.Envelope, public: bytes, *, sender: str) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(env.signature, _signed_bytes(env))
    except (InvalidSignature, ValueError):
        raise ProtocolError(f"{sender}: signature does not verify: the message was corrupted "
                            "or altered in transit") from None


def pack(env: pb.Envelope) -> bytes:
    env.version = PROTOCOL_VERSION
    data = env.SerializeToString()
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return data


def unpack(data: bytes, *, sender: str, expect: str | tuple[str, ...], job_id: str | None = None,
           after_step: int | None = None) -> pb.Envelope:
    """Parse and check an Envelope; raise ProtocolError naming the sender and what is wrong.

    `expect` names the body field(s) that may be set; `after_step` rejects replays.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise ProtocolError(f"{sender}: payload is not bytes")
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"{sender}: message of {len(data)} bytes is over the size limit")
    env = pb.Envelope()
    try:
        env.ParseFromString(bytes(data))
    except DecodeError as exc:
        raise ProtocolError(f"{sender}: message is corrupted, cannot be parsed ({exc})") from None
    if env.version != PROTOCOL_VERSION:
        raise ProtocolError(f"{sender}: protocol version {env.version}, expected "
                            f"{PROTOCOL_VERSION}; run the same fedsynth version everywhere")
    body = env.WhichOneof("body")
    allowed = (expect,) if isinstance(expect, str) else expect
    if body == "refusal" and "refusal" not in allowed:
        # A refusal counts only for this job and step; an empty job id is the answer of a
        # party that could not parse the request at all.
        stale = (job_id is not None and env.job_id not in ("", job_id)) or (
            after_step is not None and env.job_id and env.step <= after_step)
        if stale:
            raise ProtocolError(f"{sender}: a refusal from another job or an earlier step was "
                                "ignored")
        raise PartyRefused(sender, env.refusal.reason, list(env.refusal.problems))
    if body not in allowed:
        raise ProtocolError(f"{sender}: expected a {' or '.join(allowed)} message, got "
                            f"{body or 'nothing'}")
    if job_id is not None and env.job_id != job_id:
        raise ProtocolError(f"{sender}: message belongs to job {env.job_id!r}, not {job_id!r}")
    if after_step is not None and env.step <= after_step:
        raise ProtocolError(f"{sender}: step {env.step} is not after step {after_step}: a replayed "
                            "or out-of-order message; it was ignored")
    return env


class PartyRefused(ProtocolError):
    """A party declined a request (policy, budget, data problems); carries its reasons."""

    def __init__(self, sender: str, reason: str, problems: list[str]) -> None:
        self.sender, self.reason, self.problems = sender, reason, problems
        detail = "".join(f"\n    - {p}" for p in problems)
        super().__init__(f"{sender} refused: {reason}{detail}")


def refusal(*, job_id: str, step: int, party: int, reason: str, problems: list[str]) -> bytes:
    env = pb.Envelope(job_id=job_id, step=step, party=party)
    env.refusal.reason = reason
    env.refusal.problems.extend(problems)
    return pack(env)


def vector_bytes(v: np.ndarray) -> bytes:
    return np.ascontiguousarray(v, dtype="<u8").tobytes()


def bytes_vector(b: bytes, *, length: int, sender: str) -> np.ndarray:
    if len(b) != 8 * length:
        raise ProtocolError(f"{sender}: vector has {len(b)} bytes, expected {8 * length}")
    return np.frombuffer(b, dtype="<u8").astype(np.uint64)
