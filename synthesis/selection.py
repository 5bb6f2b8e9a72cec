"""Choosing which 2-way marginals to measure, from noisy aggregated answers only.

A federation cannot score candidates on true counts (AIM's and MST's L1 error is not a sum
over parties), so we measure every pair once on a small grouped domain at a small share of the
budget, then score each pair by how far its noisy table is from independence, minus what the
noise alone would contribute. The selection is post-processing of DP answers: it costs nothing
beyond the selection round's measurement.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

Pair = tuple[int, int]


def dependence_score(table: np.ndarray, noise_variance: float) -> float:
    """L1 distance of a noisy 2-way table from the product of its margins, noise-debiased."""
    t = np.clip(table.astype(float), 0, None)
    total = t.sum()
    if total <= 0:
        return 0.0
    ind = np.outer(t.sum(axis=1), t.sum(axis=0)) / total
    noise_l1 = table.size * math.sqrt(2 * noise_variance / math.pi)
    return float(np.abs(t - ind).sum() - noise_l1)


def max_spanning_tree(n_columns: int, scores: Mapping[Pair, float]) -> list[Pair]:
    """Kruskal on the highest scores; the result connects every column (a tree or forest).

    Ties are broken by pair order so that every party-count and run gives the same tree.
    """
    parent = list(range(n_columns))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    tree: list[Pair] = []
    for pair in sorted(scores, key=lambda p: (-scores[p], p)):
        a, b = find(pair[0]), find(pair[1])
        if a != b:
            parent[a] = b
            tree.append(pair)
    return sorted(tree)


def add_pairs(chosen: Sequence[Pair], scores: Mapping[Pair, float], *, limit: int,
              fits: Callable[[list[Pair]], bool]) -> list[Pair]:
    """Greedily add up to `limit` more pairs with positive score while the model still `fits`."""
    out = list(chosen)
    for pair in sorted(scores, key=lambda p: (-scores[p], p)):
        if limit <= 0 or scores[pair] <= 0:
            break
        if pair in out or not fits([*out, pair]):
            continue
        out.append(pair)
        limit -= 1
    return sorted(out)
