"""Shared by the benchmark scripts: one configuration in its own process, its row appended."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
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
