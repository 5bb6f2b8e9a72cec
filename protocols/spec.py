"""The job specification every party checks before it takes part, and its wire form.

Who is in the job: the spec names its n parties and their Ed25519 identity keys (the
consortium's public list). A party checks both against its own copy of that list, so the
coordinator can neither add a party of its own making nor swap one party's keys. Under the he
channel the spec also names the key holder's identity key, which each party's policy must
list among the key holders it accepts.

Why 2t >= n + c + 2: with semi-honest parties a deviating coordinator may send different
survivor lists to different parties in one round's unmask step. To open party u's vector it
needs t shares of u's self-mask (from parties told "u survived", plus the c colluders) and t
shares of u's round mask key (from parties told "u dropped", plus the colluders): 2(t - c)
releases by distinct honest parties, of which there are n - c, so the attack needs
2t <= n + c. (With job-long pair seeds, before per-round mask keys, the bound was
n + c + 1 >= 2t, shown on a 5-party job with t = 3.) The spec, and every party's own check of
it, require 2t >= n + c + 2 for secagg whenever n >= 2 (protocols.channels, the secagg
channel's `spec_problems`), which excludes both; the signed consistency check (Bonawitz et al.
2017, Sec. 4) is a second, independent line. A one-party job has nothing to unmask.

The secagg graph (`graph`): "complete" (Bonawitz et al.: every party masks with and shares to
every other) or "sparse" (SecAgg+, Bell et al. 2020: a random graph of degree O(log n) whose
parameters crypto.secagg_graph derives from n, t and c, with its guarantees). "complete" is
the default; "auto" resolves here, once, to "sparse" from `secagg_graph.SPARSE_FROM` parties
on when such a graph exists for n, t and c, else "complete". Sparse is asked for, never
assumed: its secrecy (not only its noise) rests on c being declared right, and it holds
against a coordinator that follows the protocol. The wire form carries the resolved name,
which every party checks like the rest of the spec (an explicit "sparse" the parameters cannot
support is refused with the reason). The global t, c and 2t >= n + c + 2 keep their meaning
under both graphs.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

from fedsynth.crypto import secagg_graph
from fedsynth.crypto.accountant import check_epsilon_delta
from fedsynth.errors import InputError
from fedsynth.protocols import channels
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.synthesis.schema import Schema

CHANNELS = channels.names()  # registered at import; validation reads the registry itself
METHODS = ("marginals", "dpsgd")
GRAPHS = ("complete", "sparse")  # and "auto", which a spec resolves to one of these


class JobSpecError(InputError):
    """Job parameters that cannot run; lists every problem with its fix."""


def min_threshold(parties: int, colluders: int = 0) -> int:
    """The smallest t the protocol allows: 2t >= n + c + 2 (see the module docstring)."""
    return 1 if parties < 2 else math.ceil((parties + colluders + 2) / 2)


def default_threshold(parties: int, colluders: int = 0) -> int:
    """Default t: survive the loss of a fifth of the parties, never below `min_threshold`."""
    return min(parties, max(min_threshold(parties, colluders), math.ceil(0.8 * parties)))


def schema_sha256(schema: Schema) -> str:
    """The hash a party's policy pins: the columns and their public domains, canonically."""
    return schema.sha256()


@dataclass(frozen=True)
class JobSpec:
    """What a job asks of each party; validated on both sides."""

    schema: Schema
    epsilon: float
    delta: float
    parties: int
    threshold: int
    colluders: int = 0
    channel: str = "secagg"
    method: str = "marginals"
    party_names: tuple[str, ...] = field(default=())
    identity_keys: tuple[bytes, ...] = field(default=(), repr=False)
    # the he channel's key holder (Ed25519 identity key); empty for channels without one
    key_holder: bytes = field(default=b"", repr=False)
    graph: str = "complete"  # secagg: "complete" | "sparse" | "auto" (resolved at construction)

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.graph == "auto":
            object.__setattr__(self, "graph", auto_graph(self.parties, self.threshold,
                                                         self.colluders, self.channel))
        elif self.graph not in GRAPHS:
            problems.append(f"graph {self.graph!r} is not one of {GRAPHS} or 'auto'")
        elif self.graph == "sparse":
            if self.channel != "secagg":
                problems.append(f"graph 'sparse' is a secagg option; channel {self.channel!r} "
                                "takes graph 'complete'")
            else:
                try:
                    secagg_graph.sparse_params(self.parties, self.threshold, self.colluders)
                except secagg_graph.GraphError as exc:
                    problems.append(str(exc))
        try:
            check_epsilon_delta(self.epsilon, self.delta)
        except ValueError as exc:
            problems.append(str(exc))
        if self.parties < 1:
            problems.append(f"need at least one party, got {self.parties}")
        if not 1 <= self.threshold <= self.parties:
            problems.append(f"threshold t={self.threshold} must be between 1 and the "
                            f"{self.parties} parties (fewer parties than t cannot finish a round)")
        if not 0 <= self.colluders < self.threshold:
            problems.append(f"colluders c={self.colluders} must be below threshold "
                            f"t={self.threshold}: t - c honest survivors carry the noise")
        if self.channel not in channels.CHANNELS:
            problems.append(f"channel {self.channel!r} is not one of {channels.names()}")
        if self.method not in METHODS:
            problems.append(f"method {self.method!r} is not one of {METHODS}")
        if self.channel in channels.CHANNELS:
            channel = channels.get(self.channel)
            problems += channel.spec_problems(
                parties=self.parties, threshold=self.threshold, colluders=self.colluders)
            if channel.key_holder and len(self.key_holder) != 32:
                problems.append(f"channel {self.channel!r} needs the key holder's 32-byte "
                                "Ed25519 identity key (key_holder): the key holder every "
                                "party's policy accepts")
            if channel.key_holder and self.key_holder in self.identity_keys:
                problems.append("the key holder must not be one of the job's parties")
            if not channel.key_holder and self.key_holder:
                problems.append(f"channel {self.channel!r} has no key holder: leave key_holder "
                                "empty")
        if len(self.party_names) != self.parties or len(self.identity_keys) != self.parties:
            problems.append(f"the job must name each of its {self.parties} parties with its "
                            f"identity key (got {len(self.party_names)} names, "
                            f"{len(self.identity_keys)} keys)")
        if len(set(self.party_names)) != len(self.party_names):
            problems.append("party names must be distinct")
        if any(len(k) != 32 for k in self.identity_keys) or len(
                set(self.identity_keys)) != len(self.identity_keys):
            problems.append("identity keys must be distinct 32-byte Ed25519 public keys")
        if problems:
            raise JobSpecError("invalid job: " + "; ".join(problems))

    @property
    def honest_min(self) -> int:
        """Fewest honest parties whose noise shares reach every released sum."""
        return self.threshold - self.colluders

    @property
    def noise_divisor(self) -> int:
        """Each party adds variance / noise_divisor. Over an unprotected channel ("plain") the
        coordinator sees every party's own vector, so each must carry the full noise alone
        (divisor 1); otherwise t - c (`Channel.noise_divisor`)."""
        return channels.get(self.channel).noise_divisor(self)

    def identity_of(self, party: int) -> bytes:
        return self.identity_keys[party - 1]

    def to_proto(self) -> pb.JobSpec:
        return pb.JobSpec(schema_json=self.schema.to_json(), epsilon=self.epsilon,
                          delta=self.delta, parties=self.parties, threshold=self.threshold,
                          colluders=self.colluders, channel=self.channel, method=self.method,
                          party_names=list(self.party_names),
                          identity_keys=list(self.identity_keys), key_holder=self.key_holder,
                          graph=self.graph)

    @classmethod
    def from_proto(cls, m: pb.JobSpec) -> JobSpec:
        return cls(schema=Schema.from_json(m.schema_json, source="job schema"),
                   epsilon=m.epsilon, delta=m.delta, parties=m.parties, threshold=m.threshold,
                   colluders=m.colluders, channel=m.channel, method=m.method,
                   party_names=tuple(m.party_names), identity_keys=tuple(m.identity_keys),
                   key_holder=bytes(m.key_holder), graph=m.graph or "complete")

    def sparse_params(self) -> secagg_graph.SparseParams | None:
        """The sparse graph's parameters (None for the complete graph)."""
        if self.graph != "sparse":
            return None
        return secagg_graph.sparse_params(self.parties, self.threshold, self.colluders)


def auto_graph(parties: int, threshold: int, colluders: int, channel: str) -> str:
    """"sparse" for secagg from `secagg_graph.SPARSE_FROM` parties on when a sparse graph
    exists for n, t and c (smaller neighbourhoods than n - 1); else "complete"."""
    if channel != "secagg" or parties < secagg_graph.SPARSE_FROM:
        return "complete"
    try:
        secagg_graph.sparse_params(parties, threshold, colluders)
    except secagg_graph.GraphError:
        return "complete"
    return "sparse"


def spec_digest(m: pb.JobSpec) -> bytes:
    """sha256 of a spec message as the coordinator sent it (deterministic wire form): what the
    he key holder signs its context for, so each party knows the key holder enforces the spec
    it agreed to. Hashed from the message itself, never from a spec rebuilt from it (a schema
    parsed and written again need not give the same bytes)."""
    return hashlib.sha256(m.SerializeToString(deterministic=True)).digest()
