"""Whole jobs over Node + LocalTransport with dropouts in the measure AND the unmask step of
the same round: the one-shot mask keys let the job finish with the exact sum."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import fedsynth.client_node.node as node_module
import fedsynth.coordinator.rounds as job_module
from fedsynth.client_node.node import Node, NodePolicy
from fedsynth.coordinator.job import JobOptions, JobResult, run_job
from fedsynth.evaluation.plan import EvalOptions
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.protocols.secure_sum import RoundFailed
from fedsynth.simulations import partition
from fedsynth.simulations.local import LocalTransport
from fedsynth.simulations.parties import job_spec, make_identities, write_parties
from fedsynth.synthesis.schema import infer_schema

N = 6
T = 4  # the lowest secure threshold for 6 parties: ceil((6 + 0 + 2) / 2)
OPTIONS = JobOptions(seed=0, iters=100)


def _pooled(n: int = 1800, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return pd.DataFrame({"region": rng.choice(["north", "south", "east"], n),
                         "k": rng.integers(0, 6, n),
                         "x": x,
                         "y": np.where(x + 0.3 * rng.normal(size=n) > 0, "yes", "no")})


POOLED = _pooled()
SCHEMA = infer_schema(POOLED)
IDS = make_identities(N)


@dataclasses.dataclass
class Run:
    result: JobResult | None
    vectors: dict[tuple[int, int], np.ndarray]  # (party, round) -> the vector it masked
    sums: dict[int, tuple[list[int], np.ndarray]]  # round -> (contributors, total)
    bodies: list[tuple[int, str]]  # (party, body) of every reply that reached the coordinator


def _run(tmp: Path, monkeypatch: pytest.MonkeyPatch, *, fail: dict[int, tuple[int, str]],
         evaluate: EvalOptions | None = None) -> Run:
    parts = partition.split(POOLED, N, "iid", target=None, seed=1)
    trains = [p.iloc[: int(0.8 * len(p))].reset_index(drop=True) for p in parts]
    holds = [p.iloc[int(0.8 * len(p)):].reset_index(drop=True) for p in parts]
    spec = job_spec(SCHEMA, IDS, epsilon=2.0, delta=1e-6, threshold=T)
    pols: dict[int, NodePolicy] = write_parties(
        tmp, trains, spec, IDS, holds if evaluate else None,
        evaluation="exact" if evaluate else "off")
    pols = {p: dataclasses.replace(pol, fail_at=fail.get(p)) for p, pol in pols.items()}
    run = Run(None, {}, {}, [])
    real_reply = node_module.party_measure_reply
    real_sum = job_module.secure_sum

    def spy_reply(values: np.ndarray, **kw: Any) -> Any:
        run.vectors[(kw["me"], kw["round_id"])] = values.astype(np.int64).copy()
        return real_reply(values, **kw)

    def spy_sum(*args: Any, **kw: Any) -> Any:
        res = real_sum(*args, **kw)
        run.sums[kw["round_id"]] = (list(res.contributors), res.total.copy())
        return res

    def watch(p: int, reply: bytes) -> bytes:
        env = pb.Envelope()
        env.ParseFromString(reply)
        run.bodies.append((p, env.WhichOneof("body") or ""))
        return reply

    monkeypatch.setattr(node_module, "party_measure_reply", spy_reply)
    monkeypatch.setattr(job_module, "secure_sum", spy_sum)
    transport = LocalTransport({p: Node(pol) for p, pol in pols.items()}, tamper=watch)
    run.result = run_job(transport, spec, dataclasses.replace(OPTIONS, evaluate=evaluate))
    return run


def _exact(run: Run, round_id: int, over: list[int]) -> np.ndarray:
    return np.sum([run.vectors[(p, round_id)] for p in over], axis=0, dtype=np.int64)


def test_measure_and_unmask_dropouts_in_one_round_finish_with_the_exact_sum(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Party 5 drops in round 2's measure step and party 3, a survivor of that step, during its
    unmasking: the pair mask of (3, 5) in 3's vector comes off with 5's round-2 mask key,
    rebuilt from the shares of the four parties that answered."""
    run = _run(tmp_path, monkeypatch, fail={5: (2, "measure"), 3: (2, "unmask")})
    res = run.result
    assert res is not None and len(res.synthetic) > 0
    contributors = [r["contributors"] for r in res.privacy["rounds"]]
    assert contributors == [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 6], [1, 2, 4, 6]]
    assert sorted(run.sums) == [1, 2, 3]
    for round_id, (who, total) in run.sums.items():
        np.testing.assert_array_equal(total, _exact(run, round_id, who))
    # party 3's vector is in round 2's sum though it left before unmasking
    assert (3, 2) in run.vectors and 3 in run.sums[2][0]
    assert [b for p, b in run.bodies if p == 3] == [
        "setup_reply", "mask_keys_reply",
        "measure_reply", "confirm_reply", "unmask_reply",  # round 1
        "measure_reply", "confirm_reply"]  # round 2, then silent
    # one key exchange, before round 1; later keys came with the replies
    keys = [p for p, b in run.bodies if b == "mask_keys_reply"]
    assert sorted(keys) == list(range(1, N + 1))
    assert res.privacy["epsilon_spent"] <= 2.0


def test_the_same_in_the_first_round_whose_keys_came_from_the_key_exchange(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run(tmp_path, monkeypatch, fail={2: (1, "measure"), 6: (1, "unmask")})
    res = run.result
    assert res is not None
    assert [r["contributors"] for r in res.privacy["rounds"]] == [[1, 3, 4, 5, 6],
                                                                 [1, 3, 4, 5], [1, 3, 4, 5]]
    for round_id, (who, total) in run.sums.items():
        np.testing.assert_array_equal(total, _exact(run, round_id, who))


def test_below_t_unmask_answers_the_job_stops_without_a_sum(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RoundFailed, match="3 parties answered the unmask step, below the "
                                          "threshold t=4"):
        _run(tmp_path, monkeypatch,
             fail={5: (2, "measure"), 3: (2, "unmask"), 4: (2, "unmask")})


def test_the_evaluation_round_takes_the_same_path(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Round 4 is the federated evaluation (an EvaluateRequest): party 2 drops in its measure
    step, party 5 during its unmasking; the statistics still sum exactly over 1, 3, 4, 5, 6."""
    options = EvalOptions(target="y", seed=3, distance_rows=100)
    run = _run(tmp_path, monkeypatch, fail={2: (4, "measure"), 5: (4, "unmask")},
               evaluate=options)
    res = run.result
    assert res is not None
    assert res.evaluation is not None, res.evaluation_error
    assert res.evaluation["evaluation"]["parties"] == [1, 3, 4, 5, 6]
    assert (2, 4) not in run.vectors and (5, 4) in run.vectors
    parts = partition.split(POOLED, N, "iid", target=None, seed=1)
    holds = [len(p) - int(0.8 * len(p)) for p in parts]
    assert res.evaluation["rows_real"] == sum(holds[p - 1] for p in (1, 3, 4, 5, 6))
