"""What report.html and the measures behind it claim is true, and says how true.

Column statistics: the synthetic table's are exact; the real rows' are exact where the
statistics allow it and otherwise "about", with the bin they were interpolated in. Histograms
use bins a person reads. The job's settings and which rows are "real" come from the metrics.
Non-Latin column names and columns without a single value render without warnings or errors.
"""

from __future__ import annotations

import copy
import re
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from fedsynth.evaluation.dp import add_noise
from fedsynth.evaluation.local import evaluate_tables
from fedsynth.evaluation.measures import measure
from fedsynth.evaluation.metrics import tstr_auc
from fedsynth.evaluation.plan import EvalOptions, EvaluationPlan, display_edges, round_width
from fedsynth.evaluation.report import Side, heatmap_figure, real_side, render, tick
from fedsynth.evaluation.statistics import assemble, node_statistics, table_blocks
from fedsynth.synthesis.schema import Column, Schema, validate_frame

STATS = ("min", "q1", "median", "q3", "max")


def _measure(schema: Schema, real: pd.DataFrame, syn: pd.DataFrame,
             **options: Any) -> dict[str, Any]:
    real = validate_frame(real, schema, source="real")
    syn = validate_frame(syn, schema, source="synthetic")
    plan = EvaluationPlan.build(schema, syn, EvalOptions(**options))
    return measure(plan, assemble(plan, table_blocks(plan, real)), syn)


def _balance(n: int, seed: int, zeros: float = 0.05) -> pd.Series:
    """Like a credit-card balance: many exact zeros ("no debt"), then a spread of values."""
    rng = np.random.default_rng(seed)
    x = np.clip(rng.normal(800, 450, n), 0.5, 2600.0)
    x[rng.random(n) < zeros] = 0.0
    return pd.Series(x)


BOUNDS = Schema((Column("balance", "continuous", lower=0.0, upper=2654.3),))


# --- 1. minimum, maximum and quantiles ---------------------------------------------------------


def test_synthetic_statistics_are_exact() -> None:
    real, syn = _balance(2000, 0), _balance(8000, 1)
    syn.iloc[17] = 2609.25  # the synthetic maximum, not at a bound
    (col,) = _measure(BOUNDS, pd.DataFrame({"balance": real}),
                      pd.DataFrame({"balance": syn}))["columns"]
    s = col["synthetic"]
    assert s["max"] == 2609.25 and s["min"] == 0.0
    for key, q in zip(STATS, (0, 0.25, 0.5, 0.75, 1), strict=True):
        assert s[key] == np.quantile(syn, q), key
    assert s["mean"] == pytest.approx(syn.mean(), rel=1e-12)
    assert s["std"] == pytest.approx(syn.std(ddof=1), rel=1e-12)
    assert s["distinct"] == syn.nunique()
    assert "about" not in s


def test_real_minimum_at_the_lower_bound_is_exact_and_the_rest_says_about() -> None:
    real, syn = _balance(2000, 0), _balance(8000, 1)
    assert (real == 0).sum() > 50  # exact zeros, as in the reported table
    m = _measure(BOUNDS, pd.DataFrame({"balance": real}), pd.DataFrame({"balance": syn}))
    r = m["columns"][0]["real"]
    assert r["min"] == 0.0 and "min" not in r["about"]  # counted at the bound: exact
    for key, q in zip(STATS[1:], (0.25, 0.5, 0.75, 1), strict=True):
        width = r["about"][key]  # interpolated inside a fine bin: says so, with its width
        assert width > 0 and abs(r[key] - np.quantile(real, q)) <= width, key
    page = render(m)
    assert re.search(r"about [\d,.]+ <span class=about>\(bin width [^)]*\)", page)


def test_real_maximum_at_the_upper_bound_is_exact() -> None:
    real, syn = _balance(2000, 0), _balance(8000, 1)
    real.iloc[3] = 2654.3  # a top-coded value: the public upper bound itself
    (col,) = _measure(BOUNDS, pd.DataFrame({"balance": real}),
                      pd.DataFrame({"balance": syn}))["columns"]
    assert col["real"]["max"] == 2654.3 and "max" not in col["real"]["about"]


def test_small_range_integers_are_exact_on_both_sides() -> None:
    rng = np.random.default_rng(3)
    schema = Schema((Column("k", "integer", lower=0, upper=30),))
    real, syn = pd.Series(rng.integers(2, 25, 500)), pd.Series(rng.integers(0, 31, 700))
    (col,) = _measure(schema, pd.DataFrame({"k": real}), pd.DataFrame({"k": syn}))["columns"]
    for key, q in zip(STATS, (0, 0.25, 0.5, 0.75, 1), strict=True):
        assert col["real"][key] == pytest.approx(np.quantile(real, q), abs=1e-9), key
    assert "about" not in col["real"] and col["real"]["distinct"] == real.nunique()


def _dp_metrics() -> dict[str, Any]:
    real, syn = _balance(3000, 0), _balance(8000, 1)
    schema = BOUNDS
    real_v = validate_frame(pd.DataFrame({"balance": real}), schema, source="real")
    syn_v = validate_frame(pd.DataFrame({"balance": syn}), schema, source="synthetic")
    plan = EvaluationPlan.build(schema, syn_v, EvalOptions(epsilon=3.0))
    vector = node_statistics(plan, syn_v, train=None, test=real_v)
    return measure(plan, add_noise(plan, vector, np.random.default_rng(0)), syn_v, replicates=3)


def test_dp_real_quantiles_say_noisy_and_about() -> None:
    m = _dp_metrics()
    (col,) = m["columns"]
    r = col["real"]
    assert r["noisy"] is True and r["min"] is None and r["max"] is None
    assert set(r["about"]) >= {"q1", "median", "q3"}
    page = render(m)
    assert re.search(r"about [\d,.]+ <span class=about>\(bin width [^)]*, noisy\)", page)


# --- 2. histograms people read -----------------------------------------------------------------


def test_ticks_are_plain() -> None:
    assert [tick(v) for v in (1200, 35, 0.5, 0.0001, 2.5e6, 0, -3000, 20000)] == [
        "1.2k", "35", "0.5", "0.0001", "2.5M", "0", "-3k", "20k"]


def test_display_bins_are_equal_and_round_on_the_public_bounds() -> None:
    # the bounds, and every multiple of a round width between them; an end bin narrower
    # than half that width joins its neighbour
    assert round_width(2654.3) == 200.0
    e = display_edges(0.0, 2654.3, integer=False)
    assert e == (0.0, *(200.0 * k for k in range(1, 13)), 2654.3)
    e = display_edges(771.97, 73554.2, integer=False)
    assert e == (771.97, *(5000.0 * k for k in range(1, 15)), 73554.2)
    assert display_edges(-2, 3, integer=True) == (-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5)
    # integers: bins hold whole numbers, 20 per bin here
    e = display_edges(0, 300, integer=True)
    assert e[:3] == (-0.5, 19.5, 39.5) and e[-1] == 300.5


def test_synthetic_histogram_is_not_flat_and_similarity_keeps_its_bins() -> None:
    real, syn = _balance(2000, 0), _balance(8000, 1)
    (col,) = _measure(BOUNDS, pd.DataFrame({"balance": real}),
                      pd.DataFrame({"balance": syn}))["columns"]
    d = col["display"]
    assert d["density"] is False
    counts, _ = np.histogram(syn, bins=d["edges"])
    assert d["synthetic"] == counts.tolist()
    shares = np.asarray(d["synthetic"]) / len(syn)
    assert shares.max() > 4 * shares[shares > 0].min()  # a shape, not 1/16 everywhere
    # the similarity measure still uses the evaluation bins (quantiles of the synthetic table)
    r, s = np.asarray(col["histogram_real"], float), np.asarray(col["histogram_synthetic"], float)
    tvd = 0.5 * np.abs(r / r.sum() - s / s.sum()).sum()
    assert col["histogram_similarity"] == pytest.approx(1 - tvd)
    assert len(col["bins"]) == 17


def test_dp_histograms_are_densities_on_the_evaluation_bins() -> None:
    (col,) = _dp_metrics()["columns"]
    assert col["display"]["density"] is True
    assert len(col["display"]["edges"]) == len(col["bins"])  # bins + 1 edges, no missing


def test_histogram_ticks_have_no_scientific_notation() -> None:
    rng = np.random.default_rng(5)
    schema = Schema((Column("income", "continuous", lower=771.97, upper=73554.2),
                     Column("tiny", "continuous", lower=0.0, upper=0.0123)))
    df = pd.DataFrame({"income": rng.uniform(1000, 70000, 500),
                       "tiny": rng.uniform(0.0001, 0.012, 500)})
    page = render(_measure(schema, df, df.sample(frac=1.0, random_state=1)))
    svg_text = " ".join(re.findall(r"<text[^>]*>([^<]*)</text>", page))
    assert re.search(r"\b[1-9]\d?k\b", svg_text)  # e.g. 15k
    assert re.search(r"\b0\.00[1-9]\d*\b", svg_text)  # e.g. 0.005
    assert not re.search(r"\d e[+-]?\d|×|\$|\^", svg_text)


# --- 3. the job's settings ---------------------------------------------------------------------


JOB = {"parties": 5, "partition": "iid", "threshold_t": 4, "colluders_c": 0, "channel": "secagg",
       "holdout_fraction": 0.2, "marginals": [["a", "b"], ["b", "c"], ["a"]],
       "real_rows": "the parties' held-out rows (20% of each party's rows, never used for "
                    "synthesis)", "epsilon": 1.0, "delta": 1e-6}


def _small_metrics(**options: Any) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    n = 300
    x = rng.normal(size=n)
    df = pd.DataFrame({"x": x, "g": rng.choice(["u", "v"], n),
                       "y": np.where(x + rng.normal(size=n) > 0, "yes", "no")})
    return evaluate_tables(df.iloc[:150].reset_index(drop=True),
                           df.iloc[150:].reset_index(drop=True), options=EvalOptions(**options))


def test_job_settings_section_from_the_metrics() -> None:
    m = {**_small_metrics(), "job": JOB}
    m["evaluation"] = {**m["evaluation"], "mode": "federated"}
    page = render(m)
    assert "<h2>Job settings</h2>" in page
    for shown in ("iid", "secure aggregation", "20% of each party&#x27;s rows",
                  "<summary>3 marginals</summary>", "<li>a × b</li>", JOB["real_rows"]
                  .replace("'", "&#x27;")):
        assert shown in page, shown
    assert re.findall(r"<h2>(.*?)</h2>", page)[0] == "Job settings"


def test_job_settings_tolerate_missing_keys() -> None:
    m = {**_small_metrics(), "job": {"parties": 3}}
    page = render(m)
    job = page.split("<h2>")[1]
    assert job.startswith("Job settings</h2>") and "marginals" not in job


def test_local_evaluation_names_the_real_table() -> None:
    page = render(_small_metrics())
    assert "Job settings" not in page
    assert "Real rows: the table given with --real." in page
    assert "held-out" not in page  # nothing says which rows those are: not called held-out


# --- 4. TSTR above TRTR: the reason beside the number -------------------------------------------


def test_tstr_above_trtr_has_its_reason_beside_the_number() -> None:
    m = _small_metrics(target="y")
    ml = m["ml_efficacy"]
    ml["tstr_auc"], ml["trtr_auc"] = 0.93, 0.74
    page = render(m)
    card = re.search(r"<div class=card>TSTR / TRTR AUC.*?</div>", page)
    assert card and "TSTR is above TRTR because" in card.group(0)
    row = re.search(r"<tr><td class=text>TSTR \(train synthetic, test real\)</td>.*?</tr>",
                    page)
    assert row and "TSTR is above TRTR because" in row.group(0)
    ml["tstr_auc"] = 0.70
    assert "TSTR is above TRTR" not in render(m)


# --- 5. heatmaps and the privacy-utility curve -------------------------------------------------


def _pairs_metrics(diff: float) -> dict[str, Any]:
    m = _small_metrics()
    m = copy.deepcopy(m)
    for i, p in enumerate(m["pairs"]):
        p["cramers_v_real"] = 0.3
        p["cramers_v_synthetic"] = 0.3 + (diff if i == 0 else -diff / 2)
    return m


def test_difference_map_is_scaled_to_the_largest_difference_and_labelled() -> None:
    page = render(_pairs_metrics(0.06))
    assert "difference in Cramér&#x27;s V (scale ±0.06)" in page or \
        "difference in Cramér's V (scale ±0.06)" in page


def test_heatmap_labels_do_not_overlap_colour_bars() -> None:
    m = _pairs_metrics(0.06)
    long = {c["name"]: f"a_rather_long_column_name_{i}" for i, c in enumerate(m["columns"])}
    m["columns"] = [{**c, "name": long[c["name"]]} for c in m["columns"]]
    for p in m["pairs"]:
        p["columns"] = [long[n] for n in p["columns"]]
    fig = heatmap_figure(m, Side("given", "real rows", "real row", "the table"))
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    maps = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(maps) == 3 and len(bars) == 2  # real and synthetic share one colour bar
    for ax in maps:
        for label in ax.get_yticklabels() + ax.get_xticklabels():
            box = label.get_window_extent(renderer)
            for other in fig.axes:
                if other is not ax:
                    assert not box.overlaps(other.get_tightbbox(renderer)), label.get_text()


def test_privacy_utility_curve_has_plain_ticks_and_a_sensible_range() -> None:
    m = _small_metrics()
    runs = [{"epsilon": e, "tvd_2way": t, "tstr_auc": None}
            for e, t in ((0.5, 0.2401), (1.0, 0.2405), (3.0, 0.2403))]
    page = render(m, runs=runs)
    curve = page[page.index("Privacy-utility curve"):]
    curve = curve[:curve.index("</svg>")]
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", curve)
    assert {"0.5", "1", "3"} <= set(texts)
    assert not any(re.search(r"×|\^|\$|e[+-]\d", t) for t in texts)
    assert "0" in texts  # the TVD axis starts at 0, not at 0.2401
    assert not any(t.startswith("0.240") for t in texts)  # no zoom into a 0.001 range


# --- 6. non-Latin column names -----------------------------------------------------------------


def test_non_latin_column_names_render_without_warnings() -> None:
    rng = np.random.default_rng(0)
    n = 200
    age = rng.integers(18, 90, n)
    df = pd.DataFrame({"年齢": age, "возраст": rng.normal(40, 9, n),
                       "性別": rng.choice(["男", "女"], n), "доход": rng.choice(["да", "нет"], n)})
    m = evaluate_tables(df.iloc[:100].reset_index(drop=True), df.iloc[100:].reset_index(drop=True),
                        options=EvalOptions(target="доход"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        page = render(m, runs=[{"epsilon": 1.0, "tvd_2way": 0.1},
                               {"epsilon": 3.0, "tvd_2way": 0.05}])
    for name in ("年齢", "возраст", "性別", "доход", "男", "нет"):
        assert f"<td>{name}</td>" in page or f"<td class=text>{name}</td>" in page, name
        assert f">{name}<" in page  # and as text in the plots


# --- 7. a column without a single value ---------------------------------------------------------


def _with_empty_columns(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return pd.DataFrame({"x": x, "empty": np.full(n, np.nan),
                         "nothing": pd.Series([None] * n, dtype=object),
                         "y": np.where(x > 0, "yes", "no")})


@pytest.mark.parametrize("epsilon", [None, 3.0])
def test_all_missing_columns_are_evaluated_and_reported(epsilon: float | None) -> None:
    real, syn = _with_empty_columns(300, 0), _with_empty_columns(400, 1)
    m = evaluate_tables(real, syn, options=EvalOptions(target="y", epsilon=epsilon))
    cols = {c["name"]: c for c in m["columns"]}
    assert cols["empty"]["synthetic"]["count"] == 0
    if epsilon is None:  # exact: no value on either side, so not measured
        for name in ("empty", "nothing"):
            assert cols[name]["no_values"] and cols[name]["histogram_similarity"] is None
            assert "not measured" in cols[name]["note"]
        assert m["tvd"]["not_measured"]["columns"] == ["empty", "nothing"]
        assert all(p["contingency_similarity"] is None for p in m["pairs"]
                   if {"empty", "nothing"} & set(p["columns"]))
        assert cols["x"]["histogram_similarity"] is not None
    assert m["ml_efficacy"]["tstr_auc"] is not None
    page = render(m)
    assert "no values" in page


def test_all_missing_feature_in_the_legacy_tstr_auc() -> None:
    df = _with_empty_columns(200, 2).drop(columns=["nothing"])
    out = tstr_auc(df, df, df, target="y")
    assert out["tstr_auc"] is not None and out["trtr_auc"] is not None


# --- 8. training rows are never called held-out -------------------------------------------------


def test_training_rows_are_labelled_as_such_with_a_warning() -> None:
    m = {**_small_metrics(target="y"), "job": {**JOB, "holdout_fraction": 0.0,
                                               "real_rows": "the rows used for synthesis"}}
    m["evaluation"] = {**m["evaluation"], "mode": "federated"}
    assert real_side(m).training
    page = render(m)
    assert "held-out" not in page
    assert "<p class=warn><b>The real side is the training rows</b>" in page
    assert "training rows evaluated" in page  # the headline card

    m2 = _small_metrics()
    m2["evaluation"] = {**m2["evaluation"], "real_side": "training"}
    assert "held-out" not in render(m2) and "training rows" in render(m2)


def test_federated_metrics_name_held_out_rows() -> None:
    m = _small_metrics()
    m["evaluation"] = {**m["evaluation"], "mode": "federated", "real_side": "held_out"}
    side = real_side(m)
    assert side.kind == "held_out" and not side.training
    page = render(m)
    assert "held-out rows evaluated" in page and "class=warn" not in page
