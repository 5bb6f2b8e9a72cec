"""SecAgg+ graphs (Bell et al. 2020): whom each party masks with and shares its secrets to.

With the complete graph (crypto.secagg, Bonawitz et al. 2017) every party masks with, and
Shamir-shares to, every other: n² key agreements and shares per round. Bell, Bogdanov, Gascón,
Kairouz and Raykova ("Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS
2020) replace it with a random graph of degree k = O(log n): each party masks with, and shares
its self-mask seed and mask key t_k-out-of-|N(u)| to, its neighbours N(u) only.

The graph. An Erdős–Rényi graph G(n, p), p = k / (n - 1), over the job's parties 1..n: the
edge {u, v} is present iff word(u, v) < p * 2^32, where the words are the ChaCha20 keystream
under a seed every role derives from public inputs alone (`graph_seed`): the job id, the spec
(n, t, c and every party's identity key) and every party's signed X25519 job key. The parties
draw their job keys at setup, after the coordinator fixed the job id and the spec, from their
own operating system's entropy; so the coordinator cannot choose a job id that gives a graph
it likes (it cannot predict the honest keys), nor leave a party's key out to try another graph
(a sparse job needs the key of every one of its n parties, and each party checks it has all
n). Only colluding parties that deviate, grinding their own job keys after seeing the honest
ones, could try several graphs; each try multiplies the failure probabilities below, and a
semi-honest party does not do that. The corrupted set is fixed before the keys are drawn, so
it is independent of the graph, as the paper's analysis assumes.

Parameters (`sparse_params`), against n parties, threshold t (every round keeps at least t
survivors: protocols.spec), c colluders, and the paper's σ = 40 (security) and η = 30
(correctness): the smallest expected degree k and a share threshold t_k = c_k + d such that
- no neighbourhood is dominated: for every honest u, the colluders among its neighbours,
  Binomial(c, p), stay at most c_k < t_k, so they cannot rebuild u's secrets alone;
- the honest survivors stay connected: with the dropouts independent of the graph (the
  semi-honest model of the paper) the graph on the honest survivors, at least t - c of them,
  has no component S with no edge to the rest; every survivor keeps t_k surviving neighbours
  (checked, see below), so d = t_k - c_k of them honest, and a component has more than d
  members. Union bound: sum over s > d of C(n - c, s) (1 - p)^(s * max(h - s, s)), h = t - c.
  Both events together at most 2^-σ;
- dropouts within the guarantee finish the round: with up to n - t dropouts independent of
  the graph, each party keeps at least t_k surviving neighbours (Binomial(t - 1, p) >= t_k for
  all n parties) except with probability 2^-η. Otherwise the round stops with a clear error
  (`RoundFailed`); no sum is released that the parameters do not cover.
No k below n - 1 meets all three for small n; then `sparse_params` refuses and the job uses
the complete graph (protocols.spec picks it, and picks it below `SPARSE_FROM` parties too, the
crossover measured in benchmarks/secure_sum_scale.py).

`adaptive_log2` reports the same connectivity bound against a coordinator that deviates by
naming live, honest parties dropped, chosen after seeing the graph (a union over every dropout
set of at most n - t parties): it is much weaker for k = O(log n) (the paper's semi-malicious
variant needs k of a few percent of n); what such a coordinator could learn is stated in
protocols.secure_sum.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from scipy.special import gammaln
from scipy.stats import binom

SIGMA = 40  # security parameter of the paper: privacy fails with probability at most 2^-σ
ETA = 30  # correctness parameter: a round within the dropout bound fails at most 2^-η
SPARSE_FROM = 50  # parties: a round is ~2x faster sparse here, even at ~35 (secure_sum_scale.py)
# the graph is sized for at least this share of colluders whatever c the spec declares: on a
# sparse graph an under-declared c costs secrecy, not only noise (with c = 0, t_k would be 2
# and any two colluding neighbours of a party could rebuild its mask key)
COLLUDER_FLOOR = 0.05
MAX_PARTIES = 20_000  # the whole adjacency is derived (n²/2 words); past this, derive per row


class GraphError(ValueError):
    """Parameters for which the sparse graph cannot give its guarantees; says what to change."""


@dataclass(frozen=True)
class SparseParams:
    """A sparse graph's parameters and the failure bounds they reach (log2 probabilities)."""

    parties: int
    threshold: int  # t: fewest survivors of a round (global)
    colluders: int  # c
    degree: int  # k: expected neighbourhood size, edge probability k / (n - 1)
    share_threshold: int  # t_k: shares that rebuild a secret within a neighbourhood
    colluder_bound: int  # c_k: most colluders in an honest party's neighbourhood (≤ 2^-σ)
    privacy_log2: float  # log2 P[a neighbourhood dominated or the honest survivors split]
    correctness_log2: float  # log2 P[some neighbourhood keeps fewer than t_k survivors]
    adaptive_log2: float  # connectivity bound against dropouts chosen after the graph

    @property
    def edge_probability(self) -> float:
        return self.degree / (self.parties - 1)


def _log2_binom_sf(x: int, trials: int, p: float) -> float:
    """log2 P[Binomial(trials, p) > x]."""
    return float(binom.logsf(x, trials, p)) / math.log(2)


def _log2_binom_cdf(x: int, trials: int, p: float) -> float:
    """log2 P[Binomial(trials, p) <= x]."""
    return float(binom.logcdf(x, trials, p)) / math.log(2)


def _log2_comb(n: np.ndarray | int, s: np.ndarray | int) -> np.ndarray:
    return np.asarray((gammaln(np.asarray(n) + 1) - gammaln(np.asarray(s) + 1)
                       - gammaln(np.asarray(n) - np.asarray(s) + 1)) / math.log(2))


def _log2_sum(terms: np.ndarray) -> float:
    if terms.size == 0:
        return -math.inf
    top = float(np.max(terms))
    return top + math.log2(float(np.sum(np.exp2(terms - top))))


def _split_log2(n: int, c: int, h: int, p: float, d: int, dropout_sets: float = 0.0) -> float:
    """log2 of the union bound on the honest survivors splitting into a component of more than
    d members and the rest (`dropout_sets`: log2 of the number of dropout sets to union over)."""
    s = np.arange(d + 1, (n - c) // 2 + 1)
    if s.size == 0:
        return -math.inf
    missing = s * np.maximum(h - s, s)  # pairs across the cut that must all be non-edges
    return _log2_sum(_log2_comb(n - c, s) + missing * math.log2(1 - p) + dropout_sets)


@lru_cache(maxsize=64)
def sparse_params(parties: int, threshold: int, colluders: int, *, sigma: int = SIGMA,
                  eta: int = ETA) -> SparseParams:
    """The smallest degree (and its share threshold) meeting the guarantees in the module
    docstring; GraphError if only the complete graph does."""
    n, t, c = parties, threshold, colluders
    if n < 3 or not 0 <= c < t <= n:
        raise GraphError(f"a sparse graph needs n >= 3 and 0 <= c < t <= n (n={n}, t={t}, c={c})")
    if n > MAX_PARTIES:
        raise GraphError(f"{n} parties: the graph is derived whole, up to {MAX_PARTIES} parties")
    c = min(max(c, math.ceil(COLLUDER_FLOOR * n)), t - 1)  # sized for at least the floor
    h = t - c
    honest = n - c
    dropout_sets = float(_log2_sum(_log2_comb(n, np.arange(0, n - t + 1))))
    for k in range(2, n - 1):
        p = k / (n - 1)
        if c == 0:
            c_k, dominated = 0, -math.inf
        else:  # smallest c_k with every honest party's colluding neighbours <= c_k
            c_k = 0
            while c_k < c and math.log2(honest) + _log2_binom_sf(c_k, c, p) > -sigma - 1:
                c_k += 1
            dominated = math.log2(honest) + _log2_binom_sf(c_k, c, p)
        for d in range(1, k + 1):
            split = _split_log2(n, c, h, p, d)
            if split <= -sigma - 1:
                break
        else:
            continue
        t_k = max(2, c_k + d)
        short = math.log2(n) + _log2_binom_cdf(t_k - 1, t - 1, p)
        if short > -eta:
            continue
        privacy = _log2_sum(np.array([dominated, split]))
        return SparseParams(parties=n, threshold=t, colluders=c, degree=k, share_threshold=t_k,
                            colluder_bound=c_k, privacy_log2=privacy, correctness_log2=short,
                            adaptive_log2=_split_log2(n, c, h, p, t_k - c_k, dropout_sets))
    raise GraphError(f"no sparse graph on n={n} parties with t={t}, c={c} reaches 2^-{sigma} "
                     f"privacy and 2^-{eta} correctness with fewer than n - 1 neighbours: use "
                     "the complete graph (graph = \"complete\"), or more parties")


def graph_seed(*, job_id: str, parties: int, threshold: int, colluders: int,
               identity_keys: tuple[bytes, ...], job_keys: Mapping[int, bytes]) -> bytes:
    """The public seed of a job's graph: every role derives it from the job id, the spec and
    every party's signed job key (GraphError if a party's key is missing)."""
    keys = tuple(bytes(job_keys.get(p, b"")) for p in range(1, parties + 1))
    return _graph_seed(job_id, parties, threshold, colluders, tuple(identity_keys), keys)


@lru_cache(maxsize=16)
def _graph_seed(job_id: str, parties: int, threshold: int, colluders: int,
                identity_keys: tuple[bytes, ...], job_keys: tuple[bytes, ...]) -> bytes:
    missing = [p for p, key in enumerate(job_keys, start=1) if len(key) != 32]
    if missing:
        raise GraphError(f"a sparse-graph job needs the job key of every one of its {parties} "
                         f"parties (missing: parties {missing[:10]}); without it the graph "
                         "would not come from every party's randomness: rerun the job with the "
                         "parties that set up, or with the complete graph")
    h = hashlib.sha256(b"fedsynth/secagg-graph/v1")
    h.update(b"|%s|%d|%d|%d|" % (job_id.encode(), parties, threshold, colluders))
    for key in identity_keys:
        h.update(key)
    for p, key in enumerate(job_keys, start=1):
        h.update(b"%d:" % p + key)
    return h.digest()


MEMO_LIMIT = 1 << 14


@dataclass(frozen=True, eq=False)
class Graph:
    """A job's communication graph over parties 1..n: `neighbours(u)` are whom u masks with
    and shares to, `share_threshold` the Shamir threshold within a neighbourhood."""

    parties: int
    share_threshold: int
    adjacency: np.ndarray | None  # n x n bool (party u is row u - 1); None: the complete graph
    params: SparseParams | None = None
    # answers of pure questions about this graph, remembered: a simulation asks each of them
    # once per party (n times) with the same arguments
    _memo: dict[tuple[object, ...], object] = field(default_factory=dict, init=False,
                                                    repr=False, compare=False)

    def __post_init__(self) -> None:
        # the memo's answers hold only while the adjacency cannot change: keep a read-only copy
        if self.adjacency is not None:
            adj = np.array(self.adjacency, dtype=bool)
            adj.setflags(write=False)
            object.__setattr__(self, "adjacency", adj)

    @property
    def complete(self) -> bool:
        return self.adjacency is None

    def neighbours(self, u: int) -> frozenset[int]:
        if self.adjacency is None:
            return frozenset(range(1, self.parties + 1)) - {u}
        key = ("neighbours", u)
        row = self._memo.get(key)
        if row is None:
            row = _row(self.adjacency, u)
            self._memo[key] = row
        return row  # type: ignore[return-value]

    def among(self, u: int, parties: Collection[int]) -> list[int]:
        """u's neighbours within `parties`, sorted."""
        return sorted(self.neighbours(u) & set(parties))

    def short_of(self, survivors: Collection[int], who: Collection[int], *,
                 isolated_ok: bool = False) -> list[int]:
        """The parties of `who` with fewer than t_k neighbours among `survivors`; with
        `isolated_ok`, not those with none (a dropped party with no surviving neighbour left
        no pair mask in the sum)."""
        if self.adjacency is None:
            return []
        alive = np.zeros(self.parties, dtype=bool)
        alive[np.asarray(sorted(survivors), dtype=np.int64) - 1] = True
        idx = np.asarray(sorted(who), dtype=np.int64) - 1
        if idx.size == 0:
            return []
        counts = self.adjacency[idx][:, alive].sum(axis=1)
        bad = (counts < self.share_threshold) & ((counts > 0) | (not isolated_ok))
        return [int(i) + 1 for i in idx[bad]]


    def split(self, survivors: Collection[int]) -> bool:
        """Whether the graph on `survivors` falls apart. Each connected component's masks
        cancel within it, so a coordinator could open the sum of any component alone: a
        survivor list whose graph is not connected must never be unmasked, whatever the
        neighbourhood sizes (a triangle of honest parties whose other neighbours are all left
        out keeps t_k = 2 survivors each, and its sum would come out)."""
        if self.adjacency is None:
            return False
        key = ("split", tuple(sorted(survivors)))
        answer = self._memo.get(key)
        if answer is None:
            if len(self._memo) > MEMO_LIMIT:
                self._memo.clear()
            answer = self._split(key[1])
            self._memo[key] = answer
        return bool(answer)

    def _split(self, survivors: tuple[int, ...]) -> bool:
        assert self.adjacency is not None
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import connected_components

        idx = np.asarray(sorted(survivors), dtype=np.int64) - 1
        if idx.size <= 1:
            return False
        sub = csr_matrix(self.adjacency[np.ix_(idx, idx)])
        return int(connected_components(sub, directed=False, return_labels=False)) > 1


def complete_graph(parties: int, threshold: int) -> Graph:
    """The complete graph with the job's threshold t (the protocol of Bonawitz et al.)."""
    return Graph(parties=parties, share_threshold=threshold, adjacency=None)


@lru_cache(maxsize=4)
def sparse_graph(seed: bytes, params: SparseParams) -> Graph:
    """The Erdős–Rényi graph of `params` drawn from `seed` (the same for every role)."""
    return Graph(parties=params.parties, share_threshold=params.share_threshold,
                 adjacency=_adjacency(seed, params.parties, params.degree), params=params)


@lru_cache(maxsize=4)
def _adjacency(seed: bytes, n: int, k: int) -> np.ndarray:
    if len(seed) != 32:
        raise GraphError("a graph seed has 32 bytes")
    pairs = n * (n - 1) // 2
    enc = Cipher(algorithms.ChaCha20(seed, b"\x00" * 16), mode=None).encryptor()
    words = np.frombuffer(enc.update(b"\x00" * (4 * pairs)), dtype="<u4")
    cut = math.floor(k / (n - 1) * 2**32)
    iu = np.triu_indices(n, 1)
    adj = np.zeros((n, n), dtype=bool)
    adj[iu] = words < cut
    adj |= adj.T
    adj.setflags(write=False)
    return adj


def _row(adj: np.ndarray, u: int) -> frozenset[int]:
    return frozenset(int(v) + 1 for v in np.flatnonzero(adj[u - 1]))
