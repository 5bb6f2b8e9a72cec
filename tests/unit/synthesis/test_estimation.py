"""The row-count estimate that sizes the model and the default synthetic table."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsynth.synthesis.estimation import Measurement, noisy_total


def test_noiseless_measurements_give_the_exact_total() -> None:
    counts = np.array([30.0, 50.0, 20.0])
    w = 1.0 / np.sqrt(np.array([1.0, 4.0, 2.0]))  # weighted one-way, as the job builds it
    ms = [Measurement((0,), counts, 2.0), Measurement((1,), counts * w, 2.0, weights=w),
          Measurement((0, 1), np.full((2, 5), 10.0), 3.0)]
    assert noisy_total(ms) == pytest.approx(100.0)


def test_inverse_variance_weights_by_hand() -> None:
    # totals 100 (variance 1 * 4 cells) and 130 (variance 4 * 1 cell): weights 1/4 and 1/4
    a = Measurement((0,), np.array([25.0, 25.0, 25.0, 25.0]), 1.0)
    b = Measurement((1,), np.array([130.0]), 2.0)
    assert noisy_total([a, b]) == pytest.approx(115.0)
    # a weighted cell counts with variance sd^2 / w^2: w = 1/2 makes it 4 sd^2
    c = Measurement((1,), np.array([65.0]), 1.0, weights=np.array([0.5]))
    assert noisy_total([a, c]) == pytest.approx(115.0)


def test_the_estimate_is_at_least_one_and_empty_gives_one() -> None:
    assert noisy_total([Measurement((0,), np.array([-50.0, 3.0]), 1.0)]) == 1.0
    assert noisy_total([]) == 1.0


@settings(max_examples=50, deadline=None)
@given(st.integers(100, 100_000), st.integers(0, 2**31 - 1))
def test_unbiased_around_the_true_total(n: int, seed: int) -> None:
    """Gaussian noise on every cell: the estimate lands within 5 of its own standard error."""
    rng = np.random.default_rng(seed)
    sizes, sd = [4, 7, 12], 5.0
    ms = []
    for j, k in enumerate(sizes):
        cells = rng.multinomial(n, np.full(k, 1.0 / k)).astype(float)
        ms.append(Measurement((j,), cells + rng.normal(0, sd, k), sd))
    se = 1.0 / np.sqrt(sum(1.0 / (sd**2 * k) for k in sizes))
    assert abs(noisy_total(ms) - n) < 5 * se
