"""A node's evaluation statistics: sums over its own rows, laid out as one integer vector.

Every measure of the report is a function of sums over real rows, so a federation can add the
nodes' vectors through the secure channel and the coordinator learns only the totals. What an
exact plan's vector holds (see `plan._layout`): counts per evaluation bin, per pair and per
sampled triple of columns; per numeric column, counts per fine bin, per display bin of the
report's histograms and of values equal to each public bound; fixed-point sums of values,
squares and products (numeric columns, mapped into [0, 1] by the public bounds); histograms
of model scores by true label; counts by sensitive group, label and prediction; one 0/1 flag
per synthetic row (it equals one of the node's rows); and histograms of distances to the
closest record. None of these is differentially private: they are exact aggregates, which is
why exact evaluation is an explicit policy opt-in, released only summed with at least t - 1
other nodes (secure aggregation). The synthetic table itself is public (a DP output), so
statistics of it alone carry no extra risk.

Models (TSTR on the synthetic table, TRTR on the node's rows) are trained at the node; only
their score histograms leave it. All nodes train the same TSTR model (same data, seed and one
thread), so its score histograms add up to those of one model over the union of test rows.

With `plan.dp` (options.epsilon set) the node scores its held-out rows only and the vector
holds only blocks to which one row adds a bounded amount (evaluation.dp argues each bound):
every block is a sum over rows of something that depends on that row and on public inputs
alone. Nothing here adds the noise: the node adds its Skellam share of
`evaluation.dp.element_variances(plan)` before masking.
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
from fedsynth.synthesis.datetimes import as_floats

Model = Callable[[np.ndarray], np.ndarray]  # feature matrix -> P(positive)


def node_statistics(plan: EvaluationPlan, synthetic: pd.DataFrame, *,
                    train: pd.DataFrame | None, test: pd.DataFrame | None) -> np.ndarray:
    """The node's vector for `plan`: `train` are the rows it contributed to synthesis, `test`
    rows it held out (either may be None, not both). All frames are validated against the
    schema. Similarity is measured on `test` when there is one, else on `train`."""
    if train is None and test is None:
        raise ValueError("a node needs its synthesis rows, its held-out rows, or both")
    if plan.dp:
        if train is not None or test is None:
            raise ValueError("DP evaluation scores held-out rows only: pass train=None and the "
                             "held-out rows as test")
        return assemble(plan, dp_blocks(plan, synthetic, test))
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
    cols, fp = plan.columns, plan.fixed_point
    codes = [c.codes(df[c.name]) for c in cols]
    units = [c.unit(df[c.name]) if c.numeric else None for c in cols]
    out: dict[str, np.ndarray] = {"rows": np.array([len(df)])}
    have = {name for name, _ in plan.layout}
    for j, c in enumerate(cols):
        out[f"one:{j}"] = np.bincount(codes[j], minlength=c.size)
        if f"disp:{j}" in have:  # the report's histogram bins (exact plans)
            out[f"disp:{j}"] = np.bincount(c.display_codes(df[c.name]),
                                           minlength=len(c.display_edges) - 1)
        if f"ends:{j}" in have:  # values at the public bounds exactly (exact plans)
            out[f"ends:{j}"] = c.end_counts(df[c.name])
        if c.numeric:
            out[f"fine:{j}"] = np.bincount(c.fine_codes(df[c.name]), minlength=c.fine_size)
            u = units[j]
            assert u is not None
            ok = ~np.isnan(u)
            out[f"mom:{j}"] = np.array([ok.sum(), _fx(u[ok], fp), _fx(u[ok] ** 2, fp)])
    for a, b in plan.pairs:
        flat = codes[a] * cols[b].size + codes[b]
        out[f"pair:{a},{b}"] = np.bincount(flat, minlength=cols[a].size * cols[b].size)
        ua, ub = units[a], units[b]
        if ua is not None and ub is not None:
            ok = ~np.isnan(ua) & ~np.isnan(ub)
            x, y = ua[ok], ub[ok]
            out[f"pear:{a},{b}"] = np.array([ok.sum(), *(_fx(v, fp) for v in (
                x, y, x * x, y * y, x * y))])
    for t in plan.triples:
        flat, n = np.zeros(len(df), dtype=np.int64), 1
        for i in t:
            flat, n = flat * cols[i].size + codes[i], n * cols[i].size
        out["tri:" + ",".join(map(str, t))] = np.bincount(flat, minlength=n)
    return out


def _fx(v: np.ndarray, scale: float = FIXED_POINT) -> int:
    """Fixed-point sum of values in [0, 1]: each value rounded to a multiple of 1 / scale
    (2^-32 for exact evaluation), so one value adds at most `scale`."""
    return int(np.rint(v * scale).astype(np.int64).sum())


# --- models ----------------------------------------------------------------------------------

def feature_matrix(plan: EvaluationPlan, df: pd.DataFrame) -> np.ndarray:
    """Features for the models: numeric values as they are, categories as schema positions."""
    out = np.empty((len(df), len(plan.features)), dtype=np.float64)
    for k, j in enumerate(plan.features):
        c = plan.columns[j]
        if c.numeric:
            out[:, k] = as_floats(df[c.name])
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
    # A feature without a single value in the training rows (every value missing) carries no
    # information, and scikit-learn cannot bin it: it becomes a constant, which the model
    # never splits on, so the predictions do not depend on it (nor its importance).
    empty = np.isnan(x).all(axis=0) if len(x) else np.zeros(x.shape[1], dtype=bool)
    x[:, empty] = 0.0
    # One OpenMP thread: the same model at every node, and no oversubscription of the cores
    # once jax or Ray ran in the process (a 3-party run went from 100 s to 25 s).
    with threadpool_limits(limits=1, user_api="openmp"):
        model.fit(x, y[keep])

    def predict(xm: np.ndarray) -> np.ndarray:
        if empty.any():
            xm = xm.copy()
            xm[:, empty] = 0.0
        with threadpool_limits(limits=1, user_api="openmp"):
            proba = model.predict_proba(xm)
        return np.asarray(proba[:, list(model.classes_).index(1)], dtype=np.float64)

    return predict


def _score_hist(plan: EvaluationPlan, scores: np.ndarray, y: np.ndarray,
                edges: np.ndarray | None = None) -> np.ndarray:
    """Scores binned by label (negatives first): equal-width bins, or bins cut at the
    interior `edges` (DP mode), whose bin plan.score_bins // 2 starts at score 0.5."""
    b = plan.score_bins
    if edges is None:
        bins = np.clip((scores * b).astype(np.int64), 0, b - 1)
    else:
        bins = np.searchsorted(edges, scores, side="right").astype(np.int64)
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
    """TSTR (trained on the public synthetic table) is tested on every evaluated row, so its
    histograms add up over parties to those of the pooled rows; TRTR, with only one table, is
    trained on one half of it and tested on the other."""
    assert plan.target is not None
    fit_rows, trtr_rows = _train_test(plan, train, test)
    evaluated = test if test is not None else train
    assert evaluated is not None
    rng = np.random.default_rng([plan.options.seed, 7])
    out: dict[str, np.ndarray] = {}
    for name, rows, tested in (("tstr", synthetic, evaluated), ("trtr", fit_rows, trtr_rows)):
        y = plan.target.labels(tested[plan.target.name])
        keep = y >= 0
        test_rows, y = tested[keep].reset_index(drop=True), y[keep]
        x = feature_matrix(plan, test_rows)
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
            x = as_floats(df[c.name])
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


# --- DP evaluation: held-out rows only, every block bounded per row ---------------------------

def dp_blocks(plan: EvaluationPlan, synthetic: pd.DataFrame,
              test: pd.DataFrame) -> dict[str, np.ndarray]:
    """The DP plan's blocks over the held-out rows `test`. Each block is a sum over rows of a
    term that depends on the row and on public inputs only (the synthetic table, the schema
    and the options), which is what bounds its sensitivity (evaluation.dp)."""
    blocks = table_blocks(plan, test)
    if plan.target is not None:
        blocks.update(_dp_model_blocks(plan, synthetic, test))
    names = plan.names
    if len(test):
        syn_keys = row_hashes(synthetic[names], synthetic[names])
        real_keys = row_hashes(test[names], synthetic[names])
        # held-out rows that have an identical synthetic row: a count, one per row at most
        blocks["match:real"] = np.array([int(np.isin(real_keys, syn_keys).sum())])
        reference = _sample(synthetic, plan.options.distance_rows, [plan.options.seed, 1])
        # every held-out row's distance to the closest of a public sample of synthetic rows
        blocks["dcr:real_to_synthetic"] = dcr_hist(closest_distances(plan, test, reference))
    return blocks


def dp_score_edges(plan: EvaluationPlan, synthetic_scores: np.ndarray,
                   synthetic_labels: np.ndarray) -> np.ndarray:
    """Interior edges of the DP score bins: half the bins below 0.5 and half above, each half
    cut at class-balanced quantiles of the TSTR model's scores on the synthetic table (public;
    both classes weigh the same, so a rare class gets bins of its own). 0.5 is an edge, so
    F1 at 0.5 stays exact."""
    half = plan.score_bins // 2
    keep = synthetic_labels >= 0
    s, y = synthetic_scores[keep], synthetic_labels[keep]
    w = np.where(y == 1, 1.0 / max(int((y == 1).sum()), 1), 1.0 / max(int((y == 0).sum()), 1))
    parts = []
    for lo, hi, inside in ((0.0, 0.5, s < 0.5), (0.5, 1.0, s >= 0.5)):
        if inside.any():
            order = np.argsort(s[inside], kind="stable")
            v, cw = s[inside][order], np.cumsum(w[inside][order])
            cut = np.interp(np.linspace(0.0, 1.0, half + 1)[1:-1] * cw[-1], cw, v)
        else:
            cut = np.linspace(lo, hi, half + 1)[1:-1]
        parts.append(np.clip(cut, lo, hi))
    return np.concatenate([parts[0], [0.5], parts[1]])


def row_keys(plan: EvaluationPlan, df: pd.DataFrame) -> np.ndarray:
    """A 64-bit key of each row computed from that row's values alone (uint64)."""
    parts: dict[str, np.ndarray] = {}
    for j, c in enumerate(plan.columns):
        if c.numeric:
            x = as_floats(df[c.name])
            parts[str(j)] = np.where(np.isnan(x), np.inf, x)  # one key for missing
        else:
            parts[str(j)] = c.codes(df[c.name])
    frame = pd.DataFrame(parts, index=pd.RangeIndex(len(df)))
    return np.asarray(pd.util.hash_pandas_object(frame, index=False).to_numpy(), dtype=np.uint64)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 values (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return np.asarray(x ^ (x >> np.uint64(31)), dtype=np.uint64)


def replacement_rows(plan: EvaluationPlan, df: pd.DataFrame, feature: int,
                     synthetic_rows: int) -> np.ndarray:
    """For each row of `df`, the synthetic row whose value replaces its `feature` in the DP
    importance: a hash of the row's own values, the public seed and the feature, so a row's
    draw never depends on the other rows (unlike a permutation of the real rows)."""
    salt = _mix(np.array([plan.options.seed * 1_000_003 + feature + 1], dtype=np.uint64))
    return np.asarray(_mix(row_keys(plan, df) ^ salt) % np.uint64(synthetic_rows),
                      dtype=np.int64)


def _dp_model_blocks(plan: EvaluationPlan, synthetic: pd.DataFrame,
                     test: pd.DataFrame) -> dict[str, np.ndarray]:
    assert plan.target is not None
    y = plan.target.labels(test[plan.target.name])
    keep = y >= 0
    rows, y = test[keep].reset_index(drop=True), y[keep]
    out: dict[str, np.ndarray] = {}
    g = plan.columns[plan.sensitive] if plan.sensitive is not None else None
    if g is not None:
        out["bias:real"] = np.bincount(g.codes(rows[g.name]) * 2 + y, minlength=g.size * 2)
    if not plan.tstr_fits or len(rows) == 0:
        return out
    model = fit_model(plan, synthetic)  # trained on the public synthetic table only
    assert model is not None  # plan.tstr_fits: the synthetic labels hold both classes
    xs = feature_matrix(plan, synthetic)
    edges = dp_score_edges(plan, model(xs), plan.target.labels(synthetic[plan.target.name]))
    x = feature_matrix(plan, rows)
    scores = model(x)
    out["ml:tstr"] = _score_hist(plan, scores, y, edges)
    have = {name for name, _ in plan.layout}
    for k, f in enumerate(plan.features):  # importance: the feature replaced by a synthetic draw
        if f"imp:tstr:{f}" not in have:
            continue
        xp = x.copy()
        xp[:, k] = xs[replacement_rows(plan, rows, f, len(xs)), k]
        out[f"imp:tstr:{f}"] = _score_hist(plan, model(xp), y, edges)
    if g is not None:
        pred = (scores >= 0.5).astype(np.int64)
        out["bias:tstr"] = np.bincount((g.codes(rows[g.name]) * 2 + y) * 2 + pred,
                                       minlength=g.size * 4)
    return out
