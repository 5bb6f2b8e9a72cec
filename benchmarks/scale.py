"""Scale benchmark: time, peak memory and bytes per party of whole federated jobs, as a table.

Each job runs in a fresh process with Flower's simulation engine (one ClientApp per party,
Ray workers included), on ISLR/Default resampled to the total row count and split iid. Peak
memory is the largest sum of resident memory over the job process and all its descendants,
sampled every 0.1 s. Synthesis only: the evaluation step is left out.

    python benchmarks/scale.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

GRID = [(5, 10_000), (20, 10_000), (100, 10_000), (5, 100_000), (20, 100_000),
        (100, 100_000), (5, 1_000_000), (20, 1_000_000), (100, 1_000_000)]
TARGET = (10, 100_000)


def _children_rss(root: int) -> int:
    """Sum of RSS (bytes) of `root` and its descendants, read from /proc."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            parents[int(d)] = int(fields[1])
            rss[int(d)] = int(fields[21]) * page
        except (OSError, IndexError, ValueError):
            continue
    keep, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        for c, pp in parents.items():
            if pp == p and c not in keep:
                keep.add(c)
                frontier.append(c)
    return sum(rss.get(p, 0) for p in keep)


def run_one(parties: int, rows: int, channel: str) -> dict:
    cmd = [sys.executable, __file__, "--one", str(parties), str(rows), channel]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _children_rss(proc.pid))
            time.sleep(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    stop.set()
    th.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"parties": parties, "rows": rows, "channel": channel, "error": True}
    res = json.loads(out.strip().splitlines()[-1])
    res.update(parties=parties, rows=rows, channel=channel, wall_seconds=wall,
               peak_mb=peak / 2**20)
    return res


def child(parties: int, rows: int, channel: str) -> None:
    import logging

    import numpy as np

    logging.basicConfig(level=logging.WARNING)
    from fedsynth.simulations import datasets
    from fedsynth.simulations.run import simulate
    from fedsynth.synthesis.schema import infer_schema

    base, _ = datasets.load("ISLR/Default")
    schema = infer_schema(base)
    rng = np.random.default_rng(0)
    df = base.iloc[rng.integers(0, len(base), rows)].reset_index(drop=True)
    t = time.perf_counter()
    res = simulate(schema=schema, n_parties=parties,
                   holdout=0.0, channel=channel, evaluate=False, seed=0,
                   **_frame_source(df))
    job = time.perf_counter() - t
    sent = list(res.metrics["bytes_sent_per_party"].values())
    print(json.dumps({"job_seconds": job, "timings": res.timings,
                      "bytes_per_party_median": statistics.median(sent),
                      "epsilon_spent": res.privacy["epsilon_spent"]}))


def _frame_source(df: object) -> dict:
    # simulate() takes a pooled table through `data`: write it once to a temporary parquet.
    import tempfile

    import pandas as pd

    assert isinstance(df, pd.DataFrame)
    path = Path(tempfile.mkdtemp()) / "pooled.parquet"
    df.to_parquet(path, index=False)
    return {"data": path}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", nargs=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/scale.json"))
    args = ap.parse_args()
    if args.one:
        child(int(args.one[0]), int(args.one[1]), args.one[2])
        return
    rows = []
    for p, n in GRID:
        r = run_one(p, n, "secagg")
        rows.append(r)
        print(json.dumps(r), flush=True)
    ratio_runs = []
    for _ in range(args.repeats):  # secagg and plain back to back, as pairs
        s = run_one(*TARGET, "secagg")
        q = run_one(*TARGET, "plain")
        ratio_runs.append((s, q))
        print(json.dumps(s), json.dumps(q), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"grid": rows, "ratio": ratio_runs}, indent=1))
    print("\n| parties | total rows | job time (s) | wall incl. start-up (s) | peak memory (MB) "
          "| bytes sent per party |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if r.get("error"):
            print(f"| {r['parties']} | {r['rows']:,} | failed | | | |")
            continue
        print(f"| {r['parties']} | {r['rows']:,} | {r['job_seconds']:.1f} | "
              f"{r['wall_seconds']:.1f} | {r['peak_mb']:.0f} | "
              f"{r['bytes_per_party_median'] / 1024:.0f} KiB |")
    ok = [(s, q) for s, q in ratio_runs if not s.get("error") and not q.get("error")]
    if ok:
        ratios = [s["job_seconds"] / q["job_seconds"] for s, q in ok]
        st = statistics.median(s["job_seconds"] for s, _ in ok)
        pt = statistics.median(q["job_seconds"] for _, q in ok)
        mem = statistics.median(s["peak_mb"] for s, _ in ok)
        print(f"\n{TARGET[0]} parties x {TARGET[1]:,} rows, median of {len(ok)}: secagg "
              f"{st:.1f} s, plain {pt:.1f} s, secagg/plain {statistics.median(ratios):.2f}x; "
              f"peak memory {mem:.0f} MB")


if __name__ == "__main__":
    main()
