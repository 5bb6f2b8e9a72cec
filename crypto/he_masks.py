"""Round-bound masks under the he channel: only the key holder can remove them, and only from
the one honest sum of a round.

Why. The key holder decrypts whatever ciphertext the coordinator sends as "the sum of round r
over contributors C". Without more, a deviating coordinator could have it decrypt
- the same round's ciphertexts again over a subset, under another round id, and subtract the
  two answers: one party's vector with only its own noise share;
- one party's ciphertext passed off as the sum of t;
- parties that were sent different requests (e.g. a larger noise variance for one party,
  which that party pays for, and a smaller one for the rest);
- chosen ciphertexts, one after another: BFV is not CCA-secure, so a decryption oracle leaks
  the secret key.

How. At setup the key holder makes a fresh X25519 key pair for the job and signs its public
half with the public context (crypto.he). Party i and the key holder share
s_i = HKDF(X25519(job key of i, key holder's mask key), salt = job id, info = i), which no one
else knows (the coordinator sees both public keys only). For round r, whose request has the
sha256 digest d (every participant hashes the request it answered, the coordinator the one
it sent), party i draws M_i = PRF(s_i; r, d) (ChaCha20 keyed by HKDF(s_i; r, d)), uniform over
Z_p^(L + TAG_SLOTS) (rejection sampling, no bias), and encrypts
    (v_i || 0^TAG_SLOTS) + M_i  mod p.
The key holder, given C, r and d, decrypts the sum S, subtracts sum_{i in C} M_i(r, d) and
releases the result only if the TAG_SLOTS tag slots are exactly 0 and every value is within
|C| * B (crypto.he). Each (job, round) is decrypted at most once.

Why that suffices (coordinator and key holder not colluding; PRF = ChaCha20 under an HKDF key
from a Diffie-Hellman secret the coordinator lacks). Every ciphertext the coordinator holds
carries exactly one mask M_i(r, d) (a party answers each round once, with the digest of the
request it got) and no other way to obtain an encryption of a mask exists for it. What it
sends is some integer combination sum_j a_j * (x_j + M_j) + E(y) with y of its choosing. After
subtraction the tag slots equal sum_j a_j M_j[tag] - sum_{i in C} M_i(r, d)[tag] + y[tag]:
unless the combination is exactly the contributions of C to round r under digest d (a_j = 1
for those, 0 for every other mask), this is a nonzero combination of independent uniform
values mod p, hence uniform, and all TAG_SLOTS slots vanish with probability p^-TAG_SLOTS
(< 2^-170 for p > 2^43). So a released decryption is the honest sum of the noised vectors of
|C| >= t parties who all answered the same request, plus a vector the coordinator chose
itself, and each round is released once: dropping to t, re-labelling, sub-setting, mixing
rounds, sending different requests and chosen-ciphertext queries all yield a refusal. A
refusal is one bit that is 1 only with that negligible probability, so it teaches nothing
about the key or about any party's vector.

Colluding parties know their own s_i: they can add their own masks, nothing else; the noise of
the t - c honest parties in every released sum is what the accounting assumes (as for secagg).
The key holder learns nothing new: it could decrypt anything it is shown anyway, and it is
trusted not to collude with the coordinator (README, threat model).
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

TAG_SLOTS = 4  # zero slots after the data: a sum whose masks do not cancel fails the check


class MaskError(ValueError):
    """A mask could not be made or removed safely; the message says why."""


def _hkdf(key: bytes, *, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)


def shared_secret(private: bytes, peer_public: bytes, *, job_id: str, party: int) -> bytes:
    """s_i: what party `party` and the key holder share for this job, from either side (the
    party's job key with the key holder's mask key, or the other way round)."""
    if len(private) != 32 or len(peer_public) != 32:
        raise MaskError("X25519 keys have 32 bytes")
    try:  # cryptography refuses an all-zero result (a low-order peer key) itself
        raw = X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        raw = bytes(32)
    if raw == bytes(32):
        raise MaskError("a low-order X25519 key gives no shared secret; refused")
    return _hkdf(raw, salt=job_id.encode(), info=b"fedsynth/he-mask/v1/party/%d" % party)


def round_mask(secret: bytes, *, round_id: int, request_digest: bytes, length: int,
               modulus: int) -> np.ndarray:
    """M_i(r, d): `length` values uniform over [0, modulus), from the shared secret."""
    if len(request_digest) != 32:
        raise MaskError("a round mask needs the 32-byte digest of the round's request")
    if not 2 < modulus < 2**62:
        raise MaskError("modulus out of range")
    seed = _hkdf(secret, salt=request_digest, info=b"fedsynth/he-mask/v1/round/%d" % round_id)
    stream = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    bits = modulus.bit_length()
    out = np.empty(0, dtype=np.int64)
    while len(out) < length:  # rejection sampling: exactly uniform; accepts > 1/2 per draw
        want = 2 * (length - len(out)) + 16
        words = np.frombuffer(stream.update(bytes(8 * want)), dtype="<u8") >> np.uint64(64 - bits)
        out = np.concatenate([out, words[words < modulus].astype(np.int64)])
    return out[:length]


def centred(values: np.ndarray, modulus: int) -> np.ndarray:
    """Representatives in [-(p - 1) / 2, (p - 1) / 2] (BFV's plaintext encoding) of values."""
    r = np.mod(values, modulus)
    return np.where(r > modulus // 2, r - modulus, r).astype(np.int64)


def mask(values: np.ndarray, round_mask_: np.ndarray, modulus: int) -> np.ndarray:
    """(values || 0^TAG_SLOTS) + mask mod p, centred: what the party encrypts."""
    full = np.concatenate([values.astype(np.int64), np.zeros(TAG_SLOTS, dtype=np.int64)])
    if len(round_mask_) != len(full):
        raise MaskError(f"mask of {len(round_mask_)} values for {len(full)} slots")
    return centred(np.mod(full, modulus) + round_mask_, modulus)


def unmask(total: np.ndarray, masks: list[np.ndarray], modulus: int) -> np.ndarray:
    """The data part of a decrypted sum minus the contributors' masks, or MaskError when the
    tag slots are not all zero (the masks did not cancel: not the honest sum of the round)."""
    acc = np.mod(total.astype(np.int64), modulus)
    for m in masks:
        if len(m) != len(acc):
            raise MaskError("a mask of another length than the sum")
        acc = np.mod(acc - m, modulus)
    plain = centred(acc, modulus)
    if np.any(plain[-TAG_SLOTS:] != 0):
        raise MaskError("the decryption is not the sum of the listed contributors' answers to "
                        "this round's request")
    return plain[:-TAG_SLOTS]
