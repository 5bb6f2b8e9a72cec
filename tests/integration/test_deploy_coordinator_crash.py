"""Deployed on loopback, the coordinator failing: three parties as real processes on
127.0.0.1, and the coordinator (its SuperLink and the ServerApp runtime) killed with SIGKILL
after the job's first round.

- `fedsynth run` does not hang: it says it lost the coordinator and, once the coordinator is
  back, reports the run as stopped (exit 4); nothing is written to the output folder;
- every party's ledger is intact: whole JSON lines, the releases made before the kill, no
  round charged twice;
- the coordinator started again on the same state marks the orphaned run stopped, and the
  job submitted again runs to its end under a new job id: it is charged again in every
  party's ledger (what a party released before the crash is not refunded).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deploy_support import (
    Processes,
    kill_node,
    running_consortium,
    start_coordinator,
    submit,
    wait_for,
    write_job,
)

PARTIES = ("bank_a", "bank_b", "bank_c")
ROUND_DONE = r"^\S+ round 1 \(\S+\): \d+ marginals"

pytestmark = [pytest.mark.slow, pytest.mark.deploy]


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, Processes]]:
    with running_consortium(tmp_path_factory.mktemp("deploy-coordinator"), PARTIES) as c:
        yield c


def _releases(root: Path, name: str) -> list[dict[str, Any]]:
    lines = (root / name / "ledger.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line whole
    return [e for e in entries if e.get("kind") == "release"]


def test_coordinator_killed_mid_job(consortium: tuple[Path, int, Processes]) -> None:
    root, port, procs = consortium
    write_job(root, "job", PARTIES, 0.1)
    log = root / "coordinator.log"
    run = submit(root, port, "job", "runs/crashed")
    waited = wait_for(log, ROUND_DONE, 150)
    assert waited is not None and run.poll() is None, procs.logs()
    kill_node(procs.get("coordinator"))
    killed = time.monotonic()
    before = {name: _releases(root, name) for name in PARTIES}
    assert all(before.values()), before  # each party released the first round

    start_coordinator(procs, port)  # same keys, same state folder
    out, err = run.communicate(timeout=240)
    print(f"\ncoordinator killed: `fedsynth run` ended {time.monotonic() - killed:.1f} s "
          f"later with exit {run.returncode}: {err.strip().splitlines()[-1:]}")
    assert run.returncode == 4, out + err + procs.logs()
    assert "stopped" in err and "nothing was written" in err, err
    outputs = root / "outputs"
    assert not (outputs / "runs" / "crashed").exists()
    assert not [p for p in outputs.rglob("*") if "crashed" in p.name], list(outputs.rglob("*"))

    after_crash = {name: _releases(root, name) for name in PARTIES}
    for name in PARTIES:
        assert after_crash[name][:len(before[name])] == before[name]  # nothing lost

    rerun = submit(root, port, "job", "runs/again")
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out + err + procs.logs()
    assert (outputs / "runs" / "again" / "synthetic.csv").is_file()
    for name in PARTIES:
        releases = _releases(root, name)
        keys = [(e["job_id"], e["round"], e["label"]) for e in releases]
        assert len(keys) == len(set(keys)), keys  # no round charged twice
        jobs = list(dict.fromkeys(e["job_id"] for e in releases))
        assert len(jobs) == 2, jobs  # the crashed job's rounds, then the re-run's: both charged
        assert releases[:len(before[name])] == before[name]
