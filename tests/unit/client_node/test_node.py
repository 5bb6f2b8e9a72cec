"""Tests for fedsynth.client_node.node: every request is validated, the ledger comes first."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import fedsynth.client_node.node as node_module
from fedsynth.client_node.ledger import Ledger
from fedsynth.client_node.node import DropOut, Node, NodePolicy
from fedsynth.coordinator.exchange import Exchange, PartyKeys, secure_sum
from fedsynth.crypto.accountant import Accountant
from fedsynth.crypto.keys import Identity, consortium
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.protocols.messages import pack
from fedsynth.protocols.spec import JobSpec, schema_sha256
from fedsynth.simulations.local import LocalTransport
from fedsynth.simulations.parties import job_spec, make_identities
from fedsynth.synthesis import marginals
from fedsynth.synthesis.encoding import Encoding, Grouping
from fedsynth.synthesis.schema import Column, Schema

SCHEMA = Schema((
    Column("colour", "categorical", ("blue", "green", "red")),
    Column("age", "integer", lower=18, upper=90),
    Column("score", "continuous", lower=0.0, upper=1.0),
))
EPS, DELTA = 1.0, 1e-6
IDS = make_identities(3)


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"colour": rng.choice(["blue", "green", "red"], n),
                         "age": rng.integers(18, 91, n),
                         "score": rng.random(n)})


def _policy(tmp: Path, party: int, df: pd.DataFrame, **kw: Any) -> NodePolicy:
    """Party `party`'s policy for the 3-party consortium IDS; held-out rows when it evaluates."""
    home = tmp / f"party-{party}"
    home.mkdir(parents=True, exist_ok=True)
    df.to_parquet(home / "data.parquet", index=False)
    if kw.get("evaluation", "off") != "off" and "holdout_path" not in kw:
        _frame(40, 100 + party).to_parquet(home / "holdout.parquet", index=False)
        kw["holdout_path"] = home / "holdout.parquet"
    me = IDS[party - 1]
    args: dict[str, Any] = {"epsilon_cap": EPS, "delta": DELTA, "noise_seed": party,
                            "party_name": me.name, "identity_key": me.private,
                            "consortium": consortium(IDS), "schema_sha256": schema_sha256(SCHEMA),
                            **kw}
    return NodePolicy(data_path=home / "data.parquet", ledger_path=home / "ledger.jsonl", **args)


def _spec(**kw: Any) -> JobSpec:
    args: dict[str, Any] = {"epsilon": EPS, "delta": DELTA, "threshold": 3, **kw}
    return job_spec(SCHEMA, IDS, **args)


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
    signatures: dict[int, bytes]
    # round -> party -> (its signed mask key for the round, the signature)
    mask: dict[int, dict[int, tuple[bytes, bytes]]] = field(default_factory=dict)


def _keys_bytes(j: Joined, party: int, *, step: int = 1, round_id: int = 1) -> bytes:
    env = pb.Envelope(job_id=j.job_id, step=step, party=party)
    k = env.mask_keys_request
    k.round = round_id
    k.participants.extend(sorted(j.nodes))
    for p, key in j.publics.items():
        k.public_keys[p] = key
        k.key_signatures[p] = j.signatures.get(p, b"")
    return pack(env)


def _announce(j: Joined, *, round_id: int = 1, step: int = 1) -> None:
    """The key exchange before the first masked round: every party's round mask key."""
    for p, node in j.nodes.items():
        reply, j.states[p] = node.handle(_keys_bytes(j, p, step=step, round_id=round_id),
                                         j.states[p])
        env = _parse(reply)
        assert env.WhichOneof("body") == "mask_keys_reply", env.refusal.reason
        j.mask.setdefault(round_id, {})[p] = (env.mask_keys_reply.public_key,
                                              env.mask_keys_reply.signature)


def _setup_all(j: Joined) -> None:
    # setup runs at step 0 and the key exchange at step 1, so that the first round's request
    # comes at step 2 as in a job without the key exchange
    for p, node in j.nodes.items():
        reply, j.states[p] = node.handle(_setup_bytes(j.job_id, p, j.spec, step=0), None)
        env = _parse(reply)
        assert env.WhichOneof("body") == "setup_reply", env.refusal.reason
        j.publics[p] = env.setup_reply.public_key
        j.signatures[p] = env.setup_reply.key_signature
    if j.spec.channel != "plain":
        _announce(j)


def _join(tmp: Path, spec: JobSpec | None = None, *, announce: bool = True,
          **policy_kw: Any) -> Joined:
    """Set up a job at every party and (`announce`) run the mask-key exchange for round 1."""
    spec = spec or _spec()
    nodes = {p: Node(_policy(tmp, p, _frame(60, p), **policy_kw))
             for p in range(1, spec.parties + 1)}
    j = Joined(nodes, {}, {}, uuid.uuid4().hex, spec, {})
    if announce:
        _setup_all(j)
        return j
    for p, node in nodes.items():
        reply, j.states[p] = node.handle(_setup_bytes(j.job_id, p, spec), None)
        j.publics[p] = _parse(reply).setup_reply.public_key
        j.signatures[p] = _parse(reply).setup_reply.key_signature
    return j


def _rejoin(j: Joined) -> Joined:
    """A second job on the same nodes (and so the same ledgers and rows)."""
    j2 = Joined(j.nodes, {}, {}, uuid.uuid4().hex, j.spec, {})
    _setup_all(j2)
    return j2


def _add_mask_keys(req: pb.MeasureRequest | pb.EvaluateRequest, j: Joined, round_id: int) -> None:
    for p, (key, sig) in j.mask.get(round_id, {}).items():
        req.mask_keys[p] = key
        req.mask_key_signatures[p] = sig


def _measure_bytes(j: Joined, party: int, *, step: int = 2, round_id: int = 1,
                   variance: float = 400.0) -> bytes:
    env = pb.Envelope(job_id=j.job_id, step=step, party=party)
    m = env.measure_request
    m.round, m.label, m.noise_variance = round_id, "one-way", variance
    m.participants.extend(sorted(j.nodes))
    for p, key in j.publics.items():
        m.public_keys[p] = key
        m.key_signatures[p] = j.signatures.get(p, b"")
    for size in Encoding.from_schema(j.spec.schema).sizes:
        m.groupings.add().index.extend(range(size))
    for c in range(len(j.spec.schema.columns)):
        m.cliques.add().columns.append(c)
    _add_mask_keys(m, j, round_id)
    return pack(env)


def _body(reply: bytes) -> str:
    return _parse(reply).WhichOneof("body") or ""


def _refusal_text(reply: bytes) -> str:
    env = _parse(reply)
    assert env.WhichOneof("body") == "refusal"
    return "\n".join([env.refusal.reason, *env.refusal.problems])


def _ledger_lines(path: Path) -> list[dict[str, Any]]:
    """The DP releases recorded in a ledger (audit lines such as setups are not releases)."""
    return Ledger(path, EPS, DELTA).entries()


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
    # the untouched request still works afterwards: nothing was half-applied (a setup under
    # a job id already set up is refused, so the check uses a fresh one)
    if which == "setup":
        good = _setup_bytes(uuid.uuid4().hex, 1, j.spec)
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
    assert not node.policy.ledger_path.exists()  # refused on the policy, before any record


def test_release_over_the_cap_is_refused_and_not_recorded(tmp_path: Path) -> None:
    j = _join(tmp_path)
    ledger = j.nodes[1].policy.ledger_path
    # a variance of 1 for 3 marginals is far more than ε=1 allows
    reply, state = j.nodes[1].handle(_measure_bytes(j, 1, variance=1.0), j.states[1])
    text = _refusal_text(reply)
    assert "over its cap" in text and "ε=1.0" in text
    assert _ledger_lines(ledger) == []
    # the refused round stays closed: its one-shot mask key is gone (the coordinator may have
    # rebuilt it by naming this party dropped), so even a fitting request is refused
    reply, _ = j.nodes[1].handle(_measure_bytes(j, 1, step=3, variance=400.0), state)
    assert "already" in _refusal_text(reply)
    assert _ledger_lines(ledger) == []


def test_cap_holds_across_jobs_on_the_same_data(tmp_path: Path) -> None:
    j = _join(tmp_path)
    reply, _ = j.nodes[1].handle(_measure_bytes(j, 1, variance=80.0), j.states[1])
    assert _body(reply) == "measure_reply"
    ledger_path = j.nodes[1].policy.ledger_path
    spent = Ledger(ledger_path, EPS, DELTA).spent()
    assert 0.5 < spent <= EPS
    # a second job on the same node and ledger: the same release no longer fits
    j2 = _rejoin(j)
    before = ledger_path.read_bytes()
    reply, _ = j.nodes[1].handle(_measure_bytes(j2, 1, variance=80.0), j2.states[1])
    assert "over its cap" in _refusal_text(reply)
    assert ledger_path.read_bytes() == before


@pytest.mark.parametrize("variance", [0.0, -5.0, float("nan"), float("inf")])
def test_unnoised_release_is_refused(tmp_path: Path, variance: float) -> None:
    j = _join(tmp_path)
    reply, _ = j.nodes[1].handle(_measure_bytes(j, 1, variance=variance), j.states[1])
    assert "not positive" in _refusal_text(reply)
    assert _ledger_lines(j.nodes[1].policy.ledger_path) == []


def test_plain_channel_refused_unless_policy_allows_it(tmp_path: Path) -> None:
    spec = _spec(channel="plain")
    strict = Node(_policy(tmp_path / "a", 1, _frame(20, 1)))
    reply, state = strict.handle(_setup_bytes("j", 1, spec), None)
    text = _refusal_text(reply)
    assert "'plain' is not allowed by this party's policy" in text and state is None
    lax = Node(_policy(tmp_path / "b", 1, _frame(20, 1), channels=("secagg", "plain")))
    reply, state = lax.handle(_setup_bytes("j", 1, spec), None)
    assert _body(reply) == "setup_reply" and state is not None


def test_sparse_graph_refused_unless_policy_allows_it(tmp_path: Path) -> None:
    """SecAgg+ holds against a coordinator that follows the protocol: each party opts in."""
    many = make_identities(60)  # enough parties for a sparse graph
    spec = job_spec(SCHEMA, many, epsilon=EPS, delta=DELTA, graph="sparse")
    assert spec.graph == "sparse"
    strict = Node(_policy(tmp_path / "a", 1, _frame(20, 1)))
    assert any("sparse secagg graph is not allowed" in p
               for p in strict._policy_problems(spec, 1))
    lax = Node(_policy(tmp_path / "b", 1, _frame(20, 1), graphs=("complete", "sparse")))
    assert not any("graph" in p for p in lax._policy_problems(spec, 1))
    assert not any("graph" in p for p in strict._policy_problems(_spec(), 1))


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
    assert _ledger_lines(j.nodes[1].policy.ledger_path) == []


# --- ledger --------------------------------------------------------------------------------------


def test_ledger_is_written_before_the_reply_leaves(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The reply is built first (so a failure while masking charges nothing), and charged to
    the ledger before it is serialized and handed back."""
    j = _join(tmp_path)
    ledger_path = j.nodes[1].policy.ledger_path
    seen: list[list[str]] = []
    real = node_module.pack

    def spy(*args: Any, **kw: Any) -> Any:
        seen.append(_ledger_lines(ledger_path))  # what is on disk when the reply leaves
        return real(*args, **kw)

    monkeypatch.setattr(node_module, "pack", spy)
    reply, _ = j.nodes[1].handle(_measure_bytes(j, 1, variance=123.0), j.states[1])
    assert _body(reply) == "measure_reply"
    assert len(seen) == 1 and len(seen[0]) == 1
    entry = seen[0][0]
    assert entry["job_id"] == j.job_id and entry["round"] == 1
    assert entry["label"] == "one-way" and entry["count"] == 3 and entry["variance"] == 123.0


def test_ledger_spent_matches_the_coordinators_accountant(tmp_path: Path) -> None:
    """Three secure-sum rounds through the coordinator's own code; each party's ledger agrees
    with an accountant composed from what the coordinator asked."""
    spec = _spec()
    nodes = {p: Node(_policy(tmp_path, p, _frame(80, p))) for p in (1, 2, 3)}
    ex = Exchange(LocalTransport(nodes), uuid.uuid4().hex,
                  identities={p: spec.identity_of(p) for p in nodes})
    replies = ex.call({p: ("setup_request", pb.SetupRequest(spec=spec.to_proto()))
                       for p in nodes}, "setup_reply")
    keys = PartyKeys({p: e.setup_reply.public_key for p, e in replies.items()},
                     {p: e.setup_reply.key_signature for p, e in replies.items()})
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
        res = secure_sum(ex, round_id=round_id, label=label, channel="secagg", threshold=3,
                         participants=[1, 2, 3], keys=keys, groupings=groupings,
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


def test_schema_violation_refusal_names_only_column_and_kind(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A refusal is no counting oracle: no counts, lines, values or the party's own columns."""
    df = _frame(30, 1).astype({"colour": object, "age": float})
    df.loc[4, "colour"] = "SECRET_COLOUR_4711"
    df.loc[[7, 11, 12], "age"] = [123456.0, 95.0, 91.0]
    df["internal_ssn_column"] = "x"
    node = Node(_policy(tmp_path, 1, df))
    reply, state = node.handle(_setup_bytes("j", 1, _spec()), None)
    text = _refusal_text(reply)
    assert state is None
    assert "column 'colour': categories that are not in the schema" in text
    assert "column 'age': values outside the declared bounds" in text
    assert "columns that are not in the schema" in text
    for leak in ("row", "line", "3", "internal_ssn_column", "SECRET", "123456", "95", "91"):
        assert leak not in text.replace("'age'", "").replace("'colour'", ""), leak
    for secret in (b"SECRET_COLOUR_4711", b"123456", b"internal_ssn_column"):
        assert secret not in reply
    assert _ledger_lines(node.policy.ledger_path) == []
    # the party's own operator gets the full detail in its log
    assert "3 row(s) (file lines 9, 13, 14)" in caplog.text
    assert "internal_ssn_column" in caplog.text


def test_the_same_refusal_for_every_count_of_offending_rows(tmp_path: Path) -> None:
    """Shown on the old code: refusals gave the exact count of rows above a bound."""
    texts = set()
    for k, n_bad in enumerate((1, 2, 17)):
        df = _frame(30, 1).astype({"age": float})
        df.loc[: n_bad - 1, "age"] = 99.0
        reply, _ = Node(_policy(tmp_path / str(k), 1, df)).handle(
            _setup_bytes(f"j{k}", 1, _spec()), None)
        texts.add(_refusal_text(reply))
    assert len(texts) == 1


def test_unreadable_data_file_refuses_setup_without_naming_it(tmp_path: Path) -> None:
    policy = _policy(tmp_path, 1, _frame(5, 1))
    policy.data_path.write_bytes(b"this is not parquet")
    reply, _ = Node(policy).handle(_setup_bytes("j", 1, _spec()), None)
    text = _refusal_text(reply)
    assert "could not be read" in text and str(policy.data_path) not in text


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
        e.key_signatures[p] = j.signatures[p]
    _add_mask_keys(e, j, round_id)
    return pack(env)


def test_evaluation_needs_the_party_policy(tmp_path: Path) -> None:
    j = _join(tmp_path)
    reply, _ = j.nodes[1].handle(_evaluate_bytes(j, 1), j.states[1])
    assert "does not take part in evaluations" in _refusal_text(reply)


def test_exact_evaluation_uses_only_held_out_rows_masked_and_audited(tmp_path: Path) -> None:
    from fedsynth.evaluation.plan import EvalOptions, EvaluationPlan
    from fedsynth.evaluation.statistics import node_statistics
    from fedsynth.protocols.messages import bytes_vector

    j = _join(tmp_path, evaluation="exact")
    reply, state = j.nodes[1].handle(_evaluate_bytes(j, 1), j.states[1])
    env = _parse(reply)
    assert env.WhichOneof("body") == "measure_reply", _refusal_text(reply)
    plan = EvaluationPlan.build(SCHEMA, _frame(80, 9), EvalOptions(target="colour"))
    clear = node_statistics(plan, _frame(80, 9), train=None, test=_frame(40, 101))
    masked = bytes_vector(env.measure_reply.masked, length=plan.length, sender="party 1")
    assert len(masked) == plan.length
    assert not np.array_equal(masked.view(np.int64), clear)  # the party's sums never go bare
    assert env.measure_reply.ledger_epsilon == 0.0  # no DP release: nothing charged
    ledger = Ledger(j.nodes[1].policy.ledger_path, EPS, DELTA)
    assert ledger.entries() == []
    audit = ledger.audits("evaluation")
    assert len(audit) == 1 and audit[0]["dp"] is False and audit[0]["job_id"] == j.job_id
    assert len(audit[0]["holdout_sha256"]) == 64
    # the same round cannot be answered twice
    again, _ = j.nodes[1].handle(_evaluate_bytes(j, 1, step=3), state)
    assert "already answered" in _refusal_text(again)


def test_exact_evaluation_equals_the_held_out_statistics_without_the_training_rows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The vector the party masks is exactly its held-out rows' statistics."""
    from fedsynth.evaluation.plan import EvalOptions, EvaluationPlan
    from fedsynth.evaluation.statistics import node_statistics

    seen: list[np.ndarray] = []
    real = node_module.party_measure_reply

    def spy(values: np.ndarray, **kw: Any) -> Any:
        seen.append(values.copy())
        return real(values, **kw)

    monkeypatch.setattr(node_module, "party_measure_reply", spy)
    j = _join(tmp_path, evaluation="exact")
    reply, _ = j.nodes[2].handle(_evaluate_bytes(j, 2), j.states[2])
    assert _body(reply) == "measure_reply"
    plan = EvaluationPlan.build(SCHEMA, _frame(80, 9), EvalOptions(target="colour"))
    held_out = node_statistics(plan, _frame(80, 9), train=None, test=_frame(40, 102))
    np.testing.assert_array_equal(seen[0], held_out)


def test_exact_evaluation_never_goes_through_plain_or_a_one_party_sum(tmp_path: Path) -> None:
    j = _join(tmp_path, _spec(channel="plain"), evaluation="exact",
              channels=("secagg", "plain"))
    reply, _ = j.nodes[2].handle(_evaluate_bytes(j, 2), j.states[2])
    assert "only through secure aggregation" in _refusal_text(reply)


def test_an_internal_error_tells_the_coordinator_nothing(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    j = _join(tmp_path, evaluation="exact")

    def boom(*_a: Any, **_k: Any) -> Any:
        raise ValueError("Expected n_samples >= n_neighbors, got 1 row of SECRET")

    monkeypatch.setattr(node_module, "node_statistics", boom)
    reply, _ = j.nodes[1].handle(_evaluate_bytes(j, 1), j.states[1])
    text = _refusal_text(reply)
    assert text == "internal error at the party (details in the party's own log)"


def test_a_job_id_is_set_up_once(tmp_path: Path) -> None:
    node = Node(_policy(tmp_path, 1, _frame(20, 1)))
    reply, _ = node.handle(_setup_bytes("j1", 1, _spec()), None)
    assert _body(reply) == "setup_reply"
    reply, _ = node.handle(_setup_bytes("j1", 1, _spec()), None)  # a new session, same id
    assert "a job id is used once" in _refusal_text(reply)


def test_party_without_held_out_rows_refuses_to_evaluate(tmp_path: Path) -> None:
    j = _join(tmp_path, evaluation="exact", holdout_path=None)
    reply, _ = j.nodes[1].handle(_evaluate_bytes(j, 1), j.states[1])
    assert "no held-out rows" in _refusal_text(reply)


def test_the_same_held_out_rows_are_evaluated_at_most_max_evaluations_times(
        tmp_path: Path) -> None:
    j = _join(tmp_path, evaluation="exact")
    reply, _ = j.nodes[1].handle(_evaluate_bytes(j, 1), j.states[1])
    assert _body(reply) == "measure_reply"
    # a second job on the same node and rows
    j2 = _rejoin(j)
    reply, _ = j.nodes[1].handle(_evaluate_bytes(j2, 1), j2.states[1])
    assert "already evaluated 1 time(s)" in _refusal_text(reply)
    assert len(Ledger(j.nodes[1].policy.ledger_path, EPS, DELTA).audits("evaluation")) == 1


def test_exact_evaluation_is_refused_under_a_dp_only_policy(tmp_path: Path) -> None:
    j = _join(tmp_path, evaluation="dp", evaluation_epsilon_cap=1.0)
    reply, _ = j.nodes[1].handle(_evaluate_bytes(j, 1), j.states[1])
    assert "only DP evaluation" in _refusal_text(reply)


@pytest.mark.parametrize(("kw", "needle"), [
    ({"parquet": b"not parquet"}, "is not Parquet"),
    ({"options": '{"bins": 1000}'}, "bins=1000 is outside"),
    ({"options": '{"target": "nope"}'}, "target column 'nope' is not in the schema"),
    ({"options": '{"evil": 1}'}, "are not recognised"),
])
def test_bad_evaluation_requests_are_refused(tmp_path: Path, kw: dict[str, Any],
                                             needle: str) -> None:
    j = _join(tmp_path, evaluation="exact")
    reply, _ = j.nodes[1].handle(_evaluate_bytes(j, 1, **kw), j.states[1])
    assert needle in _refusal_text(reply)


def test_synthetic_table_outside_the_schema_is_refused(tmp_path: Path) -> None:
    from fedsynth.evaluation.transfer import synthetic_to_parquet

    j = _join(tmp_path, evaluation="exact")
    bad = _frame(20, 3).assign(colour="purple")
    reply, _ = j.nodes[1].handle(_evaluate_bytes(j, 1, parquet=synthetic_to_parquet(bad)),
                                 j.states[1])
    assert "categories not in the schema" in _refusal_text(reply)


# --- noise comes from the OS, never from a seed anyone knows -----------------------------------


def _plain_vector(j: Joined, party: int) -> np.ndarray:
    from fedsynth.protocols.messages import bytes_vector

    reply, _ = j.nodes[party].handle(_measure_bytes(j, party), j.states[party])
    env = _parse(reply)
    assert env.WhichOneof("body") == "measure_reply", _refusal_text(reply)
    length = sum(Encoding.from_schema(SCHEMA).sizes)
    return bytes_vector(env.measure_reply.masked, length=length, sender="p").view(np.int64)


def test_the_same_rows_twice_release_different_noisy_counts(tmp_path: Path) -> None:
    """On the old code the noise was a function of the public --seed: subtracting it gave the
    exact counts. Now two releases of the same rows and request differ."""
    spec = _spec(channel="plain")
    a = _join(tmp_path / "a", spec, noise_seed=None, channels=("secagg", "plain"))
    b = _join(tmp_path / "b", spec, noise_seed=None, channels=("secagg", "plain"))
    va, vb = _plain_vector(a, 1), _plain_vector(b, 1)
    assert not np.array_equal(va, vb)
    reply, _ = a.nodes[2].handle(_measure_bytes(a, 2), a.states[2])
    assert _parse(reply).measure_reply.seeded_noise is False


def test_a_seeded_party_says_so_in_every_reply(tmp_path: Path) -> None:
    j = _join(tmp_path, noise_seed=7)
    reply, _ = j.nodes[1].handle(_measure_bytes(j, 1), j.states[1])
    assert _parse(reply).measure_reply.seeded_noise is True


def test_plain_channel_each_party_carries_the_full_noise(tmp_path: Path) -> None:
    """Under plain the coordinator sees each party's own vector: its noise alone must be the
    variance charged, not variance / (t - c)."""
    j = _join(tmp_path, _spec(channel="plain"), noise_seed=None, channels=("secagg", "plain"))
    counts = marginals.count(Encoding.from_schema(SCHEMA).encode(_frame(60, 1)),
                             [Grouping.identity(n) for n in Encoding.from_schema(SCHEMA).sizes],
                             [(0,), (1,), (2,)])
    draws = []
    for k in range(40):
        jj = _join(tmp_path / str(k), _spec(channel="plain"), noise_seed=None,
                   channels=("secagg", "plain"))
        draws.append(_plain_vector(jj, 1) - counts)
    noise_var = np.var(np.concatenate(draws))
    assert 400.0 * 0.85 < noise_var < 400.0 * 1.15  # not 400 / 3
    del j


# --- the coordinator cannot choose who is in the job or whose keys count -----------------------


def test_participants_outside_the_job_are_refused(tmp_path: Path) -> None:
    """Shown on the old code: participants [1, 6, 7] with keys the coordinator made recovered
    party 1's vector with only its own noise share."""
    from fedsynth.crypto.secagg import KeyPair

    j = _join(tmp_path)
    fake = {6: KeyPair.generate().public, 7: KeyPair.generate().public}
    env = pb.Envelope()
    env.ParseFromString(_measure_bytes(j, 1))
    del env.measure_request.participants[:]
    env.measure_request.participants.extend([1, 6, 7])
    for p, key in fake.items():
        env.measure_request.public_keys[p] = key
    reply, _ = j.nodes[1].handle(pack(env), j.states[1])
    assert "not among the job's parties 1..3" in _refusal_text(reply)
    assert _ledger_lines(j.nodes[1].policy.ledger_path) == []


def test_keys_without_their_identity_signature_are_refused(tmp_path: Path) -> None:
    from fedsynth.crypto.secagg import KeyPair

    j = _join(tmp_path, announce=False)  # the first request carrying keys pins them
    j.publics[2] = KeyPair.generate().public  # the coordinator relays a key of its own making
    reply, _ = j.nodes[1].handle(_measure_bytes(j, 1), j.states[1])
    assert "does not carry its identity signature" in _refusal_text(reply)
    assert _ledger_lines(j.nodes[1].policy.ledger_path) == []


def test_a_key_signed_for_another_job_or_party_is_refused(tmp_path: Path) -> None:
    j = _join(tmp_path, announce=False)
    j.publics[2], j.signatures[2] = j.publics[3], j.signatures[3]  # party 3's key as party 2's
    reply, _ = j.nodes[1].handle(_measure_bytes(j, 1), j.states[1])
    assert "does not carry its identity signature" in _refusal_text(reply)


def test_the_key_set_is_pinned_at_once_at_the_first_round(tmp_path: Path) -> None:
    j = _join(tmp_path)
    two = Joined(j.nodes, j.states, {p: j.publics[p] for p in (1, 2, 3)}, j.job_id, j.spec,
                 j.signatures, j.mask)
    _, state = j.nodes[1].handle(_measure_bytes(two, 1), j.states[1])
    # a later round naming a party whose key was not in the first round's set is refused
    env = pb.Envelope()
    env.ParseFromString(_measure_bytes(j, 1, step=3, round_id=2))
    session = json.loads(state or b"{}")
    session["publics"].pop("3")
    reply, _ = j.nodes[1].handle(pack(env), json.dumps(session).encode())
    assert "not in the key set pinned at the first round" in _refusal_text(reply)


def test_own_key_must_be_relayed_faithfully(tmp_path: Path) -> None:
    j = _join(tmp_path, announce=False)
    j.publics[1], j.signatures[1] = j.publics[2], j.signatures[2]
    reply, _ = j.nodes[1].handle(_measure_bytes(j, 1), j.states[1])
    assert "signature" in _refusal_text(reply) or "relayed faithfully" in _refusal_text(reply)


# --- the policy bounds what the coordinator may claim, before any data is read ------------------


def _refused_at_setup(tmp_path: Path, spec: JobSpec, **policy: Any) -> str:
    pol = _policy(tmp_path, 1, _frame(20, 1), **policy)
    pol.data_path.write_bytes(b"never read")  # a policy refusal never touches the data
    reply, state = Node(pol).handle(_setup_bytes("j", 1, spec), None)
    assert state is None
    return _refusal_text(reply)


def test_a_job_with_another_schema_is_refused_before_the_data_is_read(tmp_path: Path) -> None:
    wider = Schema((Column("colour", "categorical", ("blue", "green", "red")),
                    Column("age", "integer", lower=18, upper=65),  # bisecting the bounds
                    Column("score", "continuous", lower=0.0, upper=1.0)))
    spec = job_spec(wider, IDS, epsilon=EPS, delta=DELTA, threshold=3)
    text = _refused_at_setup(tmp_path, spec)
    assert "not the one this party's policy pins" in text
    assert "could not be read" not in text


@pytest.mark.parametrize(("policy", "spec_kw", "needle"), [
    ({"assume_colluders": 1}, {}, "this party assumes up to 1"),
    ({"max_parties": 2}, {}, "above this party's limit of 2"),
    ({"channels": ("secagg",)}, {"channel": "plain"}, "'plain' is not allowed"),
    ({"epsilon_cap": 0.5}, {}, "above this party's cap"),
])
def test_a_job_outside_the_policy_is_refused(tmp_path: Path, policy: dict[str, Any],
                                             spec_kw: dict[str, Any], needle: str) -> None:
    assert needle in _refused_at_setup(tmp_path, _spec(**spec_kw), **policy)


def test_a_job_naming_strangers_or_another_identity_is_refused(tmp_path: Path) -> None:
    stranger = Identity.generate("party-2")  # the coordinator's own key under a member's name
    ids = [IDS[0], stranger, IDS[2]]
    text = _refused_at_setup(tmp_path, job_spec(SCHEMA, ids, epsilon=EPS, delta=DELTA))
    assert "not on this party's consortium list" in text
    swapped = [IDS[1], IDS[0], IDS[2]]  # party 1 would be addressed as another party
    text = _refused_at_setup(tmp_path / "b", job_spec(SCHEMA, swapped, epsilon=EPS, delta=DELTA))
    assert "identity key that is not this party's" in text


def test_setups_are_rate_limited(tmp_path: Path) -> None:
    node = Node(_policy(tmp_path, 1, _frame(20, 1), max_setups_per_hour=2))
    for k in range(2):
        reply, _ = node.handle(_setup_bytes(f"j{k}", 1, _spec()), None)
        assert _body(reply) == "setup_reply"
    reply, _ = node.handle(_setup_bytes("j9", 1, _spec()), None)
    assert "at most 2 job setups an hour" in _refusal_text(reply)


# --- the consistency check: one survivor list per round, t signatures over it ------------------


def _measured(tmp_path: Path) -> tuple[Joined, dict[int, bytes | None]]:
    j = _join(tmp_path, noise_seed=None)
    states = {}
    for p in (1, 2, 3):
        reply, states[p] = j.nodes[p].handle(_measure_bytes(j, p), j.states[p])
        assert _body(reply) == "measure_reply"
    return j, states


def _confirm(j: Joined, states: dict[int, bytes | None], p: int, survivors: list[int],
             step: int = 3) -> tuple[bytes, bytes | None]:
    env = pb.Envelope(job_id=j.job_id, step=step, party=p)
    env.confirm_request.round = 1
    env.confirm_request.survivors.extend(survivors)
    return j.nodes[p].handle(pack(env), states[p])


def _unmask(j: Joined, states: dict[int, bytes | None], p: int, survivors: list[int],
            dropped: list[int], confirmations: dict[int, bytes], step: int = 4) -> bytes:
    env = pb.Envelope(job_id=j.job_id, step=step, party=p)
    u = env.unmask_request
    u.round = 1
    u.survivors.extend(survivors)
    u.dropped.extend(dropped)
    for q, sig in confirmations.items():
        u.confirmations[q] = sig
    reply, _ = j.nodes[p].handle(pack(env), states[p])
    return reply


def test_a_party_confirms_one_survivor_list_per_round(tmp_path: Path) -> None:
    j, states = _measured(tmp_path)
    reply, states[1] = _confirm(j, states, 1, [1, 2, 3])
    assert _body(reply) == "confirm_reply"
    again, _ = _confirm(j, states, 1, [1, 2, 3], step=4)
    assert "already confirmed" in _refusal_text(again)


def test_unmask_needs_t_confirmations_of_the_same_list(tmp_path: Path) -> None:
    """Shown before this check: different survivor lists opened the sum of two honest parties
    with a fraction of the noise every ledger charged."""
    j, states = _measured(tmp_path)
    sigs = {}
    for p in (1, 2, 3):
        reply, states[p] = _confirm(j, states, p, [1, 2, 3])
        sigs[p] = _parse(reply).confirm_reply.signature
    two = {p: sigs[p] for p in (1, 2)}  # below t = 3
    assert "below t=3" in _refusal_text(_unmask(j, states, 1, [1, 2, 3], [], two))
    forged = {**two, 3: sigs[1]}
    assert "below t=3" in _refusal_text(_unmask(j, states, 1, [1, 2, 3], [], forged))
    assert "not the one this party confirmed" in _refusal_text(
        _unmask(j, states, 1, [1, 2], [3], sigs))
    # with t confirmations of its own list the party goes on to the shares (none relayed here)
    assert "no share from survivor" in _refusal_text(_unmask(j, states, 1, [1, 2, 3], [], sigs))


def test_confirmations_bind_the_request_each_party_answered(tmp_path: Path) -> None:
    """A coordinator that asks parties for different noise variances gets confirmations over
    different digests, which no party accepts."""
    j = _join(tmp_path, noise_seed=None, epsilon_cap=100.0)
    states = {}
    for p, var in ((1, 400.0), (2, 40.0), (3, 40.0)):
        reply, states[p] = j.nodes[p].handle(_measure_bytes(j, p, variance=var), j.states[p])
        assert _body(reply) == "measure_reply"
    sigs = {}
    for p in (1, 2, 3):
        reply, states[p] = _confirm(j, states, p, [1, 2, 3])
        sigs[p] = _parse(reply).confirm_reply.signature
    assert "below t=3" in _refusal_text(_unmask(j, states, 1, [1, 2, 3], [], sigs))


# --- one-shot mask keys: announced one round ahead, used once, deleted ----------------------------


def test_a_round_without_an_announced_mask_key_is_refused_before_anything_is_charged(
        tmp_path: Path) -> None:
    j = _join(tmp_path, announce=False)
    reply, _ = j.nodes[1].handle(_measure_bytes(j, 1), j.states[1])
    assert "announced no mask key for this round" in _refusal_text(reply)
    assert _ledger_lines(j.nodes[1].policy.ledger_path) == []


@pytest.mark.parametrize("swap", ["foreign-signature", "other-partys-key", "missing"])
def test_a_mask_key_without_its_round_signature_is_refused(tmp_path: Path, swap: str) -> None:
    j = _join(tmp_path)
    keys = j.mask[1]
    if swap == "foreign-signature":
        keys[2] = (keys[2][0], keys[3][1])
    elif swap == "other-partys-key":
        keys[2] = keys[3]
    else:
        del keys[2]
    reply, _ = j.nodes[1].handle(_measure_bytes(j, 1), j.states[1])
    assert "mask key of party 2 is missing or does not carry" in _refusal_text(reply)
    assert _ledger_lines(j.nodes[1].policy.ledger_path) == []


def test_a_mask_key_signed_for_another_round_is_refused(tmp_path: Path) -> None:
    j = _join(tmp_path)
    _announce(j, round_id=5, step=2)  # valid keys, signed for round 5
    j.mask[1] = j.mask[5]
    reply, _ = j.nodes[1].handle(_measure_bytes(j, 1, step=3), j.states[1])
    assert "does not carry its identity signature for this round" in _refusal_text(reply)


def test_a_party_announces_one_mask_key_per_round_and_none_for_past_rounds(
        tmp_path: Path) -> None:
    j = _join(tmp_path)
    reply, _ = j.nodes[1].handle(_keys_bytes(j, 1, step=2), j.states[1])
    assert "already announced a mask key" in _refusal_text(reply)
    reply, state = j.nodes[1].handle(_measure_bytes(j, 1, step=2), j.states[1])
    assert _body(reply) == "measure_reply"
    # round 2's key came with the reply: neither round 1 nor round 2 can be announced again
    for round_id in (1, 2):
        reply, _ = j.nodes[1].handle(_keys_bytes(j, 1, step=3, round_id=round_id), state)
        assert "already announced a mask key" in _refusal_text(reply)
    # nor can a coordinator pile up keys for far rounds
    state_now = state
    reply, state_now = j.nodes[1].handle(_keys_bytes(j, 1, step=3, round_id=7), state_now)
    assert _body(reply) == "mask_keys_reply"
    reply, _ = j.nodes[1].handle(_keys_bytes(j, 1, step=4, round_id=8), state_now)
    assert "already holds mask keys for rounds [2, 7]" in _refusal_text(reply)


def test_a_rounds_mask_key_is_deleted_once_it_has_masked_and_the_next_is_announced(
        tmp_path: Path) -> None:
    from fedsynth.crypto import secagg

    j = _join(tmp_path)
    before = json.loads(j.states[1] or b"{}")
    assert sorted(before["mask_keys"]) == ["1"]
    assert secagg.public_of(bytes.fromhex(before["mask_keys"]["1"])) == j.mask[1][1][0]
    reply, state = j.nodes[1].handle(_measure_bytes(j, 1), j.states[1])
    nxt = _parse(reply).measure_reply.next_mask_key
    after = json.loads(state or b"{}")
    assert sorted(after["mask_keys"]) == ["2"]  # round 1's key is gone
    assert before["mask_keys"]["1"] not in (state or b"").decode()
    assert nxt.round == 2 and secagg.public_of(bytes.fromhex(after["mask_keys"]["2"])) == \
        nxt.public_key
    assert secagg.verify_mask_key(IDS[0].public, nxt.signature, job_id=j.job_id, party=1,
                                  round_id=2, public_key=nxt.public_key)
    assert sorted(nxt.encrypted_shares) == [2, 3]


def test_the_key_exchange_pins_the_job_keys_like_a_round(tmp_path: Path) -> None:
    from fedsynth.crypto.secagg import KeyPair

    j = _join(tmp_path, announce=False)
    j.publics[3] = KeyPair.generate().public
    reply, _ = j.nodes[1].handle(_keys_bytes(j, 1, step=2), j.states[1])
    assert "does not carry its identity signature" in _refusal_text(reply)


def test_a_plain_job_has_no_mask_keys(tmp_path: Path) -> None:
    j = _join(tmp_path, _spec(channel="plain"), channels=("secagg", "plain"))
    reply, _ = j.nodes[1].handle(_keys_bytes(j, 1, step=2), j.states[1])
    assert "plain channel has no mask keys" in _refusal_text(reply)


def test_injected_dropout_at_a_rounds_unmask_step(tmp_path: Path) -> None:
    j = _join(tmp_path, fail_at=(1, "unmask"))
    reply, state = j.nodes[1].handle(_measure_bytes(j, 1), j.states[1])
    assert _body(reply) == "measure_reply"
    env = pb.Envelope(job_id=j.job_id, step=3, party=1)
    env.confirm_request.round = 1
    env.confirm_request.survivors.extend([1, 2, 3])
    reply, state = j.nodes[1].handle(pack(env), state)
    assert _body(reply) == "confirm_reply"
    env = pb.Envelope(job_id=j.job_id, step=4, party=1)
    env.unmask_request.round = 1
    with pytest.raises(DropOut):
        j.nodes[1].handle(pack(env), state)
    with pytest.raises(DropOut):  # and silent from then on
        j.nodes[1].handle(_measure_bytes(j, 1, step=5, round_id=2), state)
    with pytest.raises(ValueError, match="not one of"):
        _policy(tmp_path / "x", 1, _frame(5, 1), fail_at=(1, "later"))
