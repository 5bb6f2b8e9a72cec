"""Marginals of a model's junction tree: mbi's jax message passing against synthesis.tree_marginals.

Loading a saved model, conditioning it and sampling it all compute the marginals of its
junction-tree cliques. mbi's message passing (jax) compiles a program for each new shape of
table, once per process; `fedsynth sample` is a new process every time. This script times
both in fresh processes on models shaped like the marginal method's (a spanning tree of pairs
plus extra pairs that close cycles, columns of 2-32 codes), random log-potentials, and prints
medians and the ratio. Run: python benchmarks/tree_marginals.py [--columns 10 20 40] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "tree_marginals.md"


def _model(columns: int, seed: int = 0):  # type: ignore[no-untyped-def]
    """Random log-potentials on a spanning tree of pairs plus columns // 4 cycle-closing
    pairs (the marginal method's model shape), as an mbi CliqueVector."""
    from fedsynth.synthesis.estimation import _mbi

    mbi = _mbi()
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    names = [f"c{i}" for i in range(columns)]
    dom = mbi.Domain(names, [int(v) for v in rng.choice([2, 3, 5, 8, 16, 32], columns)])
    pairs = {(names[int(rng.integers(0, i))], names[i]) for i in range(1, columns)}
    while len(pairs) < columns - 1 + columns // 4:
        a, b = sorted(rng.choice(columns, 2, replace=False))
        pairs.add((names[a], names[b]))
    cliques = sorted(pairs) + [(n,) for n in names]
    return mbi.CliqueVector(dom, cliques, {cl: mbi.Factor(dom.project(cl), jnp.asarray(
        rng.normal(0, 1, dom.project(cl).shape))) for cl in cliques})


def one(columns: int, code: str) -> dict[str, float]:
    pots = _model(columns)
    t0 = time.perf_counter()
    if code == "mbi":
        from mbi import marginal_oracles

        out = marginal_oracles.message_passing_stable(pots, 1000.0)
        first = out[pots.cliques[0]].values.block_until_ready()
    else:
        from fedsynth.synthesis.tree_marginals import TreeMarginals

        first = TreeMarginals(pots, 1000.0).project(pots.cliques[0])
    return {"seconds": time.perf_counter() - t0, "check": float(np.asarray(first).sum())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--columns", type=int, nargs="*", default=[10, 20, 40])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--one", nargs=2)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(int(args.one[0]), args.one[1])))
        return
    rows = ["| columns | mbi (jax), s | numpy, s | numpy / mbi |", "|---|---|---|---|"]
    for cols in args.columns:
        times: dict[str, list[float]] = {"mbi": [], "numpy": []}
        for _ in range(args.runs):
            for code in times:  # interleaved, each in a fresh process as `fedsynth sample` is
                out = subprocess.run([sys.executable, __file__, "--one", str(cols), code],
                                     capture_output=True, text=True, check=True)
                times[code].append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
        m, n = (statistics.median(times[c]) for c in ("mbi", "numpy"))
        rows.append(f"| {cols} | {m:.2f} | {n:.3f} | {n / m:.3f}x |")
        print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
