"""Marginal counting on encoded tables: many cliques into one flat integer vector, and back."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedsynth.synthesis.encoding import Grouping

Clique = tuple[int, ...]


def clique_shape(clique: Clique, sizes: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(sizes[i]) for i in clique)


def vector_length(cliques: Sequence[Clique], sizes: Sequence[int]) -> int:
    return int(sum(np.prod(clique_shape(c, sizes)) for c in cliques))


COUNT_ROWS = 1 << 20  # rows counted at a time: temporaries stay about 8 MB per column


def count(codes: np.ndarray, groupings: Sequence[Grouping],
          cliques: Sequence[Clique]) -> np.ndarray:
    """Counts of each clique's cells (C order), concatenated, on the grouped domain (int64).

    `codes` are fine codes, (rows, columns) of any integer type; `count_columns` takes them
    column by column, as a party keeps its table."""
    return count_columns(np.asarray(codes).T, groupings, cliques)


def count_columns(columns: np.ndarray, groupings: Sequence[Grouping],
                  cliques: Sequence[Clique]) -> np.ndarray:
    """`count` of fine codes given as (columns, rows), in slices of COUNT_ROWS rows.

    Each clique's cell of a row is one flat index (the grouped codes times the clique's
    strides) and one np.bincount counts them all: no per-row Python, no pandas groupby.
    Counting 10M rows of 4 columns for 10 cliques takes about a second."""
    sizes = [g.size for g in groupings]
    lengths = [int(np.prod(clique_shape(c, sizes))) for c in cliques]
    total = np.zeros(sum(lengths), dtype=np.int64)
    rows = columns.shape[1] if columns.ndim == 2 else 0
    for start in range(0, rows, COUNT_ROWS):
        total += _count_slice(columns[:, start:start + COUNT_ROWS], groupings, cliques, lengths)
    return total


def _count_slice(columns: np.ndarray, groupings: Sequence[Grouping], cliques: Sequence[Clique],
                 lengths: Sequence[int]) -> np.ndarray:
    n = columns.shape[1]
    grouped: dict[int, np.ndarray] = {}
    for i in sorted({i for c in cliques for i in c}):
        grouped[i] = groupings[i].index[columns[i]]  # int64 group codes of this column
    parts = []
    for c, length in zip(cliques, lengths, strict=True):
        flat = np.zeros(n, dtype=np.int64)
        for i in c:  # C order: the last column varies fastest
            flat *= groupings[i].size
            flat += grouped[i]
        parts.append(np.bincount(flat, minlength=length))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def split(vector: np.ndarray, cliques: Sequence[Clique], sizes: Sequence[int]) -> list[np.ndarray]:
    """Cut a concatenated vector back into one array per clique, shaped as the clique."""
    out, start = [], 0
    for c in cliques:
        shape = clique_shape(c, sizes)
        n = int(np.prod(shape))
        out.append(vector[start:start + n].reshape(shape))
        start += n
    if start != len(vector):
        raise ValueError(f"vector has {len(vector)} entries, cliques need {start}")
    return out
