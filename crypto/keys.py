"""Party identity keys: long-term Ed25519 keys that bind each party's job keys to its name.

Who knows what: a party's private identity key stays in its own policy (its machine); the
public halves form the consortium's list, which every party holds (its policy) and the job spec
repeats. A party signs, per job, the X25519 key it uses for pair secrets, bound to the job id
and its party index; every other party verifies that signature against its own copy of the
list before it derives a pair secret. A coordinator that relays keys therefore cannot
substitute a key of its own (it would need the private identity key), nor replay a key from
another job or index (the statement names both). Replies are signed with the same key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


@dataclass(frozen=True)
class Identity:
    """One party's identity: its name and raw Ed25519 keys (`private` never leaves it)."""

    name: str
    private: bytes = field(repr=False)
    public: bytes

    @classmethod
    def generate(cls, name: str) -> Identity:
        sk = Ed25519PrivateKey.generate()
        private = sk.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
        return cls(name, private, public_identity(private))


def consortium(identities: list[Identity]) -> dict[str, bytes]:
    """The consortium's public list: party name -> public identity key."""
    return {i.name: i.public for i in identities}


def public_identity(private: bytes) -> bytes:
    """The public identity key of a raw Ed25519 private key."""
    return Ed25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        ser.Encoding.Raw, ser.PublicFormat.Raw)


def _key_statement(job_id: str, party: int, public_key: bytes) -> bytes:
    return b"fedsynth/x25519/v1|%s|%d|%s" % (job_id.encode(), party, public_key)


def sign_key(private: bytes, *, job_id: str, party: int, public_key: bytes) -> bytes:
    """The identity signature binding a party's X25519 key to one job and its party index."""
    return Ed25519PrivateKey.from_private_bytes(private).sign(
        _key_statement(job_id, party, public_key))


def verify_key(identity: bytes, signature: bytes, *, job_id: str, party: int,
               public_key: bytes) -> bool:
    """Whether `signature` is party `party`'s identity signature of `public_key` in this job."""
    return verify_statement(identity, signature, _key_statement(job_id, party, public_key))


def verify_statement(identity: bytes, signature: bytes, statement: bytes) -> bool:
    """Whether `signature` is the identity key's signature of `statement` (never raises)."""
    return _verified(bytes(identity), bytes(signature), bytes(statement))


@lru_cache(maxsize=1 << 16)
def _verified(identity: bytes, signature: bytes, statement: bytes) -> bool:
    # Verification is a pure function of these bytes, so an answer is remembered: a party
    # checks every participant's signed keys each round (n checks of ~0.2 ms here), and a
    # simulation that runs n parties in one process would otherwise check each n times over.
    try:
        Ed25519PublicKey.from_public_bytes(identity).verify(signature, statement)
    except (InvalidSignature, ValueError):
        return False
    return True


def round_statement(*, job_id: str, round_id: int, survivors: list[int], digest: bytes) -> bytes:
    """What a survivor signs in round `round_id`: the job, the round, the sorted survivor list
    and the digest of the request it answered (build it once to check many signatures)."""
    return _listed_statement(job_id, round_id, tuple(survivors), digest)


@lru_cache(maxsize=64)
def _listed_statement(job_id: str, round_id: int, survivors: tuple[int, ...],
                      digest: bytes) -> bytes:
    # A party checks t signatures over one list: built once, not t times (at 300 parties
    # rebuilding it was a quarter of a whole simulated job: n parties x t checks x n names).
    listed = ",".join(str(p) for p in sorted(survivors))
    return b"fedsynth/survivors/v1|%s|%d|%s|%s" % (job_id.encode(), round_id, listed.encode(),
                                                   digest)


def sign_round(private: bytes, *, job_id: str, round_id: int, survivors: list[int],
               digest: bytes) -> bytes:
    """A party's signature of one round's survivor list and of the request it answered."""
    return Ed25519PrivateKey.from_private_bytes(private).sign(
        round_statement(job_id=job_id, round_id=round_id, survivors=survivors,
                        digest=digest))


def verify_round(identity: bytes, signature: bytes, *, job_id: str, round_id: int,
                 survivors: list[int], digest: bytes) -> bool:
    statement = round_statement(job_id=job_id, round_id=round_id, survivors=survivors,
                                digest=digest)
    return verify_statement(identity, signature, statement)
