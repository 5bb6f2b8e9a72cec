"""simulate() with the in-process engine: the output folder and its five files."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsynth.evaluation.output import MARKER, OutputError
from fedsynth.simulations.run import simulate, simulate_sweep
from fedsynth.synthesis.schema import Schema

FILES = {"synthetic.csv", "privacy.json", "metrics.json", "schema.json", "job.log", "report.html",
         "real-heldout.csv", "model.json", "model.npz", MARKER}


def _parties(n_parties: int = 3, rows: int = 200) -> list[pd.DataFrame]:
    rng = np.random.default_rng(7)
    out = []
    for _ in range(n_parties):
        a = rng.integers(0, 5, rows)
        out.append(pd.DataFrame({"a": a, "b": np.where(a > 2, "hi", "lo"),
                                 "z": rng.uniform(0, 10, rows)}))
    return out


@pytest.fixture
def default_logging() -> Iterator[None]:
    """Logging as in a fresh notebook: root at WARNING, the fedsynth logger unset."""
    root, ours = logging.getLogger(), logging.getLogger("fedsynth")
    saved = root.level, ours.level
    root.setLevel(logging.WARNING)
    ours.setLevel(logging.NOTSET)
    yield
    root.setLevel(saved[0])
    ours.setLevel(saved[1])


def test_simulate_writes_all_outputs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # no target: the TSTR classifier is slow right after jax in a 2-core process
    res = simulate(parties=_parties(), engine="local", epsilon=2.0, rows=300, out=out)
    assert res.out == out.resolve()
    assert {p.name for p in out.iterdir()} == FILES
    synth = pd.read_csv(out / "synthetic.csv")
    assert list(synth.columns) == ["a", "b", "z"] and len(synth) == 300
    privacy = json.loads((out / "privacy.json").read_text())
    assert privacy["epsilon_requested"] == 2.0
    assert privacy["epsilon_spent"] <= 2.0
    assert Schema.from_json((out / "schema.json").read_text()) == res.schema
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["tvd_2way_vs_train"] <= 1
    assert metrics["rows_synthetic"] == 300
    assert [x.name for x in tmp_path.iterdir()] == ["run"]  # no temporary siblings left


def test_simulate_replaces_only_its_own_output_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    for overwrite in (False, True):  # a folder fedsynth did not write is never replaced
        with pytest.raises(OutputError, match=r"already exists|not written by fedsynth"):
            simulate(parties=_parties(), engine="local", evaluate=False, out=out,
                     overwrite=overwrite)
    assert [p.name for p in out.iterdir()] == ["stale.txt"]
    (out / "stale.txt").unlink()
    simulate(parties=_parties(), engine="local", evaluate=False, out=out)  # empty: used
    (out / "extra.txt").write_text("from an earlier run")
    simulate(parties=_parties(), engine="local", evaluate=False, out=out, overwrite=True)
    assert {p.name for p in out.iterdir()} == FILES - {"report.html"}  # no evaluation, no report
    assert [x.name for x in tmp_path.iterdir()] == ["run"]


def test_invalid_request_leaves_existing_output_untouched(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / MARKER).write_text("")
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="epsilon"):
        simulate(parties=_parties(), engine="local", epsilon=-1.0, out=out, overwrite=True)
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.usefixtures("default_logging")
def test_job_log_records_the_job_when_called_as_a_library(tmp_path: Path) -> None:
    out = tmp_path / "run"
    simulate(parties=_parties(), engine="local", evaluate=False, out=out)
    log = (out / "job.log").read_text()
    assert "setup: 3 parties" in log
    assert "selected pairs" in log


def test_no_exact_fact_of_a_party_leaves_in_the_outputs(tmp_path: Path) -> None:
    """Shown on the old code: job.log held every party's exact row count, and schema.json's
    exact min and max were not marked as facts of the data."""
    out = tmp_path / "run"
    simulate(parties=_parties(rows=173), engine="local", evaluate=False, out=out)
    log = (out / "job.log").read_text()
    messages = " ".join(line.split(" ", 4)[-1] for line in log.splitlines())  # no timestamps
    for count in ("173", "519"):  # each party's and the pooled size
        assert count not in messages
    assert "party refused" not in log and "fedsynth.node" not in log  # the parties' own logs
    schema = json.loads((out / "schema.json").read_text())
    assert "not private" in schema["provenance"]
    privacy = json.loads((out / "privacy.json").read_text())
    assert "not private" in privacy["schema"]
    assert privacy["differentially_private"] is True


def test_epsilon_sweep_writes_one_folder_per_epsilon_and_the_curve(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    results, curve = simulate_sweep([0.5, 4.0], parties=_parties(), engine="local", rows=300,
                                    out=out)
    assert {p.name for p in out.iterdir()} == {"epsilon-0.5", "epsilon-4", "report.html",
                                               "privacy_utility.json", "real-heldout.csv",
                                               MARKER}
    for name in ("epsilon-0.5", "epsilon-4"):
        assert {p.name for p in (out / name).iterdir()} == FILES - {"real-heldout.csv", MARKER}
    assert [r.out for r in results] == [out.resolve() / "epsilon-0.5", out.resolve() / "epsilon-4"]
    saved = json.loads((out / "privacy_utility.json").read_text())
    assert saved["runs"] == curve
    # the same rows answered both runs: the sweep's total is their composition, over 4.0
    total = saved["epsilon_total_over_sweep"]
    assert 4.0 < total <= 4.5
    assert all(r.privacy["epsilon_total_over_sweep"] == total for r in results)
    assert max(results[-1].privacy["epsilon_spent_per_party_ledger"].values()) == total
    saved = saved["runs"]
    assert [c["epsilon"] for c in saved] == [0.5, 4.0]
    for c, r in zip(saved, results, strict=True):
        assert c["epsilon_spent"] == r.privacy["epsilon_spent"] <= c["epsilon"]
        assert c["tvd_2way"] == r.metrics["tvd"]["2way"]
    assert "Privacy-utility curve" in (out / "report.html").read_text()
    assert [x.name for x in tmp_path.iterdir()] == ["sweep"]


def test_epsilon_sweep_refuses_repeated_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="distinct"):
        simulate_sweep([1.0, 1.0], parties=_parties(), engine="local", out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_unknown_sensitive_column_fails_before_the_job(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sensitive column 'nope' is not in the schema"):
        simulate(parties=_parties(), engine="local", target="b", sensitive="nope",
                 out=tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_parquet_output_round_trips_the_columns_and_types_of_the_csv(tmp_path: Path) -> None:
    parts = _parties()
    parts[0].loc[:9, "z"] = np.nan  # a nullable column, missing in the synthetic table too
    kw = {"parties": parts, "engine": "local", "epsilon": 2.0, "rows": 300, "evaluate": False,
          "seed": 3}
    a = simulate(out=tmp_path / "csv", **kw)
    b = simulate(out=tmp_path / "pq", output_format="parquet", **kw)
    assert (tmp_path / "csv" / "synthetic.csv").is_file()
    assert not (tmp_path / "pq" / "synthetic.csv").exists()
    table = pd.read_parquet(tmp_path / "pq" / "synthetic.parquet")
    pd.testing.assert_frame_equal(table, b.synthetic)  # every column and its type kept
    from_csv = pd.read_csv(tmp_path / "csv" / "synthetic.csv")
    assert list(from_csv.columns) == list(table.columns) == list(a.synthetic.columns)
    assert [str(t) for t in a.synthetic.dtypes] == [str(t) for t in table.dtypes]
    schema = Schema.load(tmp_path / "pq" / "schema.json")
    from fedsynth.synthesis.schema import validate_frame

    typed_csv = validate_frame(from_csv, schema, source="csv")
    typed_pq = validate_frame(table, schema, source="parquet")
    assert [str(t) for t in typed_csv.dtypes] == [str(t) for t in typed_pq.dtypes]


def test_an_unknown_output_format_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not one of csv, parquet"):
        simulate(parties=_parties(), engine="local", out=tmp_path / "x", output_format="xlsx")
    assert not (tmp_path / "x").exists()


def test_partition_by_a_column_the_job_does_not_read(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 600
    site = np.array([f"hospital-{i:03d}" for i in range(n)])  # an id: the draft leaves it out
    a = rng.integers(0, 5, n)
    df = pd.DataFrame({"site": site, "a": a, "b": np.where(a > 2, "hi", "lo")})
    df.to_csv(tmp_path / "t.csv", index=False)
    res = simulate(data=tmp_path / "t.csv", n_parties=3, partition_spec="column:site",
                   engine="local", epsilon=2.0, rows=100, evaluate=False, holdout=0.0)
    assert res.schema.ignored == ["site"] and list(res.synthetic.columns) == ["a", "b"]
    assert res.metrics["job"]["parties"] == 3
