"""Deployed on loopback over the he channel: a coordinator, three party nodes and a key
holder (`fedsynth keyholder start`), each its own process on 127.0.0.1, and a job with
`channel = "he"` submitted with `fedsynth run`. The key holder is a member of the consortium
of its own (`keys init --key-holders`); every party's policy lists it among the key holders
it accepts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_support import Processes, run, running_consortium, write_job

PARTIES = ("bank_a", "bank_b", "bank_c")

pytestmark = [pytest.mark.slow, pytest.mark.deploy]


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, Processes]]:
    with running_consortium(tmp_path_factory.mktemp("deploy-he"), PARTIES,
                            key_holders=("kh",)) as c:
        yield c


def test_he_job_runs_end_to_end(consortium: tuple[Path, int, Processes]) -> None:
    root, port, procs = consortium
    job = write_job(root, "job_he", PARTIES, 0.5)
    job.write_text(job.read_text() + 'channel = "he"\nkey_holder = "kh"\n', encoding="utf-8")
    res = run(root, "run", "job_he.toml", "--coordinator", f"127.0.0.1:{port}",
              "--keys", "consortium", "--out", "runs/he")
    assert res.returncode == 0, res.stdout + res.stderr + procs.logs()
    folder = root / "outputs" / "runs" / "he"
    privacy = json.loads((folder / "privacy.json").read_text())
    assert privacy["channel"] == "he", privacy
    assert all(sorted(r["contributors"]) == [1, 2, 3] for r in privacy["rounds"]), privacy
    assert (folder / "synthetic.csv").stat().st_size > 0
    for name in PARTIES:  # each party charged each round once, under the he job
        lines = (root / name / "ledger.jsonl").read_text().splitlines()
        releases = [e for e in map(json.loads, lines) if e.get("kind") == "release"]
        assert len(releases) == len(privacy["rounds"]), releases
    holder_log = (root / "kh.log").read_text()
    assert "key holder kh" in holder_log, holder_log

