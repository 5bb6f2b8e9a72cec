"""The party's request handler: validates every request, keeps its ledger, noises and masks.

Transport-free: `Node.handle(request, state) -> (reply, state)` takes and returns bytes, so the
same code serves the Flower ClientApp, local tests and any future transport. What leaves the
party: its public key at setup; per round a vector that is (counts + its Skellam noise share)
masked by secure aggregation; in the unmask step, shares and seeds as in protocols.secure_sum.
Raw rows, unnoised or unmasked counts never leave (except under channel "plain", which a party
only accepts when its policy allows it, i.e. in simulation).
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth.client_node.data import DataFileError, read_table
from fedsynth.client_node.ledger import BudgetExceeded, Ledger
from fedsynth.crypto import noise, secagg
from fedsynth.evaluation.plan import EvalOptions, EvalOptionsError, EvaluationPlan
from fedsynth.evaluation.statistics import node_statistics
from fedsynth.evaluation.transfer import synthetic_from_parquet
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.protocols.messages import (
    ProtocolError,
    new_signing_key,
    pack,
    refusal,
    sign,
    unpack,
)
from fedsynth.protocols.secure_sum import party_measure_reply, party_unmask_reply
from fedsynth.protocols.spec import JobSpec, JobSpecError
from fedsynth.synthesis import marginals
from fedsynth.synthesis.encoding import Encoding, Grouping
from fedsynth.synthesis.schema import DataValidationError, Schema, SchemaError, validate_frame

log = logging.getLogger("fedsynth.node")
MAX_CELLS = 20_000_000
REQUESTS = ("setup_request", "measure_request", "unmask_request", "evaluate_request")
MAX_SYNTHETIC_BYTES = 256 << 20  # largest synthetic table a party accepts to evaluate


class DropOut(RuntimeError):
    """Injected failure (tests, benchmarks): the party goes silent at a given round."""


@dataclass(frozen=True)
class NodePolicy:
    """The party's own rules, which no coordinator request can override."""

    data_path: Path
    ledger_path: Path
    epsilon_cap: float
    delta: float
    allow_plain: bool = False
    fail_at_round: int | None = None
    noise_seed: int | None = None  # simulation reproducibility only; None draws from the OS
    # Federated evaluation releases exact (not DP) sums over the party's rows, added to the
    # other parties' by secure aggregation: a party takes part only if its policy says so.
    allow_evaluation: bool = False
    holdout_path: Path | None = None  # rows kept out of synthesis, to evaluate against


@lru_cache(maxsize=4)
def _encoded(path: str, mtime: float, schema_json: str) -> np.ndarray:
    schema = Schema.from_json(schema_json)
    df = validate_frame(read_table(path), schema, source=path, show_values=False)
    return Encoding.from_schema(schema).encode(df)


def encoded_table(policy: NodePolicy, schema: Schema) -> np.ndarray:
    p = policy.data_path
    return _encoded(str(p), p.stat().st_mtime if p.exists() else 0.0, schema.to_json())


class Node:
    def __init__(self, policy: NodePolicy) -> None:
        self.policy = policy

    # --- entry point -------------------------------------------------------------------
    def handle(self, request: bytes, state: bytes | None) -> tuple[bytes, bytes | None]:
        session: dict[str, Any] = json.loads(state) if state else {}
        env = pb.Envelope()
        try:
            env = unpack(request, sender="coordinator", expect=REQUESTS)
            body = env.WhichOneof("body")
            if body == "setup_request":
                reply, session = self._setup(env, session)
            else:
                self._check_session(env, session)
                if body == "measure_request":
                    reply = self._measure(env, session)
                elif body == "evaluate_request":
                    reply = self._evaluate(env, session)
                else:
                    reply = self._unmask(env, session)
            session["step"] = env.step
            sign(reply, bytes.fromhex(session["signing"]))
            return pack(reply), json.dumps(session).encode()
        except DropOut:
            raise
        except (ProtocolError, JobSpecError, SchemaError, DataValidationError, DataFileError,
                BudgetExceeded, secagg.SecAggError, EvalOptionsError, ValueError) as exc:
            problems = list(getattr(exc, "problems", []))
            reason = str(exc).splitlines()[0] if problems else str(exc)
            log.warning("party refused request: %s", exc)
            return refusal(job_id=env.job_id, step=env.step, party=env.party, reason=reason,
                           problems=problems), (json.dumps(session).encode() if session else None)

    # --- steps ---------------------------------------------------------------------------
    def _setup(self, env: pb.Envelope, old: dict[str, Any]) -> tuple[pb.Envelope, dict[str, Any]]:
        if old.get("job_id") == env.job_id:
            raise ProtocolError(f"job {env.job_id}: setup was already done; a replayed setup is "
                                "refused")
        spec = JobSpec.from_proto(env.setup_request.spec)
        if not 1 <= env.party <= spec.parties:
            raise ProtocolError(f"party index {env.party} is outside 1..{spec.parties}")
        if spec.channel == "plain" and not self.policy.allow_plain:
            raise JobSpecError("the job asks for the unprotected 'plain' channel, which this "
                               "party's policy refuses; use channel secagg")
        if spec.delta > self.policy.delta:
            raise JobSpecError(f"job δ={spec.delta} is above this party's δ={self.policy.delta}")
        if spec.epsilon > self.policy.epsilon_cap:
            raise BudgetExceeded(f"job ε={spec.epsilon} is above this party's cap "
                                 f"ε={self.policy.epsilon_cap}")
        encoded_table(self.policy, spec.schema)  # validate the local data against the schema now
        keys = secagg.KeyPair.generate()
        signing, verifying = new_signing_key()
        session = {"job_id": env.job_id, "party": env.party,
                   "spec": base64.b64encode(env.setup_request.spec.SerializeToString()).decode(),
                   "private": keys.private.hex(), "signing": signing.hex(), "publics": {},
                   "rounds": {}, "step": env.step}
        out = pb.Envelope(job_id=env.job_id, step=env.step, party=env.party)
        out.setup_reply.public_key = keys.public
        out.setup_reply.signing_key = verifying
        log.info("party %d joined job %s", env.party, env.job_id)
        return out, session

    def _check_session(self, env: pb.Envelope, session: dict[str, Any]) -> None:
        if not session or session.get("job_id") != env.job_id:
            raise ProtocolError(f"no setup for job {env.job_id} at this party; run setup first")
        if env.step <= int(session["step"]):
            raise ProtocolError(f"step {env.step} is not after step {session['step']}: a replayed "
                                "or out-of-order message was refused")
        if env.party != session["party"]:
            raise ProtocolError(f"message addressed to party {env.party}, this is party "
                                f"{session['party']}")

    def _spec(self, session: dict[str, Any]) -> JobSpec:
        m = pb.JobSpec()
        m.ParseFromString(base64.b64decode(session["spec"]))
        return JobSpec.from_proto(m)

    def _measure(self, env: pb.Envelope, session: dict[str, Any]) -> pb.Envelope:
        req = env.measure_request
        spec = self._spec(session)
        me = int(session["party"])
        participants = self._open_round(req, session, spec, me, "measured")
        groupings = self._groupings(req, spec)
        sizes = [g.size for g in groupings]
        cliques = [tuple(int(i) for i in c.columns) for c in req.cliques]
        self._check_cliques(cliques, len(sizes), sizes)
        if not np.isfinite(req.noise_variance) or req.noise_variance <= 0:
            raise ProtocolError(f"round {req.round}: noise variance {req.noise_variance} is not "
                                "positive; refusing to release unnoised counts")
        ledger = Ledger(self.policy.ledger_path, self.policy.epsilon_cap, self.policy.delta)
        counts = marginals.count(encoded_table(self.policy, spec.schema), groupings, cliques)
        rng = np.random.default_rng(None if self.policy.noise_seed is None
                                    else [self.policy.noise_seed, me, req.round])
        share = noise.share_variance(req.noise_variance, honest_min=spec.honest_min)
        noised = counts + noise.skellam(share, len(counts), rng)
        spent = ledger.charge(job_id=env.job_id, round_id=req.round, label=req.label,
                              count=len(cliques), variance=req.noise_variance)
        publics = {int(k): bytes.fromhex(v) for k, v in session["publics"].items()}
        reply, own = party_measure_reply(
            noised, channel=spec.channel, job_id=env.job_id, me=me, round_id=req.round,
            participants=participants, threshold=spec.threshold,
            private=bytes.fromhex(session["private"]), publics=publics)
        session["rounds"][str(req.round)] = {"own_share": own.hex(),
                                             "participants": participants, "unmasked": False}
        log.info("party %d round %d (%s): %d cells, spent ε=%.4f of %.4f", me, req.round,
                 req.label, len(counts), spent, self.policy.epsilon_cap)
        out = pb.Envelope(job_id=env.job_id, step=env.step, party=me)
        out.measure_reply.CopyFrom(reply)
        return out

    def _evaluate(self, env: pb.Envelope, session: dict[str, Any]) -> pb.Envelope:
        """Score the synthetic table against this party's rows; reply with the masked sums.

        What leaves: the statistics vector of evaluation.statistics (exact counts and sums over
        this party's rows, not DP), masked so that only its sum with the other participants'
        (at least t of them) is revealed, as for a measurement. Nothing is charged to the
        ledger because no DP release is made; the policy must allow this release.
        """
        req = env.evaluate_request
        spec = self._spec(session)
        me = int(session["party"])
        if not self.policy.allow_evaluation:
            raise ProtocolError("this party's policy does not release evaluation statistics "
                                "(exact sums over its rows); the job's synthetic table is "
                                "unaffected")
        if len(req.synthetic_parquet) > MAX_SYNTHETIC_BYTES:
            raise ProtocolError(f"synthetic table of {len(req.synthetic_parquet)} bytes is over "
                                f"this party's limit of {MAX_SYNTHETIC_BYTES}")
        participants = self._open_round(req, session, spec, me, "answered")
        synthetic = synthetic_from_parquet(req.synthetic_parquet, spec.schema)
        plan = EvaluationPlan.build(spec.schema, synthetic, EvalOptions.from_json(
            req.options_json))
        train = validate_frame(read_table(self.policy.data_path), spec.schema,
                               source=str(self.policy.data_path), show_values=False)
        test = None
        if self.policy.holdout_path is not None:
            test = validate_frame(read_table(self.policy.holdout_path), spec.schema,
                                  source=str(self.policy.holdout_path), show_values=False)
        vector = node_statistics(plan, synthetic, train=train, test=test)
        publics = {int(k): bytes.fromhex(v) for k, v in session["publics"].items()}
        reply, own = party_measure_reply(
            vector, channel=spec.channel, job_id=env.job_id, me=me, round_id=req.round,
            participants=participants, threshold=spec.threshold,
            private=bytes.fromhex(session["private"]), publics=publics)
        reply.ledger_epsilon = Ledger(self.policy.ledger_path, self.policy.epsilon_cap,
                                      self.policy.delta).spent()
        session["rounds"][str(req.round)] = {"own_share": own.hex(),
                                             "participants": participants, "unmasked": False}
        log.info("party %d round %d (evaluation): %d statistics over %d rows (not DP, summed "
                 "with the other parties' by secure aggregation)", me, req.round, len(vector),
                 len(train) + (0 if test is None else len(test)))
        out = pb.Envelope(job_id=env.job_id, step=env.step, party=me)
        out.measure_reply.CopyFrom(reply)
        return out

    def _unmask(self, env: pb.Envelope, session: dict[str, Any]) -> pb.Envelope:
        req = env.unmask_request
        spec = self._spec(session)
        rnd = session["rounds"].get(str(req.round))
        if rnd is None:
            raise ProtocolError(f"round {req.round} was never measured by this party")
        if rnd["unmasked"]:
            raise ProtocolError(f"round {req.round} was already unmasked; a repeat is refused")
        me = int(session["party"])
        publics = {int(k): bytes.fromhex(v) for k, v in session["publics"].items()}
        reply = party_unmask_reply(req, job_id=env.job_id, me=me, threshold=spec.threshold,
                                   participants=rnd["participants"],
                                   private=bytes.fromhex(session["private"]), publics=publics,
                                   own_share=bytes.fromhex(rnd["own_share"]))
        rnd["unmasked"] = True
        out = pb.Envelope(job_id=env.job_id, step=env.step, party=me)
        out.unmask_reply.CopyFrom(reply)
        return out

    # --- checks --------------------------------------------------------------------------
    def _open_round(self, req: pb.MeasureRequest | pb.EvaluateRequest, session: dict[str, Any],
                    spec: JobSpec, me: int, verb: str) -> list[int]:
        """Checks of every masked round: injected dropout (tests), one answer per round, at
        least t participants including this party, and pinned public keys."""
        if self.policy.fail_at_round is not None and req.round >= self.policy.fail_at_round:
            raise DropOut(f"party {me} drops out at round {req.round} (injected)")
        if str(req.round) in session["rounds"]:
            raise ProtocolError(f"round {req.round} was already {verb}; a repeat is refused")
        participants = sorted(set(req.participants))
        if me not in participants or len(participants) < spec.threshold:
            raise ProtocolError(f"round {req.round}: {len(participants)} participants (t="
                                f"{spec.threshold}), this party included: {me in participants}")
        self._pin_keys(req, session, participants, spec.channel)
        return participants

    def _pin_keys(self, req: pb.MeasureRequest | pb.EvaluateRequest, session: dict[str, Any],
                  participants: list[int], channel: str) -> None:
        if channel == "plain":
            return
        pinned: dict[str, str] = session["publics"]
        for p in participants:
            key = req.public_keys.get(p)
            if key is None or len(key) != 32:
                raise ProtocolError(f"no valid public key for party {p} in round {req.round}")
            if str(p) in pinned and pinned[str(p)] != key.hex():
                raise ProtocolError(f"the public key of party {p} changed during the job; "
                                    "refusing (possible key substitution)")
            pinned[str(p)] = key.hex()

    def _groupings(self, req: pb.MeasureRequest, spec: JobSpec) -> list[Grouping]:
        fine = Encoding.from_schema(spec.schema).sizes
        if len(req.groupings) != len(fine):
            raise ProtocolError(f"{len(req.groupings)} groupings for {len(fine)} columns")
        out = []
        for j, (g, n) in enumerate(zip(req.groupings, fine, strict=True)):
            idx = np.asarray(g.index, dtype=np.int64)
            if len(idx) != n or (n and (idx.min() < 0 or idx.max() >= n)):
                raise ProtocolError(f"grouping of column {spec.schema.columns[j].name!r} does not "
                                    f"map its {n} codes into 0..{n - 1}")
            out.append(Grouping(idx))
        return out

    @staticmethod
    def _check_cliques(cliques: list[tuple[int, ...]], d: int, sizes: list[int]) -> None:
        if not cliques:
            raise ProtocolError("a measure request without marginals")
        for c in cliques:
            if not c or len(set(c)) != len(c) or any(not 0 <= i < d for i in c):
                raise ProtocolError(f"marginal {c} does not name distinct columns 0..{d - 1}")
        if marginals.vector_length(cliques, sizes) > MAX_CELLS:
            raise ProtocolError(f"request asks for more than {MAX_CELLS} cells")

