"""Whole marginal jobs over LocalTransport: dropouts, thresholds, refusals and tampering."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import fedsynth.coordinator.rounds as job_module
import fedsynth.simulations.run as run_module
from fedsynth.client_node.ledger import Ledger
from fedsynth.client_node.node import Node, NodePolicy
from fedsynth.coordinator.exchange import JobRefused
from fedsynth.coordinator.job import JobOptions, JobResult, run_job
from fedsynth.evaluation.metrics import marginal_tvd
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.protocols.secure_sum import RoundFailed
from fedsynth.protocols.spec import JobSpec
from fedsynth.simulations import datasets, partition
from fedsynth.simulations.local import LocalTransport, Tamper
from fedsynth.simulations.parties import job_spec, make_identities, write_parties
from fedsynth.simulations.run import SimulationResult, simulate
from fedsynth.synthesis.schema import infer_schema

EPS, DELTA = 1.0, 1e-6
OPTIONS = JobOptions(seed=0, iters=200)  # fewer estimation steps: these tests check the protocol


def _pooled(n: int = 1500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return pd.DataFrame({
        "region": rng.choice(["north", "south", "east"], n),
        "k": rng.integers(0, 10, n),
        "x": x,
        "y": np.where(x + 0.3 * rng.normal(size=n) > 0, "yes", "no"),
    })


POOLED = _pooled()
SCHEMA = infer_schema(POOLED)
TABLES = partition.split(POOLED, 5, "iid", target=None, seed=0)
IDS = make_identities(5)


def _spec(threshold: int = 4) -> JobSpec:
    return job_spec(SCHEMA, IDS, epsilon=EPS, delta=DELTA, threshold=threshold)


def _policies(tmp: Path, spec: JobSpec, tables: list[pd.DataFrame] | None = None,
              fail: dict[int, int] | None = None, seeded: bool = False) -> dict[int, NodePolicy]:
    """Party folders exactly as simulate() writes them, with injected dropouts (and, for tests
    that compare two runs, seeded noise, which is not private)."""
    tmp.mkdir(parents=True, exist_ok=True)
    pols = write_parties(tmp, tables or TABLES, spec, IDS)
    return {p: dataclasses.replace(pol, fail_at_round=(fail or {}).get(p),
                                   noise_seed=p if seeded else None)
            for p, pol in pols.items()}


def _run(tmp: Path, spec: JobSpec, *, fail: dict[int, int] | None = None,
         tables: list[pd.DataFrame] | None = None, tamper: Tamper | None = None,
         seeded: bool = False) -> tuple[JobResult, dict[int, NodePolicy]]:
    pols = _policies(tmp, spec, tables, fail, seeded)
    transport = LocalTransport({p: Node(pol) for p, pol in pols.items()}, tamper=tamper)
    return run_job(transport, spec, OPTIONS), pols


def _ledger(pol: NodePolicy) -> Ledger:
    return Ledger(pol.ledger_path, pol.epsilon_cap, pol.delta)


def _contributors(res: JobResult | SimulationResult) -> list[list[int]]:
    return [r["contributors"] for r in res.privacy["rounds"]]


# --- the happy path on a bundled dataset -------------------------------------------------------


@pytest.fixture(scope="module")
def default_run() -> SimulationResult:
    return simulate(dataset="ISLR/Default", engine="local", evaluate=False, epsilon=EPS,
                    options=OPTIONS)


def test_simulate_local_engine_on_bundled_dataset(default_run: SimulationResult) -> None:
    res = default_run
    assert list(res.synthetic.columns) == ["default", "student", "balance", "income"]
    # default size: the noisy count of the ~8000 training rows
    assert 7000 < len(res.synthetic) < 9000
    assert set(res.synthetic["student"]) <= {"Yes", "No"}
    assert res.privacy["epsilon_spent"] <= EPS
    per_party = res.privacy["epsilon_spent_per_party_ledger"]
    assert sorted(per_party) == ["1", "2", "3", "4", "5"]
    for spent in per_party.values():  # each party's own ledger agrees with the coordinator
        assert spent == pytest.approx(res.privacy["epsilon_spent"], rel=1e-9)
        assert spent <= EPS * (1 + 1e-9)
    assert _contributors(res) == [[1, 2, 3, 4, 5]] * 3


def test_local_job_beats_independent_columns_on_default(default_run: SimulationResult) -> None:
    """Fidelity guard: 2-way TVD against the pooled table must beat shuffled columns."""
    pooled, _ = datasets.load("ISLR/Default")
    rng = np.random.default_rng(0)
    independent = pd.DataFrame({c: pooled[c].to_numpy()[rng.permutation(len(pooled))]
                                for c in pooled.columns})
    baseline = marginal_tvd(pooled, independent, way=2)  # about 0.10
    assert marginal_tvd(pooled, default_run.synthetic, way=1) < 0.05
    assert marginal_tvd(pooled, default_run.synthetic, way=2) < baseline


# --- dropouts ----------------------------------------------------------------------------------


def test_job_survives_one_dropout_above_threshold(tmp_path: Path) -> None:
    res, pols = _run(tmp_path, _spec(threshold=4), fail={3: 2})
    assert list(res.synthetic.columns) == SCHEMA.names
    assert 1200 < len(res.synthetic) < 1800  # the noisy count of the 1500 real rows
    assert res.privacy["epsilon_spent"] <= EPS
    assert res.privacy["epsilon_requested"] == EPS
    assert _contributors(res) == [[1, 2, 3, 4, 5], [1, 2, 4, 5], [1, 2, 4, 5]]
    assert res.privacy["rounds"][2]["parties_asked"] == [1, 2, 4, 5]
    # the dropped party spent only round 1; the others spent what the coordinator accounted
    assert len(_ledger(pols[3]).entries()) == 1
    asked = res.privacy["epsilon_asked_of_party"]
    assert asked["3"] < asked["1"]
    for p in (1, 2, 4, 5):
        assert len(_ledger(pols[p]).entries()) == 3
        assert _ledger(pols[p]).spent() == pytest.approx(res.privacy["epsilon_spent"], rel=1e-9)
    # synthetic values stay inside the public domain
    assert set(res.synthetic["region"]) <= {"north", "south", "east"}
    assert res.synthetic["k"].between(0, 9).all()
    assert res.synthetic["x"].between(SCHEMA["x"].lower, SCHEMA["x"].upper).all()


def test_two_dropouts_below_threshold_stop_the_job(tmp_path: Path) -> None:
    with pytest.raises(RoundFailed, match=r"3 of 5 parties replied, below the threshold t=4"):
        _run(tmp_path, _spec(threshold=4), fail={2: 2, 4: 2})


def test_failed_simulation_writes_no_output_folder(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    real = run_module.write_parties

    def failing(*args: Any, **kw: Any) -> dict[int, NodePolicy]:
        pols = real(*args, **kw)
        return {p: dataclasses.replace(pol, fail_at_round=2 if p in (2, 4) else None)
                for p, pol in pols.items()}

    monkeypatch.setattr(run_module, "write_parties", failing)
    out = tmp_path / "results" / "run"
    with pytest.raises(RoundFailed):
        simulate(parties=TABLES, engine="local", evaluate=False, threshold=4, holdout=0.0,
                 out=out)
    assert not out.exists()
    leftovers = list(out.parent.iterdir()) if out.parent.exists() else []
    assert leftovers == []  # no half-written temporary folder either


def test_dropout_at_first_round_with_threshold_met(tmp_path: Path) -> None:
    res, pols = _run(tmp_path, _spec(threshold=4), fail={5: 1})
    assert _contributors(res) == [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]]
    assert _ledger(pols[5]).entries() == []
    assert res.privacy["epsilon_spent"] <= EPS


# --- refusals ----------------------------------------------------------------------------------


def test_empty_party_refuses_the_job(tmp_path: Path) -> None:
    tables = [*TABLES[:2], TABLES[2].iloc[:0], *TABLES[3:]]
    with pytest.raises(JobRefused) as info:
        _run(tmp_path, _spec(), tables=tables)
    assert set(info.value.refusals) == {3}
    text = str(info.value)
    assert "party 3 refused" in text and "no rows" in text
    for p in range(1, 6):  # refused at setup: nobody released anything
        assert Ledger(tmp_path / f"party-{p}" / "ledger.jsonl", EPS, DELTA).entries() == []


def test_party_with_too_small_cap_refuses_the_job(tmp_path: Path) -> None:
    spec = _spec()
    pols = _policies(tmp_path, spec)
    pols[4] = dataclasses.replace(pols[4], epsilon_cap=0.5)
    with pytest.raises(JobRefused) as info:
        run_job(LocalTransport({p: Node(pol) for p, pol in pols.items()}), spec)
    assert set(info.value.refusals) == {4}
    assert "party 4 refused" in str(info.value) and "cap" in str(info.value)


# --- tampering ---------------------------------------------------------------------------------


def _tamper_measure(parties: tuple[int, ...], round_id: int,
                    edit: Callable[[bytes], bytes]) -> Tamper:
    """Apply `edit` to the measure replies of `parties` in round `round_id`."""

    def tamper(p: int, reply: bytes) -> bytes | None:
        env = pb.Envelope()
        env.ParseFromString(reply)
        if (p in parties and env.WhichOneof("body") == "measure_reply"
                and env.measure_reply.round == round_id):
            return edit(reply)
        return reply

    return tamper


def _flip_at(offset: int) -> Callable[[bytes], bytes]:
    def edit(data: bytes) -> bytes:
        b = bytearray(data)
        b[offset] ^= 0xFF
        return bytes(b)

    return edit


@pytest.mark.parametrize("edit", [
    pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
    pytest.param(_flip_at(1), id="flipped-header"),  # inside the version/job id fields
    pytest.param(lambda b: b"", id="emptied"),
])
def test_tampered_reply_counts_as_a_dropout(tmp_path: Path,
                                            edit: Callable[[bytes], bytes]) -> None:
    res, _ = _run(tmp_path, _spec(threshold=4), tamper=_tamper_measure((2,), 2, edit))
    assert _contributors(res) == [[1, 2, 3, 4, 5], [1, 3, 4, 5], [1, 3, 4, 5]]
    assert res.privacy["epsilon_spent"] <= EPS


def test_tampered_replies_below_threshold_stop_the_job(tmp_path: Path) -> None:
    with pytest.raises(RoundFailed, match="below the threshold"):
        _run(tmp_path, _spec(threshold=4),
             tamper=_tamper_measure((1, 2), 1, lambda b: b[:-3]))


class _StopAfterRoundOne(Exception):
    """Raised by the spy once round 1's total is in hand: the rest of the job is not needed."""


def _round_one_total(tmp: Path, monkeypatch: pytest.MonkeyPatch, tamper: Tamper | None = None,
                     seeded: bool = True) -> tuple[list[int], np.ndarray] | None:
    """(contributors, total) that secure_sum returned for round 1, or None if it raised."""
    seen: list[tuple[list[int], np.ndarray]] = []
    real = job_module.secure_sum

    def spy(*args: Any, **kw: Any) -> Any:
        res = real(*args, **kw)
        seen.append((list(res.contributors), res.total.copy()))
        raise _StopAfterRoundOne

    with monkeypatch.context() as m:
        m.setattr(job_module, "secure_sum", spy)
        # an error is acceptable, as long as no wrong total was produced before it
        with contextlib.suppress(_StopAfterRoundOne, RoundFailed, JobRefused, ValueError):
            _run(tmp, _spec(threshold=4), tamper=tamper, seeded=seeded)
    return seen[0] if seen else None


def _flip_masked_bit(p: int, reply: bytes) -> bytes:
    """One bit of party 2's round-1 masked vector (first cell, bit 28)."""
    env = pb.Envelope()
    env.ParseFromString(reply)
    if p == 2 and env.WhichOneof("body") == "measure_reply" and env.measure_reply.round == 1:
        masked = bytearray(env.measure_reply.masked)
        masked[3] ^= 0x10
        env.measure_reply.masked = bytes(masked)
        return env.SerializeToString()
    return reply


def _flip_unmask_share(p: int, reply: bytes) -> bytes:
    """The lowest bit of party 2's share of party 1's round-1 self-mask seed."""
    env = pb.Envelope()
    env.ParseFromString(reply)
    if p == 2 and env.WhichOneof("body") == "unmask_reply" and env.unmask_reply.round == 1:
        share = bytearray(env.unmask_reply.self_mask_shares[1])
        share[-1] ^= 0x01
        env.unmask_reply.self_mask_shares[1] = bytes(share)
        return env.SerializeToString()
    return reply


@pytest.mark.parametrize("tamper", [
    pytest.param(_flip_masked_bit, id="masked-vector-bit"),
    pytest.param(_flip_unmask_share, id="unmask-share-bit"),
])
def test_tampered_secagg_reply_is_never_summed_silently(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tamper: Tamper) -> None:
    clean = _round_one_total(tmp_path / "clean", monkeypatch)  # noise is seeded per party
    assert clean is not None and clean[0] == [1, 2, 3, 4, 5]
    tampered = _round_one_total(tmp_path / "tampered", monkeypatch, tamper)
    if tampered is None:
        return  # stopped inside round 1: nothing was summed
    contributors, total = tampered
    if 2 not in contributors:
        return  # detected and treated as a dropout
    assert np.array_equal(total, clean[1]), "round 1 total silently differs"


# --- what privacy.json says --------------------------------------------------------------------


def test_privacy_report_marks_a_seeded_run_as_not_private(tmp_path: Path) -> None:
    res, _ = _run(tmp_path, _spec(), seeded=True)
    assert res.privacy["differentially_private"] is False
    assert "not differentially private: noise was seeded" in res.privacy["warning"]


def test_privacy_report_of_a_normal_run(tmp_path: Path) -> None:
    res, pols = _run(tmp_path, _spec())
    p = res.privacy
    assert p["differentially_private"] is True and "warning" not in p
    assert p["neighbouring_relation"] == "add or remove one row of one party"
    assert p["epsilon_replace_one"] > p["epsilon_spent"] * 1.2  # replace-one costs more
    assert any("timing" in x for x in p["outside_the_guarantee"])
    # every party's own ledger holds what the coordinator's accountant says
    for pol in pols.values():
        assert _ledger(pol).spent() == pytest.approx(p["epsilon_spent"], rel=1e-9)


def test_two_runs_on_the_same_rows_release_different_sums(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """With the noise drawn from the OS the same rows never give the same released counts."""
    a = _round_one_total(tmp_path / "a", monkeypatch, seeded=False)
    b = _round_one_total(tmp_path / "b", monkeypatch, seeded=False)
    assert a is not None and b is not None
    assert not np.array_equal(a[1], b[1])


def test_plain_channel_charges_what_each_partys_own_vector_costs(tmp_path: Path) -> None:
    """Shown on the old code: under plain each party's vector carried σ²/(t-c) while ε was
    charged for σ² (asked 1.0, true per-party ε 2.15)."""
    spec = job_spec(SCHEMA, IDS, epsilon=EPS, delta=DELTA, threshold=4, channel="plain")
    res, _ = _run(tmp_path, spec)
    for r in res.privacy["rounds"]:
        assert r["noise_variance_per_party"] == r["noise_variance"]
    for eps in res.privacy["epsilon_asked_of_party"].values():
        assert eps <= EPS * (1 + 1e-9)
