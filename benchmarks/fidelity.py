"""Fidelity benchmark: federated vs central (same method, pooled) vs local-only, printed as a table.

For each bundled dataset, ε, partition and seed: cut a 20% holdout, split the rest into parties,
run the federated job (secure aggregation, in-process engine: the protocol and numbers are the
same as under Flower, only faster), the central run and the local-only union. Fidelity is the
mean 2-way TVD over ALL pairs against the train table on the fixed evaluation binning (the
measure of the central anchors in DESIGN.md); ML efficacy is TSTR vs TRTR ROC AUC on the holdout.

    python benchmarks/fidelity.py [--seeds 3] [--datasets ...] [--workers 2]
    python benchmarks/fidelity.py --report      # the table from benchmarks/results/
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

from _support import sweep

from fedsynth.evaluation.metrics import marginal_tvd, tstr_auc
from fedsynth.protocols.spec import default_threshold
from fedsynth.simulations import baselines, datasets, partition
from fedsynth.simulations.run import simulate


def one(name: str, eps: float, part: str, seed: int, parties: int, delta: float,
        threshold: int | None = None, skip: tuple[str, ...] = ()) -> dict:
    schema, train, hold, b = datasets.benchmark_split(name, seed)
    tables = partition.split(train, parties, part, target=b.target, seed=seed)
    t = time.perf_counter()
    fed = simulate(parties=tables, schema=schema, epsilon=eps, delta=delta, holdout=0.0,
                   seed=seed, engine="local", evaluate=False,
                   threshold=threshold or default_threshold(parties)).synthetic
    t_fed = time.perf_counter() - t
    runs = [("fed", fed)]
    if "central" not in skip:
        runs.append(("central", baselines.central(train, schema, epsilon=eps, delta=delta,
                                                  seed=seed)))
    if "local" not in skip:
        runs.append(("local", baselines.local_only(tables, schema, epsilon=eps, delta=delta,
                                                   seed=seed)))
    row = {"dataset": name, "epsilon": eps, "partition": part, "seed": seed, "fed_seconds": t_fed,
           "threshold": threshold or default_threshold(parties)}
    for label, syn in runs:
        row[f"{label}_tvd2"] = marginal_tvd(train, syn, way=2)
        auc = tstr_auc(train, syn, hold, target=b.target, seed=seed)
        row[f"{label}_tstr"] = auc.get("tstr_auc")
        row["trtr"] = auc.get("trtr_auc")
    return row


# Central anchors measured the same way (2-way TVD over all pairs vs the train table, δ=1e-6,
# seed 0, 80/20 split): central AIM, central MST, local-only MST with 5 parties.
ANCHORS = {
    ("ISLR/Default", 1.0): (0.027, 0.049, 0.087), ("ISLR/Default", 3.0): (0.014, 0.020, 0.041),
    ("AER/CPS1988", 1.0): (0.013, 0.027, 0.040), ("AER/CPS1988", 3.0): (0.006, 0.024, 0.028),
    ("survival/colon", 1.0): (0.095, 0.113, 0.214), ("survival/colon", 3.0): (0.050, 0.057, 0.105),
    ("modeldata/credit_data", 1.0): (0.109, 0.124, 0.208),
    ("modeldata/credit_data", 3.0): (0.097, 0.084, 0.121),
}


def anchor_ratio_table(rows: list[dict], before: list[dict]) -> str:
    """Federated 2-way TVD (median over seeds) per dataset, ε and partition, now and in an
    earlier results file, against the best central anchor (AIM, or MST where lower)."""
    out = ["| dataset | ε | partition | federated now | before | now / before | best central "
           "anchor | now / anchor | TSTR AUC now |", "|" + "---|" * 9]
    for (name, eps), (aim, mst, _) in ANCHORS.items():
        for part in ("iid", "dirichlet:0.5"):
            key = (name, eps, part)

            def med(rs: list[dict], f: str, key: tuple = key) -> float:
                vals = [r[f] for r in rs if (r["dataset"], r["epsilon"], r["partition"]) == key
                        and r.get(f) is not None]
                return statistics.median(vals) if vals else float("nan")

            now, then, best = med(rows, "fed_tvd2"), med(before, "fed_tvd2"), min(aim, mst)
            out.append(f"| {name} | {eps:g} | {part} | {now:.4f} | {then:.4f} | "
                       f"{now / then:.2f}x | {best:.3f} | {now / best:.2f}x | "
                       f"{med(rows, 'fed_tstr'):.3f} |")
    return "\n".join(out)


def anchor_table(rows: list[dict]) -> str:
    out = ["| dataset | ε | fedsynth federated (iid, median) | central AIM | central MST | "
           "local-only MST |", "|---|---|---|---|---|---|"]
    for (name, eps), (aim, mst, loc) in ANCHORS.items():
        vals = [r["fed_tvd2"] for r in rows if r["dataset"] == name and r["epsilon"] == eps
                and r["partition"] == "iid"]
        fed = f"{statistics.median(vals):.3f}" if vals else "not run"
        out.append(f"| {name} | {eps:g} | {fed} | {aim:.3f} | {mst:.3f} | {loc:.3f} |")
    return "\n".join(out)


def table(rows: list[dict]) -> str:
    keys = sorted({(r["dataset"], r["epsilon"], r["partition"]) for r in rows})
    out = ["| dataset | ε | partition | federated 2-way TVD | central (same method) | "
           "local-only | fed / central | fed vs local-only | TSTR AUC fed | TSTR central | "
           "TRTR AUC |", "|" + "---|" * 11]
    for k in keys:
        rs = [r for r in rows if (r["dataset"], r["epsilon"], r["partition"]) == k]

        def med(f: str, rs: list[dict] = rs) -> float:
            vals = [r[f] for r in rs if r[f] is not None]
            return statistics.median(vals) if vals else float("nan")

        fed, cen, loc = med("fed_tvd2"), med("central_tvd2"), med("local_tvd2")
        out.append(f"| {k[0]} | {k[1]:g} | {k[2]} | {fed:.4f} | {cen:.4f} | {loc:.4f} | "
                   f"{fed / cen:.2f}x | {100 * (1 - fed / loc):.0f}% lower | "
                   f"{med('fed_tstr'):.3f} | {med('central_tstr'):.3f} | {med('trtr'):.3f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="*", default=list(datasets.DATASETS))
    ap.add_argument("--epsilons", nargs="*", type=float, default=[1.0, 3.0])
    ap.add_argument("--partitions", nargs="*", default=["iid", "dirichlet:0.5"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--parties", type=int, default=5)
    ap.add_argument("--delta", type=float, default=1e-6)
    ap.add_argument("--workers", type=int, default=2, help="configurations run at once")
    ap.add_argument("--threshold", type=int, help="t for the federated run (default: 80%%)")
    ap.add_argument("--jsonl", type=Path, default=Path("benchmarks/results/fidelity.jsonl"),
                    help="results, one JSON row per line; rows already there are not re-run")
    ap.add_argument("--report", action="store_true", help="only print the table")
    ap.add_argument("--skip", nargs="*", default=[], choices=["central", "local"],
                    help="runs left out of each configuration (the federated run always runs)")
    ap.add_argument("--before", type=Path, help="an earlier results file to compare with")
    ap.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:  # one configuration, in its own process (jax's compiled code stays bounded)
        logging.basicConfig(level=logging.WARNING)
        name, eps, part, seed = args.one
        print(json.dumps(one(name, float(eps), part, int(seed), args.parties, args.delta,
                             args.threshold, tuple(args.skip))))
        return
    configs = [(n, e, p, s) for n in args.datasets for e in args.epsilons
               for p in args.partitions for s in range(args.seeds)]
    extra = ["--parties", str(args.parties), "--delta", str(args.delta),
             *(["--skip", *args.skip] if args.skip else []),
             *(["--threshold", str(args.threshold)] if args.threshold else [])]
    done = sweep(__file__, configs, extra, args.jsonl, workers=args.workers,
                 report_only=args.report)
    print(f"\n{args.parties} parties, δ={args.delta}, medians over seeds; 2-way TVD over all "
          "pairs vs the train table (lower is better)")
    if not args.skip:
        print(table(done))
    if args.before is not None:
        before = [json.loads(x) for x in args.before.read_text().splitlines() if x.strip()]
        print(f"\nAgainst {args.before.name} and the best central anchor (AIM, or MST where "
              "lower; DESIGN.md):")
        print(anchor_ratio_table(done, before))
    print("\nAgainst the central anchors (other methods, measured the same way):")
    print(anchor_table(done))


if __name__ == "__main__":
    main()
