"""Herded rows (synthesis.herding) against independent draws of the same model, in one run.

For each dataset: one federated job (5 parties, iid, ε, seed 0) fits a model, then the same
model gives the job's number of rows several times, drawn (independent draws: the dpsgd
generator's stratified sampler, or the marginal method's rounding sampler) and herded (chosen
from pools of draws, synthesis.herding). Mean 2-way TVD over all pairs and 3-way TVD over 200
random triples against the train table, medians over the sampling seeds, and seconds to give
the rows. The model is fitted once, so the ratio is the sampler's alone.

    python benchmarks/herding.py [--datasets ...] [--method dpsgd|marginals] [--epsilon 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np

from fedsynth.coordinator.options import JobOptions
from fedsynth.evaluation.metrics import marginal_tvd
from fedsynth.simulations import datasets, partition
from fedsynth.simulations.run import simulate
from fedsynth.synthesis import herding
from fedsynth.synthesis.encoding import Encoding
from fedsynth.synthesis.estimation import sample_codes


def _marginal_herded(model: Any, rows: int, seed: int) -> Any:
    """The marginal method's model, herded (not what its `sample` does: see the results)."""
    rng = np.random.default_rng([seed, 1])
    codes = herding.balanced(lambda m: sample_codes(model.mrf, m, seed=int(rng.integers(2**62))),
                             rows, [g.size for g in model.groupings], rng)
    return model._decode(Encoding.from_schema(model.schema), codes, {},
                         np.random.default_rng(seed))


def one(name: str, method: str, eps: float, seeds: int, train_plan: dict | None) -> dict:
    schema, train, _, b = datasets.benchmark_split(name, 0)
    tables = partition.split(train, 5, "iid", target=b.target, seed=0)
    res = simulate(parties=tables, schema=schema, epsilon=eps, delta=1e-6, holdout=0.0, seed=0,
                   engine="local", evaluate=False, method=method,
                   options=JobOptions(seed=0, train=train_plan))
    model, rows = res.model, len(res.synthetic)
    assert model is not None
    out: dict[str, Any] = {"dataset": name, "method": method, "epsilon": eps, "rows": rows}
    for label in ("drawn", "herded"):
        tvd2, tvd3, secs = [], [], []
        for seed in range(1, seeds + 1):
            t = time.perf_counter()
            if label == "drawn":
                syn = (model.sample(rows, seed=seed, balanced=False) if method == "dpsgd"
                       else model.sample(rows, seed=seed))
            else:
                syn = (model.sample(rows, seed=seed) if method == "dpsgd"
                       else _marginal_herded(model, rows, seed))
            secs.append(time.perf_counter() - t)
            tvd2.append(marginal_tvd(train, syn, way=2))
            tvd3.append(marginal_tvd(train, syn, way=3, max_marginals=200))
        out |= {f"{label}_tvd2": statistics.median(tvd2), f"{label}_tvd3": statistics.median(tvd3),
                f"{label}_seconds": statistics.median(secs)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="*", default=list(datasets.DATASETS))
    ap.add_argument("--method", default="dpsgd", choices=["dpsgd", "marginals"])
    ap.add_argument("--epsilon", type=float, default=10.0)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--train", default='{"noise": "distributed"}',
                    help="the dpsgd training plan, as JSON")
    ap.add_argument("--jsonl", default="benchmarks/results/herding.jsonl")
    args = ap.parse_args()
    plan = json.loads(args.train) if args.method == "dpsgd" else None
    rows = []
    for name in args.datasets:
        row = one(name, args.method, args.epsilon, args.seeds, plan)
        with open(args.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        rows.append(row)
    print("\n| dataset | method | ε | rows | 2-way drawn | 2-way herded | herded / drawn | "
          "3-way drawn | 3-way herded | seconds drawn | seconds herded |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['method']} | {r['epsilon']:g} | {r['rows']} | "
              f"{r['drawn_tvd2']:.4f} | {r['herded_tvd2']:.4f} | "
              f"{r['herded_tvd2'] / r['drawn_tvd2']:.2f}x | {r['drawn_tvd3']:.4f} | "
              f"{r['herded_tvd3']:.4f} | {r['drawn_seconds']:.1f} | {r['herded_seconds']:.1f} |")


if __name__ == "__main__":
    main()
