"""DP evaluation benchmark: which measures survive Skellam noise, at which evaluation ε.

On each bundled dataset the rows are split 80/20 (seeded); the 20% held-out rows are dealt to
5 parties. Two cheap, deterministic synthetic tables bracket the quality range a report must
tell apart: "independent" (every column resampled on its own from the training rows, the
"independent" anchor of the design notes) and "resample" (training rows drawn with
replacement, the "resampling floor"). "AER/CPS1988:all" holds out every row (28k) to show how
the noise shrinks with more held-out rows.

For each table the DP evaluation at each ε_eval adds, per party, a Skellam share of variance
`element_variances / 5` (t = 5, c = 0: the 5 shares sum to the calibrated variance) and the
coordinator's measures come from the noisy sum. A DP plan's vector is a per-row sum, so the 5
parties' vectors add up to the pooled one exactly (checked here on the first dataset), and
the benchmark computes the pooled vector once.

Reported per measure: the median over noise draws and both tables of |DP - reference|.
References: the exact report (the node's exact mode on the same held-out rows) for the TVDs,
KS and column means (the DP means come from the evaluation bins, so their |Δ| includes that
approximation); for TSTR AUC and F1, the model's unbinned scores on all held-out rows, with the
DP plan's score bins alone under "binning"; for measures only a DP plan has (held-out rows
with an identical synthetic row, their distance to the synthetic table) the same measure on
the noise-free vector (in the .jsonl, "clean"; its TVDs are debiased for noise that is not
there, so they are no reference). "gap" is |independent - resample| in the reference: the size of a
difference the report exists to show. `--explore` also runs plans holding the kinds of blocks
that DP plans leave out (3-way marginals, fixed-point sums, TSTR importance), at the weights
they had before they were dropped, to show why they were.

    python benchmarks/evaluation_dp.py [--draws 10] [--datasets ...] [--explore]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, roc_auc_score

from fedsynth.crypto.noise import seeded_generator, skellam
from fedsynth.evaluation.dp import element_variances
from fedsynth.evaluation.local import draft_schema
from fedsynth.evaluation.measures import measure
from fedsynth.evaluation.plan import DP_WEIGHTS, EvalOptions, EvaluationPlan
from fedsynth.evaluation.statistics import feature_matrix, fit_model, node_statistics
from fedsynth.simulations import datasets
from fedsynth.synthesis.schema import validate_frame

PARTIES, EPSILONS, DELTA = 5, (0.5, 1.0, 3.0), 1e-6
DATASETS = ("ISLR/Default", "AER/CPS1988", "survival/colon", "modeldata/credit_data",
            "AER/CPS1988:all")
# the kinds DP plans leave out, at the weights they had when they were measured and dropped
EXPLORE = {"tri": 0.04, "mom": 0.05, "pear": 0.04, "imp": 0.05}
MEASURES: dict[str, str] = {
    "tvd1": "mean 1-way TVD",
    "tvd2": "mean 2-way TVD",
    "ks": "mean KS complement (numeric columns)",
    "mean": "column means, mean |Δ| / real std",
    "tstr_auc": "TSTR ROC AUC",
    "tstr_f1": "TSTR F1",
    "matches": "held-out rows with an identical synthetic row",
    "dcr": "median distance of held-out rows to the synthetic table",
}
EXPLORED: dict[str, str] = {
    "tvd3": "mean 3-way TVD",
    "corr": "correlation similarity (fixed-point sums)",
    "mean": "column means from fixed-point sums, mean |Δ| / real std",
    "importance": "TSTR importance (synthetic replacement), mean |Δ| per feature",
}
DP_ONLY = ("importance", "matches", "dcr", "tstr_auc", "tstr_f1")  # vs the noise-free vector


def tables(name: str) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], str, Any]:
    """Held-out rows, the two synthetic tables, the target and the schema. "NAME:all" holds
    out every row (and draws the synthetic tables from all of them)."""
    base, _, variant = name.partition(":")
    df, info = datasets.load(base)
    rng = np.random.default_rng(0)
    hold = rng.random(len(df)) < 0.2
    test, train = df[hold].reset_index(drop=True), df[~hold].reset_index(drop=True)
    if variant == "all":
        test, train = df, df
    n = len(train)
    syn = {
        "independent": pd.DataFrame({c: train[c].sample(n, replace=True, random_state=i)
                                     .to_numpy() for i, c in enumerate(train.columns)}),
        "resample": train.sample(n, replace=True, random_state=99).reset_index(drop=True),
    }
    schema = draft_schema(df)  # public bounds and categories (a simulation convenience)
    checked = {k: validate_frame(v, schema, source=k) for k, v in syn.items()}
    return validate_frame(test, schema, source="held-out"), checked, info.target, schema


def summary(m: dict[str, Any]) -> dict[str, Any]:
    """The benchmark's numbers from one report."""
    num = [c for c in m["columns"] if c["kind"] == "numeric"]
    ks = [c["ks_complement"] for c in num if c.get("ks_complement") is not None]
    ml, p = m.get("ml_efficacy", {}), m["privacy"]
    imp = ml.get("feature_importance", {}).get("tstr")
    return {
        "tvd1": m["tvd"]["1way"], "tvd2": m["tvd"]["2way"], "tvd3": m["tvd"]["3way"],
        "ks": float(np.mean(ks)) if ks else None, "corr": m["similarity"]["correlation"],
        "tstr_auc": ml.get("tstr_auc"), "tstr_f1": ml.get("tstr_f1"),
        "matches": p.get("real_rows_with_exact_match"),
        "dcr": p.get("dcr_real_to_synthetic_median"),
        "means": [c["real"].get("mean") for c in num],
        "stds": [c["real"].get("std") for c in num],
        "importance": list(imp.values()) if imp else None,
        "floor2": (m["tvd"].get("noise_floor") or {}).get("2way"),
    }


def unbinned_tstr(plan: EvaluationPlan, syn: pd.DataFrame, test: pd.DataFrame) -> dict[str, Any]:
    """TSTR AUC and F1 on every held-out row from the model's own scores (no bins)."""
    assert plan.target is not None
    y = plan.target.labels(test[plan.target.name])
    model = fit_model(plan, syn)
    if model is None or len(np.unique(y[y >= 0])) < 2:
        return {"tstr_auc": None, "tstr_f1": None}
    s = model(feature_matrix(plan, test[y >= 0]))
    return {"tstr_auc": float(roc_auc_score(y[y >= 0], s)),
            "tstr_f1": float(f1_score(y[y >= 0], (s >= 0.5).astype(int), zero_division=0))}


def delta(dp: dict[str, Any], ref: dict[str, Any], key: str) -> float | None:
    if key == "mean":
        pairs = [(a, b, s) for a, b, s in zip(dp["means"], ref["means"], ref["stds"],
                                              strict=True)
                 if a is not None and b is not None and s]
        return float(np.mean([abs(a - b) / s for a, b, s in pairs])) if pairs else None
    if key == "importance":
        if dp["importance"] is None or ref["importance"] is None:
            return None
        return float(np.mean(np.abs(np.subtract(dp["importance"], ref["importance"]))))
    a, b = dp[key], ref[key]
    return None if a is None or b is None else abs(float(a) - float(b))


def run(name: str, draws: int, check_parties: bool, config: str) -> list[dict[str, Any]]:
    test, syns, target, schema = tables(name)
    rows = []
    for label, syn in syns.items():
        t0 = time.perf_counter()
        ex_plan = EvaluationPlan.build(schema, syn, EvalOptions(target=target))
        exact = summary(measure(ex_plan, node_statistics(ex_plan, syn, train=None, test=test),
                                syn))
        exact.update(unbinned_tstr(ex_plan, syn, test))
        plans = {e: EvaluationPlan.build(schema, syn, EvalOptions(target=target, epsilon=e,
                                                                  delta=DELTA))
                 for e in EPSILONS}
        first = plans[EPSILONS[0]]  # the blocks do not depend on ε, only the noise does
        vector = node_statistics(first, syn, train=None, test=test)
        if check_parties:
            owner = np.random.default_rng([0, 99]).integers(0, PARTIES, len(test))
            parts = sum(node_statistics(first, syn, train=None,
                                        test=test[owner == i].reset_index(drop=True))
                        for i in range(PARTIES))
            assert np.array_equal(parts, vector), "parties' DP vectors must add to the pooled"
        clean = summary(measure(first, vector, syn, replicates=0))
        rows.append({"config": config, "dataset": name, "synthetic": label, "epsilon": None,
                     "held_out": len(test), "vector": first.length, "exact": exact,
                     "clean": clean})
        for e, plan in plans.items():
            var = element_variances(plan)
            rng = seeded_generator([int(e * 10), len(test)])  # a benchmark: seeded noise
            got = []
            for _ in range(draws):
                noisy = vector + sum(skellam(var / PARTIES, plan.length, rng)
                                     for _ in range(PARTIES))
                got.append(summary(measure(plan, noisy, syn)))
            keys = {**MEASURES, **EXPLORED}
            deltas = {k: [delta(g, clean if k in DP_ONLY else exact, k) for g in got]
                      for k in keys}
            one = plan.split(np.arange(plan.length))["one:0"][0]
            rows.append({
                "config": config, "dataset": name, "synthetic": label, "epsilon": e,
                "held_out": len(test), "abs_delta": {k: _median(v) for k, v in deltas.items()},
                "noise_floor_2way": _median([g["floor2"] for g in got]),
                "noise_sd_one_count": float(np.sqrt(var[one]))})
        print(f"{config}: {name} / {label}: {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def _median(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return float(statistics.median(vals)) if vals else None


def _fmt(x: float | None, key: str) -> str:
    if x is None:
        return "–"
    return f"{x:.0f}" if key == "matches" else f"{x:.3f}"


def table(rows: list[dict[str, Any]], measures: dict[str, str], extra: bool) -> str:
    out = []
    for name in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == name]
        base = {r["synthetic"]: r for r in mine if r["epsilon"] is None}
        out += [f"### {name} ({mine[0]['held_out']:,} held-out rows, {PARTIES} parties)", "",
                "| measure | reference (indep. / resample) | gap | binning | "
                + " | ".join(f"ε={e:g}" for e in EPSILONS) + " |",
                "|---|---|---|---|" + "---|" * len(EPSILONS)]
        for key, label in measures.items():
            ind, res = base["independent"]["exact"], base["resample"]["exact"]
            if key in ("matches", "dcr"):
                ind, res = base["independent"]["clean"], base["resample"]["clean"]
            shown, gap = "", None
            if key not in ("mean", "importance") and ind[key] is not None \
                    and res[key] is not None:
                shown = f"{_fmt(ind[key], key)} / {_fmt(res[key], key)}"
                gap = abs(ind[key] - res[key])
            binning = None
            if key in ("tstr_auc", "tstr_f1"):
                binning = _median([delta(b["clean"], b["exact"], key) for b in base.values()])
            cells = [_fmt(_median([r["abs_delta"][key] for r in mine if r["epsilon"] == e]),
                          key) for e in EPSILONS]
            out.append(f"| {label} | {shown} | {_fmt(gap, key)} | {_fmt(binning, key)} | "
                       + " | ".join(cells) + " |")
        if extra:
            floors = [_median([r["noise_floor_2way"] for r in mine if r["epsilon"] == e])
                      for e in EPSILONS]
            sds = [_median([r["noise_sd_one_count"] for r in mine if r["epsilon"] == e])
                   for e in EPSILONS]
            out += ["| 2-way TVD noise floor (in the report) | | | | "
                    + " | ".join(_fmt(f, "") for f in floors) + " |",
                    "| noise sd of one count (1-way cell) | | | | "
                    + " | ".join(f"{s:.1f}" if s else "–" for s in sds) + " |"]
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=10, help="noise draws per ε and table")
    ap.add_argument("--datasets", nargs="*", default=list(DATASETS))
    ap.add_argument("--explore", action="store_true",
                    help="also measure the kinds of blocks DP plans leave out")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for i, name in enumerate(args.datasets):
        rows += run(name, args.draws, i == 0, "default")
    text = (f"# DP evaluation: |DP - reference|, median of {args.draws} noise draws x 2 "
            f"synthetic tables, δ={DELTA:g}\n\nDP plans as shipped (weights "
            f"{ {k: v for k, v in DP_WEIGHTS.items() if v} }).\n\n"
            + table(rows, MEASURES, True))
    if args.explore:
        saved = dict(DP_WEIGHTS)
        DP_WEIGHTS.update(EXPLORE)
        more: list[dict[str, Any]] = []
        for name in args.datasets:
            if ":" not in name:
                more += run(name, args.draws, False, "explore")
        DP_WEIGHTS.clear()
        DP_WEIGHTS.update(saved)
        rows += more
        text += ("\n## Left out of DP plans: what they give when included\n\nThe same, with "
                 f"these kinds of blocks added at weights {EXPLORE} (the others renormalised)."
                 "\n\n" + table(more, EXPLORED, False))
    text += f"\nTotal {time.perf_counter() - t0:.0f} s on this machine.\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "evaluation_dp.md").write_text(text)
    with (args.out / "evaluation_dp.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps(r, default=float) + "\n")


if __name__ == "__main__":
    main()
