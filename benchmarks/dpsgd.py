"""The DP-generator method (`--method dpsgd`) beside the marginal method, local-only dpsgd and
independent columns, printed as a table.

For each bundled dataset and ε (5 parties, iid, one cut of a 20% holdout per seed): the
federated dpsgd job (secure aggregation, in-process engine), local-only dpsgd (each party
trains alone with the full ε; the union of their samples), independent columns (each column of
the train table shuffled on its own: non-private, the bar a generator must clear) and the
marginal method's federated number from the fidelity results. Mean 2-way TVD over all pairs
against the train table (as in benchmarks/fidelity.py), TSTR ROC AUC on the holdout, seconds
and bytes each party sent.

    python benchmarks/dpsgd.py [--epsilons 1 3 10] [--seeds 1] [--workers 2] [--train JSON]
    python benchmarks/dpsgd.py --report
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _support import sweep

from fedsynth.coordinator.options import JobOptions
from fedsynth.evaluation.metrics import marginal_tvd, tstr_auc
from fedsynth.simulations import datasets, partition
from fedsynth.simulations.run import simulate


def one(name: str, eps: float, part: str, seed: int, parties: int, delta: float,
        plan: dict | None = None) -> dict:
    schema, train, hold, b = datasets.benchmark_split(name, seed)
    tables = partition.split(train, parties, part, target=b.target, seed=seed)
    t = time.perf_counter()
    res = simulate(parties=tables, schema=schema, epsilon=eps, delta=delta, holdout=0.0,
                   seed=seed, engine="local", evaluate=False, method="dpsgd",
                   options=JobOptions(seed=seed, train=plan))
    t_fed = time.perf_counter() - t
    local = pd.concat([simulate(parties=[tab], schema=schema, epsilon=eps, delta=delta,
                                holdout=0.0, seed=seed, engine="local", evaluate=False,
                                channel="plain", threshold=1, method="dpsgd",
                                options=JobOptions(seed=seed, train=plan)).synthetic
                       for tab in tables], ignore_index=True)
    rng = np.random.default_rng(seed)
    independent = pd.DataFrame({c: train[c].to_numpy()[rng.permutation(len(train))]
                                for c in train.columns})
    row = {"dataset": name, "epsilon": eps, "partition": part, "seed": seed,
           "fed_seconds": t_fed, "epsilon_spent": res.privacy["epsilon_spent"],
           "bytes_per_party": statistics.median(
               res.metrics.get("bytes_sent_per_party", {}).values() or [0])}
    for label, syn in (("fed", res.synthetic), ("local", local), ("independent", independent)):
        row[f"{label}_tvd2"] = marginal_tvd(train, syn, way=2)
        auc = tstr_auc(train, syn, hold, target=b.target, seed=seed)
        row[f"{label}_tstr"] = auc.get("tstr_auc")
        row["trtr"] = auc.get("trtr_auc")
    return row


def marginal_numbers(path: Path) -> dict[tuple[str, float, str], float]:
    """The marginal method's federated 2-way TVD (median over seeds) from fidelity runs, by
    (dataset, ε, partition)."""
    if not path.exists():
        return {}
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    out: dict[tuple[str, float, str], list[float]] = {}
    for r in rows:
        if r.get("fed_tvd2") is not None:
            out.setdefault((r["dataset"], r["epsilon"], r["partition"]), []).append(r["fed_tvd2"])
    return {k: statistics.median(v) for k, v in out.items()}


def fed_numbers(path: Path | None) -> dict[tuple[str, float, str], float]:
    """Another dpsgd run's federated 2-way TVD (median over seeds), e.g. the other noise."""
    if path is None or not path.exists():
        return {}
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    out: dict[tuple[str, float, str], list[float]] = {}
    for r in rows:
        out.setdefault((r["dataset"], r["epsilon"], r["partition"]), []).append(r["fed_tvd2"])
    return {k: statistics.median(v) for k, v in out.items()}


def table(rows: list[dict], marginal: dict[tuple[str, float, str], float],
          other: dict[tuple[str, float, str], float] | None = None,
          other_label: str = "") -> str:
    keys = sorted({(r["dataset"], r["epsilon"], r["partition"]) for r in rows})
    extra = f" {other_label} |" if other else ""
    out = ["| dataset | ε | partition | dpsgd federated |" + extra + " dpsgd local-only | "
           "independent columns | marginals federated | dpsgd / independent | TSTR dpsgd | "
           "TSTR independent | TRTR | seconds | MB per party |",
           "|" + "---|" * (14 if other else 13)]
    for k in keys:
        rs = [r for r in rows if (r["dataset"], r["epsilon"], r["partition"]) == k]

        def med(f: str, rs: list[dict] = rs) -> float:
            vals = [r[f] for r in rs if r.get(f) is not None]
            return statistics.median(vals) if vals else float("nan")

        m = marginal.get(k)
        o = (other or {}).get(k)
        shown = "" if not other else (" - |" if o is None else f" {o:.4f} |")
        out.append(f"| {k[0]} | {k[1]:g} | {k[2]} | {med('fed_tvd2'):.4f} |{shown} "
                   f"{med('local_tvd2'):.4f} | "
                   f"{med('independent_tvd2'):.4f} | {'-' if m is None else f'{m:.4f}'} | "
                   f"{med('fed_tvd2') / med('independent_tvd2'):.2f}x | "
                   f"{med('fed_tstr'):.3f} | {med('independent_tstr'):.3f} | "
                   f"{med('trtr'):.3f} | {med('fed_seconds'):.0f} | "
                   f"{med('bytes_per_party') / 1e6:.1f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="*", default=list(datasets.DATASETS))
    ap.add_argument("--epsilons", nargs="*", type=float, default=[1.0, 3.0, 10.0])
    ap.add_argument("--partitions", nargs="*", default=["iid"])
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--parties", type=int, default=5)
    ap.add_argument("--delta", type=float, default=1e-6)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--jsonl", type=Path, default=Path("benchmarks/results/dpsgd.jsonl"))
    ap.add_argument("--marginals", type=Path,
                    default=Path("benchmarks/results/fidelity-rounding.jsonl"),
                    help="fidelity results to take the marginal method's numbers from")
    ap.add_argument("--train", default="", help="training plan options as JSON, e.g. "
                    "'{\"noise\": \"local\"}'")
    ap.add_argument("--compare", type=Path, default=None,
                    help="another run's results (e.g. benchmarks/results/dpsgd-local.jsonl, local "
                    "noise) whose federated 2-way TVD is shown beside this run's")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        logging.basicConfig(level=logging.WARNING)
        name, eps, part, seed = args.one
        print(json.dumps(one(name, float(eps), part, int(seed), args.parties, args.delta,
                             json.loads(args.train) if args.train else None)))
        return
    configs = [(n, e, p, s) for n in args.datasets for e in args.epsilons
               for p in args.partitions for s in range(args.seeds)]
    done = sweep(__file__, configs, ["--parties", str(args.parties), "--delta", str(args.delta),
                                     *(["--train", args.train] if args.train else [])],
                 args.jsonl, workers=args.workers, report_only=args.report)
    print(f"\n{args.parties} parties, δ={args.delta}, medians over seeds; 2-way TVD over "
          "all pairs vs the train table (lower is better)\n")
    print(table(done, marginal_numbers(args.marginals), fed_numbers(args.compare),
                f"dpsgd federated ({args.compare.stem})" if args.compare else ""))


if __name__ == "__main__":
    main()
