"""A party's table as fine codes: read, validated and encoded once per job, counted each round.

Who knows what: everything here stays inside the party. The node (client_node.node) turns
these counts into a noised, masked vector before anything leaves; nothing in this module
adds, removes or reshapes what is released.

How the table is held. A Parquet file is read in chunks of CHUNK_ROWS rows (pyarrow record
batches, only the columns the job may read), and each chunk is validated against the schema
and encoded to compact codes (one byte or two per value) before the next is read, so the
raw table is never held whole, let alone twice. A CSV file is read whole: typed in chunks,
a column with a few words among numbers comes back as numbers from some chunks and text from
others (client_node.data). The codes are kept, column by column, for the job's later rounds
when all kept tables fit in KEEP_BYTES; a table whose codes do not fit is read again, chunk
by chunk, in every round. Counts of chunks add up to the counts of the whole table (tested).

Measured, 10 parties of 1M rows in one process (ISLR/Default, 4 columns): re-reading and
re-validating each party's file every round (a cache of 4 tables for 10 parties) took 30 s
of a job's measurement; kept codes, counted with one np.bincount per marginal, take about a
second for all three rounds.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fedsynth.client_node.data import DataFileError, read_table, table_kind
from fedsynth.synthesis import marginals
from fedsynth.synthesis.encoding import Encoding, Grouping
from fedsynth.synthesis.schema import DataValidationError, Schema, validate_frame

CHUNK_ROWS = 1_000_000  # rows of a Parquet file read, validated and encoded at a time
KEEP_BYTES = 2 << 30  # codes of all tables kept between rounds, in bytes (this process)
MAX_PROBLEMS = 20  # problem lines of a table read in chunks (the first ones, in file order)


class PartyTable:
    """One data file under one schema: its codes (kept, or read again on demand)."""

    def __init__(self, path: Path, schema: Schema) -> None:
        self.path, self.schema = path, schema
        self.encoding = Encoding.from_schema(schema)
        self.columns: np.ndarray | None = None  # (columns, rows) compact codes, when kept
        self.rows = 0

    @property
    def nbytes(self) -> int:
        return 0 if self.columns is None else int(self.columns.nbytes)

    def load(self, keep: bool) -> None:
        """Read, validate and encode the whole file (raises on any problem); keep the codes
        if `keep`, else only the row count."""
        parts: list[np.ndarray] = []
        rows = 0
        for codes in self.chunks():
            rows += codes.shape[1]
            if keep:
                parts.append(codes)
        self.rows = rows
        if keep:
            self.columns = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def chunks(self) -> Iterator[np.ndarray]:
        """The file's compact codes, (columns, rows) per chunk, validated as they are read.

        Every problem of every chunk is gathered (with its file lines) and raised once at the
        end as one DataValidationError; no codes are yielded after the first problem."""
        problems: list[str] = []
        kinds: list[str] = []
        seen = 0
        for first, frame in read_chunks(self.path, self.schema):
            seen += len(frame)
            try:
                valid = validate_frame(frame, self.schema, source=str(self.path),
                                       show_values=False, first_row=first, chunk=True)
            except DataValidationError as exc:
                problems += exc.problems
                kinds += exc.kinds
                continue
            if not problems:
                yield self.encoding.encode_compact(valid)
        if seen == 0:
            problems.append("the table has no rows: a party needs at least one row to take part")
            kinds.append("the table has no rows")
        if problems:
            shown = list(dict.fromkeys(problems))
            more = len(shown) - MAX_PROBLEMS
            shown = shown[:MAX_PROBLEMS] + ([f"and {more} more"] if more > 0 else [])
            raise DataValidationError(shown, source=str(self.path),
                                      kinds=list(dict.fromkeys(kinds)))

    def count(self, groupings: Sequence[Grouping], cliques: Sequence[tuple[int, ...]]
              ) -> np.ndarray:
        """Counts of each clique's cells, concatenated (as synthesis.marginals.count)."""
        if self.columns is not None:
            return marginals.count_columns(self.columns, groupings, cliques)
        total = marginals.count_columns(np.zeros((len(groupings), 0), dtype=np.uint8),
                                        groupings, cliques)
        for codes in self.chunks():
            total += marginals.count_columns(codes, groupings, cliques)
        return total

    def fine(self) -> np.ndarray:
        """(rows, columns) int64 fine codes of the whole table (DP-SGD trains on all rows)."""
        cols = self.columns if self.columns is not None else np.concatenate(
            list(self.chunks()), axis=1)
        return cols.T.astype(np.int64)


def read_chunks(path: Path, schema: Schema) -> Iterator[tuple[int, pd.DataFrame]]:
    """(first row, frame) per chunk of the file: Parquet in record batches of CHUNK_ROWS rows
    without the schema's ignored columns (never read), CSV whole. An empty file gives one
    empty frame, so that its columns are still checked."""
    if table_kind(path) != "parquet":
        yield 0, read_table(path, schema)
        return
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        meta = pf.schema_arrow.pandas_metadata or {}
        index = {c for c in meta.get("index_columns", []) if isinstance(c, str)}
        names = [n for n in pf.schema_arrow.names if n not in index
                 and n not in schema.ignored]
        first = 0
        for batch in pf.iter_batches(batch_size=CHUNK_ROWS, columns=names):
            frame = batch.to_pandas()
            yield first, frame
            first += len(frame)
        if first == 0:
            yield 0, pf.schema_arrow.empty_table().select(names).to_pandas()
    except Exception as exc:  # a corrupt file, a truncated one, not Parquet at all
        raise DataFileError(f"{path}: could not be read as PARQUET ({exc}); check that the file "
                            "really is PARQUET") from None


_lock = threading.Lock()
_kept: OrderedDict[tuple[str, int, int, str], PartyTable] = OrderedDict()


def party_table(path: Path, schema: Schema) -> PartyTable:
    """The table of `path` under `schema`, read once and then served from memory while the
    file is unchanged (same size and modification time); least recently used tables are
    dropped beyond KEEP_BYTES, and a table larger than that alone is read again each time."""
    try:
        st = path.stat()
    except OSError:
        raise DataFileError(f"{path}: no such file") from None
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size, schema.to_json())
    with _lock:
        table = _kept.get(key)
        if table is not None:
            _kept.move_to_end(key)
            return table
    table = PartyTable(path, schema)
    size = _code_bytes(table, path)
    table.load(keep=size <= KEEP_BYTES)
    if table.columns is not None:
        with _lock:
            _kept[key] = table
            while sum(t.nbytes for t in _kept.values()) > KEEP_BYTES and len(_kept) > 1:
                _kept.popitem(last=False)
    return table


def _code_bytes(table: PartyTable, path: Path) -> int:
    """The codes' size, from the file's row count (Parquet), before reading it; 0 if unknown
    (a CSV is read whole anyway)."""
    if table_kind(path) != "parquet":
        return 0
    import pyarrow.parquet as pq

    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except Exception:
        return 0  # read_chunks says what is wrong with the file
    return int(rows) * len(table.encoding.codecs) * table.encoding.code_dtype.itemsize


def forget() -> None:
    """Drop every kept table (tests)."""
    with _lock:
        _kept.clear()
