"""The marginal method (`--method marginals`): rounds of noisy marginals over the channel, a
Private-PGM model fitted to them, rows sampled from it.

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
The selection answers of pairs not measured again join the model as measurements of their own
(most dependent first, while the junction tree stays within `reuse_mb`, 2 MB): they were paid
for already. Measured with paired seeded noise (6 seeds, ratio of medians, on top of decoding
shrinkage): CPS1988 0.85x (ε=1) and 0.90x (ε=3), ISLR/Default 0.97x / 0.95x, credit_data 1.0x /
0.93x, colon 1.0x / 1.03x, at up to twice the estimation time on CPS1988. A larger share for the
selection round (0.3) or a finer selection grid (12 values) did not help (0.98x-1.13x).
Private-PGM (mbi) fits a graphical model to all measurements; rows are sampled and decoded to
typed values. The coordinator only ever sees secure sums; every choice between rounds is
post-processing of them, and every round is charged (accountant and each party's ledger).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from fedsynth.coordinator.methods import Synthesis
from fedsynth.coordinator.options import JobOptions
from fedsynth.coordinator.rounds import Rounds
from fedsynth.crypto.accountant import StepBudget, calibrate, remaining_variance
from fedsynth.evaluation.meter import StepMeter
from fedsynth.progress import task as step_progress
from fedsynth.synthesis.encoding import (
    FLOOR_SDS,
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


class MarginalMethod:
    name = "marginals"

    def synthesize(self, rounds: Rounds, opt: JobOptions, meter: StepMeter,
                   say: Callable[[str], None]) -> Synthesis:
        spec = rounds.spec
        enc = Encoding.from_schema(spec.schema)
        d = len(enc.codecs)
        pairs = list(itertools.combinations(range(d), 2))
        s1, s2, s3 = opt.shares
        plan = [StepBudget("one-way", d, s1)]
        if d > 1:
            plan += [StepBudget("select", len(pairs), s2), StepBudget("pairs", d - 1, s3)]
        rounds.variances.update(calibrate(plan, epsilon=spec.epsilon, delta=spec.delta))

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
            if opt.reuse_mb > 0:
                measurements += _reuse(tree, scores, coarse_of, [g.size for g in model_groups],
                                       min(opt.reuse_mb, opt.max_model_mb))
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
                                   floor=FLOOR_SDS * float(np.sqrt(var1)), mrf=mrf)
            synthetic = model.sample(rows, seed=opt.seed)
            release_compiled()

        marginals = [[spec.schema.names[j] for j in c] for c in dict.fromkeys(
            m.clique for m in measurements if len(m.clique) > 1)]
        return Synthesis(synthetic, model, plan, total, {"marginals": marginals})


REFINE_DRAWS = 200_000  # rows drawn from the tree model to read its pair tables


def _refine(rounds: Rounds, opt: JobOptions, model_groups: list[Grouping],
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


def _reuse(tree: list[tuple[int, int]], scores: dict[tuple[int, int], float],
           coarse_of: dict[tuple[int, int], Measurement], sizes: list[int],
           cap_mb: float) -> list[Measurement]:
    """Selection answers of pairs not measured again, as measurements of their own.

    Every pair's coarse table was paid for in the selection round; a pair the final round
    leaves out still carries its dependence, at the selection grid's resolution. They join
    the model most dependent first (noise-debiased score above 0), while the junction tree
    stays within `cap_mb`: each one enlarges the model, and the fit's time grows with it.
    Post-processing of answers already released: no privacy cost.
    """
    cliques = list(tree)
    out = []
    for p in sorted(scores, key=lambda q: (-scores[q], q)):
        if p in cliques or scores[p] <= 0:
            continue
        if model_size_mb(sizes, [*cliques, p]) > cap_mb:
            continue
        cliques.append(p)
        out.append(coarse_of[p])
    return out


def _pair_budget(rounds: Rounds, scores: dict[tuple[int, int], float], sizes: list[int],
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


