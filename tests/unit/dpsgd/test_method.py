"""`--method dpsgd` end to end (local engine, secure aggregation, 5 parties): it beats
independent columns at ε = 10, keeps the input's columns and types, and every party's ledger
holds its training steps as subsampled Gaussian events at exactly the job's ε; a coordinator
that changes the training plan mid-job is refused and nothing more is charged."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")
pytest.importorskip("opacus")

from fedsynth import progress
from fedsynth.client_node.ledger import Ledger
from fedsynth.coordinator import rounds as rounds_module
from fedsynth.coordinator.exchange import JobRefused
from fedsynth.coordinator.job import JobOptions
from fedsynth.evaluation.metrics import marginal_tvd
from fedsynth.protocols.secure_sum import RoundFailed
from fedsynth.simulations import datasets
from fedsynth.simulations.run import simulate
from fedsynth.synthesis import dpsgd
from fedsynth.synthesis.encoding import Grouping


def _parties(n: int = 5) -> tuple[list[pd.DataFrame], pd.DataFrame]:
    _, train, _, _ = datasets.benchmark_split("ISLR/Default", 0)
    idx = np.random.default_rng(0).permutation(len(train))
    return [train.iloc[i].reset_index(drop=True) for i in np.array_split(idx, n)], train


def _ledgers(work: Path) -> list[Ledger]:
    return [Ledger(p, 100.0, 1e-6) for p in sorted(work.rglob("ledger.jsonl"))]


def _independent(train: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({c: train[c].to_numpy()[rng.permutation(len(train))]
                         for c in train.columns})


@pytest.mark.slow
@pytest.mark.parametrize("train_plan", [
    {},  # the default plan: distributed noise, 100 full-batch steps
    # local noise at half the default rounds and hidden units: 2-way TVD 0.58-0.68 of
    # independent columns' over seven runs (its default plan: 0.56-0.59), in a third of the time
    {"noise": "local", "rounds": 5, "hidden": 64},
], ids=["distributed-default", "local"])
def test_dpsgd_beats_independent_columns_at_epsilon_10(tmp_path: Path,
                                                       train_plan: dict[str, Any]) -> None:
    progress.show("off")
    parties, train = _parties()
    res = simulate(parties=parties, epsilon=10.0, channel="secagg", holdout=0.0, engine="local",
                   evaluate=False, method="dpsgd", _shared={"work": str(tmp_path)},
                   options=JobOptions(train=train_plan))
    syn = res.synthetic
    # as many rows as the domain round's noisy count: within a few rows at this ε
    assert list(syn.columns) == list(train.columns) and abs(len(syn) - len(train)) < 50
    assert [str(t) for t in syn.dtypes] == [str(t) for t in train.dtypes]
    ours, independent = marginal_tvd(train, syn, way=2), marginal_tvd(train, _independent(train),
                                                                       way=2)
    assert ours < independent, (ours, independent)
    plan = dpsgd.TrainPlan(epsilon=10.0, delta=1e-6, **train_plan)
    assert res.privacy["training_plan"]["rounds"] == plan.rounds
    assert res.privacy["epsilon_spent"] == pytest.approx(10.0, rel=0.01)
    assert res.privacy["epsilon_spent"] <= 10.0
    ledgers = _ledgers(tmp_path)
    assert len(ledgers) == 5
    for ledger in ledgers:
        steps = [e for e in ledger.entries() if e["label"] == "train"]
        assert len(steps) == plan.rounds
        domain = [e for e in ledger.entries() if e["label"] == dpsgd.DOMAIN_STEP]
        assert [(e["count"], e["variance"]) for e in domain] == [
            (train.shape[1], plan.domain_variance(train.shape[1]))]
        assert {e["mechanism"] for e in steps} == {
            "skellam" if plan.distributed else "subsampled_gaussian"}
        assert ledger.spent() == pytest.approx(res.privacy["epsilon_spent"], rel=1e-9)


def _stretch_plan(req: Any) -> None:  # more rounds than the plan agreed
    plan = dpsgd.TrainPlan.from_json(req.options_json)
    req.options_json = dpsgd.TrainPlan(**{**plan.__dict__, "rounds": 50}).to_json()


def _regroup(req: Any) -> None:  # column 0's first two groups merged
    first = req.groupings[0]
    first.index[:] = [max(0, i - 1) for i in first.index]


@pytest.mark.parametrize(("change", "refusal"), [(_stretch_plan, "training plan changed"),
                                                 (_regroup, "domain changed")])
def test_a_plan_or_domain_changed_mid_job_is_refused(
        change: Callable[[Any], None], refusal: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    progress.show("off")
    parties, _ = _parties()
    real = rounds_module.Rounds.train
    calls = []

    def changed(self: rounds_module.Rounds, req: Any, length: int,
                release: dict[str, Any]) -> object:
        calls.append(1)
        if len(calls) == 2:  # the second round
            change(req)
        return real(self, req, length, release)

    monkeypatch.setattr(rounds_module.Rounds, "train", changed)
    with pytest.raises((JobRefused, RoundFailed), match=refusal):
        simulate(parties=parties, epsilon=3.0, channel="secagg", holdout=0.0, engine="local",
                 evaluate=False, method="dpsgd", _shared={"work": str(tmp_path)},
                 options=JobOptions(rows=100, train={"rounds": 3, "hidden": 16, "noise": "local",
                                                     "local_epochs": 0.2}))
    for ledger in _ledgers(tmp_path):  # the first round only: nothing charged for the second
        assert len([e for e in ledger.entries() if e["label"] == "train"]) == 1


def test_a_failure_in_training_is_charged_and_answered_with_a_zero_update(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The round is charged before the data is read, and whatever fails after that, the party
    answers as always (a zero update): an error is never a free question about the rows."""
    progress.show("off")
    parties, _ = _parties()

    def broken(*args: object, **kw: object) -> np.ndarray:
        raise MemoryError("simulated")

    monkeypatch.setattr(dpsgd, "train_local", broken)
    plan = {"rounds": 2, "hidden": 16, "noise": "local", "local_epochs": 0.2}
    res = simulate(parties=parties, epsilon=3.0, channel="secagg", holdout=0.0, engine="local",
                   evaluate=False, method="dpsgd", _shared={"work": str(tmp_path)},
                   options=JobOptions(rows=50, train=plan))
    assert len(res.synthetic) == 50
    assert res.privacy["training_plan"]["rounds"] == 2
    for ledger in _ledgers(tmp_path):
        assert len([e for e in ledger.entries() if e["label"] == "train"]) == 2


def test_the_trained_generator_is_saved_and_draws_the_same_rows_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """model.json and model.npz hold the generator (no pickle); `load_model` gives it back, and
    the same seed draws the job's own synthetic table; conditions are refused with the reason,
    an altered file or parameters that do not fit the plan are refused."""
    import json as jsonlib

    from fedsynth.synthesis.conditions import ConditionError
    from fedsynth.synthesis.model import load_model
    from fedsynth.synthesis.model_file import ModelFileError

    progress.show("off")
    parties, _ = _parties()
    out = tmp_path / "run"
    res = simulate(parties=parties, epsilon=3.0, channel="secagg", holdout=0.0, engine="local",
                   evaluate=False, method="dpsgd", out=out, seed=4,
                   options=JobOptions(seed=4, train={"rounds": 1, "hidden": 16, "noise": "local",
                                                     "local_epochs": 0.2}))
    doc = jsonlib.loads((out / "model.json").read_text())
    assert doc["format"] == "fedsynth-generator" and doc["plan"]["rounds"] == 1
    model = load_model(out)
    again = model.sample(len(res.synthetic), seed=4)
    pd.testing.assert_frame_equal(again, res.synthetic.reset_index(drop=True))
    with pytest.raises(ConditionError, match="marginal method"):
        model.sample(10, seed=0, conditions=["student=Yes"])
    # rows are herded (synthesis.herding) unless asked otherwise, or past herding.MAX_ROWS
    from fedsynth.synthesis import herding

    assert doc["sampler"] == "herded"
    drawn = model.sample(len(res.synthetic), seed=4, balanced=False)
    assert list(drawn.columns) == list(again.columns) and not drawn.equals(again)
    monkeypatch.setattr(herding, "MAX_ROWS", 10)
    pd.testing.assert_frame_equal(model.sample(20, seed=1), model.sample(20, seed=1,
                                                                       balanced=False))
    monkeypatch.undo()
    # a model saved before rows were herded draws as it did, so its seed gives its job's rows
    del doc["sampler"]
    (out / "model.json").write_text(jsonlib.dumps(doc))
    pd.testing.assert_frame_equal(load_model(out).sample(len(res.synthetic), seed=4), drawn)
    doc["sampler"] = "sorted"
    (out / "model.json").write_text(jsonlib.dumps(doc))
    with pytest.raises(ModelFileError, match="'sampler' must be one of"):
        load_model(out)

    doc["sampler"] = "herded"
    doc["plan"]["hidden"] = 32  # the parameters no longer fit the network
    (out / "model.json").write_text(jsonlib.dumps(doc))
    with pytest.raises(ModelFileError, match="parameters where its plan"):
        load_model(out)
    (out / "model.npz").write_bytes((out / "model.npz").read_bytes()[:-10] + b"0" * 10)
    with pytest.raises(ModelFileError, match="sha256"):
        load_model(out)


@pytest.mark.parametrize("attack", ["cheaper", "twice", "pairs", "cells"])
def test_a_coordinator_cannot_add_or_cheapen_counting_rounds_in_a_dpsgd_job(
        attack: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan's noise multiplier prices one domain round of one-way counts at the plan's
    variance. A domain round at a tenth of that variance, a second one, one asking for pairs,
    or one counting other cells than the plan names is refused (before training: nothing but
    that round is charged), so no party spends more than the job's ε (a review found ε = 3
    jobs reaching 13.6 before this check): the party checks the round against the plan sent
    with it, before anything is released."""
    progress.show("off")
    parties, _ = _parties()
    real = rounds_module.Rounds.measure

    def crafted(self: rounds_module.Rounds, label: str, groupings: list,
                cliques: list, **kw: str) -> object:
        if attack == "cheaper":
            self.variances[label] /= 10
        if attack == "pairs":
            cliques = [*cliques, (0, 1)]
        if attack == "cells":  # fine cells where the plan counts runs of bins
            groupings = [Grouping.identity(len(g.index)) for g in groupings]
        out = real(self, label, groupings, cliques, **kw)
        if attack == "twice":
            out = real(self, label, groupings, cliques, **kw)
        return out

    monkeypatch.setattr(rounds_module.Rounds, "measure", crafted)
    with pytest.raises((JobRefused, RoundFailed),
                       match=r"where the training plan prices|one domain round|nothing else"):
        simulate(parties=parties, epsilon=3.0, channel="secagg", holdout=0.0, engine="local",
                 evaluate=False, method="dpsgd", _shared={"work": str(tmp_path)},
                 options=JobOptions(train={"rounds": 2, "hidden": 16, "noise": "local",
                                           "local_epochs": 0.2,
                                           "domain_bins": 64 if attack == "cells" else 0}))
    for ledger in _ledgers(tmp_path):  # the plan's own domain round at most, nothing else
        labels = [e["label"] for e in ledger.entries()]
        assert labels == ([dpsgd.DOMAIN_STEP] if attack == "twice" else [])
        assert ledger.spent() < 3.0


def test_a_plan_whose_domain_round_alone_spends_the_budget_is_refused_before_any_release(
        tmp_path: Path) -> None:
    progress.show("off")
    parties, _ = _parties()
    with pytest.raises(ValueError, match="lower domain_share"):
        simulate(parties=parties, epsilon=20.0, channel="secagg", holdout=0.0, engine="local",
                 evaluate=False, method="dpsgd", _shared={"work": str(tmp_path)},
                 options=JobOptions(train={"rounds": 1, "hidden": 16, "noise": "local",
                                           "local_epochs": 0.2, "domain_share": 0.5}))
    assert all(not ledger.entries() for ledger in _ledgers(tmp_path))
