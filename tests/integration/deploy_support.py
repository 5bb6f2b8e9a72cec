"""Helpers for tests (and benchmarks) that deploy a consortium on loopback: real `fedsynth`
processes (coordinator and party nodes) on 127.0.0.1, each in its own process group.

A minimal copy of what test_deploy_loopback.py does inline, plus what failure tests need:
killing a party's node outright (SIGKILL to `fedsynth node start` and its SuperNode, which
runs in a session of its own) and starting it again."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from fedsynth.protocols import flower_runtime as rt
from fedsynth.protocols.spec import schema_sha256
from fedsynth.simulations import datasets
from fedsynth.synthesis.schema import draft_schema_with_notes

FEDSYNTH = [sys.executable, "-m", "fedsynth.cli"]
ENV = {"FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


class Processes:
    """The consortium's long-running processes; logs in `<root>/<name>.log`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        logf = (self.root / f"{name}.log").open("wb")
        proc = subprocess.Popen([*FEDSYNTH, *args], cwd=self.root, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **ENV})
        self.procs.append((name, proc))
        return proc

    def get(self, name: str) -> subprocess.Popen[bytes]:
        return next(p for n, p in reversed(self.procs) if n == name)

    def stop_one(self, name: str) -> None:
        """Ctrl-C to the latest process called `name`, and wait for it to end."""
        p = self.get(name)
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGINT)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    def stop(self) -> None:
        for _, p in self.procs:  # Ctrl-C: each stops its own SuperLink / SuperNode
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGINT)
        for _, p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def logs(self) -> str:
        return "\n".join(f"--- {n}:\n{(self.root / f'{n}.log').read_text()[-3000:]}"
                         for n, _ in self.procs)


def run(root: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FEDSYNTH, *args], cwd=root, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **ENV})


def submit(root: Path, port: int, job: str, out: str) -> subprocess.Popen[str]:
    """`fedsynth run JOB.toml` against the loopback coordinator, left running (the caller
    waits for it, or kills things while it runs)."""
    return subprocess.Popen([*FEDSYNTH, "run", f"{job}.toml", "--coordinator",
                             f"127.0.0.1:{port}", "--keys", "consortium", "--out", out],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **ENV})


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (from /proc; Linux)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        found += kids
        todo += kids
    return found


def kill_node(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a party's node: the `fedsynth node start` process group and the SuperNode's
    (started in its own session), as a crashed machine would stop them."""
    groups = [proc.pid]
    for child in descendants(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            groups.append(os.getpgid(child))
    for g in dict.fromkeys(groups):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(g, signal.SIGKILL)
    proc.wait()


def write_policy(root: Path, name: str, sha: str, epsilon_cap: float,
                 evaluation: str = "off", key_holders: Sequence[str] = ()) -> Path:
    folder = root / name
    folder.mkdir(exist_ok=True)
    path = folder / "policy.toml"
    path.write_text(f'''party = "{name}"
keys = "../consortium/{name}"
data = "data.csv"
holdout = "holdout.csv"
ledger = "ledger.jsonl"
schema_sha256 = "{sha}"
epsilon_cap = {epsilon_cap}
delta = 1e-6
channels = {'["secagg", "he"]' if key_holders else '["secagg"]'}
key_holders = {json.dumps(list(key_holders))}
max_parties = 10
evaluation = "{evaluation}"
''' + ("" if evaluation == "off" else "evaluation_epsilon_cap = 1.0\n"), encoding="utf-8")
    return path


def make_consortium(root: Path, parties: Sequence[str], port: int, *,
                    epsilon_cap: float = 10.0, holdout: float = 0.2,
                    caps: Mapping[str, float] | None = None, evaluation: str = "off",
                    key_holders: Sequence[str] = ()) -> None:
    """keys init, the public schema of ISLR/Default, its rows split at random among the
    parties (a `holdout` share of each kept aside), and each party's policy."""
    res = run(root, "keys", "init", "--out", "consortium", "--coordinator-address",
              f"127.0.0.1:{port}", "--parties", *parties,
              *(["--key-holders", *key_holders] if key_holders else []))
    if res.returncode != 0:
        raise RuntimeError(res.stderr)
    pooled, _ = datasets.load("ISLR/Default")
    schema, _ = draft_schema_with_notes(pooled)
    (root / "schema.json").write_text(schema.to_json(), encoding="utf-8")
    sha = schema_sha256(schema)
    rng = np.random.default_rng(0)
    owner = rng.integers(0, len(parties), len(pooled))
    held = rng.random(len(pooled)) < holdout
    for i, name in enumerate(parties):
        write_policy(root, name, sha, (caps or {}).get(name, epsilon_cap), evaluation,
                     key_holders)
        pooled[(owner == i) & ~held].to_csv(root / name / "data.csv", index=False)
        pooled[(owner == i) & held].to_csv(root / name / "holdout.csv", index=False)


@contextlib.contextmanager
def running_consortium(root: Path, parties: Sequence[str], *,
                       caps: Mapping[str, float] | None = None, evaluation: str = "off",
                       key_holders: Sequence[str] = (),
                       ) -> Iterator[tuple[Path, int, Processes]]:
    """A consortium made in `root` (see make_consortium; `caps`: a party's own ε cap;
    `evaluation`: what every party's policy allows), its
    coordinator and one node per party running; every process stopped on the way out."""
    port = rt.free_port()
    make_consortium(root, parties, port, caps=caps, evaluation=evaluation,
                    key_holders=key_holders)
    procs = Processes(root)
    try:
        start_coordinator(procs, port)
        for name in parties:
            start_node(procs, name, port)
        for name in key_holders:  # the he channel's key holders, each a node of its own
            procs.start(name, "keyholder", "start", "--coordinator", f"127.0.0.1:{port}",
                        "--keys", f"consortium/{name}")
        for name in (*parties, *key_holders):
            wait_connected(procs, name)
        yield root, port, procs
    finally:
        procs.stop()


def start_coordinator(procs: Processes, port: int, wait: float = 60.0) -> None:
    coordinator = procs.start("coordinator", "coordinator", "start", "--keys", "consortium",
                              "--port", str(port), "--outputs", "outputs")
    deadline = time.monotonic() + wait
    while "coordinator listening" not in (procs.root / "coordinator.log").read_text():
        if coordinator.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the coordinator did not start:\n" + procs.logs())
        time.sleep(0.2)


def wait_connected(procs: Processes, name: str, wait: float = 120.0) -> None:
    """Wait until the node `name` (a party's or a key holder's) has its SuperNode connected
    to the SuperLink: its SuperNode log shows the node id the SuperLink gave it. A job
    submitted before that finds the party missing (on a loaded machine the processes can
    take longer to start than the job waits for its parties)."""
    deadline = time.monotonic() + wait
    log = procs.root / f"{name}.log"
    while True:
        found = re.search(r"SuperNode log (\S+)", log.read_text(errors="replace"))
        supernode = procs.root / found.group(1) if found else None
        if supernode is not None and supernode.is_file() and \
                "SuperNode ID:" in supernode.read_text(errors="replace"):
            return
        if procs.get(name).poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the node {name} did not connect:\n" + procs.logs())
        time.sleep(0.2)


def start_node(procs: Processes, name: str, port: int, log_name: str | None = None
               ) -> subprocess.Popen[bytes]:
    return procs.start(log_name or name, "node", "start", "--coordinator", f"127.0.0.1:{port}",
                       "--keys", f"consortium/{name}", "--policy", f"{name}/policy.toml")


def write_job(root: Path, name: str, parties: Sequence[str], epsilon: float,
              threshold: int | None = None) -> Path:
    path = root / f"{name}.toml"
    listed = ", ".join(f'"{p}"' for p in parties)
    path.write_text(f'schema = "schema.json"\nparties = [{listed}]\nepsilon = {epsilon}\n'
                    'delta = 1e-6\n' + (f"threshold = {threshold}\n" if threshold else ""),
                    encoding="utf-8")
    return path


def wait_for(path: Path, pattern: str, timeout: float, after: int = 0) -> float | None:
    """Seconds until the regular expression `pattern` matches a line of `path` past
    character `after` (None: not within `timeout`)."""
    t0 = time.monotonic()
    found = re.compile(pattern, re.MULTILINE)
    while time.monotonic() - t0 < timeout:
        if found.search(path.read_text(errors="replace")[after:]):
            return time.monotonic() - t0
        time.sleep(0.1)
    return None
