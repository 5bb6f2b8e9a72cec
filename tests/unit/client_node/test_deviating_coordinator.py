"""Attacks of a deviating coordinator on the secure sum, each refused by the real Node.

Found by review: a survivor named in the list need not have answered the signers' request (so
its self-mask was released for another request); a colluder's low-order mask key or an
overflowing round id made honest parties charge their ledger and then fail; a round refused
after it was opened could be asked again with a key the coordinator had since rebuilt."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from adversary import World  # this folder is on the path: pytest rootdir-relative import

from fedsynth.protocols import fedsynth_pb2 as pb


@pytest.fixture
def world() -> Iterator[World]:
    w = World(n=5, t=4, c=0)
    yield w
    shutil.rmtree(w.tmp, ignore_errors=True)


def _announce_all(w: World, round_id: int, parties: list[int]) -> None:
    for p in parties:
        assert w.announce(p, round_id, parties).WhichOneof("body") == "mask_keys_reply"


def test_a_survivor_that_answered_another_request_keeps_its_self_mask(world: World) -> None:
    w, parties = world, [1, 2, 3, 4, 5]
    w.setup()
    _announce_all(w, 1, parties)
    zero = [None, [72] * 73, [256] * 257]  # every row in one cell: a structurally-zero vector
    req_a = w.measure_req(1, parties, variance=400.0, cliques=((1, 2),), groupings=zero)
    req_b = w.measure_req(1, parties, variance=40_000.0, cliques=((1, 2),))
    for p in (1, 2, 3, 4):
        assert w.measure(p, req_a).WhichOneof("body") == "measure_reply"
    assert w.measure(5, req_b).WhichOneof("body") == "measure_reply"
    conf = {p: w.confirm(p, 1, parties).confirm_reply.signature for p in (1, 2, 3, 4)}
    for p in (1, 2, 3, 4):  # party 5's self-mask share is bound to the request it answered
        e = w.unmask(p, 1, parties, [], conf)
        assert e.WhichOneof("body") == "refusal"
        assert "does not authenticate" in e.refusal.reason
        assert not e.HasField("unmask_reply")


def test_a_low_order_mask_key_is_refused_before_any_charge(world: World) -> None:
    w, parties = world, [1, 2, 3, 4, 5]
    w.setup()
    _announce_all(w, 1, parties)
    bad = pb.MaskKeyAnnouncement()
    bad.CopyFrom(w.mask[1][5])
    bad.public_key = bytes(32)  # the all-zero point: key agreement with it gives no secret
    w.mask[1][5] = bad
    e = w.measure(1, w.measure_req(1, parties))
    assert e.WhichOneof("body") == "refusal"
    assert w.ledger(1) == []  # nothing charged, nothing released


def test_an_overflowing_round_id_is_refused_before_any_charge(world: World) -> None:
    w = world
    w.setup()
    top = 2**32 - 1
    e = w.announce(1, top, [1, 2, 3, 4, 5])
    assert e.WhichOneof("body") == "refusal" and "out of range" in e.refusal.reason
    assert w.ledger(1) == []


def test_a_round_refused_after_it_opened_is_never_answered_later(world: World) -> None:
    w, parties = world, [1, 2, 3, 4, 5]
    w.eps_cap = 50.0
    w.setup()
    _announce_all(w, 1, parties)
    huge = w.measure_req(1, parties, variance=1e-3)  # far over party 5's cap: refused
    e = w.measure(5, huge)
    assert e.WhichOneof("body") == "refusal" and w.ledger(5) == []
    again = w.measure(5, w.measure_req(1, parties))  # its round key may be rebuilt by now
    assert again.WhichOneof("body") == "refusal" and "already" in again.refusal.reason
    assert w.ledger(5) == []
