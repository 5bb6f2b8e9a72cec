"""Measures from summed statistics, checked by hand and against numpy, scipy and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import ks_2samp
from scipy.stats.contingency import association
from sklearn.metrics import f1_score, roc_auc_score

from fedsynth.evaluation.measures import (
    auc_from_hist,
    cramers_v,
    f1_from_hist,
    hist_cdf,
    hist_quantile,
    measure,
    pearson,
)
from fedsynth.evaluation.plan import DCR_BINS, EvalOptions, EvaluationPlan, dcr_edges
from fedsynth.evaluation.statistics import assemble, table_blocks
from fedsynth.synthesis.schema import Column, Schema, validate_frame

EDGES = np.concatenate([[0.0], dcr_edges(), [2.0]])  # all edges of a distance histogram, by hand


def _measure(schema: Schema, real: pd.DataFrame, synthetic: pd.DataFrame,
             **options: object) -> dict:
    real = validate_frame(real, schema, source="real")
    synthetic = validate_frame(synthetic, schema, source="synthetic")
    plan = EvaluationPlan.build(schema, synthetic, EvalOptions(**options))  # type: ignore[arg-type]
    return measure(plan, assemble(plan, table_blocks(plan, real)), synthetic)


# --- columns and pairs by hand -----------------------------------------------------------------


def test_two_categorical_columns_by_hand() -> None:
    schema = Schema((Column("a", "categorical", ("x", "y")),
                     Column("b", "categorical", ("u", "v"))))
    real = pd.DataFrame({"a": ["x", "x", "x", "y"], "b": ["u", "u", "u", "v"]})
    syn = pd.DataFrame({"a": ["x", "y", "y", "y"], "b": ["v", "u", "u", "v"]})
    out = _measure(schema, real, syn)
    a, b = out["columns"]
    # a: real counts [3, 1], synthetic [1, 3]: TVD 1/2
    assert a["histogram_similarity"] == pytest.approx(0.5)
    assert a["histogram_real"] == [3, 1, 0] and a["histogram_synthetic"] == [1, 3, 0]
    assert a["categories"] == [{"value": "x", "real": 3, "synthetic": 1},
                               {"value": "y", "real": 1, "synthetic": 3}]
    assert a["real"] == {"count": 4, "missing": 0, "distinct": 2}
    # b: real [3/4, 1/4], synthetic [1/2, 1/2]: TVD 1/4
    assert b["histogram_similarity"] == pytest.approx(0.75)
    (pair,) = out["pairs"]
    # real cells xu 3/4, yv 1/4; synthetic xv 1/4, yu 1/2, yv 1/4: TVD (3/4+1/4+1/2+0)/2 = 3/4
    assert pair["contingency_similarity"] == pytest.approx(0.25)
    assert pair["cramers_v_real"] == pytest.approx(1.0)  # b is a function of a
    # synthetic [[0, 1], [2, 1]]: chi2 = 1/2 + 1/2 + 1/6 + 1/6 = 4/3, V = sqrt(4/3 / 4)
    assert pair["cramers_v_synthetic"] == pytest.approx(math.sqrt(1 / 3))
    assert pair["correlation_similarity"] is None
    assert out["tvd"]["1way"] == pytest.approx(0.375)
    assert out["tvd"]["2way"] == pytest.approx(0.75)
    assert out["tvd"]["3way"] is None and out["tvd"]["3way_marginals"] == 0
    assert out["similarity"] == pytest.approx({"histogram": 0.625, "contingency": 0.25,
                                               "correlation": None})
    assert out["rows_real"] == 4 and out["rows_synthetic"] == 4


def test_three_way_tvd_by_hand() -> None:
    schema = Schema(tuple(Column(n, "categorical", ("0", "1")) for n in "abc"))
    real = pd.DataFrame({"a": ["0", "1"], "b": ["0", "1"], "c": ["0", "1"]})
    syn = pd.DataFrame({"a": ["0", "1"], "b": ["0", "1"], "c": ["1", "0"]})
    out = _measure(schema, real, syn)
    # cells 000 and 111 (real) vs 001 and 110 (synthetic): disjoint, TVD 1
    assert out["tvd"]["3way"] == pytest.approx(1.0)
    assert out["tvd"]["3way_marginals"] == 1
    assert out["tvd"]["1way"] == pytest.approx(0.0)
    # pairs: ab identical; ac and bc disjoint
    assert out["tvd"]["2way"] == pytest.approx(2 / 3)


def test_missing_values_are_their_own_bin() -> None:
    schema = Schema((Column("a", "categorical", ("x", "y"), nullable=True),))
    real = pd.DataFrame({"a": ["x", None, None, "y"]})
    syn = pd.DataFrame({"a": ["x", "x", "y", "y"]})
    (col,) = _measure(schema, real, syn)["columns"]
    assert col["real"] == {"count": 2, "missing": 2, "distinct": 2}
    # real [1/4, 1/4, 1/2] vs synthetic [1/2, 1/2, 0]
    assert col["histogram_similarity"] == pytest.approx(0.5)
    assert col["bins"] == ["x", "y", "missing"]


def test_integer_column_with_exact_fine_bins_matches_pandas() -> None:
    rng = np.random.default_rng(0)
    real = pd.Series(rng.integers(-3, 12, 37).astype(float))
    real.iloc[[4, 9]] = np.nan
    syn = pd.Series(rng.integers(-3, 12, 50).astype(float))
    schema = Schema((Column("k", "integer", lower=-3, upper=11, nullable=True),))
    (col,) = _measure(schema, pd.DataFrame({"k": real}), pd.DataFrame({"k": syn}))["columns"]
    for side, s in (("real", real), ("synthetic", syn)):
        stats = col[side]
        x = s.dropna()
        assert stats["count"] == len(x) and stats["missing"] == s.isna().sum()
        expected = {"mean": x.mean(), "std": x.std(ddof=1), "min": x.min(), "max": x.max(),
                    "q1": x.quantile(0.25), "median": x.median(), "q3": x.quantile(0.75)}
        for key, value in expected.items():
            assert abs(stats[key] - value) <= 1e-9, (side, key, stats[key], value)
        assert stats["distinct"] == x.nunique()
    # fine bins hold one integer each, so the KS statistic is the exact two-sample one
    ks = ks_2samp(real.dropna(), syn).statistic
    assert col["ks_complement"] == pytest.approx(1 - ks, abs=1e-12)


def test_continuous_column_moments_exact_and_quantiles_within_a_fine_bin() -> None:
    rng = np.random.default_rng(1)
    real = pd.Series(rng.gamma(2.0, 3.0, 800))
    syn = pd.Series(rng.gamma(2.0, 3.5, 600))
    hi = float(max(real.max(), syn.max())) + 1
    schema = Schema((Column("v", "continuous", lower=0, upper=hi),))
    opts = {"fine_bins": 100}
    real_df, syn_df = pd.DataFrame({"v": real}), pd.DataFrame({"v": syn})
    out = _measure(schema, real_df, syn_df, **opts)
    plan = EvaluationPlan.build(schema, validate_frame(syn_df, schema, source="s"),
                                EvalOptions(fine_bins=100))
    edges = np.asarray(plan.columns[0].fine_edges)
    (col,) = out["columns"]
    for side, s in (("real", real), ("synthetic", syn)):
        stats = col[side]
        assert stats["mean"] == pytest.approx(s.mean(), rel=1e-6)
        assert stats["std"] == pytest.approx(s.std(ddof=1), rel=1e-6)
        xs = np.sort(s.to_numpy())
        for key, q in (("min", 0.0), ("q1", 0.25), ("median", 0.5), ("q3", 0.75), ("max", 1.0)):
            if side == "synthetic":  # the synthetic table is public: exact
                assert stats[key] == pytest.approx(np.quantile(xs, q), abs=1e-12), key
                continue
            h = q * (len(xs) - 1)
            ranks = [math.floor(h), math.ceil(h)]
            bins = np.searchsorted(edges[1:-1], xs[ranks], side="right")
            width = float(np.max(edges[bins + 1] - edges[bins]))
            assert abs(stats[key] - np.quantile(xs, q)) <= width + 1e-12, (side, key)
            assert stats["about"][key] == pytest.approx(width), key  # the width is reported
    assert col["real"]["distinct"] is None  # not exact from fine bins of a continuous column
    assert col["synthetic"]["distinct"] == syn.nunique()


def test_identical_continuous_columns_have_similarity_one() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=300)
    y = x + rng.normal(size=300)
    df = pd.DataFrame({"x": x, "y": y})
    schema = Schema((Column("x", "continuous", lower=-10, upper=10),
                     Column("y", "continuous", lower=-10, upper=10)))
    out = _measure(schema, df, df.copy())
    assert [c["histogram_similarity"] for c in out["columns"]] == [1.0, 1.0]
    assert [c["ks_complement"] for c in out["columns"]] == [1.0, 1.0]
    (pair,) = out["pairs"]
    assert pair["contingency_similarity"] == 1.0 and pair["correlation_similarity"] == 1.0
    assert pair["correlation_real"] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-8)


# --- pearson and Cramér's V --------------------------------------------------------------------


def _fixed_sums(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The plan's encoding, computed independently: per-value rounding to 2^-32, exact sums."""
    def fx(v: np.ndarray) -> int:
        return sum(round(float(e) * 2**32) for e in v)
    return np.array([len(x), fx(x), fx(y), fx(x * x), fx(y * y), fx(x * y)], dtype=np.int64)


@pytest.mark.parametrize("seed", range(5))
def test_pearson_matches_numpy_on_unit_values(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, 500)
    y = np.clip(0.3 * x + rng.uniform(0, 0.7, 500) * (seed / 4), 0, 1)
    assert pearson(_fixed_sums(x, y)) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-6)


def test_pearson_is_exact_on_values_that_fixed_point_holds_exactly() -> None:
    rng = np.random.default_rng(7)
    x = rng.integers(0, 257, 200) / 256
    y = np.clip(x + rng.integers(-40, 41, 200) / 256, 0, 1)
    assert pearson(_fixed_sums(x, y)) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert pearson(_fixed_sums(x, 1 - x)) == pytest.approx(-1.0, abs=1e-12)


def test_pearson_is_undefined_for_one_row_or_a_constant_column() -> None:
    assert pearson(_fixed_sums(np.array([0.2]), np.array([0.3]))) is None
    assert pearson(_fixed_sums(np.array([0.5, 0.5, 0.5]), np.array([0.1, 0.2, 0.3]))) is None
    assert pearson(np.zeros(6)) is None


@pytest.mark.parametrize("shape", [(2, 2), (3, 4), (5, 2), (6, 6)])
def test_cramers_v_matches_scipy_without_yates_correction(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[0] * 10 + shape[1])
    table = rng.integers(1, 30, shape)
    expected = association(table, method="cramer", correction=False)
    assert cramers_v(table) == pytest.approx(expected, abs=1e-12)


def test_cramers_v_drops_empty_rows_and_columns() -> None:
    table = np.array([[5, 0, 2], [0, 0, 0], [1, 0, 7]])
    expected = association(np.array([[5, 2], [1, 7]]), method="cramer", correction=False)
    assert cramers_v(table) == pytest.approx(expected, abs=1e-12)
    assert cramers_v(np.array([[3, 4], [0, 0]])) is None  # one row left
    assert cramers_v(np.zeros((3, 3), dtype=int)) is None
    assert cramers_v(np.eye(3, dtype=int) * 4) == pytest.approx(1.0)


# --- model scores ----------------------------------------------------------------------------


def _hist(bins: np.ndarray, y: np.ndarray, b: int = 256) -> np.ndarray:
    h = np.zeros(2 * b, dtype=np.int64)
    np.add.at(h, y * b + bins, 1)
    return h


@pytest.mark.parametrize("seed", range(4))
def test_auc_from_hist_equals_sklearn_when_scores_fall_in_distinct_bins(seed: int) -> None:
    rng = np.random.default_rng(seed)
    bins = rng.choice(256, 120, replace=False)
    scores = (bins + rng.uniform(0.01, 0.99, 120)) / 256
    y = (rng.uniform(size=120) < scores).astype(int)
    hist = _hist(np.floor(scores * 256).astype(int), y)
    assert auc_from_hist(hist) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 15), st.integers(0, 1)), min_size=2, max_size=60))
def test_auc_from_hist_counts_ties_within_a_bin_as_one_half(rows: list[tuple[int, int]]) -> None:
    bins, y = (np.array(v) for v in zip(*rows, strict=True))
    hist = _hist(bins, y, b=16)
    if len(set(y.tolist())) < 2:
        assert auc_from_hist(hist) is None
    else:  # sklearn's AUC of the bin indices: tied scores count 1/2
        assert auc_from_hist(hist) == pytest.approx(roc_auc_score(y, bins), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_f1_from_hist_equals_sklearn_at_threshold_one_half(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.uniform(size=300)
    scores[:3] = [0.5, 0.5 - 1e-9, 1.0 - 1e-12]
    y = (rng.uniform(size=300) < 0.3 + 0.4 * scores).astype(int)
    hist = _hist(np.clip(np.floor(scores * 256).astype(int), 0, 255), y)
    assert f1_from_hist(hist) == pytest.approx(f1_score(y, scores >= 0.5), abs=1e-12)


def test_f1_is_undefined_without_positives_and_predicted_positives() -> None:
    assert f1_from_hist(_hist(np.array([3, 10]), np.array([0, 0]))) is None
    assert f1_from_hist(_hist(np.array([200]), np.array([0]))) == 0.0


def test_ml_and_importance_from_hand_made_histograms() -> None:
    schema = Schema((Column("f0", "continuous", lower=0, upper=1),
                     Column("f1", "continuous", lower=0, upper=1),
                     Column("f2", "continuous", lower=0, upper=1),
                     Column("y", "integer", lower=0, upper=1)))
    syn = pd.DataFrame({"f0": [0.1, 0.2], "f1": [0.3, 0.4], "f2": [0.5, 0.6], "y": [0, 1]})
    plan = EvaluationPlan.build(schema, syn, EvalOptions(target="y"))
    perfect = _hist(np.array([0, 0, 255, 255]), np.array([0, 0, 1, 1]))
    coin = _hist(np.array([10, 10]), np.array([0, 1]))
    three_quarters = _hist(np.array([0, 200, 100, 255]), np.array([0, 0, 1, 1]))
    blocks = {**table_blocks(plan, syn), "ml:tstr": perfect, "ml:tstr:fitted": np.array([1]),
              "imp:tstr:0": coin, "imp:tstr:1": perfect, "imp:tstr:2": three_quarters,
              "ml:trtr": three_quarters, "ml:trtr:fitted": np.array([2]),
              "imp:trtr:0": coin, "imp:trtr:1": three_quarters,
              "imp:trtr:2": _hist(np.array([0, 10, 5, 200]), np.array([0, 0, 1, 1]))}
    ml = measure(plan, assemble(plan, blocks), syn)["ml_efficacy"]
    assert ml["positive_class"] == "= 1"
    assert (ml["tstr_auc"], ml["tstr_f1"], ml["tstr_parties"]) == (1.0, 1.0, 1)
    # trtr: positives in bins 100 and 255 (one predicted positive), negatives in 0 and 200
    assert ml["trtr_auc"] == pytest.approx(0.75)
    assert ml["trtr_f1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    assert ml["trtr_parties"] == 2
    assert ml["feature_importance"]["tstr"] == pytest.approx({"f0": 0.5, "f1": 0.0, "f2": 0.25})
    # trtr imp:2 has positives 5, 200 vs negatives 0, 10: AUC 1/2 + 1/4 = 3/4 -> importance 0
    assert ml["feature_importance"]["trtr"] == pytest.approx({"f0": 0.25, "f1": 0.0, "f2": 0.0})
    # spearman of (0.5, 0, 0.25) and (0.25, 0, 0): ranks (3, 1, 2) and (3, 1.5, 1.5)
    expected = np.corrcoef([3, 1, 2], [3, 1.5, 1.5])[0, 1]
    assert ml["feature_importance_agreement"] == pytest.approx(expected)


# --- bias from hand-made counts ----------------------------------------------------------------


def test_bias_from_hand_made_counts() -> None:
    schema = Schema((Column("g", "categorical", ("A", "B")), Column("y", "integer", lower=0,
                                                                    upper=1)))
    syn = pd.DataFrame({"g": ["A", "A", "B", "B", "B"], "y": [1, 0, 1, 1, 0]})
    plan = EvaluationPlan.build(schema, syn, EvalOptions(target="y", sensitive="g"))
    real = np.array([[2, 2], [3, 1], [0, 0]])  # group (A, B, missing) x label (0, 1)
    model = np.zeros((3, 2, 2), dtype=int)  # group x label x prediction
    model[0] = [[1, 1], [0, 2]]  # A: predicts positive 3 of 4, TPR 2/2
    model[1] = [[3, 0], [1, 0]]  # B: predicts positive 0 of 4, TPR 0/1
    blocks = {**table_blocks(plan, syn), "bias:real": real.ravel(), "bias:tstr": model.ravel()}
    bias = measure(plan, assemble(plan, blocks), syn)["bias"]
    assert bias["groups"] == ["A", "B", "missing"]
    r = bias["real_data"]
    assert r["positive_rate"] == {"A": 0.5, "B": 0.25}
    assert r["demographic_parity_difference"] == pytest.approx(0.25)
    assert r["disparate_impact_ratio"] == pytest.approx(0.5)
    assert r["rows"] == [4, 4, 0]
    s = bias["synthetic_data"]
    assert s["positive_rate"] == pytest.approx({"A": 0.5, "B": 2 / 3})
    assert s["disparate_impact_ratio"] == pytest.approx(0.75)
    t = bias["tstr_model"]
    assert t["prediction_rate"] == {"A": 0.75, "B": 0.0}
    assert t["true_positive_rate"] == {"A": 1.0, "B": 0.0}
    assert t["demographic_parity_difference"] == pytest.approx(0.75)
    assert t["disparate_impact_ratio"] == pytest.approx(0.0)
    assert t["equal_opportunity_difference"] == pytest.approx(1.0)
    assert bias["trtr_model"] is None


# --- distance histograms and privacy --------------------------------------------------------


def test_hist_quantile_and_cdf_by_hand() -> None:
    zeros = np.zeros(DCR_BINS)
    exact = zeros.copy()
    exact[0] = 4
    assert hist_quantile(exact, 0.5) == pytest.approx(0.5e-12)  # halfway through [0, 1e-12)
    h = zeros.copy()
    h[2], h[63] = 2, 2  # bin 2 = [1e-4, 10^(-4 + 4/61)); bin 63 = [1, 2]
    top2 = 10 ** (-4 + 4 / 61)
    assert hist_quantile(h, 0.25) == pytest.approx(1e-4 + 0.5 * (top2 - 1e-4), rel=1e-12)
    assert hist_quantile(h, 0.75) == pytest.approx(1.5)
    assert hist_quantile(h, 1.0) == pytest.approx(2.0)
    assert hist_cdf(h, 1.5) == pytest.approx(0.75)
    assert hist_cdf(h, 1e-4) == 0.0
    assert hist_cdf(h, 0.5) == pytest.approx(0.5)
    assert hist_cdf(h, 3.0) == 1.0
    assert hist_quantile(zeros, 0.5) is None
    assert math.isnan(hist_cdf(zeros, 0.5))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=DCR_BINS, max_size=DCR_BINS).filter(any),
       st.floats(0.001, 0.999))
def test_hist_cdf_inverts_hist_quantile(counts: list[int], q: float) -> None:
    h = np.array(counts)
    assert hist_cdf(h, hist_quantile(h, q)) == pytest.approx(q, abs=1e-9)


def test_privacy_from_hand_made_histograms() -> None:
    schema = Schema((Column("a", "categorical", ("x", "y")),))
    syn = pd.DataFrame({"a": ["x", "y", "x", "y"]})
    plan = EvaluationPlan.build(schema, syn, EvalOptions())
    hold, near = np.zeros(DCR_BINS, dtype=int), np.zeros(DCR_BINS, dtype=int)
    hold[40] = 20
    near[0], near[40] = 10, 10
    member, non_member = np.zeros(DCR_BINS, dtype=int), np.zeros(DCR_BINS, dtype=int)
    member[0], member[30], non_member[30], non_member[50] = 3, 1, 1, 3
    blocks = {**table_blocks(plan, syn), "match": np.array([1, 0, 0, 1]), "dcr:synthetic": near,
              "dcr:holdout": hold, "mia:member": member, "mia:non_member": non_member,
              "mia:parties": np.array([1])}
    p = measure(plan, assemble(plan, blocks), syn)["privacy"]
    assert (p["exact_matches"], p["exact_match_rate"]) == (2, 0.5)
    lo, hi = EDGES[40], EDGES[41]
    assert p["dcr_real_median"] == pytest.approx(lo + 0.5 * (hi - lo))
    assert p["dcr_synthetic_median"] == pytest.approx(1e-12)  # end of the exact-zero bin
    # 5th percentile of holdout: 5% into bin 40; synthetic below it: the 10 zeros + 5% of 10
    assert p["closer_than_real_share"] == pytest.approx((10 + 0.05 * 10) / 20)
    assert p["dcr_ratio"] == pytest.approx(1e-12 / (lo + 0.5 * (hi - lo)))
    assert p["dcr_bin_edges"] == pytest.approx(EDGES.tolist())
    # member/non-member pairs (16): member 0 beats all 4 (x3), member 30 ties 30 and beats 50 x3
    assert p["membership_inference_auc"] == pytest.approx((3 * 4 + 0.5 + 3) / 16)
    blocks["mia:parties"] = np.array([0])
    assert measure(plan, assemble(plan, blocks), syn)["privacy"][
        "membership_inference_auc"] is None


def test_an_empty_real_sum_gives_undefined_similarities_not_an_error() -> None:
    schema = Schema((Column("a", "categorical", ("x", "y")), Column("b", "categorical", ("u",))))
    syn = pd.DataFrame({"a": ["x", "y"], "b": ["u", "u"]})
    plan = EvaluationPlan.build(schema, syn, EvalOptions())
    out = measure(plan, np.zeros(plan.length, dtype=np.int64), syn)
    assert out["rows_real"] == 0
    assert out["columns"][0]["histogram_similarity"] is None
    assert out["tvd"]["1way"] is None and out["similarity"]["histogram"] is None
