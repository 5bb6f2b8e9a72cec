"""DP evaluation: bounded blocks only, sensitivities that hold, calibration within the asked
(ε, δ), and measures that survive noisy sums."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsynth.crypto.noise import seeded_generator
from fedsynth.evaluation import dp
from fedsynth.evaluation.local import evaluate_tables
from fedsynth.evaluation.measures import dp_tvd, measure, project_counts
from fedsynth.evaluation.plan import DP_WEIGHTS, EvalOptions, EvalOptionsError, EvaluationPlan
from fedsynth.evaluation.report import render
from fedsynth.evaluation.statistics import node_statistics, replacement_rows
from fedsynth.synthesis.schema import Column, Schema, validate_frame

SCHEMA = Schema((
    Column("g", "categorical", ("a", "b", "c"), nullable=True),
    Column("k", "integer", lower=-3, upper=5, nullable=True),
    Column("v", "continuous", lower=-10, upper=10, nullable=True),
    Column("w", "continuous", lower=0, upper=1),
    Column("y", "categorical", ("no", "yes"), nullable=True),
))
TARGETED = {"target": "y", "sensitive": "g"}
ALL_KINDS = {"one": 0.2, "ml": 0.2, "pair": 0.1, "match": 0.05, "dcr": 0.05, "bias": 0.05,
             "tri": 0.1, "fine": 0.05, "mom": 0.05, "pear": 0.05, "imp": 0.1}
UNBOUNDED = ("rows", "ml:trtr", "ml:tstr:fitted", "ml:trtr:fitted", "imp:trtr:0", "bias:trtr",
             "match", "dcr:synthetic", "dcr:holdout", "mia:member", "mia:non_member",
             "mia:parties")

_row = st.tuples(
    st.sampled_from(["a", "b", "c", None]),
    st.one_of(st.none(), st.integers(-3, 5)),
    st.one_of(st.none(), st.floats(-10, 10, allow_nan=False)),
    st.floats(0, 1, allow_nan=False),
    st.sampled_from(["no", "yes", None]),
)


def _frame(rows: list[tuple[object, ...]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["g", "k", "v", "w", "y"])
    df["k"] = df["k"].astype("Float64")
    df["v"] = df["v"].astype(float)
    return validate_frame(df, SCHEMA, source="t")


def _synthetic(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return _frame([(str(rng.choice(["a", "b", "c"])), int(rng.integers(-3, 6)),
                    float(rng.uniform(-10, 10)), float(rng.uniform(0, 1)),
                    str(rng.choice(["no", "yes"]))) for _ in range(n)])


@contextmanager
def weights(w: dict[str, float]) -> Iterator[None]:
    """DP plans with these kinds of blocks (the shipped plan leaves some kinds out)."""
    saved = dict(DP_WEIGHTS)
    DP_WEIGHTS.clear()
    DP_WEIGHTS.update(w)
    try:
        yield
    finally:
        DP_WEIGHTS.clear()
        DP_WEIGHTS.update(saved)


def _plan(synthetic: pd.DataFrame, **options: Any) -> EvaluationPlan:
    return EvaluationPlan.build(SCHEMA, synthetic, EvalOptions(**options))


# --- options ----------------------------------------------------------------------------------


def test_epsilon_and_delta_travel_in_the_json_and_are_checked() -> None:
    opts = EvalOptions(target="y", epsilon=0.5, delta=1e-7)
    assert EvalOptions.from_json(opts.to_json()) == opts
    assert json.loads(EvalOptions().to_json())["epsilon"] is None  # exact unless asked
    for bad in ('{"epsilon": 0}', '{"epsilon": -1}', '{"epsilon": true}', '{"epsilon": "1"}',
                '{"delta": 0}', '{"delta": 1}', '{"delta": null}'):
        with pytest.raises(EvalOptionsError):
            EvalOptions.from_json(bad)
    with pytest.raises(EvalOptionsError, match="epsilon=inf"):
        EvalOptions(epsilon=math.inf).check()


# --- the plan holds bounded blocks only ---------------------------------------------------------


@pytest.mark.parametrize("kinds", [None, ALL_KINDS])
@pytest.mark.parametrize("options", [{}, {"target": "y"}, TARGETED])
def test_a_dp_plan_has_no_unbounded_block(options: dict[str, Any],
                                          kinds: dict[str, float] | None) -> None:
    with weights(kinds or dict(DP_WEIGHTS)):
        plan = _plan(_synthetic(), epsilon=1.0, **options)
    names = [name for name, _ in plan.layout]
    assert not set(names) & set(UNBOUNDED)
    assert not any(n.startswith(("ml:trtr", "imp:trtr", "bias:trtr", "mia:")) for n in names)
    for name in names:
        dp.block_group(name)  # raises for a block without a per-row bound
    if "target" in options:
        assert "ml:tstr" in names
    assert ("match:real" in names) and ("dcr:real_to_synthetic" in names)


def test_unbounded_blocks_are_refused_by_name() -> None:
    for name in UNBOUNDED:
        with pytest.raises(EvalOptionsError, match="no per-row sensitivity bound"):
            dp.block_group(name)
    exact = _plan(_synthetic(), **TARGETED)
    with pytest.raises(EvalOptionsError, match="exact"):
        dp.evaluation_releases(exact)
    # an exact layout smuggled under an ε is refused, not calibrated
    forged = EvaluationPlan(**{**exact.__dict__, "options": EvalOptions(**TARGETED, epsilon=1.0)})
    with pytest.raises(EvalOptionsError, match="no per-row sensitivity bound"):
        dp.evaluation_releases(forged)


def test_no_tstr_blocks_when_the_synthetic_labels_hold_one_class() -> None:
    syn = _synthetic()
    syn["y"] = "no"
    plan = _plan(syn, epsilon=1.0, **TARGETED)
    names = [name for name, _ in plan.layout]
    assert "ml:tstr" not in names and "bias:tstr" not in names and "bias:real" in names
    m = measure(plan, dp.add_noise(plan, np.zeros(plan.length, np.int64), seeded_generator(1)),
                syn)
    assert m["ml_efficacy"]["tstr_auc"] is None
    assert "one class" in m["ml_efficacy"]["not_released"]["tstr_auc"]


# --- sensitivities hold -------------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(_row, min_size=1, max_size=25), extra=_row, seed=st.integers(0, 3))
def test_one_row_moves_each_block_by_at_most_its_sensitivity(
        rows: list[tuple[object, ...]], extra: tuple[object, ...], seed: int) -> None:
    syn = _synthetic(30, seed)
    with weights(ALL_KINDS):  # every kind of bounded block, the ones the plan leaves out too
        plan = _plan(syn, epsilon=1.0, bins=4, fine_bins=12, distance_rows=20, **TARGETED)
    before = node_statistics(plan, syn, train=None, test=_frame(rows))
    after = node_statistics(plan, syn, train=None, test=_frame([*rows, extra]))
    diff = (after - before).astype(float)
    with weights(ALL_KINDS):
        releases = dp.evaluation_releases(plan)
    assert {r.name for r in releases} == {name for name, _ in plan.layout}
    for r in releases:
        d = diff[r.offset:r.offset + r.length]
        assert np.abs(d).sum() <= r.l1 + 1e-9, r.name
        assert math.sqrt(float((d * d).sum())) <= r.l2 + 1e-9, r.name


def test_the_dp_importance_draw_of_a_row_depends_on_that_row_alone() -> None:
    syn = _synthetic()
    plan = _plan(syn, epsilon=1.0, target="y")
    rows = _synthetic(12, seed=5)
    alone = replacement_rows(plan, rows.iloc[[3]].reset_index(drop=True), 2, len(syn))
    among = replacement_rows(plan, rows, 2, len(syn))
    shuffled = replacement_rows(plan, rows.iloc[::-1].reset_index(drop=True), 2, len(syn))
    assert alone[0] == among[3] == shuffled[len(rows) - 1 - 3]
    assert (among >= 0).all() and (among < len(syn)).all()


def test_parties_dp_vectors_add_up_to_the_pooled_vector() -> None:
    syn = _synthetic()
    with weights(ALL_KINDS):
        plan = _plan(syn, epsilon=1.0, bins=4, fine_bins=12, **TARGETED)
    held = _synthetic(60, seed=9)
    pooled = node_statistics(plan, syn, train=None, test=held)
    parts = sum(node_statistics(plan, syn, train=None, test=held.iloc[i::3].reset_index(drop=True))
                for i in range(3))
    assert np.array_equal(parts, pooled)


def test_dp_statistics_read_held_out_rows_only() -> None:
    syn = _synthetic()
    plan = _plan(syn, epsilon=1.0, target="y")
    with pytest.raises(ValueError, match="held-out rows only"):
        node_statistics(plan, syn, train=syn, test=syn)
    with pytest.raises(ValueError, match="held-out rows only"):
        node_statistics(plan, syn, train=syn, test=None)


# --- calibration --------------------------------------------------------------------------------


@pytest.mark.parametrize("kinds", [None, ALL_KINDS])
@pytest.mark.parametrize(("epsilon", "delta"), [(0.1, 1e-6), (0.5, 1e-6), (1.0, 1e-9),
                                                (3.0, 1e-6), (10.0, 1e-5)])
def test_composed_epsilon_of_the_releases_is_at_most_the_ask(
        epsilon: float, delta: float, kinds: dict[str, float] | None) -> None:
    with weights(kinds or dict(DP_WEIGHTS)):
        plan = _plan(_synthetic(), epsilon=epsilon, delta=delta, **TARGETED)
        releases = dp.evaluation_releases(plan)
        variances = dp.element_variances(plan)
    spent = dp.composed_epsilon(releases, delta)
    assert spent <= epsilon
    assert spent >= 0.8 * epsilon  # and the budget is not wasted
    # the releases tile the vector, in order, and element_variances follows them
    at = 0
    for r, (name, n) in zip(releases, plan.layout, strict=True):
        assert (r.name, r.offset, r.length) == (name, at, n)
        assert r.variance > 0 and r.l1 <= r.l2**2 + 1e-9
        assert np.all(variances[at:at + n] == r.variance)
        at += n
    assert at == plan.length and variances.dtype == np.float64


def test_headline_blocks_get_less_noise_than_the_others() -> None:
    plan = _plan(_synthetic(), epsilon=1.0, **TARGETED)
    v = dp.block_variances(plan)
    assert v["ml:tstr"] < v["pair:0,1"] and v["one:0"] < v["pair:0,1"]


def test_a_too_small_epsilon_is_refused_not_drawn() -> None:
    with weights(ALL_KINDS):
        plan = _plan(_synthetic(), epsilon=1e-4, delta=1e-12, **TARGETED)
        with pytest.raises(EvalOptionsError, match="too small"):
            dp.evaluation_releases(plan)


# --- measures on noisy sums ---------------------------------------------------------------------


def _in_unit(x: object) -> bool:
    return x is None or (isinstance(x, float) and 0.0 <= x <= 1.0)


def _check_ranges(m: dict[str, Any]) -> None:
    json.dumps(m, allow_nan=False)  # serialisable, and no NaN or infinity anywhere
    assert m["evaluation"]["dp"] is True and m["evaluation"]["epsilon"] > 0
    assert m["rows_real"] >= 0
    for w in ("1way", "2way", "3way"):
        assert _in_unit(m["tvd"][w])
    for k in ("histogram", "contingency", "correlation"):
        assert _in_unit(m["similarity"][k])
    for c in m["columns"]:
        assert _in_unit(c["histogram_similarity"]) and _in_unit(c.get("ks_complement"))
        assert min(c["histogram_real"]) >= 0 and c["real"]["missing"] >= 0
        assert c["real"].get("min") is None and c["real"].get("max") is None
    for p in m["pairs"]:
        assert _in_unit(p["contingency_similarity"]) and _in_unit(p["correlation_similarity"])
    ml = m.get("ml_efficacy")
    if ml:
        assert _in_unit(ml["tstr_auc"]) and _in_unit(ml["tstr_f1"]) and ml["trtr_auc"] is None
        assert "trtr_auc" in ml["not_released"]
    b = m.get("bias")
    if b:
        for side in ("real_data", "tstr_model"):
            if b[side]:
                rates = b[side].get("positive_rate", b[side].get("prediction_rate")) or {}
                assert all(0.0 <= r <= 1.0 for r in rates.values())
        assert b["trtr_model"] is None
    p = m["privacy"]
    assert 0 <= p["real_rows_with_exact_match"] <= max(m["rows_real"], 0)
    assert _in_unit(p["real_exact_match_rate"]) and p["exact_matches"] is None
    assert "membership_inference_auc" in p["not_released"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(_row, min_size=1, max_size=30), scale=st.sampled_from([0.0, 1.0, 1e3]),
       shift=st.sampled_from([0, -50, 10**6]), seed=st.integers(0, 2**16))
def test_measures_of_noisy_sums_never_crash_and_stay_in_range(
        rows: list[tuple[object, ...]], scale: float, shift: int, seed: int) -> None:
    syn = _synthetic()
    plan = _plan(syn, epsilon=1.0, bins=4, **TARGETED)
    vector = node_statistics(plan, syn, train=None, test=_frame(rows))
    rng = np.random.default_rng(seed)
    noisy = vector + np.rint(rng.normal(0, scale * np.sqrt(dp.element_variances(plan)))
                             ).astype(np.int64) + shift
    _check_ranges(measure(plan, noisy, syn, replicates=3))


@pytest.mark.parametrize("vector", ["zeros", "negative", "huge"])
def test_degenerate_noisy_sums_give_undefined_measures_not_errors(vector: str) -> None:
    syn = _synthetic()
    with weights(ALL_KINDS):
        plan = _plan(syn, epsilon=1.0, bins=4, fine_bins=12, **TARGETED)
        v = {"zeros": np.zeros(plan.length, np.int64),
             "negative": np.full(plan.length, -10**6, np.int64),
             "huge": np.full(plan.length, 10**12, np.int64)}[vector]
        m = measure(plan, v, syn, replicates=2)
    _check_ranges(m)
    render(m)


def test_the_report_says_dp_and_what_it_did_not_release() -> None:
    syn = _synthetic(200, seed=1)
    plan = _plan(syn, epsilon=1.0, **TARGETED)
    held = _synthetic(400, seed=2)
    m = measure(plan, dp.add_noise(plan, node_statistics(plan, syn, train=None, test=held),
                                   seeded_generator(3)), syn)
    ev = m["evaluation"]
    assert (ev["dp"], ev["epsilon"], ev["delta"]) == (True, 1.0, 1e-6)
    assert "membership inference" in ev["not_released"]
    assert set(m["tvd"]["noise_floor"]) == {"1way", "2way", "3way"}
    assert m["tvd"]["3way"] is None and m["similarity"]["correlation"] is None
    assert "tvd.1way" in m["uncertainty"] and m["uncertainty"]["tvd.1way"] > 0
    # every float is rounded to the first digit of its noise
    sd = m["uncertainty"]["tvd.1way"]
    digits = -math.floor(math.log10(sd))
    assert m["tvd"]["1way"] == round(m["tvd"]["1way"], digits)
    html = render(m)
    assert "Differentially private evaluation" in html and "Not released by a DP" in html


def test_exact_measures_say_they_are_exact() -> None:
    syn = _synthetic()
    plan = _plan(syn, **TARGETED)
    m = measure(plan, node_statistics(plan, syn, train=None, test=_synthetic(30, 4)), syn)
    assert m["evaluation"] == {"dp": False, "epsilon": None, "delta": None,
                               "synthesis_rows_read": False}  # held-out rows only
    assert m["ml_efficacy"]["trtr_auc"] is not None or m["ml_efficacy"]["trtr_parties"] == 0


def test_local_dp_evaluation_adds_noise_and_ignores_the_training_rows() -> None:
    syn = _synthetic(300, seed=6)
    real = _synthetic(300, seed=7)
    out = evaluate_tables(real, syn, train=_synthetic(100, seed=8), schema=SCHEMA,
                          options=EvalOptions(epsilon=2.0, **TARGETED))
    assert out["evaluation"]["dp"] is True and out["evaluation"]["mode"] == "local"
    assert "not read" in out["evaluation"]["train_table"]
    _check_ranges(out)


# --- post-processing helpers --------------------------------------------------------------------


@given(y=st.lists(st.integers(-50, 50), min_size=1, max_size=20), total=st.integers(0, 500))
def test_projection_is_non_negative_sums_to_the_total_and_keeps_feasible_counts(
        y: list[int], total: int) -> None:
    x = project_counts(np.array(y), float(total))
    assert (x >= 0).all() and abs(x.sum() - total) < 1e-6 * max(total, 1)
    feasible = np.abs(np.array(y))
    assert np.allclose(project_counts(feasible, float(feasible.sum())), feasible)


def test_debiased_tvd_is_nearer_the_truth_than_the_plain_one_when_noise_dominates() -> None:
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(17))
    q = 0.97 * p + 0.03 * rng.dirichlet(np.ones(17))
    n, sd = 2000, 15.0
    truth = 0.5 * float(np.abs(p - q).sum())
    counts = p * n
    draws = [counts + rng.normal(0, sd, 17) for _ in range(300)]
    plain = [0.5 * float(np.abs(np.maximum(d, 0) / np.maximum(d, 0).sum() - q).sum())
             for d in draws]
    deb = [dp_tvd(d, sd * sd, n, q) for d in draws]
    assert abs(np.median(deb) - truth) < 0.5 * abs(np.median(plain) - truth)
    assert dp_tvd(np.zeros(3), 1.0, 0.0, np.ones(3)) is None


@pytest.mark.parametrize("total", [6.2e-16, 1e-300, 5e-324])
def test_a_total_rounding_makes_invisible_beside_the_counts_is_still_projected(
        total: float) -> None:
    # a noisy total of about 1e-16 (a difference of floats) beside counts of order 10: every
    # threshold test rounds to "not positive"; the projection still lands on the simplex
    x = project_counts(np.array([1.0, -2.0, 1.0, -11.0, 5.0, -7.0, -16.0, 15.0]), total)
    assert (x >= 0).all() and abs(x.sum() - total) <= 1e-15
