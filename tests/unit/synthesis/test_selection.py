"""Selection from noisy answers, and marginal counting."""

from __future__ import annotations

import numpy as np
import pytest

from fedsynth.crypto.accountant import Accountant, remaining_variance
from fedsynth.synthesis import marginals
from fedsynth.synthesis.encoding import Grouping
from fedsynth.synthesis.selection import add_pairs, dependence_score, max_spanning_tree


def test_dependence_score_separates_dependent_from_independent() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, 5000)
    dependent = np.zeros((4, 4))
    np.add.at(dependent, (a, a), 1)
    independent = np.zeros((4, 4))
    np.add.at(independent, (a, rng.integers(0, 4, 5000)), 1)
    assert dependence_score(dependent, 1.0) > 1000
    assert dependence_score(independent, 1.0) < 0.1 * dependence_score(dependent, 1.0)


def test_dependence_score_is_debiased_for_noise() -> None:
    rng = np.random.default_rng(1)
    table = np.full((8, 8), 100.0) + rng.normal(0, 30, (8, 8))
    # pure noise around a uniform table: the debiased score is not positive
    assert dependence_score(table, 900.0) <= 0


def test_max_spanning_tree_picks_heaviest_edges_and_spans() -> None:
    scores = {(0, 1): 5.0, (1, 2): 4.0, (0, 2): 3.0, (2, 3): 1.0, (0, 3): 0.5, (1, 3): 0.2}
    tree = max_spanning_tree(4, scores)
    assert tree == [(0, 1), (1, 2), (2, 3)]


def test_add_pairs_respects_limit_score_and_fit() -> None:
    scores = {(0, 1): 5.0, (1, 2): 4.0, (0, 2): 3.0, (2, 3): -1.0}
    out = add_pairs([(0, 1)], scores, limit=5, fits=lambda cl: len(cl) <= 2)
    assert out == [(0, 1), (1, 2)]  # (0,2) does not fit, (2,3) has a negative score
    assert add_pairs([(0, 1)], scores, limit=0, fits=lambda cl: True) == [(0, 1)]


def test_count_and_split_round_trip_with_grouping() -> None:
    codes = np.array([[0, 1], [1, 1], [2, 0], [2, 1]])
    groups = [Grouping(np.array([0, 0, 1])), Grouping.identity(2)]
    vec = marginals.count(codes, groups, [(0,), (0, 1)])
    one, two = marginals.split(vec, [(0,), (0, 1)], [2, 2])
    assert one.tolist() == [2, 2]
    assert two.tolist() == [[0, 2], [1, 1]]
    with pytest.raises(ValueError):
        marginals.split(vec[:-1], [(0,), (0, 1)], [2, 2])


def test_remaining_variance_spends_exactly_what_is_left() -> None:
    acc = Accountant()
    acc.add(step="a", count=4, variance=800.0)
    v = remaining_variance(acc, count=3, epsilon=1.0, delta=1e-6)
    acc.add(step="b", count=3, variance=v)
    assert acc.epsilon(1e-6) <= 1.0
    assert acc.epsilon(1e-6) > 0.999
    with pytest.raises(ValueError):
        remaining_variance(acc, count=1, epsilon=0.5, delta=1e-6)  # already over 0.5
