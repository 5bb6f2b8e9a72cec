"""Rows drawn from a fitted model: conditionals kept up to rounding, totals within a row."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.synthesis.estimation import (
    Measurement,
    column_marginal,
    exact_conditional,
    fit,
    release_compiled,
    reweighted,
    sample_codes,
)
from fedsynth.synthesis.sampling import allocate

SIZES = [3, 5, 4, 6, 2]


@settings(max_examples=300, deadline=None)
@given(groups=st.integers(1, 80), values=st.integers(1, 12), seed=st.integers(0, 2**32 - 1))
def test_allocation_keeps_rows_exact_cells_rounded_and_totals_within_a_row(
        groups: int, values: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(values) * rng.uniform(0.05, 3), size=groups)
    n = rng.integers(0, 40, groups)
    expected = n[:, None] * p
    got = allocate(expected, rng)
    assert np.array_equal(got.sum(axis=1), n)
    assert np.all(got >= np.floor(expected - 1e-9)) and np.all(got <= np.ceil(expected + 1e-9))
    assert np.abs(got.sum(axis=0) - expected.sum(axis=0)).max() < 1.0


@pytest.fixture(scope="module")
def model() -> object:
    rng = np.random.default_rng(0)
    n = 5000
    a = rng.integers(0, 3, n)
    b = (a + rng.integers(0, 3, n)) % 5
    c = (b + rng.integers(0, 2, n)) % 4
    d = rng.integers(0, 6, n)
    e = (d % 2 + (rng.random(n) < 0.2)) % 2
    data = np.stack([a, b, c, d, e], axis=1)
    ms = []
    for clique in [(0, 1), (1, 2), (3, 4), (2, 3), (0,)]:
        shape = tuple(SIZES[i] for i in clique)
        flat = np.ravel_multi_index(tuple(data[:, i] for i in clique), shape)
        ms.append(Measurement(clique, np.bincount(flat, minlength=int(np.prod(shape))).reshape(
            shape).astype(float) + rng.normal(0, 5, shape), 5.0))
    m = fit(SIZES, ms, iters=100)
    yield m
    release_compiled()


def _pair(rows: np.ndarray, a: int, b: int) -> np.ndarray:
    flat = rows[:, a] * SIZES[b] + rows[:, b]
    return np.bincount(flat, minlength=SIZES[a] * SIZES[b]).reshape(SIZES[a], SIZES[b])


@pytest.mark.parametrize("rows,seed", [(1, 0), (17, 3), (2000, 7), (30_000, 11)])
def test_every_column_keeps_the_models_totals(model: object, rows: int, seed: int) -> None:
    drawn = sample_codes(model, rows, seed=seed)
    assert drawn.shape == (rows, len(SIZES)) and drawn.dtype == np.int64
    for j, size in enumerate(SIZES):
        p = np.asarray(column_marginal(model, j), dtype=float)
        got = np.bincount(drawn[:, j], minlength=size)
        assert np.abs(got - rows * p / p.sum()).max() < 1.0 + 1e-6, j


def test_pairs_follow_the_model_closer_than_independent_draws(model: object) -> None:
    rows = 30_000
    drawn = sample_codes(model, rows, seed=2)
    b_given_a = exact_conditional(model, [1], {0: 0})
    got = _pair(drawn, 0, 1)[0]
    assert np.abs(got / got.sum() - b_given_a).max() < 0.01
    # independent draws of 30,000 rows miss a cell of a pair table by ~sqrt(np): about 40
    # rows here; the conditionals are kept up to rounding, so the error is a few rows
    for a, b in [(0, 1), (1, 2), (3, 4)]:
        joint = np.zeros((SIZES[a], SIZES[b]))
        pa = np.asarray(column_marginal(model, a), dtype=float)
        for v in range(SIZES[a]):
            joint[v] = pa[v] / pa.sum() * exact_conditional(model, [b], {a: v})
        assert np.abs(_pair(drawn, a, b) - rows * joint).max() < 12, (a, b)


def test_the_same_seed_draws_the_same_rows_and_another_seed_others(model: object) -> None:
    one = sample_codes(model, 3000, seed=4)
    assert np.array_equal(one, sample_codes(model, 3000, seed=4))
    assert not np.array_equal(one, sample_codes(model, 3000, seed=5))


def test_conditions_are_kept(model: object) -> None:
    conditioned = reweighted(model, {2: np.array([0.0, 1.0, 2.0, 0.0]), 4: np.array([1.0, 3.0])})
    drawn = sample_codes(conditioned, 3000, seed=5)
    assert set(np.unique(drawn[:, 2])) <= {1, 2}
    share = np.mean(drawn[:, 2] == 2)
    p = np.asarray(column_marginal(conditioned, 2), dtype=float)
    assert abs(share - p[2] / p.sum()) < 1 / 3000 + 1e-9


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_cols=st.integers(2, 6), n_cliques=st.integers(1, 6),
       constrained=st.booleans())
def test_numpy_tree_marginals_equal_mbis_shafer_shenoy(seed: int, n_cols: int, n_cliques: int,
                                                        constrained: bool) -> None:
    # random models (cliques of 1-3 columns, cycles included, log-potentials of any sign) and
    # one-column zero constraints: every marginal on the model's cliques and on every tree
    # clique matches mbi's own oracle
    import jax.numpy as jnp
    from mbi import CliqueVector, Constraint, Domain, Factor, marginal_oracles

    from fedsynth.synthesis.tree_marginals import TreeMarginals

    rng = np.random.default_rng(seed)
    names = [f"c{i}" for i in range(n_cols)]
    dom = Domain(names, [int(v) for v in rng.integers(1, 5, n_cols)])
    cliques = sorted({tuple(sorted(rng.choice(names, int(rng.integers(1, min(3, n_cols) + 1)),
                                               replace=False), key=names.index))
                      for _ in range(n_cliques)})
    pots = CliqueVector(dom, cliques, {cl: Factor(dom.project(cl), jnp.asarray(
        rng.normal(0, 2, dom.project(cl).shape))) for cl in cliques})
    constraints = []
    if constrained:
        col = str(rng.choice(names))
        size = dom.size(col)
        valid = rng.choice(size, int(rng.integers(1, size + 1)), replace=False)
        constraints.append(Constraint(dom.project((col,)), valid=np.sort(valid)[:, None]))
    total = float(rng.uniform(1, 1e4))
    ours = TreeMarginals(pots, total, tuple(constraints))
    ref = marginal_oracles.message_passing_shafer_shenoy(pots, total,
                                                         constraints=tuple(constraints))
    for cl in cliques:
        want = np.asarray(ref.project(cl).datavector(flatten=False))
        np.testing.assert_allclose(ours.project(cl), want, rtol=1e-9, atol=1e-9 * total)
    for node in ours.nodes:
        assert ours.project(node).sum() == pytest.approx(total, rel=1e-9)
        assert (ours.project(node) >= 0).all()
    if constrained:
        banned = np.setdiff1d(np.arange(size), valid)
        assert (ours.project((col,))[banned] == 0).all()
    vec = ours.clique_vector(pots)
    for cl in cliques:
        np.testing.assert_allclose(np.asarray(vec[cl].values), ours.project(cl))
    release_compiled()


def test_contradictory_constraints_are_refused_not_drawn(model: object) -> None:
    # column 0 allowed only value 0 by one weight and only value 1 by another: no row exists
    once = reweighted(model, {0: np.array([1.0, 0.0, 0.0])})
    never = reweighted(once, {0: np.array([0.0, 1.0, 0.0])})
    with pytest.raises(ValueError, match="zero probability"):
        sample_codes(never, 10, seed=0)
