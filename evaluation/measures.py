"""The report's measures, computed from summed node statistics and the (public) synthetic table.

One function, `measure`, serves local evaluation (one node's vector) and federated evaluation
(the secure sum of all nodes' vectors): every measure below is a function of sums, so the
federated numbers are those of the pooled real rows (property-tested), except where noted:
TRTR uses each party's own model (no party holds the pooled rows to train one), and the
distance-based privacy measures compare each synthetic row with each party's rows separately.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from fedsynth.evaluation.plan import FIXED_POINT, ColumnPlan, EvaluationPlan, dcr_edges
from fedsynth.evaluation.statistics import table_blocks

Blocks = dict[str, np.ndarray]


def measure(plan: EvaluationPlan, real_sum: np.ndarray, synthetic: pd.DataFrame) -> dict[str, Any]:
    """All measures of the report (JSON-serialisable) from the summed real statistics."""
    real = plan.split(np.asarray(real_sum, dtype=np.int64))
    syn = table_blocks(plan, synthetic)
    out: dict[str, Any] = {
        "rows_real": int(real["rows"][0]),
        "rows_synthetic": len(synthetic),
        "columns": [_column(plan, j, real, syn) for j in range(len(plan.columns))],
        "pairs": [_pair(plan, a, b, real, syn) for a, b in plan.pairs],
    }
    out["tvd"] = {
        "1way": _mean([1 - c["histogram_similarity"] for c in out["columns"]
                       if c["histogram_similarity"] is not None]),
        "2way": _mean([1 - p["contingency_similarity"] for p in out["pairs"]
                       if p["contingency_similarity"] is not None]),
        "3way": _mean([_tvd(real[f"tri:{k}"], syn[f"tri:{k}"])
                       for k in (",".join(map(str, t)) for t in plan.triples)]),
        "3way_marginals": len(plan.triples),
        "binning": f"up to {plan.options.bins} quantile bins of the synthetic table per numeric "
                   "column, categories as in the schema, missing values their own bin",
    }
    corr = [p["correlation_similarity"] for p in out["pairs"]
            if p["correlation_similarity"] is not None]
    out["similarity"] = {
        "histogram": _mean([c["histogram_similarity"] for c in out["columns"]]),
        "contingency": _mean([p["contingency_similarity"] for p in out["pairs"]]),
        "correlation": _mean(corr),
    }
    if plan.target is not None:
        out["ml_efficacy"] = _ml(plan, real)
        if plan.sensitive is not None:
            out["bias"] = _bias(plan, real, synthetic)
    out["privacy"] = _privacy(plan, real)
    return out


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None and not math.isnan(x)]
    return float(np.mean(vals)) if vals else None


def _tvd(p: np.ndarray, q: np.ndarray) -> float | None:
    if p.sum() == 0 or q.sum() == 0:
        return None
    return 0.5 * float(np.abs(p / p.sum() - q / q.sum()).sum())


# --- columns ---------------------------------------------------------------------------------

def _order_stats(c: ColumnPlan, fine: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """Approximate k-th smallest values from fine counts (exact for one-value-per-bin columns):
    the rows of a bin are taken as evenly spread over it."""
    counts = fine[:-1].astype(float)  # drop missing
    cum = np.cumsum(counts)
    edges = np.asarray(c.fine_edges)
    b = np.searchsorted(cum, ks, side="right")
    b = np.clip(b, 0, len(counts) - 1)
    if c.exact_fine:
        return (edges[b] + edges[b + 1]) / 2.0
    before = cum[b] - counts[b]
    frac = (ks - before + 0.5) / np.maximum(counts[b], 1.0)
    return np.asarray(edges[b] + np.clip(frac, 0, 1) * (edges[b + 1] - edges[b]))


def _quantiles(c: ColumnPlan, fine: np.ndarray, qs: list[float]) -> list[float | None]:
    n = float(fine[:-1].sum())
    if n == 0:
        return [None] * len(qs)
    h = np.array(qs) * (n - 1)  # numpy's default (linear) quantile on order statistics
    lo, hi = np.floor(h), np.ceil(h)
    vlo, vhi = _order_stats(c, fine, lo), _order_stats(c, fine, hi)
    return [float(v) for v in vlo + (h - lo) * (vhi - vlo)]


def _stats(c: ColumnPlan, blocks: Blocks, j: int) -> dict[str, Any]:
    one = blocks[f"one:{j}"]
    n = int(blocks["rows"][0])
    out: dict[str, Any] = {"count": n - int(one[-1]), "missing": int(one[-1])}
    if not c.numeric:
        counts = one[:-1]
        out["distinct"] = int((counts > 0).sum())
        return out
    fine = blocks[f"fine:{j}"]
    k, s1, s2 = (float(v) for v in blocks[f"mom:{j}"])
    span = c.upper - c.lower
    if k > 0:
        mu = s1 / FIXED_POINT / k
        var = max(s2 / FIXED_POINT / k - mu * mu, 0.0) * (k / (k - 1) if k > 1 else 0.0)
        out["mean"], out["std"] = c.lower + span * mu, span * math.sqrt(var)
    else:
        out["mean"] = out["std"] = None
    out["min"], out["q1"], out["median"], out["q3"], out["max"] = _quantiles(
        c, fine, [0.0, 0.25, 0.5, 0.75, 1.0])
    out["distinct"] = int((fine[:-1] > 0).sum()) if c.exact_fine else None
    return out


def _column(plan: EvaluationPlan, j: int, real: Blocks, syn: Blocks) -> dict[str, Any]:
    c = plan.columns[j]
    r, s = real[f"one:{j}"], syn[f"one:{j}"]
    tvd = _tvd(r, s)
    out: dict[str, Any] = {
        "name": c.name, "kind": "numeric" if c.numeric else "categorical",
        "real": _stats(c, real, j), "synthetic": _stats(c, syn, j),
        "histogram_similarity": None if tvd is None else 1.0 - tvd,
        "bins": [c.label(i) for i in range(c.size)],
        "histogram_real": r.tolist(), "histogram_synthetic": s.tolist(),
    }
    if c.numeric:
        fr, fs = real[f"fine:{j}"][:-1].astype(float), syn[f"fine:{j}"][:-1].astype(float)
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

def pearson(sums: np.ndarray) -> float | None:
    n, sx, sy, sxx, syy, sxy = (float(v) for v in sums)
    if n < 2:
        return None
    sx, sy, sxx, syy, sxy = (v / FIXED_POINT for v in (sx, sy, sxx, syy, sxy))
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


def _pair(plan: EvaluationPlan, a: int, b: int, real: Blocks, syn: Blocks) -> dict[str, Any]:
    key = f"{a},{b}"
    shape = (plan.columns[a].size, plan.columns[b].size)
    r, s = real[f"pair:{key}"], syn[f"pair:{key}"]
    tvd = _tvd(r, s)
    out: dict[str, Any] = {"columns": [plan.columns[a].name, plan.columns[b].name],
                           "contingency_similarity": None if tvd is None else 1.0 - tvd,
                           "cramers_v_real": cramers_v(r.reshape(shape)),
                           "cramers_v_synthetic": cramers_v(s.reshape(shape)),
                           "correlation_real": None, "correlation_synthetic": None,
                           "correlation_similarity": None}
    if f"pear:{key}" in real:
        rr, rs = pearson(real[f"pear:{key}"]), pearson(syn[f"pear:{key}"])
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


def _ml(plan: EvaluationPlan, real: Blocks) -> dict[str, Any]:
    assert plan.target is not None
    out: dict[str, Any] = {"target": plan.target.name, "positive_class": plan.target.positive,
                           "model": "HistGradientBoostingClassifier (scikit-learn)",
                           "f1_threshold": 0.5}
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


def _bias(plan: EvaluationPlan, real: Blocks, synthetic: pd.DataFrame) -> dict[str, Any]:
    assert plan.target is not None and plan.sensitive is not None
    g = plan.columns[plan.sensitive]
    labels = [g.label(i) for i in range(g.size)]

    def by_label(counts: np.ndarray) -> dict[str, Any]:
        c = counts.reshape(g.size, 2).astype(float)
        rates = {labels[i]: c[i, 1] / c[i].sum() for i in range(g.size) if c[i].sum() > 0}
        f = _fairness(rates)
        return {"positive_rate": rates, "demographic_parity_difference": f["difference"],
                "disparate_impact_ratio": f["ratio"], "rows": c.sum(axis=1).astype(int).tolist()}

    y = plan.target.labels(synthetic[plan.target.name])
    gs = g.codes(synthetic[g.name])
    syn_counts = np.bincount(gs[y >= 0] * 2 + y[y >= 0], minlength=g.size * 2)
    out: dict[str, Any] = {"sensitive": g.name, "groups": labels,
                           "real_data": by_label(real["bias:real"]),
                           "synthetic_data": by_label(syn_counts)}
    for m in ("trtr", "tstr"):
        c = real[f"bias:{m}"].reshape(g.size, 2, 2).astype(float)  # group, label, prediction
        if c.sum() == 0:
            out[f"{m}_model"] = None
            continue
        pred = {labels[i]: c[i, :, 1].sum() / c[i].sum() for i in range(g.size) if c[i].sum()}
        tpr = {labels[i]: c[i, 1, 1] / c[i, 1].sum() for i in range(g.size) if c[i, 1].sum()}
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
    out["membership_inference"] = ("distance-to-closest-synthetic-record attack, rows used for "
                                   "synthesis vs held-out rows (0.5: no better than a coin)")
    return out
