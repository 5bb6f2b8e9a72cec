"""Evaluation where one holder has the real rows: the same path as a federation with one node."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd

from fedsynth.evaluation.measures import measure
from fedsynth.evaluation.plan import EvalOptions, EvaluationPlan
from fedsynth.evaluation.statistics import node_statistics
from fedsynth.synthesis.schema import Column, Schema, infer_schema, validate_frame


def evaluate_tables(real: pd.DataFrame, synthetic: pd.DataFrame, *,
                    train: pd.DataFrame | None = None, schema: Schema | None = None,
                    options: EvalOptions | None = None) -> dict[str, Any]:
    """Score `synthetic` against `real` (held-out rows) and, if given, `train` (the rows the
    synthesizer saw; needed for the membership-inference measure and used for TRTR).

    Without a schema one is drafted from all tables together (bounds spanning every table).
    Returns the report's measures as a JSON-serialisable dict, with the time each part took.
    """
    opts = options or EvalOptions()
    t0 = time.perf_counter()
    tables = [("real", real), ("synthetic", synthetic)] + ([("train", train)]
                                                           if train is not None else [])
    if schema is None:
        schema = _drafted(pd.concat([t for _, t in tables], ignore_index=True))
    checked = {name: validate_frame(t, schema, source=f"{name} table") for name, t in tables}
    plan = EvaluationPlan.build(schema, checked["synthetic"], opts)
    t1 = time.perf_counter()
    vector = node_statistics(plan, checked["synthetic"], train=checked.get("train"),
                             test=checked["real"])
    t2 = time.perf_counter()
    out = measure(plan, vector, checked["synthetic"])
    t3 = time.perf_counter()
    out["evaluation"] = {"mode": "local", "parties": 1, "options": opts.__dict__,
                         "seconds": {"validate_and_plan": t1 - t0, "real_statistics": t2 - t1,
                                     "measures": t3 - t2, "total": t3 - t0}}
    return out


def _drafted(pooled: pd.DataFrame) -> Schema:
    schema = infer_schema(pooled)
    cols = [Column(c.name, c.kind, c.categories, c.lower, c.upper, nullable=True)
            for c in schema.columns]
    return Schema(tuple(cols))
