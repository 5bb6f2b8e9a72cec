"""Tests of JobSpec validation and its wire form (fedsynth.protocols.spec)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fedsynth.protocols import channels
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.protocols.spec import (
    CHANNELS,
    JobSpec,
    JobSpecError,
    default_threshold,
    min_threshold,
    schema_sha256,
)
from fedsynth.simulations.parties import key_holder_identity, make_identities
from fedsynth.synthesis.schema import Column, Schema, infer_schema

SCHEMA = infer_schema(pd.DataFrame({
    "age": [23, 45, 67, 31],
    "income": [1200.5, 3400.25, 560.0, 980.75],
    "city": ["Oslo", "Lyon", "Oslo", "Porto"],
    "default": [True, False, False, True],
}))


IDS = make_identities(50)
KH = key_holder_identity()


def _named(n: int, channel: str = "secagg") -> dict:
    n = max(n, 0)
    holder = {"key_holder": KH.public} if channel in CHANNELS and channels.get(
        channel).key_holder else {}
    return {"party_names": tuple(i.name for i in IDS[:n]),
            "identity_keys": tuple(i.public for i in IDS[:n]), **holder}


def _spec(**kw) -> JobSpec:
    base = dict(schema=SCHEMA, epsilon=1.0, delta=1e-6, parties=5, threshold=4, colluders=1)
    args = {**base, **kw}
    return JobSpec(**{**_named(args["parties"], args.get("channel", "secagg")), **args})


def _t_min(channel: str, parties: int, colluders: int) -> int | None:
    """The smallest t the channel itself accepts (its `spec_problems`), above c."""
    return next((t for t in range(colluders + 1, parties + 1) if not channels.get(
        channel).spec_problems(parties=parties, threshold=t, colluders=colluders)), None)


def test_a_valid_spec_and_its_honest_minimum():
    spec = _spec()
    assert spec.channel == "secagg" and spec.method == "marginals"
    assert spec.honest_min == 3
    assert spec.noise_divisor == 3
    assert _spec(channel="plain").noise_divisor == 1  # plain: each party carries it all


@pytest.mark.parametrize(("n", "c", "t_ok"), [(2, 0, 2), (3, 0, 3), (4, 0, 3), (5, 0, 4),
                                              (5, 1, 4), (5, 2, 5), (10, 0, 6), (10, 3, 8)])
def test_threshold_must_satisfy_2t_at_least_n_plus_c_plus_2(n, c, t_ok):
    """Shown on the old code: n=5, t=3 let differing survivor lists unmask one party."""
    assert min_threshold(n, c) == t_ok
    assert _spec(parties=n, colluders=c, threshold=t_ok).threshold == t_ok
    with pytest.raises(JobSpecError, match="2t >= n \\+ c \\+ 2"):
        _spec(parties=n, colluders=c, threshold=t_ok - 1)


def _attack_exists(n: int, c: int, t: int) -> bool:
    """Whether a coordinator can split the honest parties other than u into A (told "u
    survived": they release u's self-mask shares) and B (told "u dropped": they release their
    pair seeds with u), with u told "A dropped" (it releases its pair seeds with A), such that
    every list an honest party accepts names at least t survivors and u's self-mask has t
    shares: 1 + |A| + c >= t (shares and A's list), 1 + |B| + c >= t (u's list),
    |A| + |B| + c >= t (B's list)."""
    others = n - c - 1
    return any(1 + a + c >= t and 1 + (others - a) + c >= t and others + c >= t
               for a in range(others + 1))


@pytest.mark.parametrize("n", range(2, 13))
def test_the_2t_rule_is_exactly_where_differing_survivor_lists_stop_working(n):
    for c in range(0, n - 1):
        for t in range(c + 1, n + 1):
            assert _attack_exists(n, c, t) == (2 * t <= n + c + 1), (n, c, t)


def test_a_spec_must_name_its_parties_and_identity_keys():
    with pytest.raises(JobSpecError, match="name each of its 5 parties"):
        JobSpec(schema=SCHEMA, epsilon=1.0, delta=1e-6, parties=5, threshold=4)
    dup = _named(5)
    dup["party_names"] = ("a", "a", "b", "c", "d")
    with pytest.raises(JobSpecError, match="distinct"):
        JobSpec(schema=SCHEMA, epsilon=1.0, delta=1e-6, parties=5, threshold=4, **dup)


def test_schema_hash_pins_columns_and_domains_only():
    assert schema_sha256(SCHEMA) == schema_sha256(Schema.from_json(SCHEMA.to_json()))
    assert schema_sha256(SCHEMA) == schema_sha256(Schema(SCHEMA.columns, meta={"note": "x"}))
    cols = list(SCHEMA.columns)
    age = cols[0]
    cols[0] = Column(age.name, age.kind, lower=age.lower, upper=(age.upper or 0) - 1)
    assert schema_sha256(Schema(tuple(cols))) != schema_sha256(SCHEMA)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"threshold": 6}, "threshold t=6"),
        ({"threshold": 0, "colluders": 0}, "threshold t=0"),
        ({"colluders": 4}, "colluders c=4"),
        ({"colluders": 5}, "colluders c=5"),
        ({"colluders": -1}, "colluders c=-1"),
        ({"channel": "he", "key_holder": b""}, "channel 'he' needs the key holder's"),
        ({"channel": "he", "threshold": 1, "colluders": 0}, "he needs t >= 2"),
        ({"channel": "he", "key_holder": IDS[2].public}, "must not be one of the job's parties"),
        ({"key_holder": KH.public}, "channel 'secagg' has no key holder"),
        ({"channel": "SECAGG"}, "channel 'SECAGG'"),
        ({"method": "gan"}, "method 'gan'"),
        ({"epsilon": 0.0}, "--epsilon"),
        ({"epsilon": -2.0}, "--epsilon"),
        ({"epsilon": math.nan}, "--epsilon"),
        ({"delta": 0.0}, "--delta"),
        ({"delta": 1.0}, "--delta"),
        ({"parties": 0, "threshold": 0, "colluders": 0}, "at least one party"),
        ({"threshold": 1, "colluders": 0}, "secagg needs t >= 2"),
        ({"threshold": 3, "colluders": 0}, "2t >= n \\+ c \\+ 2"),
    ],
)
def test_invalid_specs_are_rejected_with_the_problem(kw, match):
    with pytest.raises(JobSpecError, match=match):
        _spec(**kw)


def test_single_party_and_plain_channel_allow_t_equal_1():
    assert _spec(parties=1, threshold=1, colluders=0).threshold == 1
    assert _spec(threshold=1, colluders=0, channel="plain").channel == "plain"


def test_every_problem_is_listed_at_once():
    with pytest.raises(JobSpecError) as info:
        _spec(epsilon=-1.0, threshold=9, colluders=9, channel="carrier-pigeon")
    text = str(info.value)
    for fragment in ("epsilon", "threshold t=9", "colluders c=9", "carrier-pigeon"):
        assert fragment in text


def test_spec_round_trips_through_proto_and_bytes():
    spec = _spec(epsilon=0.7, delta=3e-7, colluders=2, channel="plain", threshold=4)
    assert len(spec.identity_keys) == 5
    wire = pb.JobSpec.FromString(spec.to_proto().SerializeToString())
    back = JobSpec.from_proto(wire)
    assert back == spec
    assert back.schema == SCHEMA
    assert Schema.from_json(wire.schema_json) == SCHEMA


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_valid_specs_round_trip_property(data):
    parties = data.draw(st.integers(1, 50), label="parties")
    channel = data.draw(st.sampled_from(CHANNELS), label="channel")
    colluders = data.draw(st.integers(0, max(0, parties - 2)), label="c")
    t_min = _t_min(channel, parties, colluders)  # what the channel itself requires
    assume(t_min is not None)
    assert t_min is not None
    threshold = data.draw(st.integers(t_min, parties), label="t")
    epsilon = data.draw(st.floats(1e-3, 100.0), label="epsilon")
    delta = data.draw(st.floats(1e-15, 0.5), label="delta")
    spec = JobSpec(schema=SCHEMA, epsilon=epsilon, delta=delta, parties=parties,
                   threshold=threshold, colluders=colluders, channel=channel,
                   **_named(parties, channel))
    back = JobSpec.from_proto(pb.JobSpec.FromString(spec.to_proto().SerializeToString()))
    assert back == spec
    assert back.honest_min == threshold - colluders >= 1


def test_from_proto_validates_what_arrives():
    wire = _spec().to_proto()
    wire.threshold = 9
    with pytest.raises(JobSpecError, match="threshold t=9"):
        JobSpec.from_proto(wire)
    wire.threshold = 4
    wire.identity_keys[2] = wire.identity_keys[1]
    with pytest.raises(JobSpecError, match="distinct"):
        JobSpec.from_proto(wire)
    wire = _spec().to_proto()
    wire.threshold = 9
    with pytest.raises(JobSpecError, match="threshold t=9"):
        JobSpec.from_proto(wire)


@pytest.mark.parametrize("parties", range(1, 40))
def test_default_threshold_is_a_valid_secagg_threshold(parties):
    for c in range(0, max(1, parties - 1)):
        t = default_threshold(parties, c)
        assert 1 <= t <= parties
        assert t >= 0.8 * parties
        if parties > 1:
            assert (t >= 2 and 2 * t >= parties + c + 2) or t == parties
        if t > c:
            JobSpec(schema=SCHEMA, epsilon=1.0, delta=1e-6, parties=parties, threshold=t,
                    colluders=c, **_named(parties))
