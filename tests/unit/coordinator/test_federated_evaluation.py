"""Federated evaluation: the secure sum of the parties' statistics gives the pooled numbers."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd

from fedsynth.client_node.node import Node
from fedsynth.coordinator.job import JobOptions, run_job
from fedsynth.evaluation.local import evaluate_tables
from fedsynth.evaluation.plan import EvalOptions
from fedsynth.simulations import datasets, partition
from fedsynth.simulations.local import LocalTransport
from fedsynth.simulations.parties import job_spec, make_identities, write_parties
from fedsynth.synthesis.schema import infer_schema

POOLED = datasets.load("ISLR/Default")[0].sample(3000, random_state=0).reset_index(drop=True)
SCHEMA = infer_schema(POOLED)
EVAL = EvalOptions(target="default", sensitive="student", seed=3, distance_rows=200)
IDS = make_identities(4)


def _job(tmp: Path, channel: str, allow: bool = True) -> tuple[Any, list[pd.DataFrame],
                                                                 list[pd.DataFrame]]:
    parts = partition.split(POOLED, 4, "iid", target=None, seed=1)
    trains = [p.iloc[: int(0.8 * len(p))].reset_index(drop=True) for p in parts]
    holds = [p.iloc[int(0.8 * len(p)):].reset_index(drop=True) for p in parts]
    spec = job_spec(SCHEMA, IDS, epsilon=2.0, delta=1e-6, threshold=3, channel=channel)
    pols = write_parties(tmp, trains, spec, IDS, holds,
                         evaluation="exact" if allow else "off")
    transport = LocalTransport({p: Node(pol) for p, pol in pols.items()})
    res = run_job(transport, spec, JobOptions(seed=0, iters=200, evaluate=EVAL))
    return res, trains, holds


def test_federated_evaluation_equals_pooled_evaluation(tmp_path: Path) -> None:
    res, _, holds = _job(tmp_path, "secagg")
    fed = res.evaluation
    assert fed is not None and res.evaluation_error is None
    assert fed["evaluation"]["mode"] == "federated" and fed["evaluation"]["parties"] == [1, 2, 3, 4]
    # the parties evaluate on their held-out rows only: the pooled reference does the same
    pooled = evaluate_tables(pd.concat(holds, ignore_index=True), res.synthetic, train=None,
                             schema=SCHEMA, options=EVAL)
    # sums over parties = sums over the pooled rows: these measures agree exactly
    assert fed["rows_real"] == pooled["rows_real"] == sum(len(h) for h in holds)
    assert fed["tvd"] == pooled["tvd"]
    assert fed["similarity"] == pooled["similarity"]
    assert fed["columns"] == pooled["columns"]
    assert fed["pairs"] == pooled["pairs"]
    for key in ("tstr_auc", "tstr_f1"):  # one TSTR model, its score histograms summed
        assert fed["ml_efficacy"][key] == pooled["ml_efficacy"][key]
    assert fed["ml_efficacy"]["tstr_parties"] == 4
    for key in ("real_data", "synthetic_data", "tstr_model"):
        assert fed["bias"][key] == pooled["bias"][key]
    assert fed["privacy"]["exact_matches"] == pooled["privacy"]["exact_matches"]
    # TRTR differs by design: each party's own model on its own held-out rows
    assert fed["ml_efficacy"]["trtr_parties"] == 4
    assert 0.5 < fed["ml_efficacy"]["trtr_auc"] <= 1.0
    # no training row is ever evaluated, so there is no membership measure
    assert fed["privacy"]["membership_inference_auc"] is None
    assert fed["evaluation"]["dp"] is False
    assert set(fed["ledger_epsilon_per_party"]) == {"1", "2", "3", "4"}
    assert all(0 < e <= 2.0 + 1e-9 for e in fed["ledger_epsilon_per_party"].values())
    steps = [s["step"] for s in res.steps]
    assert steps == ["setup", "measure", "estimate_and_sample", "evaluate"]
    assert all(s["seconds"] > 0 and s["peak_rss_mb"] > 0 for s in res.steps)


def test_party_policy_can_refuse_evaluation_and_the_table_stands(tmp_path: Path) -> None:
    res, _, _ = _job(tmp_path, "secagg", allow=False)
    assert res.evaluation is None
    assert res.evaluation_error is not None
    assert "does not take part in evaluations" in res.evaluation_error
    assert len(res.synthetic) > 0 and res.privacy["epsilon_spent"] <= 2.0


def test_a_party_dropping_out_of_the_evaluation_leaves_the_others_sum(tmp_path: Path) -> None:
    parts = partition.split(POOLED, 4, "iid", target=None, seed=1)
    trains = [p.iloc[: int(0.8 * len(p))].reset_index(drop=True) for p in parts]
    holds = [p.iloc[int(0.8 * len(p)):].reset_index(drop=True) for p in parts]
    spec = job_spec(SCHEMA, IDS, epsilon=2.0, delta=1e-6, threshold=3)
    pols = write_parties(tmp_path, trains, spec, IDS, holds, evaluation="exact")
    # rounds 1-3 measure; round 4 is the evaluation: party 2 goes silent there
    pols = {p: dataclasses.replace(pol, fail_at_round=4 if p == 2 else None)
            for p, pol in pols.items()}
    res = run_job(LocalTransport({p: Node(pol) for p, pol in pols.items()}), spec,
                  JobOptions(seed=0, iters=200, evaluate=EVAL))
    assert res.evaluation is not None, res.evaluation_error
    assert res.evaluation["evaluation"]["parties"] == [1, 3, 4]
    assert res.evaluation["rows_real"] == len(holds[0]) + len(holds[2]) + len(holds[3])
