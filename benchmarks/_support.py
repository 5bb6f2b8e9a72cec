"""Shared by the benchmark scripts: one configuration in its own process, its row appended."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

_lock = threading.Lock()


def run_config(script: str, args: list[str], jsonl: Path, label: str) -> dict | None:
    """Run `script --one ARGS` in a fresh process (jax's compiled code stays bounded, and one
    thread each), append the JSON row it prints last to `jsonl` and return it; None if it
    failed (the tail of its error is printed)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, script, "--one", *args], capture_output=True,
                         text=True, env=env, check=False)
    if out.returncode != 0:
        print(f"FAILED {label}: {out.stderr[-800:]}", flush=True)
        return None
    line = out.stdout.strip().splitlines()[-1]
    with _lock, open(jsonl, "a") as f:
        f.write(line + "\n")
    return dict(json.loads(line))


Config = tuple[str, float, str, int]  # dataset, ε, partition, seed


def sweep(script: str, configs: Sequence[Config], extra: list[str], jsonl: Path, *,
          workers: int, report_only: bool) -> list[dict]:
    """Run every configuration not yet in `jsonl` (each in its own process, `workers` at once,
    rows appended as they finish) and return all rows; with `report_only`, run nothing."""
    done = [json.loads(x) for x in jsonl.read_text().splitlines() if x.strip()] \
        if jsonl.exists() else []
    have = {(r["dataset"], r["epsilon"], r["partition"], r["seed"]) for r in done}
    todo = [c for c in configs if c not in have]
    if report_only or not todo:
        return done
    jsonl.parent.mkdir(parents=True, exist_ok=True)

    def run(cfg: Config) -> None:
        row = run_config(script, [cfg[0], str(cfg[1]), cfg[2], str(cfg[3]), *extra], jsonl,
                         str(cfg))
        if row is not None:
            print(json.dumps(row), flush=True)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(run, todo))
    return [json.loads(x) for x in jsonl.read_text().splitlines() if x.strip()]
