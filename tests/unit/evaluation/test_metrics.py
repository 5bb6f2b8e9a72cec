"""Hand-checked tests for fedsynth.evaluation.metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

from fedsynth.evaluation import (
    EvaluationBinning,
    exact_match_rate,
    marginal_tvd,
    tstr_auc,
)


def _mixed_table(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "k": rng.integers(0, 5, size=n),
            "c": rng.choice(["a", "b", "c"], size=n),
            "flag": rng.random(n) < 0.3,
        }
    )


def _deterministic_target_table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=n)
    noise = rng.normal(size=n)
    colour = rng.choice(["red", "green", "blue"], size=n)
    return pd.DataFrame({"x": x, "noise": noise, "colour": colour, "y": np.where(x > 0.2, 1, 0)})


# --- binning --------------------------------------------------------------------------------------


def test_numeric_column_with_100_distinct_values_gets_16_quantile_bins() -> None:
    real = pd.DataFrame({"v": np.arange(100, dtype=float)})
    binning = EvaluationBinning.fit(real)
    codes = binning.transform(real)[:, 0]
    assert binning.specs[0].kind == "quantile"
    assert binning.sizes == (17,)  # 16 bins + missing
    assert sorted(set(codes.tolist())) == list(range(16))
    # roughly equal-frequency bins
    assert np.bincount(codes).max() <= 8
    # values outside the real range clip into the end bins
    outside = binning.transform(pd.DataFrame({"v": [-1e9, 1e9]}))[:, 0]
    assert outside.tolist() == [0, 15]
    # missing values get the extra 17th code, also when the real table had none
    assert binning.transform(pd.DataFrame({"v": [np.nan, None]}))[:, 0].tolist() == [16, 16]


def test_low_cardinality_numeric_is_categorical_with_unseen_code() -> None:
    real = pd.DataFrame({"v": [1, 2, 3, 2, 1] * 10})
    binning = EvaluationBinning.fit(real)
    assert binning.specs[0].kind == "categorical"
    assert binning.sizes == (5,)  # 3 values + unseen + missing
    codes = binning.transform(pd.DataFrame({"v": [1.0, 2.0, 3.0, 7.0, np.nan]}))[:, 0]
    assert codes.tolist() == [0, 1, 2, 3, 4]


def test_nan_is_its_own_category() -> None:
    real = pd.DataFrame(
        {"c": ["a", None, "b", np.nan, "a"], "v": [*np.linspace(0, 1, 4).tolist(), np.nan]}
    )
    binning = EvaluationBinning.fit(real)
    codes = binning.transform(real)
    cat = codes[:, 0]
    assert cat[1] == cat[3] == binning.sizes[0] - 1
    assert len({cat[0], cat[1], cat[2]}) == 3
    assert codes[4, 1] == binning.sizes[1] - 1
    assert codes[:4, 1].max() < binning.sizes[1] - 1
    # a missing value is a category of its own in the TVD, too
    tvd = marginal_tvd(pd.DataFrame({"c": ["a", None]}), pd.DataFrame({"c": ["a", "a"]}), way=1)
    assert tvd == pytest.approx(0.5)


def test_transform_requires_fitted_columns() -> None:
    binning = EvaluationBinning.fit(pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}))
    assert binning.columns == ("a", "b")
    with pytest.raises(KeyError):
        binning.transform(pd.DataFrame({"a": [1]}))


# --- marginal TVD ---------------------------------------------------------------------------------


@pytest.mark.parametrize("way", [1, 2, 3])
def test_identical_tables_have_zero_tvd(way: int) -> None:
    real = _mixed_table()
    assert marginal_tvd(real, real.copy(), way=way) == 0.0


def test_hand_computed_one_way_tvd() -> None:
    real = pd.DataFrame({"c": ["a", "a", "b", "b"]})
    synth = pd.DataFrame({"c": ["a", "a", "a", "b"]})
    # 0.5 * (|0.5 - 0.75| + |0.5 - 0.25|) = 0.25
    assert marginal_tvd(real, synth, way=1) == pytest.approx(0.25)


def test_hand_computed_mean_over_columns_and_unseen_values() -> None:
    real = pd.DataFrame({"c": ["a", "a", "b", "b"], "d": ["x", "x", "x", "x"]})
    synth = pd.DataFrame({"c": ["a", "a", "a", "b"], "d": ["x", "x", "z", "z"]})
    # column c: 0.25; column d: unseen "z" takes half the mass -> 0.5; mean 0.375
    assert marginal_tvd(real, synth, way=1) == pytest.approx(0.375)
    # one 2-way marginal: real {(a,x): .5, (b,x): .5}; synth {(a,x): .5, (a,z): .25, (b,z): .25}
    assert marginal_tvd(real, synth, way=2) == pytest.approx(0.5)


def test_breaking_dependence_increases_two_way_but_not_one_way_tvd() -> None:
    rng = np.random.default_rng(1)
    n = 4000
    a = rng.choice(["p", "q", "r", "s"], size=n)
    real = pd.DataFrame({"a": a, "b": a, "z": rng.normal(size=n)})
    shuffled = real.copy()
    shuffled["b"] = rng.permutation(shuffled["b"].to_numpy())
    assert marginal_tvd(real, shuffled, way=1) == pytest.approx(0.0)
    assert marginal_tvd(real, real, way=2) == 0.0
    assert marginal_tvd(real, shuffled, way=2) > 0.2


def test_max_marginals_uses_a_seeded_subset() -> None:
    real = _mixed_table(seed=0)
    synth = _mixed_table(seed=1)
    full = marginal_tvd(real, synth, way=2)
    assert marginal_tvd(real, synth, way=2, max_marginals=100) == pytest.approx(full)
    sub = [marginal_tvd(real, synth, way=2, max_marginals=2, seed=s) for s in range(6)]
    assert sub[0] == marginal_tvd(real, synth, way=2, max_marginals=2, seed=0)
    assert len(set(sub)) > 1


def test_tvd_rejects_bad_way() -> None:
    real = _mixed_table()
    with pytest.raises(ValueError):
        marginal_tvd(real, real, way=5)


# --- exact matches --------------------------------------------------------------------------------


def test_exact_match_rates() -> None:
    real = _mixed_table(50)
    real.loc[0, "x"] = np.nan
    copied = real.sample(frac=1.0, random_state=0).reset_index(drop=True)
    assert exact_match_rate(real, copied) == 1.0
    disjoint = real.copy()
    disjoint["k"] = disjoint["k"] + 100  # every row differs (row 0's x is NaN, so NaN + 100 too)
    assert exact_match_rate(real, disjoint) == 0.0
    half = pd.concat([real.iloc[:25], disjoint.iloc[25:]], ignore_index=True)
    assert exact_match_rate(real, half) == pytest.approx(0.5)


def test_exact_match_normalisation() -> None:
    real = pd.DataFrame({"x": [0.1 + 0.2, 1.0, np.nan], "k": [1, 2, 3], "c": ["a", None, "b"]})
    synth = pd.DataFrame({"x": [0.3, 1.0, np.nan], "k": [1.0, 2.0, 3.0], "c": ["a", np.nan, "z"]})
    # row 0: 0.30000000000000004 rounds to 0.3; row 1: None == NaN, 2 == 2.0; row 2: "z" != "b"
    assert exact_match_rate(real, synth) == pytest.approx(2 / 3)
    assert exact_match_rate(real, pd.DataFrame({"x": [0.3001], "k": [1], "c": ["a"]})) == 0.0


# --- TSTR -----------------------------------------------------------------------------------------


def test_tstr_and_trtr_high_when_target_is_function_of_feature() -> None:
    train = _deterministic_target_table(600, seed=0)
    test = _deterministic_target_table(400, seed=1)
    out = tstr_auc(train, train.copy(), test, target="y", seed=0)
    assert isinstance(out["tstr_auc"], float) and out["tstr_auc"] > 0.9
    assert isinstance(out["trtr_auc"], float) and out["trtr_auc"] > 0.9
    assert out["positive_class"] == "1"  # x > 0.2 holds for ~40% of rows: the minority class
    assert "note" not in out


def test_tstr_low_when_synthetic_target_is_unrelated() -> None:
    train = _deterministic_target_table(600, seed=0)
    test = _deterministic_target_table(400, seed=1)
    synth = train.copy()
    synth["y"] = np.random.default_rng(5).permutation(synth["y"].to_numpy())
    out = tstr_auc(train, synth, test, target="y")
    assert isinstance(out["tstr_auc"], float) and out["tstr_auc"] < 0.7


def test_single_class_synthetic_target_gives_half_and_note() -> None:
    train = _deterministic_target_table(300, seed=0)
    test = _deterministic_target_table(200, seed=1)
    synth = train.assign(y=0)
    out = tstr_auc(train, synth, test, target="y")
    assert out["tstr_auc"] == 0.5
    assert isinstance(out["note"], str) and "class" in out["note"]
    assert isinstance(out["trtr_auc"], float) and out["trtr_auc"] > 0.9


def test_numeric_target_is_binarised_at_median_and_missing_targets_dropped() -> None:
    rng = np.random.default_rng(3)
    n = 500
    x = rng.uniform(0, 10, size=n)
    table = pd.DataFrame({"x": x, "y": np.round(x * 3 + rng.normal(scale=0.1, size=n), 2)})
    table.loc[::10, "y"] = np.nan
    train, test = table.iloc[:300], table.iloc[300:]
    out = tstr_auc(train, train, test, target="y")
    assert out["target_binarised_at"] == pytest.approx(float(train["y"].median()))
    assert isinstance(out["tstr_auc"], float) and out["tstr_auc"] > 0.9


def test_multiclass_uses_macro_ovr_auc() -> None:
    rng = np.random.default_rng(4)
    n = 900
    x = rng.uniform(0, 3, size=n)
    table = pd.DataFrame(
        {
            "x": x,
            "c": rng.choice(["u", "v"], n),
            "y": np.array(["a", "b", "c"])[
                np.clip(x + rng.normal(scale=0.4, size=n), 0, 2.999).astype(int)
            ],
        }
    )
    train, test = table.iloc[:600], table.iloc[600:]
    out = tstr_auc(train, train, test, target="y")
    assert out["positive_class"] is None
    assert out["tstr_auc"] == out["trtr_auc"]
    assert isinstance(out["tstr_auc"], float) and 0.75 < out["tstr_auc"] < 1.0
    # a synthetic table missing one class still yields a (lower or equal) valid AUC
    partial = tstr_auc(train, train[train["y"] != "c"], test, target="y")
    assert isinstance(partial["tstr_auc"], float) and 0.0 <= partial["tstr_auc"] <= 1.0


def test_multiclass_auc_equals_sklearn_macro_ovr() -> None:
    rng = np.random.default_rng(6)
    n = 600
    x = rng.uniform(0, 3, size=n)
    labels = np.clip(x + rng.normal(scale=0.5, size=n), 0, 2.999).astype(int)
    table = pd.DataFrame({"x": x, "y": np.array(["a", "b", "c"])[labels]})
    train, test = table.iloc[:400], table.iloc[400:]
    model = HistGradientBoostingClassifier(random_state=0)
    model.fit(train[["x"]].to_numpy(), labels[:400])
    proba = model.predict_proba(test[["x"]].to_numpy())
    expected = roc_auc_score(labels[400:], proba, multi_class="ovr")
    assert tstr_auc(train, train, test, target="y")["trtr_auc"] == pytest.approx(expected)
    # test set without class "c": macro one-vs-rest over the classes present
    keep = labels[400:] != 2
    expected_ab = np.mean([roc_auc_score(labels[400:][keep] == c, proba[keep, c]) for c in (0, 1)])
    out = tstr_auc(train, train, test[keep], target="y")
    assert out["trtr_auc"] == pytest.approx(expected_ab)
