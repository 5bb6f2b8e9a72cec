"""Oversampling a rare class from the saved model: does it help a classifier, and does it keep
the class's own distribution? Printed as a markdown table.

ISLR/Default (target `default`, 3.3% Yes), ε=1, δ=1e-6, 5 parties (iid), 20% holdout cut
first. Classifiers are trained on (a) the real train rows, (b) the job's plain synthetic
table, (c) a table of the same size drawn with `class_ratio=default=Yes:0.5`, (d) the plain
table plus rows drawn with `default=Yes` until both classes have as many rows (about twice the
rows of (c)), (e) as (c) with as many rows as (d), and scored on
the real held-out rows: ROC AUC, PR AUC (average precision), and recall at precision 0.5 (the
largest recall of any threshold whose precision is at least 0.5; 0 if none reaches it). Two
classifiers: logistic regression (standardized numbers, one-hot categories) and
HistGradientBoosting (one-hot categories). The class's distribution: for each other column,
the TVD between P(column | default=Yes) of the synthetic Yes rows and of the real train Yes
rows (numbers in the evaluation's bins fitted on the real train table); the real held-out Yes
rows against the real train Yes rows give the sampling-noise level of the same measure.
Drawing (c) and (d) is post-processing of the same job: no privacy cost beyond its ε.

    python benchmarks/oversampling.py [--seeds 3]      # runs, then prints the table
    python benchmarks/oversampling.py --report         # the table from benchmarks/results/
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from _support import run_config

from fedsynth.evaluation.metrics import EvaluationBinning, marginal_tvd
from fedsynth.simulations import datasets, partition
from fedsynth.simulations.run import simulate

DATASET, TARGET, POSITIVE = "ISLR/Default", "default", "Yes"
PRECISION = 0.5
SETS = ("real", "plain", "ratio", "plus_conditional", "ratio_large")
LABELS = {"real": "(a) real train rows", "plain": "(b) plain synthetic",
          "ratio": "(c) synthetic, class ratio Yes:0.5", "plus_conditional":
          "(d) plain + conditional rows default=Yes", "ratio_large":
          "(e) class ratio Yes:0.5, as many rows as (d)"}


def _design(df: pd.DataFrame, ref: pd.DataFrame) -> np.ndarray:
    """Numbers as they are, categories one-hot with the real table's categories."""
    cols = []
    for c in ref.columns:
        if c == TARGET:
            continue
        if pd.api.types.is_numeric_dtype(ref[c]):
            cols.append(df[c].to_numpy(dtype=float)[:, None])
        else:
            cats = sorted(ref[c].dropna().unique())
            cols.append(np.stack([(df[c] == v).to_numpy(dtype=float) for v in cats], axis=1))
    return np.concatenate(cols, axis=1)


def _scores(train: pd.DataFrame, test: pd.DataFrame, ref: pd.DataFrame, kind: str,
            seed: int) -> dict[str, float]:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = (train[TARGET] == POSITIVE).to_numpy()
    yt = (test[TARGET] == POSITIVE).to_numpy()
    if y.all() or not y.any():
        return {"roc": float("nan"), "pr": float("nan"), "recall": float("nan")}
    model = (make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
             if kind == "logistic" else HistGradientBoostingClassifier(random_state=seed))
    model.fit(_design(train, ref), y)
    p = model.predict_proba(_design(test, ref))[:, 1]
    prec, rec, _ = precision_recall_curve(yt, p)
    ok = prec >= PRECISION
    return {"roc": float(roc_auc_score(yt, p)), "pr": float(average_precision_score(yt, p)),
            "recall": float(rec[ok].max()) if ok.any() else 0.0}


def _conditional_tvd(real: pd.DataFrame, syn: pd.DataFrame) -> dict[str, float]:
    """Per column: TVD of P(column | target=positive), synthetic vs real, on real's bins."""
    out = {}
    ry, sy = real[real[TARGET] == POSITIVE], syn[syn[TARGET] == POSITIVE]
    for c in real.columns:
        if c == TARGET:
            continue
        binning = EvaluationBinning.fit(real[[c]])
        out[c] = marginal_tvd(ry[[c]], sy[[c]], way=1, binning=binning)
    return out


def one(seed: int, parties: int, epsilon: float, delta: float) -> dict:
    schema, train, hold, _ = datasets.benchmark_split(DATASET, seed)
    tables = partition.split(train, parties, "iid", target=TARGET, seed=seed)
    res = simulate(parties=tables, schema=schema, epsilon=epsilon, delta=delta, holdout=0.0,
                   seed=seed, engine="local", evaluate=False)
    assert res.model is not None
    plain = res.synthetic
    n = len(plain)
    ratio = res.model.sample(n, seed=seed + 1000, class_ratio=[f"{TARGET}={POSITIVE}:0.5"])
    yes = int((plain[TARGET] == POSITIVE).sum())
    extra = res.model.sample(max(1, n - 2 * yes), seed=seed + 2000,
                             conditions=[f"{TARGET}={POSITIVE}"])
    large = res.model.sample(n + len(extra), seed=seed + 3000,
                             class_ratio=[f"{TARGET}={POSITIVE}:0.5"])
    sets = {"real": train, "plain": plain, "ratio": ratio,
            "plus_conditional": pd.concat([plain, extra], ignore_index=True),
            "ratio_large": large}
    row: dict = {"seed": seed, "rows": {k: len(v) for k, v in sets.items()},
                 "epsilon": epsilon, "parties": parties,
                 "epsilon_spent": res.privacy["epsilon_spent"], "rows_synthetic": n,
                 "rows_conditional": len(extra)}
    for name, df in sets.items():
        row[f"{name}_share"] = float((df[TARGET] == POSITIVE).mean())
        for kind in ("logistic", "hgb"):
            for k, v in _scores(df, hold, train, kind, seed).items():
                row[f"{name}_{kind}_{k}"] = v
    row["tvd_given_yes"] = {
        "plain": _conditional_tvd(train, plain), "ratio": _conditional_tvd(train, ratio),
        "conditional_rows": _conditional_tvd(train, extra),
        "real_heldout": _conditional_tvd(train, hold)}
    return row


def table(rows: list[dict]) -> str:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    out = [f"ISLR/Default, ε={rows[0]['epsilon']:g}, {rows[0]['parties']} parties, medians over "
           f"{len(rows)} seeds; tested on the real held-out rows; recall at precision "
           f"{PRECISION}", "",
           "| training rows | rows | Yes share | LR ROC AUC | LR PR AUC | LR recall@P0.5 | "
           "HGB ROC AUC | HGB PR AUC | HGB recall@P0.5 |", "|---|---|---|---|---|---|---|---|---|"]
    for s in SETS:
        rows_n = statistics.median(r["rows"][s] for r in rows)
        out.append(f"| {LABELS[s]} | {rows_n:,.0f} | {med(f'{s}_share'):.3f} | " + " | ".join(
            f"{med(f'{s}_{k}_{m}'):.3f}" for k in ("logistic", "hgb")
            for m in ("roc", "pr", "recall")) + " |")
    cols = list(rows[0]["tvd_given_yes"]["plain"])
    out += ["", "TVD of P(column | default=Yes) against the real train rows (lower is better)",
            "", "| rows | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    names = {"plain": "plain synthetic, its Yes rows", "ratio": "class ratio Yes:0.5, its Yes rows",
             "conditional_rows": "conditional rows default=Yes",
             "real_heldout": "real held-out Yes rows (sampling noise)"}
    for k, label in names.items():
        out.append(f"| {label} | " + " | ".join(
            f"{statistics.median(r['tvd_given_yes'][k][c] for r in rows):.3f}" for c in cols)
            + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--parties", type=int, default=5)
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--delta", type=float, default=1e-6)
    ap.add_argument("--jsonl", type=Path, default=Path("benchmarks/results/oversampling.jsonl"),
                    help="results, one JSON row per line; seeds already there are not re-run")
    ap.add_argument("--report", action="store_true", help="only print the table")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:  # one seed, in its own process (jax's compiled code stays bounded)
        logging.basicConfig(level=logging.WARNING)
        from fedsynth import progress

        progress.show("off")
        print(json.dumps(one(args.one, args.parties, args.epsilon, args.delta)))
        return
    done = []
    if args.jsonl.exists():
        done = [json.loads(x) for x in args.jsonl.read_text().splitlines() if x.strip()]
    have = {r["seed"] for r in done if r["epsilon"] == args.epsilon
            and r["parties"] == args.parties}
    if not args.report:
        args.jsonl.parent.mkdir(parents=True, exist_ok=True)
        for seed in range(args.seeds):
            if seed in have:
                continue
            row = run_config(__file__, [str(seed), "--parties", str(args.parties),
                                        "--epsilon", str(args.epsilon), "--delta",
                                        str(args.delta)], args.jsonl, f"seed {seed}")
            if row is None:
                continue
            done.append(row)
            print(f"seed {seed} done", file=sys.stderr, flush=True)
    rows = [r for r in done if r["epsilon"] == args.epsilon and r["parties"] == args.parties]
    print(table(rows))


if __name__ == "__main__":
    main()
