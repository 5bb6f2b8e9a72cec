"""The contract every registered channel meets, run over the real path: `Node`s behind a
`LocalTransport`, the coordinator's `Exchange` and `secure_sum`.

Parametrized over `protocols.channels.CHANNELS`, so a channel registered later is held to it
without a new test. The contract:
- exact sums: a round's total is exactly the sum of the contributors' vectors, over random
  small n and t, with parties dropping out down to t: in the measure step for every channel,
  and, for a channel with a follow-up exchange, also during it (any t answers suffice). A
  channel without a follow-up (plain) has no later step to drop out of: its contributors are
  the parties that answered the measure request.
- refusal below t: fewer than t measure replies (or follow-up answers) stop the round with
  RoundFailed and no sum; a party refuses a round naming fewer than t participants.
- what the coordinator sees is what the channel declares: a protected channel never shows
  one party's vector in the clear (nor the sum before the follow-up exchange), and an
  unprotected one (plain) says so, and then each party carries the full noise. Keys and
  follow-up messages travel exactly when the channel declares them.
- replay: a round is answered once; a replayed request of a finished round (with a fresh
  step, so that it passes the step check) is refused at every step, and so is the round.

A channel with a key holder (he) gets one in the harness's LocalTransport (party 0), and the
coordinator's setup asks it for the job's public context first. What the coordinator sees is
then ciphertext: the measure reply holds no party's vector, the coordinator's context cannot
decrypt, and the sum comes from the key holder's one decryption of the round.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fedsynth.client_node.node as node_module
from fedsynth.client_node.keyholder import KeyHolderNode
from fedsynth.client_node.node import Node, NodePolicy
from fedsynth.coordinator.exchange import (
    Exchange,
    JobRefused,
    PartyKeys,
    RoundResult,
    secure_sum,
    setup_request,
)
from fedsynth.crypto import he
from fedsynth.protocols import channels
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.protocols.messages import KEY_HOLDER, bytes_vector, pack
from fedsynth.protocols.secure_sum import RoundFailed
from fedsynth.protocols.spec import JobSpec, JobSpecError
from fedsynth.simulations.local import LocalTransport
from fedsynth.simulations.parties import (
    job_spec,
    key_holder_identity,
    key_holder_policy,
    make_identities,
    write_parties,
)
from fedsynth.synthesis import marginals
from fedsynth.synthesis.encoding import Encoding, Grouping
from fedsynth.synthesis.schema import Column, Schema

NAMES = channels.names()
SCHEMA = Schema((
    Column("colour", "categorical", ("blue", "green", "red")),
    Column("age", "integer", lower=18, upper=90),
    Column("score", "continuous", lower=0.0, upper=1.0),
))
SIZES = Encoding.from_schema(SCHEMA).sizes
CLIQUES = [(0,), (1,), (2,), (0, 1)]
LENGTH = marginals.vector_length(CLIQUES, SIZES)
IDS = make_identities(6)
KH = key_holder_identity()


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"colour": rng.choice(["blue", "green", "red"], n),
                         "age": rng.integers(18, 91, n), "score": rng.random(n)})


def _spec(channel: str, n: int, t: int) -> JobSpec:
    return job_spec(SCHEMA, IDS[:n], epsilon=50.0, delta=1e-6, threshold=t, channel=channel,
                    key_holder=KH)


def _thresholds(channel: str, n: int) -> list[int]:
    """Every t the channel accepts for n parties (the spec asks the channel)."""
    out = []
    for t in range(1, n + 1):
        try:
            _spec(channel, n, t)
        except JobSpecError:
            continue
        out.append(t)
    return out


class Recorder:
    """A LocalTransport that keeps what the coordinator sent and received."""

    def __init__(self, nodes: Mapping[int, Node], key_holder: KeyHolderNode | None) -> None:
        self.inner = LocalTransport(nodes, key_holder=key_holder)
        self.requests: list[tuple[int, pb.Envelope]] = []
        self.replies: list[tuple[int, pb.Envelope]] = []

    def parties(self) -> list[int]:
        return self.inner.parties()

    def exchange(self, requests: Mapping[int, bytes], *, timeout: float) -> dict[int, bytes]:
        for p, data in requests.items():
            self.requests.append((p, pb.Envelope.FromString(data)))
        out = self.inner.exchange(requests, timeout=timeout)
        for p, data in out.items():
            self.replies.append((p, pb.Envelope.FromString(data)))
        return out

    def bodies(self, which: list[tuple[int, pb.Envelope]]) -> set[str]:
        return {e.WhichOneof("body") or "" for _, e in which}


@dataclasses.dataclass
class Job:
    spec: JobSpec
    channel: channels.Channel
    ex: Exchange
    transport: Recorder
    keys: PartyKeys
    vectors: dict[tuple[int, int], np.ndarray]  # (party, round) -> the vector it contributed

    def round(self, round_id: int = 1, participants: list[int] | None = None) -> RoundResult:
        return secure_sum(self.ex, round_id=round_id, label="contract",
                          channel=self.spec.channel, threshold=self.spec.threshold,
                          participants=participants or list(range(1, self.spec.parties + 1)),
                          keys=self.keys, groupings=[Grouping.identity(s) for s in SIZES],
                          cliques=CLIQUES, length=LENGTH, noise_variance=100.0)

    def expected(self, round_id: int, over: list[int]) -> np.ndarray:
        return np.sum([self.vectors[(p, round_id)] for p in over], axis=0, dtype=np.int64)


def _job(tmp: Path, monkeypatch: pytest.MonkeyPatch, channel: str, n: int, t: int,
         fail: Mapping[int, tuple[int, str]] | None = None) -> Job:
    spec = _spec(channel, n, t)
    policies: dict[int, NodePolicy] = write_parties(
        tmp / uuid.uuid4().hex, [_frame(30 + 5 * p, p) for p in range(1, n + 1)], spec, IDS[:n])
    fail = fail or {}
    nodes = {p: Node(dataclasses.replace(pol, fail_at=fail.get(p)))
             for p, pol in policies.items()}
    vectors: dict[tuple[int, int], np.ndarray] = {}
    real = node_module.party_measure_reply

    def spy(values: np.ndarray, **kw: Any) -> Any:
        vectors[(kw["me"], kw["round_id"])] = values.astype(np.int64).copy()
        return real(values, **kw)

    monkeypatch.setattr(node_module, "party_measure_reply", spy)
    holder = KeyHolderNode(key_holder_policy(KH)) if channels.get(channel).key_holder else None
    transport = Recorder(nodes, holder)
    ex = Exchange(transport, uuid.uuid4().hex, identities={p: spec.identity_of(p) for p in nodes})
    setup = setup_request(ex, spec)  # asks the key holder first, if the channel has one
    replies = ex.call({p: ("setup_request", setup) for p in nodes}, "setup_reply")
    keys = PartyKeys({p: e.setup_reply.public_key for p, e in replies.items()},
                     {p: e.setup_reply.key_signature for p, e in replies.items()})
    return Job(spec, channels.get(channel), ex, transport, keys, vectors)


def _lowest_t_at_least_2(channel: str, n: int) -> int:
    return min(t for t in _thresholds(channel, n) if t >= 2)


# --- the registry itself ------------------------------------------------------------------------


def test_secagg_he_and_plain_are_registered_and_specs_accept_exactly_the_registered_names():
    assert {"secagg", "plain", "he"} <= set(NAMES)
    for name in NAMES:
        assert channels.get(name).name == name
        assert _thresholds(name, 5)  # some t works for 5 parties
    with pytest.raises(channels.UnknownChannel, match="registered channels: secagg, plain"):
        channels.get("carrier-pigeon")
    with pytest.raises(JobSpecError, match="channel 'carrier-pigeon'"):
        _spec("carrier-pigeon", 3, 3)


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="already registered"):
        channels.register("secagg", channels.get("plain"))


# --- exact sums with dropouts down to t ---------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_sums_are_exact_with_dropouts_down_to_t(name: str, data: st.DataObject,
                                                tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    n = data.draw(st.integers(3, 6), label="n")
    t = data.draw(st.sampled_from(_thresholds(name, n)), label="t")
    order = data.draw(st.permutations(range(1, n + 1)), label="order")
    k = data.draw(st.integers(0, n - t), label="measure dropouts")
    follow_up = channels.get(name).follow_up
    j = data.draw(st.integers(0, n - k - t) if follow_up else st.just(0), label="later dropouts")
    fail = {p: (1, "measure") for p in order[:k]}
    fail |= {p: (1, "unmask") for p in order[k:k + j]}
    job = _job(tmp_path, monkeypatch, name, n, t, fail)
    res = job.round()
    contributors = sorted(set(range(1, n + 1)) - set(order[:k]))
    assert res.contributors == contributors
    np.testing.assert_array_equal(res.total, job.expected(1, contributors))


@pytest.mark.parametrize("name", NAMES)
def test_a_second_round_sums_exactly_too(name: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    job = _job(tmp_path, monkeypatch, name, 5, max(_thresholds(name, 5)) - 1)
    first = job.round(1)
    second = job.round(2, first.responsive)
    np.testing.assert_array_equal(second.total, job.expected(2, second.contributors))
    assert second.contributors == [1, 2, 3, 4, 5]


# --- refusal below t ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_fewer_than_t_measure_replies_stop_the_round(name: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    t = _lowest_t_at_least_2(name, 5)
    fail = {p: (1, "measure") for p in range(1, 5 - t + 2)}  # t - 1 parties left
    job = _job(tmp_path, monkeypatch, name, 5, t, fail)
    with pytest.raises(RoundFailed, match=f"below the threshold t={t}"):
        job.round()
    assert not {"unmask_request", "decrypt_request"} & job.transport.bodies(
        job.transport.requests)


@pytest.mark.parametrize("name", [n for n in NAMES if channels.get(n).follow_up])
def test_fewer_than_t_follow_up_answers_stop_the_round(name: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    t = _lowest_t_at_least_2(name, 5)
    fail = {p: (1, "unmask") for p in range(1, 5 - t + 2)}
    job = _job(tmp_path, monkeypatch, name, 5, t, fail)
    with pytest.raises(RoundFailed, match=f"below the threshold t={t}"):
        job.round()


@pytest.mark.parametrize("name", NAMES)
def test_parties_refuse_a_round_naming_fewer_than_t_participants(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = _lowest_t_at_least_2(name, 5)
    job = _job(tmp_path, monkeypatch, name, 5, t)
    with pytest.raises(JobRefused, match=f"participants \\(t={t}\\)"):
        job.round(participants=list(range(1, t)))
    assert not job.vectors  # nothing was contributed


# --- what the coordinator sees is what the channel declares ---------------------------------------


def _measure_replies(job: Job) -> dict[int, pb.Envelope]:
    return {p: e for p, e in job.transport.replies if e.WhichOneof("body") == "measure_reply"}


def _measured(job: Job) -> dict[int, np.ndarray]:
    return {p: bytes_vector(e.measure_reply.masked, length=LENGTH, sender="p").view(np.int64)
            for p, e in _measure_replies(job).items()}


def _assert_ciphertext_only(job: Job, res: RoundResult) -> None:
    """Under a key holder's channel the coordinator gets ciphertexts it cannot decrypt."""
    replies = _measure_replies(job)
    assert sorted(replies) == res.contributors
    for p, env in replies.items():
        assert not env.measure_reply.masked and env.measure_reply.ciphertexts
        wire = env.SerializeToString()
        for q in res.contributors:  # no party's vector in the reply's bytes
            assert job.vectors[(q, 1)].astype("<i8").tobytes() not in wire, (p, q)
            assert job.vectors[(q, 1)].astype("<i4").tobytes() not in wire, (p, q)
    public = job.ex.he_context
    assert public is not None
    assert not public.context.is_private() and not public.context.has_secret_key()
    chunk = replies[res.contributors[0]].measure_reply.ciphertexts[0]
    with pytest.raises(ValueError, match="secret"):
        he.ts.bfv_vector_from(public.context, chunk[he.TAG_BYTES:]).decrypt()
    decrypts = [e for p, e in job.transport.requests if e.WhichOneof("body") == "decrypt_request"]
    assert len(decrypts) == 1 and decrypts[0].party == KEY_HOLDER  # one decryption: the sum
    assert list(decrypts[0].decrypt_request.contributors) == res.contributors


@pytest.mark.parametrize("name", NAMES)
def test_the_coordinator_sees_one_partys_vector_only_if_the_channel_says_so(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = max(_thresholds(name, 5)) - 1
    job = _job(tmp_path, monkeypatch, name, 5, t, {5: (1, "measure")})
    res = job.round()
    if job.channel.key_holder:
        _assert_ciphertext_only(job, res)
        assert job.channel.noise_divisor(job.spec) == job.spec.honest_min
        np.testing.assert_array_equal(res.total, job.expected(1, res.contributors))
        return
    seen = _measured(job)
    assert sorted(seen) == res.contributors == [1, 2, 3, 4]
    if job.channel.protected:
        for p, y in seen.items():
            for q in res.contributors:  # no coordinate of anyone's vector shows through
                assert not np.any(y == job.vectors[(q, 1)]), (p, q)
        before = np.sum(list(seen.values()), axis=0, dtype=np.int64)
        assert not np.any(before == res.total)  # the sum needs the follow-up exchange
        assert job.channel.noise_divisor(job.spec) == job.spec.honest_min
    else:
        for p, y in seen.items():
            np.testing.assert_array_equal(y, job.vectors[(p, 1)])
        assert job.channel.noise_divisor(job.spec) == 1 == job.spec.noise_divisor
    np.testing.assert_array_equal(res.total, job.expected(1, res.contributors))


@pytest.mark.parametrize("name", NAMES)
def test_keys_and_follow_up_travel_exactly_when_the_channel_declares_them(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = _job(tmp_path, monkeypatch, name, 4, max(_thresholds(name, 4)))
    job.round()
    ch, sent = job.channel, job.transport.bodies(job.transport.requests)
    assert ("mask_keys_request" in sent) == ch.round_keys
    assert ({"confirm_request", "unmask_request"} <= sent) == ch.follow_up
    assert ({"key_setup_request", "decrypt_request"} <= sent) == ch.key_holder
    assert any(p == KEY_HOLDER for p, _ in job.transport.requests) == ch.key_holder
    if not ch.follow_up:
        assert not sent & {"confirm_request", "unmask_request"}
    for _, env in job.transport.requests:
        if env.WhichOneof("body") == "measure_request":
            assert bool(env.measure_request.public_keys) == ch.setup_keys
            assert bool(env.measure_request.mask_keys) == ch.round_keys
    for _, env in job.transport.replies:
        if env.WhichOneof("body") == "measure_reply":
            assert env.measure_reply.HasField("next_mask_key") == ch.round_keys
            assert bool(env.measure_reply.ciphertexts) == ch.key_holder


# --- replay -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_a_finished_round_is_not_answered_again(name: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    job = _job(tmp_path, monkeypatch, name, 4, max(_thresholds(name, 4)))
    job.round()
    replayed = 0
    for p, env in list(job.transport.requests):
        body = env.WhichOneof("body")
        if body == "setup_request":
            continue
        again = pb.Envelope()
        again.CopyFrom(env)
        job.ex.step += 1
        again.step = job.ex.step  # a fresh step: only the round's own bookkeeping can refuse
        out = job.transport.inner.exchange({p: pack(again)}, timeout=5.0)
        reply = pb.Envelope.FromString(out[p])
        assert reply.WhichOneof("body") == "refusal", (p, body)
        replayed += 1
    assert replayed >= 4
    with pytest.raises(JobRefused):
        job.round()  # the whole round once more
