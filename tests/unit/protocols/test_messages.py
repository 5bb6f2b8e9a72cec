"""Tests of Envelope parsing and validation in fedsynth.protocols.messages."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.protocols import messages
from fedsynth.protocols.messages import (
    PROTOCOL_VERSION,
    PartyRefused,
    ProtocolError,
    bytes_vector,
    pack,
    refusal,
    unpack,
    vector_bytes,
)

JOB = "job-messages"


def _measure_reply(*, job_id: str = JOB, step: int = 5, party: int = 2) -> bytes:
    env = pb.Envelope(job_id=job_id, step=step, party=party)
    env.measure_reply.round = 1
    env.measure_reply.masked = vector_bytes(np.arange(3, dtype=np.uint64))
    return pack(env)


def test_pack_unpack_round_trip():
    env = unpack(_measure_reply(), sender="party 2", expect="measure_reply", job_id=JOB,
                 after_step=4)
    assert env.version == PROTOCOL_VERSION
    assert env.WhichOneof("body") == "measure_reply"
    assert (env.job_id, env.step, env.party) == (JOB, 5, 2)
    np.testing.assert_array_equal(bytes_vector(env.measure_reply.masked, length=3, sender="p"),
                                  [0, 1, 2])


@pytest.mark.parametrize(
    "garbage",
    [b"\xff\xff\xff\xff", b"not a protobuf at all", b"\x0a\xff\xff\xff\xff\x0f", b"\x00",
     b"", b"\x08\x01", b"\x08\x02\x12\x01x"],
)
def test_unpack_rejects_garbage(garbage):
    with pytest.raises(ProtocolError, match="party 9"):
        unpack(garbage, sender="party 9", expect="measure_reply")


def test_unpack_rejects_truncated_messages():
    data = _measure_reply()
    for cut in range(1, len(data)):
        with pytest.raises(ProtocolError):
            unpack(data[:cut], sender="party 2", expect="measure_reply", job_id=JOB)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_unpack_on_arbitrary_bytes_raises_only_protocol_error(data):
    try:
        env = unpack(data, sender="x", expect="measure_reply", job_id=JOB, after_step=0)
    except ProtocolError:
        return
    # the rare bytes that do parse must have passed every check
    assert env.version == PROTOCOL_VERSION
    assert env.WhichOneof("body") == "measure_reply"
    assert env.job_id == JOB and env.step > 0


@pytest.mark.parametrize("payload", ["a string", None, 42, memoryview(b"abc")])
def test_unpack_rejects_non_bytes(payload):
    with pytest.raises(ProtocolError, match="not bytes"):
        unpack(payload, sender="x", expect="measure_reply")


def test_unpack_rejects_another_protocol_version():
    env = pb.Envelope(job_id=JOB, step=1, version=PROTOCOL_VERSION + 1)
    env.measure_reply.round = 1
    with pytest.raises(ProtocolError, match="protocol version"):
        unpack(env.SerializeToString(), sender="x", expect="measure_reply")


def test_unpack_rejects_wrong_job_id():
    data = _measure_reply(job_id="another-job")
    with pytest.raises(ProtocolError, match="another-job"):
        unpack(data, sender="x", expect="measure_reply", job_id=JOB)
    assert unpack(data, sender="x", expect="measure_reply").job_id == "another-job"


@pytest.mark.parametrize("after_step", [5, 6, 100])
def test_unpack_rejects_replayed_steps(after_step):
    with pytest.raises(ProtocolError, match="replayed"):
        unpack(_measure_reply(step=5), sender="x", expect="measure_reply", job_id=JOB,
               after_step=after_step)


def test_unpack_accepts_the_next_step():
    assert unpack(_measure_reply(step=5), sender="x", expect="measure_reply",
                  after_step=4).step == 5


def test_unpack_rejects_the_wrong_body_type():
    with pytest.raises(ProtocolError, match="expected a unmask_reply message, got measure_reply"):
        unpack(_measure_reply(), sender="x", expect="unmask_reply")
    with pytest.raises(ProtocolError, match="setup_reply or unmask_reply"):
        unpack(_measure_reply(), sender="x", expect=("setup_reply", "unmask_reply"))
    assert unpack(_measure_reply(), sender="x",
                  expect=("setup_reply", "measure_reply")).HasField("measure_reply")


def test_unpack_rejects_an_envelope_without_body():
    with pytest.raises(ProtocolError, match="got nothing"):
        unpack(pack(pb.Envelope(job_id=JOB, step=1)), sender="x", expect="measure_reply")


def test_refusal_raises_party_refused_with_its_problems():
    problems = ["epsilon 5 exceeds this party's cap 1", "column 'age' is missing"]
    data = refusal(job_id=JOB, step=3, party=4, reason="policy", problems=problems)
    with pytest.raises(PartyRefused) as info:
        unpack(data, sender="party 4", expect="measure_reply", job_id=JOB)
    err = info.value
    assert isinstance(err, ProtocolError)
    assert err.sender == "party 4"
    assert err.reason == "policy"
    assert err.problems == problems
    assert all(p in str(err) for p in problems)


def test_refusal_is_returned_when_expected():
    data = refusal(job_id=JOB, step=3, party=4, reason="budget", problems=["over cap"])
    env = unpack(data, sender="party 4", expect=("measure_reply", "refusal"))
    assert env.refusal.reason == "budget"
    assert list(env.refusal.problems) == ["over cap"]


def test_size_limits(monkeypatch):
    monkeypatch.setattr(messages, "MAX_MESSAGE_BYTES", 64)
    big = pb.Envelope(job_id=JOB, step=1)
    big.measure_reply.masked = b"\x00" * 128
    with pytest.raises(ProtocolError, match="exceeds"):
        pack(big)
    with pytest.raises(ProtocolError, match="size limit"):
        unpack(b"\x00" * 65, sender="x", expect="measure_reply")


@settings(max_examples=100, deadline=None)
@given(words=st.lists(st.integers(0, 2**64 - 1), max_size=50))
def test_vector_bytes_round_trip(words):
    v = np.array(words, dtype=np.uint64)
    b = vector_bytes(v)
    assert len(b) == 8 * len(words)
    back = bytes_vector(b, length=len(words), sender="x")
    assert back.dtype == np.uint64
    np.testing.assert_array_equal(back, v)
    back[:] = 0  # writable, not a view of immutable bytes


def test_vector_bytes_is_little_endian():
    assert vector_bytes(np.array([1], dtype=np.uint64)) == b"\x01" + b"\x00" * 7
    big_endian = np.array([1, 2], dtype=">u8")
    assert vector_bytes(big_endian) == vector_bytes(np.array([1, 2], dtype=np.uint64))


@settings(max_examples=100, deadline=None)
@given(length=st.integers(0, 40), n_bytes=st.integers(0, 400))
def test_bytes_vector_rejects_wrong_lengths(length, n_bytes):
    data = b"\x01" * n_bytes
    if n_bytes == 8 * length:
        assert bytes_vector(data, length=length, sender="party 3").shape == (length,)
    else:
        with pytest.raises(ProtocolError, match="party 3"):
            bytes_vector(data, length=length, sender="party 3")


def test_stale_refusal_is_ignored_not_obeyed() -> None:
    from fedsynth.protocols.messages import PartyRefused, ProtocolError, refusal, unpack

    other_job = refusal(job_id="old-job", step=9, party=1, reason="no", problems=[])
    with pytest.raises(ProtocolError) as info:
        unpack(other_job, sender="party 1", expect="measure_reply", job_id="job", after_step=3)
    assert not isinstance(info.value, PartyRefused)
    replayed = refusal(job_id="job", step=2, party=1, reason="no", problems=[])
    with pytest.raises(ProtocolError) as info:
        unpack(replayed, sender="party 1", expect="measure_reply", job_id="job", after_step=3)
    assert not isinstance(info.value, PartyRefused)
    current = refusal(job_id="job", step=4, party=1, reason="over budget", problems=["x"])
    with pytest.raises(PartyRefused, match="over budget"):
        unpack(current, sender="party 1", expect="measure_reply", job_id="job", after_step=3)
    unparsable = refusal(job_id="", step=0, party=0, reason="corrupted", problems=[])
    with pytest.raises(PartyRefused):
        unpack(unparsable, sender="party 1", expect="measure_reply", job_id="job", after_step=3)
