"""A consortium on one machine: identities, the job spec naming them, and each party's folder.

What a real consortium does by hand (each party makes its identity key, the list of public keys
is shared, each operator writes its own policy), a simulation does here in one place. Each
party's policy pins the job's schema, lists the consortium and keeps its own ledger; nothing in
it is chosen by the coordinator. Noise is never seeded here (`noise_seed` is for tests only).
Under the he channel the key holder gets an identity of its own, named in the spec, and every
party's policy lists it among the key holders it accepts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fedsynth.client_node.keyholder import KeyHolderPolicy
from fedsynth.client_node.node import NodePolicy
from fedsynth.crypto.keys import Identity, consortium
from fedsynth.protocols import channels
from fedsynth.protocols.spec import JobSpec, default_threshold, schema_sha256
from fedsynth.synthesis.schema import Schema

KEY_HOLDER_NAME = "key-holder"


def make_identities(n: int) -> list[Identity]:
    """Identity keys for parties named party-1 .. party-n."""
    return [Identity.generate(f"party-{i}") for i in range(1, n + 1)]


def key_holder_identity() -> Identity:
    """The key holder's identity (he channel); every simulated party's policy accepts it."""
    return Identity.generate(KEY_HOLDER_NAME)


def key_holder_policy(identity: Identity) -> KeyHolderPolicy:
    return KeyHolderPolicy(name=identity.name, identity_key=identity.private)


def job_spec(schema: Schema, identities: Sequence[Identity], *, epsilon: float, delta: float,
             threshold: int | None = None, colluders: int = 0, channel: str = "secagg",
             method: str = "marginals", key_holder: Identity | None = None,
             graph: str = "complete") -> JobSpec:
    """The spec of a job among `identities` (party i is identities[i - 1]); `key_holder` is
    named in it if the channel has one (he)."""
    n = len(identities)
    named = key_holder is not None and channel in channels.CHANNELS and channels.get(
        channel).key_holder  # an unknown channel is the spec's to report
    holder = key_holder.public if named and key_holder is not None else b""
    return JobSpec(schema=schema, epsilon=epsilon, delta=delta, parties=n,
                   threshold=threshold if threshold is not None else default_threshold(
                       n, colluders),
                   colluders=colluders, channel=channel, method=method,
                   party_names=tuple(i.name for i in identities),
                   identity_keys=tuple(i.public for i in identities), key_holder=holder,
                   graph=graph)


def write_parties(work: Path, tables: Sequence[pd.DataFrame], spec: JobSpec,
                  identities: Sequence[Identity],
                  holdouts: Sequence[pd.DataFrame | None] | None = None, *,
                  epsilon_cap: float | None = None, evaluation: str = "off",
                  evaluation_epsilon_cap: float = 0.0, evaluations: int = 1,
                  **policy: Any) -> dict[int, NodePolicy]:
    """Each party's folder (its table, held-out rows, ledger) and its policy for this job."""
    members = consortium(list(identities))
    if spec.key_holder:  # the job's key holder, accepted by every simulated party
        policy.setdefault("key_holders", frozenset({spec.key_holder}))
    holds = holdouts if holdouts is not None else [None] * len(tables)
    policies = {}
    for i, (t, h, ident) in enumerate(zip(tables, holds, identities, strict=True), start=1):
        home = work / f"party-{i}"
        home.mkdir(parents=True)
        t.to_parquet(home / "data.parquet", index=False)
        if h is not None:
            h.to_parquet(home / "holdout.parquet", index=False)
        policies[i] = NodePolicy(
            data_path=home / "data.parquet", ledger_path=home / "ledger.jsonl",
            epsilon_cap=spec.epsilon if epsilon_cap is None else epsilon_cap, delta=spec.delta,
            party_name=ident.name, identity_key=ident.private, consortium=members,
            schema_sha256=schema_sha256(spec.schema),
            channels=tuple(dict.fromkeys(("secagg", spec.channel))),  # the default and the job's
            graphs=tuple(dict.fromkeys(("complete", spec.graph))),  # the simulation's user asked
            assume_colluders=spec.colluders, evaluation=evaluation,
            evaluation_epsilon_cap=evaluation_epsilon_cap, max_evaluations=evaluations,
            holdout_path=None if h is None else home / "holdout.parquet", **policy)
    return policies
