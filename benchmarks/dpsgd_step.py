"""One distributed DP-SGD step's clipped gradient sum: from the layers' inputs and backprops
(synthesis.dpsgd.clipped_gradient_sum) against Opacus's per-row gradients, in one run.

For each dataset, one party's share of the train table (a fifth, as in a 5-party job) at the
plan's default generator (MADE, hidden 128; output biases frozen as at ε >= 5) and public
initial parameters plus a small perturbation: seconds per step of each way (median of
--repeats, alternating), their ratio, and the largest difference between the two sums
relative to the sum's largest coordinate. The per-row way is the one the method used before
(kept here only as the reference).

    python benchmarks/dpsgd_step.py [--datasets ...] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from opacus import GradSampleModule

from fedsynth.simulations import datasets
from fedsynth.synthesis import dpsgd
from fedsynth.synthesis.encoding import Encoding

DATASETS = ["survival/colon", "ISLR/Default", "modeldata/credit_data", "AER/CPS1988"]


def per_row_sum(plan: dpsgd.TrainPlan, sizes: Sequence[int], params: np.ndarray,
                codes: np.ndarray) -> np.ndarray:
    """The clipped sum from every row's gradient, materialized by Opacus (the method's way
    before): the reference."""
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    model = dpsgd.build(plan, sizes)
    dpsgd.set_vector(model, params)
    gsm = GradSampleModule(model)
    every = list(gsm.parameters())
    layers = [p for p in every if p.requires_grad]
    total = [torch.zeros(p.shape, dtype=torch.float64) for p in every]
    trained = [t for t, p in zip(total, every, strict=True) if p.requires_grad]
    c = torch.from_numpy(codes.astype(np.int64))
    for start in range(0, len(codes), dpsgd.GRADIENT_BATCH):
        part = slice(start, start + dpsgd.GRADIENT_BATCH)
        dpsgd.model_loss(gsm, dpsgd.one_hot(codes[part], sizes), c[part]).backward()
        grads = [p.grad_sample.double() for p in layers]
        sq = sum(g.reshape(g.shape[0], -1).square().sum(dim=1) for g in grads)
        assert isinstance(sq, torch.Tensor)
        factor = torch.clamp(plan.clip / (sq.sqrt() + 1e-12), max=1.0)
        for t, g in zip(trained, grads, strict=True):
            t += torch.tensordot(factor, g, dims=1)
        gsm.zero_grad(set_to_none=True)
        for p in layers:
            p.grad_sample = None
    return torch.cat([t.reshape(-1) for t in total]).numpy()


def one(name: str, repeats: int, parties: int = 5) -> dict:
    schema, train, _, _ = datasets.benchmark_split(name, 0)
    part = train.iloc[: len(train) // parties]
    groupings = dpsgd.domain(schema)
    fine = Encoding.from_schema(schema).encode(part)
    codes = np.stack([g.index[fine[:, j]] for j, g in enumerate(groupings)], axis=1)
    sizes = [g.size for g in groupings]
    plan = dpsgd.TrainPlan(epsilon=10.0, delta=1e-6, noise="distributed",
                           output_bias="frozen")
    params = dpsgd.get_vector(dpsgd.build(plan, sizes))
    params = params + np.random.default_rng(0).normal(0, 0.05, len(params))
    times: dict[str, list[float]] = {"per_row": [], "layers": []}
    sums: dict[str, np.ndarray] = {}
    for _ in range(repeats):
        for label, fn in (("per_row", per_row_sum), ("layers", dpsgd.clipped_gradient_sum)):
            t = time.perf_counter()
            sums[label] = fn(plan, sizes, params, codes)
            times[label].append(time.perf_counter() - t)
    scale = np.abs(sums["per_row"]).max()
    return {"dataset": name, "rows": len(codes), "parameters": len(params),
            "per_row_seconds": statistics.median(times["per_row"]),
            "layers_seconds": statistics.median(times["layers"]),
            "ratio": statistics.median(times["layers"]) / statistics.median(times["per_row"]),
            "max_relative_difference": float(np.abs(sums["layers"] - sums["per_row"]).max()
                                             / scale)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=DATASETS)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rows = [one(name, args.repeats) for name in args.datasets]
    for r in rows:
        print(json.dumps(r))
    print("\n| dataset | rows | parameters | per-row gradients s | layer products s | ratio "
          "| max relative difference |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['rows']:,} | {r['parameters']:,} | "
              f"{r['per_row_seconds']:.3f} | {r['layers_seconds']:.3f} | {r['ratio']:.3f}x | "
              f"{r['max_relative_difference']:.1e} |")


if __name__ == "__main__":
    main()
