"""report.html: self-contained, escaped, and showing the sections the measures call for."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from fedsynth.evaluation.local import evaluate_tables
from fedsynth.evaluation.plan import EvalOptions
from fedsynth.evaluation.report import render

EVIL = "<script>alert(1)</script>"
EVIL_CAT = "<img src=x onerror=alert(2)>"


def _tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    n = 400
    x = rng.normal(size=n)
    df = pd.DataFrame({EVIL: x, "group": rng.choice(["a", EVIL_CAT], n),
                       "y": np.where(x > 0.3, "yes", "no")})
    return df.iloc[:200].reset_index(drop=True), df.iloc[200:].reset_index(drop=True)


def test_names_and_categories_are_escaped_everywhere() -> None:
    real, syn = _tables()
    m = evaluate_tables(real, syn, options=EvalOptions(target="y", sensitive="group"))
    page = render(m, title=EVIL)
    assert EVIL not in page and EVIL_CAT not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page.lower()  # the page has no scripts at all


def test_self_contained_and_sections() -> None:
    real, syn = _tables()
    m = evaluate_tables(real, syn, options=EvalOptions(target="y", sensitive="group"))
    page = render(m, privacy={"epsilon_spent": 1.0, "delta": 1e-6})
    # nothing fetched from elsewhere: links only to the page itself or inline data
    assert not re.search(r"""(src|href)\s*=\s*["'](?!#|data:)""", page)
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    assert headings == ["Statistical similarity", "Pairs of columns", "Machine-learning efficacy",
                        "Bias", "Privacy", "Scalability"]
    assert page.count("<svg") == 3 + 1 + 1 + 1  # histograms, heatmaps, importance, distances


def test_privacy_utility_curve_only_with_two_or_more_epsilons() -> None:
    real, syn = _tables()
    m = evaluate_tables(real, syn)
    one = [{"epsilon": 1.0, "tvd_2way": 0.1, "tstr_auc": None}]
    two = [*one, {"epsilon": 3.0, "tvd_2way": 0.05, "tstr_auc": None}]
    assert "Privacy-utility curve" not in render(m, runs=one)
    assert "Privacy-utility curve" in render(m, runs=two)
