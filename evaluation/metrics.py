"""Utility and privacy metrics comparing a synthetic table with real ones (TVD, TSTR, matches)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from fedsynth.synthesis.datetimes import as_floats

IntArray = npt.NDArray[np.intp]
FloatArray = npt.NDArray[np.float64]

N_QUANTILE_BINS = 16
MAX_CATEGORICAL_NUMERIC = 20  # numeric columns with at most 20 distinct values are categorical
_MISSING_KEY = "\x00<missing>"


def _is_numeric(series: pd.Series) -> bool:
    return bool(pd.api.types.is_datetime64_any_dtype(series) or (
        pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)))


def _to_float(series: pd.Series) -> FloatArray:
    if pd.api.types.is_datetime64_any_dtype(series):  # dates as days since 1970
        return np.asarray(as_floats(series), dtype=np.float64)
    return np.asarray(
        pd.to_numeric(series, errors="coerce").to_numpy(dtype=float, na_value=np.nan),
        dtype=np.float64,
    )


def _norm_key(value: object) -> str:
    """Normalised string key of one non-missing value (so 1, 1.0 and np.int64(1) coincide)."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return str(int(f)) if f.is_integer() and abs(f) < 1e15 else format(f, ".9g")
    return str(value)


def _keys(series: pd.Series) -> tuple[IntArray, list[str]]:
    """Factorise a column: per-row code into the returned unique keys, -1 for missing."""
    codes, uniques = pd.factorize(series.to_numpy(dtype=object))
    return np.asarray(codes, dtype=np.intp), [_norm_key(u) for u in uniques]


def _key_array(series: pd.Series) -> npt.NDArray[np.object_]:
    codes, uniques = _keys(series)
    lookup = np.array([*uniques, _MISSING_KEY], dtype=object)
    return lookup[codes]  # code -1 picks the trailing missing marker


def _lookup(categories: Sequence[str], keys: Sequence[str] | npt.NDArray[np.object_]) -> IntArray:
    """Position of each key in ``categories`` (-1 when absent)."""
    index = pd.Index(list(categories), dtype=object)
    return np.asarray(index.get_indexer(pd.Index(keys, dtype=object)), dtype=np.intp)


@dataclass(frozen=True)
class ColumnBins:
    """Binning of one column: quantile bins (interior ``edges``) or distinct ``categories``."""

    name: str
    kind: Literal["quantile", "categorical"]
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        """Number of codes: quantile bins + missing, or categories + unseen + missing."""
        return len(self.edges) + 2 if self.kind == "quantile" else len(self.categories) + 2

    def transform(self, series: pd.Series) -> IntArray:
        if self.kind == "quantile":
            x = _to_float(series)
            edges = np.asarray(self.edges, dtype=float)
            codes = np.searchsorted(edges, x, side="right").astype(np.intp)  # clips at both ends
            codes[np.isnan(x)] = self.size - 1
            return codes
        row_codes, uniques = _keys(series)
        mapped = _lookup(self.categories, uniques)
        mapped[mapped < 0] = len(self.categories)  # unseen value
        lookup = np.append(mapped, self.size - 1)  # missing
        return np.asarray(lookup[row_codes], dtype=np.intp)


@dataclass(frozen=True)
class EvaluationBinning:
    """Discretisation of every column, learnt from a real table; used for marginal TVDs.

    Numeric columns with more than 20 distinct values get up to 16 quantile bins (deduplicated
    edges; out-of-range values clip into the end bins); all other columns are categorical over
    their real distinct values plus one "unseen" code. Missing values always get their own, last,
    code, so ``sizes`` counts it (a 16-bin numeric column has size 17).
    """

    columns: tuple[str, ...]
    sizes: tuple[int, ...]
    specs: tuple[ColumnBins, ...]

    @classmethod
    def fit(cls, real: pd.DataFrame) -> EvaluationBinning:
        specs: list[ColumnBins] = []
        for name in real.columns:
            col = real[name]
            if _is_numeric(col) and col.nunique(dropna=True) > MAX_CATEGORICAL_NUMERIC:
                x = _to_float(col)
                x = x[~np.isnan(x)]
                edges = np.unique(np.quantile(x, np.linspace(0.0, 1.0, N_QUANTILE_BINS + 1)))
                specs.append(
                    ColumnBins(str(name), "quantile", edges=tuple(float(e) for e in edges[1:-1]))
                )
            else:
                _, uniques = _keys(col)
                specs.append(
                    ColumnBins(str(name), "categorical", categories=tuple(sorted(set(uniques))))
                )
        return cls(tuple(real.columns.astype(str)), tuple(s.size for s in specs), tuple(specs))

    def transform(self, df: pd.DataFrame) -> IntArray:
        """Integer codes of shape (rows, columns); ``df`` must contain every fitted column."""
        missing = [c for c in self.columns if c not in df.columns]
        if missing:
            raise KeyError(f"columns missing from table: {missing}")
        out = np.empty((len(df), len(self.columns)), dtype=np.intp)
        for j, spec in enumerate(self.specs):
            out[:, j] = spec.transform(df[spec.name])
        return out


def _joint_index(cols: list[IntArray], dims: list[int], dense_limit: int) -> tuple[IntArray, int]:
    """Flat cell index of a column combination; compressed with np.unique if the grid is huge."""
    total = math.prod(dims)
    if total <= dense_limit:
        return np.asarray(np.ravel_multi_index(tuple(cols), tuple(dims)), dtype=np.intp), total
    idx, n = cols[0].astype(np.int64), dims[0]
    for col, d in zip(cols[1:], dims[1:], strict=True):
        idx, n = idx * d + col, n * d
        if n > dense_limit:
            uniq, inverse = np.unique(idx, return_inverse=True)
            idx, n = inverse.ravel().astype(np.int64), len(uniq)
    return idx.astype(np.intp), n


def _tvd_from_codes(
    real_codes: IntArray,
    synth_codes: IntArray,
    sizes: tuple[int, ...],
    way: int,
    max_marginals: int | None,
    seed: int,
) -> tuple[float, int]:
    n_cols, n_real, n_synth = len(sizes), len(real_codes), len(synth_codes)
    if not 1 <= way <= n_cols:
        raise ValueError(f"way must be between 1 and {n_cols}, got {way}")
    if n_real == 0 or n_synth == 0:
        raise ValueError("marginal TVD needs non-empty real and synthetic tables")
    combos = list(itertools.combinations(range(n_cols), way))
    if max_marginals is not None and len(combos) > max_marginals:
        chosen = np.random.default_rng(seed).choice(len(combos), size=max_marginals, replace=False)
        combos = [combos[i] for i in sorted(chosen.tolist())]
    both = np.ascontiguousarray(np.concatenate([real_codes, synth_codes]).T)  # (cols, rows)
    dense_limit = max(1 << 16, 2 * (n_real + n_synth))
    tvds = []
    for combo in combos:
        flat, n_cells = _joint_index(
            [both[c] for c in combo], [sizes[c] for c in combo], dense_limit
        )
        p = np.bincount(flat[:n_real], minlength=n_cells) / n_real
        q = np.bincount(flat[n_real:], minlength=n_cells) / n_synth
        tvds.append(0.5 * float(np.abs(p - q).sum()))
    return float(np.mean(tvds)), len(combos)


def marginal_tvd(
    real: pd.DataFrame,
    synth: pd.DataFrame,
    *,
    way: int,
    binning: EvaluationBinning | None = None,
    max_marginals: int | None = None,
    seed: int = 0,
) -> float:
    """Mean total-variation distance (0.5 * L1 of normalised histograms) over ``way``-way marginals.

    All column combinations of ``binning`` (fitted on ``real`` when not given) are used, unless
    ``max_marginals`` is set and there are more: then a uniformly random subset of that many
    combinations, drawn without replacement with ``numpy.random.default_rng(seed)``, is averaged.
    """
    if binning is None:
        binning = EvaluationBinning.fit(real)
    tvd, _ = _tvd_from_codes(
        binning.transform(real), binning.transform(synth), binning.sizes, way, max_marginals, seed
    )
    return tvd


def _target_labels(
    train: pd.Series, others: list[pd.Series]
) -> tuple[list[IntArray], list[str], float | None]:
    """Class index per row (-1 = unknown class) for the training target and ``others``."""
    if _is_numeric(train) and train.nunique(dropna=True) > MAX_CATEGORICAL_NUMERIC:
        median = float(np.median(_to_float(train)))
        labels = [
            np.where(np.isnan(x), -1, (x > median).astype(np.intp)).astype(np.intp)
            for x in (_to_float(s) for s in [train, *others])
        ]
        return labels, [f"<= {median:g}", f"> {median:g}"], median
    classes = sorted(set(_keys(train)[1]))
    return [_lookup(classes, _key_array(s)) for s in [train, *others]], classes, None


def _features(
    frames: list[pd.DataFrame], columns: list[str]
) -> tuple[list[FloatArray], list[bool]]:
    """Float feature matrices; categorical columns are ordinal-encoded over the union of frames."""
    mats = [np.empty((len(f), len(columns)), dtype=np.float64) for f in frames]
    categorical: list[bool] = []
    for j, name in enumerate(columns):
        cols = [f[name] if name in f.columns else pd.Series(np.nan, index=f.index) for f in frames]
        if _is_numeric(cols[0]):
            for mat, col in zip(mats, cols, strict=True):
                mat[:, j] = _to_float(col)
            categorical.append(False)
            continue
        keys = [_key_array(c) for c in cols]
        union = sorted({k for arr in keys for k in set(arr.tolist())} - {_MISSING_KEY})
        for mat, arr in zip(mats, keys, strict=True):
            codes = _lookup(union, arr).astype(np.float64)
            mat[:, j] = np.where(codes < 0, np.nan, codes)
        categorical.append(len(union) <= 255)  # native categorical support needs codes < max_bins
    return mats, categorical


def _auc(
    x_train: FloatArray,
    y_train: IntArray,
    x_test: FloatArray,
    y_test: IntArray,
    n_classes: int,
    positive: int | None,
    categorical: list[bool],
    seed: int,
) -> float | None:
    """ROC AUC on the test set, or None when the training labels have fewer than two classes."""
    present, counts = np.unique(y_train, return_counts=True)
    if len(present) < 2:
        return None
    # a feature with no value in the training rows cannot be binned by scikit-learn; as a
    # constant it is never split on, so the predictions do not depend on it
    empty = np.isnan(x_train).all(axis=0)
    if empty.any():
        x_train, x_test = x_train.copy(), x_test.copy()
        x_train[:, empty] = x_test[:, empty] = 0.0
    model = HistGradientBoostingClassifier(
        random_state=seed,
        categorical_features=np.asarray(categorical, dtype=bool) if any(categorical) else None,
        early_stopping="auto" if counts.min() >= 2 else False,
    )
    # One OpenMP thread: after jax or Ray ran in the process, sklearn's default thread pool
    # oversubscribes this kind of 2-core machine (measured: a 3-party run 100 s -> 25 s).
    with threadpool_limits(limits=1, user_api="openmp"):
        model.fit(x_train, y_train)
        pred = model.predict_proba(x_test)
    proba = np.zeros((len(x_test), n_classes))
    proba[:, model.classes_.astype(np.intp)] = pred
    if positive is not None:
        return float(roc_auc_score(y_test == positive, proba[:, positive]))
    if len(np.unique(y_test)) == n_classes:
        return float(roc_auc_score(y_test, proba, multi_class="ovr", labels=list(range(n_classes))))
    # Some classes absent from the test set: macro one-vs-rest AUC over the present ones.
    return float(np.mean([roc_auc_score(y_test == c, proba[:, c]) for c in np.unique(y_test)]))


def tstr_auc(
    train_real: pd.DataFrame,
    synth: pd.DataFrame,
    test_real: pd.DataFrame,
    *,
    target: str,
    seed: int = 0,
) -> dict[str, float | str | None]:
    """Train-on-synthetic and train-on-real ROC AUC of HistGradientBoostingClassifier on test_real.

    Binary targets use the minority class of ``train_real`` as positive class; multi-class targets
    use macro one-vs-rest AUC; numeric targets with more than 20 distinct values are binarised at
    the real training median (``value > median`` is the positive class). Rows with a missing target
    or a target class unknown to ``train_real`` are dropped. A single-class synthetic target gives
    TSTR AUC 0.5 and a "note"; if the AUC is undefined on the real data the AUCs are None.
    """
    for name, frame in (("train_real", train_real), ("synth", synth), ("test_real", test_real)):
        if target not in frame.columns:
            raise KeyError(f"target {target!r} missing from {name}")
    frames = [f[f[target].notna()] for f in (train_real, synth, test_real)]
    labels, classes, cut = _target_labels(frames[0][target], [f[target] for f in frames[1:]])
    keep = [lab >= 0 for lab in labels]
    frames = [f[k] for f, k in zip(frames, keep, strict=True)]
    labels = [lab[k] for lab, k in zip(labels, keep, strict=True)]
    result: dict[str, float | str | None] = {
        "tstr_auc": None,
        "trtr_auc": None,
        "positive_class": None,
    }
    if cut is not None:
        result["target_binarised_at"] = cut
    notes: list[str] = []
    if dropped := int((~keep[1]).sum()):
        notes.append(f"dropped {dropped} synthetic rows whose target class is not in train_real")
    counts = np.bincount(labels[0], minlength=len(classes))
    positive: int | None = None
    if len(classes) == 2:
        positive = 1 if counts[1] <= counts[0] else 0  # minority class; ties go to the second class
        result["positive_class"] = classes[positive]
    features = [str(c) for c in train_real.columns if c != target]
    if len(classes) < 2 or len(np.unique(labels[2])) < 2 or not features:
        notes.append(
            "AUC undefined: need features and two target classes in train_real and test_real"
        )
        result["note"] = "; ".join(notes)
        return result
    (x_real, x_synth, x_test), categorical = _features(frames, features)
    result["trtr_auc"] = _auc(
        x_real, labels[0], x_test, labels[2], len(classes), positive, categorical, seed
    )
    tstr = _auc(x_synth, labels[1], x_test, labels[2], len(classes), positive, categorical, seed)
    if tstr is None:
        notes.append("synthetic table has fewer than two target classes; TSTR AUC set to 0.5")
        tstr = 0.5
    result["tstr_auc"] = tstr
    if notes:
        result["note"] = "; ".join(notes)
    return result


def _sig9(x: FloatArray) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Exact (mantissa, exponent) integer keys of floats rounded to 9 significant digits.

    0 -> (0, 0); NaN, +inf and -inf get reserved exponents, so NaN equals NaN.
    """
    mantissa, exponent = np.zeros(len(x), dtype=np.int64), np.zeros(len(x), dtype=np.int64)
    exponent[np.isnan(x)], exponent[x == np.inf], exponent[x == -np.inf] = (
        10**6,
        10**6 + 1,
        -(10**6),
    )
    ok = np.isfinite(x) & (x != 0)
    xs = x[ok]
    with np.errstate(all="ignore"):
        e = np.floor(np.log10(np.abs(xs))).astype(np.int64) - 8
        for _ in range(2):  # repair off-by-one exponents so that 1e8 <= |mantissa| < 1e9
            m = np.rint(xs / 10.0 ** e.astype(np.float64))
            e = e + (np.abs(m) >= 1e9) - (np.abs(m) < 1e8)
        m = np.rint(xs / 10.0 ** e.astype(np.float64))
        mantissa[ok], exponent[ok] = np.nan_to_num(m).astype(np.int64), e
    return mantissa, exponent


def row_hashes(df: pd.DataFrame, reference: pd.DataFrame) -> npt.NDArray[np.uint64]:
    """64-bit hash of each row's normalised values over ``reference``'s columns."""
    parts: dict[str, object] = {}
    for name in reference.columns:
        if name not in df.columns:
            raise KeyError(f"column {name!r} missing from table")
        if _is_numeric(reference[name]):
            parts[f"{name}\x00m"], parts[f"{name}\x00e"] = _sig9(_to_float(df[name]))
        else:
            parts[str(name)] = _key_array(df[name])
    frame = pd.DataFrame(parts, index=pd.RangeIndex(len(df)))
    return np.asarray(pd.util.hash_pandas_object(frame, index=False).to_numpy(), dtype=np.uint64)


def exact_match_rate(real: pd.DataFrame, synth: pd.DataFrame) -> float:
    """Share of synthetic rows equal to some real row on all of ``real``'s columns (NaN equals NaN).

    Values are normalised (floats rounded to 9 significant digits, 1 == 1.0, categories as
    strings) and rows compared through 64-bit hashes (collisions are negligible), not pairwise.
    """
    if len(synth) == 0:
        return 0.0
    return float(np.isin(row_hashes(synth, real), row_hashes(real, real)).mean())

