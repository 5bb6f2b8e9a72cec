"""The analyst's job file: a spec naming the consortium's parties with the consortium's keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsynth.coordinator.job_file import JobFileError, load_job
from fedsynth.crypto.keyfiles import CONSORTIUM, Consortium, init_consortium
from fedsynth.simulations import datasets
from fedsynth.synthesis.schema import Schema, infer_schema


@pytest.fixture
def consortium(tmp_path: Path) -> Consortium:
    init_consortium(tmp_path / "c", "127.0.0.1:8000", ["a", "b", "c"])
    df, _ = datasets.load("ISLR/Default")
    (tmp_path / "schema.json").write_text(infer_schema(df).to_json())
    return Consortium.load(tmp_path / "c" / CONSORTIUM)


def _job(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "job.toml"
    p.write_text(text)
    return p


def test_a_job_file_gives_the_spec_with_the_consortiums_keys(tmp_path: Path,
                                                               consortium: Consortium) -> None:
    job = load_job(_job(tmp_path, 'schema = "schema.json"\nparties = ["a", "c"]\n'
                                  'epsilon = 1.5\nrows = 100\nevaluate = true\n'
                                  'target = "default"\n'), consortium)
    assert job.spec.party_names == ("a", "c") and job.spec.epsilon == 1.5
    assert job.spec.identity_keys == (consortium.identities["a"], consortium.identities["c"])
    assert job.spec.threshold == 2 and job.options.rows == 100
    assert job.options.evaluate is not None and job.options.evaluate.target == "default"
    assert isinstance(job.spec.schema, Schema)


def test_every_problem_is_listed(tmp_path: Path, consortium: Consortium) -> None:
    with pytest.raises(JobFileError) as info:
        load_job(_job(tmp_path, 'schema = "none.json"\nparties = ["a", "zed"]\nepsilon = 0\n'
                                'delta = 3\nrows = -1\nflavour = 1\n'), consortium)
    text = str(info.value)
    for needle in ("unknown key 'flavour'", "none.json", "['zed'] are not in consortium.toml",
                   "'epsilon' must be a positive number", "'delta' must lie strictly",
                   "'rows' must be a whole number"):
        assert needle in text, needle


def test_an_insecure_threshold_is_refused(tmp_path: Path, consortium: Consortium) -> None:
    with pytest.raises(JobFileError, match="threshold"):
        load_job(_job(tmp_path, 'schema = "schema.json"\nparties = ["a", "b", "c"]\n'
                                'epsilon = 1\nthreshold = 1\n'), consortium)


def test_an_he_job_names_its_key_holder(tmp_path: Path) -> None:
    init_consortium(tmp_path / "c", "127.0.0.1:8000", ["a", "b", "c"], ["kh"])
    df, _ = datasets.load("ISLR/Default")
    (tmp_path / "schema.json").write_text(infer_schema(df).to_json())
    cons = Consortium.load(tmp_path / "c" / CONSORTIUM)
    base = 'schema = "schema.json"\nparties = ["a", "b", "c"]\nepsilon = 1.0\n'
    job = load_job(_job(tmp_path, base + 'channel = "he"\n'), cons)  # the only key holder
    assert job.key_holder == "kh" and job.spec.key_holder == cons.key_holders["kh"]
    job = load_job(_job(tmp_path, base + 'channel = "he"\nkey_holder = "kh"\n'), cons)
    assert job.spec.channel == "he" and job.key_holder == "kh"
    assert load_job(_job(tmp_path, base), cons).spec.key_holder == b""
    with pytest.raises(JobFileError, match="names one of the key holders"):
        load_job(_job(tmp_path, base + 'channel = "he"\nkey_holder = "a"\n'), cons)
    with pytest.raises(JobFileError, match="only the he channel has a key holder"):
        load_job(_job(tmp_path, base + 'key_holder = "kh"\n'), cons)


def test_an_he_job_without_key_holders_in_the_consortium(tmp_path: Path,
                                                          consortium: Consortium) -> None:
    with pytest.raises(JobFileError, match="none: add one with keys init"):
        load_job(_job(tmp_path, 'schema = "schema.json"\nparties = ["a", "b", "c"]\n'
                                'epsilon = 1.0\nchannel = "he"\n'), consortium)


def test_a_dpsgd_job_takes_its_training_plan_and_needs_rows_without_a_domain_round(
        tmp_path: Path, consortium: Consortium) -> None:
    pytest.importorskip("torch")
    base = 'schema = "schema.json"\nparties = ["a", "b", "c"]\nepsilon = 3\nmethod = "dpsgd"\n'
    job = load_job(_job(tmp_path, base + 'rows = 500\n[train]\nrounds = 4\nhidden = 32\n'),
                   consortium)
    assert job.spec.method == "dpsgd" and job.options.rows == 500
    assert job.options.train == {"rounds": 4, "hidden": 32}
    assert load_job(_job(tmp_path, base), consortium).options.rows is None  # the noisy count
    with pytest.raises(JobFileError) as info:
        load_job(_job(tmp_path, base + '[train]\nrounds = 1.5\ndomain_share = 0\n'), consortium)
    assert "'rows' is needed" in str(info.value)
    assert "rounds must be a whole number" in str(info.value)
    with pytest.raises(JobFileError, match="no noise multiplier meets"):  # found at load
        load_job(_job(tmp_path, base.replace("epsilon = 3", "epsilon = 0.001")
                      + '[train]\nnoise = "local"\n'), consortium)
    with pytest.raises(JobFileError, match="too much noise for the step's integer grid"):
        load_job(_job(tmp_path, base.replace("epsilon = 3", "epsilon = 0.05")
                      + '[train]\nnoise = "distributed"\nrounds = 2000\n'), consortium)
    with pytest.raises(JobFileError, match="only for method"):
        load_job(_job(tmp_path, base.replace('"dpsgd"', '"marginals"') + '[train]\nrounds = 2\n'),
                 consortium)


def test_the_synthetic_table_format_is_csv_unless_the_job_says_parquet(
        tmp_path: Path, consortium: Consortium) -> None:
    base = 'schema = "schema.json"\nparties = ["a", "b"]\nepsilon = 1\n'
    assert load_job(_job(tmp_path, base), consortium).output_format == "csv"
    assert load_job(_job(tmp_path, base + 'format = "parquet"\n'),
                    consortium).output_format == "parquet"
    with pytest.raises(JobFileError, match="'format' must be one of 'csv', 'parquet'"):
        load_job(_job(tmp_path, base + 'format = "xlsx"\n'), consortium)
