"""Channel benchmark: the same jobs over secagg, he and plain, end to end and per step.

Each configuration (dataset, parties) runs the three channels in turn, `--repeats` times,
interleaved (secagg, he, plain, secagg, he, ...) so that a slow moment of this shared machine
hits all three alike; ratios are of medians taken in the same script run. Local engine (no Ray
start-up), ε=1, δ=1e-6, iid split, no held-out rows, no evaluation. Per run:

- whole job: wall-clock of `simulate` (setup, measurement rounds, estimation, sampling);
- channel: setup + measure steps only (where the channels differ; estimation is the same);
- bytes each party sends (mean over parties), and the key holder's (he);
- 2-way TVD of the synthetic table against the pooled rows (DESIGN.md's yardstick; the same
  noise and sums, so he and secagg should agree within seed noise; plain carries the full
  noise at each party).

`--scale` adds many-party runs (ISLR/Default resampled to 100 rows per party) on the channel
steps only: where secagg's pairwise masks and Shamir shares grow as n^2 and he's do not.

    python benchmarks/channels.py [--repeats 3] [--scale 100 1000] [--no-save]

Prints Markdown tables; writes benchmarks/results/channels.md and channels.jsonl.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CHANNELS = ("secagg", "he", "plain")
JOBS = [("ISLR/Default", 5), ("ISLR/Default", 20), ("AER/CPS1988", 5), ("AER/CPS1988", 20)]


def one(pooled: Any, parties: int, channel: str, seed: int) -> dict[str, Any]:
    from fedsynth.evaluation.metrics import marginal_tvd
    from fedsynth.simulations.run import simulate

    t0 = time.perf_counter()
    res = simulate(data=_csv(pooled), n_parties=parties, channel=channel, seed=seed,
                   engine="local", evaluate=False, holdout=0.0, epsilon=1.0)
    wall = time.perf_counter() - t0
    t = res.metrics["timings_seconds"]
    sent = list(res.metrics["bytes_sent_per_party"].values())
    return {"parties": parties, "channel": channel, "seed": seed, "wall_s": wall,
            "channel_s": t.get("setup", 0.0) + t.get("measure", 0.0),
            "bytes_per_party": float(np.mean(sent)),
            "key_holder_bytes": res.metrics.get("bytes_sent_by_key_holder", 0),
            "tvd_2way": marginal_tvd(pooled, res.synthetic, way=2)}


_CSV: dict[int, Path] = {}


def _csv(pooled: Any) -> Path:
    """simulate() splits a pooled table given as `data`: written once to a temporary CSV."""
    import tempfile

    if id(pooled) not in _CSV:
        path = Path(tempfile.mkdtemp(prefix="fedsynth-bench-")) / "pooled.csv"
        pooled.to_csv(path, index=False)
        _CSV[id(pooled)] = path
    return _CSV[id(pooled)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scale", type=int, nargs="*", default=[100, 1000])
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    from fedsynth import progress
    from fedsynth.simulations import datasets

    progress.show("off")
    rows: list[dict[str, Any]] = []
    warm, _ = datasets.load("ISLR/Default")
    for ch in CHANNELS:  # imports, jit compilation and key generation paths, not measured
        one(warm, 3, ch, seed=0)
    for name, parties in JOBS:
        pooled, _ = datasets.load(name)
        for rep in range(args.repeats):
            for ch in CHANNELS:
                r = {"dataset": name, **one(pooled, parties, ch, seed=rep)}
                rows.append(r)
                print(json.dumps(r), flush=True)
    for parties in args.scale:
        pooled, _ = datasets.load("ISLR/Default")
        big = pooled.sample(n=100 * parties, replace=True, random_state=0)
        for ch in ("he", "secagg") if parties <= 200 else ("he",):
            r = {"dataset": f"ISLR/Default x{100 * parties}", **one(big, parties, ch, seed=0)}
            rows.append(r)
            print(json.dumps(r), flush=True)
    table = render(rows, args.repeats)
    print(table)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "channels.md").write_text(table, encoding="utf-8")
        with (RESULTS / "channels.jsonl").open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


def render(rows: list[dict[str, Any]], repeats: int) -> str:
    def med(ds: str, n: int, ch: str, key: str) -> float:
        vals = [r[key] for r in rows if r["dataset"] == ds and r["parties"] == n
                and r["channel"] == ch]
        return statistics.median(vals) if vals else float("nan")

    out = ["Channels on the same jobs (local engine, ε=1, iid, no evaluation); medians of "
           f"{repeats} interleaved runs; channel = setup + measure steps.", "",
           "| dataset | parties | whole job s: secagg / he / plain | he / plain | he / secagg "
           "| channel s: secagg / he / plain | bytes per party: secagg / he / plain "
           "| key holder bytes | 2-way TVD: secagg / he / plain |",
           "|---|---:|---|---:|---:|---|---|---:|---|"]
    seen = list(dict.fromkeys((r["dataset"], r["parties"]) for r in rows
                              if " x" not in r["dataset"]))
    for ds, n in seen:
        w = [med(ds, n, c, "wall_s") for c in CHANNELS]
        c_ = [med(ds, n, c, "channel_s") for c in CHANNELS]
        b = [med(ds, n, c, "bytes_per_party") / 1024 for c in CHANNELS]
        tv = [med(ds, n, c, "tvd_2way") for c in CHANNELS]
        out.append(f"| {ds} | {n} | {w[0]:.1f} / {w[1]:.1f} / {w[2]:.1f} | {w[1] / w[2]:.2f}x "
                   f"| {w[1] / w[0]:.2f}x | {c_[0]:.2f} / {c_[1]:.2f} / {c_[2]:.2f} "
                   f"| {b[0]:.0f} / {b[1]:.0f} / {b[2]:.0f} KiB "
                   f"| {med(ds, n, 'he', 'key_holder_bytes') / 1024:.0f} KiB "
                   f"| {tv[0]:.4f} / {tv[1]:.4f} / {tv[2]:.4f} |")
    scale = [r for r in rows if " x" in r["dataset"]]
    if scale:
        out += ["", "Many parties (ISLR/Default resampled, 100 rows per party; one run each):",
                "", "| parties | channel | channel steps s | whole job s | bytes per party "
                "| key holder bytes |", "|---:|---|---:|---:|---:|---:|"]
        for r in scale:
            out.append(f"| {r['parties']} | {r['channel']} | {r['channel_s']:.1f} "
                       f"| {r['wall_s']:.1f} | {r['bytes_per_party'] / 1024:.0f} KiB "
                       f"| {r['key_holder_bytes'] / 1024:.0f} KiB |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
