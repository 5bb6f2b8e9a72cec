"""Homomorphic encryption (TenSEAL 0.3.18) for the `he` channel: BFV for exact counts, CKKS for
real vectors, and the key holder of one job.

Who knows what:
- The key holder draws a fresh key pair per job (SEAL draws from the operating system; there
  is no seed to know) and keeps the secret key. It publishes the public context, serialised
  without the secret key and without Galois or relinearisation keys (the channel only adds;
  TenSEAL generates relinearisation keys with every context, they never leave), together with
  its Ed25519 identity signature of (scheme, job id, sha256 of those exact bytes, sha256 of
  the job spec it was set up with: its t, n and parties). A party
  checks that signature against the key holder's identity in its own policy before it
  encrypts anything, so a coordinator cannot hand it a context whose secret key it holds.
- A party adds its DP noise share before it encrypts: no ciphertext ever holds its clear
  counts. Each chunk carries the sha256 of the public context it was made under.
- The coordinator holds only the public context: it adds ciphertexts (and could encrypt), it
  cannot decrypt (IND-CPA security of BFV/CKKS under RLWE, 128-bit SEAL default moduli).
- The key holder sees only what it decrypts: the sum of at least t parties' noised vectors,
  once per round (`KeyHolder.decrypt` refuses a second decryption of a round, another job, a
  round outside 1..MAX_ROUND and fewer than t distinct contributors). The threshold is the
  job's t, given when the key holder is made, never by the caller of `decrypt`.

Limits, stated:
- TenSEAL has no threshold decryption, so the coordinator and the key holder must not collude:
  together they decrypt each party's ciphertext, i.e. its vector carrying only its own
  1/(t - c) share of the noise.
- The contributor list, the round id and the ciphertext are the coordinator's to send. BFV
  and CKKS are not CCA-secure (a decryption oracle on chosen ciphertexts leaks the secret
  key), and "once per round" alone would let a deviating coordinator decrypt one round's
  answers again over a subset under a fresh round id. For BFV sums the parties therefore mask
  their vectors with round-bound masks only the key holder removes (crypto.he_masks,
  `KeyHolder.decrypt(party_keys=...)`): anything but the honest sum of the listed
  contributors' answers to one request decrypts to a refusal. Also: one decryption per round,
  at most `max_decryptions` per job (client_node.keyholder), keys per job, and the range check
  below (a decryption outside the bound of a sum of the claimed contributors is refused).
- CKKS decryptions carry the encryption noise; shared widely they can reveal the key
  (Li and Micciancio 2020). Only noised sums are decrypted, keys are per job.

A ciphertext from another job: SEAL ciphertexts carry only the parameter hash (parms_id), not
the key. One made under other parameters fails to load ("ciphertext data is invalid"); one
made under another key with the same parameters loads and decrypts silently to values spread
uniformly over Z_p (BFV) or to huge reals (CKKS). Two checks make that a refusal: every chunk
is prefixed with the fingerprint of its context (refused before decryption on mismatch), and
the key holder releases a decryption only if every value lies within contributors x bound
(a uniform value mod p passes with probability <= n/n_max per slot: the whole vector
practically never).

BFV parameters and why a sum never wraps: BFV decodes a slot to the representative of its
value mod p in [-(p-1)/2, (p-1)/2] and wraps silently. A party refuses to encrypt a vector with
any |v| > B, and the coordinator refuses to add more than n_max contributions, so a sum S has
|S| <= n_max * B < p / 2 (p > 2 * n_max * B): its representative is S itself. p is the smallest
prime with p = 1 (mod 2N) above 2 * n_max * B (batching needs p = 1 mod 2N). Defaults: N = 4096,
B = 2^31, n_max = 2^12, p = 17592186175489 (45 bits). Noise: addition adds noise linearly; we
measured that one fresh ciphertext doubled k times (the worst, fully correlated case of 2^k
additions) decrypts correctly up to k = 20 with this p (fails at k = 21 or 22), so n_max = 2^12
leaves a factor 2^8. `BfvParams` requires bits(p) + log2(n_max) <= (data modulus bits) - 15,
which keeps that margin for other choices.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import tenseal as ts
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedsynth.crypto import he_masks
from fedsynth.crypto.keys import verify_statement
from fedsynth.crypto.secagg import KeyPair, public_of

# Round ids are uint32 and a node's reply announces round + 1: the node's own MAX_ROUND
# (client_node) is the same value; crypto does not import the roles.
MAX_ROUND = 2**32 - 2
MAX_CONTEXT_BYTES = 16 * 1024 * 1024
MAX_CHUNK_BYTES = 4 * 1024 * 1024  # measured: 88 KB (BFV 4096), 235 KB (CKKS 8192)
CHUNK_MAGIC = b"fsHE1"  # each chunk: magic, sha256 of its public context, TenSEAL bytes
TAG_BYTES = len(CHUNK_MAGIC) + 32
# Data-level coefficient modulus bits of SEAL's 128-bit default BFV moduli (measured).
_BFV_DATA_BITS = {4096: 72, 8192: 174}
_NOISE_MARGIN_BITS = 15  # see the module docstring: 2^8 over the measured limit


class HEError(ValueError):
    """An HE step got inputs it cannot use safely; the message says which and why."""


class WrongJob(HEError):
    """A request for another job than the key holder's."""


class RoundOutOfRange(HEError):
    """A round id outside 1..MAX_ROUND."""


class RoundAlreadyDecrypted(HEError):
    """A second decryption of one round, which the key holder never does."""


class TooFewContributors(HEError):
    """A sum over fewer than t distinct parties."""


class ForeignCiphertext(HEError):
    """A ciphertext that was not made under this job's context, or does not parse."""


def is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin: the first 12 primes as bases are exact for n < 3.3e24."""
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    if n < 2:
        return False
    for b in bases:
        if n % b == 0:
            return n == b
    if n >= 3_317_044_064_679_887_385_961_981:
        raise HEError("is_prime is exact below 3.3e24 only")
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def bfv_plain_modulus(poly_modulus_degree: int, bound: int, max_parties: int) -> int:
    """The smallest prime p = 1 (mod 2N) with p > 2 * max_parties * bound."""
    step = 2 * poly_modulus_degree
    p = (2 * max_parties * bound) // step * step + 1
    while p <= 2 * max_parties * bound or not is_prime(p):
        p += step
    return p


@dataclass(frozen=True)
class BfvParams:
    """BFV for exact integer sums: |each party's value| <= bound, at most max_parties addends."""

    poly_modulus_degree: int = 4096
    bound: int = 2**31
    max_parties: int = 2**12
    scheme: str = field(default="bfv", init=False)

    def __post_init__(self) -> None:
        if self.poly_modulus_degree not in _BFV_DATA_BITS:
            raise HEError(f"BFV poly modulus degree must be one of {sorted(_BFV_DATA_BITS)}")
        if self.bound < 1 or self.max_parties < 1:
            raise HEError("bound and max_parties must be positive")
        bits = self.plain_modulus.bit_length()
        budget = _BFV_DATA_BITS[self.poly_modulus_degree] - _NOISE_MARGIN_BITS
        if bits > 60 or bits + math.ceil(math.log2(self.max_parties)) > budget:
            raise HEError(f"bound {self.bound} x {self.max_parties} parties needs a {bits}-bit "
                          "plain modulus: too large for this degree's noise budget; lower the "
                          "bound or max_parties, or use poly_modulus_degree=8192")

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree

    @cached_property
    def plain_modulus(self) -> int:
        return bfv_plain_modulus(self.poly_modulus_degree, self.bound, self.max_parties)

    def new_context(self) -> Any:
        return ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=self.poly_modulus_degree,
                          plain_modulus=self.plain_modulus)


@dataclass(frozen=True)
class CkksParams:
    """CKKS `ckks_vector` for real sums, N = 8192, scale 2^40, moduli 60+40+60 bits.

    Only additions, so no level is consumed: ciphertexts live mod a 100-bit modulus, values up
    to about 2^59 in magnitude decode. Measured absolute error of a sum of 100 parties' vectors
    of 4096 values: <= 1.2e-7 (single ciphertext: 9e-9), whatever the magnitude (fixed point);
    `PRECISION` = 1e-6 is the stated bound for up to max_parties addends.
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 60)
    scale_bits: int = 40
    bound: float = 2.0**32
    max_parties: int = 2**12
    scheme: str = field(default="ckks", init=False)

    PRECISION = 1e-6

    def __post_init__(self) -> None:
        if not 0 < self.bound * self.max_parties <= 2.0**50:
            raise HEError("bound x max_parties must be positive and at most 2^50 (sums decode "
                          "up to about 2^59 at scale 2^40)")

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    def new_context(self) -> Any:
        ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=self.poly_modulus_degree,
                         coeff_mod_bit_sizes=list(self.coeff_mod_bit_sizes))
        ctx.global_scale = 2.0**self.scale_bits
        return ctx


Params = BfvParams | CkksParams


@dataclass(frozen=True)
class PublicContext:
    """A loaded public context: it encrypts and adds, it cannot decrypt."""

    context: Any = field(repr=False)
    params: Params
    fingerprint: bytes  # sha256 of the serialised public context the key holder signed


@dataclass(frozen=True)
class JobKeys:
    """One job's key pair, at the key holder only (the secret context never leaves it)."""

    secret: Any = field(repr=False)
    public: PublicContext
    public_bytes: bytes = field(repr=False)

    @classmethod
    def generate(cls, params: Params) -> JobKeys:
        ctx = params.new_context()
        data = ctx.serialize(save_public_key=True, save_secret_key=False,
                             save_galois_keys=False, save_relin_keys=False)
        return cls(secret=ctx, public=load_public_context(data, params), public_bytes=data)

    def public_context_bytes(self) -> bytes:
        return self.public_bytes


_reference_ids: dict[Params, list[int]] = {}


def _expected_parms_id(params: Params) -> list[int]:
    """SEAL's hash of the parameters (scheme, degree, moduli), from a reference context."""
    if params not in _reference_ids:
        _reference_ids[params] = list(params.new_context().seal_context().data.first_parms_id())
    return _reference_ids[params]


def load_public_context(data: bytes, params: Params) -> PublicContext:
    """Load a public context, refusing one that holds a secret, Galois or relinearisation key or
    has other parameters than `params` (same scheme, degree, moduli; CKKS: same scale)."""
    if len(data) > MAX_CONTEXT_BYTES:
        raise HEError(f"public context of {len(data)} bytes exceeds {MAX_CONTEXT_BYTES}")
    try:
        ctx = ts.context_from(data)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise HEError(f"public context does not parse: {exc}") from exc
    problems = []
    if ctx.has_secret_key() or ctx.is_private():
        problems.append("it holds a secret key (a public context must not)")
    if ctx.has_galois_keys() or ctx.has_relin_keys():
        problems.append("it holds Galois or relinearisation keys (the channel only adds)")
    if not ctx.has_public_key():
        problems.append("it holds no public key")
    seal = ctx.seal_context().data
    if list(seal.first_parms_id()) != _expected_parms_id(params):
        problems.append(f"its parameters are not the job's {params.scheme} parameters")
    if isinstance(params, CkksParams) and ctx.global_scale != 2.0**params.scale_bits:
        problems.append(f"its scale is not 2^{params.scale_bits}")
    if problems:
        raise HEError("refused public context: " + "; ".join(problems))
    return PublicContext(ctx, params, hashlib.sha256(data).digest())


def _chunks(length: int, slots: int) -> list[int]:
    if length < 1:
        raise HEError("cannot encrypt an empty vector")
    return [min(slots, length - i) for i in range(0, length, slots)]


def _tagged(public: PublicContext, vector: Any) -> bytes:
    return CHUNK_MAGIC + public.fingerprint + vector.serialize()


def _parse(public: PublicContext, context: Any, blob: bytes, size: int, what: str) -> Any:
    if len(blob) > MAX_CHUNK_BYTES or blob[:TAG_BYTES] != CHUNK_MAGIC + public.fingerprint:
        raise ForeignCiphertext(f"{what} was not made under this job's public context")
    load = ts.bfv_vector_from if public.params.scheme == "bfv" else ts.ckks_vector_from
    try:
        vec = load(context, blob[TAG_BYTES:])
        cts = vec.ciphertext()
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ForeignCiphertext(f"{what} does not parse under this job's context: {exc}") from exc
    params = public.params
    ok = (vec.size() == size and len(cts) == 1 and cts[0].size() == 2
          and list(cts[0].parms_id()) == _expected_parms_id(params)
          and cts[0].is_ntt_form() == isinstance(params, CkksParams)
          and (isinstance(params, BfvParams) or cts[0].scale == 2.0**params.scale_bits))
    if not ok:
        raise ForeignCiphertext(f"{what} has the wrong size or level for this job")
    return vec


def encrypt_counts(public: PublicContext, values: np.ndarray, *,
                   residues: bool = False) -> list[bytes]:
    """A party's integer vector as BFV chunks of N slots; refuses any |v| > bound. With
    `residues`, the values are already residues mod p (centred: a masked vector,
    crypto.he_masks, whose data part the caller checked against the bound)."""
    params = public.params
    if not isinstance(params, BfvParams):
        raise HEError("encrypt_counts needs a BFV context")
    if values.ndim != 1 or values.dtype.kind not in "iu":
        raise HEError("only 1-d integer vectors encrypt exactly under BFV")
    limit = params.plain_modulus // 2 if residues else params.bound
    if len(values) and (values.max() > limit or values.min() < -limit):
        raise HEError(f"a value exceeds the bound {limit}: clip or rescale before "
                      "encrypting (a larger value could wrap the sum)")
    v = values.astype(np.int64)
    out, i = [], 0
    for n in _chunks(len(v), params.slots):
        out.append(_tagged(public, ts.bfv_vector(public.context, v[i:i + n].tolist())))
        i += n
    return out


def encrypt_reals(public: PublicContext, values: np.ndarray) -> list[bytes]:
    """A party's real vector as CKKS chunks of N/2 slots; refuses non-finite or |v| > bound."""
    params = public.params
    if not isinstance(params, CkksParams):
        raise HEError("encrypt_reals needs a CKKS context")
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or not np.all(np.isfinite(v)) or (len(v) and np.max(np.abs(v)) > params.bound):
        raise HEError(f"a CKKS vector must be 1-d, finite and within +-{params.bound}")
    out, i = [], 0
    for n in _chunks(len(v), params.slots):
        out.append(_tagged(public, ts.ckks_vector(public.context, v[i:i + n].tolist())))
        i += n
    return out


def _sizes(params: Params, chunks: Sequence[bytes], length: int) -> list[int]:
    sizes = _chunks(length, params.slots)
    if len(chunks) != len(sizes):
        raise HEError(f"{len(chunks)} chunks for a vector of {length}: expected {len(sizes)}")
    return sizes


def add_ciphertexts(public: PublicContext, contributions: Sequence[Sequence[bytes]],
                    length: int) -> list[bytes]:
    """The coordinator's sum over parties, chunk by chunk (each party's list of chunks)."""
    if not contributions:
        raise HEError("no contributions to add")
    if len(contributions) > public.params.max_parties:
        raise HEError(f"{len(contributions)} contributions exceed max_parties "
                      f"{public.params.max_parties}: the sum could wrap")
    sizes = _sizes(public.params, contributions[0], length)
    for k, chunks in enumerate(contributions):
        if len(chunks) != len(sizes):
            raise HEError(f"contribution {k} has {len(chunks)} chunks, expected {len(sizes)}")
    out = []
    for j, size in enumerate(sizes):
        acc = None
        for k, chunks in enumerate(contributions):
            vec = _parse(public, public.context, chunks[j], size, f"contribution {k} chunk {j}")
            acc = vec if acc is None else acc.add_(vec)
        out.append(_tagged(public, acc))
    return out


def decrypt_sum(keys: JobKeys, chunks: Sequence[bytes], length: int) -> np.ndarray:
    """Decrypt a chunked sum: int64 for BFV, float64 for CKKS (no release checks: see
    `KeyHolder.decrypt`)."""
    params = keys.public.params
    parts = [_parse(keys.public, keys.secret, c, n, f"chunk {j}").decrypt()
             for j, (c, n) in enumerate(zip(chunks, _sizes(params, chunks, length), strict=True))]
    dtype = np.int64 if params.scheme == "bfv" else np.float64
    return np.concatenate([np.asarray(p, dtype=dtype) for p in parts])


def _context_statement(scheme: str, job_id: str, digest: bytes, spec_digest: bytes,
                       mask_key: bytes) -> bytes:
    return b"fedsynth/he-context/v3|%s|%s|%s|%s|%s" % (
        scheme.encode(), job_id.encode(), digest.hex().encode(), spec_digest.hex().encode(),
        mask_key.hex().encode())


def verify_public_context(job_id: str, context_bytes: bytes, signature: bytes,
                          key_holder_identity: bytes, params: Params,
                          spec_digest: bytes = b"", mask_key: bytes = b"") -> PublicContext:
    """A party's check of the key holder's context: signed for this job, for the job spec
    whose digest is `spec_digest` (so the key holder enforces the t, n and parties this party
    agreed to, not another spec the coordinator showed it) and with the key holder's X25519
    mask key `mask_key` (crypto.he_masks), public, the job's parameters. Raises HEError
    otherwise."""
    statement = _context_statement(params.scheme, job_id, hashlib.sha256(context_bytes).digest(),
                                   spec_digest, mask_key)
    if not verify_statement(key_holder_identity, signature, statement):
        raise HEError(f"the {params.scheme} context is not signed by the key holder for job "
                      f"{job_id!r}: tampered, replayed from another job or not the key holder's")
    return load_public_context(context_bytes, params)


class KeyHolder:
    """The key-holder role for one job, independent of transport."""

    def __init__(self, job_id: str, identity_private: bytes, *, threshold: int,
                 params: Params, spec_digest: bytes = b"") -> None:
        if threshold < 2:
            raise HEError("the key holder needs t >= 2: a sum of one party is its own vector")
        if threshold > params.max_parties:
            raise HEError(f"t = {threshold} exceeds max_parties {params.max_parties}")
        self.job_id, self.threshold, self.params = job_id, threshold, params
        self.spec_digest = spec_digest  # the spec it was set up for, in its signed statement
        self._identity = identity_private
        self._keys = JobKeys.generate(params)
        self._mask = KeyPair.generate()  # X25519: the parties' round masks (crypto.he_masks)
        self._decrypted: set[int] = set()

    def to_state(self) -> dict[str, Any]:
        """Everything this key holder needs to go on in another process of the same key-holder
        node (a Flower ClientApp keeps it in its node state between messages): its secret key,
        the exact public bytes it signed and the rounds already decrypted. Never to be sent."""
        secret = self._keys.secret.serialize(save_public_key=True, save_secret_key=True,
                                             save_galois_keys=False, save_relin_keys=False)
        return {"job_id": self.job_id, "threshold": self.threshold, "secret": secret,
                "spec_digest": self.spec_digest.hex(), "mask": self._mask.private.hex(),
                "public": self._keys.public_bytes, "decrypted": sorted(self._decrypted)}

    @classmethod
    def from_state(cls, state: dict[str, Any], identity_private: bytes, *,
                   params: Params) -> KeyHolder:
        """The key holder `to_state` saved, under the same identity and parameters."""
        try:
            secret = ts.context_from(bytes(state["secret"]))
        except (ValueError, RuntimeError, TypeError) as exc:
            raise HEError(f"the key holder's saved state does not parse: {exc}") from exc
        if not secret.is_private():
            raise HEError("the key holder's saved state holds no secret key")
        public = bytes(state["public"])
        holder = cls.__new__(cls)
        holder.job_id, holder.threshold, holder.params = (str(state["job_id"]),
                                                          int(state["threshold"]), params)
        holder.spec_digest = bytes.fromhex(str(state.get("spec_digest", "")))
        holder._identity = identity_private
        mask_private = bytes.fromhex(str(state["mask"]))
        holder._mask = KeyPair(mask_private, public_of(mask_private))
        holder._keys = JobKeys(secret=secret, public=load_public_context(public, params),
                               public_bytes=public)
        holder._decrypted = {int(r) for r in state["decrypted"]}
        return holder

    def check_request(self, job_id: str, round_id: int, contributors: Collection[int]) -> int:
        """The checks made before any decryption (job, round, count of distinct contributors);
        returns that count."""
        if job_id != self.job_id:
            raise WrongJob(f"this key holder serves job {self.job_id!r}, not {job_id!r}")
        if isinstance(round_id, bool) or not isinstance(round_id, int) \
                or not 1 <= round_id <= MAX_ROUND:
            raise RoundOutOfRange(f"round {round_id!r} is outside 1..{MAX_ROUND}")
        if round_id in self._decrypted:
            raise RoundAlreadyDecrypted(f"round {round_id} was already decrypted: once per round")
        n = len(set(contributors))
        if n < self.threshold:
            raise TooFewContributors(f"{n} distinct contributors, the job's threshold is "
                                     f"{self.threshold}")
        if n > self.params.max_parties:
            raise HEError(f"{n} contributors exceed max_parties {self.params.max_parties}")
        return n

    def _unmask(self, total: np.ndarray, round_id: int, request_digest: bytes,
                party_keys: Mapping[int, bytes]) -> np.ndarray:
        """The decrypted sum minus the contributors' round masks; ForeignCiphertext when the
        masks do not cancel (crypto.he_masks: not the honest sum of this round's request)."""
        p = self.params.plain_modulus if isinstance(self.params, BfvParams) else 0
        if not p:
            raise HEError("round masks are for BFV sums")
        try:
            masks = [he_masks.round_mask(
                he_masks.shared_secret(self._mask.private, key, job_id=self.job_id, party=party),
                round_id=round_id, request_digest=request_digest, length=len(total), modulus=p)
                for party, key in sorted(party_keys.items())]
            return he_masks.unmask(total, masks, p)
        except he_masks.MaskError as exc:
            raise ForeignCiphertext(f"round {round_id}: {exc}; not released") from exc

    @property
    def decryptions(self) -> int:
        """How many rounds this key holder has decrypted (each spent, released or not)."""
        return len(self._decrypted)

    @property
    def mask_key(self) -> bytes:
        """The public half of this job's X25519 mask key (signed with the context)."""
        return self._mask.public

    def public_context(self) -> tuple[bytes, bytes]:
        """The public context bytes and the identity signature binding them (and the mask
        key) to this job and its spec."""
        data = self._keys.public_context_bytes()
        sig = Ed25519PrivateKey.from_private_bytes(self._identity).sign(
            _context_statement(self.params.scheme, self.job_id, hashlib.sha256(data).digest(),
                               self.spec_digest, self._mask.public))
        return data, sig

    def decrypt(self, job_id: str, round_id: int, chunks: Sequence[bytes], length: int,
                contributors: Collection[int], *,
                party_keys: Mapping[int, bytes] | None = None,
                request_digest: bytes = b"") -> np.ndarray:
        """Decrypt one round's sum, once; refuse anything else with a distinct error.

        A request refused before decryption (job, round, contributors, a chunk that does not
        parse or carries another context's fingerprint) leaves the round open; from the first
        decryption on the round is spent, even if the range check then refuses the result."""
        n = self.check_request(job_id, round_id, contributors)
        masked = party_keys is not None
        if masked and set(party_keys or {}) != set(contributors):
            raise HEError(f"round {round_id}: a job key is needed for every contributor, and "
                          "only for them")
        sizes = _sizes(self.params, chunks, length + (he_masks.TAG_SLOTS if masked else 0))
        vecs = [_parse(self._keys.public, self._keys.secret, c, s, f"chunk {j}")
                for j, (c, s) in enumerate(zip(chunks, sizes, strict=True))]
        self._decrypted.add(round_id)  # consumed from here on, whatever the outcome
        dtype = np.int64 if self.params.scheme == "bfv" else np.float64
        out = np.concatenate([np.asarray(v.decrypt(), dtype=dtype) for v in vecs])
        if party_keys is not None:
            out = self._unmask(out, round_id, request_digest, party_keys)
        limit = n * self.params.bound + (CkksParams.PRECISION if dtype == np.float64 else 0)
        if not np.all(np.abs(out) <= limit):
            raise ForeignCiphertext(f"round {round_id}: the decryption is not a sum of {n} "
                                    "bounded vectors (another key's ciphertext?); not released")
        return out
