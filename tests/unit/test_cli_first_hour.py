"""A newcomer's first hour: the real `fedsynth` command never loses a file, stops cleanly on
Ctrl-C, and turns every input mistake into one clear line with the documented exit code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsynth.cli import EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, main
from fedsynth.evaluation.output import MARKER


def _cli(args: list[str], cwd: Path, *, env: dict[str, str] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The installed command, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "fedsynth.cli", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout, env=env)


def _table(rows: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"a": rng.integers(0, 10, rows), "b": rng.choice(["x", "y"], rows)})


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project folder: a script and an input table."""
    (tmp_path / "analysis.py").write_text("print('my work')\n")
    _table().to_csv(tmp_path / "t.csv", index=False)
    return tmp_path


def test_out_dot_in_a_project_folder_is_refused_and_nothing_is_touched(project: Path) -> None:
    before = {p.name: p.read_bytes() for p in project.iterdir()}
    r = _cli(["simulate", "--engine", "local", "--data", "t.csv", "--out", "."], project)
    assert r.returncode == EXIT_INPUT, r.stderr
    assert "already exists and is not empty" in r.stderr and "--overwrite" in r.stderr
    _no_traceback(r.stderr)
    assert {p.name: p.read_bytes() for p in project.iterdir()} == before
    # --overwrite does not help: fedsynth did not write this folder
    r = _cli(["simulate", "--engine", "local", "--data", "t.csv", "--out", ".", "--overwrite"],
             project)
    assert r.returncode == EXIT_INPUT and "not written by fedsynth" in r.stderr
    assert {p.name: p.read_bytes() for p in project.iterdir()} == before


def test_out_naming_a_file_is_refused_and_the_file_kept(project: Path) -> None:
    (project / "notes.txt").write_text("my notes\n")
    before = sorted(p.name for p in project.iterdir())
    for extra in ([], ["--overwrite"]):
        r = _cli(["simulate", "--engine", "local", "--data", "t.csv", "--out", "notes.txt",
                  *extra], project)
        assert r.returncode == EXIT_INPUT and "is a file, not a folder" in r.stderr
        _no_traceback(r.stderr)
    assert sorted(p.name for p in project.iterdir()) == before  # no hidden renamed copy
    assert (project / "notes.txt").read_text() == "my notes\n"


def test_unwritable_out_is_found_before_the_job(project: Path) -> None:
    # /proc refuses new folders even to root, so this holds whoever runs the tests
    started = time.perf_counter()
    r = _cli(["simulate", "--engine", "local", "--data", "t.csv", "--out",
              "/proc/fedsynth-test/run"], project)
    assert r.returncode == EXIT_INPUT and "cannot write in /proc" in r.stderr
    _no_traceback(r.stderr)
    assert "setup:" not in r.stderr  # refused before any party started
    assert time.perf_counter() - started < 60


def test_overwrite_replaces_only_fedsynths_own_folder(project: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    args = ["simulate", "--engine", "local", "--data", "t.csv", "--parties", "2", "--rows", "50",
            "--no-evaluate", "--out", "run"]
    assert main(args) == 0
    assert (project / "run" / MARKER).is_file()
    first = (project / "run" / "synthetic.csv").read_text()
    assert main(args) == EXIT_INPUT  # again without --overwrite: refused, kept
    assert "already exists" in capsys.readouterr().err
    assert (project / "run" / "synthetic.csv").read_text() == first
    assert main([*args, "--overwrite"]) == 0
    assert len(pd.read_csv(project / "run" / "synthetic.csv")) == 50
    assert sorted(p.name for p in project.iterdir()) == ["analysis.py", "run", "t.csv"]


def test_evaluate_refuses_an_existing_folder(project: Path) -> None:
    (project / "ev").mkdir()
    (project / "ev" / "keep.txt").write_text("x")
    r = _cli(["evaluate", "--real", "t.csv", "--synthetic", "t.csv", "--out", "ev"], project)
    assert r.returncode == EXIT_INPUT and "already exists" in r.stderr
    assert sorted(p.name for p in (project / "ev").iterdir()) == ["keep.txt"]


def test_schema_infer_does_not_replace_a_file_without_overwrite(project: Path) -> None:
    (project / "schema.json").write_text("mine")
    r = _cli(["schema", "infer", "t.csv", "--out", "schema.json"], project)
    assert r.returncode == EXIT_INPUT and "--overwrite" in r.stderr
    assert (project / "schema.json").read_text() == "mine"
    r = _cli(["schema", "infer", "t.csv", "--out", "schema.json", "--overwrite"], project)
    assert r.returncode == 0
    assert json.loads((project / "schema.json").read_text())["columns"]


@pytest.mark.parametrize(("args", "needle"), [
    (["--rows", "0"], "0 rows: give at least 1"),
    (["--rows", "-5"], "-5 rows: give at least 1"),
    (["--rows", "many"], "is not a whole number of rows"),
    (["--parties", "1"], "one party gains nothing from a federation"),
    (["--parties", "0"], "give at least 2"),
    (["--seed", "-1"], "-1 is negative; give a seed from 0 up"),
    (["--seed", "x"], "'x' is not a whole number"),
])
def test_bad_counts_are_usage_errors_with_the_fix(project: Path, args: list[str],
                                                  needle: str) -> None:
    r = _cli(["simulate", "--engine", "local", "--data", "t.csv", *args], project)
    assert r.returncode == EXIT_USAGE and needle in r.stderr
    _no_traceback(r.stderr)


def test_more_parties_than_rows_is_refused_before_anything_starts(project: Path) -> None:
    _table(200).to_csv(project / "small.csv", index=False)
    started = time.perf_counter()
    r = _cli(["simulate", "--data", "small.csv", "--parties", "1000"], project)
    assert r.returncode == EXIT_INPUT, r.stderr
    assert "parties would get no rows" in r.stderr and "at most" in r.stderr
    assert len(r.stderr.splitlines()) <= 3 and "fedsynth-parties" not in r.stderr
    assert "starting Flower" not in r.stderr
    assert time.perf_counter() - started < 60


def test_missing_schema_file_is_one_line(project: Path) -> None:
    r = _cli(["simulate", "--engine", "local", "--data", "t.csv", "--schema", "nope.json"],
             project)
    assert r.returncode == EXIT_INPUT and "nope.json" in r.stderr
    _no_traceback(r.stderr)


def test_version_and_help_with_defaults_examples_and_exit_codes(project: Path) -> None:
    r = _cli(["--version"], project)
    assert r.returncode == 0 and r.stdout.startswith("fedsynth ")
    h = _cli(["simulate", "--help"], project).stdout
    assert "examples:" in h and "exit codes:" in h and "130" in h
    assert "(default: 0)" in h  # --seed
    assert "(default: fedsynth-out)" in h and "column:NAME" in h
    assert "examples:" in _cli(["schema", "infer", "--help"], project).stdout


def test_internal_error_is_one_line_with_the_trace_in_a_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import fedsynth.simulations.run as run

    def broken(**_: object) -> None:
        raise RuntimeError("a bug\nsecond line")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(run, "simulate", broken)
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    assert main(["simulate", "--engine", "local"]) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: RuntimeError: a bug" in err
    logs = list(tmp_path.glob("fedsynth-error-*.log"))
    assert len(logs) == 1 and str(logs[0]) in err
    assert "Traceback" in logs[0].read_text() and "second line" in logs[0].read_text()


def _interrupt(cwd: Path, args: list[str], wait_for: str, tmp: Path) -> tuple[int, str, float]:
    """Start the command in its own session, send one Ctrl-C (SIGINT to the whole group, as a
    terminal does) once `wait_for` appears on stderr, and return (code, stderr, seconds)."""
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fedsynth.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if wait_for in line:
            break
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)
    started = time.perf_counter()
    try:
        _, rest = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("one Ctrl-C did not stop the command within 30 s")
    return proc.returncode, "".join(seen) + rest, time.perf_counter() - started


def _session_alive(sid: int) -> list[int]:
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def test_one_ctrl_c_stops_a_local_job_cleanly(project: Path) -> None:
    tmp = project / "tmp"
    tmp.mkdir()
    code, err, seconds = _interrupt(project, ["simulate", "--engine", "local", "--data", "t.csv",
                                              "--out", "run"], "setup:", tmp)
    assert code == EXIT_INTERRUPTED == 130
    assert "interrupted" in err.splitlines()[-1]
    _no_traceback(err)
    assert not (project / "run").exists()
    assert list(tmp.iterdir()) == []  # the parties' folders are gone
    assert seconds < 10


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="process check reads /proc")
def test_one_ctrl_c_stops_the_flower_engine_and_its_processes(project: Path) -> None:
    tmp = project / "tmp"
    tmp.mkdir()
    # our temporary folders go to `tmp`; Ray's stay in /tmp (its socket paths must be short)
    env = {**os.environ, "TMPDIR": str(tmp), "RAY_TMPDIR": "/tmp", "PYTHONUNBUFFERED": "1"}
    log = project / "err.log"  # a file, not a pipe: an unread pipe could fill and block
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "fedsynth.cli", "simulate", "--data",
                                 "t.csv", "--out", "run"], cwd=project, env=env,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(_session_alive(proc.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)  # wait until the engine has started its processes
    assert len(_session_alive(proc.pid)) >= 3
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=30)
    rest = log.read_text()
    assert proc.returncode == EXIT_INTERRUPTED, rest
    assert "interrupted" in rest and "Traceback" not in rest
    time.sleep(2)
    assert _session_alive(proc.pid) == []  # no engine process left behind
    assert not (project / "run").exists()
    assert not [p for p in tmp.iterdir() if p.name.startswith("fedsynth-")]


def test_holdout_zero_skips_the_evaluation_and_never_calls_training_rows_held_out(
        project: Path) -> None:
    r = _cli(["simulate", "--engine", "local", "--data", "t.csv", "--parties", "2",
              "--holdout", "0", "--out", "run"], project)
    assert r.returncode == 0, r.stderr
    assert "no rows held out" in r.stderr and "evaluation is skipped" in r.stderr
    files = {p.name for p in (project / "run").iterdir()}
    assert "report.html" not in files and "real-heldout.csv" not in files
    assert "tvd" not in json.loads((project / "run" / "metrics.json").read_text())


def test_plain_channel_is_called_unprotected_on_screen(project: Path) -> None:
    r = _cli(["simulate", "--engine", "local", "--data", "t.csv", "--parties", "2",
              "--channel", "plain", "--no-evaluate", "--out", "run"], project)
    assert r.returncode == 0, r.stderr
    assert "WARNING: channel plain" in r.stdout and "in the clear" in r.stdout
