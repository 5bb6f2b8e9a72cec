"""Hand-checked and property tests for fedsynth.evaluation.statistics (a node's sums)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from fedsynth.evaluation.plan import DCR_BINS, FIXED_POINT, EvalOptions, EvaluationPlan
from fedsynth.evaluation.statistics import (
    assemble,
    closest_distances,
    dcr_hist,
    feature_matrix,
    fit_model,
    node_statistics,
    table_blocks,
)
from fedsynth.synthesis.schema import Column, Schema, validate_frame

FP = int(FIXED_POINT)


def _plan(schema: Schema, synthetic: pd.DataFrame, **options: object) -> EvaluationPlan:
    checked = validate_frame(synthetic, schema, source="synthetic")
    return EvaluationPlan.build(schema, checked, EvalOptions(**options))  # type: ignore[arg-type]


# --- table_blocks by hand ----------------------------------------------------------------------

HAND_SCHEMA = Schema((
    Column("g", "categorical", ("a", "b"), nullable=True),
    Column("k", "integer", lower=0, upper=4, nullable=True),
    Column("v", "continuous", lower=0, upper=2, nullable=True),
))
HAND_SYNTHETIC = pd.DataFrame({"g": ["a", "b", "a", "b"], "k": [0, 1, 2, 4],
                               "v": [0.5, 1.0, 2.0, 0.5]})
HAND_REAL = pd.DataFrame({"g": ["a", "b", "a", None, "b"], "k": [0, 1, 2, 4, None],
                          "v": [0.5, 2.0, None, 1.0, 0.5]})


def test_table_blocks_by_hand() -> None:
    plan = _plan(HAND_SCHEMA, HAND_SYNTHETIC)
    k, v = plan.columns[1], plan.columns[2]
    assert k.edges == (0.5, 1.5, 3.0)  # one bin per synthetic value 0, 1, 2, 4
    assert v.edges == (0.75, 1.5)  # synthetic values 0.5, 1, 2
    b = table_blocks(plan, validate_frame(HAND_REAL, HAND_SCHEMA, source="real"))
    assert b["rows"].tolist() == [5]
    # codes: g = a b a - b -> 0 1 0 2 1; k = 0 1 2 4 - -> 0 1 2 3 4; v = .5 2 - 1 .5 -> 0 2 3 1 0
    assert b["one:0"].tolist() == [2, 2, 1]
    assert b["one:1"].tolist() == [1, 1, 1, 1, 1]
    assert b["one:2"].tolist() == [2, 1, 1, 1]
    assert b["fine:1"].tolist() == [1, 1, 1, 0, 1, 1]  # exact bins for 0..4, then missing
    assert b["fine:2"].sum() == 5 and b["fine:2"][-1] == 1
    # fixed-point moments of the values mapped into [0, 1]: k / 4 and v / 2
    assert b["mom:1"].tolist() == [4, int(1.75 * FP), int(1.3125 * FP)]
    assert b["mom:2"].tolist() == [4, int(2.0 * FP), int(1.375 * FP)]
    pair01 = np.zeros(15, dtype=int)
    pair01[[0, 6, 2, 13, 9]] = 1  # g * 5 + k
    assert b["pair:0,1"].tolist() == pair01.tolist()
    pair12 = np.zeros(20, dtype=int)
    pair12[[0, 6, 11, 13, 16]] = 1  # k * 4 + v
    assert b["pair:1,2"].tolist() == pair12.tolist()
    assert "pear:0,1" not in b and "pear:0,2" not in b
    # rows with both k and v present: (0, .25), (.25, 1), (1, .5)
    n, sx, sy, sxx, syy, sxy = b["pear:1,2"].tolist()
    assert n == 3
    assert [sx, sy, sxx, syy, sxy] == [int(f * FP) for f in (1.25, 1.75, 1.0625, 1.3125, 0.75)]
    tri = np.zeros(60, dtype=int)
    tri[[0, 26, 11, 53, 36]] = 1  # (g * 5 + k) * 4 + v
    assert b["tri:0,1,2"].tolist() == tri.tolist()


def test_fixed_point_sums_round_each_value_to_a_multiple_of_two_to_minus_32() -> None:
    schema = Schema((Column("v", "continuous", lower=0, upper=3),))
    plan = _plan(schema, pd.DataFrame({"v": [1.0, 2.0]}))
    b = table_blocks(plan, pd.DataFrame({"v": [1.0, 1.0, 1.0]}))
    third = round(FP / 3)  # 1/3 is not a multiple of 2^-32: each copy is rounded, then summed
    assert b["mom:0"].tolist() == [3, 3 * third, 3 * round(FP / 9)]


def test_fine_bins_of_a_continuous_column_bracket_every_value() -> None:
    rng = np.random.default_rng(1)
    schema = Schema((Column("v", "continuous", lower=-5, upper=5),))
    plan = _plan(schema, pd.DataFrame({"v": rng.uniform(-5, 5, 300)}), fine_bins=40)
    c = plan.columns[0]
    x = rng.uniform(-5, 5, 1000)
    fine = table_blocks(plan, pd.DataFrame({"v": x}))["fine:0"]
    edges = np.asarray(c.fine_edges)
    expected = [int(((x >= lo) & (x < hi)).sum()) for lo, hi in itertools.pairwise(edges)]
    expected[-1] += int((x == edges[-1]).sum())
    assert fine.tolist() == [*expected, 0]


# --- sums decompose over any partition of the rows (federated == pooled) ----------------------

PROP_SCHEMA = Schema((
    Column("g", "categorical", ("a", "b", "c"), nullable=True),
    Column("k", "integer", lower=-3, upper=5, nullable=True),
    Column("v", "continuous", lower=-10, upper=10, nullable=True),
    Column("w", "continuous", lower=0, upper=1),
))

_row = st.tuples(
    st.sampled_from(["a", "b", "c", None]),
    st.one_of(st.none(), st.integers(-3, 5)),
    st.one_of(st.none(), st.floats(-10, 10, allow_nan=False)),
    st.floats(0, 1, allow_nan=False),
)


def _frame(rows: list[tuple[object, ...]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["g", "k", "v", "w"])
    df["k"] = df["k"].astype("Float64")
    df["v"] = df["v"].astype(float)
    return validate_frame(df, PROP_SCHEMA, source="t")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(synthetic=st.lists(_row, min_size=1, max_size=30), data=st.data(),
       rows=st.lists(_row, min_size=1, max_size=40), parts=st.integers(1, 4))
def test_sum_of_part_blocks_equals_blocks_of_the_whole(
        synthetic: list[tuple[object, ...]], data: st.DataObject,
        rows: list[tuple[object, ...]], parts: int) -> None:
    plan = EvaluationPlan.build(PROP_SCHEMA, _frame(synthetic), EvalOptions(bins=4, fine_bins=20))
    whole = _frame(rows)
    owner = np.array(data.draw(st.lists(st.integers(0, parts - 1), min_size=len(rows),
                                        max_size=len(rows))))
    pieces = [whole[owner == i].reset_index(drop=True) for i in range(parts)]
    pieces = [p for p in pieces if len(p)]  # a node holds at least one row
    expected = table_blocks(plan, whole)
    got = [table_blocks(plan, p) for p in pieces]
    assert set(expected) == {name for name, _ in plan.layout if name in expected}
    for name, value in expected.items():
        total = np.sum([g[name] for g in got], axis=0)
        np.testing.assert_array_equal(total, value, err_msg=name)
    np.testing.assert_array_equal(np.sum([assemble(plan, g) for g in got], axis=0),
                                  assemble(plan, expected))


# --- assemble / node_statistics ----------------------------------------------------------------


def test_assemble_orders_blocks_by_the_layout_and_fills_absent_ones_with_zeros() -> None:
    plan = _plan(HAND_SCHEMA, HAND_SYNTHETIC)
    vec = assemble(plan, {"one:0": np.array([7, 8, 9]), "rows": np.array([5])})
    assert vec.dtype == np.int64 and len(vec) == plan.length
    parts = plan.split(vec)
    assert parts["rows"].tolist() == [5]
    assert parts["one:0"].tolist() == [7, 8, 9]
    assert int(vec.sum()) == 5 + 7 + 8 + 9
    with pytest.raises(AssertionError, match="block one:0 has 2 values, the plan says 3"):
        assemble(plan, {"one:0": np.array([1, 2])})


def test_node_statistics_needs_some_rows() -> None:
    plan = _plan(HAND_SCHEMA, HAND_SYNTHETIC)
    with pytest.raises(ValueError, match="needs its synthesis rows"):
        node_statistics(plan, HAND_SYNTHETIC, train=None, test=None)


def _mixed(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, n)
    return pd.DataFrame({"x": x, "c": rng.choice(["p", "q"], n),
                         "y": (x + 0.2 * rng.normal(size=n) > 0.5).astype(int)})


MIXED_SCHEMA = Schema((Column("x", "continuous", lower=-1, upper=2),
                       Column("c", "categorical", ("p", "q")),
                       Column("y", "integer", lower=0, upper=1)))


def test_node_statistics_layout_similarity_rows_matches_and_membership_flag() -> None:
    syn = _mixed(200, 0)
    train, test = _mixed(120, 1), _mixed(80, 2)
    syn.iloc[:3] = train.iloc[[5, 6, 7]].to_numpy()  # three synthetic rows copy training rows
    syn.iloc[3] = test.iloc[0].to_numpy()  # one copies a held-out row
    syn = validate_frame(syn, MIXED_SCHEMA, source="s")
    plan = EvaluationPlan.build(MIXED_SCHEMA, syn, EvalOptions(target="y", sensitive="c"))
    both = plan.split(node_statistics(plan, syn, train=train, test=test))
    assert both["rows"].tolist() == [80]  # similarity is measured on the held-out rows
    assert np.flatnonzero(both["match"]).tolist() == [0, 1, 2, 3]
    assert both["mia:parties"].tolist() == [1]
    assert both["mia:member"].sum() == 120 and both["mia:non_member"].sum() == 80
    assert both["dcr:synthetic"].sum() == 200 and both["dcr:holdout"].sum() == 80
    assert both["ml:tstr:fitted"].tolist() == [1] and both["ml:trtr:fitted"].tolist() == [1]
    assert both["ml:tstr"].sum() == 80  # one score per labelled held-out row
    assert both["bias:real"].reshape(3, 2).sum(axis=1).tolist() == [
        int((test["c"] == "p").sum()), int((test["c"] == "q").sum()), 0]
    assert both["bias:real"].reshape(3, 2)[:, 1].sum() == test["y"].sum()

    only = plan.split(node_statistics(plan, syn, train=train, test=None))
    assert only["rows"].tolist() == [120]  # without held-out rows: the synthesis rows
    assert np.flatnonzero(only["match"]).tolist() == [0, 1, 2]
    assert only["mia:parties"].tolist() == [0] and only["mia:member"].sum() == 0
    assert only["dcr:holdout"].sum() == 60  # half of the rows probe the other half
    assert only["ml:tstr"].sum() == 120  # TSTR is tested on every evaluated row


# --- models ----------------------------------------------------------------------------------


def test_fit_model_needs_two_classes_among_labelled_rows() -> None:
    df = _mixed(50, 3)
    plan = EvaluationPlan.build(MIXED_SCHEMA, df, EvalOptions(target="y"))
    one_class = df.assign(y=1)
    assert fit_model(plan, one_class) is None


def test_fit_model_scores_the_positive_class_and_skips_unlabelled_rows() -> None:
    schema = Schema((Column("x", "continuous", lower=-1, upper=1),
                     Column("c", "categorical", ("r", "g", "b")),
                     Column("y", "categorical", ("yes", "no"), nullable=True)))
    rng = np.random.default_rng(4)

    def table(n: int) -> pd.DataFrame:
        x = rng.uniform(-1, 1, n)
        y = np.where(x > 0.4, "yes", "no").astype(object)  # "yes" is the minority: positive
        return pd.DataFrame({"x": x, "c": rng.choice(["r", "g", "b"], n), "y": y})

    fit = table(400)
    fit.loc[fit.index[:40], "y"] = None  # unlabelled rows are ignored, not an error
    fit = validate_frame(fit, schema, source="fit")
    plan = EvaluationPlan.build(schema, fit, EvalOptions(target="y"))
    assert plan.target is not None and plan.target.positive == "yes"
    model = fit_model(plan, fit)
    assert model is not None
    fresh = table(500)
    p = model(feature_matrix(plan, fresh))
    assert p.shape == (500,) and np.all((p >= 0) & (p <= 1))
    truth = (fresh["y"] == "yes").to_numpy()
    assert roc_auc_score(truth, p) > 0.98
    assert p[truth].mean() > 0.8 and p[~truth].mean() < 0.2


# --- distances -------------------------------------------------------------------------------

DIST_SCHEMA = Schema((Column("v", "continuous", lower=-50, upper=150, nullable=True),
                      Column("c", "categorical", ("x", "y"))))
DIST_SYNTHETIC = pd.DataFrame({"v": np.arange(101, dtype=float), "c": ["x"] * 101})


def test_closest_distances_are_gower_distances_by_hand() -> None:
    plan = _plan(DIST_SCHEMA, DIST_SYNTHETIC)
    assert plan.columns[0].clip == (1.0, 99.0)  # synthetic 1st and 99th percentiles: range 98
    ref = pd.DataFrame({"v": [59.0, 10.0], "c": ["x", "y"]})
    queries = pd.DataFrame({"v": [10.0, 0.5, 59.0, 120.0, 10.0],
                            "c": ["x", "y", "x", "x", "y"]})
    d = closest_distances(plan, queries, ref)
    expected = [
        min((49 / 98 + 0) / 2, (0 + 1) / 2),  # (10, x): 59/x is 49 away, 10/y is a mismatch
        (9 / 98 + 0) / 2,  # (0.5, y): clipped to 1, then 9 from (10, y)
        0.0,  # exact copy
        (40 / 98) / 2,  # (120, x): clipped to 99, then 40 from (59, x)
        0.0,
    ]
    np.testing.assert_allclose(d, expected, rtol=0, atol=1e-12)


def test_a_missing_numeric_value_costs_at_most_one_per_column() -> None:
    plan = _plan(DIST_SCHEMA, DIST_SYNTHETIC)
    ref = pd.DataFrame({"v": [1.0], "c": ["x"]})
    top = pd.DataFrame({"v": [99.0], "c": ["x"]})
    missing = pd.DataFrame({"v": [np.nan], "c": ["x"]})
    # one column of two differs completely (missing vs present): Gower distance 1/2
    assert closest_distances(plan, missing, ref)[0] == pytest.approx(0.5)
    assert closest_distances(plan, missing, top)[0] == pytest.approx(0.5)


def test_dcr_hist_bins_by_hand() -> None:
    d = np.array([0.0, 5e-13, 1e-12, 5e-5, 1e-4, 0.5, 1.0, 1.5])
    h = dcr_hist(d)
    assert len(h) == DCR_BINS and h.sum() == len(d)
    expected = np.zeros(DCR_BINS, dtype=int)
    # bin 0: below 1e-12 (exact matches); bin 1: [1e-12, 1e-4); then 61 log-spaced bins of
    # width 4/61 decades up to 1; 0.5 is 10^-0.301, in bin 2 + floor((4 - 0.301) / (4/61)) = 58;
    # 1 and above land in the last bin
    for b, n in ((0, 2), (1, 2), (2, 1), (58, 1), (63, 2)):
        expected[b] = n
    assert h.tolist() == expected.tolist()
