"""A federated job: set-up, the method's rounds, the federated evaluation, the privacy report.

The method (coordinator.methods; `marginals` today, in coordinator.marginal_method) decides
what is measured and how the synthetic table is made. Around it every method shares: the
parties' set-up (keys, the key holder's context), measurement rounds charged to one accountant
(coordinator.rounds), the evaluation against the parties' held-out rows, and a privacy report
that composes every release of the job. The coordinator only ever sees secure sums; every
choice between rounds is post-processing of them.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fedsynth.coordinator import methods
from fedsynth.coordinator.evaluation import federated_evaluation
from fedsynth.coordinator.exchange import (
    Exchange,
    JobRefused,
    PartyKeys,
    set_graph,
    setup_request,
)
from fedsynth.coordinator.options import JobOptions
from fedsynth.coordinator.rounds import Rounds
from fedsynth.crypto.accountant import Accountant, StepBudget, zcdp_rho_for
from fedsynth.evaluation.meter import StepMeter
from fedsynth.evaluation.plan import EvalOptionsError
from fedsynth.progress import task as step_progress
from fedsynth.protocols import channels
from fedsynth.protocols.messages import KEY_HOLDER
from fedsynth.protocols.secure_sum import RoundFailed
from fedsynth.protocols.spec import JobSpec
from fedsynth.protocols.transport import Transport
from fedsynth.synthesis.model import SavedModel

__all__ = ["JobOptions", "JobResult", "run_job"]

log = logging.getLogger("fedsynth.coordinator")


@dataclass
class JobResult:
    synthetic: pd.DataFrame
    privacy: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    bytes_from_party: dict[int, int] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)  # time, memory, rows per step
    evaluation: dict[str, Any] | None = None  # the federated evaluation's measures
    evaluation_error: str | None = None  # why the evaluation did not finish (table unaffected)
    bytes_from_key_holder: int = 0  # he channel: what the key holder sent the coordinator
    model: SavedModel | None = None  # the fitted model, to draw more rows at no privacy cost


def run_job(transport: Transport, spec: JobSpec, options: JobOptions | None = None,
            progress: Callable[[str], None] | None = None) -> JobResult:
    """Run one federated job over `transport` with the spec's method; raises on refusal or
    below-t dropout (and `methods.MethodUnavailable` if the method needs a missing extra)."""
    opt = options or JobOptions()
    say = progress or (lambda m: log.info("%s", m))
    t0 = time.perf_counter()
    meter = StepMeter()
    job_id = uuid.uuid4().hex
    ex = Exchange(transport, job_id, timeout=opt.timeout,
                  identities={p: spec.identity_of(p) for p in range(1, spec.parties + 1)})
    method = methods.get(spec.method)

    parties = transport.parties()
    if not set(parties) <= set(range(1, spec.parties + 1)):
        raise RoundFailed(f"the transport offers parties {parties}, the job names "
                          f"1..{spec.parties}")
    if len(parties) < spec.threshold:
        raise RoundFailed(f"{len(parties)} parties reachable, fewer than the threshold "
                          f"t={spec.threshold}; start more parties or lower --threshold")
    meter.begin("setup")
    say(f"setup: {len(parties)} parties, channel {spec.channel}, t={spec.threshold}, "
        f"c={spec.colluders}")
    setup = setup_request(ex, spec)  # the key holder's public context first, if any
    replies = ex.call({p: ("setup_request", setup) for p in parties}, "setup_reply")
    keys = PartyKeys({p: e.setup_reply.public_key for p, e in replies.items()},
                     {p: e.setup_reply.key_signature for p, e in replies.items()})
    if len(keys.publics) < spec.threshold:
        raise RoundFailed(f"only {len(keys.publics)} parties completed setup, below t="
                          f"{spec.threshold}")
    set_graph(ex, spec, keys)  # secagg's sparse graph, if the spec asks for one
    meter.end()

    rounds = Rounds(ex, spec, keys, sorted(keys.publics), {})
    out = method.synthesize(rounds, opt, meter, say)
    synthetic = out.synthetic
    eps = rounds.acc.epsilon(spec.delta)
    if eps > spec.epsilon * (1 + 1e-9):  # calibrate() guarantees this; never report above ask
        raise RuntimeError(f"internal error: spent ε={eps} above the requested {spec.epsilon}")
    privacy = _privacy_report(spec, rounds, eps, out.plan, out.total)
    extra = dict(out.report)
    privacy["outside_the_guarantee"] = [*privacy["outside_the_guarantee"],
                                        *extra.pop("outside_the_guarantee", [])]
    privacy.update(extra)
    evaluation, error = None, None
    if opt.evaluate is not None:
        with meter.step("evaluate", rows=len(synthetic)):
            say("evaluating: each party scores the synthetic table against its own held-out rows")
            try:
                with step_progress("evaluating"):
                    evaluation = federated_evaluation(
                        ex, round_id=rounds.round_id + 1, spec=spec,
                        participants=rounds.participants, keys=keys, synthetic=synthetic,
                        options=opt.evaluate)
            except (JobRefused, RoundFailed, EvalOptionsError) as exc:
                error = str(exc)  # the synthetic table and its privacy report stand
                log.warning("the evaluation did not finish: %s", exc)
    timings = {**meter.timings(), "total": time.perf_counter() - t0}
    return JobResult(synthetic, privacy, timings,
                     {p: b for p, b in ex.bytes_sent.items() if p != KEY_HOLDER}, meter.steps,
                     evaluation, error, ex.bytes_sent.get(KEY_HOLDER, 0), out.model)


OUTSIDE_THE_GUARANTEE = [
    "timing and message sizes (they depend on the schema and the number of parties, not on "
    "the rows, but are not analysed)",
    "the public schema: its categories and bounds are public knowledge by assumption; a "
    "schema drafted from the data (a simulation convenience) holds exact facts of the data",
    "exact evaluation sums, when a party's policy allows them (DP evaluation is charged to a "
    "separate budget and reported with the evaluation)",
    "floating-point rounding in the Poisson sampler (relative error about 2^-53 per "
    "probability)",
    "in a simulation, metrics.json's tvd_2way_vs_train: an exact function of the pooled "
    "training rows, which only a simulation holds",
]


def _replace_one_epsilon(rounds: Rounds, delta: float) -> float:
    """ε if neighbours differ by replacing one row: each marginal moves one count from one cell
    to another, so L1 = 2 and L2 = √2 for the same noise (counting releases; other mechanisms,
    such as a distributed DP-SGD step's integer gradient sum, at twice their add/remove
    sensitivity, by the triangle inequality)."""
    acc = Accountant()
    for r in rounds.acc.releases:
        if r.mechanism == "skellam" and r.l1 == r.l2 == 1.0:  # marginals (counts)
            acc.add(step=r.step, count=r.count, variance=r.variance, l1=2.0 * r.l1,
                    l2=float(np.sqrt(2)) * r.l2)
        else:
            acc.add(step=r.step, count=r.count, variance=r.variance, l1=2.0 * r.l1,
                    l2=2.0 * r.l2, mechanism=r.mechanism, sampling_rate=r.sampling_rate)
    return acc.epsilon(delta)


def _privacy_report(spec: JobSpec, rounds: Rounds, eps: float, plan: list[StepBudget],
                    total: float | None) -> dict[str, Any]:
    per_party: dict[int, Accountant] = {}
    for row in rounds.log_rows:
        for p in row["parties_asked"]:
            if "mechanism" in row:  # a training round
                per_party.setdefault(p, Accountant()).add(
                    step=row["step"], count=row["steps"], variance=row["noise_variance"],
                    l1=row["l1"], l2=row["l2"], mechanism=row["mechanism"],
                    sampling_rate=row["sampling_rate"])
            else:
                per_party.setdefault(p, Accountant()).add(
                    step=row["step"], count=row["marginals"], variance=row["noise_variance"])
    seeded = sorted(rounds.seeded_noise)
    return {
        "differentially_private": not seeded,
        **({"warning": f"not differentially private: noise was seeded (parties {seeded}); a "
                       "seeded run is a test, its noise can be regenerated and subtracted"}
           if seeded else {}),
        "epsilon_requested": spec.epsilon,
        "delta": spec.delta,
        "epsilon_spent": eps,
        "rho_budget_zcdp": zcdp_rho_for(spec.epsilon, spec.delta),
        "rho_spent_gaussian_part": rounds.acc.rho(),
        "accounting": "Rényi DP of summed symmetric Skellam noise (Agarwal et al. 2021), "
                      "composed over all releases and converted to (ε, δ) with dp-accounting; "
                      "unit: one row of one party (add/remove)",
        "neighbouring_relation": "add or remove one row of one party",
        "epsilon_replace_one": _replace_one_epsilon(rounds, spec.delta),
        "outside_the_guarantee": OUTSIDE_THE_GUARANTEE,
        "mechanism": ("each party adds Skellam noise of variance noise_variance (plain: the "
                      "coordinator sees each party's own vector, so each carries it all)"
                      if not channels.get(spec.channel).protected else
                      "each party adds Skellam noise of variance noise_variance / (t - c); any "
                      "t - c honest survivors together reach noise_variance"
                      + ("; each party's noised vector goes encrypted (BFV) and a key holder "
                         "that is not the coordinator decrypts only each round's sum over at "
                         "least t parties, once: coordinator and key holder must not collude"
                         if channels.get(spec.channel).key_holder else "")),
        "threshold_t": spec.threshold,
        "colluders_c": spec.colluders,
        "honest_min": spec.honest_min,
        "channel": spec.channel,
        "parties": spec.parties,
        "budget_split": [{"step": s.step, "share_planned": s.share,
                          "marginals_planned": s.count,
                          "marginals": sum(r["marginals"] for r in rounds.log_rows
                                           if r["step"] == s.step),
                          "note": "with the refine step, takes exactly the budget left after "
                          "selection" if s.step == "pairs" else ""} for s in plan]
        + [{"step": "refine", "share_planned": 0.0, "marginals_planned": 0,
            "marginals": sum(r["marginals"] for r in rounds.log_rows if r["step"] == "refine"),
            "note": "pairs the fitted tree model gets most wrong (or the tree's again), from the "
                    "pairs step's share"} for _ in range(1)
           if any(r["step"] == "refine" for r in rounds.log_rows)],
        "rounds": rounds.log_rows,
        "epsilon_asked_of_party": {str(p): a.epsilon(spec.delta)
                                   for p, a in sorted(per_party.items())},
        "noisy_total_rows": total,
    }
