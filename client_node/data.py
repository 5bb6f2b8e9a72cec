"""Loading a party's table (CSV or Parquet) and checking it against the job's schema.

A CSV's text is read the way its owner meant it, not the way a spreadsheet guesses:
- Separator: a comma, a semicolon, a tab or '|', whichever splits the first lines into the same
  number of fields (more than one); with semicolons, numbers may have decimal commas ("71,3").
- Missing: an empty field. Tokens that spreadsheets and R write for missing ("NA", "null",
  "?", ...: synthesis.schema.MISSING_TOKENS) are read as the text they are; the schema decides
  what they mean (missing in a numeric, date or boolean column, a value where a category list
  names them: "NA" for North America), so every party reads them the same way.
- Codes: a column whose schema categories a number would not write back ("00501") is read as
  text, so "00501" stays "00501"; without a schema, a column of whole numbers written with
  leading zeros on several rows ("01234", fixed-width codes), or too long to be exact as a
  float (16 digits and more), is read as text.
- Duplicate column names are refused (pandas would rename one to "x.1" in silence).
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pandas as pd

from fedsynth.errors import InputError
from fedsynth.synthesis.schema import MIN_CATEGORY_ROWS, Schema, category_strings

SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
SNIFF_BYTES = 64 * 1024  # the start of the file the separator is chosen from
_WHOLE = re.compile(r"^[+-]?\d+$")
_DECIMAL_COMMA = re.compile(r"^[-+]?(\d+|\d{1,3}(\.\d{3})+),\d+$")  # 71,3 and 1.675,49
_SEPARATORS = (",", ";", "\t", "|")


class DataFileError(InputError):
    """A data file that cannot be read; says which file and what to do."""


def read_table(path: str | Path, schema: Schema | None = None) -> pd.DataFrame:
    """Read a CSV or Parquet table; `attrs["source"]` names the file, for messages about it.
    With the job's `schema`, its categorical columns are read as text.

    A CSV is typed from the whole file at once (`low_memory=False`): read in chunks, a column
    with a few words among numbers comes back as numbers from some chunks and text from others.
    """
    p = Path(path)
    kind = table_kind(p)
    try:
        df = _read_csv(p, schema) if kind == "csv" else pd.read_parquet(p)
    except DataFileError:
        raise
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{p}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the "
                            "file as UTF-8 CSV") from None
    except Exception as exc:
        why = " ".join(str(exc).split())  # pandas' messages span lines
        raise DataFileError(f"{p}: could not be read as {kind.upper()} ({why}); check that the "
                            f"file really is {kind.upper()}") from None
    df.attrs["source"] = str(p)
    return df


def _read_csv(p: Path, schema: Schema | None) -> pd.DataFrame:
    sep, header = _separator(p)
    seen: dict[str, int] = {}
    for i, name in enumerate(header):
        if name in seen and name.strip():  # empty names (trailing separators) are numbered
            raise DataFileError(f"{p}: columns {seen[name] + 1} and {i + 1} are both named "
                                f"{name!r}; give each column its own name")
        seen.setdefault(name, i)
    text: list[str] = []
    if schema is not None:
        text = [c.name for c in schema.columns if c.kind == "categorical" and c.name in seen
                and any(_not_a_number(v) for v in c.categories)]
    df = pd.read_csv(p, sep=sep, keep_default_na=False, na_values=[""], low_memory=False,
                     dtype={c: str for c in text})
    empty = [c for i, c in enumerate(df.columns)
             if not (header[i].strip() if i < len(header) else "") and df[c].isna().all()]
    df = df.drop(columns=empty)  # trailing separators: no name, no value
    if schema is None:
        text = _codes(p, sep, [str(c) for c in df.columns
                               if pd.api.types.is_integer_dtype(df[c]) and c in seen])
        if text:  # read again as written
            again = pd.read_csv(p, sep=sep, keep_default_na=False, na_values=[""],
                                low_memory=False, usecols=text, dtype=str)
            for c in text:
                df[c] = again[c]
    if sep == ";":
        for c in df.columns:
            if df[c].dtype == object and c not in text:
                df[c] = _decimal_commas(df[c])
    return df


def _not_a_number(label: str) -> bool:
    """A category that reading it as a number would change ("00501", "1.50"): its column is
    read as text. Other category columns are read as pandas types them, and their numbers
    compare as category strings do ("1.0" from a float column matches the label "1")."""
    try:
        number = float(label)
    except ValueError:
        return False
    return str(category_strings(pd.Series([number]))[0]) != label


def _codes(p: Path, sep: str, whole: list[str]) -> list[str]:
    """Of the columns read as whole numbers, those that are codes: written with a leading
    zero on MIN_CATEGORY_ROWS rows or more (zip codes, fixed-width ids; one "07" typed in an
    age column is not enough), or too long to be exact as a float. Their text is scanned by
    Arrow's CSV reader (a pass in C++: reading every such column as Python strings took ten
    times as long as the file's read)."""
    if not whole:
        return []
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyarrow import csv as pa_csv

    try:
        table = pa_csv.read_csv(p, parse_options=pa_csv.ParseOptions(delimiter=sep),
                                convert_options=pa_csv.ConvertOptions(
                                    include_columns=whole,
                                    column_types={c: pa.string() for c in whole}))
    except (pa.ArrowInvalid, KeyError):  # a layout pandas reads and Arrow does not: numbers
        return []
    out = []
    for c in whole:
        col = pc.utf8_trim_whitespace(table.column(c))
        zeros = pc.sum(pc.match_substring_regex(col, r"^\+?0\d")).as_py() or 0
        long = pc.any(pc.greater_equal(pc.utf8_length(col), 16)).as_py()
        if zeros >= MIN_CATEGORY_ROWS or long:
            out.append(c)
    return out


def _decimal_commas(s: pd.Series) -> pd.Series:
    """In a semicolon-separated file, numbers written with a decimal comma ("71,3") as
    numbers, when every number-like value of the column is written so or is whole."""
    labels = [v for v in pd.unique(s.dropna()) if isinstance(v, str)]
    comma = [v for v in labels if _DECIMAL_COMMA.match(v.strip())]
    if not comma:
        return s
    return s.map(lambda v: float(v.strip().replace(".", "").replace(",", "."))
                 if isinstance(v, str) and (_DECIMAL_COMMA.match(v.strip())
                                            or _WHOLE.match(v.strip())) else v)


def _separator(p: Path) -> tuple[str, list[str]]:
    """The separator that splits the file's first records into one number of fields, the
    most of them (a comma when none does better), and the header's names under it."""
    with open(p, newline="", encoding="utf-8-sig") as fh:
        sample = fh.read(SNIFF_BYTES)
    lines = sample.splitlines(keepends=True)
    if len(sample) == SNIFF_BYTES and len(lines) > 1:
        sample = "".join(lines[:-1])  # no cut record
    best, best_key = ",", (False, 0)
    for sep in _SEPARATORS:
        try:
            records = [r for r in csv.reader(io.StringIO(sample), delimiter=sep) if r][:20]
        except csv.Error:
            continue
        if not records:
            continue
        width = len(records[0])
        key = (all(len(r) == width for r in records) and width > 1, width)
        if key > best_key:
            best, best_key = sep, key
    records = list(csv.reader(io.StringIO(sample), delimiter=best))
    return best, records[0] if records else []


def table_kind(path: str | Path) -> str:
    """"csv" or "parquet" by the file's suffix; DataFileError if neither, or no such file."""
    p = Path(path)
    if p.is_dir():
        raise DataFileError(f"{p}: is a folder; give a .csv or .parquet file")
    kind = SUFFIXES.get(p.suffix.lower())
    if kind is None:
        raise DataFileError(f"{p}: unsupported file type {p.suffix!r}; give a .csv or .parquet "
                            "file")
    if not p.exists():
        raise DataFileError(f"{p}: no such file")
    return kind
