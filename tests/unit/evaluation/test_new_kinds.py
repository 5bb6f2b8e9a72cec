"""Evaluation of tables holding discrete numbers and dates: dates are numbers (days) to the
measures, and a table scored against itself scores perfectly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedsynth.evaluation.local import evaluate_tables
from fedsynth.evaluation.metrics import marginal_tvd
from fedsynth.synthesis.schema import infer_schema, validate_frame


def _table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    term = rng.choice([36, 60], n, p=[0.7, 0.3])
    day = pd.Timestamp("2015-01-03") + pd.to_timedelta(rng.integers(0, 700, n), unit="D")
    return pd.DataFrame({
        "term": term,
        "rate": rng.choice([0.05, 0.075, 0.1], n),
        "opened": [d.strftime("%Y-%m-%d") for d in day],
        "amount": rng.lognormal(8, 1, n) * (term / 36),
    })


def test_a_table_with_dates_and_discrete_values_scores_perfectly_against_itself() -> None:
    real = _table(400, 0)
    out = evaluate_tables(real, real.copy())
    kinds = {c["name"]: c["kind"] for c in out["columns"]}
    assert kinds == dict.fromkeys(["term", "rate", "opened", "amount"], "numeric")
    assert [c["histogram_similarity"] for c in out["columns"]] == [1.0] * 4
    assert out["tvd"]["2way"] == 0.0


def test_shifted_dates_score_worse_than_the_same_dates() -> None:
    real = _table(400, 1)
    late = real.copy()
    late["opened"] = (pd.to_datetime(late["opened"]) + pd.Timedelta(days=300)).dt.strftime(
        "%Y-%m-%d")
    same = evaluate_tables(real, real.copy())["tvd"]["1way"]
    shifted = evaluate_tables(real, late)["tvd"]["1way"]
    assert shifted > same + 0.05


def test_the_benchmark_yardstick_bins_dates_as_numbers() -> None:
    real = _table(2000, 2)
    schema = infer_schema(real)
    checked = validate_frame(real, schema, source="t")
    assert str(checked["opened"].dtype) == "datetime64[ns]"
    half = checked.iloc[:1000].reset_index(drop=True)
    assert marginal_tvd(checked, half, way=1) == pytest.approx(
        marginal_tvd(checked.assign(opened=checked["opened"].astype("int64")),
                     half.assign(opened=half["opened"].astype("int64")), way=1))
