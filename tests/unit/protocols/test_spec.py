"""Tests of JobSpec validation and its wire form (fedsynth.protocols.spec)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.protocols.spec import CHANNELS, JobSpec, JobSpecError, default_threshold
from fedsynth.synthesis.schema import Schema, infer_schema

SCHEMA = infer_schema(pd.DataFrame({
    "age": [23, 45, 67, 31],
    "income": [1200.5, 3400.25, 560.0, 980.75],
    "city": ["Oslo", "Lyon", "Oslo", "Porto"],
    "default": [True, False, False, True],
}))


def _spec(**kw) -> JobSpec:
    base = dict(schema=SCHEMA, epsilon=1.0, delta=1e-6, parties=5, threshold=3, colluders=1)
    return JobSpec(**{**base, **kw})


def test_a_valid_spec_and_its_honest_minimum():
    spec = _spec()
    assert spec.channel == "secagg" and spec.method == "marginals"
    assert spec.honest_min == 2


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"threshold": 6}, "threshold t=6"),
        ({"threshold": 0, "colluders": 0}, "threshold t=0"),
        ({"colluders": 3}, "colluders c=3"),
        ({"colluders": 4}, "colluders c=4"),
        ({"colluders": -1}, "colluders c=-1"),
        ({"channel": "he"}, "channel 'he'"),
        ({"channel": "SECAGG"}, "channel 'SECAGG'"),
        ({"method": "dpsgd"}, "method 'dpsgd'"),
        ({"epsilon": 0.0}, "--epsilon"),
        ({"epsilon": -2.0}, "--epsilon"),
        ({"epsilon": math.nan}, "--epsilon"),
        ({"delta": 0.0}, "--delta"),
        ({"delta": 1.0}, "--delta"),
        ({"parties": 0, "threshold": 0, "colluders": 0}, "at least one party"),
        ({"threshold": 1, "colluders": 0}, "secagg needs t >= 2"),
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
    t_min = 2 if channel == "secagg" and parties > 1 else 1
    threshold = data.draw(st.integers(t_min, parties), label="t")
    colluders = data.draw(st.integers(0, threshold - 1), label="c")
    epsilon = data.draw(st.floats(1e-3, 100.0), label="epsilon")
    delta = data.draw(st.floats(1e-15, 0.5), label="delta")
    spec = JobSpec(schema=SCHEMA, epsilon=epsilon, delta=delta, parties=parties,
                   threshold=threshold, colluders=colluders, channel=channel)
    back = JobSpec.from_proto(pb.JobSpec.FromString(spec.to_proto().SerializeToString()))
    assert back == spec
    assert back.honest_min == threshold - colluders >= 1


def test_from_proto_validates_what_arrives():
    wire = _spec().to_proto()
    wire.threshold = 9
    with pytest.raises(JobSpecError, match="threshold t=9"):
        JobSpec.from_proto(wire)


@pytest.mark.parametrize("parties", range(1, 40))
def test_default_threshold_is_a_valid_secagg_threshold(parties):
    t = default_threshold(parties)
    assert 1 <= t <= parties
    assert t >= 0.8 * parties
    if parties > 1:
        assert t >= 2
    JobSpec(schema=SCHEMA, epsilon=1.0, delta=1e-6, parties=parties, threshold=t)
