"""Conditions and class ratios for drawing rows from a saved model, as weights on fine codes.

A condition on a column (`student=Yes`, `balance=100..500`, `income=` for missing) keeps, of
each fine code, the share of the values decoding that code would draw that satisfy it: 1 or 0
for a category, a listed value, a whole number or a date with a code of its own; for a bin of a
numeric column the share of the bin inside the range (its whole numbers, or its length), as
decoding draws uniformly inside a bin. The model then weights each of its groups by the share
of the group's decoding mass kept (`group_share`), which is the model's own conditional
distribution, and decodes inside the range. Ranges are inclusive at both ends, in the column's
units (dates as ISO text); either end may be left out. A date without a time of day, given to a
column of seconds, is that whole day (ts=2016-01-02 keeps its 86,400 seconds).

A class ratio (`default=Yes:0.5`) names values of one column whose codes the model keeps apart
(categorical and discrete columns) and the share of rows each should get.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedsynth.errors import InputError
from fedsynth.synthesis import datetimes
from fedsynth.synthesis.encoding import ColumnCodec, Encoding, Grouping, on_grid

RANGE = ".."
Conditions = Mapping[str, object] | Sequence[str]
ClassRatio = Mapping[str, Mapping[object, float]] | Sequence[str]


class ConditionError(InputError):
    """A condition or class ratio that is malformed or impossible under the model."""


@dataclass(frozen=True)
class Keep:
    """What the conditions on one column keep: per fine code, the share of its decoded values
    they allow; and, for a range, the interval (codec units) that decoding stays in."""

    said: str  # the conditions as given, for messages
    share: np.ndarray
    interval: tuple[float, float] | None = None


def parse_conditions(encoding: Encoding, conditions: Conditions | None) -> dict[int, Keep]:
    """Column position -> what its conditions keep (several conditions on a column: all hold)."""
    if not conditions:
        return {}
    items = (list(conditions.items()) if isinstance(conditions, Mapping)
             else [_split(encoding, str(text)) for text in conditions])
    names = encoding.schema.names
    out: dict[int, Keep] = {}
    for name, value in items:
        if name not in names:
            raise ConditionError(f"condition on {name!r}: no such column (columns: "
                                 f"{', '.join(names)})")
        j = names.index(name)
        keep = _keep(encoding.codecs[j], value)
        if j in out:
            old = out[j]
            lo = [iv for iv in (old.interval, keep.interval) if iv is not None]
            interval = (max(a for a, _ in lo), min(b for _, b in lo)) if lo else None
            keep = Keep(f"{old.said} and {keep.said}", old.share * keep.share, interval)
        if not (keep.share > 0).any():
            raise ConditionError(f"condition {keep.said}: no value of column {name!r} "
                                 "satisfies it")
        out[j] = keep
    return out


def parse_class_ratio(encoding: Encoding, groupings: Sequence[Grouping],
                      ratio: ClassRatio | None) -> tuple[int, dict[int, float]] | None:
    """(column position, model group -> requested share of rows), or None when not asked."""
    if not ratio:
        return None
    items: list[tuple[str, object, float]] = []
    if isinstance(ratio, Mapping):
        for col, given in ratio.items():
            items += [(col, v, float(s)) for v, s in dict(given).items()]
    else:
        for text in ratio:
            col, rest = _split(encoding, str(text))
            value, sep, share_text = rest.rpartition(":")
            try:
                items.append((col, value, float(share_text)))
            except ValueError:
                raise ConditionError(f"class ratio {text!r}: write COLUMN=VALUE:SHARE, e.g. "
                                     "default=Yes:0.5") from None
            if not sep:
                raise ConditionError(f"class ratio {text!r}: write COLUMN=VALUE:SHARE, e.g. "
                                     "default=Yes:0.5")
    names = encoding.schema.names
    columns = {name for name, _, _ in items}
    if len(columns) != 1:
        raise ConditionError(f"class ratio: give shares of one column's values (got "
                             f"{', '.join(sorted(map(repr, columns)))})")
    name = items[0][0]
    if name not in names:
        raise ConditionError(f"class ratio on {name!r}: no such column (columns: "
                             f"{', '.join(names)})")
    j = names.index(name)
    codec, grp = encoding.codecs[j], groupings[j]
    if codec.edges is not None or codec.column.kind == "continuous":
        raise ConditionError(f"class ratio on {name!r}: give a categorical or discrete column "
                             f"({name!r} is {codec.column.kind} with ranges of values)")
    shares: dict[int, float] = {}
    for _, wanted, share in items:
        keep = _keep(codec, wanted, "class ratio")
        codes = np.flatnonzero(keep.share > 0)
        group = int(grp.index[codes[0]])
        if len(codes) != 1 or keep.share[codes[0]] != 1 or (grp.index == group).sum() != 1:
            raise ConditionError(f"class ratio {keep.said}: the model does not keep this value "
                                 "apart from others; give a value of a categorical or discrete "
                                 "column")
        if not (0 < share < 1) or not math.isfinite(share):
            raise ConditionError(f"class ratio {keep.said}: share {share} must be between 0 "
                                 "and 1, e.g. 0.5")
        if group in shares:
            raise ConditionError(f"class ratio {keep.said}: value given twice")
        shares[group] = share
    if sum(shares.values()) > 1 + 1e-9:
        raise ConditionError(f"class ratio on {name!r}: the shares add up to "
                             f"{sum(shares.values()):g}, more than 1")
    return j, shares


def class_weights(name: str, p: np.ndarray, shares: Mapping[int, float]) -> np.ndarray:
    """Weights per group that turn the marginal `p` into one where each group in `shares` has
    its share and the other groups keep their relative proportions."""
    given = np.zeros(len(p), dtype=bool)
    given[list(shares)] = True
    for g in shares:
        if p[g] <= 0:
            raise ConditionError(f"class ratio on {name!r}: a requested value has zero "
                                 "probability under the model (with the conditions given)")
    rest, rest_share = float(p[~given].sum()), 1.0 - sum(shares.values())
    if rest_share > 1e-12 and rest <= 0:
        raise ConditionError(f"class ratio on {name!r}: the other values have zero probability "
                             "under the model; give shares that add up to 1")
    q = np.where(given, 0.0, p * (rest_share / rest if rest > 0 else 0.0))
    for g, s in shares.items():
        q[g] = s
    return np.divide(q, p, out=np.zeros_like(q), where=p > 0)


def group_share(weights: np.ndarray, grouping: Grouping, share: np.ndarray) -> np.ndarray:
    """Per model group, the share of its decoding mass that a condition keeps."""
    kept = np.bincount(grouping.index, weights=weights * share, minlength=grouping.size)
    whole = np.bincount(grouping.index, weights=weights, minlength=grouping.size)
    return np.divide(kept, whole, out=np.zeros(grouping.size), where=whole > 0)


def redraw_in_range(codec: ColumnCodec, fine: np.ndarray, interval: tuple[float, float],
                    rng: np.random.Generator) -> np.ndarray:
    """Values (codec units) drawn uniformly inside both their bin and the interval, for fine
    codes of a binned column (not its lower-bound code)."""
    assert codec.edges is not None
    b = fine - 1
    lo, hi = codec.edges[b], codec.edges[b + 1]
    a, z = interval
    if codec.column.integral:
        first, last = codec.bin_integers(b)
        first, last = np.maximum(first, np.ceil(a)), np.minimum(last, np.floor(z))
        return first + np.floor(rng.random(len(b)) * (last - first + 1))
    last_bin = b == len(codec.edges) - 2
    closed = last_bin | (z < hi)
    open_low = (b == 0) & (a <= lo)
    lo, hi = np.maximum(lo, a), np.minimum(hi, z)
    u = rng.random(len(b))
    if codec.column.decimals is not None:  # on the column's grid, where it meets the range
        return np.clip(on_grid(lo, hi, u, codec.column.decimals, open_low=open_low,
                               closed_high=closed, lowest=float(codec.edges[0])), lo, hi)
    return np.clip(lo + u * (hi - lo), lo, hi)


def _split(encoding: Encoding, text: str) -> tuple[str, str]:
    """COLUMN=VALUE, the column being the longest prefix before an `=` that names one."""
    names = set(encoding.schema.names)
    cuts = [i for i, ch in enumerate(text) if ch == "="]
    for i in reversed(cuts):
        if text[:i] in names:
            return text[:i], text[i + 1:]
    if not cuts:
        raise ConditionError(f"{text!r}: write COLUMN=VALUE (e.g. student=Yes), "
                             "COLUMN=LOW..HIGH for a range, or COLUMN= for missing values")
    return text[:cuts[0]], text[cuts[0] + 1:]


def _keep(codec: ColumnCodec, value: object, what: str = "condition") -> Keep:
    col = codec.column
    said = f"{col.name}={_shown(value)}"
    try:
        return _kept(codec, value, said)
    except ConditionError as exc:
        raise ConditionError(f"{what} {exc}") from None


def _kept(codec: ColumnCodec, value: object, said: str) -> Keep:
    col = codec.column
    share = np.zeros(codec.size)
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        if codec.missing_code is None:
            raise ConditionError(f"{said}: column {col.name!r} has no missing values "
                                 "(the schema says it is not nullable)")
        share[codec.missing_code] = 1.0
        return Keep(said, share)
    if col.kind == "categorical":
        if str(value) not in col.categories:
            listed = ", ".join(col.categories[:10]) + (", ..." if len(col.categories) > 10
                                                       else "")
            raise ConditionError(f"{said}: {value!r} is not a category of column "
                                 f"{col.name!r} ({listed})")
        share[col.categories.index(str(value))] = 1.0
        return Keep(said, share)
    lo, hi = _interval(codec, value, said)
    if lo > hi:
        raise ConditionError(f"{said}: the range is empty (its low end is above its "
                             "high end)")
    share[:codec.value_codes] = _shares(codec, lo, hi)
    if not (share > 0).any():
        low, high = codec.bounds
        if col.kind == "discrete":
            raise ConditionError(f"{said}: no value of column {col.name!r} lies there (its "
                                 f"values are {_support(codec)})")
        if hi < low or lo > high:
            raise ConditionError(f"{said}: outside column {col.name!r}'s values "
                                 f"({_unit_text(codec, low)} to {_unit_text(codec, high)})")
        if lo == hi and not col.integral:
            raise ConditionError(f"{said}: column {col.name!r} is continuous, so one number has "
                                 f"no probability; give a range such as {col.name}=LOW..HIGH")
        raise ConditionError(f"{said}: no whole number of column {col.name!r} lies there")
    return Keep(said, share, (lo, hi) if codec.edges is not None else None)


def _interval(codec: ColumnCodec, value: object, said: str) -> tuple[float, float]:
    """The condition as an inclusive interval in the codec's units."""
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ConditionError(f"{said}: a range is a pair (low, high)")
        ends: list[object] = list(value)
    elif isinstance(value, str) and RANGE in value:
        ends = [e.strip() or None for e in value.split(RANGE, 1)]
    else:
        v = _number(codec, value, said)
        lo, hi = _on_grid(codec, v, v + _rest_of_day(codec, value))
        if lo > hi:
            col = codec.column
            raise ConditionError(f"{said}: column {col.name!r} holds whole {col.resolution}s "
                                 f"and {value!r} is not one; give it to the {col.resolution}, "
                                 f"or a range such as {col.name}=LOW..HIGH")
        return lo, hi
    lo = -math.inf if ends[0] is None else _number(codec, ends[0], said)
    hi = math.inf if ends[1] is None else _number(codec, ends[1], said) + _rest_of_day(
        codec, ends[1])
    return _on_grid(codec, lo, hi)


def _on_grid(codec: ColumnCodec, lo: float, hi: float) -> tuple[float, float]:
    """A datetime interval's ends moved inward to whole units of the column's resolution (a
    low end of 10:30:45 on a column of minutes is 10:31, so no drawn value lies before it)."""
    if codec.column.kind != "datetime":
        return lo, hi
    return (math.ceil(lo) if math.isfinite(lo) else lo,
            math.floor(hi) if math.isfinite(hi) else hi)


def _rest_of_day(codec: ColumnCodec, value: object) -> float:
    """Units from a day's start to its last unit, for a date without a time of day given to a
    column of minutes or seconds (2016-01-02 there means the whole day); else 0."""
    col = codec.column
    if (col.kind != "datetime" or col.resolution not in ("minute", "second")
            or not isinstance(value, str)
            or datetimes.has_time(pd.Series([], dtype="datetime64[ns]"), pd.Series([value]))):
        return 0.0
    return float(datetimes.DAY_NS // datetimes.UNIT_NS[col.resolution] - 1)


def _number(codec: ColumnCodec, value: object, said: str) -> float:
    col = codec.column
    if col.kind == "datetime":
        assert col.resolution is not None
        parsed = datetimes.parse(pd.Series([value], dtype=object))
        if parsed.isna().all():
            raise ConditionError(f"{said}: {value!r} is not an ISO date such as "
                                 "2015-01-31 (or 2015-01-31T08:00:00)")
        # exact (fractional) units: _on_grid rounds each end inward
        ns = int(parsed.to_numpy(dtype="datetime64[ns]").astype(np.int64)[0])
        return ns / datetimes.UNIT_NS[col.resolution]
    try:
        v = float(str(value).strip()) if isinstance(value, str) else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConditionError(f"{said}: {value!r} is not a number (column "
                             f"{col.name!r} is {col.kind})") from None
    if not math.isfinite(v):
        raise ConditionError(f"{said}: give a finite number")
    return v


def _shares(codec: ColumnCodec, lo: float, hi: float) -> np.ndarray:
    """Per value code, the share of its decoded values inside [lo, hi]."""
    col = codec.column
    n = codec.value_codes
    if col.kind == "discrete":
        vals = np.asarray(col.values, dtype=float)
        return ((vals >= lo) & (vals <= hi)).astype(float)
    if codec.edges is None:
        vals = np.arange(n, dtype=float) + codec.bounds[0]
        return ((vals >= lo) & (vals <= hi)).astype(float)
    out = np.zeros(n)
    out[0] = float(lo <= codec.edges[0] <= hi)
    pts = np.asarray(col.points, dtype=float)
    if len(pts):
        out[codec.point_codes] = ((pts >= lo) & (pts <= hi)).astype(float)
    nb = len(codec.edges) - 1
    b = np.arange(nb)
    if col.integral:
        first, last = codec.bin_integers(b)
        inside = np.clip(np.minimum(last, np.floor(hi)) - np.maximum(first, np.ceil(lo)) + 1,
                         0, None)
        out[1:nb + 1] = inside / (last - first + 1)
    else:
        a, z = codec.edges[b], codec.edges[b + 1]
        width = z - a
        inside = np.clip(np.minimum(z, hi) - np.maximum(a, lo), 0, None)
        out[1:nb + 1] = np.divide(inside, width, out=np.zeros(len(b)), where=width > 0)
    return out


def _support(codec: ColumnCodec) -> str:
    vals = [str(v) for v in codec.column.values]
    return ", ".join(vals[:10]) + (", ..." if len(vals) > 10 else "")


def _unit_text(codec: ColumnCodec, v: float) -> str:
    col = codec.column
    if col.kind == "datetime":
        assert col.resolution is not None
        return pd.Timestamp(datetimes.from_units(np.array([v]), col.resolution)[0]).strftime(
            datetimes.LAYOUT[col.resolution])
    return f"{v:g}"


def _shown(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple) and len(value) == 2:
        return f"{'' if value[0] is None else value[0]}{RANGE}" \
               f"{'' if value[1] is None else value[1]}"
    return str(value)
