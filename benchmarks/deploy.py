"""Deployment benchmark: end-to-end time of a deployed job against the in-process simulation.

For each party count, a consortium is deployed on loopback (one machine, 127.0.0.1): a real
coordinator (`fedsynth coordinator start`: SuperLink with TLS and node authentication) and
one node per party (`fedsynth node start`), each its own process. The job (ISLR/Default,
ε=1, δ=1e-6, default threshold, no evaluation) is run with `fedsynth run` `--repeats` times;
the time is the wall-clock of the `fedsynth run` process, from start to exit (submission,
waiting for the parties, the job, writing the outputs). Every party's policy caps ε at a bit
more than `--repeats` jobs need, so the repeated runs are not refused.

In the same script run, the same job on the same parties' rows (each party's data.csv of the
deployment, nothing held out) is simulated in process with `fedsynth.simulations.run.simulate`,
engine "local" and engine "flower", `--repeats` times each. Bytes are what each party sent
the coordinator in the deployed run (metrics.json), averaged over the parties.

The consortium also runs a key holder (`fedsynth keyholder start`), and each repeat runs the
same job over the he channel right after the secagg one (columns "he"): the ratio he / secagg
is of medians taken on the same running consortium.

    python benchmarks/deploy.py [--parties 3 5] [--repeats 3] [--append]

Prints a Markdown table, writes it to benchmarks/results/deploy.md and the raw rows (one per
run) to benchmarks/results/deploy.jsonl.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from deploy_support import (
    Processes,
    make_consortium,
    run,
    start_coordinator,
    start_node,
    write_job,
)

from fedsynth import progress
from fedsynth.protocols import flower_runtime as rt
from fedsynth.simulations.run import simulate

EPSILON = 1.0
RESULTS = Path(__file__).resolve().parent / "results"


def deployed(n: int, repeats: int, work: Path) -> tuple[list[dict[str, Any]],
                                                        list[pd.DataFrame]]:
    names = [f"party_{i}" for i in range(1, n + 1)]
    root = work / f"deploy-{n}"
    root.mkdir()
    port = rt.free_port()
    make_consortium(root, names, port, epsilon_cap=2 * EPSILON * repeats + 0.5,
                    key_holders=("kh",))
    tables = [pd.read_csv(root / name / "data.csv") for name in names]
    write_job(root, "job", names, EPSILON)
    he_job = write_job(root, "job_he", names, EPSILON)
    he_job.write_text(he_job.read_text() + 'channel = "he"\n', encoding="utf-8")
    procs = Processes(root)
    rows = []
    try:
        start_coordinator(procs, port)
        for name in names:
            start_node(procs, name, port)
        procs.start("kh", "keyholder", "start", "--coordinator", f"127.0.0.1:{port}",
                    "--keys", "consortium/kh")
        for i in range(repeats):  # secagg and he interleaved, on the same running consortium
            for mode, job in (("deployed", "job"), ("deployed-he", "job_he")):
                t0 = time.perf_counter()
                res = run(root, "run", f"{job}.toml", "--coordinator", f"127.0.0.1:{port}",
                          "--keys", "consortium", "--out", f"runs/{job}-{i}", timeout=900)
                seconds = time.perf_counter() - t0
                if res.returncode != 0:
                    raise RuntimeError(f"{mode} run {i} with {n} parties failed:\n"
                                       f"{res.stderr}\n" + procs.logs())
                metrics = json.loads((root / "outputs" / "runs" / f"{job}-{i}" /
                                      "metrics.json").read_text())
                sent = metrics.get("bytes_sent_per_party", {})
                rows.append({"mode": mode, "parties": n, "run": i, "seconds": seconds,
                             "bytes_sent_per_party": sent,
                             "timings_seconds": metrics.get("timings_seconds", {})})
                print(f"{mode}, {n} parties, run {i + 1}: {seconds:.1f} s", flush=True)
    finally:
        procs.stop()
    return rows, tables


def simulated(n: int, engine: str, tables: list[pd.DataFrame], repeats: int
              ) -> list[dict[str, Any]]:
    rows = []
    for i in range(repeats):
        t0 = time.perf_counter()
        res = simulate(parties=tables, holdout=0.0, evaluate=False, epsilon=EPSILON,
                       delta=1e-6, engine=engine, seed=i)
        seconds = time.perf_counter() - t0
        rows.append({"mode": f"simulate-{engine}", "parties": n, "run": i, "seconds": seconds,
                     "bytes_sent_per_party": res.metrics.get("bytes_sent_per_party", {}),
                     "timings_seconds": res.timings})
        print(f"simulate {engine}, {n} parties, run {i + 1}: {seconds:.1f} s", flush=True)
    return rows


def _median(rows: list[dict[str, Any]], mode: str, n: int) -> float:
    return statistics.median(r["seconds"] for r in rows if r["mode"] == mode
                             and r["parties"] == n)


def _bytes(rows: list[dict[str, Any]], n: int, mode: str = "deployed") -> str:
    per = [statistics.mean(r["bytes_sent_per_party"].values()) for r in rows
           if r["mode"] == mode and r["parties"] == n and r["bytes_sent_per_party"]]
    return f"{statistics.mean(per) / 1e3:.0f} kB" if per else "n/a"


def table(rows: list[dict[str, Any]], counts: list[int], repeats: int) -> str:
    lines = [f"Deployed on loopback (TLS, node authentication; one machine) vs in-process "
             f"simulation; ISLR/Default, ε={EPSILON:g}, no evaluation; median of {repeats} "
             "runs each (seconds).", "",
             "| parties | deployed | simulate local | simulate flower | deployed / local "
             "| deployed / flower | bytes sent per party (deployed) | deployed, he channel "
             "| he / secagg | bytes per party (he) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in counts:
        d = _median(rows, "deployed", n)
        loc = _median(rows, "simulate-local", n)
        flw = _median(rows, "simulate-flower", n)
        he = _median(rows, "deployed-he", n)
        lines.append(f"| {n} | {d:.1f} | {loc:.1f} | {flw:.1f} | {d / loc:.1f}x "
                     f"| {d / flw:.1f}x | {_bytes(rows, n)} | {he:.1f} | {he / d:.2f}x "
                     f"| {_bytes(rows, n, 'deployed-he')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parties", type=int, nargs="+", default=[3, 5])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-save", action="store_true", help="print only")
    ap.add_argument("--append", action="store_true",
                    help="keep the saved rows of other party counts (the table shows all)")
    args = ap.parse_args()
    progress.show("off")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedsynth-bench-deploy-") as tmp:
        for n in args.parties:
            dep, tables = deployed(n, args.repeats, Path(tmp))
            rows += dep
            for engine in ("local", "flower"):
                rows += simulated(n, engine, tables, args.repeats)
    counts = list(args.parties)
    saved = RESULTS / "deploy.jsonl"
    if args.append and saved.is_file():
        kept = [r for r in map(json.loads, saved.read_text().splitlines())
                if r["parties"] not in counts]
        rows = kept + rows
        counts = sorted({r["parties"] for r in rows})
    text = table(rows, counts, args.repeats)
    print(text)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "deploy.md").write_text(text, encoding="utf-8")
        with saved.open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
