"""Evaluation where one holder has the real rows: the same path as a federation with one node."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from fedsynth.crypto.noise import secure_generator
from fedsynth.evaluation.dp import add_noise
from fedsynth.evaluation.measures import measure
from fedsynth.evaluation.plan import EvalOptions, EvaluationPlan
from fedsynth.evaluation.report import render
from fedsynth.evaluation.statistics import node_statistics
from fedsynth.synthesis.schema import Column, Schema, infer_schema, validate_frame


def evaluate_tables(real: pd.DataFrame, synthetic: pd.DataFrame, *,
                    train: pd.DataFrame | None = None, schema: Schema | None = None,
                    options: EvalOptions | None = None) -> dict[str, Any]:
    """Score `synthetic` against `real` (held-out rows) and, if given, `train` (the rows the
    synthesizer saw; needed for the membership-inference measure and used for TRTR).

    Without a schema one is drafted from all tables together (bounds spanning every table).
    Returns the report's measures as a JSON-serialisable dict, with the time each part took.
    With `options.epsilon` set the evaluation is DP (evaluation.dp): only `real` is scored
    (`train` is not read: TRTR and membership inference have no per-row bound) and the
    statistics get Skellam noise from the operating system's entropy before the measures.
    """
    opts = options or EvalOptions()
    t0 = time.perf_counter()
    tables = [("real", real), ("synthetic", synthetic)] + ([("train", train)]
                                                           if train is not None else [])
    if schema is None:
        schema = draft_schema(pd.concat([t for _, t in tables], ignore_index=True))
    checked = {name: validate_frame(t, schema, source=f"{name} table") for name, t in tables}
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
                         "options": opts.__dict__,
                         "seconds": {"validate_and_plan": t1 - t0, "real_statistics": t2 - t1,
                                     "measures": t3 - t2, "total": t3 - t0}}
    if plan.dp and train is not None:
        out["evaluation"]["train_table"] = ("not read: DP evaluation scores the held-out rows "
                                            "only")
    return out


def draft_schema(pooled: pd.DataFrame) -> Schema:
    """A schema spanning every given table (all columns nullable), for evaluation only."""
    schema = infer_schema(pooled)
    cols = [Column(c.name, c.kind, c.categories, c.lower, c.upper, nullable=True)
            for c in schema.columns]
    return Schema(tuple(cols))


@dataclass
class Run:
    """One synthetic table to evaluate, with the privacy report of the job that made it."""

    synthetic: pd.DataFrame
    source: str
    privacy: dict[str, Any] | None = None


def evaluate_runs(real: pd.DataFrame, runs: Sequence[Run], *, train: pd.DataFrame | None = None,
                  schema: Schema | None = None, options: EvalOptions | None = None,
                  progress: Callable[[str], None] | None = None) -> tuple[dict[str, Any], str]:
    """Evaluate each run; return metrics.json's content and report.html (details of the first
    run, and a privacy-utility curve over the runs whose privacy report gives their ε)."""
    say = progress or (lambda _m: None)
    results = []
    for i, run in enumerate(runs, start=1):
        say(f"evaluating {run.source} ({i} of {len(runs)})")
        m = evaluate_tables(real, run.synthetic, train=train, schema=schema, options=options)
        results.append(m)
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

