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


def count(codes: np.ndarray, groupings: Sequence[Grouping],
          cliques: Sequence[Clique]) -> np.ndarray:
    """Counts of each clique's cells (C order), concatenated, on the grouped domain (int64)."""
    sizes = [g.size for g in groupings]
    grouped = np.stack([g.index[codes[:, j]] for j, g in enumerate(groupings)], axis=1) if len(
        codes) else np.zeros((0, len(groupings)), dtype=np.int64)
    parts = []
    for c in cliques:
        shape = clique_shape(c, sizes)
        flat = np.ravel_multi_index(tuple(grouped[:, i] for i in c), shape) if len(c) else (
            np.zeros(len(grouped), dtype=np.int64))
        parts.append(np.bincount(flat, minlength=int(np.prod(shape))).astype(np.int64))
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
