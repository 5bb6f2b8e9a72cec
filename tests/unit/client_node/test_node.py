"""Tests for fedsynth.client_node.node: every request is validated, the ledger comes first."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import fedsynth.client_node.node as node_module
from fedsynth.client_node.ledger import Ledger
from fedsynth.client_node.node import DropOut, Node, NodePolicy
from fedsynth.coordinator.exchange import Exchange, secure_sum
from fedsynth.crypto.accountant import Accountant
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.protocols.messages import pack
from fedsynth.protocols.spec import JobSpec
from fedsynth.simulations.local import LocalTransport
from fedsynth.synthesis import marginals
from fedsynth.synthesis.encoding import Encoding, Grouping
from fedsynth.synthesis.schema import Column, Schema

SCHEMA = Schema((
    Column("colour", "categorical", ("blue", "green", "red")),
    Column("age", "integer", lower=18, upper=90),
    Column("score", "continuous", lower=0.0, upper=1.0),
))
EPS, DELTA = 1.0, 1e-6


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"colour": rng.choice(["blue", "green", "red"], n),
                         "age": rng.integers(18, 91, n),
                         "score": rng.random(n)})


def _policy(tmp: Path, party: int, df: pd.DataFrame, **kw: Any) -> NodePolicy:
    home = tmp / f"party-{party}"
    home.mkdir(parents=True, exist_ok=True)
    df.to_parquet(home / "data.parquet", index=False)
    args: dict[str, Any] = {"epsilon_cap": EPS, "delta": DELTA, "noise_seed": party, **kw}
    return NodePolicy(data_path=home / "data.parquet", ledger_path=home / "ledger.jsonl", **args)


def _spec(**kw: Any) -> JobSpec:
    args: dict[str, Any] = {"schema": SCHEMA, "epsilon": EPS, "delta": DELTA, "parties": 3,
                            "threshold": 2, **kw}
    return JobSpec(**args)


def _parse(data: bytes) -> pb.Envelope:
    env = pb.Envelope()
    env.ParseFromString(data)
    return env


def _setup_bytes(job_id: str, party: int, spec: JobSpec, step: int = 1) -> bytes:
    env = pb.Envelope(job_id=job_id, step=step, party=party)
    env.setup_request.spec.CopyFrom(spec.to_proto())
    return pack(env)


@dataclass
class Joined:
    nodes: dict[int, Node]
    states: dict[int, bytes | None]
    publics: dict[int, bytes]
    job_id: str
    spec: JobSpec


def _join(tmp: Path, spec: JobSpec | None = None, **policy_kw: Any) -> Joined:
    spec = spec or _spec()
    job_id = uuid.uuid4().hex
    nodes = {p: Node(_policy(tmp, p, _frame(60, p), **policy_kw))
             for p in range(1, spec.parties + 1)}
    states: dict[int, bytes | None] = {}
    publics = {}
    for p, node in nodes.items():
        reply, states[p] = node.handle(_setup_bytes(job_id, p, spec), None)
        env = _parse(reply)
        assert env.WhichOneof("body") == "setup_reply", env.refusal.reason
        publics[p] = env.setup_reply.public_key
    return Joined(nodes, states, publics, job_id, spec)


def _measure_bytes(j: Joined, party: int, *, step: int = 2, round_id: int = 1,
                   variance: float = 400.0) -> bytes:
    env = pb.Envelope(job_id=j.job_id, step=step, party=party)
    m = env.measure_request
    m.round, m.label, m.noise_variance = round_id, "one-way", variance
    m.participants.extend(sorted(j.nodes))
    for p, key in j.publics.items():
        m.public_keys[p] = key
    for size in Encoding.from_schema(j.spec.schema).sizes:
        m.groupings.add().index.extend(range(size))
    for c in range(len(j.spec.schema.columns)):
        m.cliques.add().columns.append(c)
    return pack(env)


def _body(reply: bytes) -> str:
    return _parse(reply).WhichOneof("body") or ""


def _refusal_text(reply: bytes) -> str:
    env = _parse(reply)
    assert env.WhichOneof("body") == "refusal"
    return "\n".join([env.refusal.reason, *env.refusal.problems])


def _ledger_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# --- replay and corruption -------------------------------------------------------------------


def test_replayed_setup_is_refused(tmp_path: Path) -> None:
    j = _join(tmp_path)
    data = _setup_bytes(j.job_id, 1, j.spec)
    reply, state = j.nodes[1].handle(data, j.states[1])
    assert "setup was already done" in _refusal_text(reply)
    assert state == j.states[1]  # the session (and its key) is kept


def test_replayed_measure_request_is_refused(tmp_path: Path) -> None:
    j = _join(tmp_path)
    data = _measure_bytes(j, 1)
    reply, state = j.nodes[1].handle(data, j.states[1])
    assert _body(reply) == "measure_reply"
    before = _ledger_lines(j.nodes[1].policy.ledger_path)
    assert len(before) == 1
    again, _ = j.nodes[1].handle(data, state)  # the very same bytes
    assert "replayed" in _refusal_text(again)
    assert _ledger_lines(j.nodes[1].policy.ledger_path) == before  # nothing charged twice


def test_repeated_round_under_a_new_step_is_refused(tmp_path: Path) -> None:
    j = _join(tmp_path)
    _, state = j.nodes[1].handle(_measure_bytes(j, 1, step=2), j.states[1])
    reply, _ = j.nodes[1].handle(_measure_bytes(j, 1, step=3), state)
    assert "already measured" in _refusal_text(reply)
    assert len(_ledger_lines(j.nodes[1].policy.ledger_path)) == 1


def test_measure_without_setup_is_refused(tmp_path: Path) -> None:
    j = _join(tmp_path)
    reply, state = j.nodes[1].handle(_measure_bytes(j, 1), None)
    assert "no setup" in _refusal_text(reply)
    assert state is None


@pytest.mark.parametrize("which", ["setup", "measure"])
def test_corrupted_requests_give_refusals_not_crashes(tmp_path: Path, which: str) -> None:
    j = _join(tmp_path, epsilon_cap=1e6)  # accepted flips are charged; keep room for them
    if which == "setup":
        node, state = Node(_policy(tmp_path / "fresh", 1, _frame(40, 9))), None
        good = _setup_bytes(uuid.uuid4().hex, 1, j.spec)
    else:
        node, state = j.nodes[1], j.states[1]
        good = _measure_bytes(j, 1)
    rng = np.random.default_rng(0)
    corrupted = [good[:k] for k in range(0, len(good), 7)]  # truncations
    for pos in rng.choice(len(good), size=60, replace=False):  # byte flips
        b = bytearray(good)
        b[pos] ^= 0xFF
        corrupted.append(bytes(b))
    refused = 0
    for data in corrupted:
        reply, _ = node.handle(data, state)  # must never raise
        body = _body(reply)
        assert body in ("refusal", f"{which}_reply"), body
        refused += body == "refusal"
    # truncations can never be accepted; most flips are caught too
    assert refused >= len(range(0, len(good), 7))
    # the untouched request still works afterwards: nothing was half-applied
    reply, _ = node.handle(good, state)
    assert _body(reply) == f"{which}_reply"


def test_garbage_and_wrong_body_are_refused(tmp_path: Path) -> None:
    node = Node(_policy(tmp_path, 1, _frame(20, 1)))
    reply, state = node.handle(b"\xff\x00not a protobuf", None)
    assert "corrupted" in _refusal_text(reply) and state is None
    env = pb.Envelope(job_id="j", step=1, party=1)
    env.setup_reply.public_key = b"x" * 32
    reply, _ = node.handle(pack(env), None)
    assert "expected a" in _refusal_text(reply)
    env = pb.Envelope(job_id="j", step=1, party=1, version=99)
    env.setup_request.spec.CopyFrom(_spec().to_proto())
    reply, _ = node.handle(env.SerializeToString(), None)
    assert "protocol version 99" in _refusal_text(reply)


# --- budget and policy -------------------------------------------------------------------------


def test_job_epsilon_above_cap_is_refused_at_setup(tmp_path: Path) -> None:
    node = Node(_policy(tmp_path, 1, _frame(20, 1), epsilon_cap=0.5))
    reply, state = node.handle(_setup_bytes("j1", 1, _spec(epsilon=1.0)), None)
    text = _refusal_text(reply)
    assert "above this party's cap" in text and "0.5" in text
    assert state is None
    assert not node.policy.ledger_path.exists()


def test_release_over_the_cap_is_refused_and_not_recorded(tmp_path: Path) -> None:
    j = _join(tmp_path)
    ledger = j.nodes[1].policy.ledger_path
    # a variance of 1 for 3 marginals is far more than ε=1 allows
    reply, state = j.nodes[1].handle(_measure_bytes(j, 1, variance=1.0), j.states[1])
    text = _refusal_text(reply)
    assert "over its cap" in text and "ε=1.0" in text
    assert not ledger.exists()
    # the refused round was not marked as measured: a fitting request still goes through
    reply, _ = j.nodes[1].handle(_measure_bytes(j, 1, step=3, variance=400.0), state)
    assert _body(reply) == "measure_reply"
    assert len(_ledger_lines(ledger)) == 1


def test_cap_holds_across_jobs_on_the_same_data(tmp_path: Path) -> None:
    j = _join(tmp_path)
    reply, _ = j.nodes[1].handle(_measure_bytes(j, 1, variance=80.0), j.states[1])
    assert _body(reply) == "measure_reply"
    ledger_path = j.nodes[1].policy.ledger_path
    spent = Ledger(ledger_path, EPS, DELTA).spent()
    assert 0.5 < spent <= EPS
    # a second job on the same node and ledger: the same release no longer fits
    j2 = Joined(j.nodes, {}, j.publics, uuid.uuid4().hex, j.spec)
    _, j2.states[1] = j.nodes[1].handle(_setup_bytes(j2.job_id, 1, j.spec), None)
    before = ledger_path.read_bytes()
    reply, _ = j.nodes[1].handle(_measure_bytes(j2, 1, variance=80.0), j2.states[1])
    assert "over its cap" in _refusal_text(reply)
    assert ledger_path.read_bytes() == before


@pytest.mark.parametrize("variance", [0.0, -5.0, float("nan"), float("inf")])
def test_unnoised_release_is_refused(tmp_path: Path, variance: float) -> None:
    j = _join(tmp_path)
    reply, _ = j.nodes[1].handle(_measure_bytes(j, 1, variance=variance), j.states[1])
    assert "not positive" in _refusal_text(reply)
    assert not j.nodes[1].policy.ledger_path.exists()


def test_plain_channel_refused_unless_policy_allows_it(tmp_path: Path) -> None:
    spec = _spec(channel="plain")
    strict = Node(_policy(tmp_path / "a", 1, _frame(20, 1)))
    reply, state = strict.handle(_setup_bytes("j", 1, spec), None)
    text = _refusal_text(reply)
    assert "plain" in text and "refuses" in text and state is None
    lax = Node(_policy(tmp_path / "b", 1, _frame(20, 1), allow_plain=True))
    reply, state = lax.handle(_setup_bytes("j", 1, spec), None)
    assert _body(reply) == "setup_reply" and state is not None


def test_job_delta_above_policy_is_refused(tmp_path: Path) -> None:
    node = Node(_policy(tmp_path, 1, _frame(20, 1)))
    reply, _ = node.handle(_setup_bytes("j", 1, _spec(delta=1e-3)), None)
    assert "δ" in _refusal_text(reply)


def test_party_index_outside_job_is_refused(tmp_path: Path) -> None:
    node = Node(_policy(tmp_path, 1, _frame(20, 1)))
    reply, _ = node.handle(_setup_bytes("j", 7, _spec()), None)
    assert "outside 1..3" in _refusal_text(reply)


def test_key_substitution_mid_job_is_refused(tmp_path: Path) -> None:
    j = _join(tmp_path)
    _, state = j.nodes[1].handle(_measure_bytes(j, 1, step=2, round_id=1), j.states[1])
    j.publics[2] = bytes(32)  # the coordinator swaps party 2's key
    reply, _ = j.nodes[1].handle(_measure_bytes(j, 1, step=3, round_id=2), state)
    assert "public key of party 2 changed" in _refusal_text(reply)
    assert len(_ledger_lines(j.nodes[1].policy.ledger_path)) == 1


def test_injected_dropout_raises_and_records_nothing(tmp_path: Path) -> None:
    j = _join(tmp_path, fail_at_round=1)
    with pytest.raises(DropOut):
        j.nodes[1].handle(_measure_bytes(j, 1), j.states[1])
    assert not j.nodes[1].policy.ledger_path.exists()


# --- ledger --------------------------------------------------------------------------------------


def test_ledger_is_written_before_the_reply_is_built(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    j = _join(tmp_path)
    ledger_path = j.nodes[1].policy.ledger_path
    seen: list[list[str]] = []
    real = node_module.party_measure_reply

    def spy(*args: Any, **kw: Any) -> Any:
        seen.append(_ledger_lines(ledger_path))  # what is on disk when the reply is made
        return real(*args, **kw)

    monkeypatch.setattr(node_module, "party_measure_reply", spy)
    reply, _ = j.nodes[1].handle(_measure_bytes(j, 1, variance=123.0), j.states[1])
    assert _body(reply) == "measure_reply"
    assert len(seen) == 1 and len(seen[0]) == 1
    entry = json.loads(seen[0][0])
    assert entry["job_id"] == j.job_id and entry["round"] == 1
    assert entry["label"] == "one-way" and entry["count"] == 3 and entry["variance"] == 123.0


def test_ledger_spent_matches_the_coordinators_accountant(tmp_path: Path) -> None:
    """Three secure-sum rounds through the coordinator's own code; each party's ledger agrees
    with an accountant composed from what the coordinator asked."""
    spec = _spec()
    nodes = {p: Node(_policy(tmp_path, p, _frame(80, p))) for p in (1, 2, 3)}
    ex = Exchange(LocalTransport(nodes), uuid.uuid4().hex)
    replies = ex.call({p: ("setup_request", pb.SetupRequest(spec=spec.to_proto()))
                       for p in nodes}, "setup_reply")
    publics = {p: e.setup_reply.public_key for p, e in replies.items()}
    enc = Encoding.from_schema(spec.schema)
    groupings = [Grouping.identity(n) for n in enc.sizes]
    acc = Accountant()
    totals = []
    for round_id, (label, cliques, var) in enumerate([
        ("one-way", [(0,), (1,), (2,)], 300.0),
        ("select", [(0, 1), (0, 2), (1, 2)], 900.0),
        ("pairs", [(0, 2)], 150.0),
    ], start=1):
        length = marginals.vector_length(cliques, [g.size for g in groupings])
        res = secure_sum(ex, round_id=round_id, label=label, channel="secagg", threshold=2,
                         participants=[1, 2, 3], publics=publics, groupings=groupings,
                         cliques=cliques, length=length, noise_variance=var)
        acc.add(step=label, count=len(cliques), variance=var)
        totals.append(res.total)
        for node in nodes.values():
            ledger = Ledger(node.policy.ledger_path, EPS, DELTA)
            assert len(ledger.entries()) == round_id
            assert ledger.spent() == pytest.approx(acc.epsilon(DELTA), rel=1e-12)
    assert acc.epsilon(DELTA) <= EPS
    # the secure sum of one-way counts is near the true total of 240 rows per column
    one_way = totals[0]
    sizes = enc.sizes
    for start, size in zip(np.cumsum([0, *sizes[:-1]]), sizes, strict=True):
        assert abs(one_way[start:start + size].sum() - 240) < 6 * np.sqrt(300.0 * size)


# --- data that breaks the schema -----------------------------------------------------------------


def test_schema_violation_refuses_setup_without_leaking_the_value(tmp_path: Path) -> None:
    df = _frame(30, 1).astype({"colour": object, "age": float})
    df.loc[4, "colour"] = "SECRET_COLOUR_4711"
    df.loc[7, "age"] = 123456.0
    node = Node(_policy(tmp_path, 1, df))
    reply, state = node.handle(_setup_bytes("j", 1, _spec()), None)
    text = _refusal_text(reply)
    assert state is None
    assert "'colour'" in text and "categories not in the schema" in text
    assert "'age'" in text and "outside the declared bounds" in text
    assert "file lines 6)" in text and "file lines 9)" in text
    # show_values=False: the raw values never leave the party, not even in the bytes
    for secret in (b"SECRET_COLOUR_4711", b"123456"):
        assert secret not in reply
    assert not node.policy.ledger_path.exists()


def test_unreadable_data_file_refuses_setup(tmp_path: Path) -> None:
    policy = _policy(tmp_path, 1, _frame(5, 1))
    policy.data_path.write_bytes(b"this is not parquet")
    reply, _ = Node(policy).handle(_setup_bytes("j", 1, _spec()), None)
    text = _refusal_text(reply)
    assert str(policy.data_path) in text and "PARQUET" in text


# --- evaluation ------------------------------------------------------------------------------


def _evaluate_bytes(j: Joined, party: int, *, step: int = 2, round_id: int = 1,
                    parquet: bytes | None = None, options: str | None = None) -> bytes:
    from fedsynth.evaluation.plan import EvalOptions
    from fedsynth.evaluation.transfer import synthetic_to_parquet

    env = pb.Envelope(job_id=j.job_id, step=step, party=party)
    e = env.evaluate_request
    e.round = round_id
    e.synthetic_parquet = parquet if parquet is not None else synthetic_to_parquet(_frame(80, 9))
    e.options_json = options if options is not None else EvalOptions(target="colour").to_json()
    e.participants.extend(sorted(j.nodes))
    for p, key in j.publics.items():
        e.public_keys[p] = key
    return pack(env)


def test_evaluation_needs_the_party_policy(tmp_path: Path) -> None:
    j = _join(tmp_path)
    reply, _ = j.nodes[1].handle(_evaluate_bytes(j, 1), j.states[1])
    assert "does not release evaluation statistics" in _refusal_text(reply)


def test_evaluation_reply_is_masked_and_charges_nothing(tmp_path: Path) -> None:
    from fedsynth.evaluation.plan import EvalOptions, EvaluationPlan
    from fedsynth.evaluation.statistics import node_statistics
    from fedsynth.protocols.messages import bytes_vector

    j = _join(tmp_path, allow_evaluation=True)
    reply, state = j.nodes[1].handle(_evaluate_bytes(j, 1), j.states[1])
    env = _parse(reply)
    assert env.WhichOneof("body") == "measure_reply", _refusal_text(reply)
    plan = EvaluationPlan.build(SCHEMA, _frame(80, 9), EvalOptions(target="colour"))
    clear = node_statistics(plan, _frame(80, 9), train=_frame(60, 1), test=None)
    masked = bytes_vector(env.measure_reply.masked, length=plan.length, sender="party 1")
    assert len(masked) == plan.length
    assert not np.array_equal(masked.view(np.int64), clear)  # the party's sums never go bare
    assert env.measure_reply.ledger_epsilon == 0.0  # no DP release: nothing charged
    assert _ledger_lines(j.nodes[1].policy.ledger_path) == []
    # the same round cannot be answered twice
    again, _ = j.nodes[1].handle(_evaluate_bytes(j, 1, step=3), state)
    assert "already answered" in _refusal_text(again)


@pytest.mark.parametrize(("kw", "needle"), [
    ({"parquet": b"not parquet"}, "is not Parquet"),
    ({"options": '{"bins": 1000}'}, "bins=1000 is outside"),
    ({"options": '{"target": "nope"}'}, "target column 'nope' is not in the schema"),
    ({"options": '{"evil": 1}'}, "are not recognised"),
])
def test_bad_evaluation_requests_are_refused(tmp_path: Path, kw: dict[str, Any],
                                             needle: str) -> None:
    j = _join(tmp_path, allow_evaluation=True)
    reply, _ = j.nodes[1].handle(_evaluate_bytes(j, 1, **kw), j.states[1])
    assert needle in _refusal_text(reply)


def test_synthetic_table_outside_the_schema_is_refused(tmp_path: Path) -> None:
    from fedsynth.evaluation.transfer import synthetic_to_parquet

    j = _join(tmp_path, allow_evaluation=True)
    bad = _frame(20, 3).assign(colour="purple")
    reply, _ = j.nodes[1].handle(_evaluate_bytes(j, 1, parquet=synthetic_to_parquet(bad)),
                                 j.states[1])
    assert "categories not in the schema" in _refusal_text(reply)
