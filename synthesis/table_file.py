"""Writing a synthetic table to a file: CSV (pandas' exact text, written fast) or Parquet.

A synthetic table is public (post-processing of the job's DP output); this module only
decides how fast and in how much memory it reaches the disk. pandas' `to_csv` formats every
float in Python and returned the whole text as one string: 10M rows took about 30 s and two
copies of the text. Here each chunk of CHUNK_ROWS rows is formatted column by column
(floats by Arrow's shortest round-trip digits, set in the notation Python's repr uses;
categories once per distinct value, quoted as Python's csv module quotes them), joined into
lines by Arrow and written straight from Arrow's buffer. The text is byte for byte pandas'
`to_csv(index=False)` (tested); a table with a column of another type, or with one column
(where the csv module quotes an empty field), is written by pandas, chunk by chunk.

Parquet (`--format parquet`) keeps the column types (nullable integers, dates) and is the
smaller and faster file for big tables.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from fedsynth.synthesis.datetimes import LAYOUT, LAYOUTS

FORMATS = ("csv", "parquet")
CHUNK_ROWS = 1_000_000
WRITE_AHEAD = 2  # chunks formatted at once (two cores here)


def file_name(stem: str, fmt: str) -> str:
    """`synthetic.csv` or `synthetic.parquet`; ValueError for an unknown format."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    return f"{stem}.{fmt}"


def writer(df: pd.DataFrame, fmt: str) -> Callable[[Path], None]:
    """A function that writes `df` to a path in `fmt` (for output folders written later)."""
    file_name("table", fmt)
    return lambda path: write_table(df, path, fmt)


def write_table(df: pd.DataFrame, path: Path, fmt: str) -> None:
    """Write `df` (no index) to `path` as CSV or Parquet."""
    file_name("table", fmt)
    if fmt == "parquet":
        df.to_parquet(path, index=False)
        return
    with open(path, "wb") as fh:
        write_csv(df, fh)


def csv_text(df: pd.DataFrame) -> str:
    """The CSV text of `df`, as `write_csv` writes it."""
    buf = io.BytesIO()
    write_csv(df, buf)
    return buf.getvalue().decode("utf-8")


def write_csv(df: pd.DataFrame, fh: io.BufferedIOBase | io.BytesIO) -> None:
    """pandas' `df.to_csv(index=False)` text, in UTF-8, chunk by chunk."""
    head = io.StringIO()
    csv.writer(head, lineterminator="\n").writerow([str(c) for c in df.columns])
    layouts: dict[str, str] = dict(df.attrs.get(LAYOUTS, {}))
    if df.shape[1] < 2 or not all(_formattable(df[c]) for c in df.columns):
        if layouts:  # pandas drops the times of a column whose values are all at midnight
            df = df.assign(**{c: df[c].dt.strftime(layouts[c]) for c in df.columns
                              if c in layouts and pd.api.types.is_datetime64_dtype(df[c])})
        for start in range(0, max(len(df), 1), CHUNK_ROWS):
            part = df.iloc[start:start + CHUNK_ROWS]
            fh.write(part.to_csv(index=False, header=start == 0).encode("utf-8"))
        return
    fh.write(head.getvalue().encode("utf-8"))
    import pyarrow as pa
    import pyarrow.compute as pc

    def text(start: int) -> memoryview:
        part = df.iloc[start:start + CHUNK_ROWS]
        cols = [_strings(part[c], layouts.get(c)) for c in part.columns]
        lines = pc.binary_join_element_wise(*cols, pa.scalar(""), ",")  # trailing "," ...
        lines = pc.utf8_replace_slice(lines, -1, 2**31 - 1, "\n")  # ... becomes the newline
        if isinstance(lines, pa.ChunkedArray):
            lines = lines.combine_chunks()
        offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)
        first, last = int(offsets[lines.offset]), int(offsets[lines.offset + len(lines)])
        return memoryview(lines.buffers()[2])[first:last]

    # Arrow's and numpy's kernels release the GIL: the next chunk is formatted while this one
    # is written, at most WRITE_AHEAD chunks held at once, written in order
    starts = list(range(0, len(df), CHUNK_ROWS))
    with ThreadPoolExecutor(max_workers=WRITE_AHEAD) as pool:
        pending = [pool.submit(text, s) for s in starts[:WRITE_AHEAD]]
        for i in range(len(starts)):
            chunk = pending.pop(0).result()
            if i + WRITE_AHEAD < len(starts):
                pending.append(pool.submit(text, starts[i + WRITE_AHEAD]))
            fh.write(chunk)


def _formattable(s: pd.Series) -> bool:
    dt = s.dtype
    if isinstance(dt, pd.DatetimeTZDtype):
        return False
    if pd.api.types.is_datetime64_dtype(dt):
        ok = s.dropna()
        return bool((ok.dt.nanosecond == 0).all() and (ok.dt.microsecond == 0).all())
    if pd.api.types.is_object_dtype(dt):  # text and missing values only (pandas would hash
        # 1, 1.0 and True alike, which the csv module writes differently)
        return pd.api.types.infer_dtype(s, skipna=True) in ("string", "empty")
    return pd.api.types.is_bool_dtype(dt) or pd.api.types.is_integer_dtype(dt) or (
        dt == np.dtype(np.float64))


def _strings(s: pd.Series, layout: str | None = None) -> object:
    """One column's CSV fields (as pandas writes them, missing as empty), an Arrow array;
    datetimes in their `layout` when given (with_layout's), else as pandas writes them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    dt = s.dtype
    if pd.api.types.is_datetime64_dtype(dt):
        ok = s.dropna()
        if layout is None:
            midnight = bool((ok == ok.dt.normalize()).all())
            layout = LAYOUT["day" if midnight else "second"]
        text = s.dt.strftime(layout)
        return pc.fill_null(pa.array(text, type=pa.string(), from_pandas=True), "")
    if pd.api.types.is_object_dtype(dt):  # text (checked by _formattable) and missing
        text = pa.array(s.to_numpy(), type=pa.string(), from_pandas=True)
        if not pc.any(pc.match_substring_regex(text, '[,"\n\r]')).as_py():
            return pc.fill_null(text, "")  # no field to quote: each is its own text
    if pd.api.types.is_object_dtype(dt) or pd.api.types.is_bool_dtype(dt):
        codes, uniques = pd.factorize(s, use_na_sentinel=True)
        fields = [_field(v) for v in np.asarray(uniques, dtype=object)] + [""]
        return pa.array(np.asarray(fields, dtype=object)[codes], type=pa.string())
    if pd.api.types.is_integer_dtype(dt):  # int64, and nullable Int64 (missing: empty)
        return pc.fill_null(pc.cast(pa.array(s), pa.string()), "")
    return _floats(s.to_numpy(dtype=np.float64))


def _floats(x: np.ndarray) -> object:
    """Floats as numpy and Python's repr write them: the shortest digits that read back to
    the same number (Arrow's), positional with ".0" for whole numbers from 1e-4 up to 1e16,
    scientific outside that range. Where Arrow chose the other notation (outside the range,
    or 1e+10 for 10000000000.0: rare), the number is written by Python's repr."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = pc.cast(pa.array(x, from_pandas=True), pa.string())  # NaN -> null
    with np.errstate(invalid="ignore"):
        mag = np.abs(x)
        odd = ~np.isnan(x) & (((mag < 1e-4) & (mag > 0)) | (mag >= 1e16))
        whole = np.isfinite(x) & (np.mod(x, 1) == 0) & ~odd
    odd |= np.asarray(pc.fill_null(pc.match_substring(text, "e"), False))
    whole &= ~odd
    text = pc.if_else(pa.array(whole), pc.binary_join_element_wise(text, ".0", ""), text)
    if odd.any():
        fix = [repr(float(v)) for v in x[odd]]
        text = pc.replace_with_mask(text, pa.array(odd), pa.array(fix, type=pa.string()))
    return pc.fill_null(text, "")


def _field(v: object) -> str:
    """One value as Python's csv module writes it in a row of several fields."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([v, ""])
    return buf.getvalue()[:-2]  # without the empty last field and the newline
