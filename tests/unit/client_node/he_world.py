"""A small he federation for tests: four parties' real `Node`s and a `KeyHolderNode` behind a
`LocalTransport`, the coordinator's `Exchange`, and what a curious coordinator keeps (every
party's ciphertexts, the digest of every measure request it sent)."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsynth.client_node.keyholder import KeyHolderNode
from fedsynth.client_node.node import Node
from fedsynth.coordinator.exchange import (
    Exchange,
    PartyKeys,
    RoundResult,
    secure_sum,
    setup_request,
)
from fedsynth.crypto.keys import Identity
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.protocols.spec import JobSpec
from fedsynth.simulations.local import LocalTransport
from fedsynth.simulations.parties import (
    job_spec,
    key_holder_identity,
    key_holder_policy,
    make_identities,
    write_parties,
)
from fedsynth.synthesis import marginals
from fedsynth.synthesis.encoding import Encoding, Grouping
from fedsynth.synthesis.schema import Column, Schema

SCHEMA = Schema((
    Column("colour", "categorical", ("blue", "green", "red")),
    Column("age", "integer", lower=18, upper=90),
))
SIZES = Encoding.from_schema(SCHEMA).sizes
CLIQUES = [(0,), (1,), (0, 1)]
GROUPINGS = [Grouping.identity(s) for s in SIZES]
LENGTH = marginals.vector_length(CLIQUES, SIZES)
IDS = make_identities(4)
KH = key_holder_identity()
ROWS = 40


def frame(seed: int, n: int = ROWS) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"colour": rng.choice(["blue", "green", "red"], n),
                         "age": rng.integers(18, 91, n)})


def counts(party: int) -> np.ndarray:
    """Party `party`'s exact marginal counts (what an attack would try to recover)."""
    encoded = Encoding.from_schema(SCHEMA).encode(frame(party))
    return marginals.count(encoded, GROUPINGS, CLIQUES).astype(np.int64)


def spec(t: int = 3, holder: Identity = KH) -> JobSpec:
    return job_spec(SCHEMA, IDS, epsilon=10.0, delta=1e-6, threshold=t, channel="he",
                    key_holder=holder)


@dataclasses.dataclass
class Federation:
    spec: JobSpec
    nodes: dict[int, Node]
    holder: KeyHolderNode
    transport: LocalTransport
    ex: Exchange
    sent: dict[tuple[int, int], list[bytes]] = dataclasses.field(default_factory=dict)
    digests: dict[int, bytes] = dataclasses.field(default_factory=dict)  # round -> request

    def ledger(self, p: int) -> list[dict[str, Any]]:
        return self.nodes[p].policy.ledger().entries()


def federation(tmp: Path, *, t: int = 3, accepted: frozenset[bytes] | None = None,
               holder: Identity = KH, **holder_policy: Any) -> Federation:
    """Four parties (their policies accept `accepted`, default: the key holder) and the key
    holder (`holder_policy` overrides its policy's fields)."""
    the_spec = spec(t, holder)
    extra = {} if accepted is None else {"key_holders": accepted}
    policies = write_parties(tmp / uuid.uuid4().hex, [frame(p) for p in range(1, 5)], the_spec,
                             IDS, **extra)
    nodes = {p: Node(pol) for p, pol in policies.items()}
    keyholder = KeyHolderNode(dataclasses.replace(key_holder_policy(holder), **holder_policy))
    transport = LocalTransport(nodes, key_holder=keyholder)
    ex = Exchange(transport, uuid.uuid4().hex,
                  identities={p: the_spec.identity_of(p) for p in nodes})
    fed = Federation(the_spec, nodes, keyholder, transport, ex)
    real = transport.exchange

    def keep(requests: Mapping[int, bytes], *, timeout: float) -> dict[int, bytes]:
        """The coordinator keeps every request's digest and party's ciphertexts."""
        for data in requests.values():
            env = pb.Envelope.FromString(data)
            if env.WhichOneof("body") == "measure_request":
                fed.digests[env.measure_request.round] = hashlib.sha256(
                    env.measure_request.SerializeToString(deterministic=True)).digest()
        raw = real(requests, timeout=timeout)
        for p, data in raw.items():
            env = pb.Envelope.FromString(data)
            if env.WhichOneof("body") == "measure_reply":
                fed.sent[(env.measure_reply.round, p)] = list(env.measure_reply.ciphertexts)
        return raw

    transport.exchange = keep  # type: ignore[method-assign]
    return fed


def setup(fed: Federation, request: pb.SetupRequest | None = None) -> PartyKeys:
    req = request if request is not None else setup_request(fed.ex, fed.spec)
    replies = fed.ex.call({p: ("setup_request", req) for p in fed.nodes}, "setup_reply")
    return PartyKeys({p: e.setup_reply.public_key for p, e in replies.items()},
                     {p: e.setup_reply.key_signature for p, e in replies.items()})


def run_round(fed: Federation, keys: PartyKeys, round_id: int = 1,
              participants: list[int] | None = None, variance: float = 4.0) -> RoundResult:
    return secure_sum(fed.ex, round_id=round_id, label="test", channel="he",
                      threshold=fed.spec.threshold,
                      participants=participants or sorted(fed.nodes), keys=keys,
                      groupings=GROUPINGS, cliques=CLIQUES, length=LENGTH,
                      noise_variance=variance)
