"""Evaluation benchmark: time of a full evaluation of 100k synthetic rows against 20k real rows.

Real rows: 20,000 rows of AER/CPS1988 (7 columns, target parttime, sensitive ethnicity), with
8,000 more as the synthesizer's training rows (for the membership-inference measure). The
synthetic table: 100,000 rows drawn with replacement from the training rows, with numeric
columns jittered (so exact matches are rare, as in a real synthetic table). Every measure of
the report is computed (3-way marginals: 35 of 35). Two modes in one run:

- local: `evaluate_tables` (one holder of all real rows), from tables to measures;
- federated: 5 parties, each with a fifth of the real and training rows, computing their
  statistics one after the other (a real federation runs them in parallel: the "slowest
  party" column), then the coordinator's measures on the summed vector.

Medians over --repeats runs, each in this process; report.html rendering is timed separately.

    python benchmarks/evaluation.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fedsynth.evaluation.local import draft_schema, evaluate_tables
from fedsynth.evaluation.measures import measure
from fedsynth.evaluation.plan import EvalOptions, EvaluationPlan
from fedsynth.evaluation.report import render
from fedsynth.evaluation.statistics import node_statistics
from fedsynth.simulations import datasets
from fedsynth.synthesis.schema import validate_frame

REAL_ROWS, TRAIN_ROWS, SYN_ROWS, PARTIES = 20_000, 8_000, 100_000, 5
OPTIONS = EvalOptions(target="parttime", sensitive="ethnicity", seed=0)


def tables() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    df, _ = datasets.load("AER/CPS1988")
    df = df.sample(frac=1.0, random_state=0).reset_index(drop=True)
    real, train = df.iloc[:REAL_ROWS], df.iloc[REAL_ROWS:REAL_ROWS + TRAIN_ROWS]
    rng = np.random.default_rng(1)
    syn = train.sample(SYN_ROWS, replace=True, random_state=2).reset_index(drop=True)
    for col in ("wage", "education", "experience"):
        lo, hi = df[col].min(), df[col].max()
        noise = rng.normal(0, 0.02 * df[col].std(), len(syn))
        jittered = np.clip(syn[col].to_numpy(dtype=float) + noise, lo, hi)
        syn[col] = np.rint(jittered) if col != "wage" else jittered
    return real.reset_index(drop=True), train.reset_index(drop=True), syn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    real, train, syn = tables()
    schema = draft_schema(pd.concat([real, train, syn], ignore_index=True))
    runs: list[dict[str, float]] = []
    for r in range(args.repeats):
        t = time.perf_counter()
        m = evaluate_tables(real, syn, train=train, schema=schema, options=OPTIONS)
        local = time.perf_counter() - t
        t = time.perf_counter()
        render(m)
        report = time.perf_counter() - t
        # federated: the same measures from five parties' summed vectors
        t = time.perf_counter()
        s = validate_frame(syn, schema, source="synthetic")
        plan = EvaluationPlan.build(schema, s, OPTIONS)
        plan_s = time.perf_counter() - t
        party_s, total = [], np.zeros(plan.length, dtype=np.int64)
        for p in range(PARTIES):
            t = time.perf_counter()
            mine_real = validate_frame(real.iloc[p::PARTIES], schema, source="real")
            mine_train = validate_frame(train.iloc[p::PARTIES], schema, source="train")
            total += node_statistics(plan, s, train=mine_train, test=mine_real)
            party_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        fed = measure(plan, total, s)
        measure_s = time.perf_counter() - t
        runs.append({"local_total": local, "report_html": report, "fed_plan": plan_s,
                     "fed_slowest_party": max(party_s), "fed_all_parties": sum(party_s),
                     "fed_measures": measure_s,
                     "fed_total_parallel": plan_s + max(party_s) + measure_s,
                     "local_statistics": m["evaluation"]["seconds"]["real_statistics"],
                     "vector_length": plan.length})
        print(f"run {r + 1}: local {local:.1f} s, federated (parallel parties) "
              f"{runs[-1]['fed_total_parallel']:.1f} s, report {report:.1f} s", flush=True)
        assert fed["tvd"]["1way"] is not None
    med = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
    ratio = statistics.median(run["fed_total_parallel"] / run["local_total"] for run in runs)
    lines = [
        f"# Evaluation benchmark: {SYN_ROWS:,} synthetic x {REAL_ROWS:,} real rows "
        f"(+{TRAIN_ROWS:,} training rows), AER/CPS1988",
        "",
        f"Median of {args.repeats} runs, seconds (target: a full evaluation under 60 s).",
        "",
        "| what | seconds |",
        "|---|---|",
        f"| local evaluation, all measures (`evaluate_tables`) | {med['local_total']:.1f} |",
        f"| of which the real rows' statistics (models, distances, counts) | "
        f"{med['local_statistics']:.1f} |",
        f"| report.html rendering | {med['report_html']:.1f} |",
        f"| federated, {PARTIES} parties: plan | {med['fed_plan']:.1f} |",
        f"| federated: slowest party's statistics | {med['fed_slowest_party']:.1f} |",
        f"| federated: all parties' statistics, one after the other | "
        f"{med['fed_all_parties']:.1f} |",
        f"| federated: coordinator's measures from the sum | {med['fed_measures']:.1f} |",
        f"| federated total with parties in parallel (no network) | "
        f"{med['fed_total_parallel']:.1f} |",
        "",
        f"Federated (parallel) / local, median of paired ratios: {ratio:.2f}x. "
        f"Statistics vector: {int(med['vector_length']):,} integers per party.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "evaluation.md").write_text(text)
    (args.out / "evaluation.json").write_text(json.dumps(runs, indent=2) + "\n")


if __name__ == "__main__":
    main()
