"""What an evaluation computes: bins, pairs, models and samples, derived from public inputs only.

An `EvaluationPlan` is a pure function of the public schema, the synthetic table (a DP output,
so public to the consortium) and `EvalOptions`. The coordinator and every node build it
themselves from those three, so a coordinator cannot ask a node for statistics on bins of its
own choosing: a node computes only what this module derives. Bins come from the synthetic
table's quantiles, never from a party's rows, so no real quantile leaves a node.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd

from fedsynth.errors import InputError
from fedsynth.synthesis.datetimes import as_floats
from fedsynth.synthesis.schema import Schema

MAX_CATEGORICAL_NUMERIC = 20  # numeric columns with at most this many synthetic values: exact bins
FIXED_POINT = float(1 << 32)  # scale of the fixed-point sums (values are first mapped into [0, 1])
DCR_BINS = 64  # distance histograms: bin 0 is distance 0 exactly, then log-spaced up to 1
# DP evaluation (options.epsilon set; see evaluation.dp): fixed-point sums on a coarser scale
# (the noise on a sum is this scale times the noise on a count, and must stay within what a
# Poisson sampler draws), and model scores in few bins placed at public score quantiles.
DP_FIXED_POINT = float(1 << 16)
DP_SCORE_BINS = 8  # per label: 4 below the 0.5 threshold and 4 above (measured: see dp.py)
# Budget weight of each kind of block in a DP plan (renormalised over the kinds a plan holds);
# a kind with weight 0 is left out of DP plans. The zeros are measured, not assumed:
# benchmarks/evaluation_dp.py (see evaluation.dp) found their measures drowned in noise at
# every evaluation epsilon up to 3 on the bundled tables, so they would only take budget
# from the measures that survive.
DP_WEIGHTS: dict[str, float] = {
    "one": 0.45, "ml": 0.35, "pair": 0.10, "match": 0.05, "dcr": 0.03, "bias": 0.10,
    "tri": 0.0, "fine": 0.0, "mom": 0.0, "pear": 0.0, "imp": 0.0,
}


class EvalOptionsError(InputError):
    """Evaluation options that cannot be used (unknown column, out-of-range size)."""


@dataclass(frozen=True)
class EvalOptions:
    """What to evaluate. Every field is public and travels to the nodes as JSON."""

    target: str | None = None  # column for ML efficacy (TSTR/TRTR) and the bias measures
    sensitive: str | None = None  # protected attribute for the bias measures (needs target)
    seed: int = 0
    bins: int = 16  # evaluation bins per numeric column (quantiles of the synthetic table)
    fine_bins: int = 200  # finer bins for quantiles, KS and min/max
    max_triples: int = 60  # 3-way marginals: a seeded random subset of at most this many
    distance_rows: int = 1000  # rows sampled per side for distance-based privacy measures
    score_bins: int = 256  # model score histogram resolution (AUC, F1)
    # None: exact sums (a policy opt-in, outside any DP guarantee); a number: the statistics
    # vector is released with Skellam noise for (epsilon, delta)-DP per held-out row (see
    # evaluation.dp), and the plan holds only blocks of bounded sensitivity
    epsilon: float | None = None
    delta: float = 1e-6

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EvalOptions:
        raw = json.loads(text)
        if not isinstance(raw, dict) or set(raw) - set(cls.__dataclass_fields__):
            raise EvalOptionsError(f"evaluation options {text[:200]!r} are not recognised")
        opts = cls(**raw)
        opts.check()
        return opts

    def check(self, schema: Schema | None = None) -> None:
        """Raise EvalOptionsError listing every problem; with `schema`, also unknown columns."""
        limits = {"bins": (2, 64), "fine_bins": (10, 1000), "max_triples": (0, 500),
                  "distance_rows": (10, 20_000), "score_bins": (16, 4096)}
        bad = [f"{k}={getattr(self, k)} is outside [{lo}, {hi}]"
               for k, (lo, hi) in limits.items()
               if not isinstance(getattr(self, k), int) or not lo <= getattr(self, k) <= hi]
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            bad.append(f"seed={self.seed!r} is not a whole number >= 0")
        for role, col in (("target", self.target), ("sensitive", self.sensitive)):
            if col is not None and not isinstance(col, str):
                bad.append(f"{role}={col!r} is not a column name")
        if self.epsilon is not None and (
                isinstance(self.epsilon, bool) or not isinstance(self.epsilon, (int, float))
                or not math.isfinite(self.epsilon) or self.epsilon <= 0):
            bad.append(f"epsilon={self.epsilon!r} is not a positive number (None: exact "
                       "evaluation)")
        if (isinstance(self.delta, bool) or not isinstance(self.delta, (int, float))
                or not 0 < self.delta < 1):
            bad.append(f"delta={self.delta!r} is not a number strictly between 0 and 1")
        if self.sensitive is not None and self.target is None:
            bad.append("the bias measures need a target as well as a sensitive column")
        if schema is not None:
            for role, col in (("target", self.target), ("sensitive", self.sensitive)):
                if isinstance(col, str) and col not in schema.names:
                    bad.append(f"{role} column {col!r} is not in the schema (columns: "
                               f"{', '.join(schema.names)})")
        if bad:
            raise EvalOptionsError("evaluation options: " + "; ".join(bad))


@dataclass(frozen=True)
class ColumnPlan:
    name: str
    numeric: bool
    edges: tuple[float, ...]  # numeric: interior edges of the evaluation bins
    categories: tuple[str, ...]  # categorical: the schema's categories
    fine_edges: tuple[float, ...]  # numeric: all edges of the fine bins (first/last = bounds)
    exact_fine: bool  # numeric: fine bins hold one integer value each (exact quantiles, distinct)
    lower: float
    upper: float
    clip: tuple[float, float]  # numeric: range the distance measure clips to (1st-99th pct)
    nullable: bool = True  # the schema allows missing values (else the missing code is empty)
    # numeric: all edges of the display bins (equal width with a round width, covering the
    # public bounds; one bin per value for integers with a small range), for the report's
    # histograms only: no measure uses them
    display_edges: tuple[float, ...] = ()

    @property
    def ends(self) -> bool:
        """Numeric columns binned by interval (not one bin per value) with a public range:
        they count values equal to each bound exactly (e.g. "no debt": 0, or a top code), so a
        minimum or maximum at a bound is exact rather than interpolated within a fine bin."""
        return self.numeric and not self.exact_fine and self.upper > self.lower

    @property
    def size(self) -> int:
        """Evaluation codes: bins or categories, then one code for missing."""
        return (len(self.edges) + 1 if self.numeric else len(self.categories)) + 1

    @property
    def fine_size(self) -> int:
        return len(self.fine_edges) - 1 + 1  # fine bins, then missing

    def codes(self, s: pd.Series) -> np.ndarray:
        na = s.isna().to_numpy()
        if self.numeric:
            x = as_floats(s)
            out = np.searchsorted(np.asarray(self.edges), x, side="right")
        else:
            index = pd.Index(self.categories)
            out = index.get_indexer(pd.Index(s.astype(object).where(~na, None)))
            out[out < 0] = self.size - 1  # unknown category only if unvalidated; count as missing
        out = np.asarray(out, dtype=np.int64)
        out[na] = self.size - 1
        return out

    def display_codes(self, s: pd.Series) -> np.ndarray:
        """Display bin of each non-missing value (missing values are dropped)."""
        x = as_floats(s)
        x = x[~np.isnan(x)]
        inner = np.asarray(self.display_edges[1:-1])
        return np.searchsorted(inner, x, side="right").astype(np.int64)

    def end_counts(self, s: pd.Series) -> np.ndarray:
        """Values equal to the lower bound, and to the upper bound."""
        x = as_floats(s)
        return np.array([int((x == self.lower).sum()), int((x == self.upper).sum())])

    def fine_codes(self, s: pd.Series) -> np.ndarray:
        x = as_floats(s)
        inner = np.asarray(self.fine_edges[1:-1])
        out = np.searchsorted(inner, x, side="right").astype(np.int64)
        out[np.isnan(x)] = self.fine_size - 1
        return out

    def unit(self, s: pd.Series) -> np.ndarray:
        """Values mapped into [0, 1] by the public bounds (NaN stays NaN)."""
        x = as_floats(s)
        span = self.upper - self.lower
        return np.clip((x - self.lower) / span, 0.0, 1.0) if span > 0 else np.where(
            np.isnan(x), np.nan, 0.0)

    def structural(self) -> np.ndarray:
        """Per code, True where no validated row can land (the missing code of a column the
        schema declares non-nullable): public knowledge, so noise there can be discarded."""
        out = np.zeros(self.size, dtype=bool)
        out[-1] = not self.nullable
        return out

    def label(self, code: int) -> str:
        if code == self.size - 1:
            return "missing"
        if not self.numeric:
            return self.categories[code]
        e = self.edges
        lo = f"{e[code - 1]:.4g}" if code > 0 else f"{self.lower:.4g}"
        hi = f"{e[code]:.4g}" if code < len(e) else f"{self.upper:.4g}"
        return f"[{lo}, {hi})"


@dataclass(frozen=True)
class Target:
    name: str
    index: int
    positive: str  # label of the positive class (category, or "> threshold")
    threshold: float | None  # numeric targets: positive means value > threshold

    def labels(self, s: pd.Series) -> np.ndarray:
        """1 positive, 0 negative, -1 missing."""
        na = s.isna().to_numpy()
        if self.threshold is not None:
            y = (as_floats(s) > self.threshold).astype(np.int64)
        else:
            y = (s.astype(object) == self.positive).to_numpy().astype(np.int64)
        y[na] = -1
        return y


@dataclass(frozen=True)
class EvaluationPlan:
    options: EvalOptions
    columns: tuple[ColumnPlan, ...]
    pairs: tuple[tuple[int, int], ...]
    triples: tuple[tuple[int, ...], ...]
    target: Target | None
    sensitive: int | None
    features: tuple[int, ...]
    synthetic_rows: int
    layout: tuple[tuple[str, int], ...] = field(default=())
    tstr_fits: bool = True  # the synthetic table's labels hold both classes (public)

    @property
    def dp(self) -> bool:
        """True when the vector is released with DP noise (options.epsilon is set)."""
        return self.options.epsilon is not None

    @property
    def fixed_point(self) -> float:
        """Scale of the fixed-point sums: values in [0, 1] become integers up to this."""
        return DP_FIXED_POINT if self.dp else FIXED_POINT

    @property
    def score_bins(self) -> int:
        """Score bins per label of the model histograms."""
        return DP_SCORE_BINS if self.dp else self.options.score_bins

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def length(self) -> int:
        return sum(n for _, n in self.layout)

    def split(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        """Cut a flat statistics vector into its named blocks."""
        if len(vector) != self.length:
            raise ValueError(f"statistics vector has {len(vector)} values, the plan {self.length}")
        out, at = {}, 0
        for name, n in self.layout:
            out[name] = vector[at:at + n]
            at += n
        return out

    @classmethod
    def build(cls, schema: Schema, synthetic: pd.DataFrame, options: EvalOptions) -> EvaluationPlan:
        """Derive the plan from public inputs; `synthetic` must be validated against `schema`."""
        options.check(schema)
        names = schema.names
        if len(synthetic) == 0:
            raise EvalOptionsError("the synthetic table has no rows; nothing to evaluate")
        cols = tuple(replace(_column_plan(c.name, c.kind, c.categories, c.lower, c.upper,
                                          synthetic[c.name], options, integral=c.integral),
                             nullable=c.nullable)
                     for c in schema.columns)
        d = len(cols)
        pairs = tuple(itertools.combinations(range(d), 2))
        triples = list(itertools.combinations(range(d), 3))
        if len(triples) > options.max_triples:
            pick = np.random.default_rng(options.seed).choice(len(triples), options.max_triples,
                                                              replace=False)
            triples = [triples[i] for i in sorted(pick.tolist())]
        target, fits = None, True
        if options.target is not None:
            target = _target(names.index(options.target), cols, synthetic[options.target])
            y = target.labels(synthetic[options.target])
            fits = len(np.unique(y[y >= 0])) >= 2  # as statistics.fit_model decides
        sensitive = names.index(options.sensitive) if options.sensitive is not None else None
        features = tuple(j for j in range(d) if target is None or j != target.index)
        plan = cls(options, cols, pairs, tuple(triples), target, sensitive, features,
                   len(synthetic), tstr_fits=fits)
        layout = _dp_layout(plan) if plan.dp else _layout(plan)
        return cls(**{**plan.__dict__, "layout": tuple(layout)})


def _column_plan(name: str, kind: str, categories: tuple[str, ...], lower: float | None,
                 upper: float | None, s: pd.Series, opt: EvalOptions, *,
                 integral: bool = False) -> ColumnPlan:
    """Bins of one column; dates are numbers here (days since 1970, see datetimes.as_floats)."""
    if kind == "categorical":
        return ColumnPlan(name, False, (), tuple(categories), (), False, 0.0, 0.0, (0.0, 0.0))
    lo, hi = float(lower if lower is not None else 0.0), float(upper if upper is not None else 0.0)
    x = as_floats(s)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        x = np.array([lo])
    distinct = np.unique(x)
    if len(distinct) <= MAX_CATEGORICAL_NUMERIC:
        edges = (distinct[:-1] + distinct[1:]) / 2.0  # one bin per synthetic value
    else:
        q = np.quantile(x, np.linspace(0.0, 1.0, opt.bins + 1)[1:-1])
        edges = np.unique(q)
    exact = kind == "integer" and hi - lo + 1 <= opt.fine_bins
    if exact:
        fine = np.arange(lo - 0.5, hi + 1.0, 1.0)
    else:
        inner = np.unique(np.quantile(x, np.linspace(0.0, 1.0, opt.fine_bins + 1)))
        inner = inner[(inner > lo) & (inner < hi)]
        fine = np.concatenate([[lo], inner, [hi if hi > lo else lo + 1.0]])
    c1, c99 = (float(v) for v in np.quantile(x, [0.01, 0.99]))
    if c99 <= c1:
        c1, c99 = lo, (hi if hi > lo else lo + 1.0)
    return ColumnPlan(name, True, tuple(float(e) for e in edges), (),
                      tuple(float(e) for e in fine), exact, lo, hi, (c1, c99),
                      display_edges=display_edges(lo, hi, integer=integral))


DISPLAY_BINS = 20  # the report's histograms: at most about this many equal-width bins
_ROUND_STEPS = (1.0, 2.0, 2.5, 5.0)


def round_width(span: float, bins: int = DISPLAY_BINS) -> float:
    """The smallest width of the form {1, 2, 2.5, 5} x 10^k that covers `span` in `bins` bins."""
    if span <= 0:
        return 1.0
    raw = span / bins
    power = 10.0 ** math.floor(math.log10(raw))
    for step in (*_ROUND_STEPS, 10.0):
        if step * power >= raw * (1 - 1e-12):
            return step * power
    return 10.0 * power  # pragma: no cover (10 always qualifies)


def display_edges(lo: float, hi: float, *, integer: bool) -> tuple[float, ...]:
    """Edges of the report's histogram bins for a numeric column with public bounds [lo, hi]:
    the public bounds, and between them every multiple of a round width (so bins line up with
    ticks such as 0, 500, 1k); an end bin narrower than half that width joins its neighbour.
    End bins may be narrower than the others: the report draws shares per width. Integers
    with at most 40 values get one bin per value, centred on it; other integers get bins that
    hold whole numbers (edges half way between them)."""
    if hi <= lo:
        return (lo - 0.5, lo + 0.5)
    if integer and hi - lo + 1 <= 2 * DISPLAY_BINS:
        return tuple(float(v) for v in np.arange(lo - 0.5, hi + 1.0, 1.0))
    shift = 0.5 if integer else 0.0
    a, b = lo - shift, hi + shift
    w = round_width(b - a)
    if integer:
        w = max(w, 1.0)
    digits = max(0, 1 - math.floor(math.log10(w)))
    inner = [round(k * w - shift, digits + 1)
             for k in range(math.floor(a / w) + 1, math.ceil(b / w) + 1)]
    inner = [e for e in inner if a < e < b]
    if inner and inner[0] - a < w / 2:
        inner = inner[1:]
    if inner and b - inner[-1] < w / 2:
        inner = inner[:-1]
    return (float(a), *(float(e) for e in inner), float(b))


def _target(index: int, cols: tuple[ColumnPlan, ...], s: pd.Series) -> Target:
    col = cols[index]
    if col.numeric:
        x = as_floats(s)
        values = np.unique(x[~np.isnan(x)])
        if len(values) == 2:  # a 0/1-like numeric target: the larger value is positive
            return Target(col.name, index, f"= {values[1]:g}", float(values.mean()))
        med = float(np.nanmedian(x)) if len(values) else col.lower
        return Target(col.name, index, f"> {med:g}", med)
    counts = s.value_counts()
    counts = counts.reindex(list(col.categories), fill_value=0)
    present = counts[counts > 0]
    pool = present if len(present) >= 2 else counts
    # the minority class is positive: the usual event of interest (default, fraud, death)
    positive = str(pool.sort_values(kind="stable").index[0])
    return Target(col.name, index, positive, None)


def _layout(plan: EvaluationPlan) -> list[tuple[str, int]]:
    cols, opt = plan.columns, plan.options
    out: list[tuple[str, int]] = [("rows", 1)]
    for j, c in enumerate(cols):
        out.append((f"one:{j}", c.size))
        if c.numeric:
            out += [(f"fine:{j}", c.fine_size), (f"mom:{j}", 3),
                    (f"disp:{j}", len(c.display_edges) - 1)]
            if c.ends:
                out.append((f"ends:{j}", 2))
    for a, b in plan.pairs:
        out.append((f"pair:{a},{b}", cols[a].size * cols[b].size))
        if cols[a].numeric and cols[b].numeric:
            out.append((f"pear:{a},{b}", 6))
    for t in plan.triples:
        out.append((f"tri:{','.join(map(str, t))}", int(np.prod([cols[i].size for i in t]))))
    if plan.target is not None:
        hist = 2 * opt.score_bins
        for model in ("tstr", "trtr"):
            out += [(f"ml:{model}", hist), (f"ml:{model}:fitted", 1)]
            out += [(f"imp:{model}:{f}", hist) for f in plan.features]
        if plan.sensitive is not None:
            g = cols[plan.sensitive].size
            out.append(("bias:real", g * 2))
            out += [(f"bias:{m}", g * 2 * 2) for m in ("tstr", "trtr")]
    out.append(("match", plan.synthetic_rows))
    out += [("dcr:synthetic", DCR_BINS), ("dcr:holdout", DCR_BINS), ("mia:member", DCR_BINS),
            ("mia:non_member", DCR_BINS), ("mia:parties", 1)]
    return out


def _dp_layout(plan: EvaluationPlan) -> list[tuple[str, int]]:
    """The DP plan: only blocks to which one held-out row adds a bounded amount (see
    evaluation.dp for each block's sensitivity), and of those only the kinds with a positive
    weight in DP_WEIGHTS. Never in it, with their reason in the report: the row count
    (derived from the count blocks), TRTR and its importances and bias counts (a model of the
    party's rows), permutation importance that shuffles real rows among themselves, the
    per-synthetic-row exact-match flags, and distance histograms whose reference set is the
    party's rows (and membership inference, which needs the synthesis rows)."""
    cols = plan.columns
    out: list[tuple[str, int]] = []

    def add(kind: str, name: str, size: int) -> None:
        if DP_WEIGHTS.get(kind, 0.0) > 0:
            out.append((name, size))

    for j, c in enumerate(cols):
        add("one", f"one:{j}", c.size)
        if c.numeric:
            add("fine", f"fine:{j}", c.fine_size)
            add("mom", f"mom:{j}", 3)
    for a, b in plan.pairs:
        add("pair", f"pair:{a},{b}", cols[a].size * cols[b].size)
        if cols[a].numeric and cols[b].numeric:
            add("pear", f"pear:{a},{b}", 6)
    for t in plan.triples:
        add("tri", f"tri:{','.join(map(str, t))}", int(np.prod([cols[i].size for i in t])))
    if plan.target is not None:
        hist = 2 * DP_SCORE_BINS
        if plan.tstr_fits:
            add("ml", "ml:tstr", hist)
            for f in plan.features:
                add("imp", f"imp:tstr:{f}", hist)
        if plan.sensitive is not None:
            g = cols[plan.sensitive].size
            add("bias", "bias:real", g * 2)
            if plan.tstr_fits:
                add("bias", "bias:tstr", g * 2 * 2)
    add("match", "match:real", 1)
    add("dcr", "dcr:real_to_synthetic", DCR_BINS)
    return out


def dcr_edges() -> np.ndarray:
    """Interior edges of the distance histograms: [0] exact zero, then log-spaced to 1."""
    return np.concatenate([[1e-12], np.logspace(-4, 0, DCR_BINS - 2)])

