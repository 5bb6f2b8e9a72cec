"""Graphical-model estimation from noisy marginals (Private-PGM, `mbi`) and row sampling.

Only noisy, aggregated measurements enter here; everything is post-processing. mbi's own
save/load uses pickle, so a model is never saved with it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsynth import progress
from fedsynth.synthesis.tree_marginals import TreeMarginals

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
    """A noisy marginal on `clique` (column positions), shaped like the clique, and its sd.

    `groups` (optional, one index array per clique column, None for identity) says the noisy
    table was counted on a coarser grouping of the model's codes: cell (g_a, g_b) is the sum of
    model cells whose codes map to g_a and g_b. `weights` rescales cells (mbi's WeightedQuery).
    """

    clique: tuple[int, ...]
    noisy: np.ndarray
    stddev: float
    groups: tuple[np.ndarray | None, ...] | None = None
    weights: np.ndarray | None = None


class _GroupedQuery:
    """Sums a factor's table into coarser groups per axis (a linear query for mbi)."""

    def __init__(self, mats: list[np.ndarray]) -> None:
        self.mats = mats  # one (groups x codes) 0/1 matrix per axis

    def __call__(self, f: Any) -> Any:
        import jax.numpy as jnp

        x = f.datavector(flatten=False)
        for axis, m in enumerate(self.mats):
            x = jnp.moveaxis(jnp.tensordot(jnp.asarray(m), x, axes=([1], [axis])), 0, axis)
        return x.reshape(-1)

    def op_norm_sq(self) -> float:
        return float(np.prod([np.max(m.sum(axis=1)) for m in self.mats]))

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other


def _query(m: Measurement, sizes: Sequence[int]) -> Any:
    mbi = _mbi()
    if m.groups is not None:
        mats = []
        for col, g in zip(m.clique, m.groups, strict=True):
            idx = np.arange(sizes[col]) if g is None else np.asarray(g)
            mat = np.zeros((int(idx.max()) + 1, sizes[col]))
            mat[idx, np.arange(sizes[col])] = 1.0
            mats.append(mat)
        return _GroupedQuery(mats)
    if m.weights is not None:
        return mbi.WeightedQuery(np.asarray(m.weights, dtype=float).ravel())
    return mbi.marginal_loss.DatavectorQuery()


def _name(i: int) -> str:
    return f"c{i}"


def fit(sizes: Sequence[int], measurements: Sequence[Measurement], *, iters: int = 1000,
        total: float | None = None, warm_start: Any = None) -> Any:
    """Fit a Markov random field (mbi's `MarkovRandomField`) to the measurements.

    `total` is the model's row count (default: `noisy_total(measurements)`); `warm_start` is a
    previous model whose potentials start the optimisation (an adaptive loop refits often)."""
    mbi = _mbi()
    domain = mbi.Domain([_name(i) for i in range(len(sizes))], [int(s) for s in sizes])
    ms = [mbi.LinearMeasurement(np.asarray(m.noisy, dtype=float).ravel(),
                                tuple(_name(i) for i in m.clique), stddev=float(m.stddev),
                                query=_query(m, sizes))
          for m in measurements]
    total = noisy_total(measurements) if total is None else total
    every = int(mbi.estimation.CALLBACK_EVERY)  # mbi calls back once per block of iterations
    import jax

    def done_block(potentials: Any) -> None:
        # jax dispatches the blocks asynchronously: wait for this one, or the bar would reach
        # "done" while the work runs on (a 40-column model: "done in 58 s", then 430 s more
        # spent wherever the potentials were first read)
        jax.block_until_ready(potentials)
        bar.advance(min(every, iters - bar.done))

    with progress.task("estimating the model", total=iters, unit="iter") as bar:
        return mbi.estimation.MirrorDescent().estimate(
            domain, ms, known_total=total, iters=iters, warm_start=warm_start,
            callback_fn=done_block)


def sample_codes(model: Any, rows: int, *, seed: int) -> np.ndarray:
    """Draw `rows` rows of group codes (one column per model column) from a fitted model,
    its marginals kept up to rounding (synthesis.sampling)."""
    from fedsynth.synthesis.sampling import draw_codes

    with progress.task(f"sampling {rows:,} rows"):
        cols = draw_codes(model, rows, np.random.default_rng(seed % 2**63))
    return np.stack([np.asarray(cols[_name(i)], dtype=np.int64)
                     for i in range(len(model.domain))], axis=1)


def release_compiled() -> None:
    """Free jax's compiled programs: each new clique set compiles new ones, and a process that
    runs many jobs (a notebook, a benchmark) otherwise runs out of memory maps (seen here as
    LLVM "Cannot allocate memory" after a few dozen jobs)."""
    import jax

    jax.clear_caches()


def fit_and_sample(sizes: Sequence[int], measurements: Sequence[Measurement], *, rows: int,
                   seed: int, iters: int = 1000, total: float | None = None) -> np.ndarray:
    """Fit a Markov random field to the measurements and draw `rows` rows of group codes."""
    model = fit(sizes, measurements, iters=iters, total=total)
    codes = sample_codes(model, rows, seed=seed)
    release_compiled()
    return codes


def noisy_total(measurements: Sequence[Measurement]) -> float:
    """The real row count, estimated from every measurement (at least 1).

    Each measurement's cells add up to a noisy count of all rows, with variance sd^2 times its
    number of cells (weighted cells are unweighted first: cell / w has variance sd^2 / w^2).
    The estimate is the inverse-variance weighted mean of these totals: post-processing only.
    """
    num = den = 0.0
    for m in measurements:
        noisy = np.asarray(m.noisy, dtype=float).ravel()
        if m.weights is None:
            tot, var = float(noisy.sum()), m.stddev**2 * noisy.size
        else:
            w = np.asarray(m.weights, dtype=float).ravel()
            tot, var = float((noisy / w).sum()), m.stddev**2 * float((1.0 / w**2).sum())
        num += tot / var
        den += 1.0 / var
    return max(1.0, num / den) if den else 1.0


def model_size_mb(sizes: Sequence[int], cliques: Sequence[tuple[int, ...]]) -> float:
    """Size of the junction tree's parameters for these cliques, in megabytes."""
    mbi = _mbi()
    from mbi.junction_tree import hypothetical_model_size

    domain = mbi.Domain([_name(i) for i in range(len(sizes))], [int(s) for s in sizes])
    return float(hypothetical_model_size(domain, [tuple(_name(i) for i in c) for c in cliques]))


def potentials_of(model: Any) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """A fitted model's log-potentials: (column positions, table shaped like them) per clique."""
    out = []
    for cl in model.potentials.cliques:
        factor = model.potentials[cl]
        cols = tuple(int(str(a)[1:]) for a in factor.domain.attributes)
        out.append((cols, np.asarray(factor.values, dtype=np.float64)))
    return out


def from_potentials(sizes: Sequence[int], potentials: Sequence[tuple[tuple[int, ...], np.ndarray]],
                    total: float) -> Any:
    """The MarkovRandomField of these log-potentials (as `potentials_of` gives them); its
    marginals by message passing (synthesis.tree_marginals: numpy, no jax compilation)."""
    mbi = _mbi()
    import jax.numpy as jnp

    domain = mbi.Domain([_name(i) for i in range(len(sizes))], [int(s) for s in sizes])
    cliques = [tuple(_name(i) for i in cols) for cols, _ in potentials]
    tables = {cl: mbi.Factor(domain.project(cl), jnp.asarray(values))
              for cl, (_, values) in zip(cliques, potentials, strict=True)}
    pots = mbi.CliqueVector(domain, cliques, tables)
    marginals = TreeMarginals(pots, float(total)).clique_vector(pots)
    return mbi.MarkovRandomField(potentials=pots, marginals=marginals, total=float(total))


def reweighted(model: Any, weights: dict[int, np.ndarray]) -> Any:
    """A copy of `model` whose distribution is P(x) * prod_j weights[j][x_j], renormalized to
    the model's total.

    Each column's weights are added, as logs, to the potential of a clique holding it; zero
    weights become mbi `Constraint`s (exact zeros, which synthesis.tree_marginals' message
    passing keeps, as mbi's Shafer-Shenoy oracle does). The rows drawn from it follow
    the model's exact conditional distribution given the weights: no rejection."""
    mbi = _mbi()
    import jax.numpy as jnp

    pots = model.potentials
    tables = dict(pots.tables)
    cliques = list(pots.cliques)
    constraints = list(model.constraints)
    for col, w in weights.items():
        name = _name(col)
        w = np.asarray(w, dtype=np.float64)
        dom = pots.domain.project((name,))
        unary = mbi.Factor(dom, jnp.asarray(np.log(np.where(w > 0, w, 1.0))))
        home = next((cl for cl in cliques if name in cl), None)
        if home is None:  # a column no measurement touched: a clique of its own
            cliques.append((name,))
            tables[(name,)] = unary
        else:
            tables[home] = tables[home] + unary
        if (w <= 0).any():
            constraints.append(mbi.Constraint(dom, valid=np.flatnonzero(w > 0)[:, None]))
    new = mbi.CliqueVector(pots.domain, cliques, tables)
    marginals = TreeMarginals(new, float(model.total), constraints).clique_vector(new)
    return mbi.MarkovRandomField(potentials=new, marginals=marginals, total=model.total,
                                 constraints=tuple(constraints))


def column_marginal(model: Any, col: int) -> np.ndarray:
    """P(column = code) under the model (its marginals, normalized)."""
    p = np.asarray(model.project((_name(col),)).datavector(), dtype=np.float64)
    return p / p.sum()


def exact_conditional(model: Any, cols: Sequence[int], evidence: dict[int, int]) -> np.ndarray:
    """P(cols | evidence) by mbi's variable elimination over the potentials (with the model's
    constraints), shaped like the columns; for tests and measurements."""
    mbi = _mbi()
    f = mbi.marginal_oracles.variable_elimination(
        model.potentials, tuple(_name(c) for c in cols), 1.0,
        evidence={_name(k): v for k, v in evidence.items()} or None,
        constraints=tuple(model.constraints))
    return np.asarray(f.datavector(flatten=False), dtype=np.float64)
