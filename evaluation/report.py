"""report.html: one self-contained page (inline SVG plots, no scripts, no external files)."""

from __future__ import annotations

import html
import io
import math
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, searchable
REAL, SYN = "#4c72b0", "#dd8452"


def render(metrics: dict[str, Any], *, title: str = "fedsynth evaluation report",
           privacy: dict[str, Any] | None = None,
           runs: Sequence[dict[str, Any]] = ()) -> str:
    """The page for one evaluation; `runs` (several ε) adds a privacy-utility curve."""
    parts = [f"<h1>{_e(title)}</h1>", _summary(metrics, privacy)]
    parts += [_similarity(metrics), _pairs(metrics)]
    if "ml_efficacy" in metrics:
        parts.append(_ml(metrics["ml_efficacy"]))
    if "bias" in metrics:
        parts.append(_bias(metrics["bias"]))
    parts.append(_privacy(metrics["privacy"], privacy, metrics.get("ledger_epsilon_per_party")))
    if metrics.get("evaluation", {}).get("dp"):
        parts.append(_not_released(metrics["evaluation"]))
    if len({r.get("epsilon") for r in runs}) >= 2:
        parts.append(_curve(runs))
    parts.append(_scalability(metrics))
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>{body}</body></html>\n")


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
.cards{display:flex;flex-wrap:wrap;gap:1em}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:10em;background:#fafafa}
.card b{display:block;font-size:1.5em}
.grid{display:flex;flex-wrap:wrap;gap:.5em} .grid svg{width:280px;height:auto}
.wide svg{max-width:100%;height:auto} .note{color:#666;font-size:.85em}
"""


def _e(x: object) -> str:
    return html.escape(str(x))


def _f(x: object, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return f"{int(x):,}"
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.{digits}g}" if abs(float(x)) >= 1e4 or 0 < abs(float(x)) < 1e-3 \
            else f"{float(x):.{digits}f}"
    return _e(x)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_f(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _card(label: str, value: object, note: str = "") -> str:
    return f"<div class=card>{_e(label)}<b>{_f(value)}</b><span class=note>{_e(note)}</span></div>"


def _summary(m: dict[str, Any], privacy: dict[str, Any] | None) -> str:
    ev = m.get("evaluation", {})
    dp = bool(ev.get("dp"))
    unc = m.get("uncertainty", {})
    floor = m["tvd"].get("noise_floor") or {}
    cards = [_card("real rows", m["rows_real"]), _card("synthetic rows", m["rows_synthetic"]),
             _card("2-way TVD", m["tvd"]["2way"], "lower is better" + (
                 f"; noise alone shows {_f(floor.get('2way'))}" if dp else "")),
             _card("histogram similarity", m["similarity"]["histogram"], "1 is best" + (
                 f"; ± {_f(unc.get('similarity.histogram'))}" if dp else ""))]
    if "ml_efficacy" in m:
        ml = m["ml_efficacy"]
        if dp:
            cards.append(_card("TSTR AUC", ml["tstr_auc"],
                               f"± {_f(unc.get('ml_efficacy.tstr_auc'))}"))
        else:
            cards.append(_card("TSTR / TRTR AUC",
                               f"{_f(ml['tstr_auc'])} / {_f(ml['trtr_auc'])}"))
    p = m["privacy"]
    if dp:
        cards.append(_card("held-out rows with a synthetic twin",
                           p.get("real_exact_match_rate"), "share; 0 is best"))
    else:
        cards.append(_card("exact matches", p["exact_match_rate"], "share; 0 is best"))
    if p.get("membership_inference_auc") is not None:
        cards.append(_card("membership attack AUC", p["membership_inference_auc"], "0.5 is best"))
    if privacy:
        cards.append(_card("ε spent", privacy.get("epsilon_spent"),
                           f"δ={privacy.get('delta')}"))
    mode = ev.get("mode", "local")
    note = ("Federated evaluation: every party scored the synthetic table against its own rows; "
            "only the sum over parties of each statistic reached the coordinator."
            if mode == "federated" else "Local evaluation against the given real table.")
    if dp:
        note += (f" Differentially private evaluation (ε={ev.get('epsilon')}, "
                 f"δ={ev.get('delta')} per held-out row): every statistic carried noise, "
                 "numbers are rounded to their noise, ± is a noise standard deviation, and "
                 "what a DP evaluation does not release is listed at the end.")
    return f"<p class=note>{_e(note)}</p><div class=cards>{''.join(cards)}</div>"


def _not_released(ev: dict[str, Any]) -> str:
    rows = [[k, v] for k, v in (ev.get("not_released") or {}).items()]
    return ("<h2>Not released by a DP evaluation</h2>" + _table(["measure", "why"], rows)
            + "<p class=note>Noise standard deviation of one count, by kind of statistic: "
            + _e(", ".join(f"{k} {v}" for k, v in (ev.get("noise_sd_per_count") or {}).items()))
            + ".</p>")


def _hist_plot(col: dict[str, Any]) -> str:
    r = np.asarray(col["histogram_real"], float)
    s = np.asarray(col["histogram_synthetic"], float)
    keep = (r + s) > 0
    labels = [lb for lb, k in zip(col["bins"], keep, strict=True) if k]
    r, s = r[keep] / max(r.sum(), 1), s[keep] / max(s.sum(), 1)
    fig = Figure(figsize=(4, 2.6))
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    ax.bar(x - 0.2, r, 0.4, label="real", color=REAL)
    ax.bar(x + 0.2, s, 0.4, label="synthetic", color=SYN)
    ax.set_title(str(col["name"]), fontsize=10)
    ax.set_xticks(x, [lb[:12] for lb in labels], rotation=70, fontsize=6)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=7)
    return _svg(fig)


def _similarity(m: dict[str, Any]) -> str:
    rows, cats = [], []
    for c in m["columns"]:
        for side in ("real", "synthetic"):
            st = c[side]
            rows.append([c["name"] if side == "real" else "", side, st.get("count"),
                         st.get("missing"), st.get("distinct"), st.get("mean"), st.get("std"),
                         st.get("min"), st.get("q1"), st.get("median"), st.get("q3"),
                         st.get("max")])
        if c["kind"] == "categorical":
            top = sorted(c["categories"], key=lambda v: -v["real"])[:12]
            cats.append(f"<h3>{_e(c['name'])}</h3>" + _table(
                ["category", "real", "synthetic"], [[v["value"], v["real"], v["synthetic"]]
                                                    for v in top]))
    sim = _table(["column", "histogram similarity", "KS complement"],
                 [[c["name"], c["histogram_similarity"], c.get("ks_complement")]
                  for c in m["columns"]])
    t = m["tvd"]
    floor, unc = t.get("noise_floor"), m.get("uncertainty", {})
    if floor is None:
        tvd = _table(["measure", "value"], [["mean 1-way TVD", t["1way"]],
                                            ["mean 2-way TVD", t["2way"]],
                                            [f"mean 3-way TVD ({t['3way_marginals']} "
                                             "marginals)", t["3way"]]])
    else:
        tvd = _table(["measure", "value", "± (noise sd)", "noise alone shows"],
                     [[f"mean {w[0]}-way TVD", t[w], unc.get(f"tvd.{w}"), floor.get(w)]
                      for w in ("1way", "2way", "3way")])
    plots = "".join(_hist_plot(c) for c in m["columns"])
    return (
        "<h2>Statistical similarity</h2>" + tvd
        + f"<p class=note>Binning: {_e(t['binning'])}. Similarity = 1 − TVD of the column's "
        "histogram; KS complement = 1 − the largest gap between the CDFs (fine bins).</p>" + sim
        + "<h3>Distributions, real vs synthetic</h3><div class=grid>" + plots + "</div>"
        + "<h3>Column statistics, side by side</h3><p class=note>" + (
            "DP evaluation: the real rows' quartiles come from the evaluation bins, their mean "
            "and std from the evaluation bins with the synthetic values' mean in each bin; "
            "minimum, maximum and distinct counts are not released."
            if m.get("evaluation", {}).get("dp") else
            "Quantiles, minimum and maximum come from fine bins (exact for integer columns with "
            "a small range); distinct counts are given only where they are exact.") + "</p>"
        + _table(["column", "table", "count", "missing", "distinct", "mean", "std", "min", "q1",
                  "median", "q3", "max"], rows)
        + ("<h3>Category counts (most frequent 12)</h3>" + "".join(cats) if cats else ""))


def _heatmaps(m: dict[str, Any]) -> str:
    names = [c["name"] for c in m["columns"]]
    d = len(names)
    mats = {k: np.full((d, d), np.nan) for k in ("real", "synthetic")}
    for p in m["pairs"]:
        a, b = names.index(p["columns"][0]), names.index(p["columns"][1])
        for k in mats:
            v = p[f"cramers_v_{k}"]
            mats[k][a, b] = mats[k][b, a] = np.nan if v is None else v
    for k in mats:
        np.fill_diagonal(mats[k], 1.0)
    fig = Figure(figsize=(4 * 3, 3.6))
    for i, (label, mat) in enumerate((("real", mats["real"]), ("synthetic", mats["synthetic"]),
                                      ("|real − synthetic|",
                                       np.abs(mats["real"] - mats["synthetic"])))):
        ax = fig.add_subplot(1, 3, i + 1)
        im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis")
        ax.set_title(label, fontsize=10)
        ax.set_xticks(range(d), [n[:10] for n in names], rotation=70, fontsize=7)
        ax.set_yticks(range(d), [n[:10] for n in names], fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046)
    return _svg(fig)


def _pairs(m: dict[str, Any]) -> str:
    pairs = sorted(m["pairs"], key=lambda p: p["contingency_similarity"] or 0)
    rows = [[" ~ ".join(p["columns"]), p["contingency_similarity"], p["cramers_v_real"],
             p["cramers_v_synthetic"], p["correlation_real"], p["correlation_synthetic"],
             p["correlation_similarity"]] for p in pairs]
    s = m["similarity"]
    return ("<h2>Pairs of columns</h2>"
            + _table(["mean over pairs", "value"],
                     [["contingency similarity (1 − 2-way TVD)", s["contingency"]],
                      ["correlation similarity (1 − |Δr|/2, numeric pairs)", s["correlation"]]])
            + "<h3>Association (Cramér's V on the evaluation bins)</h3><div class=wide>"
            + (_heatmaps(m) if m["pairs"] else "") + "</div>"
            + "<details open><summary>every pair, least similar first</summary>"
            + _table(["pair", "contingency similarity", "Cramér's V real", "Cramér's V synth",
                      "Pearson r real", "Pearson r synth", "correlation similarity"], rows)
            + "</details>")


def _ml(ml: dict[str, Any]) -> str:
    rows = [["TSTR (train synthetic, test real)", ml["tstr_auc"], ml["tstr_f1"],
             ml["tstr_parties"]],
            ["TRTR (train real, test real)", ml["trtr_auc"], ml["trtr_f1"], ml["trtr_parties"]]]
    why = "".join(f"<p class=note>{_e(k)}: {_e(v)}</p>"
                  for k, v in (ml.get("not_released") or {}).items())
    imp = ml["feature_importance"]
    plot = ""
    if len(imp) == 2:
        names = list(imp["trtr"])
        fig = Figure(figsize=(6, 0.4 * len(names) + 1))
        ax = fig.add_subplot()
        y = np.arange(len(names))
        ax.barh(y - 0.2, [imp["trtr"][n] for n in names], 0.4, label="TRTR", color=REAL)
        ax.barh(y + 0.2, [imp["tstr"][n] for n in names], 0.4, label="TSTR", color=SYN)
        ax.set_yticks(y, names, fontsize=8)
        ax.set_xlabel("drop in AUC when the column is shuffled", fontsize=8)
        ax.legend(fontsize=8)
        plot = "<div class=wide>" + _svg(fig) + "</div>"
    return (f"<h2>Machine-learning efficacy</h2><p>Target <b>{_e(ml['target'])}</b>, positive "
            f"class <b>{_e(ml['positive_class'])}</b>; {_e(ml['model'])}; F1 at threshold "
            f"{ml['f1_threshold']}.</p>"
            + _table(["model", "ROC AUC", "F1", "parties"], rows)
            + "<p>Feature-importance agreement (Spearman rank correlation of "
            f"{_e(ml['importance'])}): <b>{_f(ml['feature_importance_agreement'])}</b></p>" + plot
            + "<p class=note>In a federation TRTR is each party's own model on its own rows (no "
            "party holds the pooled rows); the parties' score histograms are summed.</p>" + why)


def _bias(b: dict[str, Any]) -> str:
    rows = []
    for label, key in (("real data (labels)", "real_data"), ("synthetic data (labels)",
                                                              "synthetic_data"),
                       ("TRTR model (predictions)", "trtr_model"),
                       ("TSTR model (predictions)", "tstr_model")):
        v = b.get(key)
        if v:
            rows.append([label, v["demographic_parity_difference"],
                         v.get("equal_opportunity_difference"), v["disparate_impact_ratio"]])
    return (f"<h2>Bias</h2><p>Sensitive attribute <b>{_e(b['sensitive'])}</b>; groups "
            f"{_e(', '.join(b['groups']))}.</p>"
            + _table(["", "demographic parity difference", "equal opportunity difference",
                      "disparate impact ratio"], rows)
            + "<p class=note>Differences: largest minus smallest positive (prediction, true "
            "positive) rate across groups, 0 is parity; ratio: smallest over largest, 1 is "
            "parity.</p>")


def _privacy(p: dict[str, Any], privacy: dict[str, Any] | None,
             ledgers: dict[str, float] | None = None) -> str:
    if "real_rows_with_exact_match" in p:
        return _dp_privacy(p, privacy, ledgers)
    rows = [["exact matches (synthetic rows equal to a real row)", p["exact_matches"]],
            ["exact-match rate", p["exact_match_rate"]],
            ["median distance to closest real row, synthetic rows", p["dcr_synthetic_median"]],
            ["median distance to closest real row, held-out real rows", p["dcr_real_median"]],
            ["DCR ratio (synthetic / real; ≥ 1 is good)", p["dcr_ratio"]],
            ["neighbours' privacy: share of synthetic rows closer to a real row than 95% of "
             "real rows are (0.05 expected)", p["closer_than_real_share"]],
            ["membership-inference attack AUC (0.5 is ideal)", p["membership_inference_auc"]]]
    edges = np.asarray(p["dcr_bin_edges"])
    fig = Figure(figsize=(6, 2.6))
    ax = fig.add_subplot()
    mids = np.sqrt(np.maximum(edges[:-1], 1e-5) * edges[1:])
    for key, label, color in (("dcr_histogram_real", "held-out real rows", REAL),
                              ("dcr_histogram_synthetic", "synthetic rows", SYN)):
        h = np.asarray(p[key], float)
        if h.sum():
            ax.plot(mids, np.cumsum(h) / h.sum(), label=label, color=color)
    ax.set_xscale("log")
    ax.set_xlabel("distance to closest real row (Gower)", fontsize=8)
    ax.set_ylabel("share of rows", fontsize=8)
    ax.legend(fontsize=8)
    return ("<h2>Privacy</h2>" + _table(["measure", "value"], rows)
            + f"<p class=note>{_e(p['distance'])}. {_e(p['membership_inference'])}.</p>"
            + "<div class=wide>" + _svg(fig) + "</div>" + _spent(privacy, ledgers))


def _dp_privacy(p: dict[str, Any], privacy: dict[str, Any] | None,
                ledgers: dict[str, float] | None) -> str:
    rows = [["held-out real rows equal to a synthetic row", p["real_rows_with_exact_match"]],
            ["share of held-out real rows equal to a synthetic row", p["real_exact_match_rate"]],
            ["median distance of held-out real rows to the closest synthetic row",
             p["dcr_real_to_synthetic_median"]]]
    rows += [[k, f"not released: {v}"] for k, v in (p.get("not_released") or {}).items()]
    edges = np.asarray(p["dcr_bin_edges"])
    fig = Figure(figsize=(6, 2.6))
    ax = fig.add_subplot()
    mids = np.sqrt(np.maximum(edges[:-1], 1e-5) * edges[1:])
    h = np.asarray(p["dcr_histogram_real_to_synthetic"], float)
    if h.sum():
        ax.plot(mids, np.cumsum(h) / h.sum(), label="held-out real rows", color=REAL)
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("distance to closest synthetic row (Gower)", fontsize=8)
    ax.set_ylabel("share of rows", fontsize=8)
    return ("<h2>Privacy</h2>" + _table(["measure", "value"], rows)
            + f"<p class=note>{_e(p['distance'])}. {_e(p['membership_inference'])}.</p>"
            + "<div class=wide>" + _svg(fig) + "</div>" + _spent(privacy, ledgers))


def _spent(privacy: dict[str, Any] | None, ledgers: dict[str, float] | None) -> str:
    dp = ""
    if privacy:
        # as each party reported from its own ledger, else as the coordinator accounted
        per = ledgers or privacy.get("epsilon_spent_per_party_ledger") or privacy.get(
            "epsilon_asked_of_party") or {}
        dp = ("<h3>Differential privacy actually spent</h3>"
              + _table(["", "ε", "δ"], [["job (accountant)", privacy.get("epsilon_spent"),
                                          privacy.get("delta")]]
                       + [[f"party {k} (its ledger)", v, privacy.get("delta")]
                          for k, v in per.items()])
              + f"<p class=note>{_e(privacy.get('accounting', ''))}</p>")
    return dp


def _curve(runs: Sequence[dict[str, Any]]) -> str:
    runs = sorted(runs, key=lambda r: r["epsilon"])
    eps = [r["epsilon"] for r in runs]
    fig = Figure(figsize=(6, 3))
    ax = fig.add_subplot()
    ax.plot(eps, [r["tvd_2way"] for r in runs], "o-", color=REAL, label="2-way TVD")
    ax.set_xscale("log")
    ax.set_xlabel("ε", fontsize=9)
    ax.set_ylabel("2-way TVD (lower is better)", fontsize=8)
    if all(r.get("tstr_auc") is not None for r in runs):
        ax2 = ax.twinx()
        ax2.plot(eps, [r["tstr_auc"] for r in runs], "s--", color=SYN, label="TSTR AUC")
        ax2.set_ylabel("TSTR AUC", fontsize=8)
        ax2.legend(fontsize=8, loc="center right")
    ax.legend(fontsize=8, loc="upper right")
    return ("<h2>Privacy-utility curve</h2><div class=wide>" + _svg(fig) + "</div>"
            + _table(["ε", "2-way TVD", "TSTR AUC", "membership attack AUC", "source"],
                     [[r["epsilon"], r["tvd_2way"], r.get("tstr_auc"),
                       r.get("membership_inference_auc"), r.get("source", "")] for r in runs]))


def _scalability(m: dict[str, Any]) -> str:
    steps = m.get("steps") or []
    ev = m.get("evaluation", {})
    rows = [[s["step"], s["seconds"], s.get("peak_rss_mb"), s.get("rows"),
             s.get("rows_per_second")] for s in steps]
    for k, v in (ev.get("seconds") or {}).items():
        rows.append([f"evaluation: {k}", v, None, None, None])
    return ("<h2>Scalability</h2>" + _table(["step", "seconds", "peak memory (MB)", "rows",
                                             "rows per second"], rows)
            + "<p class=note>Peak memory is the coordinator process's resident set during the "
            "step; the parties' processes are not included.</p>")
