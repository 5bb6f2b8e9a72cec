"""End-to-end checks of fedsynth.evaluation.local.evaluate_tables (one holder of the real rows).

Cross-checked against sdmetrics where its definitions coincide with ours. Where they differ:
- TVComplement drops missing values; we keep them as their own bin (compared without missing).
- ContingencySimilarity discretises numeric columns into its own equal-width bins over the real
  range; ours are quantile bins of the synthetic table, so only categorical pairs (and numeric
  columns with few values, which get one bin per value) are comparable.
- KSComplement uses the exact empirical CDFs; ours uses the fine bins, so it is exact for
  integer columns with one fine bin per value and an upper bound for continuous ones.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sdmetrics.column_pairs import ContingencySimilarity, CorrelationSimilarity
from sdmetrics.single_column import KSComplement, TVComplement
from sklearn.metrics import f1_score, roc_auc_score

from fedsynth.evaluation.local import evaluate_tables
from fedsynth.evaluation.plan import EvalOptions, EvalOptionsError, EvaluationPlan
from fedsynth.evaluation.statistics import feature_matrix, fit_model
from fedsynth.synthesis.schema import (
    Column,
    DataValidationError,
    Schema,
    infer_schema,
    validate_frame,
)


def _table(n: int, seed: int, *, missing: bool = False) -> pd.DataFrame:
    """Mixed table with strongly dependent columns (z follows x, colour follows k)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    k = rng.integers(0, 4, n)
    df = pd.DataFrame({
        "x": x,
        "z": 2 * x + rng.normal(scale=0.3, size=n),
        "k": k,
        "colour": np.array(["red", "green", "blue", "grey"])[k],
        "size": rng.choice(["S", "M", "L"], n, p=[0.5, 0.3, 0.2]),
    })
    if missing:
        df.loc[rng.uniform(size=n) < 0.1, "x"] = np.nan
        df.loc[rng.uniform(size=n) < 0.1, "size"] = None
    return df


# --- identical tables ------------------------------------------------------------------------


@pytest.mark.parametrize("missing", [False, True])
def test_identical_tables_score_perfectly(missing: bool) -> None:
    real = _table(400, 0, missing=missing)
    out = evaluate_tables(real, real.copy())
    assert out["rows_real"] == out["rows_synthetic"] == 400
    assert [c["histogram_similarity"] for c in out["columns"]] == [1.0] * 5
    assert [p["contingency_similarity"] for p in out["pairs"]] == [1.0] * 10
    assert out["tvd"]["1way"] == out["tvd"]["2way"] == out["tvd"]["3way"] == 0.0
    assert out["tvd"]["3way_marginals"] == 10
    corr = [p["correlation_similarity"] for p in out["pairs"]
            if p["correlation_similarity"] is not None]
    assert len(corr) == 3  # the numeric pairs x-z, x-k, z-k
    assert corr == [1.0, 1.0, 1.0]
    assert out["similarity"] == {"histogram": 1.0, "contingency": 1.0, "correlation": 1.0}
    assert out["privacy"]["exact_match_rate"] == 1.0
    assert out["privacy"]["exact_matches"] == 400
    for c in out["columns"]:
        r, s = c["real"], c["synthetic"]
        assert (r["count"], r["missing"]) == (s["count"], s["missing"])
        if c["kind"] == "numeric":
            assert c["ks_complement"] == 1.0
            assert (r["mean"], r["std"]) == pytest.approx((s["mean"], s["std"]), rel=1e-6)
            # the synthetic side is exact; the real side is exact or within its reported bin
            for key in ("min", "q1", "median", "q3", "max"):
                assert abs(r[key] - s[key]) <= r.get("about", {}).get(key, 0.0) + 1e-9, key
        else:
            assert r == s


# --- exact matches ---------------------------------------------------------------------------


@pytest.mark.parametrize("copied", [0, 1, 30, 75])
def test_exact_match_rate_is_the_share_of_copied_rows(copied: int) -> None:
    real = _table(300, 1)
    rng = np.random.default_rng(2)
    rows = rng.permutation(300)[:100]
    syn = real.iloc[rows].reset_index(drop=True)
    far = syn.index >= copied
    syn.loc[far, "x"] += 0.5  # the rest: shifted away from every real row
    syn = syn.sample(frac=1, random_state=3).reset_index(drop=True)
    p = evaluate_tables(real, syn)["privacy"]
    assert p["exact_matches"] == copied
    assert p["exact_match_rate"] == pytest.approx(copied / 100)


# --- dependence ------------------------------------------------------------------------------


def _shuffled(df: pd.DataFrame, column: str, seed: int) -> pd.DataFrame:
    out = df.copy()
    out[column] = np.random.default_rng(seed).permutation(out[column].to_numpy())
    return out


def test_shuffling_one_column_lowers_contingency_similarity() -> None:
    real = _table(1000, 4)
    sample = _table(1000, 5)  # an independent sample from the same distribution
    for unshuffled in (real.copy(), sample):
        base = evaluate_tables(real, unshuffled)
        broken = evaluate_tables(real, _shuffled(unshuffled, "colour", 6))
        assert broken["similarity"]["contingency"] < base["similarity"]["contingency"] - 0.05
        # marginals are unchanged by the shuffle
        assert broken["columns"][3]["histogram_similarity"] == pytest.approx(
            base["columns"][3]["histogram_similarity"])
        pair = {tuple(p["columns"]): p for p in broken["pairs"]}[("k", "colour")]
        # k and colour are one variable (4 equally likely values): shuffled they are independent,
        # so real cells (1/4 on the diagonal) meet synthetic ones (1/16 everywhere): TVD 3/4
        assert pair["contingency_similarity"] == pytest.approx(0.25, abs=0.05)
        assert pair["cramers_v_real"] == pytest.approx(1.0)
        assert pair["cramers_v_synthetic"] < 0.15
    assert base["similarity"]["contingency"] > 0.8


# --- bias ------------------------------------------------------------------------------------


def _bias_table(seed: int) -> pd.DataFrame:
    """Group A: 40 rows, 20 positive (0.5); group B: 40 rows, 10 positive (0.25)."""
    rng = np.random.default_rng(seed)
    y = np.array([1] * 20 + [0] * 20 + [1] * 10 + [0] * 30)
    return pd.DataFrame({"group": ["A"] * 40 + ["B"] * 40,
                         "x": y + rng.normal(scale=0.5, size=80), "y": y})


def test_bias_of_the_real_data_by_hand() -> None:
    real, train = _bias_table(0), _bias_table(1)
    syn = _bias_table(2).sample(frac=1, random_state=0).reset_index(drop=True)
    bias = evaluate_tables(real, syn, train=train,
                           options=EvalOptions(target="y", sensitive="group"))["bias"]
    r = bias["real_data"]
    assert r["positive_rate"] == {"A": 0.5, "B": 0.25}
    assert r["demographic_parity_difference"] == pytest.approx(0.25)
    assert r["disparate_impact_ratio"] == pytest.approx(0.5)
    assert r["rows"] == [40, 40, 0]
    assert bias["synthetic_data"]["demographic_parity_difference"] == pytest.approx(0.25)


def test_bias_of_the_real_data_uses_every_real_row_without_a_train_table() -> None:
    real = _bias_table(0)
    bias = evaluate_tables(real, _bias_table(2),
                           options=EvalOptions(target="y", sensitive="group"))["bias"]
    assert bias["real_data"]["rows"] == [40, 40, 0]
    assert bias["real_data"]["demographic_parity_difference"] == pytest.approx(0.25)


# --- model efficacy --------------------------------------------------------------------------


def test_tstr_and_trtr_scores_equal_sklearn_on_binned_model_scores() -> None:
    real, train, syn = _table(300, 7), _table(300, 8), _table(300, 9)
    for df in (real, train, syn):
        df["big"] = (df["x"] + 0.3 * df["k"] > 0.5).astype(int)
    opts = EvalOptions(target="big", score_bins=64)
    schema = infer_schema(pd.concat([real, train, syn], ignore_index=True))
    ml = evaluate_tables(real, syn, train=train, schema=schema, options=opts)["ml_efficacy"]
    checked = {n: validate_frame(t, schema, source=n) for n, t in
               (("real", real), ("train", train), ("syn", syn))}
    plan = EvaluationPlan.build(schema, checked["syn"], opts)
    x = feature_matrix(plan, checked["real"])
    y = checked["real"]["big"].to_numpy().astype(int)
    for name, rows in (("tstr", checked["syn"]), ("trtr", checked["train"])):
        model = fit_model(plan, rows)
        assert model is not None
        scores = model(x)
        binned = np.clip(np.floor(scores * 64), 0, 63)  # ties within a bin count 1/2
        assert ml[f"{name}_auc"] == pytest.approx(roc_auc_score(y, binned), abs=1e-12)
        assert ml[f"{name}_f1"] == pytest.approx(f1_score(y, scores >= 0.5), abs=1e-12)
        assert ml[f"{name}_parties"] == 1
    assert ml["tstr_auc"] > 0.9  # the target is a simple function of the features
    assert set(ml["feature_importance"]["tstr"]) == {"x", "z", "k", "colour", "size"}


# --- privacy ---------------------------------------------------------------------------------


def _numeric_table(n: int, rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n),
                         "c": rng.uniform(size=n), "k": rng.choice(["u", "v"], n)})


def test_privacy_measures_for_an_independent_sample_and_for_a_copy() -> None:
    rng = np.random.default_rng(0)
    real, train, syn = (_numeric_table(1000, rng) for _ in range(3))
    no_train = evaluate_tables(real, syn)["privacy"]
    assert no_train["membership_inference_auc"] is None
    assert no_train["exact_matches"] == 0

    independent = evaluate_tables(real, syn, train=train)["privacy"]
    assert abs(independent["membership_inference_auc"] - 0.5) < 0.1
    assert abs(independent["closer_than_real_share"] - 0.05) < 0.03
    assert independent["dcr_ratio"] == pytest.approx(1.0, abs=0.15)

    copy = evaluate_tables(real, train.copy(), train=train)["privacy"]
    assert copy["membership_inference_auc"] > 0.7
    assert copy["closer_than_real_share"] > 0.95
    assert copy["exact_match_rate"] == 1.0
    assert copy["dcr_synthetic_median"] < 1e-12


# --- cross-checks with sdmetrics ---------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_histogram_similarity_equals_sdmetrics_tv_complement(seed: int) -> None:
    real, syn = _table(500, seed), _table(300, seed + 10)
    syn["size"] = np.random.default_rng(seed).choice(["S", "M", "L"], 300)  # other marginal
    out = evaluate_tables(real, syn)
    cols = {c["name"]: c for c in out["columns"]}
    for name in ("colour", "size", "k"):  # k: an integer column with one bin per value
        expected = TVComplement.compute(real[name], syn[name])
        assert cols[name]["histogram_similarity"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("missing", [False, True])
def test_contingency_similarity_equals_sdmetrics(missing: bool) -> None:
    real, syn = _table(500, 20, missing=missing), _table(400, 21, missing=missing)
    syn = _shuffled(syn, "size", 0)
    out = evaluate_tables(real, syn)
    pairs = {tuple(p["columns"]): p["contingency_similarity"] for p in out["pairs"]}
    for a, b in (("colour", "size"), ("k", "colour"), ("k", "size")):
        # sdmetrics groups missing values too (groupby dropna=False), as our missing bin does
        expected = ContingencySimilarity.compute(real[[a, b]], syn[[a, b]])
        assert pairs[(a, b)] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("missing", [False, True])
def test_correlation_similarity_equals_sdmetrics_pearson(missing: bool) -> None:
    real, syn = _table(500, 30, missing=missing), _table(400, 31, missing=missing)
    syn["z"] = -syn["x"] + np.random.default_rng(0).normal(size=400)  # a different correlation
    out = evaluate_tables(real, syn)
    pairs = {tuple(p["columns"]): p for p in out["pairs"]}
    for a, b in (("x", "z"), ("x", "k"), ("z", "k")):
        # both drop rows where either value is missing
        expected = CorrelationSimilarity.compute(real[[a, b]], syn[[a, b]], coefficient="Pearson")
        assert pairs[(a, b)]["correlation_similarity"] == pytest.approx(expected, abs=1e-6)
    assert pairs[("x", "z")]["correlation_similarity"] < 0.5


def test_ks_complement_against_sdmetrics() -> None:
    real, syn = _table(500, 40), _table(400, 41)
    syn["x"] = syn["x"] * 1.3 + 0.2
    cols = {c["name"]: c for c in evaluate_tables(real, syn)["columns"]}
    # integer column, one fine bin per value: the exact two-sample statistic
    assert cols["k"]["ks_complement"] == pytest.approx(KSComplement.compute(real["k"], syn["k"]),
                                                       abs=1e-12)
    # continuous: the supremum over fine-bin edges only, so never below the exact complement
    exact = KSComplement.compute(real["x"], syn["x"])
    assert exact <= cols["x"]["ks_complement"] <= exact + 0.05


# --- inputs ----------------------------------------------------------------------------------


def test_evaluate_tables_drafts_a_schema_spanning_all_tables_and_reports_json() -> None:
    real = pd.DataFrame({"v": [1.0, 2.0, 3.0, 4.0], "c": ["a", "b", "a", "b"]})
    syn = pd.DataFrame({"v": [0.5, 9.0, 3.0, 2.5], "c": ["a", "a", "c", "b"]})  # outside real
    out = evaluate_tables(real, syn)
    json.dumps(out)
    v, c = out["columns"]
    assert v["kind"] == "numeric" and c["kind"] == "categorical"
    assert [x["value"] for x in c["categories"]] == ["a", "b", "c"]
    assert c["histogram_similarity"] == pytest.approx(0.75)  # [2, 2, 0] vs [2, 1, 1]
    assert v["real"]["mean"] == pytest.approx(2.5, abs=1e-9)
    assert v["synthetic"]["mean"] == pytest.approx(3.75, abs=1e-9)
    assert v["real"]["count"] == 4 and v["real"]["missing"] == 0
    assert out["evaluation"]["mode"] == "local" and out["evaluation"]["parties"] == 1
    assert set(out["evaluation"]["seconds"]) == {"validate_and_plan", "real_statistics",
                                                 "measures", "total"}


def test_evaluate_tables_validates_against_a_given_schema() -> None:
    schema = Schema((Column("v", "continuous", lower=0, upper=5),))
    with pytest.raises(DataValidationError, match="synthetic table"):
        evaluate_tables(pd.DataFrame({"v": [1.0, 2.0]}), pd.DataFrame({"v": [1.0, 7.0]}),
                        schema=schema)


def test_evaluate_tables_names_an_unknown_target_column() -> None:
    real = _table(50, 0)
    with pytest.raises(EvalOptionsError, match="target column 'income'"):
        evaluate_tables(real, real.copy(), options=EvalOptions(target="income"))
    with pytest.raises(EvalOptionsError, match="sensitive column 'sex'"):
        evaluate_tables(real, real.copy(), options=EvalOptions(target="k", sensitive="sex"))
