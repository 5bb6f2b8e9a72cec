"""Loading a party's table (CSV or Parquet) and checking it against the job's schema."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


class DataFileError(ValueError):
    """A data file that cannot be read; says which file and what to do."""


def read_table(path: str | Path) -> pd.DataFrame:
    p = Path(path)
    kind = SUFFIXES.get(p.suffix.lower())
    if kind is None:
        raise DataFileError(f"{p}: unsupported file type {p.suffix!r}; give a .csv or .parquet "
                            "file")
    if not p.exists():
        raise DataFileError(f"{p}: no such file")
    try:
        if kind == "csv":
            return pd.read_csv(p)
        return pd.read_parquet(p)
    except Exception as exc:
        raise DataFileError(f"{p}: could not be read as {kind.upper()} ({exc}); check that the "
                            f"file really is {kind.upper()}") from None
