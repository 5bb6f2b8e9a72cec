"""Reference points for a federated run: the central ceiling and the local-only floor.

central:    the same method run by one trusted curator on the pooled rows at the same (ε, δ).
local-only: each party runs the same method alone on its own rows with the full (ε, δ), and the
            consortium takes the union of their synthetic tables (what it has without us).
Both reuse `simulate` with the in-process engine, so they share every line of the method.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from fedsynth.coordinator.job import JobOptions
from fedsynth.simulations.run import simulate
from fedsynth.synthesis.schema import Schema


def central(train: pd.DataFrame, schema: Schema, *, epsilon: float, delta: float, seed: int,
            rows: int | None = None) -> pd.DataFrame:
    res = simulate(parties=[train], schema=schema, epsilon=epsilon, delta=delta,
                   channel="plain", threshold=1, holdout=0.0, seed=seed, engine="local",
                   evaluate=False, options=JobOptions(rows=rows, seed=seed))
    return res.synthetic


def local_only(tables: Sequence[pd.DataFrame], schema: Schema, *, epsilon: float, delta: float,
               seed: int) -> pd.DataFrame:
    parts = []
    for i, t in enumerate(tables):
        res = simulate(parties=[t], schema=schema, epsilon=epsilon, delta=delta,
                       channel="plain", threshold=1, holdout=0.0, seed=seed * 100 + i,
                       engine="local", evaluate=False)
        parts.append(res.synthetic)
    return pd.concat(parts, ignore_index=True)
