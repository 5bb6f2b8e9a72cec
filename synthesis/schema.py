"""The public schema of a job: columns, their types and public domains, and data validation.

The schema is public metadata every party agrees on before a job: category lists and numeric
bounds. It never comes from another party's raw data. `infer_schema` drafts one from a party's
own file for that party to review (`fedsynth schema infer FILE`); simulations draft it from the
pooled file as a documented convenience.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

Kind = Literal["categorical", "integer", "continuous"]
KINDS: tuple[str, ...] = ("categorical", "integer", "continuous")
MAX_CATEGORIES = 100
OTHER = "__other__"


class SchemaError(ValueError):
    """A schema document that is malformed; lists every problem found."""

    def __init__(self, problems: list[str], *, source: str = "schema") -> None:
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))


class DataValidationError(ValueError):
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
    """One column: its kind and public domain (categories, or numeric bounds)."""

    name: str
    kind: Kind
    categories: tuple[str, ...] = ()
    lower: float | None = None
    upper: float | None = None
    nullable: bool = False

    def problems(self) -> list[str]:
        out: list[str] = []
        if self.kind not in KINDS:
            out.append(f"column {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        elif self.kind == "categorical":
            if not self.categories:
                out.append(f"column {self.name!r}: a categorical column needs a category list")
            if len(set(self.categories)) != len(self.categories):
                out.append(f"column {self.name!r}: categories are listed twice")
        else:
            lo, hi = self.lower, self.upper
            if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
                out.append(f"column {self.name!r}: a numeric column needs finite lower and upper "
                           "bounds")
            elif lo > hi:
                out.append(f"column {self.name!r}: lower bound {lo} is above upper bound {hi}")
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind, "nullable": self.nullable}
        if self.kind == "categorical":
            d["categories"] = list(self.categories)
        else:
            d["lower"], d["upper"] = self.lower, self.upper
        return d


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
        if problems:
            raise SchemaError(problems)

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
            try:
                cols.append(Column(
                    name=str(c["name"]), kind=c["kind"],
                    categories=tuple(str(x) for x in c.get("categories", ())),
                    lower=None if c.get("lower") is None else float(c["lower"]),
                    upper=None if c.get("upper") is None else float(c["upper"]),
                    nullable=bool(c.get("nullable", False))))
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


def infer_schema(df: pd.DataFrame, *, max_categories: int = MAX_CATEGORIES) -> Schema:
    """Draft a schema from a table, for its owner to review before any job.

    Strings, booleans and pandas categoricals become categorical (the most frequent
    `max_categories - 1` values kept, the rest folded into "__other__"); integer columns become
    integer, floats continuous, with the observed minimum and maximum as bounds. Widen bounds
    and add categories you know to exist before sharing the schema: it is public.
    """
    cols: list[Column] = []
    for name in df.columns:
        s = df[name]
        nullable = bool(s.isna().any())
        if pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s):
            counts = s.dropna().astype(str).value_counts()
            cats = list(counts.index)
            if len(cats) > max_categories:
                cats = [*cats[: max_categories - 1], OTHER]
            cols.append(Column(str(name), "categorical", tuple(sorted(cats)), nullable=nullable))
        else:
            vals = s.dropna()
            lo = float(vals.min()) if len(vals) else 0.0
            hi = float(vals.max()) if len(vals) else 1.0
            is_int = pd.api.types.is_integer_dtype(s) or bool(
                len(vals) and np.all(np.mod(vals.to_numpy(dtype=float), 1) == 0))
            cols.append(Column(str(name), "integer" if is_int else "continuous",
                               lower=lo, upper=hi, nullable=nullable))
    return Schema(tuple(cols))


def _rows(mask: np.ndarray) -> str:
    idx = np.flatnonzero(mask)
    shown = ", ".join(str(i + 2) for i in idx[:5])  # +2: header line and 1-based rows
    more = f" and {len(idx) - 5} more" if len(idx) > 5 else ""
    return f"{len(idx)} row(s) (file lines {shown}{more})"


def validate_frame(df: pd.DataFrame, schema: Schema, *, source: str,
                   show_values: bool = True) -> pd.DataFrame:
    """Check a table against the schema and return it with typed columns in schema order.

    Every problem is reported at once: missing or extra columns, empty table, values of the
    wrong type, outside the declared domain, or missing where the column is not nullable.
    With `show_values=False` the offending values are left out (for reports that leave a party).
    """
    problems: list[str] = []
    kinds: list[str] = []

    def kind(column: str | None, what: str) -> None:
        kinds.append(what if column is None else f"column {column!r}: {what}")

    df = df.rename(columns=str)  # schemas name columns by string, as CSV headers do
    missing = [n for n in schema.names if n not in df.columns]
    extra = [str(c) for c in df.columns if c not in schema.names]
    if missing:
        problems.append(f"missing column(s) {missing}: add them, or remove them from the schema")
        for m in missing:
            kind(m, "missing from the data")
    if extra:
        problems.append(f"column(s) {extra} are not in the schema: drop them or add them to it")
        kind(None, "the data has columns that are not in the schema")
    if len(df) == 0:
        problems.append("the table has no rows: a party needs at least one row to take part")
        kind(None, "the table has no rows")
    out: dict[str, pd.Series] = {}
    for col in schema.columns:
        if col.name not in df.columns:
            continue
        s = df[col.name]
        na = s.isna().to_numpy()
        if na.any() and not col.nullable:
            problems.append(f"column {col.name!r}: missing values in {_rows(na)}; fill them, or "
                            "declare the column nullable in the schema")
            kind(col.name, "missing values in a column the schema declares not nullable")
        if col.kind == "categorical":
            as_str = s.astype(object).where(~na, None)
            as_str = as_str.map(lambda v: None if v is None else _cat_str(v))
            allowed = set(col.categories)
            bad = (~na) & ~as_str.isin(allowed).to_numpy()
            if OTHER in allowed:
                as_str = as_str.where(~bad, OTHER)
            elif bad.any():
                vals = sorted({str(v) for v in as_str[bad].unique()})[:5]
                shown = f" (values {vals})" if show_values else ""
                problems.append(f"column {col.name!r}: {_rows(bad)} hold categories not in the "
                                f"schema{shown}; add them to its category list")
                kind(col.name, "categories that are not in the schema")
            out[col.name] = as_str
        else:
            num = pd.to_numeric(s, errors="coerce")
            bad_type = (~na) & num.isna().to_numpy()
            if bad_type.any():
                vals = [str(v) for v in s[bad_type].unique()[:5]]
                shown = f" (values {vals})" if show_values else ""
                problems.append(f"column {col.name!r}: {_rows(bad_type)} are not numbers{shown}; "
                                f"the schema declares it {col.kind}")
                kind(col.name, f"values that are not numbers (declared {col.kind})")
            arr = num.to_numpy(dtype=float)
            assert col.lower is not None and col.upper is not None  # checked by Schema
            with np.errstate(invalid="ignore"):
                out_of = (~np.isnan(arr)) & ((arr < col.lower) | (arr > col.upper))
            if out_of.any():
                vals = [repr(float(v)) for v in np.unique(arr[out_of])[:5]]
                shown = f" (values {vals})" if show_values else ""
                problems.append(f"column {col.name!r}: {_rows(out_of)} lie outside the declared "
                                f"bounds [{col.lower}, {col.upper}]{shown}; widen the bounds in "
                                "the schema or clip the data")
                kind(col.name, "values outside the declared bounds")
            if col.kind == "integer":
                with np.errstate(invalid="ignore"):
                    frac = (~np.isnan(arr)) & (np.mod(arr, 1) != 0)
                if frac.any():
                    problems.append(f"column {col.name!r}: {_rows(frac)} are not whole numbers; "
                                    "declare it continuous or round the data")
                    kind(col.name, "values that are not whole numbers (declared integer)")
            out[col.name] = num
    if problems:
        raise DataValidationError(problems, source=source, kinds=kinds)
    return pd.DataFrame(out, index=df.index).reset_index(drop=True)


def _cat_str(v: object) -> str:
    """Categories are compared as strings; whole floats from CSV ('1.0') match integer labels."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    return str(v)
