"""The party's request handler: checks every request against its own policy, keeps its ledger,
noises and masks.

Transport-free: `Node.handle(request, state) -> (reply, state)` takes and returns bytes, so the
same code serves the Flower ClientApp, local tests and any future transport. What leaves the
party: at setup, its X25519 job key signed by its identity key; before the first masked round
(mask_keys_request) and then with every round's reply, its one-shot mask key for the next round,
signed, with encrypted Shamir shares of the private half; per round a vector that is (counts +
its Skellam noise share) masked by secure aggregation; in the unmask step, shares as in
protocols.secure_sum (self-mask shares of survivors, mask-key shares of dropped parties, never
both for one party and round); every reply signed by its identity key. A round's mask key is
deleted as soon as it has masked that round's vector. Raw rows, unnoised or unmasked counts
never leave (except under an unprotected channel, "plain", which a party only accepts when its
policy lists it, i.e. in tests and simulations; protocols.channels declares what each channel
shows the coordinator). Under the he channel the noised vector leaves encrypted under the key
holder's public context instead of masked; the party checks at setup that the context carries
the identity signature, for this job, of the key holder the spec names, which its policy must
list (`key_holders`), so a coordinator cannot substitute a context whose secret key it holds.

What a refusal tells the coordinator: the kind of problem and, for data problems, the column
(never counts, values, row or line numbers, or the names of the party's own extra columns: an
unlimited, uncharged refusal channel would be a counting oracle). The full detail goes to the
party's own log. A job whose schema is not the one the policy pins is refused before the data
is read, and setups are rate-limited, so a refusal is the same one bit for every job.

Noise comes from `crypto.noise.secure_generator` (OS entropy). `NodePolicy.noise_seed` exists
for tests only; a party using it says so in every measure reply, and the job's privacy report
then says "not differentially private: noise was seeded".
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth.client_node.data import DataFileError, read_table
from fedsynth.client_node.ledger import BudgetExceeded, Ledger, LimitReached
from fedsynth.client_node.table import PartyTable, party_table
from fedsynth.crypto import he, noise, secagg
from fedsynth.crypto.keys import (
    public_identity,
    round_statement,
    sign_key,
    sign_round,
    verify_key,
    verify_statement,
)
from fedsynth.evaluation.plan import EvalOptions, EvalOptionsError, EvaluationPlan
from fedsynth.evaluation.statistics import node_statistics
from fedsynth.evaluation.transfer import synthetic_from_parquet
from fedsynth.protocols import channels
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.protocols.messages import ProtocolError, pack, refusal, sign, unpack
from fedsynth.protocols.secure_sum import party_measure_reply, verified_mask_keys
from fedsynth.protocols.spec import JobSpec, JobSpecError, schema_sha256, spec_digest
from fedsynth.synthesis import marginals
from fedsynth.synthesis.encoding import Encoding, Grouping
from fedsynth.synthesis.schema import DataValidationError, Schema, SchemaError, validate_frame

log = logging.getLogger("fedsynth.node")
MAX_CELLS = 20_000_000
REQUESTS = ("setup_request", "measure_request", "confirm_request", "unmask_request",
            "evaluate_request", "mask_keys_request", "train_request")  # then HANDLERS (below)
# the steps of a round in order, for injected dropouts (NodePolicy.fail_at)
STEPS = {"keys": 0, "measure": 1, "confirm": 2, "unmask": 3}
STEP_OF = {"mask_keys_request": "keys", "measure_request": "measure",
           "evaluate_request": "measure", "train_request": "measure",
           "confirm_request": "confirm",
           "unmask_request": "unmask"}
RoundRequest = pb.MeasureRequest | pb.EvaluateRequest | pb.TrainRequest  # answered masked
MAX_PENDING_MASK_KEYS = 2  # announced keys of rounds not yet measured
MAX_ROUND = 2**32 - 2  # round ids are uint32 and a reply announces round + 1's key


@dataclass(frozen=True)
class OpenRound:
    """A round this party has opened: who takes part, their mask keys, and its own round mask
    key (already removed from the session)."""

    participants: list[int]
    mask_publics: dict[int, bytes]
    mask_private: bytes = field(repr=False)
MAX_SYNTHETIC_BYTES = 256 << 20  # largest synthetic table a party accepts to evaluate
MAX_VARIANCE = 2.0**40  # far above any useful counting noise; bounds the sampler's work
EVALUATION_MODES = ("off", "dp", "exact")


class DropOut(RuntimeError):
    """Injected failure (tests, benchmarks): the party goes silent at a given round."""


class Refused(RuntimeError):
    """A request this party declines; `reason` and `problems` are all the coordinator sees."""

    def __init__(self, reason: str, problems: list[str] | None = None) -> None:
        self.reason, self.problems = reason, list(problems or [])
        super().__init__(reason)


@dataclass(frozen=True)
class NodePolicy:
    """The party's own rules, which no coordinator request can override.

    `consortium` is the party's own copy of the consortium's public list (party name ->
    Ed25519 identity key); `identity_key` is this party's private identity key. `schema_sha256`
    pins the public schema (`protocols.spec.schema_sha256`): a job with another schema is
    refused before the data is read. `assume_colluders` is how many parties this party assumes
    may collude with the coordinator: a job claiming fewer colluders would size this party's
    noise share for more honest survivors than it believes in, and is refused. `key_holders`
    lists the identity keys of the key holders it accepts for channels with a key holder (he):
    one that must not collude with the coordinator, in this party's own judgement. `graphs`
    are the secagg graphs it takes part in: "complete" only by default; "sparse" (SecAgg+)
    holds against a coordinator that follows the protocol, and each party says it accepts it.
    """

    data_path: Path
    ledger_path: Path
    epsilon_cap: float
    delta: float
    party_name: str
    identity_key: bytes = field(repr=False)
    consortium: Mapping[str, bytes]
    schema_sha256: str
    channels: tuple[str, ...] = ("secagg",)
    graphs: tuple[str, ...] = ("complete",)
    key_holders: frozenset[bytes] = field(default=frozenset(), repr=False)
    assume_colluders: int = 0
    max_parties: int = 1000
    max_setups_per_hour: int = 60
    # Evaluation: "off"; "dp" (noised sums, charged to evaluation_epsilon_cap); "exact" (also
    # allows exact sums, which are not DP). Rows are always the held-out ones only.
    evaluation: str = "off"
    evaluation_epsilon_cap: float = 0.0
    max_evaluations: int = 1  # evaluations of the same held-out rows
    holdout_path: Path | None = None  # rows kept out of synthesis, to evaluate against
    fail_at_round: int | None = None  # tests and benchmarks: injected dropout
    # tests: silent from (round, step) on, step one of STEPS ("measure" covers evaluations)
    fail_at: tuple[int, str] | None = None
    noise_seed: int | None = None  # TESTS ONLY: reproducible noise, which is not private

    def __post_init__(self) -> None:
        if self.fail_at is not None and self.fail_at[1] not in STEPS:
            raise ValueError(f"fail_at step {self.fail_at[1]!r} is not one of {list(STEPS)}")

    def ledger(self) -> Ledger:
        return Ledger(self.ledger_path, self.epsilon_cap, self.delta,
                      evaluation_epsilon_cap=self.evaluation_epsilon_cap)

    def drops_at(self, body: str, round_id: int) -> bool:
        """Whether the injected dropout `fail_at` silences this request (tests only)."""
        if self.fail_at is None or body not in STEP_OF:
            return False
        at_round, at_step = self.fail_at
        return (round_id, STEPS[STEP_OF[body]]) >= (at_round, STEPS[at_step])


def data_table(policy: NodePolicy, schema: Schema) -> PartyTable:
    """The party's table under the job's schema, encoded once and kept for the job's rounds
    (client_node.table)."""
    return party_table(Path(policy.data_path), schema)


def encoded_table(policy: NodePolicy, schema: Schema) -> np.ndarray:
    """(rows, columns) int64 fine codes of the party's whole table."""
    return data_table(policy, schema).fine()


class Node:
    def __init__(self, policy: NodePolicy) -> None:
        self.policy = policy

    # --- entry point -------------------------------------------------------------------
    def handle(self, request: bytes, state: bytes | None) -> tuple[bytes, bytes | None]:
        session: dict[str, Any] = json.loads(state) if state else {}
        env = pb.Envelope()
        try:
            try:
                env = unpack(request, sender="coordinator", expect=REQUESTS)
                body = env.WhichOneof("body")
                if body and self.policy.drops_at(body, int(getattr(getattr(env, body), "round",
                                                                   0))):
                    raise DropOut(f"party {env.party} drops out at {body} (injected)")
                if body == "setup_request":
                    reply, session = self._setup(env, session)
                else:
                    self._check_session(env, session)
                    method = self._spec(session).method
                    if method not in METHOD_OF.get(str(body), (method,)):
                        raise ProtocolError(f"a {body} in a job whose method is {method!r}")
                    reply = HANDLERS[str(body)](self, env, session)
            except (ProtocolError, JobSpecError, SchemaError, BudgetExceeded,
                    secagg.SecAggError, EvalOptionsError, he.HEError) as exc:
                raise Refused(str(exc), list(getattr(exc, "problems", []))) from exc
            except DataValidationError as exc:
                log.warning("party's data does not match the job's schema: %s", exc)
                raise Refused("this party's data does not match the job's schema (details in "
                              "the party's own log)", exc.kinds) from exc
            except DataFileError as exc:
                log.warning("party's data could not be read: %s", exc)
                raise Refused("this party's data file could not be read (details in the "
                              "party's own log)") from exc
            session["step"] = env.step
            sign(reply, self.policy.identity_key)
            return pack(reply), json.dumps(session).encode()
        except DropOut:
            raise
        except Refused as r:
            log.warning("party refused request: %s", r.__cause__ or r)
            reason = r.reason.splitlines()[0] if r.problems else r.reason
            return refusal(job_id=env.job_id, step=env.step, party=env.party, reason=reason,
                           problems=r.problems), (json.dumps(session).encode() if session
                                                  else None)
        except Exception:  # an error's text could describe the party's rows: keep it here
            log.exception("party failed on a request; the coordinator is told only that it did")
            return refusal(job_id=env.job_id, step=env.step, party=env.party,
                           reason="internal error at the party (details in the party's own log)",
                           problems=[]), (json.dumps(session).encode() if session else None)

    def _ledger(self) -> Ledger:
        return self.policy.ledger()

    def _policy_problems(self, spec: JobSpec, party: int) -> list[str]:
        """Every way the job asks for more than this party's policy allows (before any data)."""
        pol, out = self.policy, []
        if not 1 <= party <= spec.parties:
            out.append(f"party index {party} is outside 1..{spec.parties}")
        elif spec.party_names[party - 1] != pol.party_name or spec.identity_of(
                party) != public_identity(pol.identity_key):
            out.append(f"the job names party {party} {spec.party_names[party - 1]!r} with an "
                       f"identity key that is not this party's ({pol.party_name!r})")
        strangers = [n for n, k in zip(spec.party_names, spec.identity_keys, strict=True)
                     if pol.consortium.get(n) != k]
        if strangers:
            out.append(f"parties {strangers} are not on this party's consortium list with "
                       "those identity keys")
        if schema_sha256(spec.schema) != pol.schema_sha256:
            out.append("the job's schema is not the one this party's policy pins (sha256 "
                       f"{pol.schema_sha256[:12]}...); agree on the public schema first")
        if spec.channel not in pol.channels:
            out.append(f"channel {spec.channel!r} is not allowed by this party's policy "
                       f"(allowed: {', '.join(pol.channels)})")
        if spec.graph not in pol.graphs:
            out.append(f"the {spec.graph} secagg graph is not allowed by this party's policy "
                       f"(allowed: {', '.join(pol.graphs)}; add \"sparse\" to 'graphs' to "
                       "take part in SecAgg+)")
        if channels.get(spec.channel).key_holder and spec.key_holder not in pol.key_holders:
            out.append(f"the job's key holder (identity {spec.key_holder.hex()[:12]}...) is not "
                       "one this party's policy accepts (key_holders)")
        if spec.delta > pol.delta:
            out.append(f"job δ={spec.delta} is above this party's δ={pol.delta}")
        if spec.epsilon > pol.epsilon_cap:
            out.append(f"job ε={spec.epsilon} is above this party's cap ε={pol.epsilon_cap}")
        if spec.colluders < pol.assume_colluders:
            out.append(f"the job assumes c={spec.colluders} colluders, this party assumes up to "
                       f"{pol.assume_colluders}: its noise share would be too small")
        if spec.parties > pol.max_parties:
            out.append(f"{spec.parties} parties is above this party's limit of "
                       f"{pol.max_parties}")
        return out

    # --- steps ---------------------------------------------------------------------------
    def _setup(self, env: pb.Envelope, old: dict[str, Any]) -> tuple[pb.Envelope, dict[str, Any]]:
        if old.get("job_id") == env.job_id:
            raise ProtocolError(f"job {env.job_id}: setup was already done; a replayed setup is "
                                "refused")
        spec = JobSpec.from_proto(env.setup_request.spec)
        problems = self._policy_problems(spec, env.party)
        if problems:
            raise JobSpecError("the job is outside this party's policy: " + "; ".join(problems))
        if not 0 < len(env.job_id) <= 64:
            raise ProtocolError("a job id must have 1 to 64 characters")
        context = b""
        if channels.get(spec.channel).key_holder:  # signed for this job by the listed holder
            context = bytes(env.setup_request.he_context)
            he.verify_public_context(env.job_id, context,
                                     env.setup_request.he_context_signature, spec.key_holder,
                                     channels.HE_PARAMS,
                                     spec_digest(env.setup_request.spec),
                                     bytes(env.setup_request.he_mask_key))
        if any(a.get("job_id") == env.job_id for a in self._ledger().audits("setup")):
            raise ProtocolError(f"job {env.job_id} was set up at this party before; a job id "
                                "is used once")
        hour_ago = time.time() - 3600
        try:  # checked and recorded under the ledger's lock: concurrent setups cannot both pass
            self._ledger().record_limited(
                "setup", limit=self.policy.max_setups_per_hour,
                same=lambda a: float(a.get("time", 0)) > hour_ago,
                job_id=env.job_id, party=env.party)
        except LimitReached:
            raise ProtocolError(f"this party accepts at most {self.policy.max_setups_per_hour} "
                                "job setups an hour; try again later") from None
        data_table(self.policy, spec.schema)  # read, validate and encode the data now, once
        keys = secagg.KeyPair.generate()
        session = {"job_id": env.job_id, "party": env.party,
                   "spec": base64.b64encode(env.setup_request.spec.SerializeToString()).decode(),
                   "private": keys.private.hex(), "public": keys.public.hex(), "publics": {},
                   "rounds": {}, "mask_keys": {}, "step": env.step}
        if context:
            session["he_context"] = base64.b64encode(context).decode()
            session["he_mask_key"] = bytes(env.setup_request.he_mask_key).hex()
        out = pb.Envelope(job_id=env.job_id, step=env.step, party=env.party)
        out.setup_reply.public_key = keys.public
        out.setup_reply.key_signature = sign_key(self.policy.identity_key, job_id=env.job_id,
                                                 party=env.party, public_key=keys.public)
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
        return _parse_spec(str(session["spec"]))

    def _rng(self, me: int, round_id: int) -> np.random.Generator:
        if self.policy.noise_seed is None:
            return noise.secure_generator()
        log.warning("party %d: noise seeded from the policy (tests only): NOT differentially "
                    "private", me)
        return noise.seeded_generator([self.policy.noise_seed, me, round_id])

    def _masked_reply(self, env: pb.Envelope, session: dict[str, Any], spec: JobSpec,
                      round_id: int, vector: np.ndarray, opened: OpenRound) -> pb.Envelope:
        """Mask a noised vector for this round (with the round's mask key, which `_open_round`
        already took out of the session) and keep the next round's key. The caller charges the
        ledger after this and before the reply leaves: a failure here charges nothing."""
        me = int(session["party"])
        publics = {int(k): bytes.fromhex(v) for k, v in session["publics"].items()}
        body = getattr(env, env.WhichOneof("body") or "")
        digest = hashlib.sha256(body.SerializeToString(deterministic=True)).hexdigest()
        # the channel's `contribute`, by way of the dispatcher (which tests watch)
        reply, own, next_key = party_measure_reply(
            vector, channel=spec.channel, job_id=env.job_id, me=me, round_id=round_id,
            participants=opened.participants, threshold=spec.threshold,
            private=bytes.fromhex(session["private"]), publics=publics,
            mask_private=opened.mask_private, mask_publics=opened.mask_publics,
            identity_key=self.policy.identity_key, request_digest=bytes.fromhex(digest),
            public_context=base64.b64decode(session.get("he_context", "")),
            key_holder_key=bytes.fromhex(session.get("he_mask_key", "")), spec=spec)
        if channels.get(spec.channel).round_keys:
            session.setdefault("mask_keys", {})[str(round_id + 1)] = next_key.hex()
        reply.seeded_noise = self.policy.noise_seed is not None
        session["rounds"][str(round_id)].update(own_share=own.hex(), digest=digest,
                                                answered=True)
        out = pb.Envelope(job_id=env.job_id, step=env.step, party=me)
        out.measure_reply.CopyFrom(reply)
        return out

    def _mask_keys(self, env: pb.Envelope, session: dict[str, Any]) -> pb.Envelope:
        """Announce this party's one-shot mask key for a coming round (secure_sum step 0).

        Sent before the job's first masked round; later rounds' keys come with the previous
        round's reply. One key per round, never for a round already opened or passed, and the
        share holders are the request's participants, checked like a round's."""
        req = env.mask_keys_request
        spec = self._spec(session)
        me = int(session["party"])
        channel = channels.get(spec.channel)
        if not channel.round_keys:
            raise ProtocolError(f"a job over the {spec.channel} channel has no mask keys")
        participants = self._participants(req, spec, me)
        self._pin_keys(req, session, participants, spec, me)
        pending: dict[str, str] = session.setdefault("mask_keys", {})
        if req.round >= MAX_ROUND:
            raise ProtocolError(f"round {req.round} is out of range")
        if str(req.round) in pending or any(int(r) >= req.round for r in session["rounds"]):
            raise ProtocolError(f"round {req.round}: this party already announced a mask key for "
                                "it or has gone past it; a party announces one key per round")
        if len(pending) >= MAX_PENDING_MASK_KEYS:
            raise ProtocolError(f"this party already holds mask keys for rounds "
                                f"{sorted(int(r) for r in pending)}, none measured yet")
        publics = {int(k): bytes.fromhex(v) for k, v in session["publics"].items()}
        ann, private = channel.announce(job_id=env.job_id, me=me, round_id=req.round,
                                        holders=participants, threshold=spec.threshold,
                                        private=bytes.fromhex(session["private"]),
                                        publics=publics, identity_key=self.policy.identity_key,
                                        spec=spec)
        pending[str(req.round)] = private.hex()
        out = pb.Envelope(job_id=env.job_id, step=env.step, party=me)
        out.mask_keys_reply.CopyFrom(ann)
        return out

    def _confirm(self, env: pb.Envelope, session: dict[str, Any]) -> pb.Envelope:
        """Sign the round's one survivor list, bound to the digest of the request answered.

        A party signs at most one list per round; it later unmasks only with t signatures over
        exactly this statement. Two different lists would each need t signers, and honest
        parties sign one, so with 2t >= n + c + 2 no two lists can both be accepted: every
        honest party that unmasks sees the same survivors and dropped parties, and every
        signer received the same request (same noise variance, marginals and groupings). A
        survivor that did not sign is covered too: its self-mask shares were encrypted with the
        digest of the request it answered in their associated data, so a holder can decrypt
        (and release) them only if it answered the very same request."""
        req = env.confirm_request
        spec = self._spec(session)
        if not channels.get(spec.channel).follow_up:
            raise ProtocolError(f"a job over the {spec.channel} channel has no confirm step")
        rnd = session["rounds"].get(str(req.round))
        if rnd is None or not rnd.get("answered"):
            raise ProtocolError(f"round {req.round} was never measured by this party")
        survivors = sorted(set(req.survivors))
        me = int(session["party"])
        if rnd["confirmed"] is not None:
            raise ProtocolError(f"round {req.round}: a survivor list was already confirmed")
        if not set(survivors) <= set(rnd["participants"]) or me not in survivors or len(
                survivors) < spec.threshold:
            raise ProtocolError(f"round {req.round}: survivors {survivors} are not at least "
                                f"t={spec.threshold} of the round's participants with this party")
        rnd["confirmed"] = survivors
        out = pb.Envelope(job_id=env.job_id, step=env.step, party=me)
        out.confirm_reply.round = req.round
        out.confirm_reply.signature = sign_round(
            self.policy.identity_key, job_id=env.job_id, round_id=req.round, survivors=survivors,
            digest=bytes.fromhex(rnd["digest"]))
        return out

    def _measure(self, env: pb.Envelope, session: dict[str, Any]) -> pb.Envelope:
        req = env.measure_request
        spec = self._spec(session)
        me = int(session["party"])
        opened = self._open_round(req, session, spec, me, "measured")
        groupings = self._groupings(req, spec)
        sizes = [g.size for g in groupings]
        cliques = [tuple(int(i) for i in c.columns) for c in req.cliques]
        self._check_cliques(cliques, len(sizes), sizes)
        if spec.method == "dpsgd":
            _check_domain_round(req, session, spec, groupings, cliques)
        if not np.isfinite(req.noise_variance) or req.noise_variance <= 0:
            raise ProtocolError(f"round {req.round}: noise variance {req.noise_variance} is not "
                                "positive; refusing to release unnoised counts")
        if req.noise_variance > MAX_VARIANCE or len(req.label) > 64:
            raise ProtocolError(f"round {req.round}: noise variance or label out of range")
        counts = data_table(self.policy, spec.schema).count(groupings, cliques)
        share = noise.share_variance(req.noise_variance, honest_min=spec.noise_divisor)
        noised = counts + noise.skellam(share, len(counts), self._rng(me, req.round))
        out = self._masked_reply(env, session, spec, req.round, noised, opened)
        # recorded (fsynced) after every check and before the value can leave; refused past
        # the cap (the round stays closed: its mask key is gone, so it is never answered)
        ledger = self._ledger()
        spent = ledger.charge(job_id=env.job_id, round_id=req.round, label=req.label,
                              count=len(cliques), variance=req.noise_variance)
        out.measure_reply.ledger_epsilon = spent
        log.info("party %d round %d (%s): spent ε=%.4f of %.4f", me, req.round, req.label, spent,
                 self.policy.epsilon_cap)
        return out

    def _evaluate(self, env: pb.Envelope, session: dict[str, Any]) -> pb.Envelope:
        """Score the synthetic table against this party's HELD-OUT rows; reply with masked sums.

        Only held-out rows are used (never the rows the DP synthesis protects), and only if the
        policy allows evaluation; a party without held-out rows refuses. With DP evaluation
        (options carry an ε) every block gets Skellam noise calibrated to its sensitivity by
        evaluation.dp, charged to the ledger's separate evaluation budget before the reply
        leaves. Exact evaluation releases exact sums (not DP) and needs policy "exact". Every
        evaluation is audited in the ledger (job, round, digest of the held-out rows), and the
        same held-out rows are evaluated at most `max_evaluations` times: repeated exact sums
        over changing sets of parties would difference out one party's rows.
        """
        req = env.evaluate_request
        spec = self._spec(session)
        me = int(session["party"])
        pol = self.policy
        if pol.evaluation not in EVALUATION_MODES or pol.evaluation == "off":
            raise ProtocolError("this party's policy does not take part in evaluations; the "
                                "job's synthetic table is unaffected")
        if pol.holdout_path is None:
            raise ProtocolError("this party has no held-out rows to evaluate against (it never "
                                "evaluates on the rows the synthesis used); the synthetic table "
                                "is unaffected")
        if len(req.synthetic_parquet) > MAX_SYNTHETIC_BYTES:
            raise ProtocolError(f"synthetic table of {len(req.synthetic_parquet)} bytes is over "
                                f"this party's limit of {MAX_SYNTHETIC_BYTES}")
        options = EvalOptions.from_json(req.options_json)
        epsilon = options.epsilon
        if epsilon is None and pol.evaluation != "exact":
            raise ProtocolError("this party releases only DP evaluation statistics (its policy "
                                "does not allow exact sums); ask for an evaluation ε")
        if epsilon is not None and options.delta > pol.delta:
            raise ProtocolError(f"evaluation δ={options.delta} is above this party's "
                                f"δ={pol.delta}")
        if epsilon is None and (not channels.get(spec.channel).protected
                                or spec.threshold < 2):
            raise ProtocolError("exact evaluation sums are released only through secure "
                                "aggregation with at least two parties in every sum")
        opened = self._open_round(req, session, spec, me, "answered")
        digest = hashlib.sha256(pol.holdout_path.read_bytes()).hexdigest()
        ledger = self._ledger()

        def same(a: dict[str, Any]) -> bool:
            return a.get("holdout_sha256") == digest

        try:  # the synthetic table is public: its problems may be named in full
            synthetic = synthetic_from_parquet(req.synthetic_parquet, spec.schema)
        except (ValueError, DataValidationError) as exc:
            raise ProtocolError(str(exc)) from None
        plan = EvaluationPlan.build(spec.schema, synthetic, options)
        holdout = validate_frame(read_table(pol.holdout_path, spec.schema), spec.schema,
                                 source=str(pol.holdout_path), show_values=False)
        vector = node_statistics(plan, synthetic, train=None, test=holdout)
        releases: list[Any] = []
        if epsilon is not None:
            releases, extra = self._evaluation_noise(plan, spec, me, req.round)
            vector = vector + extra
        out = self._masked_reply(env, session, spec, req.round, vector, opened)
        try:  # checked and recorded under the ledger's lock, before any budget or release
            ledger.record_limited("evaluation", limit=pol.max_evaluations, same=same,
                                  job_id=env.job_id, round=req.round, holdout_sha256=digest,
                                  dp=epsilon is not None, epsilon=epsilon)
        except LimitReached as exc:
            raise ProtocolError(f"these held-out rows were already evaluated {exc.count} "
                                f"time(s), the most this party's policy allows "
                                f"({pol.max_evaluations})") from None
        if releases:  # charged to the evaluation budget before the reply leaves
            ledger.charge_many([{"label": f"evaluation:{r.name}", "count": 1,
                                 "variance": r.variance, "l1": r.l1, "l2": r.l2}
                                for r in releases],
                               job_id=env.job_id, round_id=req.round, budget="evaluation")
        out.measure_reply.ledger_epsilon = ledger.spent()
        log.info("party %d round %d (evaluation, %s): %d statistics of its held-out rows", me,
                 req.round, "exact, not DP" if epsilon is None else f"DP at ε={epsilon}",
                 len(vector))
        return out

    def _evaluation_noise(self, plan: EvaluationPlan, spec: JobSpec, me: int,
                          round_id: int) -> tuple[list[Any], np.ndarray]:
        """This party's share of the DP evaluation noise, and the releases to charge for it
        (the caller charges them to the evaluation budget before the reply leaves)."""
        from fedsynth.evaluation.dp import element_variances, evaluation_releases

        releases = evaluation_releases(plan)
        share = noise.share_variance(element_variances(plan), honest_min=spec.noise_divisor)
        return list(releases), noise.skellam(share, plan.length, self._rng(me, round_id))

    def _unmask(self, env: pb.Envelope, session: dict[str, Any]) -> pb.Envelope:
        req = env.unmask_request
        spec = self._spec(session)
        rnd = session["rounds"].get(str(req.round))
        if rnd is None or not rnd.get("answered"):
            raise ProtocolError(f"round {req.round} was never measured by this party")
        if rnd["unmasked"]:
            raise ProtocolError(f"round {req.round} was already unmasked; a repeat is refused")
        me = int(session["party"])
        self._check_confirmations(req, rnd, spec, str(session["job_id"]))
        publics = {int(k): bytes.fromhex(v) for k, v in session["publics"].items()}
        reply = channels.get(spec.channel).release(
            req, job_id=env.job_id, me=me, threshold=spec.threshold,
            participants=rnd["participants"], private=bytes.fromhex(session["private"]),
            publics=publics, own_share=bytes.fromhex(rnd["own_share"]),
            request_digest=bytes.fromhex(rnd["digest"]), spec=spec)
        rnd["unmasked"] = True
        out = pb.Envelope(job_id=env.job_id, step=env.step, party=me)
        out.unmask_reply.CopyFrom(reply)
        return out

    # --- checks --------------------------------------------------------------------------
    @staticmethod
    def _check_confirmations(req: pb.UnmaskRequest, rnd: dict[str, Any], spec: JobSpec,
                             job_id: str) -> None:
        """Unmask only the list this party confirmed, with t survivors' signatures over it."""
        confirmed = rnd.get("confirmed")
        if confirmed is None or sorted(set(req.survivors)) != confirmed:
            raise ProtocolError(f"round {req.round}: the survivor list is not the one this party "
                                "confirmed; refusing to unmask")
        if sorted(set(req.dropped)) != sorted(set(rnd["participants"]) - set(confirmed)):
            raise ProtocolError(f"round {req.round}: the dropped parties are not the round's "
                                "participants minus its survivors; refusing to unmask")
        statement = round_statement(job_id=job_id, round_id=req.round, survivors=confirmed,
                                    digest=bytes.fromhex(rnd["digest"]))
        listed = set(confirmed)
        signers = [p for p, sig in req.confirmations.items()
                   if p in listed and verify_statement(spec.identity_of(p), sig, statement)]
        if len(signers) < spec.threshold:
            raise ProtocolError(f"round {req.round}: {len(signers)} survivors confirmed the same "
                                f"list and request, below t={spec.threshold}; refusing to unmask")

    def _open_round(self, req: RoundRequest, session: dict[str, Any],
                    spec: JobSpec, me: int, verb: str) -> OpenRound:
        """Checks of every masked round: injected dropout (tests), one answer per round, at
        least t participants including this party, all of them among the job's parties and
        among those whose keys were pinned; every participant's mask key for this round signed
        by its identity key, this party's own among them. Returns the participants and their
        mask keys."""
        if self.policy.fail_at_round is not None and req.round >= self.policy.fail_at_round:
            raise DropOut(f"party {me} drops out at round {req.round} (injected)")
        if str(req.round) in session["rounds"]:
            raise ProtocolError(f"round {req.round} was already {verb}; a repeat is refused")
        if req.round >= MAX_ROUND:
            raise ProtocolError(f"round {req.round} is out of range")
        participants = self._participants(req, spec, me)
        channel = channels.get(spec.channel)
        if channel.setup_keys:
            self._pin_keys(req, session, participants, spec, me)
        if not channel.round_keys:
            self._close_round(session, req.round, participants)
            return OpenRound(participants, {}, b"")
        pending = session.setdefault("mask_keys", {})
        if str(req.round) not in pending:
            raise ProtocolError(f"round {req.round}: this party announced no mask key for this "
                                "round (keys are announced one round ahead); refusing")
        if str(req.round + 1) in pending:
            raise ProtocolError(f"round {req.round + 1}: this party already announced a mask "
                                "key for it; a party announces one key per round")
        mask_publics = verified_mask_keys(
            req.mask_keys, req.mask_key_signatures, job_id=str(session["job_id"]),
            round_id=req.round, participants=participants, identity_of=spec.identity_of)
        if mask_publics[me] != secagg.public_of(bytes.fromhex(pending[str(req.round)])):
            raise ProtocolError(f"round {req.round}: this party's own mask key was not relayed "
                                "faithfully; refusing")
        mask_private = bytes.fromhex(pending.pop(str(req.round)))
        self._close_round(session, req.round, participants)
        return OpenRound(participants, mask_publics, mask_private)

    @staticmethod
    def _close_round(session: dict[str, Any], round_id: int, participants: list[int]) -> None:
        """From here on the round is this party's to answer once: whatever happens next (a
        refusal, the budget cap, an error) it is never opened again, and its mask key, taken
        out of the session, is never used again. A round key that the coordinator may since
        have rebuilt (by naming this party dropped) therefore never masks a vector."""
        session["mask_keys"] = {r: k for r, k in session.get("mask_keys", {}).items()
                                if int(r) > round_id}
        session["rounds"][str(round_id)] = {"own_share": "", "digest": "", "answered": False,
                                            "participants": participants, "unmasked": False,
                                            "confirmed": None}

    def _participants(self, req: RoundRequest | pb.MaskKeysRequest,
                      spec: JobSpec, me: int) -> list[int]:
        participants = sorted(set(req.participants))
        strangers = [p for p in participants if not 1 <= p <= spec.parties]
        if strangers:
            raise ProtocolError(f"round {req.round}: participants {strangers} are not among the "
                                f"job's parties 1..{spec.parties}")
        if me not in participants or len(participants) < spec.threshold:
            raise ProtocolError(f"round {req.round}: {len(participants)} participants (t="
                                f"{spec.threshold}), this party included: {me in participants}")
        return participants

    def _pin_keys(self, req: RoundRequest | pb.MaskKeysRequest,
                  session: dict[str, Any],
                  participants: list[int], spec: JobSpec, me: int) -> None:
        """Pin every party's X25519 key at once, at the first round, each verified against its
        identity key; afterwards participants must be pinned parties with unchanged keys."""
        job_id = str(session["job_id"])
        pinned: dict[str, str] = session["publics"]
        if not pinned:
            keys = {int(p): bytes(k) for p, k in req.public_keys.items()}
            for p, key in sorted(keys.items()):
                if not 1 <= p <= spec.parties or not verify_key(
                        spec.identity_of(p), req.key_signatures.get(p, b""), job_id=job_id,
                        party=p, public_key=key):
                    raise ProtocolError(f"round {req.round}: the key of party {p} does not carry "
                                        "its identity signature for this job; refusing "
                                        "(possible key substitution)")
            if keys.get(me, b"").hex() != session["public"]:
                raise ProtocolError(f"round {req.round}: this party's own key was not relayed "
                                    "faithfully; refusing")
            pinned.update({str(p): k.hex() for p, k in keys.items()})
        for p in participants:
            relayed = req.public_keys.get(p)
            if str(p) not in pinned:
                raise ProtocolError(f"round {req.round}: party {p} was not in the key set pinned "
                                    "at the first round; refusing")
            if relayed is not None and relayed.hex() != pinned[str(p)]:
                raise ProtocolError(f"the public key of party {p} changed during the job; "
                                    "refusing (possible key substitution)")

    def _groupings(self, req: pb.MeasureRequest | pb.TrainRequest, spec: JobSpec
                   ) -> list[Grouping]:
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


@functools.lru_cache(maxsize=16)
def _parse_spec(encoded: str) -> JobSpec:
    """The job spec a session pinned (base64 of its protobuf); a pure function of the text,
    remembered: a party reads it on every request."""
    m = pb.JobSpec()
    m.ParseFromString(base64.b64decode(encoded))
    return JobSpec.from_proto(m)


def _check_domain_round(req: pb.MeasureRequest, session: dict[str, Any], spec: JobSpec,
                        groupings: list[Grouping], cliques: list[tuple[int, ...]]) -> None:
    """A dpsgd job measures once, before any training: every column's one-way counts, in the
    cells of dpsgd.domain_cells (a function of the schema and the plan), at exactly the
    variance its training plan (sent with the request, checked and pinned here as at a
    training round: client_node.train) prices into its noise multiplier. So a dpsgd job
    releases only what its plan was computed for: a coordinator cannot add counting rounds,
    ask for more than one-way counts, or buy a smaller variance than the plan's (found in a
    review: three cheap domain rounds took a job of ε = 3 to ε = 13.6 at every party)."""
    from fedsynth.client_node.train import pinned_plan

    if "train_plan" in session:
        raise ProtocolError("a dpsgd job measures one domain round, before any training; "
                            "refusing another")
    plan = pinned_plan(req.options_json, session, spec)
    expected = plan.domain_variance(len(spec.schema.columns))
    if not plan.domain_share or req.noise_variance != expected:
        raise ProtocolError(f"a domain round at variance {req.noise_variance}, where the "
                            f"training plan prices {expected}; refusing")
    from fedsynth.synthesis import dpsgd

    cells = dpsgd.domain_cells(spec.schema, plan)
    if cliques != [(j,) for j in range(len(groupings))] or len(groupings) != len(cells) or any(
            not np.array_equal(g.index, c.index) for g, c in zip(groupings, cells, strict=False)):
        raise ProtocolError("a dpsgd job's domain round measures every column's one-way counts "
                            "in the cells its plan names, nothing else")
    session["domain_measured"] = True


def train_handler(node: Node, env: pb.Envelope, session: dict[str, Any]) -> pb.Envelope:
    """The dpsgd method's training round (client_node.train; imports torch only when asked)."""
    from fedsynth.client_node.train import train

    return train(node, env, session)


# After setup, each request type is answered by one handler: (node, request, session) -> reply.
# A method that adds request types registers its handlers here (with their messages in the
# protocol) without touching the others; `REQUESTS` lists every type a node accepts.
Handler = Callable[[Node, pb.Envelope, dict[str, Any]], pb.Envelope]
HANDLERS: dict[str, Handler] = {
    "mask_keys_request": Node._mask_keys,
    "measure_request": Node._measure,
    "evaluate_request": Node._evaluate,
    "confirm_request": Node._confirm,
    "unmask_request": Node._unmask,
    "train_request": train_handler,
}
assert set(HANDLERS) | {"setup_request"} == set(REQUESTS)
# requests that belong to some methods only: a job of another method never gets an answer to
# them (dpsgd measures its domain round: synthesis.dpsgd; every round is charged to the cap)
METHOD_OF = {"measure_request": ("marginals", "dpsgd"), "train_request": ("dpsgd",)}
