"""`fedsynth sample`: more rows from a job's output folder, end to end through the command."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsynth.cli import EXIT_INPUT, main


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One simulated job's output folder (seed 0) and its data file, in a module folder."""
    where = tmp_path_factory.mktemp("cli-sample")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 10, 800)
    pd.DataFrame({"a": a, "b": np.where(rng.random(800) < 0.2 + 0.06 * a, "y", "x"),
                  "z": rng.uniform(0, 10, 800)}).to_csv(where / "t.csv", index=False)
    old = Path.cwd()
    os.chdir(where)
    try:
        assert main(["simulate", "--engine", "local", "--data", "t.csv", "--parties", "2",
                     "--no-evaluate", "--epsilon", "3", "--out", "run"]) == 0
    finally:
        os.chdir(old)
    yield where / "run"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_same_seed_and_rows_redraw_the_jobs_synthetic_table(
        run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = len(pd.read_csv(run / "synthetic.csv"))
    rc, out, err = _run(["sample", "--model", str(run), "--rows", str(rows), "--seed", "0",
                         "--out", "more.csv"], capsys)
    assert rc == 0 and out == ""
    assert "drawing" in err and "wrote more.csv" in err
    assert (tmp_path / "more.csv").read_text() == (run / "synthetic.csv").read_text()


def test_conditions_to_standard_output(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(["sample", "--model", str(run), "--rows", "400", "--seed", "3",
                       "--condition", "b=y", "--condition", "z=2.5..7"], capsys)
    assert rc == 0
    df = pd.read_csv(pd.io.common.StringIO(out))
    assert list(df.columns) == ["a", "b", "z"] and len(df) == 400
    assert (df["b"] == "y").all() and df["z"].between(2.5, 7).all()
    assert df["a"].dtype == np.int64 and df["a"].between(0, 9).all()


def test_class_ratio_sets_the_share(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(["sample", "--model", str(run), "--rows", "2000",
                       "--class-ratio", "b=y:0.9"], capsys)
    assert rc == 0
    df = pd.read_csv(pd.io.common.StringIO(out))
    assert abs((df["b"] == "y").mean() - 0.9) < 0.01


def test_an_existing_output_file_is_kept_unless_overwrite(
        run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "s.csv").write_text("mine\n")
    rc, _, err = _run(["sample", "--model", str(run), "--rows", "5", "--out", "s.csv"], capsys)
    assert rc == EXIT_INPUT and "--overwrite" in err
    assert (tmp_path / "s.csv").read_text() == "mine\n"
    rc, _, _ = _run(["sample", "--model", str(run), "--rows", "5", "--out", "s.csv",
                     "--overwrite"], capsys)
    assert rc == 0 and len(pd.read_csv(tmp_path / "s.csv")) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv"]


@pytest.mark.parametrize(("args", "needle"), [
    (["--condition", "b=maybe"], "condition b=maybe: 'maybe' is not a category of column 'b'"),
    (["--condition", "z=20..30"], "condition z=20..30: outside column 'z''s values"),
    (["--class-ratio", "b=y:2"], "class ratio b=y: share 2.0 must be between 0 and 1"),
])
def test_bad_requests_exit_3_with_one_error_and_no_file(
        run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
        needle: str) -> None:
    rc, out, err = _run(["sample", "--model", str(run), "--rows", "5", "--out", "s.csv",
                         *args], capsys)
    assert rc == EXIT_INPUT and out == ""
    assert f"error: {needle}" in err
    assert not list(tmp_path.iterdir())


def test_a_folder_without_a_model_is_refused(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "synthetic.csv").write_text("a\n1\n")
    rc, _, err = _run(["sample", "--model", "old", "--rows", "5"], capsys)
    assert rc == EXIT_INPUT
    assert "schema.json, model.json, model.npz missing" in err and "run the job again" in err


def test_simulate_draws_its_table_with_a_class_ratio(
        run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = run.parent / "t.csv"
    rc, _, _ = _run(["simulate", "--engine", "local", "--data", str(data), "--parties", "2",
                     "--no-evaluate", "--rows", "1000", "--class-ratio", "b=y:0.7",
                     "--out", "run"], capsys)
    assert rc == 0
    synth = pd.read_csv(tmp_path / "run" / "synthetic.csv")
    assert abs((synth["b"] == "y").mean() - 0.7) < 0.02
    sampling = json.loads((tmp_path / "run" / "metrics.json").read_text())["sampling"]
    assert sampling["class_ratio"] == ["b=y:0.7"] and "no privacy cost" in sampling["note"]


def test_simulate_refuses_a_bad_condition_before_the_job(
        run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(["simulate", "--engine", "local", "--data", str(run.parent / "t.csv"),
                       "--parties", "2", "--condition", "q=1", "--out", "run"], capsys)
    assert rc == EXIT_INPUT and "condition on 'q': no such column" in err
    assert not list(tmp_path.iterdir())


def test_help_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--class-ratio default=Yes:0.5" in text and "exit codes:" in text


def test_parquet_by_format_or_suffix_keeps_the_csv_columns_and_types(
        run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, _ = _run(["sample", "--model", str(run), "--rows", "500", "--seed", "4", "--out",
                     "more.csv"], capsys)
    assert rc == 0
    rc, _, _ = _run(["sample", "--model", str(run), "--rows", "500", "--seed", "4", "--out",
                     "more.parquet"], capsys)
    assert rc == 0
    rc, _, _ = _run(["sample", "--model", str(run), "--rows", "500", "--seed", "4", "--out",
                     "more.bin", "--format", "parquet"], capsys)
    assert rc == 0
    csv, pq = pd.read_csv("more.csv"), pd.read_parquet("more.parquet")
    pd.testing.assert_frame_equal(pq, pd.read_parquet("more.bin"))
    pd.testing.assert_frame_equal(csv, pq, check_dtype=True)


def test_parquet_to_standard_output_is_refused(run: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(["sample", "--model", str(run), "--rows", "5", "--format", "parquet"],
                      capsys)
    assert rc == EXIT_INPUT and "--out" in err
