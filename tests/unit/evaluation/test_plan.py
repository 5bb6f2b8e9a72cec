"""Hand-checked tests for fedsynth.evaluation.plan (options, bins, targets, layout)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from fedsynth.evaluation.plan import (
    DCR_BINS,
    MAX_CATEGORICAL_NUMERIC,
    EvalOptions,
    EvalOptionsError,
    EvaluationPlan,
    Target,
    dcr_edges,
)
from fedsynth.synthesis.schema import Column, Schema, validate_frame


def _plan(schema: Schema, synthetic: pd.DataFrame, **options: object) -> EvaluationPlan:
    checked = validate_frame(synthetic, schema, source="synthetic")
    return EvaluationPlan.build(schema, checked, EvalOptions(**options))  # type: ignore[arg-type]


def _cat(name: str, *cats: str, nullable: bool = True) -> Column:
    return Column(name, "categorical", tuple(cats), nullable=nullable)


def _num(name: str, kind: str, lo: float, hi: float, nullable: bool = True) -> Column:
    return Column(name, kind, lower=lo, upper=hi, nullable=nullable)  # type: ignore[arg-type]


# --- EvalOptions -----------------------------------------------------------------------------


def test_default_options_are_valid_and_survive_a_json_round_trip() -> None:
    opts = EvalOptions(target="y", sensitive="g", seed=3, bins=8)
    opts.check()
    text = opts.to_json()
    assert json.loads(text) == {"target": "y", "sensitive": "g", "seed": 3, "bins": 8,
                                "fine_bins": 200, "max_triples": 60, "distance_rows": 1000,
                                "score_bins": 256, "epsilon": None, "delta": 1e-6}
    assert EvalOptions.from_json(text) == opts
    assert EvalOptions.from_json("{}") == EvalOptions()


@pytest.mark.parametrize("text", ['{"bins": 16, "colour": "red"}', '{"Bins": 16}', "[]",
                                  '"bins"', "null"])
def test_from_json_rejects_unknown_keys_and_non_objects(text: str) -> None:
    with pytest.raises(EvalOptionsError, match="not recognised"):
        EvalOptions.from_json(text)


@pytest.mark.parametrize(("key", "value"), [
    ("bins", 1), ("bins", 65), ("fine_bins", 9), ("fine_bins", 1001), ("max_triples", -1),
    ("max_triples", 501), ("distance_rows", 9), ("distance_rows", 20_001), ("score_bins", 15),
    ("score_bins", 4097), ("bins", 16.0), ("bins", "16"), ("fine_bins", None)])
def test_from_json_rejects_sizes_out_of_range_or_not_integers(key: str, value: object) -> None:
    with pytest.raises(EvalOptionsError, match=rf"{key}={value!s} is outside"):
        EvalOptions.from_json(json.dumps({key: value}))


@pytest.mark.parametrize(("key", "value"), [
    ("bins", 2), ("bins", 64), ("fine_bins", 10), ("fine_bins", 1000), ("max_triples", 0),
    ("max_triples", 500), ("distance_rows", 10), ("distance_rows", 20_000), ("score_bins", 16),
    ("score_bins", 4096)])
def test_from_json_accepts_the_bounds_of_every_range(key: str, value: int) -> None:
    assert getattr(EvalOptions.from_json(json.dumps({key: value})), key) == value


def test_check_lists_every_problem_at_once() -> None:
    with pytest.raises(EvalOptionsError) as err:
        EvalOptions(bins=1, score_bins=5000, sensitive="g").check()
    msg = str(err.value)
    assert "bins=1 is outside [2, 64]" in msg
    assert "score_bins=5000 is outside [16, 4096]" in msg
    assert "need a target" in msg


def test_sensitive_column_without_target_is_rejected() -> None:
    with pytest.raises(EvalOptionsError, match="need a target"):
        EvalOptions(sensitive="g").check()
    with pytest.raises(EvalOptionsError, match="need a target"):
        EvalOptions.from_json('{"sensitive": "g"}')
    EvalOptions(target="y", sensitive="g").check()  # with a target it is fine


@pytest.mark.parametrize("seed", ["x", -1, 1.5])
def test_from_json_rejects_a_seed_that_is_not_a_non_negative_integer(seed: object) -> None:
    with pytest.raises(EvalOptionsError):
        EvalOptions.from_json(json.dumps({"seed": seed}))


# --- EvaluationPlan.build: errors --------------------------------------------------------------


def _small() -> tuple[Schema, pd.DataFrame]:
    schema = Schema((_cat("g", "a", "b"), _num("k", "integer", 0, 3), _cat("y", "no", "yes")))
    syn = pd.DataFrame({"g": ["a", "b", "a", "a"], "k": [0, 1, 2, 3],
                        "y": ["no", "yes", "yes", "no"]})
    return schema, syn


@pytest.mark.parametrize("role", ["target", "sensitive"])
def test_unknown_target_or_sensitive_column_is_named_in_the_error(role: str) -> None:
    schema, syn = _small()
    opts = {"target": "y", "sensitive": "g", role: "income"}
    with pytest.raises(EvalOptionsError, match=rf"{role} column 'income' is not in the schema"):
        _plan(schema, syn, **opts)


def test_build_checks_the_options_and_rejects_an_empty_synthetic_table() -> None:
    schema, syn = _small()
    with pytest.raises(EvalOptionsError, match="bins=100"):
        _plan(schema, syn, bins=100)
    with pytest.raises(EvalOptionsError, match="no rows"):
        EvaluationPlan.build(schema, syn.iloc[:0], EvalOptions())


# --- ColumnPlan ---------------------------------------------------------------------------------


def test_categorical_column_plan_codes_categories_then_missing() -> None:
    schema, syn = _small()
    c = _plan(schema, syn).columns[0]
    assert (c.numeric, c.categories, c.size) == (False, ("a", "b"), 3)
    codes = c.codes(pd.Series(["b", None, "a", "b"], dtype=object))
    assert codes.tolist() == [1, 2, 0, 1]
    assert [c.label(i) for i in range(3)] == ["a", "b", "missing"]


def test_numeric_column_with_few_synthetic_values_gets_one_bin_per_value() -> None:
    schema = Schema((_num("v", "continuous", 0, 10),))
    syn = pd.DataFrame({"v": [1.0, 2.0, 2.0, 5.0, 5.0, 5.0]})
    c = _plan(schema, syn).columns[0]
    assert c.edges == (1.5, 3.5)  # midpoints between the distinct synthetic values
    assert c.size == 4
    assert c.codes(pd.Series([0.0, 1.0, 1.5, 2.0, 3.5, 9.0, np.nan])).tolist() == [
        0, 0, 1, 1, 2, 2, 3]
    assert [c.label(i) for i in range(4)] == ["[0, 1.5)", "[1.5, 3.5)", "[3.5, 10)", "missing"]
    assert c.unit(pd.Series([0.0, 2.5, 10.0, np.nan])).tolist()[:3] == [0.0, 0.25, 1.0]
    assert np.isnan(c.unit(pd.Series([np.nan]))[0])


def test_numeric_column_with_many_values_gets_synthetic_quantile_bins() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 100, size=500)
    schema = Schema((_num("v", "continuous", 0, 100),))
    c = _plan(schema, pd.DataFrame({"v": x}), bins=8, fine_bins=50).columns[0]
    expected = np.quantile(x, [i / 8 for i in range(1, 8)])
    np.testing.assert_array_equal(np.asarray(c.edges), expected)
    assert c.size == 9
    assert not c.exact_fine
    fine = np.asarray(c.fine_edges)
    assert (fine[0], fine[-1]) == (0.0, 100.0)  # first/last fine edge are the public bounds
    # inside the bounds: the synthetic 0%, 2%, ..., 100% quantiles (min and max included)
    np.testing.assert_array_equal(fine[1:-1], np.quantile(x, np.linspace(0, 1, 51)))
    assert c.clip == tuple(np.quantile(x, [0.01, 0.99]))
    # each value falls into the evaluation bin whose edges bracket it
    codes = c.codes(pd.Series(x))
    lo = np.concatenate([[-np.inf], expected])[codes]
    hi = np.concatenate([expected, [np.inf]])[codes]
    assert np.all((lo <= x) & (x < hi))


def test_threshold_for_one_bin_per_value_is_at_most_max_categorical_numeric() -> None:
    schema = Schema((_num("v", "integer", 0, 100),))
    few = _plan(schema, pd.DataFrame({"v": np.arange(MAX_CATEGORICAL_NUMERIC)})).columns[0]
    assert len(few.edges) == MAX_CATEGORICAL_NUMERIC - 1
    many = _plan(schema, pd.DataFrame({"v": np.arange(MAX_CATEGORICAL_NUMERIC + 1)}),
                 bins=4).columns[0]
    assert len(many.edges) == 3


def test_integer_column_with_small_range_has_one_fine_bin_per_value() -> None:
    schema = Schema((_num("k", "integer", -2, 3), _num("w", "integer", 0, 300)))
    syn = pd.DataFrame({"k": [-2, 0, 3, 1], "w": [0, 5, 300, 7]})
    k, w = _plan(schema, syn, fine_bins=200).columns
    assert k.exact_fine
    assert k.fine_edges == (-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5)
    assert k.fine_size == 7  # six values, then missing
    assert k.fine_codes(pd.Series([-2.0, -1.0, 0.0, 3.0, np.nan])).tolist() == [0, 1, 2, 5, 6]
    assert not w.exact_fine  # 301 values do not fit in 200 fine bins


def test_constant_synthetic_column_clips_distances_to_the_public_bounds() -> None:
    schema = Schema((_num("v", "continuous", -1, 4),))
    c = _plan(schema, pd.DataFrame({"v": [2.0] * 5})).columns[0]
    assert c.clip == (-1.0, 4.0)
    assert c.edges == ()
    assert c.size == 2


def test_zero_width_numeric_bounds_map_values_to_zero() -> None:
    schema = Schema((_num("v", "continuous", 3, 3),))
    c = _plan(schema, pd.DataFrame({"v": [3.0, 3.0]})).columns[0]
    u = c.unit(pd.Series([3.0, np.nan]))
    assert u[0] == 0.0 and np.isnan(u[1])
    assert c.fine_edges == (3.0, 4.0)


# --- targets ---------------------------------------------------------------------------------


def test_zero_one_numeric_target_takes_the_larger_value_as_positive() -> None:
    schema = Schema((_num("x", "continuous", 0, 1), _num("y", "integer", 0, 1)))
    syn = pd.DataFrame({"x": [0.1, 0.2, 0.3], "y": [0, 1, 1]})
    plan = _plan(schema, syn, target="y")
    assert plan.target == Target("y", 1, "= 1", 0.5)
    assert plan.features == (0,)
    labels = plan.target.labels(pd.Series([0.0, 1.0, np.nan]))
    assert labels.tolist() == [0, 1, -1]


def test_many_valued_numeric_target_is_split_at_the_synthetic_median() -> None:
    schema = Schema((_num("x", "continuous", 0, 10),))
    syn = pd.DataFrame({"x": [1.0, 2.0, 3.0, 7.0, 9.0]})
    plan = _plan(schema, syn, target="x")
    assert plan.target is not None
    assert (plan.target.threshold, plan.target.positive) == (3.0, "> 3")
    assert plan.features == ()
    assert plan.target.labels(pd.Series([3.0, 3.5, np.nan])).tolist() == [0, 1, -1]


def test_categorical_target_takes_the_synthetic_minority_class_as_positive() -> None:
    schema = Schema((_cat("g", "a", "b"), _cat("y", "p", "q", "r")))
    syn = pd.DataFrame({"g": ["a"] * 5, "y": ["p", "p", "q", "q", "q"]})
    plan = _plan(schema, syn, target="y")
    assert plan.target is not None
    # r is absent from the synthetic table, so the minority among the present classes is p
    assert plan.target.positive == "p"
    assert plan.target.labels(pd.Series(["p", "r", None], dtype=object)).tolist() == [1, 0, -1]
    tie = _plan(schema, pd.DataFrame({"g": ["a"] * 4, "y": ["q", "r", "r", "q"]}), target="y")
    assert tie.target is not None and tie.target.positive == "q"  # ties: schema order


# --- pairs, triples and layout -----------------------------------------------------------------


def _five_columns() -> tuple[Schema, pd.DataFrame]:
    schema = Schema(tuple(_cat(f"c{i}", "a", "b") for i in range(5)))
    syn = pd.DataFrame({f"c{i}": ["a", "b", "a"] for i in range(5)})
    return schema, syn


def test_all_pairs_and_a_seeded_subset_of_triples() -> None:
    schema, syn = _five_columns()
    all_triples = list(itertools.combinations(range(5), 3))
    full = _plan(schema, syn)
    assert full.pairs == tuple(itertools.combinations(range(5), 2))
    assert list(full.triples) == all_triples
    some = _plan(schema, syn, max_triples=4, seed=1)
    assert len(some.triples) == 4
    assert list(some.triples) == sorted(set(some.triples))
    assert set(some.triples) <= set(all_triples)
    assert _plan(schema, syn, max_triples=4, seed=1).triples == some.triples
    others = {_plan(schema, syn, max_triples=4, seed=s).triples for s in range(10)}
    assert len(others) > 1  # the seed picks the subset
    assert _plan(schema, syn, max_triples=0).triples == ()


def test_layout_sizes_by_hand() -> None:
    schema, syn = _small()  # g: 2 categories, k: integer 0..3, y: 2 categories
    plan = _plan(schema, syn)
    layout = dict(plan.layout)
    # g: 2 + missing; k: 4 synthetic values -> 4 bins + missing, 4 fine bins + missing
    assert layout["one:0"] == 3 and layout["one:1"] == 5 and layout["one:2"] == 3
    assert layout["fine:1"] == 5 and layout["mom:1"] == 3
    assert layout["pair:0,1"] == 15 and layout["pair:0,2"] == 9 and layout["pair:1,2"] == 15
    assert layout["tri:0,1,2"] == 45
    assert layout["match"] == 4
    assert not any(k.startswith(("pear:", "ml:", "bias:")) for k in layout)
    # k's histogram in the report: one display bin per value 0..3; no bound counts (its fine
    # bins are exact already)
    assert layout["disp:1"] == 4 and "ends:1" not in layout
    assert plan.length == 1 + 11 + 5 + 3 + 4 + 39 + 45 + 4 + 4 * DCR_BINS + 1

    with_target = _plan(schema, syn, target="y", sensitive="g", score_bins=16)
    extra = dict(with_target.layout)
    assert with_target.features == (0, 1)
    for m in ("tstr", "trtr"):
        assert extra[f"ml:{m}"] == 32 and extra[f"ml:{m}:fitted"] == 1
        assert extra[f"imp:{m}:0"] == 32 and extra[f"imp:{m}:1"] == 32
        assert extra[f"bias:{m}"] == 3 * 4
    assert extra["bias:real"] == 3 * 2
    assert with_target.length == plan.length + 2 * (32 + 1 + 2 * 32 + 12) + 6


def test_pearson_sums_only_for_numeric_pairs() -> None:
    schema = Schema((_num("a", "continuous", 0, 1), _cat("c", "x"), _num("b", "integer", 0, 5)))
    syn = pd.DataFrame({"a": [0.1, 0.5], "c": ["x", "x"], "b": [1, 2]})
    layout = dict(_plan(schema, syn).layout)
    assert [k for k in layout if k.startswith("pear:")] == ["pear:0,2"]
    assert layout["pear:0,2"] == 6


def test_split_cuts_a_vector_into_named_blocks() -> None:
    schema, syn = _small()
    plan = _plan(schema, syn)
    vec = np.arange(plan.length)
    parts = plan.split(vec)
    assert list(parts) == [name for name, _ in plan.layout]
    assert parts["rows"].tolist() == [0]
    assert parts["one:0"].tolist() == [1, 2, 3]
    np.testing.assert_array_equal(np.concatenate(list(parts.values())), vec)
    with pytest.raises(ValueError, match=f"{plan.length + 1} values, the plan {plan.length}"):
        plan.split(np.arange(plan.length + 1))


def test_dcr_edges_start_at_zero_then_log_spaced_to_one() -> None:
    e = dcr_edges()
    assert len(e) == DCR_BINS - 1
    assert e[0] == 1e-12 and e[1] == pytest.approx(1e-4) and e[-1] == pytest.approx(1.0)
    np.testing.assert_allclose(np.diff(np.log10(e[1:])), 4 / (DCR_BINS - 3))
