"""The party's side of the dpsgd method: one round of local DP-SGD, released as a masked update.

Checks before any training: the job's method is dpsgd; the training plan parses, names the job's
own ε and δ, and is the one this party pinned at its first training round (a coordinator cannot
stretch the plan mid-job: more rounds, a higher rate or a smaller noise multiplier would spend more
than the job's ε); the round is not past the plan's `rounds`; the generator's domain (groups of the
schema's fine codes, sent by the coordinator when the plan has a domain round) maps every code and
is the one pinned at the first training round; the global parameters have the plan's shape, are
finite and within ±PARAMETER_BOUND (so no layer overflows), and the model is within the party's
size limit; the domain round this party answered (client_node.node: at most one, one-way counts
only, before training) is exactly the one the plan prices, or none when the plan has none. Then the
round's steps are charged to the ledger (a subsampled Gaussian event, refused past the party's cap)
BEFORE the data is read, DP-SGD runs on the party's rows (synthesis.dpsgd: rows whose gradient is
not finite count as zero, memory is bounded by micro-batches), and the update goes out in fixed
point (crypto.fixed_point), masked for the channel. Whatever fails after the charge, the party
answers with a zero update: no failure depends on the data and costs nothing (a coordinator must
not be able to ask a question of the rows through an error). With the plan's distributed noise a
round is one full-batch gradient step instead (`_distributed_step` argues its privacy): the
rounded clipped gradient sum plus this party's Skellam share, and on failure the share alone.
Refusals before the charge depend only on the request and the party's policy.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsynth.crypto import fixed_point
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.protocols.messages import ProtocolError

if TYPE_CHECKING:
    from fedsynth.client_node.node import Node

log = logging.getLogger("fedsynth.node")


def pinned_plan(options_json: str, session: dict[str, Any], spec: Any) -> Any:
    """The request's training plan (synthesis.dpsgd.TrainPlan) if it parses, names the job's
    ε and δ, and is the plan this party pinned at its first dpsgd round (pinned now if none)."""
    try:
        from fedsynth.synthesis import dpsgd
    except ImportError:
        raise ProtocolError("this party cannot train: its installation lacks the dpsgd extra "
                            '(pip install -e ".[dpsgd]")') from None
    try:
        plan = dpsgd.TrainPlan.from_json(options_json)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None
    if (plan.epsilon, plan.delta) != (spec.epsilon, spec.delta):
        raise ProtocolError(f"the training plan's ε={plan.epsilon}, δ={plan.delta} is not the "
                            f"job's ε={spec.epsilon}, δ={spec.delta}")
    if session.setdefault("train_plan", plan.to_json()) != plan.to_json():
        raise ProtocolError("the training plan changed during the job; refusing")
    return plan


def train(node: Node, env: pb.Envelope, session: dict[str, Any]) -> pb.Envelope:
    req = env.train_request
    spec = node._spec(session)
    me = int(session["party"])
    if spec.method != "dpsgd":
        raise ProtocolError(f"a training request in a job whose method is {spec.method!r}")
    plan = pinned_plan(req.options_json, session, spec)  # refuses without the dpsgd extra
    from fedsynth.synthesis import dpsgd

    if bool(plan.domain_share) != bool(session.get("domain_measured")):
        raise ProtocolError("the training plan's domain round and the rounds this party "
                            "answered differ; refusing (the noise multiplier would not match "
                            "what was released)")
    done = int(session.get("train_rounds", 0))
    if done >= plan.rounds:
        raise ProtocolError(f"this party already trained the plan's {plan.rounds} rounds")
    if plan.domain_share > 0:  # the domain the DP one-way round shaped (coordinator's choice)
        groupings = node._groupings(req, spec)  # any grouping: DP-SGD's ε does not depend on it
    elif req.groupings:
        raise ProtocolError("groupings sent with a plan whose domain comes from the schema")
    else:
        groupings = dpsgd.domain(spec.schema)
    domain = [g.index.tolist() for g in groupings]
    if session.setdefault("train_domain", domain) != domain:
        raise ProtocolError("the generator's domain changed during the job; refusing")
    sizes = [g.size for g in groupings]
    length = dpsgd.parameter_count(plan, sizes)
    if length > dpsgd.MAX_PARAMETERS:
        raise ProtocolError(f"a generator of {length} parameters is over this party's limit of "
                            f"{dpsgd.MAX_PARAMETERS}")
    try:
        start = dpsgd.vector_from_bytes(req.parameters, length)
    except ValueError as exc:
        raise ProtocolError(f"round {req.round}: {exc}") from None
    opened = node._open_round(req, session, spec, me, "trained")
    session["train_rounds"] = done + 1  # opened: this round is spent, whatever happens next
    # Charged before the data is read: the cap's refusal cannot depend on the rows, and every
    # later failure costs budget, so no failure is a free question about the data.
    release = plan.round_release(len(sizes), length)
    spent = node._ledger().charge_many([release], job_id=env.job_id, round_id=req.round,
                                       budget="synthesis")
    seed = node.policy.noise_seed  # tests only, like all seeded noise (the reply says so)
    if seed is not None:
        seed = (seed * 1_000_003 + me) * 1_000_003 + req.round
    if plan.distributed:
        vector = _distributed_step(node, plan, sizes, groupings, start, release, spec, me,
                                   req.round, seed)
    else:
        try:
            update = dpsgd.train_local(plan, sizes, start, _codes(node, spec, groupings),
                                       seed=seed)
        except Exception:  # the same answer whatever went wrong: an update of zeros
            log.exception("party %d round %d: training failed; sending a zero update (the "
                          "round is charged)", me, req.round)
            update = np.zeros(length)
        vector = fixed_point.encode(update, node._rng(me, req.round))
    out = node._masked_reply(env, session, spec, req.round, vector, opened)
    out.measure_reply.ledger_epsilon = spent
    log.info("party %d round %d: trained (%s noise, %d steps, release variance %.4g)", me,
             req.round, plan.noise, plan.steps_per_round, release["variance"])
    return out


def _codes(node: Node, spec: Any, groupings: list[Any]) -> np.ndarray:
    """The party's rows as codes of the generator's domain."""
    from fedsynth.client_node.node import encoded_table

    fine = encoded_table(node.policy, spec.schema)
    codes = fine.copy()
    for j, g in enumerate(groupings):
        codes[:, j] = g.index[fine[:, j]]
    return codes


def _distributed_step(node: Node, plan: Any, sizes: list[int], groupings: list[Any],
                      start: np.ndarray, release: dict[str, Any], spec: Any, me: int,
                      round_id: int, seed: int | None) -> np.ndarray:
    """One distributed DP-SGD step: round(scale * clipped gradient sum over all rows), plus
    this party's Skellam share of the release's variance.

    Why the sum is DP (one row of this party added or removed): the integer vector moves by at
    most the plan's (Δ1, Δ2) (dpsgd.step_grid: clipping, scaling, deterministic
    rounding), and each of the t - c honest survivors adds independent Skellam noise of
    variance release["variance"] / (t - c) drawn from the OS-keyed generator (crypto.noise),
    so the sum the coordinator decrypts or unmasks carries Skellam noise of at least that
    variance: the Skellam mechanism the ledger was just charged for. The coordinator's choice
    of parameters does not matter (clipping bounds every row whatever they are, every row
    being computed in a batch of one shape so that its clipped gradient does not depend on
    the other rows: dpsgd.padded; RDP composes adaptively). Whatever fails, the party sends its
    noise share alone (a zero sum), so neither an error nor a missing share can depend on the
    rows."""
    from fedsynth.crypto import noise
    from fedsynth.synthesis import dpsgd

    length = len(start)
    try:
        total = dpsgd.clipped_gradient_sum(plan, sizes, start, _codes(node, spec, groupings),
                                           seed=seed)
        grid = fixed_point.to_grid(total, plan.grid(len(sizes), length)[0])
    except Exception:
        log.exception("party %d round %d: the gradient failed; sending the noise share alone "
                      "(the round is charged)", me, round_id)
        grid = np.zeros(length, dtype=np.int64)
    share = noise.share_variance(release["variance"], honest_min=spec.noise_divisor)
    return grid + noise.skellam(share, length, node._rng(me, round_id))
