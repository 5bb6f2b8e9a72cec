"""Deployed on loopback: a real coordinator (SuperLink + coordinator runtime), three party
nodes (SuperNode + party runtime) and a key holder (`fedsynth keyholder start`) as separate
`fedsynth` processes on 127.0.0.1, jobs submitted with `fedsynth run`. Every process is started
and stopped by the test; the tests share one consortium.

The key holder is a member of the consortium of its own (`keys init --key-holders`); every
party's policy accepts the he channel and lists it among the key holders it accepts, so the
same consortium runs secagg jobs and a job with `channel = "he"`."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from deploy_support import (  # this folder is on the path: pytest rootdir-relative import
    Processes,
    run,
    running_consortium,
    wait_for,
)

from fedsynth.protocols import flower_runtime as rt

PARTIES = ("bank_a", "bank_b", "bank_c")

pytestmark = [pytest.mark.slow, pytest.mark.deploy]


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, Processes]]:
    # bank_c allows little: the refusal test needs it
    with running_consortium(tmp_path_factory.mktemp("deploy"), PARTIES,
                            caps={"bank_c": 0.05}, evaluation="dp", key_holders=("kh",)) as c:
        yield c


def _job(root: Path, name: str, epsilon: float, extra: str = "") -> Path:
    path = root / f"{name}.toml"
    path.write_text(f'''schema = "schema.json"
parties = ["bank_a", "bank_b", "bank_c"]
epsilon = {epsilon}
delta = 1e-6
{extra}''', encoding="utf-8")
    return path


def _releases(root: Path, name: str) -> list[dict[str, Any]]:
    path = root / name / "ledger.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e.get("kind") == "release"]


def test_job_runs_end_to_end(consortium: tuple[Path, int, Processes]) -> None:
    root, port, procs = consortium
    # bank_c's policy allows ε 0.05 in all: this job (ε=0.04) is within it
    _job(root, "job", 0.04)
    t0 = time.monotonic()
    res = run(root, "run", "job.toml", "--coordinator", f"127.0.0.1:{port}", "--keys",
              "consortium", "--out", "runs/joint")
    assert res.returncode == 0, res.stdout + res.stderr + procs.logs()
    assert "submitted" in res.stdout and "running" in res.stdout and "finished" in res.stdout
    out = root / "outputs" / "runs" / "joint"  # inside the coordinator's outputs folder
    for f in ("synthetic.csv", "privacy.json", "metrics.json", "schema.json", "job.log"):
        assert (out / f).is_file(), f
    synth = pd.read_csv(out / "synthetic.csv")
    schema = json.loads((root / "schema.json").read_text())
    assert list(synth.columns) == [c["name"] for c in schema["columns"]]
    assert len(synth) > 1000
    privacy = json.loads((out / "privacy.json").read_text())
    assert privacy["epsilon_spent"] <= 0.04 * (1 + 1e-9)
    print(f"deployed job: {time.monotonic() - t0:.1f} s")


def test_policy_refusal_fails_the_run(consortium: tuple[Path, int, Processes]) -> None:
    root, port, procs = consortium
    _job(root, "big", 1.0)  # above bank_c's ε cap
    res = run(root, "run", "big.toml", "--coordinator", f"127.0.0.1:{port}", "--keys",
              "consortium", "--out", "runs/big")
    assert res.returncode == 4, res.stdout + res.stderr + procs.logs()
    assert "bank_c refused" in res.stderr and "cap ε=0.05" in res.stderr, res.stderr
    assert not (root / "outputs" / "runs" / "big").exists()


@pytest.mark.parametrize("out", ["/tmp/elsewhere", "../outside", "runs/../../outside"])
def test_a_job_names_only_a_folder_inside_the_coordinators_outputs(
        consortium: tuple[Path, int, Processes], out: str) -> None:
    root, port, _procs = consortium
    _job(root, "job", 0.01)
    res = run(root, "run", "job.toml", "--coordinator", f"127.0.0.1:{port}", "--keys",
              "consortium", "--out", out)
    assert res.returncode == 3 and "relative name" in res.stderr, res.stderr


def test_other_app_bundle_is_refused(consortium: tuple[Path, int, Processes]) -> None:
    root, port, _procs = consortium
    fab, pin = rt.fedsynth_fab(version="0.0.0+modified")
    assert pin != rt.fedsynth_fab()[1]
    control = rt.control_client(f"127.0.0.1:{port}",
                                (root / "consortium" / "ca.pem").read_bytes())
    try:
        run_id = rt.submit_run(control, {"job-toml": "", "schema-json": "", "out": ""}, fab)
        deadline = time.monotonic() + 60
        while (st := rt.run_status(control, run_id))[0] != "finished":
            assert time.monotonic() < deadline, st
            time.sleep(0.5)
    finally:
        control.close()
    assert st[1] == "failed", st
    assert "refused" in st[2], st


def test_unregistered_node_is_refused(consortium: tuple[Path, int, Processes]) -> None:
    """A node whose authentication key the coordinator never registered (here: bank_a's
    folder with a fresh node key) is refused by the SuperLink; the node says so and retries,
    and never joins a job."""
    root, port, procs = consortium
    impostor = root / "impostor"
    shutil.copytree(root / "consortium" / "bank_a", impostor)
    fresh = run(root, "keys", "party", "--name", "bank_a", "--out", "fresh-keys")
    assert fresh.returncode == 0, fresh.stderr
    for f in ("node-auth.key", "node-auth.pub"):
        shutil.copy2(root / "fresh-keys" / f, impostor / f)
    procs.start("impostor", "node", "start", "--coordinator", f"127.0.0.1:{port}",
                "--keys", "impostor", "--policy", "bank_a/policy.toml")
    log = root / "impostor.log"
    waited = wait_for(log, r"the SuperNode stopped .*retrying", 60)
    assert waited is not None, procs.logs()
    text = log.read_text()
    assert "joined job" not in text
    supernode = (root / "bank_a" / "supernode.log").read_text(errors="replace")
    assert "not registered" in supernode.lower() or "2004" in supernode \
        or "permission" in supernode.lower() or "unauthenticated" in supernode.lower(), \
        supernode[-2000:]
    procs.stop_one("impostor")


def test_job_with_federated_evaluation(consortium: tuple[Path, int, Processes]) -> None:
    """`evaluate = true`: the parties score the synthetic table on their held-out rows (DP,
    charged to each party's evaluation budget) and the report carries it. ε is small: bank_c
    has 0.01 of its 0.05 left after the first test."""
    root, port, procs = consortium
    _job(root, "job_eval", 0.005, "evaluate = true\nevaluation_epsilon = 0.5\n")
    res = run(root, "run", "job_eval.toml", "--coordinator", f"127.0.0.1:{port}",
              "--keys", "consortium", "--out", "runs/evaluated")
    assert res.returncode == 0, res.stdout + res.stderr + procs.logs()
    folder = root / "outputs" / "runs" / "evaluated"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert "evaluation_error" not in metrics, metrics["evaluation_error"]
    ev = metrics["evaluation"]
    assert ev["mode"] == "federated" and ev["real_side"] == "held_out", ev
    assert sorted(ev["parties"]) == [1, 2, 3], ev
    assert "held-out" in (folder / "report.html").read_text()
    for name in PARTIES:
        lines = (root / name / "ledger.jsonl").read_text().splitlines()
        budgets = [e.get("budget") for e in map(json.loads, lines) if e.get("kind") == "release"]
        assert "evaluation" in budgets, budgets


def test_he_job_runs_end_to_end(consortium: tuple[Path, int, Processes]) -> None:
    """A job over the he channel: the key holder decrypts each round's sum; every party
    contributes each round and is charged each round once. ε is small: with the jobs above,
    bank_c's 0.05 holds 0.04 + 0.005 + 0.004, whatever order the tests run in."""
    root, port, procs = consortium
    _job(root, "job_he", 0.004, 'channel = "he"\nkey_holder = "kh"\n')
    before = {name: len(_releases(root, name)) for name in PARTIES}
    res = run(root, "run", "job_he.toml", "--coordinator", f"127.0.0.1:{port}",
              "--keys", "consortium", "--out", "runs/he")
    assert res.returncode == 0, res.stdout + res.stderr + procs.logs()
    folder = root / "outputs" / "runs" / "he"
    privacy = json.loads((folder / "privacy.json").read_text())
    assert privacy["channel"] == "he", privacy
    assert all(sorted(r["contributors"]) == [1, 2, 3] for r in privacy["rounds"]), privacy
    assert (folder / "synthetic.csv").stat().st_size > 0
    for name in PARTIES:  # each party charged each round once, under the he job
        releases = _releases(root, name)[before[name]:]
        assert len(releases) == len(privacy["rounds"]), releases
        assert len({e["job_id"] for e in releases}) == 1, releases
    holder_log = (root / "kh.log").read_text()
    assert "key holder kh" in holder_log, holder_log


def test_dpsgd_job_runs_deployed(consortium: tuple[Path, int, Processes]) -> None:
    """`method = "dpsgd"` deployed: the domain round and a training round go through the
    real nodes; the generator is saved; every party is charged the plan's two events. A tiny
    plan between bank_a and bank_b (bank_c's cap is kept for the jobs above)."""
    pytest.importorskip("torch")
    root, port, procs = consortium
    two = PARTIES[:2]
    (root / "job_dp.toml").write_text(
        'schema = "schema.json"\nparties = ["bank_a", "bank_b"]\nepsilon = 1.0\n'
        'method = "dpsgd"\n[train]\nrounds = 1\nhidden = 16\n',
        encoding="utf-8")
    before = {name: len(_releases(root, name)) for name in two}
    res = run(root, "run", "job_dp.toml", "--coordinator", f"127.0.0.1:{port}",
              "--keys", "consortium", "--out", "runs/dpsgd")
    assert res.returncode == 0, res.stdout + res.stderr + procs.logs()
    folder = root / "outputs" / "runs" / "dpsgd"
    privacy = json.loads((folder / "privacy.json").read_text())
    assert privacy["method"] == "dpsgd" and privacy["epsilon_spent"] <= 1.0
    assert json.loads((folder / "model.json").read_text())["format"] == "fedsynth-generator"
    assert len(pd.read_csv(folder / "synthetic.csv")) > 0
    for name in two:
        labels = [e["label"] for e in _releases(root, name)[before[name]:]]
        assert labels == ["one-way", "train"], labels
