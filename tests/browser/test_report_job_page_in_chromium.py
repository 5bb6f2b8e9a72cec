"""A job's report.html in headless Chromium: job settings, non-Latin column names, a column
without values, and a DP evaluation; no errors, nothing fetched, the text where a person reads it.

Skipped without Chromium unless FEDSYNTH_REQUIRE_BROWSER=1 (as test_report_in_chromium).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsynth.evaluation.local import evaluate_tables
from fedsynth.evaluation.plan import EvalOptions
from fedsynth.evaluation.report import render

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
JOB = {"parties": 3, "partition": "iid", "threshold_t": 2, "colluders_c": 0, "channel": "secagg",
       "holdout_fraction": 0.2, "marginals": [["年齢", "доход"], ["возраст"]],
       "real_rows": "the parties' held-out rows (20% of each party's rows, never used for "
                    "synthesis)", "epsilon": 1.0, "delta": 1e-6}


def _require_browser() -> str:
    if CHROMIUM is None:
        if os.environ.get("FEDSYNTH_REQUIRE_BROWSER") == "1":
            pytest.fail("Chromium is required here (FEDSYNTH_REQUIRE_BROWSER=1) but not found")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    return CHROMIUM


def _table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 90, n)
    return pd.DataFrame({"年齢": age, "возраст": rng.gamma(2.0, 900.0, n),
                         "пусто": np.full(n, np.nan),
                         "доход": np.where(age + rng.normal(0, 15, n) > 50, "да", "нет")})


@pytest.fixture(scope="module", params=[None, 3.0], ids=["exact", "dp"])
def page(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    m = evaluate_tables(_table(2500, 0), _table(3000, 1),
                        options=EvalOptions(target="доход", epsilon=request.param))
    m["job"] = JOB
    m["evaluation"] = {**m["evaluation"], "mode": "federated", "real_side": "held_out",
                       "parties": [1, 2, 3]}
    path = tmp_path_factory.mktemp("job") / "report.html"
    path.write_text(render(m, title="fedsynth: 3 parties"), encoding="utf-8")
    return path


def test_job_page_reads_in_chromium(page: Path) -> None:
    exe = _require_browser()
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=ARGS, headless=True)
        tab = browser.new_page(viewport={"width": 1280, "height": 1600})
        tab.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        tab.on("console", lambda m: errors.append(f"console {m.type}: {m.text}")
               if m.type in ("error", "warning") else None)
        tab.on("request", lambda r: requests.append(r.url))
        tab.goto(page.as_uri(), wait_until="load")
        headings = tab.locator("h2").all_inner_texts()
        text = tab.locator("body").inner_text()
        summary = tab.locator("details summary").first.inner_text()
        tab.locator("details summary").first.click()  # the marginals open on a click
        marginals = tab.locator("details li").all_inner_texts()
        wide = tab.evaluate("document.documentElement.scrollWidth > window.innerWidth + 1")
        browser.close()

    assert errors == []
    assert [u for u in requests if u != page.as_uri()] == []
    assert headings[0] == "Job settings"
    assert summary == "2 marginals" and marginals == ["年齢 × доход", "возраст"]
    for name in ("年齢", "возраст", "пусто", "доход"):
        assert name in text
    assert "no values" in text
    assert "held-out rows evaluated" in text
    assert not wide  # nothing sticks out sideways
