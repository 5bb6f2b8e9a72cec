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
    with progress.task("estimating the model", total=iters, unit="iter") as bar:
        return mbi.estimation.MirrorDescent().estimate(
            domain, ms, known_total=total, iters=iters, warm_start=warm_start,
            callback_fn=lambda _: bar.advance(min(every, iters - bar.done)))


def sample_codes(model: Any, rows: int, *, seed: int) -> np.ndarray:
    """Draw `rows` rows of group codes (one column per model column) from a fitted model:
    the rows mbi's `synthetic_data(rows)` draws (`synthetic_codes`), faster."""
    np.random.seed(seed % 2**32)  # mbi draws with numpy's global generator; so do we
    with progress.task(f"sampling {rows:,} rows"):
        return synthetic_codes(model, rows)


def synthetic_codes(model: Any, rows: int) -> np.ndarray:
    """mbi 2.0.0's `MarkovRandomField.synthetic_data` (randomized rounding), column by column
    along the junction tree, drawing the same numbers from numpy's global generator in the
    same order, so the rows are the same (tested); returns (rows, columns) int64 codes.

    What changed is how rows are grouped by the values of a column's parents: mbi sorts the
    parent columns' rows (`np.unique(axis=0)`, 3.7 s of the 6 s for 1M rows, 10x that for
    10M), here each row's parents are one integer (their flat index), counted with
    np.bincount and ordered by a stable radix sort on the group number."""
    _mbi()  # jax configured before mbi is used
    from mbi import junction_tree, marginal_oracles

    total = max(1, int(rows or model.total))
    domain = model.domain
    jtree, elimination_order = junction_tree.make_junction_tree(
        domain, [tuple(cl) for cl in model.cliques])
    cliques = [set(cl) for cl in jtree.nodes]
    potentials = model.potentials.expand(list(jtree.nodes))
    if model.constraints:
        marginals = marginal_oracles.message_passing_shafer_shenoy(
            potentials, model.total, constraints=model.constraints)
    else:
        marginals = marginal_oracles.message_passing_stable(potentials, model.total)

    data: dict[Any, np.ndarray] = {}
    order = elimination_order[::-1]
    data[order[0]] = _rounded_column(marginals.project((order[0],)).datavector(flatten=False),
                                     total)
    used = {order[0]}
    for col in order[1:]:
        relevant = used.intersection(set().union(*[cl for cl in cliques if col in cl]))
        proj = tuple(relevant)  # mbi's order of the parents (a set's), kept for its rows
        used.add(col)
        if not proj:
            data[col] = _rounded_column(marginals.project((col,)).datavector(flatten=False),
                                        total)
            continue
        marg = np.asarray(marginals.project((*proj, col)).datavector(flatten=False))
        parents = marg.sum(axis=-1, keepdims=True)
        cond = np.divide(marg, parents, out=np.zeros_like(marg), where=parents != 0)
        cdfs = cond.cumsum(axis=-1).reshape(-1, marg.shape[-1])
        data[col] = _draw_given_parents([data[c] for c in proj], marg.shape[:-1], cdfs, total,
                                        int(domain[col]))
    return np.stack([np.asarray(data[_name(i)], dtype=np.int64)
                     for i in range(len(domain))], axis=1)


def _rounded_column(counts: Any, total: int) -> np.ndarray:
    """mbi's `synthetic_col` (randomized rounding of the counts to `total` rows, shuffled)."""
    counts = np.asarray(counts, dtype=np.float64)
    options = np.arange(counts.size, dtype=np.min_scalar_type(counts.size))
    counts = counts * (total / counts.sum())
    frac, integ = np.modf(counts)
    whole = integ.astype(int)
    extra = total - whole.sum()
    if extra > 0:
        idx = np.random.choice(options, extra, False, frac / frac.sum())
        whole[idx] += 1
    vals = np.repeat(options, whole)
    np.random.shuffle(vals)
    return vals


def _draw_given_parents(parent_codes: list[np.ndarray], shape: tuple[int, ...],
                        cdfs: np.ndarray, total: int, size: int) -> np.ndarray:
    """One column's codes given its parents' codes: rows with the same parents get evenly
    spread quantiles (ranks in a shuffled order plus uniform noise), looked up in that parent
    cell's conditional CDF; numbers drawn as mbi draws them."""
    key = np.zeros(total, dtype=np.int64)  # the parents' flat cell, C order as `marg`
    for codes, n in zip(parent_codes, shape, strict=True):
        key *= n
        key += codes
    full = np.bincount(key, minlength=int(np.prod(shape)))
    present = np.flatnonzero(full)  # the distinct parent cells, ascending (as np.unique)
    counts = full[present]
    rank_of = np.zeros(len(full), dtype=np.int64)
    rank_of[present] = np.arange(len(present))
    inverse = rank_of[key]
    small = inverse.astype(np.uint16) if len(present) <= 1 << 16 else inverse
    perm = np.argsort(small, kind="stable")  # radix sort for 16-bit keys
    starts = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    for s, c in zip(starts, counts, strict=True):  # shuffle within each parent group
        np.random.shuffle(perm[s:s + c])
    ranks = np.empty(total, dtype=np.int64)
    ranks[perm] = np.arange(total) - starts[inverse[perm]]
    u = (ranks + np.random.rand(total)) / counts[inverse]
    u_sorted = u[perm]
    choices = np.empty(total, dtype=np.min_scalar_type(size))
    for i, (s, c) in enumerate(zip(starts, counts, strict=True)):
        picked = np.searchsorted(cdfs[present[i]], u_sorted[s:s + c], side="right")
        np.minimum(picked, size - 1, out=picked)
        choices[perm[s:s + c]] = picked
    return choices


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
    marginals come from mbi's message passing, as at the end of `fit`."""
    mbi = _mbi()
    import jax.numpy as jnp

    domain = mbi.Domain([_name(i) for i in range(len(sizes))], [int(s) for s in sizes])
    cliques = [tuple(_name(i) for i in cols) for cols, _ in potentials]
    tables = {cl: mbi.Factor(domain.project(cl), jnp.asarray(values))
              for cl, (_, values) in zip(cliques, potentials, strict=True)}
    pots = mbi.CliqueVector(domain, cliques, tables)
    marginals = mbi.marginal_oracles.message_passing_stable(pots, float(total))
    return mbi.MarkovRandomField(potentials=pots, marginals=marginals, total=float(total))


def reweighted(model: Any, weights: dict[int, np.ndarray]) -> Any:
    """A copy of `model` whose distribution is P(x) * prod_j weights[j][x_j], renormalized to
    the model's total.

    Each column's weights are added, as logs, to the potential of a clique holding it; zero
    weights become mbi `Constraint`s (exact zeros, which mbi's Shafer-Shenoy message passing
    and its sampler handle; the default message passing cannot). The rows drawn from it follow
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
    marginals = mbi.marginal_oracles.message_passing_shafer_shenoy(
        new, model.total, constraints=tuple(constraints))
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
