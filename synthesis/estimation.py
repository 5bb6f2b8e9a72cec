"""Graphical-model estimation from noisy marginals (Private-PGM, `mbi`) and row sampling.

Only noisy, aggregated measurements enter here; everything is post-processing. mbi's own
save/load uses pickle, so models never leave this process: the output is the sampled table.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

os.environ.setdefault("JAX_ENABLE_X64", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _mbi():  # type: ignore[no-untyped-def]
    import warnings

    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_enable_compilation_cache", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mbi
    return mbi


@dataclass(frozen=True)
class Measurement:
    """A noisy marginal on `clique` (column positions), shaped like the clique, and its sd."""

    clique: tuple[int, ...]
    noisy: np.ndarray
    stddev: float


def _name(i: int) -> str:
    return f"c{i}"


def fit_and_sample(sizes: Sequence[int], measurements: Sequence[Measurement], *, rows: int,
                   seed: int, iters: int = 1000) -> np.ndarray:
    """Fit a Markov random field to the measurements and draw `rows` rows of group codes."""
    mbi = _mbi()
    domain = mbi.Domain([_name(i) for i in range(len(sizes))], [int(s) for s in sizes])
    ms = [mbi.LinearMeasurement(np.asarray(m.noisy, dtype=float).ravel(),
                                tuple(_name(i) for i in m.clique), stddev=float(m.stddev))
          for m in measurements]
    total = _total_estimate(measurements)
    model = mbi.estimation.MirrorDescent().estimate(domain, ms, known_total=total, iters=iters)
    np.random.seed(seed % 2**32)  # mbi draws with numpy's global generator
    data = model.synthetic_data(rows=rows)
    cols = data.to_dict()
    return np.stack([np.asarray(cols[_name(i)], dtype=np.int64) for i in range(len(sizes))],
                    axis=1)


def _total_estimate(measurements: Sequence[Measurement]) -> float:
    """Inverse-variance weighted mean of each measurement's noisy total (at least 1)."""
    num = den = 0.0
    for m in measurements:
        var = m.stddev**2 * m.noisy.size
        num += float(m.noisy.sum()) / var
        den += 1.0 / var
    return max(1.0, num / den) if den else 1.0
