"""DP evaluation: the statistics vector released with Skellam noise, block by block.

What is secret from whom. Each party holds held-out rows that the synthesis never saw; the
synthetic table, the schema and the evaluation options are public to the consortium. A party's
vector (evaluation.statistics) is masked by secure aggregation, so the coordinator sees only
the sum over at least t parties; with DP evaluation that sum also carries Skellam noise that
the t - c honest survivors alone bring to the variance given here, so the coordinator (and
any c colluding parties) learn the report's numbers with an (epsilon, delta)-DP guarantee for
every held-out row. Unit of privacy: one held-out row of one party, added or removed.

Which noise. Symmetric Skellam on every element of the vector (integers, so secure aggregation
over Z_2^64 stays exact), each party adding a share of `element_variances(plan) / (t - c)`.
A release of a block with sensitivities (L1, L2) and Skellam variance v is charged with
crypto.accountant.skellam_rdp(v, l1=L1, l2=L2) (Agarwal, Kairouz, Liu 2021); the blocks are
released together once, so their RDP curves add (composition), and the split is calibrated so
that the composed curve converts to at most (epsilon, delta).

Which sensitivity per block (one row added or removed; a row's term depends on that row and on
public inputs only, which is what bounds it). Every kind below is bounded; the plan as
shipped holds one, pair, ml, bias, match and dcr (see the decision at the end):

- one:j, fine:j, pair:a,b, tri:a,b,c -- counts per bin: the row lands in exactly one cell
  (missing values are a cell of their own). L1 = L2 = 1.
- mom:j = (count, sum u, sum u^2) over the column's non-missing values mapped into [0, 1] by
  the schema's public bounds and rounded to multiples of 1/S (S = plan.fixed_point): a row
  adds (1, a, b) with 0 <= a, b <= S. L1 = 1 + 2S, L2 = sqrt(1 + 2 S^2).
- pear:a,b = (count, sum x, sum y, sum x^2, sum y^2, sum xy) in the same units: a row adds at
  most 1 and five values <= S. L1 = 1 + 5S, L2 = sqrt(1 + 5 S^2).
- ml:tstr -- histogram of the TSTR model's score by true label. The model is trained on the
  public synthetic table and the bins are cut at class-balanced quantiles of its scores on
  that table, so a row's bin depends on the row alone; a row with a missing label adds
  nothing. L1 = L2 = 1.
- imp:tstr:f -- the same histogram after replacing feature f of each row by the value of a
  synthetic row chosen by a hash of the row's own values, the public seed and f (not a
  permutation of the real rows, where one row moves every other row's value). L1 = L2 = 1.
- bias:real (group x label) and bias:tstr (group x label x TSTR prediction): one cell per
  labelled row. L1 = L2 = 1.
- match:real -- held-out rows that have an identical synthetic row: one count. L1 = L2 = 1.
- dcr:real_to_synthetic -- histogram of each held-out row's distance to the closest row of a
  public sample of the synthetic table: one bin per row. L1 = L2 = 1.

Not in a DP plan, because one row can move them without bound: TRTR (a model trained on the
party's rows: one row changes the model and so every score), permutation importance over real
rows, one exact-match flag per synthetic row (a row can flip many flags, and the flags name
the rows), distance histograms whose reference set is the party's rows (one row changes the
closest distance of every synthetic row near it), membership inference (needs the synthesis
rows, which DP evaluation never reads), and the row count (derived from the count blocks).

How blocks compose. Blocks of one kind form a group that shares a weight (plan.DP_WEIGHTS,
more for the blocks behind the headline measures); calibration is zCDP-style through
crypto.accountant.calibrate: group g of k_g blocks gets rho_g = rho * w_g / sum(w), split
evenly, i.e. a unit-sensitivity variance k_g / (2 rho_g) per block, and rho is bisected so the
composed Skellam RDP meets (epsilon, delta). A block with L2 > 1 gets that variance times
L2^2: its Gaussian term is the same, and as L1 <= L2^2 (integer changes) its discreteness
term is no larger, so the composed epsilon of the blocks as released is at most the one
calibrated (checked numerically in `evaluation_releases`).

A held-out row is never a synthesis row, so the evaluation budget and the synthesis budget
protect disjoint rows: each row's guarantee is the larger of the two, not their sum. The same
held-out rows evaluated again compose in the party's ledger (its evaluation budget).

What survives (benchmarks/evaluation_dp.py; results/evaluation_dp.md has the full table):
median |DP - exact| over 10 noise draws and two synthetic tables, 5 parties, delta = 1e-6.

    measure                  held-out rows  eps=0.5  eps=1   eps=3
    1-way TVD                  384 / 930    .111/.054 .046/.018 .003/.003
                             2,049 / 5,597  .002/.002 .003/.002 .002/.001
    KS complement            2,049 / 5,597  .019/.007 .004/.002 .002/.001
    column mean (in stds)    2,049 / 5,597  .050/.025 .021/.012 .007/.007
    TSTR ROC AUC             2,049 (3% pos.) .155     .067      .029
                             930 / 5,597    .060/.012 .013/.013 .013/.004
    held-out rows with a synthetic twin     10-30     0-14      0-6   (rows)
    DCR median               2,049 / 5,597  .000      .000      .000
    2-way TVD                5,597          .242      .131      .032
                             28,155         .042      .016      .003
    left out: 3-way TVD .46-.83, correlation .18-.41, means from moment sums .01-1.4 stds,
    TSTR importance .02-.28 (every table and eps; the table's "Left out" part)

Decision. Under DP, the 1-way TVD (histogram similarity), KS complement, column means and
quartiles (from the evaluation bins), TSTR AUC and F1 (where the positive class has a few
hundred held-out rows), the count of held-out rows with an identical synthetic row and the
distance of held-out rows to the synthetic table survive: |delta| <= 0.01 TVD, <= 0.02 AUC,
a few rows, from about 2,000 held-out rows at eps = 1 and from about 400 at eps = 3. The 2-way
TVD needs tens of thousands of held-out rows (0.016 at 28k rows, eps = 1): it stays in the
plan at a small weight, with the noise floor printed beside it. 3-way TVD, correlations from
fixed-point sums, moment means and the TSTR importance do not survive at eps <= 3 on these
tables and are left out (weight 0 in plan.DP_WEIGHTS). Default evaluation epsilon:
DEFAULT_EPSILON = 1 (delta 1e-6); for fewer than about 2,000 held-out rows in all, 3.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedsynth.crypto import noise
from fedsynth.crypto.accountant import StepBudget, calibrate, rdp_to_epsilon, skellam_rdp
from fedsynth.evaluation.plan import DP_WEIGHTS, EvalOptionsError, EvaluationPlan

# Blocks of the DP layout whose names are exactly these (others are matched by their kind).
_UNIT_NAMES = frozenset({"ml:tstr", "bias:real", "bias:tstr", "match:real",
                         "dcr:real_to_synthetic"})
DEFAULT_EPSILON = 1.0  # the proposed default evaluation epsilon (see the decision above)
MAX_VARIANCE = noise.MAX_VARIANCE  # what crypto.noise draws exactly: beyond this, refuse


@dataclass(frozen=True)
class BlockRelease:
    """One block of the vector released with Skellam noise: elements [offset, offset + length)
    each get total variance `variance` (what the t - c honest parties reach together)."""

    name: str
    offset: int
    length: int
    l1: float
    l2: float
    variance: float


def block_group(name: str) -> str:
    """The budget group of a DP block; EvalOptionsError for a block with no sensitivity bound."""
    kind, _, rest = name.partition(":")
    if name in _UNIT_NAMES:
        return kind
    if kind in ("one", "fine", "mom") and rest.isdigit():
        return kind
    if kind in ("pair", "pear", "tri") and rest and all(p.isdigit() for p in rest.split(",")):
        return kind
    if kind == "imp" and rest.startswith("tstr:") and rest[5:].isdigit():
        return kind
    raise EvalOptionsError(f"block {name!r} has no per-row sensitivity bound; it cannot be "
                           "released under DP")


def block_sensitivity(plan: EvaluationPlan, name: str) -> tuple[float, float]:
    """(L1, L2) of one block for one held-out row added or removed (see the module text)."""
    group = block_group(name)
    s = plan.fixed_point
    if group == "mom":
        return 1.0 + 2.0 * s, math.sqrt(1.0 + 2.0 * s * s)
    if group == "pear":
        return 1.0 + 5.0 * s, math.sqrt(1.0 + 5.0 * s * s)
    return 1.0, 1.0


@functools.lru_cache(maxsize=64)
def _unit_variances(groups: tuple[tuple[str, int, float], ...], epsilon: float,
                    delta: float) -> dict[str, float]:
    steps = [StepBudget(step=g, count=k, share=w) for g, k, w in groups]
    return calibrate(steps, epsilon=epsilon, delta=delta)


def evaluation_releases(plan: EvaluationPlan) -> list[BlockRelease]:
    """Per-block releases calibrated so that all blocks composed (RDP, crypto.accountant.
    skellam_rdp with the block's l1/l2) meet (plan.options.epsilon, plan.options.delta).
    Raises EvalOptionsError if the plan is exact (epsilon None)."""
    eps, delta = plan.options.epsilon, plan.options.delta
    if eps is None:
        raise EvalOptionsError("the evaluation plan is exact (no epsilon): nothing to calibrate")
    blocks, at = [], 0
    counts: dict[str, int] = {}
    for name, n in plan.layout:
        g = block_group(name)
        counts[g] = counts.get(g, 0) + 1
        blocks.append((name, at, n, g))
        at += n
    unit = _unit_variances(tuple((g, k, DP_WEIGHTS[g]) for g, k in counts.items()),
                           float(eps), float(delta))
    # A hair of extra noise, so that a ledger composing the blocks in another order (floating
    # point sums differ in the last bits) never finds more than epsilon.
    margin = 1.0 + 1e-6
    out = []
    for name, offset, n, g in blocks:
        l1, l2 = block_sensitivity(plan, name)
        out.append(BlockRelease(name, offset, n, l1, l2, unit[g] * l2 * l2 * margin))
    if max(r.variance for r in out) > MAX_VARIANCE:
        raise EvalOptionsError(f"epsilon={eps} is too small for this evaluation plan: the noise "
                               "it needs is beyond what can be drawn; ask for a larger epsilon "
                               "or fewer measures (e.g. max_triples)")
    spent = composed_epsilon(out, float(delta))
    if spent > eps:  # cannot happen while L1 <= L2^2 (see the module text)
        raise AssertionError(f"calibrated evaluation spends epsilon={spent} > {eps}")
    return out


def composed_epsilon(releases: Sequence[BlockRelease], delta: float) -> float:
    """The (epsilon at delta) of all releases composed in RDP, as a ledger charges them."""
    total = sum(skellam_rdp(r.variance, l1=r.l1, l2=r.l2) for r in releases)
    return rdp_to_epsilon(np.asarray(total), delta)


def element_variances(plan: EvaluationPlan) -> np.ndarray:
    """Total Skellam variance (float64) of each element of the plan's vector."""
    out = np.empty(plan.length, dtype=np.float64)
    for r in evaluation_releases(plan):
        out[r.offset:r.offset + r.length] = r.variance
    return out


def block_variances(plan: EvaluationPlan) -> dict[str, float]:
    """Variance per element of each block, by block name."""
    return {r.name: r.variance for r in evaluation_releases(plan)}


def add_noise(plan: EvaluationPlan, vector: np.ndarray, rng: np.random.Generator, *,
              share: float = 1.0) -> np.ndarray:
    """`vector` plus Skellam noise of `share` times the calibrated variances (one holder: 1;
    one of the parties of a federation: 1 / (t - c)). Use crypto.noise.secure_generator()
    outside tests."""
    v = element_variances(plan) * share
    return np.asarray(vector, dtype=np.int64) + noise.skellam(v, plan.length, rng)
