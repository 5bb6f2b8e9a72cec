"""A report that cannot be drawn never costs the job its outputs; point-mass bins draw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsynth.evaluation import report
from fedsynth.simulations.run import simulate


def test_zero_width_bins_join_their_neighbour() -> None:
    edges = np.array([0.0, 0.0, 0.0, 1.0, 2.0, 2.0])
    r, s = np.array([5.0, 1.0, 2.0, 3.0, 4.0]), np.array([1.0, 1.0, 1.0, 1.0, 1.0])
    e, r2, s2 = report._merge_empty_bins(edges, r, s)
    assert list(e) == [0.0, 1.0, 2.0]
    assert list(r2) == [8.0, 7.0] and list(s2) == [3.0, 2.0]  # nothing lost
    assert r2.sum() == r.sum() and s2.sum() == s.sum()


def test_a_failing_report_leaves_every_other_output(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object, **__: object) -> str:
        raise ValueError("Axis limits cannot be NaN or Inf")

    monkeypatch.setattr(report, "render", broken)
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": rng.integers(0, 5, 600), "b": rng.choice(["x", "y"], 600)})
    res = simulate(data=None, parties=[df[:300], df[300:]], engine="local", out=tmp_path / "o")
    names = {p.name for p in (tmp_path / "o").iterdir()}
    assert {"synthetic.csv", "privacy.json", "metrics.json"} <= names
    assert "report.html" not in names
    assert "Axis limits" in res.metrics["report_error"]
