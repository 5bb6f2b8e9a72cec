"""Secure-sum scale benchmark: the complete graph against the SecAgg+ sparse graph, as a table.

Two measurements, each configuration in its own process, complete and sparse back to back:
- `round`: one secure-sum round alone, both halves in one process (every party's mask key,
  masked vector and unmask reply, and the coordinator's collect and finish), on a vector of
  `--cells` counts, no dropouts;
- `job`: a whole marginals job with the local engine (parties as in-process nodes, no Ray),
  ISLR/Default resampled to 1,000 rows per party, evaluation off, ε = 1.
Medians of `--repeats` runs (the complete graph from `--once-from` parties on: one run, it
takes minutes); the ratio is of the medians.

    python benchmarks/secure_sum_scale.py [--repeats 3] [--parties 100 300 1000]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

GRAPHS = ("complete", "sparse")


def one_round(parties: int, graph: str, cells: int) -> dict:
    import numpy as np

    from fedsynth.crypto import secagg_graph
    from fedsynth.crypto.keys import Identity
    from fedsynth.crypto.secagg import KeyPair
    from fedsynth.protocols.secure_sum import (
        CoordinatorRound,
        RoundKeys,
        party_mask_key,
        party_unmask_reply,
        secagg_measure_reply,
    )

    n, t, job = parties, math.ceil(0.8 * parties), "bench"
    members = list(range(1, n + 1))
    ids = {u: Identity.generate(f"p{u}") for u in members}
    keys = {u: KeyPair.generate() for u in members}
    publics = {u: k.public for u, k in keys.items()}
    t0 = time.perf_counter()
    g = None
    if graph == "sparse":
        seed = secagg_graph.graph_seed(job_id=job, parties=n, threshold=t, colluders=0,
                                       identity_keys=tuple(ids[u].public for u in members),
                                       job_keys=publics)
        g = secagg_graph.sparse_graph(seed, secagg_graph.sparse_params(n, t, 0))
    book, private = RoundKeys(1), {}
    for u in members:
        ann, private[u] = party_mask_key(job_id=job, me=u, round_id=1, holders=members,
                                         threshold=t, private=keys[u].private, publics=publics,
                                         identity_key=ids[u].private, graph=g)
        book.add(u, ann, job_id=job, identity=ids[u].public, holders=members, graph=g)
    rng = np.random.default_rng(0)
    values = {u: rng.integers(0, 1000, cells) for u in members}
    coord = CoordinatorRound(round_id=1, channel="secagg", participants=members, length=cells,
                             threshold=t, job_id=job, keys=book, graph=g,
                             identities={u: ids[u].public for u in members})
    sent = {u: secagg_measure_reply(values[u], job_id=job, me=u, round_id=1,
                                    participants=members, threshold=t,
                                    private=keys[u].private, publics=publics,
                                    mask_private=private[u], mask_publics=book.publics,
                                    identity_key=ids[u].private, graph=g) for u in members}
    coord.collect({u: r for u, (r, _, _) in sent.items()})
    reqs = coord.unmask_requests()
    replies = {v: party_unmask_reply(reqs[v], job_id=job, me=v, threshold=t,
                                     participants=members, private=keys[v].private,
                                     publics=publics, own_share=sent[v][1], graph=g)
               for v in members}
    total = coord.finish(replies)
    seconds = time.perf_counter() - t0
    if not np.array_equal(total, np.sum(list(values.values()), axis=0)):
        raise SystemExit("the secure sum is wrong")
    degree = (max(len(g.neighbours(u)) for u in members) if g is not None else n - 1)
    return {"seconds": seconds, "max_neighbours": degree,
            "share_threshold": g.share_threshold if g is not None else t}


def one_job(parties: int, graph: str, rows_per_party: int) -> dict:
    import logging

    import numpy as np

    logging.basicConfig(level=logging.WARNING)
    from fedsynth.simulations import datasets
    from fedsynth.simulations import run as sim_run
    from fedsynth.simulations.run import simulate
    from fedsynth.synthesis.schema import infer_schema

    spec_of = sim_run.job_spec

    def with_graph(*args: object, **kwargs: object) -> object:
        import dataclasses

        spec = spec_of(*args, **kwargs)  # type: ignore[arg-type]
        return dataclasses.replace(spec, graph=graph)

    sim_run.job_spec = with_graph  # type: ignore[assignment]
    base, _ = datasets.load("ISLR/Default")
    schema = infer_schema(base)
    rng = np.random.default_rng(0)
    df = base.iloc[rng.integers(0, len(base), parties * rows_per_party)].reset_index(drop=True)
    t = time.perf_counter()
    res = simulate(parties=[df.iloc[i::parties].reset_index(drop=True) for i in range(parties)],
                   schema=schema, holdout=0.0, channel="secagg", evaluate=False, seed=0,
                   engine="local")
    return {"seconds": time.perf_counter() - t, "timings": res.timings}


def run(kind: str, parties: int, graph: str, extra: str) -> dict | None:
    out = subprocess.run([sys.executable, __file__, "--one", kind, str(parties), graph, extra],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(f"FAILED {kind} {parties} {graph}: {out.stderr[-600:]}", flush=True)
        return None
    row = dict(json.loads(out.stdout.strip().splitlines()[-1]))
    row.update(kind=kind, parties=parties, graph=graph)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", nargs=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parties", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--job-parties", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--job-complete-max", type=int, default=300,
                    help="largest n at which the whole job also runs on the complete graph")
    ap.add_argument("--once-from", type=int, default=1000,
                    help="complete-graph configurations from this n run once")
    ap.add_argument("--round-complete-max", type=int, default=1000,
                    help="largest n at which the round alone also runs on the complete graph")
    ap.add_argument("--resume", action="store_true",
                    help="keep the rows already in the .jsonl file and run only what is missing")
    ap.add_argument("--cells", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/secure_sum_scale"))
    args = ap.parse_args()
    if args.one:
        kind, n, graph, extra = args.one
        row = (one_round(int(n), graph, int(extra)) if kind == "round"
               else one_job(int(n), graph, int(extra)))
        print(json.dumps(row))
        return
    jsonl = args.out.with_suffix(".jsonl")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = ([json.loads(x) for x in jsonl.read_text().splitlines() if x.strip()]
                        if args.resume and jsonl.exists() else [])
    rows = [r for r in rows if not r.get("superseded")]  # kept in the file, with the reason

    if not args.resume:
        jsonl.write_text("")

    def have(kind: str, n: int, graph: str) -> int:
        return sum(1 for r in rows if (r["kind"], r["parties"], r["graph"]) == (kind, n, graph))

    for kind, sizes, extra in (("round", args.parties, str(args.cells)),
                               ("job", args.job_parties, "1000")):
        for n in sizes:
            for rep in range(args.repeats):
                for graph in GRAPHS:
                    if kind == "job" and graph == "complete" and n > args.job_complete_max:
                        continue
                    if graph == "complete" and n >= args.once_from and rep > 0:
                        continue  # minutes each: one run
                    if kind == "round" and graph == "complete" and n > args.round_complete_max:
                        continue
                    if have(kind, n, graph) > rep:
                        continue
                    r = run(kind, n, graph, extra)
                    if r is not None:
                        rows.append(r)
                        with open(jsonl, "a") as f:
                            f.write(json.dumps(r) + "\n")
    lines = ["Medians (number of runs in brackets; complete and sparse alternate within a "
             "run of the script); round: one secure-sum round alone, "
             f"{args.cells} cells, no dropouts; job: whole marginals job, local engine, "
             "1,000 rows per party, ε = 1, evaluation off.", "",
             "| what | parties | complete (s) | sparse (s) | complete / sparse | "
             "neighbours (sparse, max) | t_k |", "|---|---|---|---|---|---|---|"]
    for kind, sizes in (("round", args.parties), ("job", args.job_parties)):
        for n in sizes:
            got = {g: [r for r in rows if r["kind"] == kind and r["parties"] == n
                       and r["graph"] == g] for g in GRAPHS}
            med = {g: statistics.median(r["seconds"] for r in rs) if rs else None
                   for g, rs in got.items()}
            ratio = ("" if med["complete"] is None or not med["sparse"]
                     else f"{med['complete'] / med['sparse']:.1f}x")
            sp = got["sparse"][0] if got["sparse"] else {}
            cells = ["n/a" if med[g] is None else f"{med[g]:.1f} ({len(got[g])})"
                     for g in GRAPHS]
            below = [m for m in sizes if m < n and any(
                r["kind"] == kind and r["parties"] == m and r["graph"] == "complete"
                for r in rows)]
            if med["complete"] is None and below and med["sparse"]:
                m = max(below)  # the complete graph's work grows as n²: scale the largest run
                est = statistics.median(r["seconds"] for r in rows if r["kind"] == kind
                                        and r["parties"] == m and r["graph"] == "complete")
                est *= (n / m) ** 2
                cells[0] = f"not run (~{est:.0f} from n={m}, x n²)"
                ratio = f"~{est / med['sparse']:.0f}x"
            lines.append(f"| {kind} | {n} | " + " | ".join(cells)
                         + f" | {ratio} | {sp.get('max_neighbours', '')} | "
                           f"{sp.get('share_threshold', '')} |")
    text = "\n".join(lines)
    args.out.with_suffix(".md").write_text(text + "\n")
    print("\n" + text)


if __name__ == "__main__":
    main()
