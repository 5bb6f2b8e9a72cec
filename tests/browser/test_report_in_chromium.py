"""report.html as a person sees it: opened in headless Chromium, no errors, not blank.

Needs Debian's Chromium (`.ci/run` installs it). Without it the test is skipped, unless
FEDSYNTH_REQUIRE_BROWSER=1 (set by `.ci/run`), which turns the skip into a failure.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from fedsynth.evaluation.local import Run, evaluate_runs
from fedsynth.evaluation.plan import EvalOptions
from fedsynth.simulations import datasets

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _require_browser() -> str:
    if CHROMIUM is None:
        if os.environ.get("FEDSYNTH_REQUIRE_BROWSER") == "1":
            pytest.fail("Chromium is required here (FEDSYNTH_REQUIRE_BROWSER=1) but not found; "
                        "install Debian's chromium package")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    df, _ = datasets.load("ISLR/Default")
    rng = np.random.default_rng(0)
    hold = rng.random(len(df)) < 0.2
    real, train = df[hold].reset_index(drop=True), df[~hold].reset_index(drop=True)
    runs = []
    for eps, frac in ((1.0, 0.5), (3.0, 0.8)):  # stand-ins for two jobs at different ε
        mixed = train.sample(frac=frac, random_state=int(eps)).reset_index(drop=True)
        runs.append(Run(mixed, f"run-eps{eps:g}", {"epsilon_requested": eps,
                                                    "epsilon_spent": eps, "delta": 1e-6}))
    _, html = evaluate_runs(real, runs, train=train,
                            options=EvalOptions(target="default", sensitive="student"))
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(html, encoding="utf-8")
    return path


def test_report_opens_without_errors_and_is_not_blank(report: Path, tmp_path: Path) -> None:
    exe = _require_browser()
    from PIL import Image
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=ARGS,
                                    headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1600})
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}")
                if m.type in ("error", "warning") else None)
        page.on("request", lambda r: requests.append(r.url))
        page.goto(report.as_uri(), wait_until="load")
        headings = page.locator("h2").all_inner_texts()
        svgs = page.locator("svg").count()
        tables = page.locator("table").count()
        png = page.screenshot(full_page=True)
        browser.close()

    assert errors == []
    # self-contained: the page loads nothing but itself
    assert [u for u in requests if u != report.as_uri()] == []
    for section in ("Statistical similarity", "Pairs of columns", "Machine-learning efficacy",
                    "Bias", "Privacy", "Privacy-utility curve", "Scalability"):
        assert section in headings
    assert svgs >= 4 + 3  # four histograms, heatmaps, importance, distances, curve
    assert tables >= 8
    image = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    assert image.shape[0] > 1600  # a long page, captured whole
    assert image.std() > 20  # not a blank (uniform) page
    assert (image < 128).mean() > 0.01  # a real share of dark pixels: text and plots


def test_report_screenshot_with_chromium_cli(report: Path, tmp_path: Path) -> None:
    """The same page through the plain browser binary, as a user's `chromium report.html`."""
    import subprocess

    exe = _require_browser()
    from PIL import Image

    shot = tmp_path / "shot.png"
    proc = subprocess.run([exe, "--headless", *ARGS, f"--user-data-dir={tmp_path / 'profile'}",
                           f"--screenshot={shot}", "--window-size=1200,2400", report.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    image = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert image.std() > 20
    assert not any("Uncaught" in line for line in proc.stderr.splitlines())
