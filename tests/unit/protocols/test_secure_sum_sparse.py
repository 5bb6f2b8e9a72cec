"""SecAgg+ (sparse graph) rounds driven through both halves: exact sums within the graph's
guarantees, refusals beyond them, and a graph every role derives alike from public inputs."""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.crypto import secagg_graph
from fedsynth.crypto.keys import Identity
from fedsynth.crypto.secagg import KeyPair
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.protocols.messages import ProtocolError
from fedsynth.protocols.secure_sum import (
    CoordinatorRound,
    RoundFailed,
    RoundKeys,
    party_mask_key,
    party_unmask_reply,
    secagg_measure_reply,
)
from fedsynth.protocols.spec import JobSpecError, auto_graph

JOB = "job-secagg-plus"
N = 160
T = 128  # 0.8 n
LENGTH = 16
IDS = {u: Identity.generate(f"party-{u}") for u in range(1, N + 1)}
KEYS = {u: KeyPair.generate() for u in range(1, N + 1)}
PUBLICS = {u: k.public for u, k in KEYS.items()}


def _wire(msg):
    return type(msg).FromString(msg.SerializeToString())


def graph_for(job_keys: dict[int, bytes], *, n: int = N, t: int = T, c: int = 0,
              job_id: str = JOB) -> secagg_graph.Graph:
    seed = secagg_graph.graph_seed(job_id=job_id, parties=n, threshold=t, colluders=c,
                                   identity_keys=tuple(IDS[u].public for u in range(1, n + 1)),
                                   job_keys=job_keys)
    return secagg_graph.sparse_graph(seed, secagg_graph.sparse_params(n, t, c))


GRAPH = graph_for(PUBLICS)


@dataclass
class SparseFederation:
    values: dict[int, np.ndarray]
    graph: secagg_graph.Graph = GRAPH
    round_id: int = 2
    round_keys: RoundKeys | None = None
    mask_private: dict[int, bytes] = field(default_factory=dict)

    @classmethod
    def make(cls, seed: int = 0) -> SparseFederation:
        rng = np.random.default_rng(seed)
        fed = cls(values={u: rng.integers(-(2**40), 2**40, LENGTH) for u in range(1, N + 1)})
        book = RoundKeys(fed.round_id)
        for u in fed.participants:
            ann, fed.mask_private[u] = party_mask_key(
                job_id=JOB, me=u, round_id=fed.round_id, holders=fed.participants, threshold=T,
                private=KEYS[u].private, publics=PUBLICS, identity_key=IDS[u].private,
                graph=fed.graph)
            book.add(u, _wire(ann), job_id=JOB, identity=IDS[u].public,
                     holders=fed.participants, graph=fed.graph)
        fed.round_keys = book
        return fed

    @property
    def participants(self) -> list[int]:
        return list(range(1, N + 1))

    def run(self, *, drop_measure: Collection[int] = (),
            drop_unmask: Collection[int] = ()) -> np.ndarray:
        assert self.round_keys is not None
        coord = CoordinatorRound(round_id=self.round_id, channel="secagg",
                                 participants=self.participants, length=LENGTH, threshold=T,
                                 job_id=JOB, keys=self.round_keys, graph=self.graph,
                                 identities={u: IDS[u].public for u in self.participants})
        sent = {}
        for u in self.participants:
            if u in drop_measure:
                continue
            reply, own, _ = secagg_measure_reply(
                self.values[u], job_id=JOB, me=u, round_id=self.round_id,
                participants=self.participants, threshold=T, private=KEYS[u].private,
                publics=PUBLICS, mask_private=self.mask_private[u],
                mask_publics=self.round_keys.publics, identity_key=IDS[u].private,
                graph=self.graph)
            sent[u] = (_wire(reply), own)
        survivors = coord.collect({u: r for u, (r, _) in sent.items()})
        reqs = coord.unmask_requests()
        replies = {v: _wire(party_unmask_reply(
            _wire(reqs[v]), job_id=JOB, me=v, threshold=T, participants=self.participants,
            private=KEYS[v].private, publics=PUBLICS, own_share=sent[v][1], graph=self.graph))
            for v in survivors if v not in drop_unmask}
        return coord.finish(replies)

    def expected(self, over: Collection[int]) -> np.ndarray:
        return np.sum([self.values[u] for u in over], axis=0).astype(np.int64)


def test_sparse_round_masks_with_neighbours_only_and_sums_exactly():
    fed = SparseFederation.make()
    np.testing.assert_array_equal(fed.run(), fed.expected(fed.participants))
    assert max(len(GRAPH.neighbours(u)) for u in fed.participants) < N // 2


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), drops=st.integers(0, N - T),
       unmask_drops=st.integers(0, 10))
def test_sparse_sum_is_exact_with_random_dropouts_within_the_bound(seed, drops, unmask_drops):
    """Dropouts independent of the graph, up to n - t in the measure step (and a few more in
    the unmask step): the exact sum of the survivors, or (with probability below 2^-η, never
    seen) a RoundFailed: never a wrong sum."""
    fed = SparseFederation.make(seed % 1000)
    rng = np.random.default_rng(seed)
    order = rng.permutation(fed.participants).tolist()
    dropped = order[:drops]
    alive = [u for u in fed.participants if u not in dropped]
    late = order[drops:drops + min(unmask_drops, len(alive) - T)]
    np.testing.assert_array_equal(fed.run(drop_measure=dropped, drop_unmask=late),
                                  fed.expected(alive))


def test_sparse_round_refuses_when_a_neighbourhood_loses_too_many():
    """Dropping a survivor's neighbours below t_k is beyond the graph's guarantee: the round
    stops with a clear error instead of releasing a sum."""
    fed = SparseFederation.make(1)
    target = min(fed.participants, key=lambda u: len(GRAPH.neighbours(u)))
    around = sorted(GRAPH.neighbours(target))
    dropped = around[:len(around) - GRAPH.share_threshold + 1]
    assert len(dropped) <= N - T
    with pytest.raises(RoundFailed, match="surviving neighbours"):
        fed.run(drop_measure=dropped)


def test_sparse_round_refuses_below_t_survivors():
    fed = SparseFederation.make(2)
    with pytest.raises(RoundFailed, match="below the threshold"):
        fed.run(drop_measure=list(range(1, N - T + 2)))


def test_a_party_refuses_to_unmask_a_survivor_list_that_isolates_a_neighbourhood():
    fed = SparseFederation.make(3)
    target = min(fed.participants, key=lambda u: len(GRAPH.neighbours(u)))
    cut = sorted(GRAPH.neighbours(target))[GRAPH.share_threshold - 1:]  # keeps t_k - 1
    assert len(cut) <= N - T
    survivors = [u for u in fed.participants if u not in cut]
    me = next(v for v in survivors if v != target)
    req = pb.UnmaskRequest(round=fed.round_id, survivors=survivors, dropped=cut)
    with pytest.raises(ProtocolError, match="surviving neighbours"):
        party_unmask_reply(req, job_id=JOB, me=me, threshold=T, participants=fed.participants,
                           private=KEYS[me].private, publics=PUBLICS, own_share=b"", graph=GRAPH)


# --- the graph: public, deterministic, small neighbourhoods ---------------------------------


@settings(max_examples=20, deadline=None)
@given(job=st.text(min_size=1, max_size=20), shuffle=st.randoms(use_true_random=False))
def test_every_role_derives_the_same_graph_from_public_inputs(job, shuffle):
    """The coordinator and each party derive the graph from the job id, the spec and the job
    keys alone (in whatever order they hold them); the adjacency is symmetric."""
    items = list(PUBLICS.items())
    shuffle.shuffle(items)
    a, b = graph_for(PUBLICS, job_id=job), graph_for(dict(items), job_id=job)
    assert a.adjacency is not None and b.adjacency is not None
    np.testing.assert_array_equal(a.adjacency, b.adjacency)
    np.testing.assert_array_equal(a.adjacency, a.adjacency.T)
    assert not a.adjacency.diagonal().any()
    assert all(v in a.neighbours(u) for u in (1, 7, N) for v in b.neighbours(u))


def test_one_party_key_changes_the_graph_and_a_missing_key_is_refused():
    other = dict(PUBLICS)
    other[3] = KeyPair.generate().public
    assert graph_for(other).adjacency.tobytes() != GRAPH.adjacency.tobytes()
    del other[3]
    with pytest.raises(secagg_graph.GraphError, match="job key of every one"):
        graph_for(other)


@pytest.mark.parametrize("n", [150, 300, 1000, 3000, 10000])
@pytest.mark.parametrize("colluder_share", [0.0, 0.05])
def test_neighbourhoods_grow_as_log_n(n, colluder_share):
    c = int(colluder_share * n)
    t = max(math.ceil(0.8 * n), math.ceil((n + c + 2) / 2))
    p = secagg_graph.sparse_params(n, t, c)
    assert p.degree <= 12 * math.log2(n)
    assert p.privacy_log2 <= -secagg_graph.SIGMA and p.correctness_log2 <= -secagg_graph.ETA
    assert p.colluder_bound < p.share_threshold <= p.degree


@settings(max_examples=10, deadline=None)
@given(n=st.integers(150, 2000))
def test_drawn_degrees_stay_near_the_expected_degree(n):
    t = math.ceil(0.8 * n)
    params = secagg_graph.sparse_params(n, t, 0)
    seed = bytes(range(32))
    adj = secagg_graph.sparse_graph(seed, params).adjacency
    assert adj is not None
    degrees = adj.sum(axis=1)
    assert degrees.max() <= 2 * params.degree + 10
    assert degrees.min() >= params.share_threshold


def test_sparse_is_refused_where_it_cannot_hold_and_auto_keeps_small_jobs_complete():
    with pytest.raises(secagg_graph.GraphError, match="use the complete graph"):
        secagg_graph.sparse_params(10, 8, 1)
    assert auto_graph(20, 16, 0, "secagg") == "complete"
    assert auto_graph(secagg_graph.SPARSE_FROM - 1, 200, 0, "secagg") == "complete"
    assert auto_graph(1000, 800, 0, "secagg") == "sparse"
    assert auto_graph(1000, 800, 0, "he") == "complete"


def test_a_spec_asking_sparse_for_too_few_parties_says_why_and_the_wire_keeps_the_graph():
    import pandas as pd

    from fedsynth.protocols.spec import JobSpec
    from fedsynth.synthesis.schema import infer_schema

    schema = infer_schema(pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "x"]}))

    def spec(n: int, graph: str) -> JobSpec:
        return JobSpec(schema=schema, epsilon=1.0, delta=1e-6, parties=n,
                       threshold=math.ceil(0.8 * n), graph=graph,
                       party_names=tuple(IDS[u].name for u in range(1, n + 1)),
                       identity_keys=tuple(IDS[u].public for u in range(1, n + 1)))

    with pytest.raises(JobSpecError, match="complete graph"):
        spec(6, "sparse")
    assert spec(6, "auto").graph == "complete"
    sparse = spec(N, "sparse")
    assert JobSpec.from_proto(_wire(sparse.to_proto())).graph == "sparse"
    assert JobSpec.from_proto(_wire(spec(N, "complete").to_proto())).graph == "complete"


# --- a survivor list whose graph falls apart is never unmasked ----------------------------


def _two_cliques(n: int = N) -> secagg_graph.Graph:
    """Two halves, each a clique, with no edge between them: every party keeps far more than
    t_k neighbours, yet each half's masks cancel within it."""
    adj = np.zeros((n, n), dtype=bool)
    half = n // 2
    adj[:half, :half] = True
    adj[half:, half:] = True
    np.fill_diagonal(adj, False)
    return secagg_graph.Graph(parties=n, share_threshold=2, adjacency=adj)


def test_a_graph_that_falls_apart_on_the_survivors_is_seen():
    g = _two_cliques()
    assert g.split(range(1, N + 1))
    assert not g.split(range(1, N // 2 + 1))  # one half alone is connected
    joined = np.array(g.adjacency)
    joined[0, N - 1] = joined[N - 1, 0] = True
    assert not secagg_graph.Graph(parties=N, share_threshold=2, adjacency=joined).split(
        range(1, N + 1))
    assert not secagg_graph.complete_graph(N, T).split(range(1, N + 1))


def test_a_party_refuses_to_unmask_survivors_whose_graph_is_not_connected():
    g = _two_cliques()
    survivors = list(range(1, N + 1))
    assert not g.short_of(survivors, survivors)  # every neighbourhood is large enough
    req = pb.UnmaskRequest(round=2, survivors=survivors)
    with pytest.raises(ProtocolError, match="not connected"):
        party_unmask_reply(req, job_id=JOB, me=1, threshold=T, participants=survivors,
                           private=KEYS[1].private, publics=PUBLICS, own_share=b"", graph=g)


def test_the_coordinator_stops_a_round_whose_survivor_graph_is_not_connected():
    from types import SimpleNamespace

    from fedsynth.protocols.secure_sum import check_graph

    rnd = SimpleNamespace(graph=_two_cliques(), survivors=list(range(1, N + 1)), dropped=[],
                          round_id=2, participants=list(range(1, N + 1)))
    with pytest.raises(RoundFailed, match="not connected"):
        check_graph(rnd)  # type: ignore[arg-type]


def test_the_graph_is_sized_for_some_colluders_even_when_none_are_declared():
    """With c = 0 taken at its word, t_k would be 2: any two colluding neighbours of a party
    could rebuild its mask key. The graph is sized for at least COLLUDER_FLOOR of n."""
    none = secagg_graph.sparse_params(1000, 800, 0)
    floor = secagg_graph.sparse_params(1000, 800, math.ceil(secagg_graph.COLLUDER_FLOOR * 1000))
    assert none.share_threshold == floor.share_threshold > 2
    assert none.degree == floor.degree < 999


def test_jobs_use_the_complete_graph_unless_sparse_is_asked_for():
    from fedsynth.simulations.parties import job_spec, make_identities
    from fedsynth.synthesis.schema import Column, Schema

    schema = Schema((Column("a", "categorical", ("x", "y")),))
    ids = make_identities(60)
    assert job_spec(schema, ids, epsilon=1.0, delta=1e-6).graph == "complete"
    assert job_spec(schema, ids, epsilon=1.0, delta=1e-6, graph="auto").graph == "sparse"


def test_a_remembered_split_answer_is_per_survivor_list_and_per_graph():
    g = _two_cliques()
    assert g.split(range(1, N + 1)) and g.split(range(1, N + 1))  # asked twice: same answer
    assert not g.split(range(1, N // 2 + 1))  # another list is asked afresh
    joined = np.array(g.adjacency)
    joined[0, N - 1] = joined[N - 1, 0] = True
    other = secagg_graph.Graph(parties=N, share_threshold=2, adjacency=joined)
    assert not other.split(range(1, N + 1))  # another graph does not see g's answers
    assert g.split(list(reversed(range(1, N + 1))))  # the list's order does not matter
