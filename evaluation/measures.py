"""The report's measures, computed from summed node statistics and the (public) synthetic table.

One function, `measure`, serves local evaluation (one node's vector) and federated evaluation
(the secure sum of all nodes' vectors): every measure below is a function of sums, so the
federated numbers are those of the pooled real rows (property-tested), except where noted:
TRTR uses each party's own model (no party holds the pooled rows to train one), and the
distance-based privacy measures compare each synthetic row with each party's rows separately.

DP evaluation (plan.dp): the sum carries Skellam noise (evaluation.dp), so counts can be
negative and blocks disagree on the row total. `measure` then first post-processes the noisy
blocks (`denoise`): the row total is the inverse-variance weighted mean of the count blocks'
sums; each count block is projected (Euclidean) onto the non-negative counts with that total,
which also soft-thresholds the noise in empty cells; score histograms are projected per label
onto label totals estimated the same way; fixed-point sums are clipped into what values in
[0, 1] allow. Measures the DP plan cannot carry are None with their reason under
"not_released". Every float is rounded to the first digit of its noise standard deviation,
estimated by re-noising the released sum (a parametric bootstrap: post-processing, no budget),
and the TVDs come with their noise floor: the TVD that noise alone shows when the real rows
follow the synthetic table exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from fedsynth.crypto.noise import skellam
from fedsynth.evaluation.dp import block_group, block_variances
from fedsynth.evaluation.plan import FIXED_POINT, ColumnPlan, EvaluationPlan, dcr_edges
from fedsynth.evaluation.statistics import table_blocks
from fedsynth.synthesis.datetimes import as_floats

Blocks = dict[str, np.ndarray]
TvdOf = Callable[[str], "float | None"]  # block name -> TVD of the real and synthetic block
DP_REPLICATES = 12  # re-noised copies of a DP sum that estimate each measure's noise
_COUNT_GROUPS = ("one", "fine", "pair", "tri")  # blocks whose cells sum to the row total


def measure(plan: EvaluationPlan, real_sum: np.ndarray, synthetic: pd.DataFrame, *,
            replicates: int = DP_REPLICATES) -> dict[str, Any]:
    """All measures of the report (JSON-serialisable) from the summed real statistics.
    With a DP plan, `replicates` re-noised copies estimate each number's noise (0: none, and
    no rounding)."""
    raw = plan.split(np.asarray(real_sum, dtype=np.int64))
    syn = table_blocks(plan, synthetic)
    if not plan.dp:
        out = _measures(plan, raw, syn, synthetic)
        out["evaluation"] = {"dp": False, "epsilon": None, "delta": None,
                             "synthesis_rows_read": _synthesis_rows_read(raw)}
        return out
    return _dp_measure(plan, raw, syn, synthetic, replicates)


def _synthesis_rows_read(real: Blocks) -> bool:
    """True when the evaluated nodes also read the rows the synthesizer used (an exact local
    evaluation given them): then TRTR is trained on them, distances are measured to them and
    the membership attack runs. A federation reads held-out rows only, so never."""
    return bool(int(real.get("mia:parties", np.zeros(1))[0]))


def _measures(plan: EvaluationPlan, real: Blocks, syn: Blocks, synthetic: pd.DataFrame,
              tvd_of: TvdOf | None = None, min_group_rows: float = 0.0) -> dict[str, Any]:
    tvd = tvd_of or (lambda k: _tvd(real[k], syn[k]))
    columns = [_column(plan, j, real, syn, tvd, synthetic) for j in range(len(plan.columns))]
    empty = frozenset(j for j, c in enumerate(columns) if c["no_values"])
    triples = sum(1 for name, _ in plan.layout if name.startswith("tri:")
                  and not empty & {int(i) for i in name[4:].split(",")})
    out: dict[str, Any] = {
        "rows_real": int(real["rows"][0]),
        "rows_synthetic": len(synthetic),
        "columns": columns,
        "pairs": [_pair(plan, a, b, real, syn, tvd, empty) for a, b in plan.pairs],
    }
    out["tvd"] = {
        "1way": _mean([1 - c["histogram_similarity"] for c in out["columns"]
                       if c["histogram_similarity"] is not None]),
        "2way": _mean([1 - p["contingency_similarity"] for p in out["pairs"]
                       if p["contingency_similarity"] is not None]),
        "3way": _tvd_means(plan, tvd, ways=(3,), skip=empty)["3way"] if triples else None,
        "3way_marginals": triples,
        "binning": f"up to {plan.options.bins} quantile bins of the synthetic table per numeric "
                   "column, categories as in the schema, missing values their own bin",
    }
    if empty:
        out["tvd"]["not_measured"] = {
            "columns": [plan.columns[j].name for j in sorted(empty)],
            "why": NO_VALUES + "; their columns, pairs and triples are left out of the means"}
    corr = [p["correlation_similarity"] for p in out["pairs"]
            if p["correlation_similarity"] is not None]
    out["similarity"] = {
        "histogram": _mean([c["histogram_similarity"] for c in out["columns"]]),
        "contingency": _mean([p["contingency_similarity"] for p in out["pairs"]]),
        "correlation": _mean(corr),
    }
    if plan.target is not None:
        out["ml_efficacy"] = _dp_ml(plan, real) if plan.dp else _ml(plan, real, synthetic)
        if plan.sensitive is not None:
            out["bias"] = _bias(plan, real, synthetic, min_group_rows)
    out["privacy"] = _dp_privacy(plan, real) if plan.dp else _privacy(plan, real)
    return out


def _tvd_means(plan: EvaluationPlan, tvd: TvdOf, ways: tuple[int, ...] = (1, 2, 3),
               skip: frozenset[int] = frozenset()) -> dict[str, float | None]:
    """Mean 1-, 2- and 3-way TVD over the plan's columns, pairs and triples, leaving out those
    with a column in `skip` (columns without any value)."""
    keys = {1: [f"one:{j}" for j in range(len(plan.columns)) if j not in skip],
            2: [f"pair:{a},{b}" for a, b in plan.pairs if not skip & {a, b}],
            3: ["tri:" + ",".join(map(str, t)) for t in plan.triples if not skip & set(t)]}
    have = {name for name, _ in plan.layout}
    return {f"{w}way": _mean([tvd(k) for k in keys[w] if k in have]) for w in ways}


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None and not math.isnan(x)]
    return float(np.mean(vals)) if vals else None


def _tvd(p: np.ndarray, q: np.ndarray) -> float | None:
    if p.sum() == 0 or q.sum() == 0:
        return None
    return 0.5 * float(np.abs(p / p.sum() - q / q.sum()).sum())


# --- columns ---------------------------------------------------------------------------------

_QUANTILES = (("min", 0.0), ("q1", 0.25), ("median", 0.5), ("q3", 0.75), ("max", 1.0))
NO_VALUES = "no values in the real rows nor in the synthetic table (every value missing)"


def _order_stats(counts: np.ndarray, edges: np.ndarray, exact: bool,
                 ks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Approximate k-th smallest values from binned counts of values, and the width of the
    bin each one comes from: the rows of a bin are taken as evenly spread over it. With
    `exact` every bin holds one value (its midpoint), so the order statistics are exact; a bin
    of zero width (the values equal to a public bound) is exact too (width 0)."""
    cum = np.cumsum(counts)
    b = np.clip(np.searchsorted(cum, ks, side="right"), 0, len(counts) - 1)
    if exact:
        return (edges[b] + edges[b + 1]) / 2.0, np.zeros(len(b))
    before = cum[b] - counts[b]
    frac = (ks - before + 0.5) / np.maximum(counts[b], 1.0)
    width = edges[b + 1] - edges[b]
    return np.asarray(edges[b] + np.clip(frac, 0, 1) * width), np.asarray(width)


def coarse(c: ColumnPlan) -> ColumnPlan:
    """The column with its evaluation bins in place of its fine bins (for a DP plan, which
    releases no fine bins: quantiles and KS come from the evaluation bins)."""
    e = c.edges
    lo = min(c.lower, e[0]) if e else c.lower
    hi = max(c.upper if c.upper > c.lower else c.lower + 1.0, e[-1] if e else lo)
    return replace(c, fine_edges=(lo, *e, hi), exact_fine=False)


def _binned(c: ColumnPlan, fine: np.ndarray,
            ends: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Counts of values per fine bin (missing dropped) and all bin edges; with `ends` (values
    equal to the lower and the upper bound), those values become two bins of zero width at the
    bounds, taken out of the first and the last fine bin."""
    counts = np.asarray(fine[:-1], dtype=np.float64)
    edges = np.asarray(c.fine_edges, dtype=np.float64)
    if ends is None or len(counts) == 0:
        return counts, edges
    at_lo, at_hi = (float(v) for v in ends)
    counts = np.concatenate([[at_lo], counts, [at_hi]])
    counts[1] -= at_lo
    counts[-2] -= at_hi
    return np.maximum(counts, 0.0), np.concatenate([[edges[0]], edges, [edges[-1]]])


def _quantiles(counts: np.ndarray, edges: np.ndarray, exact: bool,
               qs: list[float]) -> list[tuple[float, float] | None]:
    """(value, width of the bin it was interpolated in; 0: exact) for each quantile."""
    n = float(counts.sum())
    if n == 0:
        return [None] * len(qs)
    h = np.array(qs) * (n - 1)  # numpy's default (linear) quantile on order statistics
    lo, hi = np.floor(h), np.ceil(h)
    (vlo, wlo), (vhi, whi) = _order_stats(counts, edges, exact, lo), _order_stats(
        counts, edges, exact, hi)
    width = np.where(h > lo, np.maximum(wlo, whi), wlo)
    return [(float(v), float(w)) for v, w in zip(vlo + (h - lo) * (vhi - vlo), width,
                                                 strict=True)]


def _stats(c: ColumnPlan, blocks: Blocks, j: int, scale: float = FIXED_POINT,
           dp: bool = False,
           bin_moments: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Statistics of the real rows from their summed blocks; `dp`: of denoised blocks, without
    what noise makes meaningless (distinct counts, minimum and maximum), marked "noisy".

    Quantiles, minimum and maximum come from the fine bins, and from the values counted at the
    public bounds; "about" gives, for each that was interpolated inside a bin, that bin's width
    (absent: exact, e.g. one fine bin per integer, or a minimum at the lower bound). Without
    fine bins (DP) quantiles come from the evaluation bins; without moment sums, mean and std
    come from the evaluation bins with `bin_moments` (mean and mean square of the synthetic
    values in each bin), "about" with no width."""
    one = blocks[f"one:{j}"]
    n = int(blocks["rows"][0])
    out: dict[str, Any] = {"count": n - int(one[-1]), "missing": int(one[-1])}
    if not c.numeric:
        counts = one[:-1]
        out["distinct"] = None if dp else int((counts > 0).sum())
        return out
    about: dict[str, float | None] = {}
    out["mean"] = out["std"] = None
    if f"mom:{j}" in blocks:
        k, s1, s2 = (float(v) for v in blocks[f"mom:{j}"])
        span = c.upper - c.lower
        if k > 0:
            mu = s1 / scale / k
            var = max(s2 / scale / k - mu * mu, 0.0) * (k / (k - 1) if k > 1 else 0.0)
            out["mean"], out["std"] = c.lower + span * mu, span * math.sqrt(var)
    elif bin_moments is not None:
        counts = one[:-1].astype(float)
        k = float(counts.sum())
        if k > 0:
            mu = float(counts @ bin_moments[0]) / k
            var = max(float(counts @ bin_moments[1]) / k - mu * mu, 0.0)
            out["mean"], out["std"] = mu, math.sqrt(var * (k / (k - 1) if k > 1 else 0.0))
            about["mean"] = about["std"] = None
    if f"fine:{j}" in blocks:
        counts, edges = _binned(c, blocks[f"fine:{j}"], blocks.get(f"ends:{j}"))
        exact = c.exact_fine
        out["distinct"] = int((blocks[f"fine:{j}"][:-1] > 0).sum()) if exact else None
    else:  # a DP plan has no fine bins: quantiles from the evaluation bins
        counts, edges = _binned(coarse(c), one)
        exact = False
        out["distinct"] = None
    for (key, _), q in zip(_QUANTILES, _quantiles(counts, edges, exact,
                                                  [q for _, q in _QUANTILES]), strict=True):
        out[key] = None if q is None else q[0]
        if q is not None and q[1] > 0:
            about[key] = q[1]
    if dp:
        out["min"] = out["max"] = out["distinct"] = None
        about.pop("min", None)
        about.pop("max", None)
        out["noisy"] = True
    if about:
        out["about"] = about
    return out


def _table_stats(c: ColumnPlan, s: pd.Series) -> dict[str, Any]:
    """Exact statistics of a table at hand (the synthetic table, which is public)."""
    na = s.isna().to_numpy()
    out: dict[str, Any] = {"count": int((~na).sum()), "missing": int(na.sum())}
    if not c.numeric:
        present = np.bincount(c.codes(s), minlength=c.size)[:-1]
        out["distinct"] = int((present > 0).sum())
        return out
    x = as_floats(s)
    x = x[~np.isnan(x)]
    out["mean"] = float(x.mean()) if len(x) else None
    out["std"] = (float(x.std(ddof=1)) if len(x) > 1 else 0.0) if len(x) else None
    qs = np.quantile(x, [q for _, q in _QUANTILES]) if len(x) else [None] * len(_QUANTILES)
    for (key, _), v in zip(_QUANTILES, qs, strict=True):
        out[key] = None if v is None else float(v)
    out["distinct"] = len(np.unique(x))
    return out


def _bin_moments(c: ColumnPlan, s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Mean and mean square of the synthetic values in each evaluation bin (a bin without
    synthetic values: its midpoint), for means and stds from binned real counts."""
    codes, x = c.codes(s), as_floats(s)
    ok = codes < c.size - 1
    n = np.bincount(codes[ok], minlength=c.size - 1).astype(float)
    m1 = np.bincount(codes[ok], weights=x[ok], minlength=c.size - 1)
    m2 = np.bincount(codes[ok], weights=x[ok] ** 2, minlength=c.size - 1)
    e = np.asarray(coarse(c).fine_edges)
    mid = (e[:-1] + e[1:]) / 2.0
    has = n > 0
    m1 = np.where(has, m1 / np.maximum(n, 1.0), mid)
    m2 = np.where(has, m2 / np.maximum(n, 1.0), mid * mid)
    return m1, m2


def _display(c: ColumnPlan, j: int, real: Blocks, syn: Blocks) -> dict[str, Any]:
    """The report's histogram of a numeric column: counts per display bin (equal width on the
    public bounds) in an exact plan; a DP plan releases only the evaluation bins, which differ
    in width, so those are drawn as densities."""
    if f"disp:{j}" in real:
        return {"edges": list(c.display_edges), "real": real[f"disp:{j}"].tolist(),
                "synthetic": syn[f"disp:{j}"].tolist(), "density": False,
                "bins": "equal width on the public bounds"}
    return {"edges": list(coarse(c).fine_edges), "real": real[f"one:{j}"][:-1].tolist(),
            "synthetic": syn[f"one:{j}"][:-1].tolist(), "density": True,
            "bins": "the evaluation bins (quantiles of the synthetic table), as densities"}


def _column(plan: EvaluationPlan, j: int, real: Blocks, syn: Blocks,
            tvd_of: TvdOf, synthetic: pd.DataFrame) -> dict[str, Any]:
    c = plan.columns[j]
    r, s = real[f"one:{j}"], syn[f"one:{j}"]
    # a column with no value on either side: its similarity is that of two columns of
    # missing values, 1 whatever the synthesizer did; it is not measured (nor its pairs)
    empty = int(r[:-1].sum()) == 0 and int(s[:-1].sum()) == 0
    tvd = None if empty else tvd_of(f"one:{j}")
    out: dict[str, Any] = {
        "name": c.name, "kind": "numeric" if c.numeric else "categorical",
        "real": _stats(c, real, j, plan.fixed_point, plan.dp,
                       _bin_moments(c, synthetic[c.name]) if plan.dp and c.numeric else None),
        "synthetic": _table_stats(c, synthetic[c.name]),
        "histogram_similarity": None if tvd is None else 1.0 - tvd,
        "no_values": empty,
        "bins": [c.label(i) for i in range(c.size)],
        "histogram_real": r.tolist(), "histogram_synthetic": s.tolist(),
    }
    if empty:
        out["note"] = NO_VALUES + ": not measured"
    if c.numeric:
        out["display"] = _display(c, j, real, syn)
        fine = "fine" if f"fine:{j}" in real else "one"  # a DP plan: the evaluation bins
        fr = real[f"{fine}:{j}"][:-1].astype(float)
        fs = syn[f"{fine}:{j}"][:-1].astype(float)
        if fr.sum() and fs.sum():
            ks = float(np.abs(np.cumsum(fr) / fr.sum() - np.cumsum(fs) / fs.sum()).max())
            out["ks_complement"] = 1.0 - ks
        else:
            out["ks_complement"] = None
    else:
        out["categories"] = [{"value": c.categories[i], "real": int(r[i]),
                              "synthetic": int(s[i])} for i in range(len(c.categories))]
    return out


# --- pairs -----------------------------------------------------------------------------------

def pearson(sums: np.ndarray, scale: float = FIXED_POINT) -> float | None:
    n, sx, sy, sxx, syy, sxy = (float(v) for v in sums)
    if n < 2:
        return None
    sx, sy, sxx, syy, sxy = (v / scale for v in (sx, sy, sxx, syy, sxy))
    vx, vy = sxx / n - (sx / n) ** 2, syy / n - (sy / n) ** 2
    if vx <= 1e-12 or vy <= 1e-12:
        return None
    return float(np.clip((sxy / n - sx * sy / n / n) / math.sqrt(vx * vy), -1.0, 1.0))


def cramers_v(table: np.ndarray) -> float | None:
    t = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0].astype(float)
    n = t.sum()
    if n == 0 or min(t.shape) < 2:
        return None
    expected = np.outer(t.sum(axis=1), t.sum(axis=0)) / n
    chi2 = float(((t - expected) ** 2 / expected).sum())
    return math.sqrt(chi2 / n / (min(t.shape) - 1))


def _pair(plan: EvaluationPlan, a: int, b: int, real: Blocks, syn: Blocks,
          tvd_of: TvdOf, empty: frozenset[int] = frozenset()) -> dict[str, Any]:
    key = f"{a},{b}"
    shape = (plan.columns[a].size, plan.columns[b].size)
    r, s = real[f"pair:{key}"], syn[f"pair:{key}"]
    # with a column without values the pair's table is the other column's: not a pair measure
    tvd = None if empty & {a, b} else tvd_of(f"pair:{key}")
    out: dict[str, Any] = {"columns": [plan.columns[a].name, plan.columns[b].name],
                           "contingency_similarity": None if tvd is None else 1.0 - tvd,
                           "cramers_v_real": cramers_v(r.reshape(shape)),
                           "cramers_v_synthetic": cramers_v(s.reshape(shape)),
                           "correlation_real": None, "correlation_synthetic": None,
                           "correlation_similarity": None}
    if empty & {a, b}:
        out["note"] = NO_VALUES + " in " + " and ".join(
            plan.columns[i].name for i in sorted(empty & {a, b})) + ": not measured"
    if f"pear:{key}" in real:
        fp = plan.fixed_point
        rr, rs = pearson(real[f"pear:{key}"], fp), pearson(syn[f"pear:{key}"], fp)
        out["correlation_real"], out["correlation_synthetic"] = rr, rs
        if rr is not None and rs is not None:
            out["correlation_similarity"] = 1.0 - abs(rr - rs) / 2.0
    return out


# --- models ----------------------------------------------------------------------------------

def auc_from_hist(hist: np.ndarray) -> float | None:
    """ROC AUC of scores binned by label (first half negatives): ties within a bin count 1/2."""
    b = len(hist) // 2
    neg, pos = hist[:b].astype(float), hist[b:].astype(float)
    if neg.sum() == 0 or pos.sum() == 0:
        return None
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))


def f1_from_hist(hist: np.ndarray) -> float | None:
    """F1 of the positive class at score threshold 0.5."""
    b = len(hist) // 2
    neg, pos = hist[:b], hist[b:]
    tp, fp, fn = float(pos[b // 2:].sum()), float(neg[b // 2:].sum()), float(pos[:b // 2].sum())
    return None if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def _ml(plan: EvaluationPlan, real: Blocks, synthetic: pd.DataFrame) -> dict[str, Any]:
    assert plan.target is not None
    labels = plan.target.labels(synthetic[plan.target.name])
    out: dict[str, Any] = {"target": plan.target.name, "positive_class": plan.target.positive,
                           "model": "HistGradientBoostingClassifier (scikit-learn)",
                           "f1_threshold": 0.5,
                           # rows each model learnt from and was scored on (labelled rows)
                           "tstr_train_rows": int((labels >= 0).sum()),
                           "tstr_test_rows": int(real["ml:tstr"].sum()),
                           "trtr_test_rows": int(real["ml:trtr"].sum()),
                           "trtr_trained_on": (
                               "the rows used for synthesis" if _synthesis_rows_read(real) else
                               "one half of each party's real rows (tested on the other half)")}
    imps: dict[str, list[float]] = {}
    for m in ("tstr", "trtr"):
        hist = real[f"ml:{m}"]
        auc = auc_from_hist(hist)
        out[f"{m}_auc"], out[f"{m}_f1"] = auc, f1_from_hist(hist)
        out[f"{m}_parties"] = int(real[f"ml:{m}:fitted"][0])
        if auc is not None:
            imps[m] = [auc - (auc_from_hist(real[f"imp:{m}:{f}"]) or 0.5) for f in plan.features]
    names = [plan.columns[f].name for f in plan.features]
    out["feature_importance"] = {m: dict(zip(names, v, strict=True)) for m, v in imps.items()}
    out["feature_importance_agreement"] = None
    if len(imps) == 2 and len(names) >= 2 and np.ptp(imps["tstr"]) > 0 and np.ptp(imps["trtr"]):
        out["feature_importance_agreement"] = float(spearmanr(imps["tstr"], imps["trtr"])[0])
    out["importance"] = "permutation importance: drop in ROC AUC when one column is shuffled"
    return out


# --- bias ------------------------------------------------------------------------------------

def _fairness(rates: dict[str, float]) -> dict[str, float | None]:
    vals = list(rates.values())
    if len(vals) < 2:
        return {"difference": None, "ratio": None}
    hi = max(vals)
    return {"difference": hi - min(vals), "ratio": (min(vals) / hi) if hi > 0 else None}


def _bias(plan: EvaluationPlan, real: Blocks, synthetic: pd.DataFrame,
          min_rows: float = 0.0) -> dict[str, Any]:
    """Bias measures; groups of the real rows with fewer than `min_rows` rows (a DP sum:
    too few for the noise) get no rates."""
    assert plan.target is not None and plan.sensitive is not None
    g = plan.columns[plan.sensitive]
    labels = [g.label(i) for i in range(g.size)]

    def by_label(counts: np.ndarray, least: float = 0.0) -> dict[str, Any]:
        c = counts.reshape(g.size, 2).astype(float)
        rates = {labels[i]: c[i, 1] / c[i].sum() for i in range(g.size)
                 if c[i].sum() > least}
        f = _fairness(rates)
        return {"positive_rate": rates, "demographic_parity_difference": f["difference"],
                "disparate_impact_ratio": f["ratio"], "rows": c.sum(axis=1).astype(int).tolist()}

    y = plan.target.labels(synthetic[plan.target.name])
    gs = g.codes(synthetic[g.name])
    syn_counts = np.bincount(gs[y >= 0] * 2 + y[y >= 0], minlength=g.size * 2)
    out: dict[str, Any] = {"sensitive": g.name, "groups": labels,
                           "real_data": by_label(real["bias:real"], min_rows),
                           "synthetic_data": by_label(syn_counts)}
    for m in ("trtr", "tstr"):
        if f"bias:{m}" not in real:  # a DP plan: no TRTR, and no TSTR model on one class
            out[f"{m}_model"] = None
            out.setdefault("not_released", {})[f"{m}_model"] = (
                _WHY["trtr"] if m == "trtr" else _WHY["tstr_one_class"])
            continue
        c = real[f"bias:{m}"].reshape(g.size, 2, 2).astype(float)  # group, label, prediction
        if c.sum() == 0:
            out[f"{m}_model"] = None
            continue
        pred = {labels[i]: c[i, :, 1].sum() / c[i].sum() for i in range(g.size)
                if c[i].sum() > min_rows}
        tpr = {labels[i]: c[i, 1, 1] / c[i, 1].sum() for i in range(g.size)
               if c[i, 1].sum() > min_rows}
        f = _fairness(pred)
        out[f"{m}_model"] = {"prediction_rate": pred, "true_positive_rate": tpr,
                             "demographic_parity_difference": f["difference"],
                             "disparate_impact_ratio": f["ratio"],
                             "equal_opportunity_difference": _fairness(tpr)["difference"]}
    return out


# --- privacy ---------------------------------------------------------------------------------

_EDGES = np.concatenate([[0.0], dcr_edges(), [2.0]])  # all bin edges of a distance histogram


def hist_cdf(hist: np.ndarray, x: float) -> float:
    """Share of values below x, values spread evenly within each bin."""
    n = float(hist.sum())
    lo, hi = _EDGES[:-1], _EDGES[1:]
    part = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return float((hist * part).sum() / n) if n else float("nan")


def hist_quantile(hist: np.ndarray, q: float) -> float | None:
    n = float(hist.sum())
    if n == 0:
        return None
    cum = np.cumsum(hist) / n
    b = min(int(np.searchsorted(cum, q, side="left")), len(hist) - 1)
    before = cum[b - 1] if b else 0.0
    frac = (q - before) / (hist[b] / n) if hist[b] else 0.0
    return float(_EDGES[b] + np.clip(frac, 0, 1) * (_EDGES[b + 1] - _EDGES[b]))


def _privacy(plan: EvaluationPlan, real: Blocks) -> dict[str, Any]:
    match = real["match"]
    syn, hold = real["dcr:synthetic"], real["dcr:holdout"]
    out: dict[str, Any] = {
        "exact_matches": int((match > 0).sum()),
        "exact_match_rate": float((match > 0).mean()) if len(match) else 0.0,
        "dcr_synthetic_median": hist_quantile(syn, 0.5),
        "dcr_real_median": hist_quantile(hold, 0.5),
        "distance": "Gower distance to the closest real row (numeric differences scaled by the "
                    "synthetic 1st-99th percentile range, categories 0/1), on sampled rows",
    }
    p5 = hist_quantile(hold, 0.05)
    out["closer_than_real_share"] = None if p5 is None or not syn.sum() else hist_cdf(syn, p5)
    med_s, med_r = out["dcr_synthetic_median"], out["dcr_real_median"]
    out["dcr_ratio"] = med_s / med_r if med_s is not None and med_r else None
    out["dcr_histogram_synthetic"], out["dcr_histogram_real"] = syn.tolist(), hold.tolist()
    out["dcr_bin_edges"] = _EDGES.tolist()
    mem, non = real["mia:member"], real["mia:non_member"]
    out["membership_inference_auc"] = None
    if int(real["mia:parties"][0]) and mem.sum() and non.sum():
        # attack: "member" when the row's closest synthetic row is nearer; ties count 1/2
        above = non.sum() - np.cumsum(non)
        out["membership_inference_auc"] = float(
            (mem * (above + 0.5 * non)).sum() / (mem.sum() * non.sum()))
    out["membership_inference"] = (
        "distance-to-closest-synthetic-record attack, rows used for synthesis vs the evaluated "
        "rows (0.5: no better than a coin)" if _synthesis_rows_read(real) else
        "not measured: the attack needs the rows used for synthesis, which this evaluation did "
        "not read")
    return out


# --- DP evaluation: noisy sums ----------------------------------------------------------------

_WHY = {
    "trtr": "not in a DP evaluation: a model trained on a party's own rows changes with every "
            "row, so its scores have no per-row sensitivity bound",
    "agreement": "needs TRTR importances, which a DP evaluation does not release",
    "tstr_one_class": "the synthetic table's labels hold one class: no TSTR model",
    "match_flags": "not in a DP evaluation: one flag per synthetic row names real rows; see "
                   "real_rows_with_exact_match (evaluated real rows that have an identical "
                   "synthetic row, a count)",
    "dcr_real": "not in a DP evaluation: distances to the closest of a party's own rows change "
                "for many rows when one row is added; see dcr_real_to_synthetic_median",
    "mia": "needs the rows used for synthesis, which a DP evaluation never reads",
    "extremes": "not estimated from noisy counts: a minimum, maximum or distinct count is "
                "decided by single rows",
    "dropped": "bounded, but left out of DP plans: measured, noise drowned it at every "
               "evaluation epsilon up to 3 on the bundled tables (benchmarks/evaluation_dp.py)",
}


def project_counts(y: np.ndarray, total: float) -> np.ndarray:
    """Euclidean projection of noisy counts onto {x >= 0, sum x = total} (float64): every
    count is lowered (or raised) by one shared amount and then clipped at zero."""
    y = np.asarray(y, dtype=np.float64)
    if total <= 0 or len(y) == 0:
        return np.zeros(len(y))
    u = np.sort(y)[::-1]
    css = np.cumsum(u) - total
    k = np.arange(1, len(u) + 1)
    # k = 1 always qualifies (u[0] - css[0] = total > 0); rounding may hide it when the
    # total is tiny beside the counts, so it is the fallback
    hits = np.nonzero(u - css / k > 0)[0]
    rho = int(hits[-1]) if len(hits) else 0
    return np.maximum(y - css[rho] / (rho + 1), 0.0)


def _project(plan: EvaluationPlan, name: str, y: np.ndarray, total: float) -> np.ndarray:
    """project_counts over the cells a row can reach (structural zeros stay zero)."""
    mask = structural_zeros(plan, name)
    if mask is None:
        return project_counts(y, total)
    out = np.zeros(len(y))
    out[~mask] = project_counts(np.asarray(y)[~mask], total)
    return out


def _rint(x: np.ndarray) -> np.ndarray:
    return np.rint(x).astype(np.int64)


def _combined(estimates: list[tuple[float, float]]) -> float:
    """Inverse-variance weighted mean of (value, variance) estimates, at least 0."""
    w = sum(1.0 / v for _, v in estimates)
    return max(sum(x / v for x, v in estimates) / w, 0.0) if w > 0 else 0.0


def denoise(plan: EvaluationPlan, raw: Blocks, variances: dict[str, float]) -> Blocks:
    """Blocks of a noisy DP sum made consistent (see the module text); adds "rows"."""
    out: Blocks = {}
    counts = [k for k in raw if block_group(k) in _COUNT_GROUPS]
    n = _combined([(float(raw[k].sum()), len(raw[k]) * variances[k]) for k in counts])
    out["rows"] = np.array([round(n)])
    for k in counts:
        out[k] = _rint(_project(plan, k, raw[k], n))
    # labelled rows by class, from every block that splits them by label
    b = plan.score_bins
    by_label: list[list[tuple[float, float]]] = [[], []]
    for k in raw:
        if block_group(k) in ("ml", "imp"):
            for lab in (0, 1):
                by_label[lab].append((float(raw[k][lab * b:(lab + 1) * b].sum()),
                                      b * variances[k]))
        elif k in ("bias:real", "bias:tstr"):
            per = raw[k].reshape(-1, 2, 2 if k == "bias:tstr" else 1)
            cells = per.shape[0] * per.shape[2]
            for lab in (0, 1):
                by_label[lab].append((float(per[:, lab].sum()), cells * variances[k]))
    labelled = [_combined(e) for e in by_label]
    for k in raw:
        if block_group(k) in ("ml", "imp"):
            out[k] = np.concatenate([_rint(project_counts(raw[k][lab * b:(lab + 1) * b],
                                                          labelled[lab])) for lab in (0, 1)])
        elif k in ("bias:real", "bias:tstr"):
            out[k] = _rint(_project(plan, k, raw[k], sum(labelled)))
    if "match:real" in raw:
        out["match:real"] = np.clip(raw["match:real"], 0, out["rows"][0])
    if "dcr:real_to_synthetic" in raw:
        out["dcr:real_to_synthetic"] = _rint(project_counts(raw["dcr:real_to_synthetic"], n))
    s = plan.fixed_point
    for j in range(len(plan.columns)):
        if f"mom:{j}" in raw:
            present = float(out[f"one:{j}"][:-1].sum())  # non-missing values
            out[f"mom:{j}"] = _moments(raw[f"mom:{j}"], present, s)
    for a, bb in plan.pairs:
        if f"pear:{a},{bb}" in raw:
            both = out[f"pair:{a},{bb}"].reshape(plan.columns[a].size, plan.columns[bb].size)
            present = float(both[:-1, :-1].sum())  # rows with both values present
            out[f"pear:{a},{bb}"] = _pear(raw[f"pear:{a},{bb}"], present, s)
    return out


def _moments(m: np.ndarray, k: float, s: float) -> np.ndarray:
    """(count, sum u, sum u^2) clipped into what k values in [0, 1] allow."""
    s1 = float(np.clip(m[1], 0.0, s * k))
    s2 = float(np.clip(m[2], s1 * s1 / (s * k) if k > 0 else 0.0, s1))
    return np.array([k, s1, s2])


def _pear(m: np.ndarray, k: float, s: float) -> np.ndarray:
    _, sx, sxx = _moments(np.array([0.0, m[1], m[3]]), k, s)
    _, sy, syy = _moments(np.array([0.0, m[2], m[4]]), k, s)
    sxy = float(np.clip(m[5], 0.0, min(sx, sy)))
    return np.array([k, sx, sy, sxx, syy, sxy])


def _dp_ml(plan: EvaluationPlan, real: Blocks) -> dict[str, Any]:
    assert plan.target is not None
    out: dict[str, Any] = {"target": plan.target.name, "positive_class": plan.target.positive,
                           "model": "HistGradientBoostingClassifier (scikit-learn)",
                           "f1_threshold": 0.5, "tstr_parties": None, "trtr_auc": None,
                           "trtr_f1": None, "trtr_parties": None,
                           "feature_importance_agreement": None,
                           "score_bins": f"{plan.score_bins // 2} per label below 0.5 and "
                                         f"{plan.score_bins // 2} above, cut at quantiles of the "
                                         "TSTR model's scores on the synthetic table",
                           "importance": "drop in ROC AUC of the TSTR model when one column of "
                                         "each real row is replaced by the value of a synthetic "
                                         "row picked by a hash of the real row (DP evaluation)"}
    why = {"trtr_auc": _WHY["trtr"], "trtr_f1": _WHY["trtr"],
           "feature_importance_agreement": _WHY["agreement"]}
    out["tstr_auc"] = out["tstr_f1"] = None
    out["feature_importance"] = {}
    if "ml:tstr" not in real:
        why["tstr_auc"] = why["tstr_f1"] = _WHY["tstr_one_class"]
    else:
        auc = auc_from_hist(real["ml:tstr"])
        out["tstr_auc"], out["tstr_f1"] = auc, f1_from_hist(real["ml:tstr"])
        if auc is not None and all(f"imp:tstr:{f}" in real for f in plan.features):
            names = [plan.columns[f].name for f in plan.features]
            out["feature_importance"] = {"tstr": {
                n: auc - (auc_from_hist(real[f"imp:tstr:{f}"]) or 0.5)
                for n, f in zip(names, plan.features, strict=True)}}
        elif auc is not None:
            why["feature_importance"] = _WHY["dropped"]
    out["not_released"] = why
    return out


def _dp_privacy(plan: EvaluationPlan, real: Blocks) -> dict[str, Any]:
    n = int(real["rows"][0])
    hits = int(real["match:real"][0])
    h = real["dcr:real_to_synthetic"]
    return {
        "exact_matches": None, "exact_match_rate": None,
        "real_rows_with_exact_match": hits,
        "real_exact_match_rate": hits / n if n else None,
        "dcr_synthetic_median": None, "dcr_real_median": None, "dcr_ratio": None,
        "closer_than_real_share": None, "membership_inference_auc": None,
        "dcr_real_to_synthetic_median": hist_quantile(h, 0.5),
        "dcr_histogram_real_to_synthetic": h.tolist(),
        "dcr_histogram_synthetic": [], "dcr_histogram_real": [],
        "dcr_bin_edges": _EDGES.tolist(),
        "distance": "Gower distance from each evaluated real row to the closest row of a "
                    f"sample of {min(plan.options.distance_rows, plan.synthetic_rows)} "
                    "synthetic rows (numeric differences scaled by the synthetic 1st-99th "
                    "percentile range, categories 0/1)",
        "membership_inference": "not measured (a DP evaluation reads the evaluated real rows only, "
                                "never the rows used for synthesis)",
        "not_released": {"exact_matches": _WHY["match_flags"],
                         "exact_match_rate": _WHY["match_flags"],
                         "dcr_synthetic_median": _WHY["dcr_real"],
                         "dcr_real_median": _WHY["dcr_real"], "dcr_ratio": _WHY["dcr_real"],
                         "closer_than_real_share": _WHY["dcr_real"],
                         "membership_inference_auc": _WHY["mia"]},
    }


# Headline numbers whose noise is reported under "uncertainty" (path into the output).
HEADLINE = (("tvd", "1way"), ("tvd", "2way"), ("tvd", "3way"), ("similarity", "histogram"),
            ("similarity", "contingency"), ("similarity", "correlation"),
            ("ml_efficacy", "tstr_auc"), ("ml_efficacy", "tstr_f1"),
            ("privacy", "real_rows_with_exact_match"), ("privacy", "real_exact_match_rate"),
            ("privacy", "dcr_real_to_synthetic_median"))


def dp_tvd(y: np.ndarray, variance: float, rows: float, q: np.ndarray) -> float | None:
    """TVD of noisy real counts `y` (Skellam `variance` per cell, `rows` rows) and synthetic
    counts `q`, each cell's |difference| debiased as sqrt(max(d^2 - variance / rows^2, 0)):
    d^2 - s^2 is unbiased for the squared difference, so cells where the real and synthetic
    shares agree add far less than the noise's mean absolute value (about 0.2 s instead of
    0.8 s), and cells that differ by much more than s add about their true difference."""
    if rows <= 0 or q.sum() == 0:
        return None
    d = np.asarray(y, dtype=np.float64) / rows - q / q.sum()
    return float(min(0.5 * np.sqrt(np.maximum(d * d - variance / rows**2, 0.0)).sum(), 1.0))


def _dp_tvd_of(raw: Blocks, var: dict[str, float], rows: float, syn: Blocks) -> TvdOf:
    return lambda k: dp_tvd(raw[k], var[k], rows, syn[k])


def structural_zeros(plan: EvaluationPlan, name: str) -> np.ndarray | None:
    """Cells of a count block that no validated row can reach (a missing code of a column
    the schema declares non-nullable), or None if the block has none or is not a count."""
    kind, _, rest = name.partition(":")
    cols = plan.columns
    if kind in ("one", "pair", "tri"):
        mask = np.zeros(1, dtype=bool)
        for j in (int(x) for x in rest.split(",")):
            mask = (mask[:, None] | cols[j].structural()[None, :]).ravel()
    elif name in ("bias:real", "bias:tstr") and plan.sensitive is not None:
        per = 2 if name == "bias:real" else 4
        mask = np.repeat(cols[plan.sensitive].structural(), per)
    else:
        return None
    return mask if mask.any() else None


def _zero_structural(plan: EvaluationPlan, blocks: Blocks) -> Blocks:
    """Public knowledge: cells no validated row reaches are empty, whatever noise they got."""
    out = dict(blocks)
    for k, v in blocks.items():
        mask = structural_zeros(plan, k)
        if mask is not None:
            out[k] = np.where(mask, 0, v)
    return out


def _dp_measure(plan: EvaluationPlan, raw: Blocks, syn: Blocks, synthetic: pd.DataFrame,
                replicates: int) -> dict[str, Any]:
    var = block_variances(plan)
    raw = _zero_structural(plan, raw)
    real = denoise(plan, raw, var)
    n = float(real["rows"][0])
    # a group's rate from noisy counts is only shown when its rows dwarf the noise (rate sd
    # below about 0.1)
    min_rows = 10.0 * math.sqrt(var["bias:real"]) if "bias:real" in var else 0.0
    out = _measures(plan, real, syn, synthetic, _dp_tvd_of(raw, var, n, syn), min_rows)
    empty = frozenset(j for j, c in enumerate(out["columns"]) if c["no_values"])
    # parametric bootstrap around the denoised estimate (post-processing only: the released
    # sum is already DP, so this generator needs no secrecy)
    rng = np.random.default_rng(0)
    reps, floors = [], []
    for _ in range(replicates):
        again = _zero_structural(plan, {k: _rint(real[k]) + skellam(var[k], len(raw[k]), rng)
                                        for k in raw})
        back = denoise(plan, again, var)
        reps.append(_measures(plan, back, syn, synthetic,
                              _dp_tvd_of(again, var, float(back["rows"][0]), syn), min_rows))
        null = _zero_structural(plan, {
            k: _rint(n * syn[k] / max(syn[k].sum(), 1)) + skellam(var[k], len(raw[k]), rng)
            for k in raw if block_group(k) in _COUNT_GROUPS})
        floors.append(_tvd_means(plan, _dp_tvd_of(null, var, n, syn), skip=empty))
    sds = _leaf_sds(out, reps)
    if replicates >= 2:
        _round_leaves(out, sds)
        out["tvd"]["noise_floor"] = {
            w: _round_to(_mean([f[w] for f in floors]), max(sds.get(("tvd", w), 0.0), 1e-4))
            for w in ("1way", "2way", "3way")}
        out["uncertainty"] = {".".join(map(str, p)): _round_to(sds[p], sds[p] / 10)
                              for p in HEADLINE if p in sds}
    out["evaluation"] = {
        "dp": True, "epsilon": plan.options.epsilon, "delta": plan.options.delta,
        "unit": "one evaluated real row of one party (in a federation, one of its held-out "
                "rows), added or removed",
        "synthesis_rows_read": False,
        "noise": "Skellam on every statistic, calibrated per block to its sensitivity (see "
                 "evaluation.dp); numbers are rounded to the first digit of their noise "
                 "standard deviation ('uncertainty', from re-noised copies of the estimate); "
                 "TVDs are debiased per cell, and 'noise_floor' is the TVD noise alone shows",
        "noise_sd_per_count": {g: _round_to(float(np.sqrt(v)), 0.1) for g, v in
                               sorted({block_group(k): v for k, v in var.items()}.items())
                               if g not in ("mom", "pear")},
        "not_released": {
            **{what: _WHY["dropped"] for kind, what in (
                ("tri", "3-way TVD"), ("pear", "correlations (fixed-point sums)"),
                ("imp", "TSTR feature importance"),
                ("fine", "fine bins (quantiles and KS come from the evaluation bins)"),
                ("mom", "moment sums (mean and std come from the evaluation bins and the "
                     "synthetic values' mean in each bin)"))
               if not any(name.startswith(kind + ":") for name, _ in plan.layout)},
            "columns: min, max, distinct": _WHY["extremes"],
            "trtr, importance agreement": _WHY["trtr"],
            "exact-match flags per synthetic row": _WHY["match_flags"],
            "distances to the closest real row": _WHY["dcr_real"],
            "membership inference": _WHY["mia"]},
    }
    return out


Path = tuple[str | int, ...]


def _leaves(x: Any, path: Path = ()) -> list[tuple[Path, float]]:
    """Every float in a nested dict/list, with its path."""
    if isinstance(x, dict):
        return [leaf for k, v in x.items() for leaf in _leaves(v, (*path, k))]
    if isinstance(x, list):
        return [leaf for i, v in enumerate(x) for leaf in _leaves(v, (*path, i))]
    if isinstance(x, float) and math.isfinite(x):
        return [(path, x)]
    return []


def _leaf_sds(out: dict[str, Any], reps: list[dict[str, Any]]) -> dict[Path, float]:
    vals: dict[Path, list[float]] = {}
    for r in reps:
        for p, v in _leaves(r):
            vals.setdefault(p, []).append(v)
    return {p: float(np.std(v, ddof=1)) for p, v in vals.items() if len(v) >= 2}


def _round_to(x: float | None, sd: float) -> float | None:
    """x rounded to the decimal place of the first significant digit of sd."""
    if x is None or not math.isfinite(x) or sd <= 0 or not math.isfinite(sd):
        return x
    return round(x, -math.floor(math.log10(sd)))


def _round_leaves(out: dict[str, Any], sds: dict[Path, float]) -> None:
    for path, v in _leaves(out):
        sd = sds.get(path, 0.0)
        if sd > 0:
            *head, last = path
            box: Any = out
            for k in head:
                box = box[k]
            box[last] = _round_to(v, sd)
