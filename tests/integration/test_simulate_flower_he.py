"""End to end over the he channel in Flower's simulation engine: the key holder is a SuperNode
of its own, found by its hello like the parties, and decrypts one sum per round."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from fedsynth.simulations import datasets
from fedsynth.simulations.run import simulate


@pytest.mark.slow
def test_three_party_flower_simulation_over_he(tmp_path: Path) -> None:
    pooled, _ = datasets.load("ISLR/Default")
    out = tmp_path / "run"
    with threadpool_limits(limits=1, user_api="openmp"):  # as in test_simulate_flower
        res = simulate(dataset="ISLR/Default", n_parties=3, epsilon=1.0, channel="he", out=out)

    privacy = json.loads((out / "privacy.json").read_text())
    assert privacy["channel"] == "he" and privacy["parties"] == 3
    assert privacy["epsilon_spent"] <= 1.0
    assert sorted(privacy["epsilon_spent_per_party_ledger"]) == ["1", "2", "3"]
    assert all(r["contributors"] == [1, 2, 3] for r in privacy["rounds"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["bytes_sent_per_party"]) == ["1", "2", "3"]
    assert metrics["bytes_sent_by_key_holder"] > 0
    assert metrics["evaluation"]["parties"] == [1, 2, 3]
    synth = pd.read_csv(out / "synthetic.csv")
    assert list(synth.columns) == list(pooled.columns)
    assert len(synth) > 0.5 * len(pooled) * 0.8
    assert res.metrics["tvd_2way_vs_train"] < 0.112  # beats independent columns (DESIGN.md)
