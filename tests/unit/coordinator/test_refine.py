"""The adaptive refinement round (an option, off by default): its budget keeps the job within ε
whatever it chooses, and it measures the pair a tree model cannot explain."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.coordinator.job import JobOptions
from fedsynth.crypto.accountant import Accountant, StepBudget, calibrate, remaining_variance
from fedsynth.simulations.run import simulate


@settings(max_examples=40, deadline=None)
@given(d=st.integers(3, 30), extra=st.floats(0.0, 3.0), chosen=st.floats(0.0, 1.0),
       epsilon=st.floats(0.05, 20.0), delta=st.sampled_from([1e-9, 1e-6, 1e-4]))
def test_the_rounds_of_a_job_never_exceed_epsilon_and_spend_it_all(
        d: int, extra: float, chosen: float, epsilon: float, delta: float) -> None:
    """The job's budgeting, round by round: one-way and select calibrated by their shares, the
    tree at the variance that leaves room for `limit` more pairs, the refinement round (any
    number of pairs it chooses, or the tree again) at exactly the budget left."""
    pairs = d * (d - 1) // 2
    tree, limit = d - 1, int(extra * (d - 1))
    plan = [StepBudget("one-way", d, 0.1), StepBudget("select", pairs, 0.2),
            StepBudget("pairs", tree, 0.7)]
    var = calibrate(plan, epsilon=epsilon, delta=delta)
    acc = Accountant()
    acc.add(step="one-way", count=d, variance=var["one-way"])
    acc.add(step="select", count=pairs, variance=var["select"])
    planned = tree + limit if limit and pairs > tree else tree
    acc.add(step="pairs", count=tree,
            variance=remaining_variance(acc, count=planned, epsilon=epsilon, delta=delta))
    if planned > tree:
        again = max(1, round(chosen * limit)) if chosen > 0.2 else tree  # none: the tree again
        acc.add(step="refine", count=again,
                variance=remaining_variance(acc, count=again, epsilon=epsilon, delta=delta))
    spent = acc.epsilon(delta)
    assert spent <= epsilon * (1 + 1e-9)
    assert spent >= epsilon * 0.999  # nothing is left unused


def _triangle(n: int = 20000, seed: int = 0) -> pd.DataFrame:
    """Three binary columns, each pair equal in 75% of rows, but not a tree: half the rows have
    a = b = c, half an even-parity triple. A tree of two pairs predicts P(b = c) = 0.625."""
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.5
    a = rng.integers(0, 2, n)
    b = np.where(same, a, rng.integers(0, 2, n))
    c = np.where(same, a, a ^ b)
    noise = rng.normal(size=n)
    return pd.DataFrame({"a": a.astype(str), "b": b.astype(str), "c": c.astype(str),
                         "x": noise})


def test_refinement_measures_the_pair_the_tree_model_cannot_explain() -> None:
    table = _triangle()
    res = simulate(parties=[table], epsilon=10.0, engine="local", evaluate=False, holdout=0.0,
                   channel="plain", threshold=1,
                   options=JobOptions(seed=0, iters=300, refine=True))
    steps = [r["step"] for r in res.privacy["rounds"]]
    assert steps == ["one-way", "select", "pairs", "refine"]
    measured = {tuple(sorted(m)) for m in res.privacy["marginals"]}
    assert {("a", "b"), ("a", "c"), ("b", "c")} <= measured  # the tree's two and the third
    syn = res.synthetic
    for u, v in (("a", "b"), ("a", "c"), ("b", "c")):
        assert abs((syn[u] == syn[v]).mean() - 0.75) < 0.03, (u, v)
    assert res.privacy["epsilon_spent"] <= 10.0 * (1 + 1e-9)


@pytest.mark.parametrize("reuse_mb", [0.0, 2.0])
def test_without_refinement_a_tree_misses_that_pair_unless_its_selection_answer_is_reused(
        reuse_mb: float) -> None:
    """The same table and budget with no extra pairs: without the selection answers of the
    pairs left out, some pair's agreement falls toward the tree's prediction; with them (the
    default) the third pair is in the model, from the selection round's answer."""
    table = _triangle()
    res = simulate(parties=[table], epsilon=10.0, engine="local", evaluate=False, holdout=0.0,
                   channel="plain", threshold=1,
                   options=JobOptions(seed=0, iters=300, refine=False, extra_pairs=0.0,
                                      reuse_mb=reuse_mb))
    syn = res.synthetic
    worst = min((syn[u] == syn[v]).mean() for u, v in (("a", "b"), ("a", "c"), ("b", "c")))
    measured = {tuple(sorted(m)) for m in res.privacy["marginals"]}
    if reuse_mb:
        assert {("a", "b"), ("a", "c"), ("b", "c")} <= measured
        assert worst > 0.72
    else:
        assert worst < 0.70
