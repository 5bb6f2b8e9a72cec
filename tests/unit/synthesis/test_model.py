"""The saved synthesis model: files without pickle, conditioned and re-weighted sampling that
follows the model's exact distributions (checked against mbi's variable elimination)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsynth import progress
from fedsynth.coordinator.job import JobOptions
from fedsynth.simulations import datasets
from fedsynth.simulations.run import simulate
from fedsynth.synthesis.conditions import ConditionError, group_share
from fedsynth.synthesis.encoding import Encoding, decode_groups, decode_weights
from fedsynth.synthesis.estimation import column_marginal, exact_conditional, sample_codes
from fedsynth.synthesis.model import SynthesisModel
from fedsynth.synthesis.model_file import ModelFileError

N = 20_000  # rows per checked draw


def _table() -> pd.DataFrame:
    """3,000 rows of ISLR/Default with columns of every other kind: a grouped integer (age:
    62 values, 31 model groups), a binned integer (limit), dates, and missing incomes."""
    df, _ = datasets.load("ISLR/Default")
    df = df.sample(3000, random_state=0).reset_index(drop=True)
    rng = np.random.default_rng(0)
    young = df["student"] == "Yes"
    df["age"] = np.where(young, rng.integers(18, 30, len(df)), rng.integers(25, 80, len(df)))
    df["limit"] = (df["balance"] * 20 + rng.integers(0, 5000, len(df))).round().astype(int)
    df["opened"] = (pd.Timestamp("2015-01-01") + pd.to_timedelta(
        rng.integers(0, 1500, len(df)), unit="D")).strftime("%Y-%m-%d")
    df.loc[rng.random(len(df)) < 0.1, "income"] = np.nan
    return df


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[SynthesisModel, Path]:
    progress.show("off")
    df = _table()
    out = tmp_path_factory.mktemp("model") / "run"
    res = simulate(parties=[df.iloc[:1500], df.iloc[1500:]], engine="local", evaluate=False,
                   epsilon=3.0, holdout=0.0, out=out, options=JobOptions(seed=1, iters=300))
    assert res.model is not None
    return res.model, out


def _col(model: SynthesisModel, name: str) -> int:
    return model.schema.names.index(name)


def _groups(model: SynthesisModel, df: pd.DataFrame, name: str) -> np.ndarray:
    """The model group of each row's value of column `name`."""
    j = _col(model, name)
    fine = Encoding.from_schema(model.schema).codecs[j].encode(df[name])
    return model.groupings[j].index[fine]


def _assert_close(empirical_groups: np.ndarray, exact: np.ndarray) -> None:
    """Each group's share within 4.5 standard errors of the exact probability."""
    n = len(empirical_groups)
    emp = np.bincount(empirical_groups, minlength=len(exact)) / n
    tol = 4.5 * np.sqrt(exact * (1 - exact) / n) + 2e-3
    assert np.all(np.abs(emp - exact) <= tol), np.c_[emp, exact, tol]


def _shares(model: SynthesisModel, name: str, share: np.ndarray) -> np.ndarray:
    j = _col(model, name)
    enc = Encoding.from_schema(model.schema)
    w = decode_weights(enc.codecs[j], model.groupings[j], model.fine_counts[j], model.floor)
    return group_share(w, model.groupings[j], share)


def test_saved_model_draws_the_same_rows_as_the_job(run: tuple[SynthesisModel, Path]) -> None:
    model, out = run
    assert {"model.json", "model.npz"} <= {p.name for p in out.iterdir()}
    loaded = SynthesisModel.load(out)
    job_rows = (out / "synthetic.csv").read_text()
    again = loaded.sample(len(pd.read_csv(out / "synthetic.csv")), seed=1)
    assert again.to_csv(index=False) == job_rows  # the job drew with seed 1
    assert loaded.sample(300, seed=5).equals(model.sample(300, seed=5))
    assert not loaded.sample(300, seed=6).equals(model.sample(300, seed=5))


def test_saved_files_hold_no_pickle(run: tuple[SynthesisModel, Path]) -> None:
    _, out = run
    with np.load(out / "model.npz", allow_pickle=False) as npz:
        assert all(npz[k].dtype.kind in "fiu" for k in npz.files)
    doc = json.loads((out / "model.json").read_text())
    assert doc["format"] == "fedsynth-model" and doc["version"] == 1


def test_plain_decoding_is_the_jobs_decoding(run: tuple[SynthesisModel, Path]) -> None:
    model, _ = run
    codes = sample_codes(model.mrf, 2000, seed=3)
    enc = Encoding.from_schema(model.schema)
    ours = model._decode(enc, codes, {}, np.random.default_rng(9))
    theirs = decode_groups(enc, model.groupings, codes, model.fine_counts,
                           np.random.default_rng(9), floor=model.floor)
    pd.testing.assert_frame_equal(ours, theirs)


def test_marginals_of_a_draw_match_the_model(run: tuple[SynthesisModel, Path]) -> None:
    model, out = run
    draw = SynthesisModel.load(out).sample(N, seed=2)
    for name in ("default", "age", "income"):
        exact = exact_conditional(model.mrf, [_col(model, name)], {})
        _assert_close(_groups(model, draw, name), exact)


def test_category_condition_follows_the_exact_conditional(
        run: tuple[SynthesisModel, Path]) -> None:
    model, _ = run
    draw = model.sample(N, seed=4, conditions=["student=Yes"])
    assert (draw["student"] == "Yes").all()
    yes = model.schema["student"].categories.index("Yes")
    conditioned = model.conditioned(conditions={"student": "Yes"})
    for name in ("default", "balance", "age"):
        exact = exact_conditional(model.mrf, [_col(model, name)], {_col(model, "student"): yes})
        _assert_close(_groups(model, draw, name), exact)
        np.testing.assert_allclose(column_marginal(conditioned, _col(model, name)), exact,
                                   atol=1e-9)


def test_range_condition_weights_partial_groups_and_decodes_inside(
        run: tuple[SynthesisModel, Path]) -> None:
    model, _ = run
    lo, hi = 700.5, 1203.25  # cuts model groups of balance
    draw = model.sample(N, seed=5, conditions={"balance": (lo, hi)})
    assert draw["balance"].between(lo, hi).all()
    j, s = _col(model, "balance"), _col(model, "student")
    codec = Encoding.from_schema(model.schema).codecs[j]
    share = np.zeros(codec.size)
    edges = codec.edges
    assert edges is not None
    width = np.diff(edges)
    share[1:1 + len(width)] = np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo),
                                      0, None) / width
    g = _shares(model, "balance", share)
    assert ((g > 0) & (g < 1)).any()  # some groups lie partly inside the range
    joint = exact_conditional(model.mrf, [s, j], {}) * g[None, :]
    _assert_close(_groups(model, draw, "student"), joint.sum(axis=1) / joint.sum())
    _assert_close(_groups(model, draw, "balance"), joint.sum(axis=0) / joint.sum())


def test_several_conditions_all_hold(run: tuple[SynthesisModel, Path]) -> None:
    model, _ = run
    draw = model.sample(3000, seed=6, conditions=["student=No", "age=30..45", "income=",
                                                  "opened=2016-01-01..2016-12-31",
                                                  "limit=..20000"])
    assert (draw["student"] == "No").all() and draw["age"].between(30, 45).all()
    assert draw["income"].isna().all() and (draw["limit"] <= 20000).all()
    assert draw["opened"].between(pd.Timestamp("2016-01-01"), pd.Timestamp("2016-12-31")).all()
    plain = model.sample(10, seed=6)
    assert list(draw.dtypes) == list(plain.dtypes)


def test_one_value_of_a_grouped_integer_column(run: tuple[SynthesisModel, Path]) -> None:
    model, _ = run
    j = _col(model, "age")
    assert model.groupings[j].size < Encoding.from_schema(model.schema).codecs[j].size
    draw = model.sample(5000, seed=7, conditions={"age": 27})
    assert (draw["age"] == 27).all()


def test_class_ratio_hits_the_share_and_keeps_the_conditionals(
        run: tuple[SynthesisModel, Path]) -> None:
    model, _ = run
    draw = model.sample(N, seed=8, class_ratio=["default=Yes:0.5"])
    assert abs((draw["default"] == "Yes").mean() - 0.5) < 0.01
    d, yes = _col(model, "default"), model.schema["default"].categories.index("Yes")
    rows = draw[draw["default"] == "Yes"]
    reweighted = model.conditioned(class_ratio=["default=Yes:0.5"])
    assert column_marginal(reweighted, d)[yes] == pytest.approx(0.5, abs=1e-9)
    for name in ("student", "balance"):
        j = _col(model, name)
        exact = exact_conditional(model.mrf, [j], {d: yes})
        _assert_close(_groups(model, rows, name), exact)
        for cls in (0, 1):  # the model's P(column | default) exactly, for both classes
            np.testing.assert_allclose(exact_conditional(reweighted, [j], {d: cls}),
                                       exact_conditional(model.mrf, [j], {d: cls}), atol=1e-9)


def test_class_ratio_with_a_condition(run: tuple[SynthesisModel, Path]) -> None:
    model, _ = run
    draw = model.sample(5000, seed=9, conditions=["student=Yes"],
                        class_ratio={"default": {"Yes": 0.3}})
    assert (draw["student"] == "Yes").all()
    assert abs((draw["default"] == "Yes").mean() - 0.3) < 0.02


@pytest.mark.parametrize(("conditions", "needle"), [
    (["default=Maybe"], "'Maybe' is not a category of column 'default'"),
    (["colour=red"], "no such column"),
    (["balance=900..100"], "the range is empty"),
    (["balance=5000.."], "outside column 'balance''s values"),
    (["balance=250"], "one number has no probability"),
    (["balance=abc"], "'abc' is not a number"),
    (["opened=yesterday"], "not an ISO date"),
    (["student="], "has no missing values"),
    (["student=Yes", "student=No"], "no value of column 'student' satisfies it"),
    (["balance"], "write COLUMN=VALUE"),
])
def test_impossible_conditions_are_refused_naming_column_and_value(
        run: tuple[SynthesisModel, Path], conditions: list[str], needle: str) -> None:
    model, _ = run
    with pytest.raises(ConditionError, match=r"condition|COLUMN") as exc:
        model.sample(10, seed=0, conditions=conditions)
    assert needle in str(exc.value)


@pytest.mark.parametrize(("ratio", "needle"), [
    (["balance=3:0.5"], "give a categorical or discrete column"),
    (["default=Yes:1.5"], "must be between 0 and 1"),
    (["default=Yes"], "COLUMN=VALUE:SHARE"),
    (["default=Yes:0.5", "student=Yes:0.5"], "one column"),
    (["default=Yes:0.6", "default=No:0.6"], "add up to 1.2"),
])
def test_bad_class_ratios_are_refused(run: tuple[SynthesisModel, Path], ratio: list[str],
                                      needle: str) -> None:
    model, _ = run
    with pytest.raises(ConditionError, match="class ratio") as exc:
        model.sample(10, seed=0, class_ratio=ratio)
    assert needle in str(exc.value)


def test_a_value_the_model_gives_no_probability_is_refused(
        run: tuple[SynthesisModel, Path]) -> None:
    model, _ = run
    j = _col(model, "age")
    counts = [c.copy() for c in model.fine_counts]
    # an age that shares its model group with neighbours (which ages do depends on the job's
    # noise), given counts above the floor
    index = model.groupings[j].index
    shared = np.flatnonzero(np.bincount(index)[index] > 1)
    assert len(shared) > 0
    fine = int(shared[len(shared) // 2])
    age = int(model.schema["age"].lower or 0) + fine  # one code per whole age from the lower bound
    group = index == index[fine]
    counts[j][group] = model.floor + 100.0  # (the noise may have left them all below it)
    counts[j][fine] = -50.0
    altered = dataclasses.replace(model, fine_counts=counts)
    with pytest.raises(ConditionError, match=f"age={age}: zero probability under the model"):
        altered.sample(10, seed=0, conditions=[f"age={age}"])


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["balance", "limit", "opened"]), st.floats(0, 1), st.floats(0.02, 0.6))
def test_drawn_values_stay_inside_any_range(run: tuple[SynthesisModel, Path], name: str,
                                            start: float, length: float) -> None:
    model, _ = run
    col = model.schema[name]
    assert col.lower is not None and col.upper is not None
    a = col.lower + start * (col.upper - col.lower)
    b = min(a + length * (col.upper - col.lower), col.upper)
    if name == "opened":
        ends = [pd.Timestamp(0) + pd.Timedelta(days=float(np.ceil(x))) for x in (a, b)]
        lo, hi = ends
        spec = f"{lo:%Y-%m-%d}..{hi:%Y-%m-%d}"
    else:
        lo, hi = a, b
        spec = f"{a!r}..{b!r}"
    try:
        draw = model.sample(500, seed=1, conditions=[f"{name}={spec}"])
    except ConditionError as exc:  # a narrow range where the model has no mass
        point = a == b and col.kind == "continuous"  # one number of a continuous column
        assert "zero probability" in str(exc) or "no whole number" in str(exc) or (
            point and "one number has no probability" in str(exc))
        return
    assert draw[name].between(lo, hi).all()


def _rehash(out: Path) -> None:
    doc = json.loads((out / "model.json").read_text())
    doc["model_npz_sha256"] = hashlib.sha256((out / "model.npz").read_bytes()).hexdigest()
    (out / "model.json").write_text(json.dumps(doc))


def _edit_json(key: str, value: object) -> Callable[[Path], None]:
    def edit(out: Path) -> None:
        doc = json.loads((out / "model.json").read_text())
        doc[key] = value
        (out / "model.json").write_text(json.dumps(doc))
    return edit


def _edit_npz(name: str, value: np.ndarray | Callable[[np.ndarray], np.ndarray]
              ) -> Callable[[Path], None]:
    def edit(out: Path) -> None:
        with np.load(out / "model.npz") as npz:
            arrays = {k: npz[k] for k in npz.files}
        arrays[name] = value(arrays[name]) if callable(value) else value
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        (out / "model.npz").write_bytes(buf.getvalue())
        _rehash(out)
    return edit


def _flip_byte(out: Path) -> None:
    data = bytearray((out / "model.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / "model.npz").write_bytes(bytes(data))


def _other_schema(out: Path) -> None:
    text = (out / "schema.json").read_text().replace('"Yes"', '"Y"', 1)
    (out / "schema.json").write_text(text)


def _object_array(out: Path) -> None:
    with np.load(out / "model.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["grouping_0"] = np.array([{"a": 1}, None], dtype=object)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    (out / "model.npz").write_bytes(buf.getvalue())
    _rehash(out)


@pytest.mark.parametrize(("tamper", "file", "needle"), [
    (_flip_byte, "model.npz", "sha256 is not the one model.json records"),
    (_edit_json("version", 0), "model.json", "format version 0; this fedsynth reads version 1"),
    (_edit_json("format", "pickle"), "model.json", "not a fedsynth model"),
    (_edit_json("total", -3), "model.json", "'total' must be a finite number above 0"),
    (_other_schema, "model.json", "saved with another schema"),
    (_object_array, "model.npz", "not a numeric array file"),
    # NaN in the potential's own shape (its clique depends on the selection, i.e. the noise)
    (_edit_npz("potential_0", lambda a: np.full_like(a, np.nan)), "model.npz",
     "potential_0: must be finite"),
    (_edit_npz("grouping_2", np.arange(5)), "model.npz", "column 'balance'"),
    (_edit_npz("fine_counts_0", np.array([np.nan, 1.0])), "model.npz", "finite numbers"),
    (lambda out: (out / "model.npz").unlink(), "run", "model.npz missing"),
    (lambda out: (out / "model.json").write_text("{"), "model.json", "not valid JSON"),
])
def test_altered_or_mismatched_files_are_refused_naming_the_file(
        run: tuple[SynthesisModel, Path], tmp_path: Path, tamper: Callable[[Path], None],
        file: str, needle: str) -> None:
    _, out = run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    tamper(copy)
    with pytest.raises(ModelFileError) as exc:
        SynthesisModel.load(copy)
    assert str(copy / file if file != "run" else copy) in str(exc.value)
    assert needle in str(exc.value)


def test_save_and_load_round_trip(run: tuple[SynthesisModel, Path], tmp_path: Path) -> None:
    model, _ = run
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "model.json", "model.npz", "schema.json"]
    again = SynthesisModel.load(tmp_path / "m")
    assert again.sample(200, seed=3, conditions=["student=Yes"]).equals(
        model.sample(200, seed=3, conditions=["student=Yes"]))
