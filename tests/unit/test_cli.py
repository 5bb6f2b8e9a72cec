"""The `fedsynth` command, run in-process through fedsynth.cli.main."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsynth.cli import EXIT_INPUT, main
from fedsynth.synthesis.schema import Schema, infer_schema


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default --out folder would land here


def _table(rows: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"a": rng.integers(0, 10, rows), "b": rng.choice(["x", "y"], rows)})


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _only(tmp: Path, *names: str) -> None:
    """Nothing but the given inputs in the folder: no output, no temporary leftovers."""
    assert sorted(p.name for p in tmp.iterdir()) == sorted(names)


@pytest.mark.parametrize(("flag", "value", "needle"), [
    ("--epsilon", "0", "epsilon must be a positive number"),
    ("--epsilon", "nan", "epsilon must be a positive number"),
    ("--delta", "2", "delta must lie strictly between 0 and 1"),
    ("--delta", "0", "delta must lie strictly between 0 and 1"),
])
def test_bad_privacy_parameters_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       flag: str, value: str, needle: str) -> None:
    rc, _, err = _run(["simulate", "--engine", "local", flag, value, "--out", "run"], capsys)
    assert rc == EXIT_INPUT == 3
    assert err.startswith("error:") and needle in err
    _only(tmp_path)


def test_unsupported_data_file_exits_3_naming_it(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("a,b\n1,x\n")
    rc, _, err = _run(["simulate", "--engine", "local", "--data", str(notes), "--out", "run"],
                      capsys)
    assert rc == 3
    assert str(notes) in err and "'.txt'" in err and ".csv or .parquet" in err
    _only(tmp_path, "notes.txt")


def test_missing_data_file_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(["simulate", "--engine", "local", "--data", "nowhere.csv"], capsys)
    assert rc == 3 and "nowhere.csv" in err and "no such file" in err
    _only(tmp_path)


def test_out_of_bounds_value_against_schema_exits_3(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    good = _table()
    (tmp_path / "schema.json").write_text(infer_schema(good).to_json())
    bad = good.copy()
    bad.loc[5, "a"] = 4242  # file line 7 (header is line 1)
    bad.to_csv(tmp_path / "bank.csv", index=False)
    rc, _, err = _run(["simulate", "--engine", "local", "--data", "bank.csv", "--schema",
                       "schema.json", "--out", "run"], capsys)
    assert rc == 3
    assert "bank.csv" in err and "column 'a'" in err and "4242" in err
    assert "file lines 7)" in err and "outside the declared bounds [0.0, 9.0]" in err
    _only(tmp_path, "bank.csv", "schema.json")


def test_malformed_schema_file_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _table().to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "schema.json").write_text(json.dumps(
        {"columns": [{"name": "a", "kind": "integer", "lower": 9, "upper": 0}]}))
    rc, _, err = _run(["simulate", "--engine", "local", "--data", "t.csv", "--schema",
                       "schema.json"], capsys)
    assert rc == 3 and "schema.json" in err and "above upper bound" in err
    _only(tmp_path, "t.csv", "schema.json")


@pytest.mark.parametrize(("args", "needle"), [
    (["--dataset", "nope/none"], "unknown dataset"),
    (["--partition", "dirichlet:0"], "positive ALPHA"),
    (["--holdout", "1"], "holdout"),
    (["--threshold", "9"], "threshold t=9"),
    (["--plan", "noise=distributed"], "add --method dpsgd"),
])
def test_other_bad_arguments_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    args: list[str], needle: str) -> None:
    rc, _, err = _run(["simulate", "--engine", "local", *args], capsys)
    assert rc == 3 and needle in err
    _only(tmp_path)


@pytest.mark.parametrize(("plan", "needle"), [
    (["sampling_rate=0.1"], 'sampling_rate applies to noise "local" only'),
    (["rounds=1.5"], "rounds must be a whole number"),
    (["colour=red"], "unknown field(s) colour"),
])
def test_a_bad_training_plan_is_refused_before_any_party_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        plan: list[str], needle: str) -> None:
    pytest.importorskip("torch")
    from fedsynth.simulations import run

    def started(*args: object, **kw: object) -> None:
        raise AssertionError("a job was started")

    monkeypatch.setattr(run, "simulate", started)
    monkeypatch.setattr(run, "simulate_sweep", started)
    args = [a for p in plan for a in ("--plan", p)]
    rc, _, err = _run(["simulate", "--engine", "local", "--method", "dpsgd", "--epsilon", "1",
                       "3", *args], capsys)
    assert rc == 3 and needle in err and err.count("\n") == 1
    _only(tmp_path)


def test_unparsable_number_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["simulate", "--epsilon", "lots"])
    assert info.value.code == 2
    assert "--epsilon" in capsys.readouterr().err


def test_parties_without_rows_are_found_before_the_job_exits_3(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _table(3).to_csv(tmp_path / "tiny.csv", index=False)  # 3 rows for 5 parties
    rc, _, err = _run(["simulate", "--engine", "local", "--data", "tiny.csv", "--holdout", "0",
                       "--out", "run"], capsys)
    assert rc == EXIT_INPUT
    assert "2 of 5 parties would get no rows" in err and "at most 3 parties" in err
    _only(tmp_path, "tiny.csv")


def test_simulate_success_writes_the_output_folder(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _table().to_csv(tmp_path / "t.csv", index=False)
    rc, out, _ = _run(["simulate", "--engine", "local", "--data", "t.csv", "--parties", "3",
                       "--out", "run"], capsys)
    assert rc == 0
    assert "synthetic table:" in out and "privacy: ε=" in out
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {"synthetic.csv", "privacy.json", "metrics.json",
                                               "schema.json", "job.log", "report.html",
                                               "real-heldout.csv", "model.json", "model.npz",
                                               ".fedsynth-output"}
    assert json.loads((run / "privacy.json").read_text())["epsilon_spent"] <= 1.0
    assert "setup: 3 parties" in (run / "job.log").read_text()
    _only(tmp_path, "t.csv", "run")


def test_schema_infer_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    df = pd.DataFrame({"age": [30, 41, 57, 31, 40, 56, 33, 44, 52],
                       "city": ["oslo", "rome", None] * 3,
                       "w": np.linspace(0.5, 2.0, 9) ** 2})  # each city in 3 rows: public
    df.to_csv(tmp_path / "party.csv", index=False)
    rc, out, _ = _run(["schema", "infer", "party.csv"], capsys)
    assert rc == 0
    doc = json.loads(out)
    schema = Schema.from_dict(doc)
    assert schema.names == ["age", "city", "w"]
    age = schema["age"]
    assert age.kind == "integer" and (age.lower, age.upper) == (30, 57)
    assert schema["city"].categories == ("oslo", "rome") and schema["city"].nullable
    assert schema["w"].kind == "continuous"


def test_schema_infer_to_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _table().to_parquet(tmp_path / "party.parquet")
    rc, out, err = _run(["schema", "infer", "party.parquet", "--out", "draft.json"], capsys)
    assert rc == 0 and out == "" and "review" in err
    assert Schema.load(tmp_path / "draft.json").names == ["a", "b"]


def test_schema_infer_bad_file_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.parquet").write_text("not parquet at all")
    rc, _, err = _run(["schema", "infer", "x.parquet"], capsys)
    assert rc == 3 and "x.parquet" in err


# --- evaluate --------------------------------------------------------------------------------


def _eval_files(tmp: Path) -> None:
    rng = np.random.default_rng(1)
    n = 600
    x = rng.normal(size=n)
    df = pd.DataFrame({"x": x, "g": rng.choice(["f", "m"], n),
                       "y": np.where(x + 0.5 * rng.normal(size=n) > 0.5, "yes", "no")})
    df.iloc[:300].to_csv(tmp / "holdout.csv", index=False)
    df.iloc[300:].to_csv(tmp / "train.csv", index=False)
    run = tmp / "job"
    run.mkdir()
    df.iloc[300:].sample(400, replace=True, random_state=0).to_csv(run / "synthetic.csv",
                                                                   index=False)
    (run / "privacy.json").write_text(json.dumps({"epsilon_requested": 1.0,
                                                  "epsilon_spent": 0.99, "delta": 1e-6}))


def test_evaluate_writes_report_and_metrics(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    _eval_files(tmp_path)
    rc, out, err = _run(["evaluate", "--real", "holdout.csv", "--synthetic", "job/synthetic.csv",
                         "--train", "train.csv", "--target", "y", "--sensitive", "g",
                         "--out", "ev"], capsys)
    assert rc == 0, err
    assert "TSTR AUC" in out and "membership attack AUC" in out
    assert {p.name for p in (tmp_path / "ev").iterdir()} == {"report.html", "metrics.json",
                                                             ".fedsynth-output"}
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["rows_real"] == 300 and m["rows_synthetic"] == 400
    assert m["privacy"]["exact_match_rate"] == 1.0  # the "synthetic" rows are copies
    assert m["privacy_guarantee"]["epsilon_spent"] == 0.99  # read from privacy.json beside it
    assert m["ml_efficacy"]["positive_class"] == "yes"
    assert m["bias"]["sensitive"] == "g"
    assert "<svg" in (tmp_path / "ev" / "report.html").read_text()


@pytest.mark.parametrize(("extra", "needle"), [
    (["--target", "nope"], "target column 'nope' is not in the schema"),
    (["--sensitive", "g"], "need a target as well as a sensitive column"),
])
def test_evaluate_bad_options_exit_3_and_write_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], needle: str) -> None:
    _eval_files(tmp_path)
    rc, _, err = _run(["evaluate", "--real", "holdout.csv", "--synthetic", "job/synthetic.csv",
                       *extra], capsys)
    assert rc == EXIT_INPUT
    assert needle in err
    _only(tmp_path, "holdout.csv", "train.csv", "job")


def test_evaluate_missing_file_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _eval_files(tmp_path)
    rc, _, err = _run(["evaluate", "--real", "nothere.csv", "--synthetic", "job/synthetic.csv"],
                      capsys)
    assert rc == EXIT_INPUT and "nothere.csv: no such file" in err
