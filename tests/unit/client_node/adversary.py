"""A deviating coordinator against the real Node: it relays, splits and reorders as it likes."""
from __future__ import annotations

import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsynth.client_node.ledger import Ledger
from fedsynth.client_node.node import Node, NodePolicy
from fedsynth.crypto import shamir
from fedsynth.crypto.keys import consortium
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.protocols.messages import pack
from fedsynth.protocols.spec import schema_sha256
from fedsynth.simulations.parties import job_spec, make_identities
from fedsynth.synthesis.encoding import Encoding
from fedsynth.synthesis.schema import Column, Schema

SCHEMA = Schema((
    Column("colour", "categorical", ("blue", "green", "red")),
    Column("age", "integer", lower=18, upper=90),
    Column("score", "continuous", lower=0.0, upper=1.0),
))
SIZES = Encoding.from_schema(SCHEMA).sizes


def frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"colour": rng.choice(["blue", "green", "red"], n),
                         "age": rng.integers(18, 91, n), "score": rng.random(n)})


def parse(b: bytes) -> pb.Envelope:
    e = pb.Envelope()
    e.ParseFromString(b)
    return e


@dataclass
class World:
    n: int
    t: int
    c: int = 0
    eps_cap: float = 50.0
    policy_kw: dict[int, dict[str, Any]] = field(default_factory=dict)
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="adversary-")))

    def __post_init__(self) -> None:
        self.ids = make_identities(self.n)
        self.spec = job_spec(SCHEMA, self.ids, epsilon=1.0, delta=1e-6, threshold=self.t,
                             colluders=self.c)
        self.nodes: dict[int, Node] = {}
        self.data: dict[int, pd.DataFrame] = {}
        for p in range(1, self.n + 1):
            home = self.tmp / f"p{p}"
            home.mkdir()
            df = frame(200, p)
            self.data[p] = df
            df.to_parquet(home / "data.parquet", index=False)
            kw = {"epsilon_cap": self.eps_cap, "delta": 1e-6, "party_name": self.ids[p-1].name,
                  "identity_key": self.ids[p-1].private, "consortium": consortium(self.ids),
                  "schema_sha256": schema_sha256(SCHEMA), "assume_colluders": self.c,
                  **self.policy_kw.get(p, {})}
            self.nodes[p] = Node(NodePolicy(data_path=home / "data.parquet",
                                            ledger_path=home / "ledger.jsonl", **kw))
        self.states: dict[int, bytes | None] = {p: None for p in self.nodes}
        self.job = uuid.uuid4().hex
        self.step = 0
        self.publics: dict[int, bytes] = {}
        self.sigs: dict[int, bytes] = {}
        self.mask: dict[int, dict[int, pb.MaskKeyAnnouncement]] = {}  # round -> party -> ann
        self.replies: dict[tuple[int, int], pb.MeasureReply] = {}  # (round, party)
        self.log: list[tuple[int, str, str]] = []

    # ---- raw send -------------------------------------------------------------------------
    def send(self, p: int, fname: str, msg, *, step: int | None = None) -> pb.Envelope:
        if step is None:
            self.step += 1
            step = self.step
        env = pb.Envelope(job_id=self.job, step=step, party=p)
        getattr(env, fname).CopyFrom(msg)
        reply, self.states[p] = self.nodes[p].handle(pack(env), self.states[p])
        out = parse(reply)
        body = out.WhichOneof("body")
        self.log.append((p, fname, body if body != "refusal" else "REFUSED: " + out.refusal.reason))
        return out

    def setup(self) -> None:
        for p in self.nodes:
            m = pb.SetupRequest()
            m.spec.CopyFrom(self.spec.to_proto())
            e = self.send(p, "setup_request", m, step=0)
            assert e.WhichOneof("body") == "setup_reply", e.refusal.reason
            self.publics[p] = e.setup_reply.public_key
            self.sigs[p] = e.setup_reply.key_signature
        self.step = 0

    def _keys(self, m) -> None:
        for p, k in self.publics.items():
            m.public_keys[p] = k
            m.key_signatures[p] = self.sigs[p]

    def announce(self, p: int, round_id: int, holders: list[int]) -> pb.Envelope:
        m = pb.MaskKeysRequest(round=round_id, participants=holders)
        self._keys(m)
        e = self.send(p, "mask_keys_request", m)
        if e.WhichOneof("body") == "mask_keys_reply":
            self.mask.setdefault(round_id, {})[p] = e.mask_keys_reply
        return e

    def measure_req(self, round_id: int, participants: list[int], *, variance: float = 400.0,
                    cliques=((0,), (1,)), groupings=None,
                    label: str = "one-way") -> pb.MeasureRequest:
        m = pb.MeasureRequest(round=round_id, label=label, noise_variance=variance,
                              participants=participants)
        self._keys(m)
        for j, size in enumerate(SIZES):
            given = groupings[j] if groupings is not None else None
            idx = given if given is not None else range(size)
            m.groupings.add().index.extend(idx)
        for c in cliques:
            m.cliques.add().columns.extend(c)
        for p in participants:
            ann = self.mask[round_id][p]
            m.mask_keys[p] = ann.public_key
            m.mask_key_signatures[p] = ann.signature
        return m

    def measure(self, p: int, req) -> pb.Envelope:
        kind = "measure_request" if isinstance(req, pb.MeasureRequest) else "evaluate_request"
        e = self.send(p, kind, req)
        if e.WhichOneof("body") == "measure_reply":
            r = e.measure_reply
            self.replies[(r.round, p)] = r
            if r.HasField("next_mask_key") and r.next_mask_key.public_key:
                self.mask.setdefault(r.round + 1, {})[p] = r.next_mask_key
        return e

    def confirm(self, p: int, round_id: int, survivors: list[int]) -> pb.Envelope:
        return self.send(p, "confirm_request",
                         pb.ConfirmRequest(round=round_id, survivors=survivors))

    def unmask(self, p: int, round_id: int, survivors: list[int], dropped: list[int],
               confirmations: dict[int, bytes], key_blobs_round: int | None = None,
               key_blob_holder_round: int | None = None) -> pb.Envelope:
        """Relay every blob addressed to p: self-mask shares of survivors (from their round
        replies) and mask-key shares of dropped parties (from their announcements)."""
        req = pb.UnmaskRequest(round=round_id, survivors=survivors, dropped=dropped)
        for u, s in confirmations.items():
            req.confirmations[u] = s
        for u in survivors:
            r = self.replies.get((round_id, u))
            if r is not None and p in r.encrypted_shares:
                req.shares_for_you[u] = r.encrypted_shares[p]
        for d in dropped:
            ann = self.mask.get(round_id, {}).get(d)
            if ann is not None and p in ann.encrypted_shares:
                req.key_shares_for_you[d] = ann.encrypted_shares[p]
        return self.send(p, "unmask_request", req)

    def ledger(self, p: int) -> list[dict]:
        return Ledger(self.nodes[p].policy.ledger_path, self.eps_cap, 1e-6).entries()


def combine(shares: dict[int, bytes], t: int) -> bytes:
    return shamir.combine(shares, threshold=t)
