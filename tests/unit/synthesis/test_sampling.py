"""The sampler draws the very rows mbi's own `synthetic_data` draws, for the same seed."""

from __future__ import annotations

import numpy as np
import pytest

from fedsynth.synthesis.estimation import (
    Measurement,
    fit,
    release_compiled,
    reweighted,
    sample_codes,
)

SIZES = [3, 5, 4, 6, 2]


def _mbi_rows(model: object, rows: int, seed: int) -> np.ndarray:
    np.random.seed(seed)
    cols = model.synthetic_data(rows=rows).to_dict()  # type: ignore[attr-defined]
    return np.stack([np.asarray(cols[f"c{i}"], dtype=np.int64) for i in range(len(SIZES))],
                    axis=1)


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


@pytest.mark.parametrize("rows,seed", [(1, 0), (17, 3), (2000, 7), (30_000, 11)])
def test_the_sampler_draws_mbis_rows_for_the_same_seed(model: object, rows: int,
                                                       seed: int) -> None:
    ours = sample_codes(model, rows, seed=seed)
    assert ours.shape == (rows, len(SIZES))
    assert np.array_equal(ours, _mbi_rows(model, rows, seed))


def test_the_sampler_draws_mbis_rows_under_constraints(model: object) -> None:
    conditioned = reweighted(model, {2: np.array([0.0, 1.0, 2.0, 0.0]), 4: np.array([1.0, 3.0])})
    ours = sample_codes(conditioned, 3000, seed=5)
    assert np.array_equal(ours, _mbi_rows(conditioned, 3000, 5))
    assert set(np.unique(ours[:, 2])) <= {1, 2}


def _draw_fine_row_scan(grouping: object, group_codes: np.ndarray, weights: np.ndarray,
                        rng: np.random.Generator) -> np.ndarray:
    """Decoding inside groups as it was: every row scanned once per group."""
    fine = np.empty(len(group_codes), dtype=np.int64)
    for k in np.unique(group_codes):
        members = np.flatnonzero(grouping.index == k)  # type: ignore[attr-defined]
        rows = np.flatnonzero(group_codes == k)
        w = weights[members]
        fine[rows] = rng.choice(members, size=len(rows), p=w / w.sum())
    return fine


@pytest.mark.parametrize("seed", range(5))
def test_decoding_inside_groups_draws_the_same_codes_as_the_row_scan(seed: int) -> None:
    from fedsynth.synthesis.encoding import Grouping, draw_fine

    rng = np.random.default_rng(seed)
    index = np.sort(rng.integers(0, 6, 40))
    grouping = Grouping(np.unique(index, return_inverse=True)[1].astype(np.int64))
    codes = rng.integers(0, grouping.size, int(rng.integers(0, 3000)))
    weights = rng.random(40) + 0.01
    assert np.array_equal(draw_fine(grouping, codes, weights, np.random.default_rng(seed)),
                          _draw_fine_row_scan(grouping, codes, weights,
                                              np.random.default_rng(seed)))
