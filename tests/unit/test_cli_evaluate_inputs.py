"""The real `fedsynth` command on tables a user gets wrong: mismatched columns, stray values,
identifier columns and empty columns. Each test runs `python -m fedsynth.cli` in a folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

EXIT_INPUT = 3


def _fedsynth(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedsynth.cli", *args], cwd=folder,
                          capture_output=True, text=True, timeout=300, check=False)


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return pd.DataFrame({"x": x, "g": rng.choice(["f", "m"], n),
                         "y": np.where(x > 0.3, "yes", "no")})


def _evaluate(folder: Path, synthetic: pd.DataFrame, *extra: str,
              real: pd.DataFrame | None = None) -> subprocess.CompletedProcess[str]:
    (_frame(300, 0) if real is None else real).to_csv(folder / "holdout.csv", index=False)
    (folder / "job").mkdir(exist_ok=True)
    synthetic.to_csv(folder / "job" / "synthetic.csv", index=False)
    return _fedsynth(folder, "evaluate", "--real", "holdout.csv", "--synthetic",
                     "job/synthetic.csv", "--out", "ev", *extra)


def test_an_extra_synthetic_column_names_the_synthetic_file(tmp_path: Path) -> None:
    proc = _evaluate(tmp_path, _frame(300, 1).assign(x2=0.5))
    assert proc.returncode == EXIT_INPUT, proc.stderr
    assert ("error: the synthetic table job/synthetic.csv has columns the real table "
            "holdout.csv lacks: x2. Rename or drop them so both tables have the same "
            "columns") in proc.stderr
    assert "schema" not in proc.stderr
    assert not (tmp_path / "ev").exists()


def test_a_renamed_column_is_named_on_both_sides(tmp_path: Path) -> None:
    proc = _evaluate(tmp_path, _frame(300, 1).rename(columns={"x": "x2"}))
    assert proc.returncode == EXIT_INPUT
    assert "job/synthetic.csv has columns the real table holdout.csv lacks: x2" in proc.stderr
    assert "holdout.csv has columns the synthetic table job/synthetic.csv lacks: x." \
        in proc.stderr


def test_text_in_a_numeric_synthetic_column_is_refused(tmp_path: Path) -> None:
    syn = _frame(300, 1).astype({"x": object})
    syn.loc[4, "x"] = "x35"  # file line 6
    proc = _evaluate(tmp_path, syn)
    assert proc.returncode == EXIT_INPUT
    err = proc.stderr
    assert "the synthetic table job/synthetic.csv" in err and "column 'x'" in err
    assert "1 row(s) (file lines 6)" in err and "'x35'" in err and "holdout.csv" in err
    assert "fix or drop those rows" in err
    assert not (tmp_path / "ev").exists()


def test_a_synthetic_category_outside_the_job_schema_is_refused(tmp_path: Path) -> None:
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "schema.json").write_text(json.dumps({"columns": [
        {"name": "x", "kind": "continuous", "lower": -10, "upper": 10},
        {"name": "g", "kind": "categorical", "categories": ["f", "m", "__other__"]},
        {"name": "y", "kind": "categorical", "categories": ["no", "yes"]}]}))
    syn = _frame(300, 1)
    syn.loc[[0, 9], "g"] = "unlisted"
    proc = _evaluate(tmp_path, syn)
    assert proc.returncode == EXIT_INPUT
    assert "job/synthetic.csv" in proc.stderr and "column 'g'" in proc.stderr
    assert "2 row(s) (file lines 2, 11)" in proc.stderr and "unlisted" in proc.stderr


def test_an_all_missing_column_is_evaluated(tmp_path: Path) -> None:
    proc = _evaluate(tmp_path, _frame(300, 1).assign(empty=np.nan),
                     real=_frame(300, 0).assign(empty=np.nan))
    assert proc.returncode == 0, proc.stderr
    assert "column 'empty': every value is missing" in proc.stderr
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert [c["name"] for c in metrics["columns"]] == ["x", "g", "y", "empty"]


def _with_identifiers(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    return _frame(n, 4).assign(customer=[f"cust-{i:06d}" for i in rng.permutation(n)],
                               row=np.arange(n))


def test_schema_infer_leaves_identifiers_out_of_the_public_schema(tmp_path: Path) -> None:
    df = _with_identifiers(1000)
    df.to_csv(tmp_path / "party.csv", index=False)
    proc = _fedsynth(tmp_path, "schema", "infer", "party.csv")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [c["name"] for c in doc["columns"]] == ["x", "g", "y"]
    assert doc["ignored_columns"] == ["customer", "row"]
    assert "cust-" not in proc.stdout


def test_simulate_never_writes_identifier_values(tmp_path: Path) -> None:
    df = _with_identifiers(600)
    df.to_csv(tmp_path / "pooled.csv", index=False)
    proc = _fedsynth(tmp_path, "simulate", "--engine", "local", "--data", "pooled.csv",
                     "--parties", "2", "--no-evaluate", "--out", "run")
    assert proc.returncode == 0, proc.stderr
    synthetic = (tmp_path / "run" / "synthetic.csv").read_text()
    assert synthetic.splitlines()[0] == "x,g,y"
    assert "cust-" not in synthetic
    schema = json.loads((tmp_path / "run" / "schema.json").read_text())
    assert schema["ignored_columns"] == ["customer", "row"]
