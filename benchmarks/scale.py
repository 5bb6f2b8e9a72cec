"""Scale benchmark: time, peak memory and bytes per party of whole federated jobs, as a table.

Each job runs in a fresh process with Flower's simulation engine (one ClientApp per party,
Ray workers included), on ISLR/Default resampled to the total row count and split iid. Peak
memory is the largest sum of resident memory over the job process and all its descendants,
sampled every 0.1 s. Synthesis only: the evaluation step is left out.

    python benchmarks/scale.py [--repeats 3]

Steps (`--steps`): bank-sized jobs with the local engine (no Ray start-up), PARTIES parties of
ROWS rows each (ISLR/Default resampled, ε=1, no holdout, evaluation off, the schema drafted
from the pooled table as `fedsynth simulate --data` does), output folder written. Per step:
prepare (read, draft the schema, validate, split, write the parties' files), setup, measure,
estimate + sample, write (synthetic.csv and the rest), and the whole `simulate` call; medians
of REPEATS runs, each in a fresh process. `--code DIR` runs another checkout (DIR holds the
package folder `fedsynth`), so that a snapshot of main and one of the branch are measured in
one session; rows go to results/scale-steps.jsonl under `--label`, and the table (every
label, with the ratio of the last label to the first) to results/scale-steps.md.

    python benchmarks/scale.py --steps --label before --code /snapshots/main
    python benchmarks/scale.py --steps --label after --code /snapshots/branch
    python benchmarks/scale.py --steps --report

Big party (`--big-party N`): one party's Parquet file of N rows (row groups of 1M rows), read,
validated and encoded in chunks, then counted for the three rounds of a job (one-way, every
pair on 8 groups, the pairs on 32 groups); time and peak memory of that process.
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
    out, peak, wall, rc = _measured(cmd, dict(os.environ))
    if rc != 0:
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


STEPS = ["prepare", "setup", "measure", "estimate_and_sample", "write", "whole"]
STEPS_JSONL = Path("benchmarks/results/scale-steps.jsonl")


def steps_child(parties: int, rows: int) -> None:
    import logging
    import shutil
    import tempfile

    import numpy as np

    logging.basicConfig(level=logging.WARNING)
    from fedsynth import progress
    from fedsynth.simulations import datasets
    from fedsynth.simulations.run import simulate

    progress.show("off")
    base, _ = datasets.load("ISLR/Default")
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="scale-steps-"))
    try:
        pooled = work / "pooled.parquet"
        base.iloc[rng.integers(0, len(base), parties * rows)].reset_index(drop=True).to_parquet(
            pooled, index=False)
        t = time.perf_counter()
        res = simulate(data=pooled, n_parties=parties, holdout=0.0, evaluate=False, seed=0,
                       engine="local", out=work / "out")
        whole = time.perf_counter() - t
        tm = res.metrics["timings_seconds"]
        out = {"setup": tm["setup"], "measure": tm["measure"],
               "estimate_and_sample": tm["estimate_and_sample"],
               "prepare": tm["simulation_total"] - tm["total"],
               "write": whole - tm["simulation_total"], "whole": whole,
               "synthetic_rows": len(res.synthetic),
               "files": sorted(p.name for p in (work / "out").iterdir())}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out))


def run_steps(parties: int, rows: int, code: Path | None, label: str) -> dict:
    cmd = [sys.executable, __file__, "--one-steps", str(parties), str(rows)]
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    out, peak, wall, rc = _measured(cmd, env)
    if rc != 0:
        return {"label": label, "parties": parties, "rows": rows, "error": True}
    res = json.loads(out.strip().splitlines()[-1])
    res.update(label=label, parties=parties, rows=rows, peak_mb=peak / 2**20,
               process_seconds=wall)
    return res


def _measured(cmd: list[str], env: dict[str, str]) -> tuple[str, int, float, int]:
    """Run `cmd`; its stdout, peak memory of its process tree (bytes), wall time, exit code."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env)
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
    return out, peak, time.perf_counter() - t0, proc.returncode


def steps_table(rows: list[dict]) -> str:
    """Medians per label and configuration, and the last label over the first."""
    ok = [r for r in rows if not r.get("error")]
    labels = list(dict.fromkeys(r["label"] for r in ok))
    configs = list(dict.fromkeys((r["parties"], r["rows"]) for r in ok))
    head = ("| parties x rows | code | runs | " + " | ".join(
        s.replace("_and_", " + ").replace("_", " ") for s in STEPS) + " | peak memory |")
    lines = [head, "|" + "---|" * (len(STEPS) + 4)]
    for parties, n in configs:
        med: dict[str, dict[str, float]] = {}
        for label in labels:
            runs = [r for r in ok if r["label"] == label and (r["parties"], r["rows"]) == (
                parties, n)]
            if not runs:
                continue
            med[label] = {s: statistics.median(r[s] for r in runs) for s in STEPS}
            med[label]["peak_mb"] = statistics.median(r["peak_mb"] for r in runs)
            cells = " | ".join(f"{med[label][s]:.1f} s" for s in STEPS)
            lines.append(f"| {parties} x {n:,} | {label} | {len(runs)} | {cells} | "
                         f"{med[label]['peak_mb'] / 1024:.1f} GB |")
        if len(med) > 1:
            first, last = med[labels[0]], med[labels[-1]]
            cells = " | ".join(f"{last[s] / first[s]:.2f}x" if first[s] > 0 else "-"
                               for s in STEPS)
            lines.append(f"| {parties} x {n:,} | {labels[-1]} / {labels[0]} | | {cells} | "
                         f"{last['peak_mb'] / first['peak_mb']:.2f}x |")
    return "\n".join(lines) + "\n"


def big_party_child(rows: int) -> None:
    import itertools
    import tempfile

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fedsynth.client_node.table import party_table
    from fedsynth.simulations import datasets
    from fedsynth.synthesis.encoding import Encoding, Grouping, public_grouping
    from fedsynth.synthesis.schema import infer_schema

    base, _ = datasets.load("ISLR/Default")
    schema = infer_schema(base)
    rng = np.random.default_rng(0)
    path = Path(tempfile.mkdtemp(prefix="big-party-")) / "data.parquet"
    t = time.perf_counter()
    step = 1_000_000
    with pq.ParquetWriter(path, pa.Table.from_pandas(base.iloc[:1], preserve_index=False
                                                     ).schema) as w:
        for start in range(0, rows, step):
            part = base.iloc[rng.integers(0, len(base), min(step, rows - start))]
            w.write_table(pa.Table.from_pandas(part, preserve_index=False))
    made = time.perf_counter() - t
    try:
        enc = Encoding.from_schema(schema)
        d = len(enc.codecs)
        t = time.perf_counter()
        table = party_table(path, schema)
        load = time.perf_counter() - t
        t = time.perf_counter()
        table.count([Grouping.identity(n) for n in enc.sizes], [(j,) for j in range(d)])
        pairs = list(itertools.combinations(range(d), 2))
        table.count([public_grouping(c, 8) for c in enc.codecs], pairs)
        table.count([public_grouping(c, 32) for c in enc.codecs], pairs[: d - 1])
        count = time.perf_counter() - t
        print(json.dumps({"rows": rows, "file_mb": path.stat().st_size / 2**20,
                          "write_file_seconds": made, "load_seconds": load,
                          "count_three_rounds_seconds": count,
                          "codes_mb": table.nbytes / 2**20, "kept": table.columns is not None}))
    finally:
        path.unlink()
        path.parent.rmdir()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", nargs=3)
    ap.add_argument("--one-steps", nargs=2)
    ap.add_argument("--one-big", type=int)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/scale.json"))
    ap.add_argument("--steps", action="store_true")
    ap.add_argument("--report", action="store_true", help="--steps: only print the table")
    ap.add_argument("--parties", type=int, default=10)
    ap.add_argument("--rows-per-party", type=int, default=1_000_000)
    ap.add_argument("--label", default="this")
    ap.add_argument("--code", type=Path)
    ap.add_argument("--big-party", type=int)
    args = ap.parse_args()
    if args.one:
        child(int(args.one[0]), int(args.one[1]), args.one[2])
        return
    if args.one_steps:
        steps_child(int(args.one_steps[0]), int(args.one_steps[1]))
        return
    if args.one_big:
        big_party_child(args.one_big)
        return
    if args.big_party:
        env = dict(os.environ)
        if args.code is not None:
            env["PYTHONPATH"] = str(args.code)
        out, peak, wall, rc = _measured([sys.executable, __file__, "--one-big",
                                         str(args.big_party)], env)
        res = {"error": True} if rc else json.loads(out.strip().splitlines()[-1])
        res.update(peak_mb=peak / 2**20, process_seconds=wall, label=args.label)
        with open(STEPS_JSONL.with_name("scale-big-party.jsonl"), "a") as f:
            f.write(json.dumps(res) + "\n")
        print(json.dumps(res))
        return
    if args.steps:
        if not args.report:
            for _ in range(args.repeats):
                r = run_steps(args.parties, args.rows_per_party, args.code, args.label)
                print(json.dumps(r), flush=True)
                STEPS_JSONL.parent.mkdir(parents=True, exist_ok=True)
                with open(STEPS_JSONL, "a") as f:
                    f.write(json.dumps(r) + "\n")
        rows = [json.loads(x) for x in STEPS_JSONL.read_text().splitlines() if x.strip()]
        table = steps_table(rows)
        STEPS_JSONL.with_suffix(".md").write_text(table)
        print("\n" + table)
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
