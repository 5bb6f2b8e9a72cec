"""Dates and times of a `datetime` column: parsing, public bounds, and their numeric units.

A datetime column is public as its bounds and resolution (a day; a minute when the values hold
times of day and none has seconds, as "2022-09-08 19:31" or "2022-09-08 19:31:00" do; a second
otherwise). Internally its bounds are days since 1970-01-01 (floats, so every non-categorical
column has numeric bounds the same way), its values are encoded as whole units of its
resolution, and a validated table holds them as `datetime64[ns]` (written to CSV as YYYY-MM-DD
for a day's resolution, YYYY-MM-DD HH:MM for a minute's, YYYY-MM-DD HH:MM:SS for a second's).
Only ISO 8601 text is read as dates: other layouts are ambiguous (is 03/01/2015 March or
January?), and plain numbers are never dates.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

RESOLUTIONS: tuple[str, ...] = ("day", "minute", "second")
DAY_NS = 86_400 * 10**9
UNIT_NS = {"day": DAY_NS, "minute": 60 * 10**9, "second": 10**9}
# how a table file writes a column of each resolution
LAYOUT = {"day": "%Y-%m-%d", "minute": "%Y-%m-%d %H:%M", "second": "%Y-%m-%d %H:%M:%S"}
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}"
                      r"([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$")
# Dates in a local layout (03/01/2015, 1.3.15): never read as dates, never made public either
LOCAL_DATE = re.compile(r"^\d{1,2}[/.-]\d{1,2}[/.-](\d{4}|\d{2})([T ]\d{1,2}:\d{2}.*)?$")


def parse(s: pd.Series) -> pd.Series:
    """`datetime64[ns]` values (UTC when the text gives a zone), NaT where a value is missing
    or is not an ISO date (numbers included)."""
    if pd.api.types.is_datetime64_any_dtype(s):
        out = pd.Series(s)
    else:
        text = s.astype(object).map(lambda v: v if isinstance(v, str) and ISO_DATE.match(
            v.strip()) else (v if isinstance(v, (pd.Timestamp, np.datetime64)) else None))
        text = text.map(lambda v: v.strip() if isinstance(v, str) else v)
        try:
            out = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
        except (ValueError, TypeError, OverflowError):
            out = pd.to_datetime(text.map(_one), errors="coerce", utc=True)
    if isinstance(out.dtype, pd.DatetimeTZDtype):
        out = out.dt.tz_convert("UTC").dt.tz_localize(None)
    return out.astype("datetime64[ns]").reset_index(drop=True).set_axis(s.index)


def _one(v: object) -> object:
    try:
        return pd.Timestamp(v)  # type: ignore[arg-type]
    except (ValueError, TypeError, OverflowError):
        return None


def iso_dates(values: pd.Series) -> pd.Series | None:
    """The parsed values if every one (no missing ones given) is an ISO date, else None."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return parse(values)
    if not all(isinstance(v, str) and ISO_DATE.match(v.strip()) for v in values):
        return None
    parsed = parse(values)
    return None if parsed.isna().any() else parsed


def zoned(values: pd.Series) -> bool:
    """Some value is written with a time zone (a trailing Z or an offset such as +02:00)."""
    return any(isinstance(v, str) and _ZONE.search(v.strip()) is not None
               for v in pd.unique(values))


_ZONE = re.compile(r"\d(Z|[+-]\d{2}:?\d{2})$")


def placeholder(v: object) -> bool:
    """An ISO date no datetime column can hold (before 1678 or after 2261): the placeholders
    exports write for an open end ("9999-12-31") or an unknown start ("0001-01-01")."""
    if not isinstance(v, str) or not ISO_DATE.match(v.strip()):
        return False
    year = int(v.strip()[:4])
    return year < 1678 or year > 2261


def local_dates(values: pd.Series) -> bool:
    """Every value is a date written in a local layout (day and month as numbers)."""
    return all(isinstance(v, str) and LOCAL_DATE.match(v.strip()) for v in values)


def has_time(parsed: pd.Series, text: pd.Series | None = None) -> bool:
    """Whether the values hold times of day: one that is not midnight, or (given the `text`
    they were parsed from) one written with a time, as "2015-03-01 00:00:00" is."""
    ok = parsed.dropna()
    if bool((ok != ok.dt.normalize()).any()):
        return True
    return text is not None and any(isinstance(v, str) and _TIME.search(v) for v in text)


def time_resolution(parsed: pd.Series) -> str:
    """The resolution of values that hold times of day: a minute when no value has seconds
    (or fractions of one), else a second."""
    ok = parsed.dropna()
    return "minute" if bool((ok == ok.dt.floor("min")).all()) else "second"


_TIME = re.compile(r"\d[T ]\d{2}:\d{2}")
LAYOUTS = "datetime_layouts"  # a frame's attrs: {datetime column: strftime layout}


def with_layout(df: pd.DataFrame, columns: Iterable[Any]) -> pd.DataFrame:
    """`df` marked so that each datetime column with times of day (a minute's or a second's
    resolution) is written in its resolution's layout, also where every value is at midnight
    (synthesis.table_file reads the mark): a table of such a column keeps one layout whatever
    rows it holds, and a minute's column is never written with seconds."""
    df.attrs[LAYOUTS] = {c.name: LAYOUT[c.resolution] for c in columns
                         if c.kind == "datetime" and c.resolution in ("minute", "second")}
    return df


def to_days(t: pd.Timestamp) -> float:
    return (t - pd.Timestamp(0)) / pd.Timedelta(days=1)


def from_days(days: float) -> pd.Timestamp:
    return pd.Timestamp(0) + pd.Timedelta(round(days * DAY_NS), unit="ns")


def bound_units(lower: float, upper: float, resolution: str) -> tuple[int, int]:
    """The bounds as whole units of the resolution since 1970 (inner whole units)."""
    per_day = DAY_NS // UNIT_NS[resolution]
    lo, hi = lower * per_day, upper * per_day
    return int(np.ceil(round(lo, 6))), int(np.floor(round(hi, 6)))


def units(parsed: pd.Series, resolution: str) -> np.ndarray:
    """Whole units since 1970 as floats (NaN where missing); a time inside a unit is dropped."""
    ns = parsed.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    out = np.floor_divide(ns, UNIT_NS[resolution]).astype(float)
    out[parsed.isna().to_numpy()] = np.nan
    return out


def from_units(u: np.ndarray, resolution: str) -> np.ndarray:
    """`datetime64[ns]` for whole units since 1970."""
    return (u.astype(np.int64) * UNIT_NS[resolution]).astype("datetime64[ns]")


def iso(days: float, resolution: str) -> str:
    t = from_days(days)
    return t.strftime(LAYOUT[resolution].replace(" ", "T"))


def parse_bound(v: object) -> float:
    """A bound from a schema: an ISO date or date-time string, as days since 1970."""
    if not isinstance(v, str) or not ISO_DATE.match(v.strip()):
        raise ValueError(f"{v!r} is not an ISO date such as '2015-01-31' or "
                         "'2015-01-31T08:00:00'")
    t = pd.Timestamp(v.strip())
    if t.tzinfo is not None:
        t = t.tz_convert("UTC").tz_localize(None)
    return to_days(t)


def coarse_bounds(parsed: pd.Series, resolution: str) -> tuple[float, float]:
    """Drafted bounds: the start of the earliest value's month and the end of the latest's
    (its last day, minute or second), so that no row's exact date becomes public."""
    lo = parsed.min().to_period("M").start_time
    hi = parsed.max().to_period("M").end_time
    hi = hi.floor(pd.Timedelta(UNIT_NS[resolution], unit="ns"))
    return to_days(lo), to_days(hi)


def as_floats(s: pd.Series) -> np.ndarray:
    """The numbers of any non-categorical column: dates as (fractional) days since 1970."""
    if pd.api.types.is_datetime64_any_dtype(s):
        ns = s.to_numpy(dtype="datetime64[ns]").astype(np.int64).astype(float)
        ns[s.isna().to_numpy()] = np.nan
        return ns / DAY_NS
    return s.to_numpy(dtype=float, na_value=np.nan)
