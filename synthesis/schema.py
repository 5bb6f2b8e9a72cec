"""The public schema of a job: columns, their types and public domains, and data validation.

The schema is public metadata every party agrees on before a job: category lists, lists of
numeric values (discrete columns), numeric bounds, and date bounds with a resolution (datetime
columns; see synthesis.datetimes). It never comes from another party's raw data.
`draft_schema_with_notes` drafts one from a party's own file for that party to review
(`fedsynth schema infer FILE`), with notes on what to check; simulations draft it from the
pooled file as a documented convenience. A draft leaves out columns whose values it must not
make public (identifiers): the schema lists them under "ignored_columns", and tables holding
them still validate (those columns are not read).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from fedsynth.errors import InputError
from fedsynth.synthesis import datetimes
from fedsynth.synthesis.datetimes import RESOLUTIONS

Kind = Literal["categorical", "integer", "continuous", "discrete", "datetime"]
KINDS: tuple[str, ...] = ("categorical", "integer", "continuous", "discrete", "datetime")
SCALES: tuple[str, ...] = ("linear", "log")
# the fine domain of a numeric column (synthesis.encoding): integers one code per value when
# the range holds at most this many, else this many bins between the bounds
FINE_BINS = 256
# a log-scale column's range in units of its smallest resolution (synthesis.encoding)
LOG_UNITS = 2.0**20
# a binned column is drafted on the log scale when log-spaced fine bins split the middle
# HEAVY_MIDDLE of its rows into at least HEAVY_GAIN times as many bins as equal-width ones
HEAVY_MIDDLE, HEAVY_GAIN = 0.9, 1.5
MAX_CATEGORIES = 100
OTHER = "__other__"
IGNORED = "ignored_columns"  # schema key: columns a table may hold that the job does not read
# Drafting (see draft_schema_with_notes): a column with at least this many distinct values, more
# than half as many as its rows, is taken for an identifier; in a category list longer than
# MAX_CATEGORIES a value held by fewer rows than MIN_CATEGORY_ROWS is not made public.
MIN_IDENTIFIER_VALUES = 20
MIN_CATEGORY_ROWS = 3
# Text that spreadsheets, databases and R write for a missing value. Read as text; missing in
# a numeric, date or boolean column, a value where a category list names it ("NA").
MISSING_TOKENS = frozenset({
    "NA", "N/A", "n/a", "na", "NaN", "nan", "NAN", "NULL", "null", "Null", "None", "none",
    "?", "-", "--", ".", "#N/A", "<NA>", "missing", "Missing", "MISSING", "\\N"})
# A drafted continuous column whose values all have at most this many decimals is rounded to
# them when decoded (more: every digit kept)
MAX_DRAFT_DECIMALS = 6
MAX_DECIMALS = 12
# A numeric column with at most this many distinct values, each held by MIN_CATEGORY_ROWS rows
# or more, is drafted "discrete" (its values listed) when they are not whole numbers, or when
# they are whole but fill under half of their range ({36, 60}, {3, 7, 19, 250}): decoded inside
# bins or over the whole range, such columns came out with thousands of (or 18 impossible)
# values. 64 holds the real cases seen (7-34 values) with room, and is twice the values the
# model keeps per numeric column (32 groups), past which a list gains little over bins.
MAX_DISCRETE_VALUES = 64
# A binned integer or continuous column lists as `points` the values (other than its lower
# bound) held by at least POINT_SHARE of its rows and MIN_POINT_ROWS rows, at most MAX_POINTS
# of them, the most held first: round amounts, typical wages, top-coded maxima. Each has its
# own exact code, so the synthetic column repeats them as the real one does instead of
# smearing them over their bin (measured on a wage column whose 40 such values hold 47% of the
# rows: its 1-way TVD on 16 quantile bins was 0.027 even without noise). A point held by fewer
# rows than the one-way noise can tell from zero (about 50-120 rows at ε=1 for 5-15 columns)
# only adds a noisy code: with 3 rows as the minimum, small real tables (418-1,319 rows) drew
# 8-32 points a column and their 2-way TVD rose by 0.015-0.017 (single runs at ε=1).
POINT_SHARE, MIN_POINT_ROWS, MAX_POINTS = 0.005, 100, 32


class SchemaError(InputError):
    """A schema document that is malformed; lists every problem found."""

    def __init__(self, problems: list[str], *, source: str = "schema") -> None:
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))


class DataValidationError(InputError):
    """A table that does not match the schema; lists every problem found, with the fix."""

    def __init__(self, problems: list[str], *, source: str,
                 kinds: list[str] | None = None) -> None:
        self.problems = problems
        self.source = source
        # the same problems by column and kind only (no counts, values, lines or the names of
        # columns outside the schema): what a party may tell a coordinator
        self.kinds = kinds if kinds is not None else ["the data does not match the schema"]
        super().__init__(f"{source}: {len(problems)} problem(s) with the data:\n  - "
                         + "\n  - ".join(problems))


@dataclass(frozen=True)
class Column:
    """One column: its kind and public domain.

    categorical: `categories`. integer, continuous: `lower`, `upper`, and `scale` ("linear",
    or "log" for heavy tails: fine bins even in log(1 + x - lower)). discrete: `values`, the
    sorted numbers it can take (whole numbers as ints, so the output keeps an integer type;
    `lower`/`upper` are set to their ends). datetime: `lower`, `upper` in days since 1970
    (ISO text in the schema's JSON) and `resolution`, "day", "minute" or "second".
    """

    name: str
    kind: Kind
    categories: tuple[str, ...] = ()
    lower: float | None = None
    upper: float | None = None
    nullable: bool = False
    values: tuple[int | float, ...] = ()
    resolution: str | None = None
    # binned integer and continuous columns: "log" spaces the fine bins evenly in
    # log(1 + x - lower) instead of x (heavy-tailed amounts; synthesis.encoding)
    scale: str = "linear"
    # binned integer and continuous columns: values held by many rows, each decoded exactly
    points: tuple[int | float, ...] = ()
    # continuous columns: digits after the decimal point synthetic values are rounded to
    # (amounts in cents: 2); None keeps every digit
    decimals: int | None = None

    def __post_init__(self) -> None:
        for attr in ("values", "points"):  # numpy scalars as Python numbers
            if isinstance(getattr(self, attr), (list, tuple)):
                object.__setattr__(self, attr, tuple(
                    v.item() if isinstance(v, (np.integer, np.floating)) else v
                    for v in getattr(self, attr)))
        if self.points and not _value_problems(self.points, "points"):
            object.__setattr__(self, "points", tuple(sorted(self.points)))
        if self.kind == "discrete" and not _value_problems(self.values):
            vals = tuple(sorted(self.values))
            object.__setattr__(self, "values", vals)
            object.__setattr__(self, "lower", float(vals[0]))
            object.__setattr__(self, "upper", float(vals[-1]))

    @property
    def integral(self) -> bool:
        """Values are whole numbers (integer, datetime, and discrete columns of ints)."""
        return self.kind in ("integer", "datetime") or (
            self.kind == "discrete" and all(isinstance(v, int) for v in self.values))

    def problems(self) -> list[str]:
        out: list[str] = []
        if self.scale not in SCALES or (self.scale != "linear"
                                        and self.kind not in ("integer", "continuous")):
            out.append(f"column {self.name!r}: scale {self.scale!r} must be one of {SCALES}, "
                       "and other than linear only for integer and continuous columns")
        if self.kind not in KINDS:
            out.append(f"column {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        elif self.kind == "categorical":
            if not self.categories:
                out.append(f"column {self.name!r}: a categorical column needs a category list")
            if len(set(self.categories)) != len(self.categories):
                out.append(f"column {self.name!r}: categories are listed twice")
        elif self.kind == "discrete":
            out += [f"column {self.name!r}: {p}" for p in _value_problems(self.values)]
        else:
            lo, hi = self.lower, self.upper
            if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
                out.append(f"column {self.name!r}: a {self.kind} column needs finite lower and "
                           "upper bounds")
            elif lo > hi:
                out.append(f"column {self.name!r}: lower bound {self._shown(lo)} is above upper "
                           f"bound {self._shown(hi)}")
            elif self.kind == "integer" and math.ceil(lo) > math.floor(hi):
                out.append(f"column {self.name!r}: no whole number lies between its bounds "
                           f"{lo} and {hi}")
            if self.kind == "datetime":
                out += self._datetime_problems()
        if self.points:
            out += self._point_problems()
        if self.decimals is not None and (
                self.kind != "continuous" or isinstance(self.decimals, bool)
                or not isinstance(self.decimals, int) or not 0 <= self.decimals <= MAX_DECIMALS):
            out.append(f"column {self.name!r}: 'decimals' must be a whole number from 0 to "
                       f"{MAX_DECIMALS}, for a continuous column (got {self.decimals!r})")
        return out

    def _point_problems(self) -> list[str]:
        if self.kind not in ("integer", "continuous"):
            return [f"column {self.name!r}: 'points' are for integer and continuous columns"]
        bad = _value_problems(self.points, "points")
        lo, hi = self.lower, self.upper
        if not bad and lo is not None and hi is not None:
            out = [v for v in self.points if not lo < v <= hi]
            if out:
                bad.append(f"'points' must lie above the lower bound {lo} and at most at the "
                           f"upper bound {hi}; not {', '.join(repr(v) for v in out[:3])}")
            if self.kind == "integer" and any(float(v) != int(v) for v in self.points):
                bad.append("'points' of an integer column must be whole numbers")
        return [f"column {self.name!r}: {p}" for p in bad]

    def _datetime_problems(self) -> list[str]:
        if self.resolution not in RESOLUTIONS:
            return [f"column {self.name!r}: a datetime column needs a resolution, one of "
                    f"{RESOLUTIONS} (got {self.resolution!r})"]
        lo, hi = self.lower, self.upper
        if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            return []  # said above
        if not -1e6 < lo <= hi < 1e6:
            return [f"column {self.name!r}: datetime bounds must lie between the years 1678 "
                    "and 2261"]
        per = datetimes.DAY_NS // datetimes.UNIT_NS[self.resolution]
        off = [v for v in (lo, hi) if abs(v * per - round(v * per)) > 1e-3]
        if off:  # the job would use the inner whole units, and write those back as the bounds
            return [f"column {self.name!r}: bound {datetimes.iso(v, 'second')!r} is not a whole "
                    f"{self.resolution}; write it to the {self.resolution} (e.g. "
                    f"{datetimes.iso(v, self.resolution)!r}) or use a finer resolution"
                    for v in off]
        return []

    def _shown(self, v: float) -> str:
        if self.kind == "datetime" and self.resolution in RESOLUTIONS and abs(v) < 1e6:
            return repr(datetimes.iso(v, self.resolution or "second"))
        return str(v)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind, "nullable": self.nullable}
        if self.kind == "categorical":
            d["categories"] = list(self.categories)
        elif self.kind == "discrete":
            d["values"] = list(self.values)
        elif self.kind == "datetime":
            res = self.resolution if self.resolution in RESOLUTIONS else "second"
            d["lower"], d["upper"] = (None if v is None else datetimes.iso(v, res)
                                      for v in (self.lower, self.upper))
            d["resolution"] = self.resolution
        else:
            d["lower"], d["upper"] = self.lower, self.upper
        if self.scale != "linear":  # absent when linear: older schemas keep their hash
            d["scale"] = self.scale
        if self.points:  # likewise absent when empty
            d["points"] = list(self.points)
        if self.decimals is not None:  # likewise absent when not set
            d["decimals"] = self.decimals
        return d


def _value_problems(values: object, key: str = "values") -> list[str]:
    """What is wrong with a discrete column's value list or a column's points (empty, not
    numbers, repeated)."""
    if not isinstance(values, (list, tuple)) or not values:
        return ["a discrete column needs a non-empty list of its 'values'"]
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float))
           or not math.isfinite(v)]
    if bad:
        return [f"{key!r} must be finite numbers; not {', '.join(repr(v) for v in bad[:3])}"]
    if len({float(v) for v in values}) != len(values):
        return [f"{key!r} lists a number twice"]
    return []


@dataclass(frozen=True)
class Schema:
    """An ordered, validated set of columns."""

    columns: tuple[Column, ...]
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        problems = [p for c in self.columns for p in c.problems()]
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            problems.append("column names must be unique")
        if not self.columns:
            problems.append("the schema has no columns")
        problems += _ignored_problems(self.meta.get(IGNORED, []), names)
        if problems:
            raise SchemaError(problems)

    @property
    def ignored(self) -> list[str]:
        """Columns a table may hold that the job does not read (declared in the schema)."""
        return [str(c) for c in self.meta.get(IGNORED, [])]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def __getitem__(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"no column {name!r} in the schema (columns: {', '.join(self.names)})")

    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, "columns": [c.to_dict() for c in self.columns], **self.meta}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def sha256(self) -> str:
        """The hash a party's policy pins: the columns and their public domains, canonically
        (numbers as the wire carries them, floats)."""
        canonical = Schema.from_dict(self.to_dict())
        columns = json.dumps(canonical.to_dict()["columns"], sort_keys=True,
                             separators=(",", ":"))
        return hashlib.sha256(columns.encode()).hexdigest()

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "schema") -> Schema:
        problems: list[str] = []
        cols: list[Column] = []
        raw_cols = d.get("columns") if isinstance(d, dict) else None
        if not isinstance(raw_cols, list):
            raise SchemaError(["expected an object with a 'columns' list"], source=source)
        for i, c in enumerate(raw_cols):
            if not isinstance(c, dict) or "name" not in c or "kind" not in c:
                problems.append(f"column #{i}: needs at least 'name' and 'kind'")
                continue
            if "categories" in c and not isinstance(c["categories"], list):
                problems.append(f"column {c['name']!r}: 'categories' must be a list of values")
                continue
            if not isinstance(c.get("nullable", False), bool):
                problems.append(f"column {c['name']!r}: 'nullable' must be true or false")
                continue
            listed = [k for k in ("values", "points") if k in c and not isinstance(c[k], list)]
            if listed:
                problems.append(f"column {c['name']!r}: {listed[0]!r} must be a list of numbers")
                continue
            bound = datetimes.parse_bound if c["kind"] == "datetime" else float
            try:
                cols.append(Column(
                    name=str(c["name"]), kind=c["kind"],
                    categories=tuple(str(x) for x in c.get("categories", ())),
                    lower=None if c.get("lower") is None else bound(c["lower"]),
                    upper=None if c.get("upper") is None else bound(c["upper"]),
                    nullable=bool(c.get("nullable", False)),
                    values=tuple(c.get("values", ())),
                    resolution=None if c.get("resolution") is None else str(c["resolution"]),
                    scale=str(c.get("scale", "linear")),
                    points=tuple(c.get("points", ())), decimals=c.get("decimals")))
            except (TypeError, ValueError) as exc:
                problems.append(f"column #{i} ({c.get('name')!r}): {exc}")
        if problems:
            raise SchemaError(problems, source=source)
        try:
            return cls(tuple(cols), meta={k: v for k, v in d.items()
                                          if k not in ("columns", "version")})
        except SchemaError as exc:
            raise SchemaError(exc.problems, source=source) from None

    @classmethod
    def from_json(cls, text: str, *, source: str = "schema") -> Schema:
        try:
            return cls.from_dict(json.loads(text), source=source)
        except json.JSONDecodeError as exc:
            raise SchemaError([f"not valid JSON: {exc}"], source=source) from None

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        return cls.from_json(Path(path).read_text(), source=str(path))


def draft_schema_with_notes(df: pd.DataFrame, *, max_categories: int = MAX_CATEGORIES,
                            min_rows: int = MIN_CATEGORY_ROWS) -> tuple[Schema, list[str]]:
    """Draft a schema from a table, with review notes for its owner (one line each).

    The notes say where the draft guessed or left something out (a column of mostly numbers
    with some text, an identifier, a long category list cut short, a column with no values),
    naming the column and what was seen. They quote the table's own values and counts, so
    they are for the owner's eyes: print them, never put them in the schema, which is public.
    Columns left out are listed in the schema's "ignored_columns", so the same table (and
    each party's table with those columns) still validates against the draft. `min_rows`: the
    rows a category must hold to be listed (a schema for one's own eyes only, such as a local
    evaluation's, may take 1).
    """
    if df.shape[1] == 0:
        raise SchemaError(["the table has no columns: there is nothing to draft"],
                          source="schema draft")
    if len(df) == 0:
        raise SchemaError(["the table has no rows: a schema is drafted from values, and there "
                           "are none"], source="schema draft")
    cols: list[Column] = []
    notes: list[str] = []
    ignored: list[str] = []
    for name in df.columns:
        col, note = _draft_column(str(name), df[name], max_categories, min_rows)
        notes += [note] if note else []
        if col is None:
            ignored.append(str(name))
        else:
            cols.append(col)
    if not cols:
        raise SchemaError(["every column was left out of the draft, so nothing is left to "
                           "synthesise: declare the columns you need in a schema", *notes],
                          source="schema draft")
    return Schema(tuple(cols), meta={IGNORED: ignored} if ignored else {}), notes


def infer_schema(df: pd.DataFrame, *, max_categories: int = MAX_CATEGORIES,
                 min_rows: int = MIN_CATEGORY_ROWS) -> Schema:
    """Draft a schema from a table, for its owner to review before any job (without the
    review notes: see `draft_schema_with_notes`, which a person-facing caller should use).

    Widen bounds and add categories you know to exist before sharing the schema: it is public.
    """
    return draft_schema_with_notes(df, max_categories=max_categories, min_rows=min_rows)[0]


def _draft_column(name: str, s: pd.Series, max_categories: int, min_rows: int
                  ) -> tuple[Column | None, str | None]:
    """One column's draft and its review note: each decision is a function of its own."""
    values, tokens, what = _without_missing_tokens(s.dropna())
    nullable = len(values) < len(s)
    col, note = _draft_values(name, s, values, nullable, max_categories, min_rows)
    if tokens and col is not None:
        shown = ", ".join(repr(t) for t in tokens)
        note = "; ".join(filter(None, [note, f"column {name!r}: {shown} read as missing, as "
                                       f"{what}"]))
    return col, note


def _without_missing_tokens(values: pd.Series) -> tuple[pd.Series, list[str], str]:
    """Text values without the tokens that mean missing (MISSING_TOKENS) when every other
    value is a number (then as numbers), an ISO date or a boolean, or there is none; else as
    they are. Also the tokens taken out, and what the other values are."""
    if (len(values) == 0 or pd.api.types.is_numeric_dtype(values)
            or pd.api.types.is_bool_dtype(values)
            or pd.api.types.is_datetime64_any_dtype(values)):
        return values, [], ""
    labels = list(pd.unique(values))
    tokens = sorted(v for v in labels if isinstance(v, str) and v.strip() in MISSING_TOKENS)
    dates = [v for v in labels if isinstance(v, str) and datetimes.ISO_DATE.match(v.strip())]
    if dates and len(dates) + len(tokens) == len(labels):  # dates: placeholders are missing
        tokens = sorted([*tokens, *(v for v in dates if datetimes.placeholder(v))])
    if not tokens:
        return values, [], ""
    rest = values[~values.isin(tokens)]
    others = [v for v in labels if v not in tokens]
    if not others:
        return rest, tokens, "the column has no other values"
    numbers = pd.to_numeric(pd.Series(others, dtype=object), errors="coerce")
    if numbers.notna().all():
        return pd.to_numeric(rest), tokens, "its other values are numbers"
    if all(isinstance(v, str) and datetimes.ISO_DATE.match(v.strip()) for v in others):
        return rest, tokens, ("its other values are dates (dates before 1678 or after 2261 "
                              "are placeholders for an open or unknown end)")
    if all(isinstance(v, bool) or str(v).strip().lower() in ("true", "false") for v in others):
        return rest, tokens, "its other values are true or false"
    return values, [], ""


def _declared_missing(col: Column, s: pd.Series) -> pd.Series:
    """A column read as text with its missing tokens as missing values, as its schema says:
    in numeric, date and discrete columns always; in a categorical column unless the
    category list names the token ("NA" for North America stays a value); in a datetime
    column also placeholder dates ("9999-12-31", `datetimes.placeholder`)."""
    if s.dtype != object:
        return s
    labels = [v for v in pd.unique(s.dropna()) if isinstance(v, str)
              and (v.strip() in MISSING_TOKENS or (col.kind == "datetime"
                                                   and datetimes.placeholder(v)))
              and v not in col.categories]
    return s.mask(s.isin(labels)) if labels else s


def _draft_values(name: str, s: pd.Series, values: pd.Series, nullable: bool,
                  max_categories: int, min_rows: int) -> tuple[Column | None, str | None]:
    """The draft of a column's non-missing `values` (`s`: the whole column)."""
    if len(values) == 0:
        return _all_missing(name)
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        dates = datetimes.iso_dates(values)
        if dates is not None:
            dated, note = _datetime(name, dates, nullable)
            if datetimes.zoned(values):
                note += ("; times with a zone (Z, +02:00) are read as UTC and written back in "
                         "UTC without the zone")
            return dated, note
        if not pd.api.types.is_datetime64_any_dtype(values) and datetimes.local_dates(values):
            return None, (f"column {name!r}: dates, but not written as YYYY-MM-DD: left out, "
                          "so none of them becomes public. Write them as YYYY-MM-DD (or "
                          "YYYY-MM-DD HH:MM:SS) to have them synthesised as dates")
        if values.nunique() > MAX_DISCRETE_VALUES and _decimal_commas(values):
            return None, (f"column {name!r}: numbers with a decimal comma (such as "
                          f"{str(values.iloc[0])!r}) in a comma-separated file: left out, as "
                          "text they would be categories. Write them with a decimal point, or "
                          "save the file with ';' between fields")
        if values.nunique() > MAX_DISCRETE_VALUES and _formatted_numbers(values):
            return None, (f"column {name!r}: numbers written with thousands separators, a "
                          "currency sign or a percent sign (such as "
                          f"{str(values.iloc[0])!r}): left out, as text they would be "
                          "categories. Write them as plain numbers (1234.56) to have them "
                          "synthesised")
        return _categorical(name, values, nullable, max_categories, _mixed(values), min_rows)
    arr = values.to_numpy(dtype=float)
    if not np.isfinite(arr).all():
        infinite = np.zeros(len(s), dtype=bool)
        infinite[s.index.get_indexer(values.index[~np.isfinite(arr)])] = True
        return None, (f"column {name!r}: infinite values in {describe_rows(infinite)}: left "
                      "out, as a numeric column needs finite bounds. Replace them (by a "
                      "bound, or by nothing for missing), or drop the column")
    if pd.api.types.is_integer_dtype(values) and np.abs(arr).max() >= 2.0**53:
        big, why = _categorical(name, values.astype(str), nullable, max_categories, None,
                                min_rows)
        return big, "; ".join(filter(None, [f"column {name!r}: whole numbers beyond 2^53, "
                                            "which a float cannot hold exactly: drafted as "
                                            "text", why]))
    return _numeric(name, values, nullable)


def _datetime(name: str, parsed: pd.Series, nullable: bool) -> tuple[Column, str]:
    """Dates: a datetime column whose public bounds are the months of the earliest and latest
    dates, never a row's own date; times of day give a resolution of a minute, or of a second
    when some value has seconds."""
    resolution = datetimes.time_resolution(parsed) if datetimes.has_time(parsed) else "day"
    lo, hi = datetimes.coarse_bounds(parsed, resolution)
    col = Column(name, "datetime", lower=lo, upper=hi, nullable=nullable, resolution=resolution)
    return col, (f"column {name!r}: dates (resolution: a {resolution}), drafted with bounds "
                 f"{datetimes.iso(lo, resolution)} to {datetimes.iso(hi, resolution)}: the "
                 "months of the earliest and latest dates, so that no row's own date becomes "
                 "public; widen them to the period you know to be public")


def _all_missing(name: str) -> tuple[Column, str]:
    """A column with no value at all is valid data (a field nobody filled in): it is kept, so
    the table validates and the synthetic table has the column too, as a nullable continuous
    column with bounds [0, 0]. A kind and domain cannot be learnt from no values, and [0, 0]
    invents none: a synthetic value that noise makes non-missing can only be 0."""
    return (Column(name, "continuous", lower=0.0, upper=0.0, nullable=True),
            f"column {name!r}: every value is missing: drafted as continuous with bounds "
            "[0, 0]; declare its kind and domain in a schema if it can hold values, or drop it")


_FORMATTED = re.compile(r"^\(?[-+]?[$€£¥]?[-+]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?%?\)?-?$")


def _decimal_commas(values: pd.Series) -> bool:
    """Every value is a number with a decimal comma ("10,5"), some not with three digits
    after it (which would read as thousands)."""
    labels = [str(v).strip() for v in pd.unique(values)]
    return (all(re.match(r"^[-+]?\d+(,\d+)?$", v) for v in labels)
            and any(re.match(r"^[-+]?\d+,(\d{1,2}|\d{4,})$", v) for v in labels))


def _formatted_numbers(values: pd.Series) -> bool:
    """Every value is a number written for people ("3,080,781", "$1,234.56", "12%"), and
    some need that reading (a plain "1234" alone is not formatted)."""
    labels = [str(v).strip() for v in pd.unique(values)]
    return (all(_FORMATTED.match(v) for v in labels)
            and any(("," in v or v[:1] in "$€£¥(" or v.endswith(("%", "-"))) for v in labels))


def _mixed(values: pd.Series) -> str | None:
    """Why a text column may be a numeric one (most of its values are numbers), or None.

    Mostly: more than half. Below that a few number-like labels ("1st", "10") in a category
    column are ordinary, and the reviewer would only be told what the draft already shows."""
    codes, labels = category_codes(values)  # once per distinct value, not per row
    number = pd.to_numeric(pd.Series(labels, dtype=object), errors="coerce").notna().to_numpy()
    bad = int((~number[codes]).sum())
    if bad == 0 or bad * 2 >= len(values):
        return None
    texts = labels[~number]  # in the order of their first row; a text's string is itself
    shown = ", ".join(repr(str(v)) for v in texts[:3])
    return (f"mostly numbers, but {bad:,} of {len(values):,} values are not "
            f"({shown}{', ...' if len(texts) > 3 else ''})")


def _categorical(name: str, values: pd.Series, nullable: bool, max_categories: int,
                 mixed: str | None, min_rows: int) -> tuple[Column | None, str | None]:
    """Text, booleans and pandas categoricals: a category list, unless that list would make
    an identifier's values public (then the column is left out)."""
    codes, labels = category_codes(values)
    # value_counts' order: most rows first, ties in the order of their first row
    counts = pd.Series(np.bincount(codes, minlength=len(labels)), index=pd.Index(
        labels, dtype=object)).sort_values(ascending=False)
    distinct, rows = len(counts), len(values)
    if _identifier_like(distinct, rows):
        return None, _identifier_note(name, distinct, rows, mixed)
    cats = _public_categories(counts, max_categories, min_rows)
    if not cats:
        return None, (f"column {name!r}: {distinct:,} distinct values, none held by "
                      f"{min_rows} rows or more: left out, so none of its values "
                      "becomes public. Drop it, or declare it in a schema")
    col = Column(name, "categorical", tuple(sorted(cats)), nullable=nullable)
    rare = [str(v) for v in counts.index if str(v) not in cats]
    return col, _categorical_note(name, col, distinct, mixed, rare, min_rows)


def _identifier_like(distinct: int, rows: int) -> bool:
    """More distinct values than half the rows: most values name one or two rows (an id, a
    name, free text), so as categories they would put real rows' values into the public
    schema and the synthetic table. Short lists (fewer than MIN_IDENTIFIER_VALUES values) are
    left to the reviewer, who sees them whole in the draft."""
    return distinct >= MIN_IDENTIFIER_VALUES and distinct * 2 > rows


def _public_categories(counts: pd.Series, max_categories: int, min_rows: int) -> list[str]:
    """The values that become public categories (most frequent first).

    Only values held by `min_rows` (MIN_CATEGORY_ROWS) rows or more; in a list longer than
    `max_categories` at least MIN_CATEGORY_ROWS, and at most `max_categories - 1` of them. The
    rest fold into "__other__". A rare value is close to naming the row that holds it (one
    row's "RARE_SECRET" in a public schema says some party holds it), and the synthesizer
    could not learn it under noise anyway; the review note names the folded values to the
    owner, who may list them if they are public. Empty: nothing frequent.
    """
    long = len(counts) > max_categories
    least = max(min_rows, MIN_CATEGORY_ROWS) if long else min_rows
    frequent = [str(v) for v, k in counts.items() if k >= least and v != OTHER]
    if not long and len(frequent) == len(counts):
        return frequent
    return [*frequent[: max_categories - 1], OTHER] if frequent else []


def _identifier_note(name: str, distinct: int, rows: int, mixed: str | None) -> str:
    if mixed:
        return (f"column {name!r}: {mixed}; as text it has {distinct:,} distinct values in "
                f"{rows:,} rows, too many to make public: left out. Clean those values, or "
                "declare it numeric in a schema")
    return (f"column {name!r}: {distinct:,} distinct values in {rows:,} rows: looks like an "
            "identifier or free text; left out, so none of its values becomes public. Drop "
            "it, or declare it in a schema")


def _categorical_note(name: str, col: Column, distinct: int, mixed: str | None,
                      rare: list[str], min_rows: int) -> str | None:
    kept = len(col.categories) - (OTHER in col.categories)
    folded = (f"{distinct:,} distinct values: the {kept} most frequent (each held by at least "
              f"{min_rows} rows) are categories, the other {distinct - kept:,} fold "
              f"into {OTHER!r}") if OTHER in col.categories and distinct > kept else None
    if folded and rare:
        shown = ", ".join(repr(v) for v in rare[:5])
        folded += f" ({shown}{', ...' if len(rare) > 5 else ''})"
    if mixed:
        return (f"column {name!r}: {mixed}: drafted as categorical with {kept} categories"
                f"{f' ({folded})' if folded else ''}; clean those values, or declare it "
                "numeric")
    if folded:
        return f"column {name!r}: {folded}; add the categories you know to be public"
    return None


def _numeric(name: str, values: pd.Series, nullable: bool) -> tuple[Column | None, str | None]:
    """Numbers: integer if every value is whole, else continuous; the observed minimum and
    maximum are the bounds. A whole-number column that counts rows is left out. A column of
    few values is discrete (see MAX_DISCRETE_VALUES), if each is held by enough rows."""
    arr = values.to_numpy(dtype=float)
    whole = pd.api.types.is_integer_dtype(values) or bool(np.all(np.mod(arr, 1) == 0))
    # one sort for every decision below (three took 4.4 s of drafting 10M rows)
    vals, counts = np.unique(arr, return_counts=True)
    unique = whole and len(arr) >= MIN_IDENTIFIER_VALUES and len(vals) == len(arr)
    if unique and _sequence_like(arr):
        return None, (f"column {name!r}: {len(arr):,} distinct whole numbers in {len(arr):,} "
                      "rows, close together: looks like a row number or identifier; left out. "
                      "Drop it, or declare it in a schema")
    kind: Kind = "integer" if whole else "continuous"
    discrete, note = _discrete(name, vals, counts, whole, nullable, kind)
    if discrete is not None:
        return discrete, None
    lo, hi = float(arr.min()), float(arr.max())
    binned = kind == "continuous" or hi - lo + 1 > FINE_BINS  # else one exact code per value
    heavy = binned and hi > lo and _log_resolves_better(vals, counts, lo, hi)
    col = Column(name, kind, lower=lo, upper=hi, nullable=nullable,
                 scale="log" if heavy else "linear",
                 points=_points(vals, counts, lo) if binned else (),
                 decimals=_decimals(vals, counts) if kind == "continuous" else None)
    if col.points:
        note = "; ".join(filter(None, [note, (
            f"column {name!r}: {len(col.points)} value(s) held by at least {POINT_SHARE:.1%} of "
            f"rows and {MIN_POINT_ROWS} rows are listed as public 'points' and kept exact; "
            "remove any that must not be public")]))
    if heavy:
        note = "; ".join(filter(None, [note, (
            f"column {name!r}: heavy-tailed (log-spaced bins split its middle "
            f"{HEAVY_MIDDLE:.0%} of rows at least {HEAVY_GAIN:g} times as finely as equal-width "
            "ones): binned on a log scale (scale = \"log\")")]))
    if unique:
        note = (f"column {name!r}: every value is distinct ({len(arr):,} whole numbers): drafted "
                "as integer; if it is an identifier, drop it")
    return col, note


def _decimals(vals: np.ndarray, counts: np.ndarray) -> int | None:
    """The fewest digits after the decimal point (at most MAX_DRAFT_DECIMALS) that write the
    values of all but fewer than MIN_CATEGORY_ROWS rows (as their shortest text does: 0.1 has
    one); else None. Measurements keep the precision they were recorded with: a synthetic
    amount of 48.48296104983316 where every real one has cents is a value the column does not
    take. A precision that one or two rows alone would set is not made public (a row's value
    with more digits only rounds, like any other)."""
    for d in range(1, MAX_DRAFT_DECIMALS + 1):
        if int(counts[np.round(vals, d) != vals].sum()) < MIN_CATEGORY_ROWS:
            return d
    return None


def _log_resolves_better(vals: np.ndarray, counts: np.ndarray, lo: float, hi: float) -> bool:
    """Whether log-spaced fine bins split the middle HEAVY_MIDDLE of the values into at least
    HEAVY_GAIN times as many bins as equal-width ones. Amounts and durations with a long tail
    (wages: 16 equal-width bins against 52 log ones on AER/CPS1988) go to log; ages, dates
    and other spread-out values stay linear. Measured on AER/CPS1988 (paired seeded noise,
    wage on log instead of linear): 2-way TVD 0.0244 -> 0.0235 at ε=1, 0.0160 -> 0.0141 at ε=3.
    """
    tail = (1 - HEAVY_MIDDLE) / 2
    cum = np.cumsum(counts)  # the sorted distinct values and their counts: quantiles by count
    at = np.searchsorted(cum, [tail * cum[-1], (1 - tail) * cum[-1]])
    a, b = (float(vals[min(int(i), len(vals) - 1)]) for i in at)

    def log_pos(x: float) -> float:
        return float(np.log1p((x - lo) / (hi - lo) * LOG_UNITS))

    linear = (b - a) / (hi - lo)
    log = (log_pos(b) - log_pos(a)) / float(np.log1p(LOG_UNITS))
    return log > 0 and log >= HEAVY_GAIN * linear


def _discrete(name: str, vals: np.ndarray, counts: np.ndarray, whole: bool, nullable: bool,
              kind: str) -> tuple[Column | None, str | None]:
    """A discrete column for few values (not whole, or whole but sparse in their range), or
    None and why not. As in a long category list, a value held by fewer than
    MIN_CATEGORY_ROWS rows is not made public: a column with such a value strictly between its
    smallest and largest stays binned between its bounds. The smallest and largest values are
    public either way, as the bounds every numeric draft takes (a loan term of 72 months held
    by one row is the upper bound of the integer draft too). `vals` and `counts` are the
    column's distinct values and their rows (np.unique)."""
    if len(vals) > MAX_DISCRETE_VALUES:
        return None, None
    if whole and len(vals) * 2 >= vals[-1] - vals[0] + 1:
        return None, None  # dense whole numbers: the integer kind's exact codes already fit
    rare = int((counts[1:-1] < MIN_CATEGORY_ROWS).sum())
    if rare:
        return None, (f"column {name!r}: {len(vals)} distinct values, {rare} of them held by "
                      f"fewer than {MIN_CATEGORY_ROWS} rows: drafted as {kind} between its "
                      "bounds rather than as a list that would make those values public; if "
                      "its values are public, declare it discrete with their list")
    listed = tuple(int(v) for v in vals) if whole else tuple(float(v) for v in vals)
    return Column(name, "discrete", values=listed, nullable=nullable), None


def _points(vals: np.ndarray, counts: np.ndarray, lower: float) -> tuple[float, ...]:
    """The values of a binned column held by many rows (see POINT_SHARE): public as a
    category held by that many rows would be."""
    held = (counts >= max(MIN_POINT_ROWS, POINT_SHARE * int(counts.sum()))) & (vals != lower)
    top = np.argsort(-counts[held], kind="stable")[:MAX_POINTS]
    whole = bool(np.all(np.mod(vals, 1) == 0))
    return tuple(int(v) if whole else float(v) for v in sorted(vals[held][top]))


def _sequence_like(arr: np.ndarray) -> bool:
    """Distinct whole numbers within a range under twice their count: numbers handed out one
    per row (row numbers, sequential ids, with gaps where rows were removed). A measure (an
    amount, an age, a duration) taking n values in a range that narrow would repeat some of
    them: about n / 4 repeats are expected even if it were spread evenly over the range."""
    return float(arr.max() - arr.min()) + 1 < 2 * len(arr)


def _ignored_problems(ignored: object, names: list[str]) -> list[str]:
    if not isinstance(ignored, (list, tuple)) or not all(isinstance(c, str) for c in ignored):
        return [f"{IGNORED!r} must be a list of column names"]
    both = [c for c in ignored if c in names]
    return [f"{IGNORED!r} lists column(s) {both} that the schema also declares: keep them in "
            "one place only"] if both else []


def describe_rows(mask: np.ndarray, first_row: int = 0) -> str:
    """How many rows a problem has and where, as a person finds them in the file (`mask`
    covers the rows from `first_row` on, for a file read in chunks)."""
    idx = np.flatnonzero(mask) + first_row
    shown = ", ".join(str(i + 2) for i in idx[:5])  # +2: header line and 1-based rows
    more = f" and {len(idx) - 5} more" if len(idx) > 5 else ""
    return f"{len(idx)} row(s) (file lines {shown}{more})"


def _unlisted(name: str, rows: np.ndarray, vals: list[str], show_values: bool,
              fold_unknown: bool, what: str, listing: str, first_row: int = 0) -> str:
    """The problem line for rows holding `what` (categories, values) outside the column's
    public `listing`, with the values only when they may be shown."""
    shown = f" (values {vals})" if show_values else ""
    fix = f"add them to its {listing}" if fold_unknown else (
        f"a table made with this schema holds only its listed {what}: check that it is the "
        f"schema of the job that made the table, or add them to its {listing}")
    return (f"column {name!r}: {describe_rows(rows, first_row)} hold {what} not in the "
            f"schema's {listing}{shown}; {fix}")


def validate_frame(df: pd.DataFrame, schema: Schema, *, source: str,
                   show_values: bool = True, fold_unknown: bool = True,
                   first_row: int = 0, chunk: bool = False) -> pd.DataFrame:
    """Check a table against the schema and return it with typed columns in schema order.

    Every problem is reported at once: missing or extra columns, empty table, values of the
    wrong type, outside the declared domain, or missing where the column is not nullable.
    Columns the schema lists as ignored may be present and are dropped unread. With
    `show_values=False` the offending values are left out (for reports that leave a party).
    Categories the schema does not list fold into "__other__" when it has one: real rows may
    hold rare values the public list left out. `fold_unknown=False` refuses them instead, for
    a table that can only hold listed values (a synthetic table made with this schema).
    A `chunk` of a table read in parts starts at row `first_row` (for the file lines named)
    and may be empty: the caller checks that the whole table has rows. Numeric columns
    already of the right type are not copied: the result may share memory with `df`.
    """
    problems: list[str] = []
    kinds: list[str] = []

    def kind(column: str | None, what: str) -> None:
        kinds.append(what if column is None else f"column {column!r}: {what}")

    df = df.rename(columns=str)  # schemas name columns by string, as CSV headers do
    missing = [n for n in schema.names if n not in df.columns]
    extra = [str(c) for c in df.columns if c not in schema.names and c not in schema.ignored]
    if missing:
        problems.append(f"missing column(s) {missing}: add them, or remove them from the schema")
        for m in missing:
            kind(m, "missing from the data")
    if extra:
        problems.append(f"column(s) {extra} are not in the schema: drop them or add them to it")
        kind(None, "the data has columns that are not in the schema")
    if len(df) == 0 and not chunk:
        problems.append("the table has no rows: a party needs at least one row to take part")
        kind(None, "the table has no rows")
    out: dict[str, pd.Series] = {}
    for col in schema.columns:
        if col.name not in df.columns:
            continue
        s = _declared_missing(col, df[col.name])
        na = s.isna().to_numpy()
        if na.any() and not col.nullable:
            problems.append(f"column {col.name!r}: missing values in "
                            f"{describe_rows(na, first_row)}; fill them, or declare the column "
                            "nullable in the schema")
            kind(col.name, "missing values in a column the schema declares not nullable")
        if col.kind == "categorical":
            codes, labels = category_codes(s)
            allowed = set(col.categories)
            listed = np.fromiter((lab in allowed for lab in labels), dtype=bool,
                                 count=len(labels))
            bad = (codes >= 0) & ~np.append(listed, True)[codes]
            if OTHER in allowed and fold_unknown:
                labels = np.where(listed, labels, OTHER)
            elif bad.any():
                vals = sorted({str(v) for v in labels[~listed]})[:5]
                problems.append(_unlisted(col.name, bad, vals, show_values, fold_unknown,
                                          "categories", "category list", first_row))
                kind(col.name, "categories that are not in the schema")
            out[col.name] = pd.Series(_with_none(labels)[codes], index=s.index)
        elif col.kind == "datetime":
            out[col.name] = _check_dates(col, s, na, show_values, problems, kind,
                                          first_row)
        else:
            num = pd.to_numeric(s, errors="coerce")
            bad_type = (~na) & num.isna().to_numpy()
            if bad_type.any():
                vals = [str(v) for v in s[bad_type].unique()[:5]]
                shown = f" (values {vals})" if show_values else ""
                problems.append(f"column {col.name!r}: {describe_rows(bad_type, first_row)} "
                                f"are not numbers{shown}; the schema declares it {col.kind}")
                kind(col.name, f"values that are not numbers (declared {col.kind})")
            arr = num.to_numpy(dtype=float)
            assert col.lower is not None and col.upper is not None  # checked by Schema
            with np.errstate(invalid="ignore"):
                out_of = (~np.isnan(arr)) & ((arr < col.lower) | (arr > col.upper))
            if col.kind == "discrete":
                unlisted = (~np.isnan(arr)) & ~np.isin(arr, np.asarray(col.values, dtype=float))
                if unlisted.any():
                    vals = [_cat_str(v.item()) for v in np.unique(arr[unlisted])[:5]]
                    problems.append(_unlisted(col.name, unlisted, vals, show_values,
                                              fold_unknown, "values", "value list", first_row))
                    kind(col.name, "values that are not in the schema's value list")
            elif out_of.any():
                vals = [repr(float(v)) for v in np.unique(arr[out_of])[:5]]
                shown = f" (values {vals})" if show_values else ""
                problems.append(f"column {col.name!r}: {describe_rows(out_of, first_row)} lie "
                                f"outside the declared bounds [{col.lower}, {col.upper}]{shown}; "
                                "widen the bounds in the schema or clip the data")
                kind(col.name, "values outside the declared bounds")
            if col.kind == "integer":
                with np.errstate(invalid="ignore"):
                    frac = (~np.isnan(arr)) & (np.mod(arr, 1) != 0)
                if frac.any():
                    problems.append(f"column {col.name!r}: {describe_rows(frac, first_row)} are "
                                    "not whole numbers; declare it continuous or round the data")
                    kind(col.name, "values that are not whole numbers (declared integer)")
            out[col.name] = num
    if problems:
        raise DataValidationError(problems, source=source, kinds=kinds)
    # the columns as they are, without a copy into 2-D blocks (reset_index and consolidation
    # copied 10M rows twice: 4 s)
    return pd.DataFrame({k: v.array for k, v in out.items()}, index=pd.RangeIndex(len(df)),
                        columns=list(out), copy=False)


def _check_dates(col: Column, s: pd.Series, na: np.ndarray, show_values: bool,
                 problems: list[str], kind: Any, first_row: int = 0) -> pd.Series:
    """A datetime column's values as `datetime64[ns]`; text that is not an ISO date, and dates
    outside the bounds, are problems."""
    parsed = datetimes.parse(s)
    bad = (~na) & parsed.isna().to_numpy()
    if bad.any():
        vals = [str(v) for v in s[bad].unique()[:5]]
        shown = f" (values {vals})" if show_values else ""
        problems.append(f"column {col.name!r}: {describe_rows(bad, first_row)} are not dates "
                        f"written as YYYY-MM-DD or YYYY-MM-DD HH:MM:SS{shown}; the schema "
                        "declares it datetime")
        kind(col.name, "values that are not dates (declared datetime)")
    assert col.lower is not None and col.upper is not None and col.resolution  # by Schema
    lo, hi = datetimes.bound_units(col.lower, col.upper, col.resolution)
    u = datetimes.units(parsed, col.resolution)
    with np.errstate(invalid="ignore"):
        out_of = (~np.isnan(u)) & ((u < lo) | (u > hi))
    if out_of.any():
        vals = sorted({str(v) for v in parsed[out_of].unique()})[:5]
        shown = f" (values {vals})" if show_values else ""
        problems.append(f"column {col.name!r}: {describe_rows(out_of, first_row)} lie outside "
                        f"the declared bounds [{datetimes.iso(col.lower, col.resolution)}, "
                        f"{datetimes.iso(col.upper, col.resolution)}]{shown}; widen the bounds "
                        "in the schema or leave those rows out")
        kind(col.name, "values outside the declared bounds")
    return parsed


def _cat_str(v: object) -> str:
    """Categories are compared as strings; whole floats from CSV ('1.0') match integer labels."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    return str(v)


def category_codes(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A column's values as category strings (`_cat_str`), computed once per distinct value.

    Returns `codes` (int64, -1 where missing) and `labels` (distinct strings, in the order of
    their first row) with `labels[codes[i]] == _cat_str(s[i])`. Per row in Python this took
    8 s for 10M rows; here it is one hash pass. pandas hashes 1, 1.0 and True as one value
    in an object column, while their strings differ ("1", "1", "True"): rows whose distinct
    value is not a string get their string row by row (a rare, mixed column)."""
    codes, uniques = pd.factorize(s, use_na_sentinel=True)  # numbered by first row
    codes = np.asarray(codes, dtype=np.int64)
    uniq = np.asarray(uniques, dtype=object)
    strings = np.array([_cat_str(u) for u in uniq], dtype=object)
    loose = np.zeros(len(uniq), dtype=bool)
    if s.dtype == object:
        loose = np.fromiter((not isinstance(u, str) for u in uniq), dtype=bool, count=len(uniq))
    if loose.any():
        rows = np.flatnonzero((codes >= 0) & np.append(loose, False)[codes])
        values = s.to_numpy(dtype=object)[rows]
        extra = np.array([_cat_str(v) for v in values], dtype=object)
        codes[rows] = len(strings) + np.arange(len(rows))
        strings = np.concatenate([strings, extra])
    dense, labels = pd.factorize(strings)  # one code per distinct string
    dense = np.asarray(dense, dtype=np.int64)
    mapped = np.append(dense, -1)[codes]  # code -1 (missing) stays -1
    if loose.any():  # first rows, row by row
        kept = np.flatnonzero(mapped >= 0)
        seen, at = np.unique(mapped[kept], return_index=True)
        first = np.full(len(labels), len(mapped), dtype=np.int64)
        first[seen] = kept[at]
    else:  # distinct values are numbered by first row: a string's first is its first value's
        first = np.full(len(labels), len(strings), dtype=np.int64)
        np.minimum.at(first, dense, np.arange(len(dense)))
    order = np.argsort(first, kind="stable")
    rank = np.append(np.argsort(order), -1)
    return rank[mapped], np.asarray(labels, dtype=object)[order]


def category_strings(s: pd.Series) -> np.ndarray:
    """`_cat_str` of every value (None where missing), as an object array."""
    codes, labels = category_codes(s)
    return _with_none(labels)[codes]


def _with_none(labels: np.ndarray) -> np.ndarray:
    """`labels` and None after them, as an object array: code -1 picks None."""
    out = np.empty(len(labels) + 1, dtype=object)
    out[:-1] = labels
    return out
