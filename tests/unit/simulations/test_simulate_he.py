"""simulate() over the he channel on the in-process engine: the key holder as one more node."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from fedsynth.simulations.run import simulate


def _parties(n_parties: int = 3, rows: int = 200) -> list[pd.DataFrame]:
    rng = np.random.default_rng(11)
    out = []
    for _ in range(n_parties):
        a = rng.integers(0, 5, rows)
        out.append(pd.DataFrame({"a": a, "b": np.where(a > 2, "hi", "lo"),
                                 "z": rng.uniform(0, 10, rows)}))
    return out


def test_simulate_over_he_writes_its_outputs_and_says_channel_he(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = simulate(parties=_parties(), engine="local", channel="he", epsilon=2.0, rows=300,
                   out=out)
    for name in ("synthetic.csv", "privacy.json", "metrics.json", "schema.json", "job.log",
                 "report.html"):
        assert (out / name).is_file(), name
    privacy = json.loads((out / "privacy.json").read_text())
    assert privacy["channel"] == "he" and privacy["threshold_t"] >= 2
    assert privacy["epsilon_spent"] <= 2.0 * (1 + 1e-9)
    assert "key holder" in privacy["mechanism"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["bytes_sent_per_party"]) == ["1", "2", "3"]  # the key holder apart
    assert metrics["bytes_sent_by_key_holder"] > 0
    assert metrics["evaluation"]["parties"] == [1, 2, 3]  # the evaluation went over he too
    synth = pd.read_csv(out / "synthetic.csv")
    assert len(synth) == 300 and list(synth.columns) == ["a", "b", "z"]
    # the strong dependence b = (a > 2) survives: the sums are exact, as under secagg
    assert ((synth["a"] > 2) == (synth["b"] == "hi")).mean() > 0.8
    assert res.privacy["channel"] == "he"
    assert "key holder:" not in (out / "job.log").read_text()  # the key holder's own log
