"""The federated marginal job: setup, domain, selection, measurement, estimation, sampling.

Budget (zCDP-style split, composed exactly in RDP by crypto.accountant):
  one-way  (10%): every column's fine 1-way counts. Public-bounds bins are then merged into
                  about equal-mass groups using these noisy counts (DP domain step).
  select   (20%): every pair of columns on a small grouped domain (<= 8 values per column);
                  pairs are scored by noisy dependence and a maximum spanning tree is chosen
                  (post-processing of aggregated noisy answers only).
  pairs    (70%): the tree's pairs and up to `extra_pairs * (columns - 1)` more whose noisy
                  dependence beats the noise their measurement would carry, on the model's
                  grouped domain. With `refine` (off by default, measured neutral) the tree
                  leaves room for them, and an adaptive round measures the pairs a model fitted
                  to the tree explains worst, with the tree again, on exactly the budget left.
Private-PGM (mbi) fits a graphical model to all measurements; rows are sampled and decoded to
typed values. The coordinator only ever sees secure sums; every choice between rounds is
post-processing of them, and every round is charged (accountant and each party's ledger).
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fedsynth.coordinator.evaluation import federated_evaluation
from fedsynth.coordinator.exchange import (
    Exchange,
    JobRefused,
    PartyKeys,
    secure_sum,
    setup_request,
)
from fedsynth.crypto.accountant import (
    Accountant,
    StepBudget,
    calibrate,
    remaining_variance,
    zcdp_rho_for,
)
from fedsynth.evaluation.meter import StepMeter
from fedsynth.evaluation.plan import EvalOptions, EvalOptionsError
from fedsynth.progress import task as step_progress
from fedsynth.protocols import channels
from fedsynth.protocols.messages import KEY_HOLDER
from fedsynth.protocols.secure_sum import RoundFailed
from fedsynth.protocols.spec import JobSpec
from fedsynth.protocols.transport import Transport
from fedsynth.synthesis import marginals
from fedsynth.synthesis.encoding import (
    Encoding,
    Grouping,
    quantile_grouping,
    top_grouping,
)
from fedsynth.synthesis.estimation import (
    Measurement,
    fit,
    model_size_mb,
    noisy_total,
    release_compiled,
    sample_codes,
)
from fedsynth.synthesis.model import SynthesisModel
from fedsynth.synthesis.selection import add_pairs, dependence_score, max_spanning_tree

log = logging.getLogger("fedsynth.coordinator")


@dataclass(frozen=True)
class JobOptions:
    rows: int | None = None  # synthetic rows; default: the noisy estimate of the real total
    seed: int = 0
    max_groups: int = 32  # values per numeric column in the model
    select_groups: int = 8  # values per column in the selection round
    shares: tuple[float, float, float] = (0.1, 0.2, 0.7)  # one-way, select, pairs
    iters: int = 1000  # estimation iterations
    extra_pairs: float = 1.0  # pairs beyond the spanning tree, as a multiple of (columns - 1)
    max_model_mb: float = 64.0  # cap on the graphical model's size when adding pairs
    refine: bool = False  # adaptive round (measured neutral, twice the time: see _refine)
    timeout: float = 600.0  # seconds to wait for the parties' replies in each step
    evaluate: EvalOptions | None = None  # federated evaluation after sampling (None: skip it)


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
    model: SynthesisModel | None = None  # the fitted model, to draw more rows at no privacy cost


@dataclass
class _Rounds:
    """Runs measurement rounds, keeps the accountant and who still takes part."""

    ex: Exchange
    spec: JobSpec
    keys: PartyKeys
    participants: list[int]
    variances: dict[str, float]
    acc: Accountant = field(default_factory=Accountant)
    log_rows: list[dict[str, Any]] = field(default_factory=list)
    round_id: int = 0
    seeded_noise: set[int] = field(default_factory=set)  # parties that said their noise was seeded

    def measure(self, label: str, groupings: Sequence[Grouping],
                cliques: Sequence[tuple[int, ...]]) -> tuple[list[np.ndarray], float]:
        self.round_id += 1
        sizes = [g.size for g in groupings]
        length = marginals.vector_length(cliques, sizes)
        var = self.variances[label]
        with step_progress(f"round {self.round_id} ({label}): waiting for "
                           f"{len(self.participants)} parties"):
            res = secure_sum(self.ex, round_id=self.round_id, label=label,
                             channel=self.spec.channel, threshold=self.spec.threshold,
                             participants=self.participants, keys=self.keys,
                             groupings=groupings, cliques=cliques, length=length,
                             noise_variance=var)
        # charged as soon as the parties release, whatever happens next
        self.acc.add(step=label, count=len(cliques), variance=var)
        self.seeded_noise.update(res.seeded_noise)
        realized = var * len(res.contributors) / self.spec.noise_divisor
        self.log_rows.append({"round": self.round_id, "step": label, "marginals": len(cliques),
                              "cells": length, "noise_variance": var,
                              "noise_variance_per_party": var / self.spec.noise_divisor,
                              "noise_variance_realized": realized,
                              "parties_asked": list(self.participants),
                              "contributors": res.contributors})
        self.participants = res.responsive
        log.info("round %d (%s): %d marginals, %d cells, %d contributors", self.round_id, label,
                 len(cliques), length, len(res.contributors))
        return marginals.split(res.total, cliques, sizes), realized


def run_job(transport: Transport, spec: JobSpec, options: JobOptions | None = None,
            progress: Callable[[str], None] | None = None) -> JobResult:
    """Run one federated marginal job over `transport`; raises on refusal or below-t dropout."""
    opt = options or JobOptions()
    say = progress or (lambda m: log.info("%s", m))
    t0 = time.perf_counter()
    meter = StepMeter()
    job_id = uuid.uuid4().hex
    ex = Exchange(transport, job_id, timeout=opt.timeout,
                  identities={p: spec.identity_of(p) for p in range(1, spec.parties + 1)})
    enc = Encoding.from_schema(spec.schema)
    d = len(enc.codecs)

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
    meter.end()

    pairs = list(itertools.combinations(range(d), 2))
    s1, s2, s3 = opt.shares
    plan = [StepBudget("one-way", d, s1)]
    if d > 1:
        plan += [StepBudget("select", len(pairs), s2), StepBudget("pairs", d - 1, s3)]
    variances = calibrate(plan, epsilon=spec.epsilon, delta=spec.delta)
    rounds = _Rounds(ex, spec, keys, sorted(keys.publics), variances)

    meter.begin("measure")
    say("measuring one-way marginals (domain step)")
    fine_groupings = [Grouping.identity(n) for n in enc.sizes]
    one, var1 = rounds.measure("one-way", fine_groupings, [(j,) for j in range(d)])
    # Noisy fine counts shape the domain and the decoding (negative noise clipped there); the
    # model is fitted to their raw, unbiased group sums. (Zeroing cells below two noise sds
    # was tried and hurt: on ISLR/Default at ε=1 the 2-way TVD rose from 0.044 to 0.120.)
    fine_counts = [o.astype(float) for o in one]
    model_groups = [quantile_grouping(c, fine_counts[j], opt.max_groups)
                    for j, c in enumerate(enc.codecs)]
    measurements: list[Measurement] = []
    for j, g in enumerate(model_groups):
        summed = np.bincount(g.index, weights=one[j].astype(float), minlength=g.size)
        w = 1.0 / np.sqrt(np.bincount(g.index, minlength=g.size))
        measurements.append(Measurement((j,), summed * w, float(np.sqrt(var1)), weights=w))
    if d > 1:
        say(f"measuring {len(pairs)} candidate pairs for selection")
        sel_of_group = []
        for j, g in enumerate(model_groups):
            coarse = np.bincount(g.index, weights=fine_counts[j], minlength=g.size)
            ordered = enc.codecs[j].column.kind != "categorical"
            sel_of_group.append(top_grouping(coarse, opt.select_groups, ordered=ordered).index)
        sel = [Grouping(sg[g.index]) for sg, g in zip(sel_of_group, model_groups, strict=True)]
        tables, var2 = rounds.measure("select", sel, pairs)
        scores = {p: dependence_score(tab, var2) for p, tab in zip(pairs, tables, strict=True)}
        tree = max_spanning_tree(d, scores)
        limit = int(opt.extra_pairs * (d - 1)) if opt.refine else 0
        if not opt.refine:
            tree = add_pairs(tree, scores, limit=int(opt.extra_pairs * (d - 1)),
                             fits=_pair_budget(rounds, scores, [g.size for g in model_groups],
                                               opt))
        by_pair = dict(zip(pairs, tables, strict=True))
        coarse_of = {p: Measurement(p, by_pair[p], float(np.sqrt(var2)),
                                    groups=(sel_of_group[p[0]], sel_of_group[p[1]]))
                     for p in pairs}
        names = spec.schema.names
        shown = ", ".join(f"{names[a]}~{names[b]}" for a, b in tree[:4])
        say(f"measuring {len(tree)} selected pairs ({shown}"
            f"{', ...; all in privacy.json' if len(tree) > 4 else ''})")
        refine = bool(limit) and len(pairs) > len(tree)
        # the tree now, at the variance that leaves room for `limit` more pairs in the
        # refinement round after it (which takes exactly what is left)
        rounds.variances["pairs"] = remaining_variance(
            rounds.acc, count=len(tree) + (limit if refine else 0), epsilon=spec.epsilon,
            delta=spec.delta)
        pair_tabs, var3 = rounds.measure("pairs", model_groups, tree)
        measurements += [Measurement(p, tab, float(np.sqrt(var3)))
                         for p, tab in zip(tree, pair_tabs, strict=True)]
        # The selection round's answers for the chosen pairs are kept too (coarser grouping).
        # Unchosen pairs are left out: every measured clique becomes part of the model.
        measurements += [coarse_of[p] for p in tree]
        if refine:
            measurements += _refine(rounds, opt, model_groups, sel, sel_of_group, pairs, tree,
                                    by_pair, var2, measurements, coarse_of, say)
    total = noisy_total(measurements)  # every measurement's noisy count of all rows, weighted
    meter.end(rows=max(0, round(total)))  # the noisy count of the parties' rows

    rows = opt.rows if opt.rows is not None else max(1, round(total))
    with meter.step("estimate_and_sample", rows=rows):
        say(f"estimating the model (Private-PGM) and sampling {rows} rows")
        mrf = fit([g.size for g in model_groups], measurements, iters=opt.iters, total=total)
        model = SynthesisModel(spec.schema, model_groups, fine_counts,
                               floor=2.0 * float(np.sqrt(var1)), mrf=mrf)
        synthetic = model.sample(rows, seed=opt.seed)
        release_compiled()

    eps = rounds.acc.epsilon(spec.delta)
    if eps > spec.epsilon * (1 + 1e-9):  # calibrate() guarantees this; never report above ask
        raise RuntimeError(f"internal error: spent ε={eps} above the requested {spec.epsilon}")
    privacy = _privacy_report(spec, rounds, eps, plan, total)
    privacy["marginals"] = [[spec.schema.names[j] for j in c] for c in dict.fromkeys(
        m.clique for m in measurements if len(m.clique) > 1)]
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
                     evaluation, error, ex.bytes_sent.get(KEY_HOLDER, 0), model)


REFINE_DRAWS = 200_000  # rows drawn from the tree model to read its pair tables


def _refine(rounds: _Rounds, opt: JobOptions, model_groups: list[Grouping],
            sel: list[Grouping], sel_of_group: list[np.ndarray], pairs: list[tuple[int, int]],
            tree: list[tuple[int, int]], by_pair: dict[tuple[int, int], np.ndarray],
            var2: float, measurements: list[Measurement],
            coarse_of: dict[tuple[int, int], Measurement],
            say: Callable[[str], None]) -> list[Measurement]:
    """The adaptive round: pairs the fitted tree model gets most wrong, measured again.

    A model is fitted to what is measured so far; for each pair not yet measured its error is
    the L1 distance between the selection round's noisy table and the model's projection on
    the same grid, less the L1 the selection noise alone gives (AIM's score, on aggregated
    noisy answers: a score of true counts is not a sum over parties). Pairs whose error
    exceeds the L1 noise their own measurement on the model's grid would carry are chosen,
    worst first, at most `extra_pairs * (columns - 1)`, while the model fits `max_model_mb`;
    they and the tree's pairs are measured with exactly the budget left (their selection
    answers join the model too). With none chosen, the tree gets what the earlier one-shot
    selection gave it: two measurements of one table are one at their combined precision.
    Choosing is post-processing of DP answers; the round is charged like any other.

    Off by default (`JobOptions.refine`): measured against the one-shot selection with the
    same seeded noise (central, 6 seeds, ratio of 2-way TVD medians), it is neutral: CPS1988
    ε=1 1.007x, ε=3 1.028x, colon ε=1 1.004x, at about twice the time (the extra fit).
    Measuring the chosen pairs on the selection grid instead, without the tree again, gained
    on CPS1988 at ε=1 (0.945x) but lost at ε=3 (1.22x) and on colon (1.055x). Scores from
    selection answers are too noisy to find much the tree misses; AIM-class fidelity needs
    fresh, cheaper scores each round (see the issue notes).
    """
    spec = rounds.spec
    sizes = [g.size for g in model_groups]
    with step_progress("fitting the tree model to choose more pairs"):
        mrf = fit(sizes, measurements, iters=max(100, opt.iters // 4))
        # the model's pair tables from a large sample of it: one pass, no program per pair
        draws = sample_codes(mrf, REFINE_DRAWS, seed=opt.seed)
    total = float(mrf.total)
    sel_sizes = [int(g.max()) + 1 for g in sel_of_group]
    coarse = np.stack([sel_of_group[j][draws[:, j]] for j in range(len(sizes))], axis=1)
    noise_sel = float(np.sqrt(2 * var2 / np.pi))
    errors: dict[tuple[int, int], float] = {}
    for a, b in pairs:
        if (a, b) in tree:
            continue
        flat = coarse[:, a] * sel_sizes[b] + coarse[:, b]
        grid = np.bincount(flat, minlength=sel_sizes[a] * sel_sizes[b]).reshape(
            sel_sizes[a], sel_sizes[b]) * (total / len(draws))
        errors[(a, b)] = float(np.abs(by_pair[(a, b)] - grid).sum()) - grid.size * noise_sel
    limit = int(opt.extra_pairs * (len(sizes) - 1))
    chosen: list[tuple[int, int]] = []
    var_for: dict[int, float] = {}
    for p in sorted(errors, key=lambda q: (-errors[q], q)):
        if len(chosen) >= limit or errors[p] <= 0:
            break
        n = len(tree) + len(chosen) + 1
        if n not in var_for:
            var_for[n] = remaining_variance(rounds.acc, count=n, epsilon=spec.epsilon,
                                            delta=spec.delta)
        if errors[p] <= sizes[p[0]] * sizes[p[1]] * float(np.sqrt(2 * var_for[n] / np.pi)):
            continue
        if model_size_mb(sizes, [*tree, *chosen, p]) > opt.max_model_mb:
            continue
        chosen.append(p)
    release_compiled()
    again = sorted([*tree, *chosen])
    names = spec.schema.names
    shown = ", ".join(f"{names[a]}~{names[b]}" for a, b in chosen[:4])
    say(f"measuring {len(chosen)} more pairs{f' ({shown}' if chosen else ''}"
        f"{', ...' if len(chosen) > 4 else ''}{')' if chosen else ''} and the tree's again")
    rounds.variances["refine"] = remaining_variance(rounds.acc, count=len(again),
                                                    epsilon=spec.epsilon, delta=spec.delta)
    tabs, var4 = rounds.measure("refine", model_groups, again)
    out = [Measurement(p, tab, float(np.sqrt(var4))) for p, tab in zip(again, tabs, strict=True)]
    return out + [coarse_of[p] for p in chosen]


def _pair_budget(rounds: _Rounds, scores: dict[tuple[int, int], float], sizes: list[int],
                 opt: JobOptions) -> Callable[[list[tuple[int, int]]], bool]:
    """Whether adding the last pair of a candidate list is worth it, and the model still fits.

    A pair beyond the tree is worth measuring when its noisy dependence (L1, selection grid)
    exceeds the L1 noise its final measurement would carry at the model's resolution, with the
    final budget then shared by one more pair. This keeps few-column tables (where every extra
    pair thins the budget of the important ones) from measuring pairs that cost more than they
    add; measured on ISLR/Default at ε=1: 2-way TVD 0.055 with unconditional extra pairs.
    """
    spec = rounds.spec
    var_for: dict[int, float] = {}

    def fits(cl: list[tuple[int, int]]) -> bool:
        a, b = cl[-1]
        if len(cl) not in var_for:
            var_for[len(cl)] = remaining_variance(rounds.acc, count=len(cl),
                                                  epsilon=spec.epsilon, delta=spec.delta)
        noise_l1 = sizes[a] * sizes[b] * float(np.sqrt(2 * var_for[len(cl)] / np.pi))
        return scores[cl[-1]] > noise_l1 and model_size_mb(sizes, cl) <= opt.max_model_mb

    return fits


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


def _replace_one_epsilon(rounds: _Rounds, delta: float) -> float:
    """ε if neighbours differ by replacing one row: each marginal moves one count from one cell
    to another, so L1 = 2 and L2 = √2 for the same noise."""
    acc = Accountant()
    for r in rounds.acc.releases:
        acc.add(step=r.step, count=r.count, variance=r.variance, l1=2.0, l2=float(np.sqrt(2)))
    return acc.epsilon(delta)


def _privacy_report(spec: JobSpec, rounds: _Rounds, eps: float, plan: list[StepBudget],
                    total: float) -> dict[str, Any]:
    per_party: dict[int, Accountant] = {}
    for row in rounds.log_rows:
        for p in row["parties_asked"]:
            per_party.setdefault(p, Accountant()).add(step=row["step"], count=row["marginals"],
                                                      variance=row["noise_variance"])
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
