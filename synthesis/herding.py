"""Rows that represent a model: its one- and two-way counts without the noise of chance.

`n` rows drawn independently from a model have every one- and two-way count off the model's
by the sampling noise of n draws (about √(n p) rows on a cell of probability p): on a table of
1,474 rows with columns of 16 bins that noise alone is a 2-way TVD of several hundredths, as
large as what separates a good model from independent columns. `balanced` chooses the rows
instead, by kernel herding (Welling 2009; Chen, Welling and Smola 2010) over a pool of the
model's own draws: row t is the pool row that most reduces the gap between the chosen rows'
one- and two-way counts and t times the pool's shares (the model's distribution, estimated
from every pool drawn so far). The chosen rows' counts then follow the model to within about a
row per cell, and three-way counts come closer too (benchmarks/results/herding.md: 2-way TVD
against the real table 0.95x of drawn rows' on survival/colon and AER/CPS1988, 3-way
0.96-0.97x).

Why it is cheap. With features the one-hot of every column's code and of every pair of
columns' codes, a pool row y's score is (t + 1) Σ_f μ_f φ_f(y) - Σ_f c_f φ_f(y), where μ are the
pool's feature means and c the chosen rows' feature counts. Choosing x adds 1 to c_f for each
of x's features, which moves y's second term by the features x and y share: m + m(m - 1)/2
when they agree on m columns. So a choice costs one comparison of the pool against x (rows x
columns), not a pass over the pairs; the pairs are summed once per block. Rows are chosen in
blocks of `block`, each from a fresh pool of `pool` x `block` draws, with the counts c carried
over, so the whole sample is one herding sequence and the work grows linearly in the rows.

What it is not. Every row is a draw of the model, so no row holds a value the model cannot
give; the set is chosen, so the rows are not independent draws (a user who needs those, to
bootstrap, calls GeneratorModel.sample with `balanced=False`). Columns with more than
MAX_CELLS codes are balanced on MAX_CELLS runs of adjacent codes. It is post-processing of a
released model, with no access to any party's rows: it changes no privacy guarantee, and its
randomness (the pools, the ties, the final order) comes from the sampling seed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np

POOL = 8  # draws in a block's pool per row chosen from it
BLOCK = 256  # rows chosen from one pool
MAX_CELLS = 32  # codes per column that herding tells apart (runs of adjacent codes beyond)
# Above this many rows a caller draws independently: herding costs POOL draws per row plus a
# pass over the pool per row chosen (AER/CPS1988's generator: 22,558 rows in 7.7 s against
# 0.9 s drawn, benchmarks/results/herding.md), and the sampling noise it removes shrinks
# with the rows.
MAX_ROWS = 100_000


def balanced(draw: Callable[[int], np.ndarray], rows: int, sizes: Sequence[int],
             rng: np.random.Generator, *, pool: int = POOL, block: int = BLOCK,
             advance: Callable[[int], None] | None = None) -> np.ndarray:
    """`rows` rows of codes (rows x columns) chosen from the draws of `draw(m)` (m independent
    rows of the model's codes, column j in 0..sizes[j]-1) so that their one- and two-way
    counts follow the model's; in random order. `advance(m)` is told of each block's m rows
    (progress)."""
    if pool < 1 or block < 1 or any(int(k) < 1 for k in sizes):
        raise ValueError(f"herding needs pool >= 1, block >= 1 and columns of at least one "
                         f"code (pool {pool}, block {block}, sizes {list(sizes)})")
    if rows <= 0:
        return np.zeros((0, len(sizes)), dtype=np.int64)
    cells = _Cells(sizes)
    tot = np.zeros(cells.features)  # pool feature counts so far
    chosen = np.zeros(cells.features)  # the chosen rows' feature counts
    seen = 0
    out: list[np.ndarray] = []
    t = 0
    for start in range(0, rows, block):
        m = min(block, rows - start)
        codes = np.asarray(draw(pool * m), dtype=np.int64)
        if codes.shape != (pool * m, len(sizes)) or (codes < 0).any() or (
                codes >= np.asarray(sizes)[None, :]).any():
            raise ValueError(f"a draw of {pool * m} rows gave shape {codes.shape} or codes "
                             f"outside the columns' sizes {list(sizes)}")
        coarse = cells.coarse(codes)
        feats = cells.of(coarse)
        tot += np.bincount(feats.ravel(), minlength=cells.features)
        seen += len(codes)
        expected = (tot / seen)[feats].sum(axis=1)  # Σ_f μ_f φ_f(y)
        given = chosen[feats].sum(axis=1)  # Σ_f c_f φ_f(y)
        taken = np.zeros(len(codes), dtype=bool)
        picks = np.empty(m, dtype=np.int64)
        for i in range(m):
            score = (t + 1) * expected - given
            score[taken] = -np.inf
            x = int(np.argmax(score))
            picks[i] = x
            taken[x] = True
            chosen[feats[x]] += 1.0
            agree = (coarse == coarse[x]).sum(axis=1)
            given += agree + agree * (agree - 1) / 2.0
            t += 1
        out.append(codes[picks])
        if advance is not None:
            advance(m)
    result = np.concatenate(out)
    return result[rng.permutation(len(result))]


class _Cells:
    """The herding features: each column's (coarsened) code, and each pair's, as one index."""

    def __init__(self, sizes: Sequence[int]) -> None:
        self.codes = np.array([int(s) for s in sizes], dtype=np.int64)
        self.size = np.minimum(self.codes, MAX_CELLS)  # a larger column: MAX_CELLS runs
        d = len(sizes)
        self.pairs = list(itertools.combinations(range(d), 2))
        one = np.concatenate([[0], np.cumsum(self.size)]).astype(np.int64)
        self.one_offset = one[:-1]
        two = [int(self.size[j] * self.size[k]) for j, k in self.pairs]
        self.two_offset = one[-1] + np.concatenate([[0], np.cumsum(two)[:-1]]).astype(np.int64)
        self.features = int(one[-1] + sum(two))

    def coarse(self, codes: np.ndarray) -> np.ndarray:
        """Codes as herding tells them apart: a column of more than MAX_CELLS codes in
        MAX_CELLS runs of adjacent codes (code * MAX_CELLS // size)."""
        return np.where(self.codes > MAX_CELLS, codes * MAX_CELLS // self.codes, codes)

    def of(self, coarse: np.ndarray) -> np.ndarray:
        """Each row's features (rows x (columns + pairs)), as indices."""
        cols = [coarse + self.one_offset[None, :]]
        if self.pairs:
            j = np.array([p[0] for p in self.pairs])
            k = np.array([p[1] for p in self.pairs])
            cols.append(coarse[:, j] * self.size[k][None, :] + coarse[:, k]
                        + self.two_offset[None, :])
        return np.concatenate(cols, axis=1)
