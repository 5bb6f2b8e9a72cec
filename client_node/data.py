"""Loading a party's table (CSV or Parquet) and checking it against the job's schema."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fedsynth.errors import InputError

SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


class DataFileError(InputError):
    """A data file that cannot be read; says which file and what to do."""


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet table; `attrs["source"]` names the file, for messages about it.

    A CSV is typed from the whole file at once (`low_memory=False`): read in chunks, a column
    with a few words among numbers comes back as numbers from some chunks and text from others.
    """
    p = Path(path)
    kind = table_kind(p)
    try:
        df = pd.read_csv(p, low_memory=False) if kind == "csv" else pd.read_parquet(p)
    except Exception as exc:
        raise DataFileError(f"{p}: could not be read as {kind.upper()} ({exc}); check that the "
                            f"file really is {kind.upper()}") from None
    df.attrs["source"] = str(p)
    return df


def table_kind(path: str | Path) -> str:
    """"csv" or "parquet" by the file's suffix; DataFileError if neither, or no such file."""
    p = Path(path)
    kind = SUFFIXES.get(p.suffix.lower())
    if kind is None:
        raise DataFileError(f"{p}: unsupported file type {p.suffix!r}; give a .csv or .parquet "
                            "file")
    if not p.exists():
        raise DataFileError(f"{p}: no such file")
    return kind
