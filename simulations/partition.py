"""Splitting a pooled table into parties: iid, label-skewed dirichlet:ALPHA, or column:NAME."""

from __future__ import annotations

import numpy as np
import pandas as pd


def parse(spec: str) -> tuple[str, str | float | None]:
    """'iid' | 'dirichlet:0.5' | 'column:region' -> (kind, argument), with a clear error."""
    kind, _, arg = spec.partition(":")
    if kind == "iid" and not arg:
        return "iid", None
    if kind == "dirichlet":
        try:
            alpha = float(arg)
        except ValueError:
            alpha = -1.0
        if alpha <= 0:
            raise ValueError(f"partition {spec!r}: dirichlet needs a positive ALPHA, e.g. "
                             "dirichlet:0.5")
        return "dirichlet", alpha
    if kind == "column" and arg:
        return "column", arg
    raise ValueError(f"partition {spec!r} is not one of iid, dirichlet:ALPHA, column:NAME")


def split(df: pd.DataFrame, parties: int, spec: str, *, target: str | None,
          seed: int) -> list[pd.DataFrame]:
    """One table per party. dirichlet skews the `target` label mix; column gives each party
    the rows of some values of one column (values dealt out round-robin, largest first)."""
    if parties < 1:
        raise ValueError("need at least one party")
    kind, arg = parse(spec)
    rng = np.random.default_rng(seed)
    n = len(df)
    owner = np.empty(n, dtype=np.int64)
    if kind == "iid":
        owner[:] = rng.permutation(n) % parties
    elif kind == "dirichlet":
        if target is None or target not in df.columns:
            raise ValueError(f"partition {spec!r} skews by the target column; give --target")
        labels = df[target].astype(str).to_numpy()
        for lab in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == lab))
            props = rng.dirichlet([float(arg or 1.0)] * parties)
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for p, chunk in enumerate(np.split(idx, cuts)):
                owner[chunk] = p
    else:
        col = str(arg)
        if col not in df.columns:
            raise ValueError(f"partition column {col!r} is not in the data (columns: "
                             f"{', '.join(map(str, df.columns))})")
        values = df[col].astype(str).to_numpy()
        uniq, counts = np.unique(values, return_counts=True)
        if len(uniq) < parties:
            raise ValueError(f"column {col!r} has {len(uniq)} values, fewer than {parties} "
                             "parties; use fewer parties or another column")
        assign = {v: i % parties for i, v in enumerate(uniq[np.argsort(-counts)])}
        owner[:] = [assign[v] for v in values]
    return [df.iloc[np.flatnonzero(owner == p)].reset_index(drop=True) for p in range(parties)]
