"""A node's evaluation statistics: sums over its own rows, laid out as one integer vector.

Every measure of the report is a function of sums over real rows, so a federation can add the
nodes' vectors through the secure channel and the coordinator learns only the totals. What a
vector holds (see `plan._layout`): counts per evaluation bin, per pair and per sampled triple of
columns; fixed-point sums of values, squares and products (numeric columns, mapped into [0, 1]
by the public bounds); histograms of model scores by true label; counts by sensitive group,
label and prediction; one 0/1 flag per synthetic row (it equals one of the node's rows); and
histograms of distances to the closest record. None of these is differentially private: they
are exact aggregates, which is why a node releases them only under its own policy and only
summed with at least t - 1 other nodes (secure aggregation). The synthetic table itself is
public (a DP output), so statistics of it alone carry no extra risk.

Models (TSTR on the synthetic table, TRTR on the node's rows) are trained at the node; only
their score histograms leave it. All nodes train the same TSTR model (same data, seed and one
thread), so its score histograms add up to those of one model over the union of test rows.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

from fedsynth.evaluation.metrics import row_hashes
from fedsynth.evaluation.plan import FIXED_POINT, EvaluationPlan, dcr_edges

Model = Callable[[np.ndarray], np.ndarray]  # feature matrix -> P(positive)


def node_statistics(plan: EvaluationPlan, synthetic: pd.DataFrame, *,
                    train: pd.DataFrame | None, test: pd.DataFrame | None) -> np.ndarray:
    """The node's vector for `plan`: `train` are the rows it contributed to synthesis, `test`
    rows it held out (either may be None, not both). All frames are validated against the
    schema. Similarity is measured on `test` when there is one, else on `train`."""
    if train is None and test is None:
        raise ValueError("a node needs its synthesis rows, its held-out rows, or both")
    evaluated = test if test is not None else train
    assert evaluated is not None
    blocks = table_blocks(plan, evaluated)
    if plan.target is not None:
        blocks.update(_model_blocks(plan, synthetic, train, test))
    blocks.update(_privacy_blocks(plan, synthetic, train, test))
    return assemble(plan, blocks)


def assemble(plan: EvaluationPlan, blocks: dict[str, np.ndarray]) -> np.ndarray:
    """Concatenate blocks in the plan's order; absent blocks are zeros."""
    parts = []
    for name, n in plan.layout:
        v = blocks.get(name)
        if v is None:
            v = np.zeros(n, dtype=np.int64)
        if len(v) != n:
            raise AssertionError(f"block {name} has {len(v)} values, the plan says {n}")
        parts.append(np.asarray(v, dtype=np.int64))
    return np.concatenate(parts)


def table_blocks(plan: EvaluationPlan, df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Counts and fixed-point sums of one table (applied to real and synthetic rows alike)."""
    cols = plan.columns
    codes = [c.codes(df[c.name]) for c in cols]
    units = [c.unit(df[c.name]) if c.numeric else None for c in cols]
    out: dict[str, np.ndarray] = {"rows": np.array([len(df)])}
    for j, c in enumerate(cols):
        out[f"one:{j}"] = np.bincount(codes[j], minlength=c.size)
        if c.numeric:
            out[f"fine:{j}"] = np.bincount(c.fine_codes(df[c.name]), minlength=c.fine_size)
            u = units[j]
            assert u is not None
            ok = ~np.isnan(u)
            out[f"mom:{j}"] = np.array([ok.sum(), _fx(u[ok]), _fx(u[ok] ** 2)])
    for a, b in plan.pairs:
        flat = codes[a] * cols[b].size + codes[b]
        out[f"pair:{a},{b}"] = np.bincount(flat, minlength=cols[a].size * cols[b].size)
        ua, ub = units[a], units[b]
        if ua is not None and ub is not None:
            ok = ~np.isnan(ua) & ~np.isnan(ub)
            x, y = ua[ok], ub[ok]
            out[f"pear:{a},{b}"] = np.array([ok.sum(), _fx(x), _fx(y), _fx(x * x), _fx(y * y),
                                             _fx(x * y)])
    for t in plan.triples:
        flat, n = np.zeros(len(df), dtype=np.int64), 1
        for i in t:
            flat, n = flat * cols[i].size + codes[i], n * cols[i].size
        out["tri:" + ",".join(map(str, t))] = np.bincount(flat, minlength=n)
    return out


def _fx(v: np.ndarray) -> int:
    """Fixed-point sum of values in [0, 1]: each value rounded to a multiple of 2^-32."""
    return int(np.rint(v * FIXED_POINT).astype(np.int64).sum())


# --- models ----------------------------------------------------------------------------------

def feature_matrix(plan: EvaluationPlan, df: pd.DataFrame) -> np.ndarray:
    """Features for the models: numeric values as they are, categories as schema positions."""
    out = np.empty((len(df), len(plan.features)), dtype=np.float64)
    for k, j in enumerate(plan.features):
        c = plan.columns[j]
        if c.numeric:
            out[:, k] = df[c.name].to_numpy(dtype=float, na_value=np.nan)
        else:
            codes = c.codes(df[c.name]).astype(float)
            codes[codes == c.size - 1] = np.nan
            out[:, k] = codes
    return out


def fit_model(plan: EvaluationPlan, df: pd.DataFrame) -> Model | None:
    """HistGradientBoosting on `df`'s labelled rows; None if they hold fewer than two classes."""
    assert plan.target is not None
    y = plan.target.labels(df[plan.target.name])
    keep = y >= 0
    if len(np.unique(y[keep])) < 2:
        return None
    cat = np.array([not plan.columns[j].numeric and len(plan.columns[j].categories) <= 250
                    for j in plan.features], dtype=bool)
    counts = np.bincount(y[keep], minlength=2)
    model = HistGradientBoostingClassifier(random_state=plan.options.seed,
                                           categorical_features=cat if cat.any() else None,
                                           early_stopping="auto" if counts.min() >= 2 else False)
    x = feature_matrix(plan, df)[keep]
    # One OpenMP thread: the same model at every node, and no oversubscription of the cores
    # once jax or Ray ran in the process (a 3-party run went from 100 s to 25 s).
    with threadpool_limits(limits=1, user_api="openmp"):
        model.fit(x, y[keep])

    def predict(xm: np.ndarray) -> np.ndarray:
        with threadpool_limits(limits=1, user_api="openmp"):
            proba = model.predict_proba(xm)
        return np.asarray(proba[:, list(model.classes_).index(1)], dtype=np.float64)

    return predict


def _score_hist(plan: EvaluationPlan, scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    b = plan.options.score_bins
    bins = np.clip((scores * b).astype(np.int64), 0, b - 1)
    return np.bincount(y * b + bins, minlength=2 * b)


def split_rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded half/half split of row positions (used when a node has only one table)."""
    perm = np.random.default_rng([seed, n]).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2:])


def _train_test(plan: EvaluationPlan, train: pd.DataFrame | None,
                test: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    if train is not None and test is not None:
        return train, test
    only = train if train is not None else test
    assert only is not None
    a, b = split_rows(len(only), plan.options.seed)
    return only.iloc[a].reset_index(drop=True), only.iloc[b].reset_index(drop=True)


def _model_blocks(plan: EvaluationPlan, synthetic: pd.DataFrame, train: pd.DataFrame | None,
                  test: pd.DataFrame | None) -> dict[str, np.ndarray]:
    assert plan.target is not None
    fit_rows, test_rows = _train_test(plan, train, test)
    y = plan.target.labels(test_rows[plan.target.name])
    keep = y >= 0
    test_rows, y = test_rows[keep].reset_index(drop=True), y[keep]
    x = feature_matrix(plan, test_rows)
    rng = np.random.default_rng([plan.options.seed, 7])
    out: dict[str, np.ndarray] = {}
    for name, rows in (("tstr", synthetic), ("trtr", fit_rows)):
        model = fit_model(plan, rows)
        if model is None or len(y) == 0:
            continue
        scores = model(x)
        out[f"ml:{name}"] = _score_hist(plan, scores, y)
        out[f"ml:{name}:fitted"] = np.array([1])
        for k, f in enumerate(plan.features):  # permutation importance, one column at a time
            xp = x.copy()
            xp[:, k] = xp[rng.permutation(len(xp)), k]
            out[f"imp:{name}:{f}"] = _score_hist(plan, model(xp), y)
        if plan.sensitive is not None:
            g = plan.columns[plan.sensitive]
            groups = g.codes(test_rows[g.name])
            pred = (scores >= 0.5).astype(np.int64)
            out[f"bias:{name}"] = np.bincount((groups * 2 + y) * 2 + pred, minlength=g.size * 4)
    if plan.sensitive is not None:  # the labels' own rates: all evaluated rows
        g = plan.columns[plan.sensitive]
        evaluated = test if test is not None else train
        assert evaluated is not None
        ye = plan.target.labels(evaluated[plan.target.name])
        ge = g.codes(evaluated[g.name])
        out["bias:real"] = np.bincount(ge[ye >= 0] * 2 + ye[ye >= 0], minlength=g.size * 2)
    return out


# --- privacy ----------------------------------------------------------------------------------

def distance_matrix(plan: EvaluationPlan, df: pd.DataFrame) -> np.ndarray:
    """Rows embedded so that L1 distance / columns is a Gower distance in [0, 1] per column.

    Numeric: value clipped to the synthetic 1st-99th percentile range and scaled into [0, 1],
    s -> (s/2, -s/2, 0) and missing -> (1/2, 0, 1/2), so two values differ by |s - t| and a
    missing value is at distance exactly 1 from any value; categorical: one-hot scaled by 1/2
    (a mismatch costs 1), missing its own code.
    """
    parts = []
    for c in plan.columns:
        if c.numeric:
            x = df[c.name].to_numpy(dtype=float, na_value=np.nan)
            lo, hi = c.clip
            na = np.isnan(x)
            v = np.where(na, 0.0, (np.clip(x, lo, hi) - lo) / (hi - lo))
            parts += [np.where(na, 0.5, v / 2), np.where(na, 0.0, -v / 2), na / 2.0]
        else:
            codes = c.codes(df[c.name])
            onehot = np.zeros((len(df), c.size))
            onehot[np.arange(len(df)), codes] = 0.5
            parts += list(onehot.T)
    return np.column_stack(parts) / len(plan.columns)


def closest_distances(plan: EvaluationPlan, queries: pd.DataFrame,
                      reference: pd.DataFrame) -> np.ndarray:
    """Gower distance from each query row to its closest reference row."""
    nn = NearestNeighbors(n_neighbors=1, metric="manhattan", algorithm="brute", n_jobs=1)
    nn.fit(distance_matrix(plan, reference))
    dist, _ = nn.kneighbors(distance_matrix(plan, queries))
    return np.asarray(dist[:, 0], dtype=np.float64)


def dcr_hist(d: np.ndarray) -> np.ndarray:
    edges = dcr_edges()
    return np.bincount(np.searchsorted(edges, d, side="right"), minlength=len(edges) + 1)


def _sample(df: pd.DataFrame, n: int, seed: list[int]) -> pd.DataFrame:
    if len(df) <= n:
        return df
    idx = np.sort(np.random.default_rng(seed).choice(len(df), n, replace=False))
    return df.iloc[idx].reset_index(drop=True)


def _privacy_blocks(plan: EvaluationPlan, synthetic: pd.DataFrame, train: pd.DataFrame | None,
                    test: pd.DataFrame | None) -> dict[str, np.ndarray]:
    real = pd.concat([t for t in (train, test) if t is not None], ignore_index=True)
    names = plan.names
    match = np.isin(row_hashes(synthetic[names], real[names]), row_hashes(real[names],
                                                                             real[names]))
    out: dict[str, np.ndarray] = {"match": match.astype(np.int64)}
    m, seed = plan.options.distance_rows, plan.options.seed
    reference, probe = _train_test(plan, train, test)
    syn_q = _sample(synthetic, m, [seed, 1])
    out["dcr:synthetic"] = dcr_hist(closest_distances(plan, syn_q, reference))
    out["dcr:holdout"] = dcr_hist(closest_distances(plan, _sample(probe, m, [seed, 2]),
                                                    reference))
    if train is not None and test is not None:
        # membership inference by distance: members should not sit closer to the synthetic rows
        out["mia:member"] = dcr_hist(closest_distances(plan, _sample(train, m, [seed, 3]),
                                                       synthetic))
        out["mia:non_member"] = dcr_hist(closest_distances(plan, _sample(test, m, [seed, 4]),
                                                           synthetic))
        out["mia:parties"] = np.array([1])
    return out
