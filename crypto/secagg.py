"""Secure aggregation by pairwise masking over Z_2^64 (Bonawitz et al. 2017), over many rounds.

Keys, and who knows what:
- Job key a_u (X25519, one per party and job): only u holds the private half; the public half,
  signed with u's Ed25519 identity key (crypto.keys), goes to the others once. Every pair
  (u, v) derives a pair secret k_uv from their Diffie-Hellman value with HKDF-SHA256, bound to
  the job id and both indices. k_uv only ever keys ChaCha20-Poly1305 encryption of shares
  between u and v; it never enters a mask and nobody releases it, so the coordinator (which
  relays every share) never reads one addressed to an honest party.
- Mask key m_u(r) (X25519, fresh for each party u and aggregation round r, "one-shot"): only u
  holds the private half, and only until it has masked its round-r vector. The public half
  M_u(r) is signed with u's identity key over (job, u, r) (`sign_mask_key`), so nobody can
  substitute it, replay it in another round or job, or make u appear to have two keys for one
  round. u announces it one round ahead (round r - 1's reply, or a key exchange before the
  first masked round) together with t-out-of-n Shamir shares of m_u(r), one per participant,
  each encrypted under k_uv with the associated data (kind "mask-key", job, r, u, v).
- Pair-mask seed s_uv(r) = HKDF(DH(m_u(r), M_v(r)), job, r, u, v): known to u and v, and to
  whoever reconstructs m_u(r) or m_v(r). It is used in round r only.
- Self-mask seed b_u(r): drawn fresh by u in round r, Shamir-shared the same way (kind
  "self-mask", encrypted under k_uv), sent with u's round-r vector.
- Party u sends y_u = x_u + PRG(b_u(r)) + sum_{v>u} PRG(s_uv(r)) - sum_{v<u} PRG(s_uv(r))
  (mod 2^64).

Why the sum is exact: for two survivors u < v, +PRG(s_uv) in y_u and -PRG(s_uv) in y_v cancel.
The coordinator removes each survivor's PRG(b_u) after recovering b_u from t shares. For a
party d that dropped before sending, the survivors' vectors still carry their pair masks with
d: the coordinator recovers m_d(r) from t shares (`recover_mask_key`, checked against the
signed M_d(r)) and computes s_dv(r) with every survivor v (`dropped_pair_seeds`). It needs
nothing from v itself, so a survivor that leaves during unmasking does not stop the round: its
vector is in the sum, its self-mask comes from t other parties' shares, and its pair masks with
d from m_d(r). Arithmetic is mod 2^64: sums of signed values below 2^63 in magnitude are exact.

Why no vector is revealed:
- Per (party, round), honest parties release shares of b_u(r) only if u is named a survivor
  and shares of m_u(r) only if u is named dropped. The node enforces that the survivor and
  dropped lists are disjoint, that it answers each round's unmask step once, and that the list
  carries t survivors' signatures (the consistency check in protocols.secure_sum). So no
  (party, round) has both its self-mask and its mask key released: with 2t >= n + c + 2
  (protocols.spec), the t - c honest releases each would need cannot both happen even if the
  coordinator lied to different parties (2(t - c) honest releases > n - c honest parties).
- A survivor u's vector keeps, after b_u(r) is removed, its pair masks with the other honest
  survivors: none of their mask keys is reconstructed (they are named survivors), so y_u alone
  is uniformly masked; only the sum over the survivors comes out.
- Reconstructing a dropped d's m_d(r) reveals s_dv(r) for every v, and nothing else: d sent
  no vector in round r (if the coordinator lied and did receive y_d, y_d still carries
  PRG(b_d(r)), whose shares nobody releases since d is not named a survivor), and m_d(r) is
  used in no other round, so none of d's other vectors loses a mask. This is why mask keys are
  per round: reconstructing a job-long key would strip d's pair masks in every earlier round,
  in which d's self-mask was released, and so open d's earlier vectors.
- Shares are bound by their associated data to the job, round, sender, recipient and kind, so
  the coordinator cannot replay a self-mask share as a mask-key share (or into another round)
  to get both halves released.

A coordinator colluding with c < t parties learns: the colluders' own keys and seeds, including
their pair seeds s_cv(r) with honest parties; fewer than t shares of every honest b_u(r) and
m_u(r) (nothing, Shamir is information-theoretic) beyond what the protocol releases; per round,
the sum of the survivors' vectors (from which the colluders' own can be subtracted: hence the
noise is sized for t - c honest survivors), and the mask keys of the dropped parties, which
mask nothing else. Security assumes X25519, HKDF-SHA256, ChaCha20 (PRG) and ChaCha20-Poly1305
behave as ideal primitives and that each party's identity key and randomness stay its own.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedsynth.crypto import shamir
from fedsynth.crypto.keys import verify_statement

SEED_BYTES = 32
SELF_MASK = "self-mask"  # kinds of encrypted shares (part of their associated data)
MASK_KEY = "mask-key"
SHARE_KINDS = (SELF_MASK, MASK_KEY)


class SecAggError(ValueError):
    """A secure-aggregation step got inputs it cannot use safely."""


def _hkdf(key: bytes, *, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=salt, info=info).derive(key)


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair (a job key or a round's mask key); the private half never leaves."""

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


def public_of(private: bytes) -> bytes:
    """The X25519 public key of a raw private key."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _private_key(private: bytes) -> X25519PrivateKey:
    if len(private) != 32:
        raise SecAggError("an X25519 private key has 32 bytes")
    return X25519PrivateKey.from_private_bytes(private)


def _exchange(key: X25519PrivateKey, peer_public: bytes, *, peer: int) -> bytes:
    if len(peer_public) != 32:
        raise SecAggError(f"party {peer}: public key has {len(peer_public)} bytes, expected 32")
    return key.exchange(X25519PublicKey.from_public_bytes(peer_public))


def pair_secret(private: bytes, peer_public: bytes, *, job_id: str, me: int, peer: int) -> bytes:
    """The secret that parties `me` and `peer` share (job keys), bound to the job and both
    indices. It only encrypts shares between the two; it never masks anything.

    Remembered (at most PAIR_SECRETS entries): a party needs k_uv in every
    round, several times, and the key agreement was most of a round's time at hundreds of
    parties. k_uv lives as long as the job key it comes from, which the party holds for the
    whole job anyway (its run state holds that key). The memory is keyed by a digest of the
    job key, not the key itself, and an entry stays until evicted (PAIR_SECRETS entries, so
    it can outlast the job in a long-running node process): someone who later reads that
    process's memory and kept a job's relayed shares could decrypt them, as the run state
    would let them too while the node keeps it. Round mask keys are never remembered (they
    must be gone once used)."""
    if me == peer:
        raise SecAggError("a party has no pair secret with itself")
    digest = hashlib.sha256(b"fedsynth/job-key|" + bytes(private)).digest()
    index = (digest, bytes(peer_public), job_id, me, peer)
    known = _PAIR_SECRETS.get(index)
    if known is None:
        known = _derive_pair_secret(_private_key(private), peer_public, job_id, me, peer)
        if len(_PAIR_SECRETS) >= PAIR_SECRETS:
            oldest = next(iter(_PAIR_SECRETS), None)
            if oldest is not None:
                _PAIR_SECRETS.pop(oldest, None)  # the oldest
        _PAIR_SECRETS[index] = known
    return known


PAIR_SECRETS = 1 << 17  # about 1,000 parties' neighbourhoods of a sparse graph, 8 MB


_PAIR_SECRETS: dict[tuple[bytes, bytes, str, int, int], bytes] = {}


def _derive_pair_secret(key: X25519PrivateKey, peer_public: bytes, job_id: str, me: int,
                        peer: int) -> bytes:
    shared = _exchange(key, peer_public, peer=peer)
    lo, hi = sorted((me, peer))
    return _hkdf(shared, salt=job_id.encode(), info=b"fedsynth/pair/%d/%d" % (lo, hi))


def round_pair_seed(mask_private: bytes, peer_mask_public: bytes, *, job_id: str, round_id: int,
                    me: int, peer: int) -> bytes:
    """s_uv(r): the pair-mask seed of `me` and `peer` in round `round_id`, from their round-r
    mask keys (either private half with the other's public half gives the same seed)."""
    return _round_pair_seed(_private_key(mask_private), peer_mask_public, job_id=job_id,
                            round_id=round_id, me=me, peer=peer)


def _round_pair_seed(key: X25519PrivateKey, peer_mask_public: bytes, *, job_id: str,
                     round_id: int, me: int, peer: int) -> bytes:
    if me == peer:
        raise SecAggError("a party has no pair mask with itself")
    shared = _exchange(key, peer_mask_public, peer=peer)
    lo, hi = sorted((me, peer))
    return _hkdf(shared, salt=job_id.encode(),
                 info=b"fedsynth/pair-mask/%d/%d/%d" % (round_id, lo, hi))


def round_pair_seeds(mask_private: bytes, mask_publics: Mapping[int, bytes], *, job_id: str,
                     round_id: int, me: int) -> dict[int, bytes]:
    """s_uv(r) with every other party in `mask_publics` (party -> its round-r mask key)."""
    key = _private_key(mask_private)  # parsed once for all peers, not remembered after
    return {v: _round_pair_seed(key, pub, job_id=job_id, round_id=round_id, me=me, peer=v)
            for v, pub in mask_publics.items() if v != me}


def _mask_key_statement(job_id: str, party: int, round_id: int, public_key: bytes) -> bytes:
    return b"fedsynth/mask-key/v1|%s|%d|%d|%s" % (job_id.encode(), party, round_id, public_key)


def sign_mask_key(identity_private: bytes, *, job_id: str, party: int, round_id: int,
                  public_key: bytes) -> bytes:
    """The identity signature binding a mask key to one job, party and round.

    The statement is domain-separated from the job-key statement of crypto.keys, so neither
    signature can stand in for the other."""
    return Ed25519PrivateKey.from_private_bytes(identity_private).sign(
        _mask_key_statement(job_id, party, round_id, public_key))


def verify_mask_key(identity: bytes, signature: bytes, *, job_id: str, party: int,
                    round_id: int, public_key: bytes) -> bool:
    """Whether `signature` is party `party`'s identity signature of its round mask key, and
    the key a usable X25519 point (a low-order point, signed by a colluding party, would make
    every honest peer's key agreement fail after it had done its work)."""
    if len(public_key) != 32 or not usable_x25519(public_key):
        return False
    return verify_statement(identity, signature,
                            _mask_key_statement(job_id, party, round_id, public_key))


@lru_cache(maxsize=1 << 14)
def usable_x25519(public_key: bytes) -> bool:
    """Whether key agreement with this public key gives a non-zero secret (RFC 7748 sec. 6.1:
    low-order points give the all-zero secret, which the library refuses)."""
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(public_key))
    except ValueError:
        return False
    return True


@lru_cache(maxsize=PAIR_SECRETS)
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


def _aad(kind: str, job_id: str, round_id: int, sender: int, recipient: int,
         context: bytes = b"") -> bytes:
    if kind not in SHARE_KINDS:
        raise SecAggError(f"unknown share kind {kind!r}")
    return b"fedsynth/%s|%s|%d|%d|%d|%s" % (kind.encode(), job_id.encode(), round_id, sender,
                                           recipient, context.hex().encode())


def encrypt_share(pair: bytes, share: bytes, *, job_id: str, round_id: int, sender: int,
                  recipient: int, kind: str = SELF_MASK, context: bytes = b"") -> bytes:
    """Encrypt a Shamir share for `recipient`; the kind (self-mask seed or mask key), job,
    round and both ends are authenticated."""
    nonce = secrets.token_bytes(12)
    aad = _aad(kind, job_id, round_id, sender, recipient, context)
    return nonce + ChaCha20Poly1305(_share_key(pair)).encrypt(nonce, share, aad)


def decrypt_share(pair: bytes, blob: bytes, *, job_id: str, round_id: int, sender: int,
                  recipient: int, kind: str = SELF_MASK, context: bytes = b"") -> bytes:
    """Decrypt a share; one replayed from another job, round, pair or kind fails."""
    aad = _aad(kind, job_id, round_id, sender, recipient, context)
    try:
        return ChaCha20Poly1305(_share_key(pair)).decrypt(blob[:12], blob[12:], aad)
    except (InvalidTag, ValueError) as exc:
        raise SecAggError(
            f"{kind} share from party {sender} for round {round_id} does not authenticate: "
            "corrupted, replayed or from another job") from exc


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


def _share_out(secret: bytes, *, me: int, round_id: int, job_id: str, threshold: int,
               pairs: Mapping[int, bytes], kind: str,
               context: bytes = b"") -> tuple[dict[int, bytes], bytes]:
    """t-out-of-n shares of `secret` among `me` and its peers, each encrypted to its holder."""
    holders = sorted([me, *pairs])
    shares = shamir.split(secret, threshold=threshold, holders=holders)
    enc = {v: encrypt_share(pairs[v], shares[v], job_id=job_id, round_id=round_id, sender=me,
                            recipient=v, kind=kind, context=context) for v in pairs}
    return enc, shares[me]


@dataclass(frozen=True)
class MaskKey:
    """A party's fresh mask key for one round, with its private half shared among the peers."""

    keys: KeyPair  # the private half stays with the party until it has masked that round
    encrypted_shares: dict[int, bytes]  # peer -> its encrypted share of keys.private


def new_mask_key(*, me: int, round_id: int, job_id: str, threshold: int,
                 pairs: Mapping[int, bytes]) -> MaskKey:
    """Draw the round-`round_id` mask key of party `me` and share its private half, t-out-of-n,
    among `me` and `pairs` (peer -> pair secret). The party's own share is not kept: it is
    never needed (the key is reconstructed only when the party itself has dropped)."""
    keys = KeyPair.generate()
    enc, _ = _share_out(keys.private, me=me, round_id=round_id, job_id=job_id,
                        threshold=threshold, pairs=pairs, kind=MASK_KEY)
    return MaskKey(keys=keys, encrypted_shares=enc)


@dataclass(frozen=True)
class MaskedInput:
    """What a party sends for one round: its masked vector and its encrypted self-seed shares."""

    masked: np.ndarray
    encrypted_shares: dict[int, bytes]
    own_share: bytes  # kept by the party, released in the unmask step like any other share


def mask(values: np.ndarray, *, me: int, round_id: int, job_id: str, threshold: int,
         pairs: Mapping[int, bytes], seeds: Mapping[int, bytes],
         context: bytes = b"") -> MaskedInput:
    """Mask a signed integer vector for one round with a fresh self-seed shared among all peers.

    `pairs` maps every other participating party to its pair secret (to encrypt the shares);
    `seeds` maps the same parties to this round's pair-mask seeds (`round_pair_seeds`).
    """
    if values.dtype.kind not in "iu":
        raise SecAggError("only integer vectors can be masked exactly")
    if set(seeds) != set(pairs) or me in pairs:
        raise SecAggError("pair seeds and pair secrets must name the same other parties")
    length = values.shape[0]
    b = new_seed()
    y = values.astype(np.int64).view(np.uint64).copy()
    y += prg(b, length)
    y += pair_mask_sum(seeds, me=me, length=length)
    enc, own = _share_out(b, me=me, round_id=round_id, job_id=job_id, threshold=threshold,
                          pairs=pairs, kind=SELF_MASK, context=context)
    return MaskedInput(masked=y, encrypted_shares=enc, own_share=own)


def recover_mask_key(shares: Mapping[int, bytes], *, threshold: int, public: bytes,
                     party: int) -> bytes:
    """A dropped party's round mask key from t shares, checked against its signed public key."""
    try:
        private = shamir.combine(shares, threshold=threshold)
    except shamir.ShamirError as exc:
        raise SecAggError(f"party {party}: its mask key cannot be recovered: {exc}") from exc
    if public_of(private) != public:
        raise SecAggError(f"party {party}: the released shares do not give its mask key "
                          "(a share was corrupted)")
    return private


def dropped_pair_seeds(key_shares: Mapping[int, Mapping[int, bytes]],
                       mask_publics: Mapping[int, bytes], survivors: Collection[int], *,
                       job_id: str, round_id: int, threshold: int,
                       neighbours: Mapping[int, Collection[int]] | None = None,
                       ) -> dict[tuple[int, int], bytes]:
    """s_dv(r) for every dropped party d (key_shares[d]: holder -> share of m_d(r)) and every
    survivor v it masked with (all of them, or `neighbours[d]` in a sparse graph), from m_d(r)
    and v's public mask key."""
    out: dict[tuple[int, int], bytes] = {}
    for d, shares in key_shares.items():
        if d in survivors:
            raise SecAggError(f"party {d} is a survivor: its mask key is never reconstructed")
        private = recover_mask_key(shares, threshold=threshold, public=mask_publics[d], party=d)
        peers = survivors if neighbours is None else sorted(set(neighbours[d]) & set(survivors))
        key = _private_key(private)
        for v in peers:
            out[(d, v)] = _round_pair_seed(key, mask_publics[v], job_id=job_id,
                                           round_id=round_id, me=d, peer=v)
    return out


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
