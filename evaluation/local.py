"""Evaluation where one holder has the real rows: the same path as a federation with one node."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from fedsynth.crypto.noise import secure_generator
from fedsynth.evaluation.dp import add_noise
from fedsynth.evaluation.measures import measure
from fedsynth.evaluation.plan import EvalOptions, EvaluationPlan
from fedsynth.evaluation.report import render
from fedsynth.evaluation.statistics import node_statistics
from fedsynth.synthesis.schema import (
    DataValidationError,
    Schema,
    describe_rows,
    draft_schema_with_notes,
    validate_frame,
)

Say = Callable[[str], None]


@dataclass(frozen=True)
class _Table:
    """A table and how messages name it ("the real table holdout.csv")."""

    label: str
    frame: pd.DataFrame


@dataclass(frozen=True)
class _Inputs:
    """Checked tables and the schema to score them with."""

    real: _Table
    synthetic: tuple[_Table, ...]
    train: _Table | None
    schema: Schema
    drafted: bool  # drafted from the tables themselves (then no table is held to a list)


def evaluate_tables(real: pd.DataFrame, synthetic: pd.DataFrame, *,
                    train: pd.DataFrame | None = None, schema: Schema | None = None,
                    options: EvalOptions | None = None,
                    progress: Say | None = None) -> dict[str, Any]:
    """Score `synthetic` against `real` (held-out rows) and, if given, `train` (the rows the
    synthesizer saw; needed for the membership-inference measure and used for TRTR).

    The tables must have the same columns. Without a schema one is drafted from all tables
    together (bounds spanning every table; its review notes go to `progress`), and a
    synthetic value that is not a number where the real rows hold only numbers is refused.
    Returns the report's measures as a JSON-serialisable dict, with the time each part took.
    With `options.epsilon` set the evaluation is DP (evaluation.dp): only `real` is scored
    (`train` is not read: TRTR and membership inference have no per-row bound) and the
    statistics get Skellam noise from the operating system's entropy before the measures.
    """
    inputs = _prepare(real, [(_source(synthetic), synthetic)], train, schema, progress)
    return _score(inputs, inputs.synthetic[0], options or EvalOptions())


def _score(inputs: _Inputs, synthetic: _Table, opts: EvalOptions) -> dict[str, Any]:
    """Validate one synthetic table and the real ones, then measure. A given schema holds the
    synthetic table to its category list (it was made with it); real rows may fold rare
    values into "__other__" as the schema allows."""
    t0 = time.perf_counter()
    schema, train = inputs.schema, inputs.train
    checked = {"real": validate_frame(inputs.real.frame, schema, source=inputs.real.label),
               "synthetic": validate_frame(synthetic.frame, schema, source=synthetic.label,
                                           fold_unknown=inputs.drafted)}
    if train is not None:
        checked["train"] = validate_frame(train.frame, schema, source=train.label)
    plan = EvaluationPlan.build(schema, checked["synthetic"], opts)
    t1 = time.perf_counter()
    if plan.dp:
        vector = add_noise(plan, node_statistics(plan, checked["synthetic"], train=None,
                                                 test=checked["real"]), secure_generator())
    else:
        vector = node_statistics(plan, checked["synthetic"], train=checked.get("train"),
                                 test=checked["real"])
    t2 = time.perf_counter()
    out = measure(plan, vector, checked["synthetic"])
    t3 = time.perf_counter()
    out["evaluation"] = {**out.get("evaluation", {}), "mode": "local", "parties": 1,
                         "real_side": "given",
                         "options": opts.__dict__,
                         "seconds": {"validate_and_plan": t1 - t0, "real_statistics": t2 - t1,
                                     "measures": t3 - t2, "total": t3 - t0}}
    if plan.dp and train is not None:
        out["evaluation"]["train_table"] = ("not read: DP evaluation scores the held-out rows "
                                            "only")
    return out


def _prepare(real: pd.DataFrame, synthetic: Sequence[tuple[str | None, pd.DataFrame]],
             train: pd.DataFrame | None, schema: Schema | None, say: Say | None) -> _Inputs:
    """Check the tables against each other before any schema, then draft one if none is
    given: a mismatch is then blamed on the table that has it, not on a schema."""
    r = _Table(_label("real", _source(real)), real)
    t = None if train is None else _Table(_label("train", _source(train)), train)
    syn = tuple(_Table(_label("synthetic", src), df) for src, df in synthetic)
    reals = [r] if t is None else [r, t]
    _check_columns(r, [*syn, *reals[1:]], ignore=set(schema.ignored) if schema else set())
    if schema is not None:
        return _Inputs(r, syn, t, schema, drafted=False)
    for s in syn:
        _check_numbers(reals, s)
    drafted, notes = _draft(pd.concat([x.frame for x in (*reals, *syn)], ignore_index=True))
    for note in notes:
        (say or _quiet)(f"schema drafted from the tables: {note}")
    return _Inputs(r, syn, t, drafted, drafted=True)


def _quiet(_message: str) -> None:
    """The progress callback when none is given."""


def _source(df: pd.DataFrame) -> str | None:
    """The file a table was read from (client_node.data.read_table records it), if known."""
    src = df.attrs.get("source")
    return str(src) if src else None


def _label(role: str, source: str | None) -> str:
    return f"the {role} table {source}" if source else f"the {role} table"


def _check_columns(reference: _Table, others: Sequence[_Table], *, ignore: set[str]) -> None:
    """Every table must have the reference's columns (those the schema ignores aside); says
    which table lacks which columns, both ways, since a renamed column shows on both sides."""
    ref = [str(c) for c in reference.frame.columns if str(c) not in ignore]
    problems = []
    for other in others:
        cols = [str(c) for c in other.frame.columns if str(c) not in ignore]
        extra, missing = [c for c in cols if c not in ref], [c for c in ref if c not in cols]
        parts = ([f"{other.label} has columns {reference.label} lacks: {', '.join(extra)}"]
                 if extra else []) + ([f"{reference.label} has columns {other.label} lacks: "
                                       f"{', '.join(missing)}"] if missing else [])
        if parts:
            problems.append("; ".join(parts) + ". Rename or drop them so both tables have the "
                            "same columns")
    if problems:
        raise ValueError("\n".join(problems))


def _check_numbers(real: Sequence[_Table], synthetic: _Table) -> None:
    """Without a schema, a column that holds only numbers in the real rows is numeric, and a
    synthetic value that is not a number cannot come from it (a drafted schema would
    otherwise turn the whole column into categories and score it silently)."""
    problems = []
    for name in real[0].frame.columns:
        if not _only_numbers([t.frame[name] for t in real]):
            continue
        bad = _not_numbers(synthetic.frame[name])
        if bad.any():
            example = synthetic.frame[name][bad].iloc[0]
            problems.append(f"column {str(name)!r}: {describe_rows(bad)} hold values that are "
                            f"not numbers (e.g. {str(example)!r}), but it holds only numbers in "
                            f"{real[0].label}: fix or drop those rows, or evaluate with a "
                            "schema that declares the column categorical")
    if problems:
        raise DataValidationError(problems, source=synthetic.label)


def _only_numbers(columns: Sequence[pd.Series]) -> bool:
    values = pd.concat([c.dropna() for c in columns])
    return len(values) > 0 and not pd.api.types.is_bool_dtype(values) and not bool(
        _not_numbers(values).any())


def _not_numbers(s: pd.Series) -> np.ndarray:
    """True where a value is present but is not a number (booleans count as not numbers)."""
    if pd.api.types.is_bool_dtype(s):
        return s.notna().to_numpy()
    if pd.api.types.is_numeric_dtype(s):
        return np.zeros(len(s), dtype=bool)
    num = pd.to_numeric(s.astype(object).map(lambda v: None if isinstance(v, bool) else v),
                        errors="coerce")
    return (s.notna() & num.isna()).to_numpy()


def draft_schema(pooled: pd.DataFrame) -> Schema:
    """A schema spanning every given table (all columns nullable), for evaluation only."""
    return _draft(pooled)[0]


def _draft(pooled: pd.DataFrame) -> tuple[Schema, list[str]]:
    schema, notes = draft_schema_with_notes(pooled, min_rows=1)  # never public: every value
    cols = [replace(c, nullable=True) for c in schema.columns]
    return Schema(tuple(cols), meta=schema.meta), notes


@dataclass
class Run:
    """One synthetic table to evaluate, with the privacy report of the job that made it."""

    synthetic: pd.DataFrame
    source: str
    privacy: dict[str, Any] | None = None


def evaluate_runs(real: pd.DataFrame, runs: Sequence[Run], *, train: pd.DataFrame | None = None,
                  schema: Schema | None = None, options: EvalOptions | None = None,
                  progress: Say | None = None) -> tuple[dict[str, Any], str]:
    """Evaluate each run; return metrics.json's content and report.html (details of the first
    run, and a privacy-utility curve over the runs whose privacy report gives their ε).

    Every table is checked before the first run is scored, so a mistake in the last one
    does not wait for the others; without a schema, one draft spans all the tables, so the
    runs are scored on the same categories and bounds."""
    say = progress or (lambda _m: None)
    inputs = _prepare(real, [(r.source, r.synthetic) for r in runs], train, schema, say)
    results = []
    for i, (run, table) in enumerate(zip(runs, inputs.synthetic, strict=True), start=1):
        say(f"evaluating {run.source} ({i} of {len(runs)})")
        results.append(_score(inputs, table, options or EvalOptions()))
    curve = [{"epsilon": r.privacy.get("epsilon_requested", r.privacy.get("epsilon_spent")),
              "tvd_2way": m["tvd"]["2way"],
              "tstr_auc": m.get("ml_efficacy", {}).get("tstr_auc"), "source": r.source}
             for r, m in zip(runs, results, strict=True) if r.privacy]
    first = {**results[0], "source": runs[0].source}
    if runs[0].privacy:
        first["privacy_guarantee"] = runs[0].privacy
    doc: dict[str, Any] = {**first, "privacy_utility": curve}
    if len(runs) > 1:
        doc["runs"] = [{"source": r.source, **m} for r, m in zip(runs, results, strict=True)]
    html = render(first, title=f"fedsynth evaluation: {runs[0].source}",
                  privacy=runs[0].privacy, runs=curve)
    return doc, html

