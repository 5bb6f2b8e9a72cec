"""End to end: a 3-party job in Flower's simulation engine on the bundled ISLR/Default data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from fedsynth.evaluation.metrics import marginal_tvd
from fedsynth.simulations import datasets
from fedsynth.simulations.run import simulate

OUTPUTS = ("synthetic.csv", "privacy.json", "metrics.json", "schema.json", "job.log",
           "report.html")


def _independent_columns(df: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Every column shuffled on its own: the 1-way marginals kept, all dependence destroyed."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({c: df[c].to_numpy()[rng.permutation(len(df))] for c in df.columns})


@pytest.mark.slow
def test_three_party_flower_simulation_on_default(tmp_path: Path) -> None:
    pooled, _ = datasets.load("ISLR/Default")
    out = tmp_path / "run"
    # One OpenMP thread: on a 2-core machine the evaluation's gradient-boosting classifier
    # runs ~80 s instead of ~1 s when its OpenMP threads compete with jax/Ray in this process.
    with threadpool_limits(limits=1, user_api="openmp"):
        res = simulate(dataset="ISLR/Default", n_parties=3, epsilon=1.0, out=out)

    for name in OUTPUTS:
        assert (out / name).is_file(), name
    synth = pd.read_csv(out / "synthetic.csv")
    assert list(synth.columns) == list(pooled.columns)
    assert len(synth) > 0.5 * len(pooled) * 0.8  # about the noisy size of the train rows

    privacy = json.loads((out / "privacy.json").read_text())
    assert privacy["epsilon_requested"] == 1.0
    assert privacy["epsilon_spent"] <= 1.0
    assert privacy["parties"] == 3 and privacy["channel"] == "secagg"
    ledgers = privacy["epsilon_spent_per_party_ledger"]
    assert sorted(ledgers) == ["1", "2", "3"]
    assert all(v <= 1.0 * (1 + 1e-9) for v in ledgers.values())

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tvd"]["1way"] == pytest.approx(res.metrics["tvd"]["1way"])
    assert metrics["rows_synthetic"] == len(synth)
    # the federated evaluation ran over Flower: all three parties' sums, their held-out rows
    assert metrics["evaluation"]["mode"] == "federated"
    assert metrics["evaluation"]["parties"] == [1, 2, 3]
    assert 0.15 * len(pooled) < metrics["rows_real"] < 0.25 * len(pooled)  # the 20% holdout
    # DP evaluation by default: held-out rows only, noised; no membership measure
    assert metrics["evaluation"]["dp"] is True and metrics["evaluation"]["epsilon"] == 1.0
    assert metrics["privacy"]["membership_inference_auc"] is None
    assert metrics["ml_efficacy"]["tstr_auc"] > 0.6
    baseline = marginal_tvd(pooled, _independent_columns(pooled), way=2)
    assert baseline > 0.05  # the table really has dependence to learn
    assert metrics["tvd_2way_vs_train"] < baseline
