"""The synthetic table on the wire: Parquet bytes (data only, never code), checked on arrival."""

from __future__ import annotations

import io

import pandas as pd

from fedsynth.synthesis.schema import Schema, validate_frame


def synthetic_to_parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def synthetic_from_parquet(data: bytes, schema: Schema) -> pd.DataFrame:
    """Parse and validate against the schema (both sides do this, so both see the same table)."""
    try:
        df = pd.read_parquet(io.BytesIO(data))
    except Exception as exc:
        raise ValueError(f"the synthetic table sent for evaluation is not Parquet ({exc})"
                         ) from None
    return validate_frame(df, schema, source="synthetic table for evaluation")
