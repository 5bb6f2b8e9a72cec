"""Secure aggregation by pairwise masking over Z_2^64 (Bonawitz et al. 2017), over many rounds.

Who knows what:
- Each party u holds a long-term X25519 key pair for the job; only public keys leave it, once.
- Every pair (u, v) derives a pair secret from their Diffie-Hellman value with HKDF-SHA256,
  bound to the job id and the two party indices. The coordinator cannot compute it.
- For aggregation round r, the pair mask seed is HKDF(pair secret, "mask" || r): one-way, so
  revealing a round's seed reveals nothing about any other round's.
- Each party also draws a fresh self-mask seed b_u(r) per round, Shamir-shares it with
  threshold t among all parties, and encrypts each share for its recipient with
  ChaCha20-Poly1305 under a key derived from the pair secret ("share" info), so the coordinator
  relays shares it cannot read.
- Party u sends y_u = x_u + PRG(b_u) + sum_{v>u} PRG(s_uv) - sum_{v<u} PRG(s_uv)  (mod 2^64).

Why the sum is exact: for two survivors u < v, +PRG(s_uv) in y_u and -PRG(s_uv) in y_v cancel.
The coordinator removes each survivor's PRG(b_u) after recovering b_u from t shares, and
for a party that dropped before sending, it removes the pair masks it left in the survivors'
vectors from the round seeds that survivors reveal for it. Arithmetic is mod 2^64, so sums of
signed values below 2^63 in magnitude are recovered exactly.

Why a lone vector reveals nothing: y_u carries PRG(b_u) with b_u fresh and uniformly random,
known to nobody but u until t parties release their shares. Honest parties release, for each
(party, round), either the shares of b_u (u survived) or their pair seeds with u (u dropped),
never both (the node enforces it), so for a survivor the pair masks with the other honest
parties still hide x_u, and for a dropped party the self-mask does. Fewer than t colluding
parties learn nothing about b_u (Shamir). Security is against a semi-honest coordinator that
may collude with fewer than t parties and relays public keys faithfully.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedsynth.crypto import shamir

SEED_BYTES = 32


class SecAggError(ValueError):
    """A secure-aggregation step got inputs it cannot use safely."""


def _hkdf(key: bytes, *, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=salt, info=info).derive(key)


@dataclass(frozen=True)
class KeyPair:
    """A party's X25519 key pair for one job; the private half never leaves the party."""

    private: bytes
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        sk = X25519PrivateKey.generate()
        raw = serialization.Encoding.Raw
        return cls(
            private=sk.private_bytes(raw, serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption()),
            public=sk.public_key().public_bytes(raw, serialization.PublicFormat.Raw),
        )


def pair_secret(private: bytes, peer_public: bytes, *, job_id: str, me: int, peer: int) -> bytes:
    """The secret that parties `me` and `peer` share, bound to the job and both indices."""
    if len(peer_public) != 32:
        raise SecAggError(f"party {peer}: public key has {len(peer_public)} bytes, expected 32")
    if me == peer:
        raise SecAggError("a party has no pair secret with itself")
    shared = X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(peer_public))
    lo, hi = sorted((me, peer))
    return _hkdf(shared, salt=job_id.encode(), info=b"fedsynth/pair/%d/%d" % (lo, hi))


def round_seed(pair: bytes, round_id: int) -> bytes:
    """The pair-mask seed of one aggregation round (revealing it says nothing of other rounds)."""
    return _hkdf(pair, salt=b"", info=b"fedsynth/mask/%d" % round_id)


def _share_key(pair: bytes) -> bytes:
    return _hkdf(pair, salt=b"", info=b"fedsynth/share-encryption")


def prg(seed: bytes, length: int) -> np.ndarray:
    """`length` pseudo-random uint64 words: the ChaCha20 keystream under `seed`."""
    if len(seed) != SEED_BYTES:
        raise SecAggError("PRG seed must be 32 bytes")
    enc = Cipher(algorithms.ChaCha20(seed, b"\x00" * 16), mode=None).encryptor()
    return np.frombuffer(enc.update(b"\x00" * (8 * length)), dtype="<u8").copy()


def new_seed() -> bytes:
    return secrets.token_bytes(SEED_BYTES)


def _aad(job_id: str, round_id: int, sender: int, recipient: int) -> bytes:
    return b"%s/%d/%d/%d" % (job_id.encode(), round_id, sender, recipient)


def encrypt_share(pair: bytes, share: bytes, *, job_id: str, round_id: int, sender: int,
                  recipient: int) -> bytes:
    """Encrypt a Shamir share for `recipient`; the job, round and both ends are authenticated."""
    nonce = secrets.token_bytes(12)
    aad = _aad(job_id, round_id, sender, recipient)
    return nonce + ChaCha20Poly1305(_share_key(pair)).encrypt(nonce, share, aad)


def decrypt_share(pair: bytes, blob: bytes, *, job_id: str, round_id: int, sender: int,
                  recipient: int) -> bytes:
    """Decrypt a share; a share replayed from another job, round or pair fails authentication."""
    from cryptography.exceptions import InvalidTag

    try:
        aad = _aad(job_id, round_id, sender, recipient)
        return ChaCha20Poly1305(_share_key(pair)).decrypt(blob[:12], blob[12:], aad)
    except (InvalidTag, ValueError) as exc:
        raise SecAggError(
            f"share from party {sender} for round {round_id} does not authenticate: corrupted, "
            "replayed or from another job") from exc


def pair_mask_sum(pair_seeds: Mapping[int, bytes], *, me: int, length: int) -> np.ndarray:
    """sum_{v>me} PRG(s_uv) - sum_{v<me} PRG(s_uv) over the given round seeds (mod 2^64)."""
    total = np.zeros(length, dtype=np.uint64)
    for peer, seed in pair_seeds.items():
        if peer > me:
            total += prg(seed, length)
        elif peer < me:
            total -= prg(seed, length)
        else:
            raise SecAggError("a party has no pair mask with itself")
    return total


@dataclass(frozen=True)
class MaskedInput:
    """What a party sends for one round: its masked vector and its encrypted self-seed shares."""

    masked: np.ndarray
    encrypted_shares: dict[int, bytes]
    own_share: bytes  # kept by the party, released in the unmask step like any other share


def mask(values: np.ndarray, *, me: int, round_id: int, job_id: str, threshold: int,
         pairs: Mapping[int, bytes]) -> MaskedInput:
    """Mask a signed integer vector for one round with a fresh self-seed shared among all peers.

    `pairs` maps every other participating party to its pair secret.
    """
    if values.dtype.kind not in "iu":
        raise SecAggError("only integer vectors can be masked exactly")
    length = values.shape[0]
    b = new_seed()
    y = values.astype(np.int64).view(np.uint64).copy()
    y += prg(b, length)
    y += pair_mask_sum({v: round_seed(s, round_id) for v, s in pairs.items()}, me=me,
                       length=length)
    holders = sorted([me, *pairs])
    shares = shamir.split(b, threshold=threshold, holders=holders)
    enc = {v: encrypt_share(pairs[v], shares[v], job_id=job_id, round_id=round_id, sender=me,
                            recipient=v) for v in pairs}
    return MaskedInput(masked=y, encrypted_shares=enc, own_share=shares[me])


def unmask_sum(masked: Mapping[int, np.ndarray], *, self_shares: Mapping[int, Mapping[int, bytes]],
               dropped_seeds: Mapping[tuple[int, int], bytes], threshold: int) -> np.ndarray:
    """Recover sum_u x_u over the survivors `masked` (party -> masked vector).

    self_shares[u] holds at least `threshold` Shamir shares (holder -> share) of b_u for each
    survivor u; dropped_seeds[(d, v)] is the round seed between dropped party d and survivor v.
    """
    if not masked:
        raise SecAggError("no masked inputs to sum")
    length = next(iter(masked.values())).shape[0]
    total = np.zeros(length, dtype=np.uint64)
    for u, y in masked.items():
        if y.shape != (length,) or y.dtype != np.uint64:
            raise SecAggError(f"party {u}: masked vector has the wrong shape or type")
        total += y
        if u not in self_shares:
            raise SecAggError(f"party {u}: no shares of its self-mask were released")
        total -= prg(shamir.combine(self_shares[u], threshold=threshold), length)
    for (d, v), seed in dropped_seeds.items():
        if v not in masked or d in masked:
            raise SecAggError(f"pair seed ({d}, {v}) does not belong to a dropped/survivor pair")
        # survivor v added +PRG if d > v and -PRG if d < v; undo that.
        if d > v:
            total -= prg(seed, length)
        else:
            total += prg(seed, length)
    return total.view(np.int64)
