"""The fitted synthesis model: what a job keeps so that rows can be drawn again later.

Everything here is post-processing of noisy aggregated answers (the graphical model's
potentials, the model's grouping of each column, the noisy fine 1-way counts used to decode
inside a group): drawing more rows from it, conditioned or re-weighted, costs no privacy.

On disk a model is model.json and model.npz beside the job's schema.json, never pickle
(synthesis.model_file); loading rebuilds mbi's MarkovRandomField from the saved potentials.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from fedsynth.synthesis import datetimes
from fedsynth.synthesis.conditions import (
    ClassRatio,
    ConditionError,
    Conditions,
    Keep,
    class_weights,
    group_share,
    parse_class_ratio,
    parse_conditions,
    redraw_in_range,
)
from fedsynth.synthesis.encoding import Encoding, Grouping, decode_weights, draw_fine
from fedsynth.synthesis.estimation import (
    column_marginal,
    from_potentials,
    potentials_of,
    reweighted,
    sample_codes,
)
from fedsynth.synthesis.model_file import (
    GENERATOR_FORMAT,
    ModelFileError,
    model_files,
    read_model,
    saved_format,
    write_folder,
)
from fedsynth.synthesis.schema import Schema


class SavedModel(Protocol):
    """What a job keeps to draw more rows later: the marginal method's SynthesisModel or the
    dpsgd method's GeneratorModel (synthesis.generator_model)."""

    schema: Schema

    def sample(self, rows: int, *, seed: int, conditions: Conditions | None = None,
               class_ratio: ClassRatio | None = None) -> pd.DataFrame: ...

    def files(self) -> dict[str, str | bytes]: ...

    def save(self, folder: str | Path) -> Path: ...


def load_model(folder: str | Path) -> SavedModel:
    """The model a job saved in `folder`, of whichever method made it; ModelFileError as the
    formats' loaders raise it, or when a generator needs the dpsgd extra not installed."""
    path = Path(folder)
    if saved_format(path) != GENERATOR_FORMAT:
        return SynthesisModel.load(path)
    try:
        from fedsynth.synthesis.generator_model import GeneratorModel
    except ImportError as exc:
        raise ModelFileError("model folder", path, [
            f"it holds a dpsgd generator, which needs the optional extra 'dpsgd' to sample: "
            f'pip install -e ".[dpsgd]" ({exc})']) from None
    return GeneratorModel.load(path)


@dataclass
class SynthesisModel:
    schema: Schema
    groupings: list[Grouping]  # per column: fine code -> model group
    fine_counts: list[np.ndarray]  # per column: noisy fine 1-way counts (decoding inside groups)
    floor: float  # fine counts below this are treated as empty when decoding
    mrf: Any  # mbi's MarkovRandomField over the group codes

    def sample(self, rows: int, *, seed: int, conditions: Conditions | None = None,
               class_ratio: ClassRatio | None = None) -> pd.DataFrame:
        """`rows` synthetic rows with the schema's columns and types.

        `conditions` ({"student": "Yes", "balance": (100, None), "income": None} or
        ["student=Yes", "balance=100..", "income="]) draws from the model's exact conditional
        distribution given all of them; `class_ratio` ({"default": {"Yes": 0.5}} or
        ["default=Yes:0.5"]) re-weights one column's values to these shares of the rows, every
        distribution given that column staying the model's. ConditionError when one is
        malformed or has zero probability under the model."""
        enc = Encoding.from_schema(self.schema)
        keep = parse_conditions(enc, conditions)
        mrf = self._conditioned(enc, keep, class_ratio)
        codes = sample_codes(mrf, rows, seed=seed)
        return self._decode(enc, codes, keep, np.random.default_rng(seed))

    def conditioned(self, conditions: Conditions | None = None,
                    class_ratio: ClassRatio | None = None) -> Any:
        """The MarkovRandomField `sample` draws group codes from under these arguments."""
        enc = Encoding.from_schema(self.schema)
        return self._conditioned(enc, parse_conditions(enc, conditions), class_ratio)

    def _conditioned(self, enc: Encoding, keep: dict[int, Keep],
                     class_ratio: ClassRatio | None) -> Any:
        weights = {}
        for j, k in keep.items():
            w = group_share(self._weights(enc, j), self.groupings[j], k.share)
            if not (w > 0).any():
                raise ConditionError(f"condition {k.said}: zero probability under the model")
            weights[j] = w
        mrf = reweighted(self.mrf, weights) if weights else self.mrf
        ratio = parse_class_ratio(enc, self.groupings, class_ratio)
        if ratio is not None:
            j, shares = ratio
            name = self.schema.columns[j].name
            if j in keep:
                raise ConditionError(f"class ratio on {name!r}: the column is also conditioned "
                                     f"({keep[j].said}); give one or the other")
            w = class_weights(name, column_marginal(mrf, j), shares)
            mrf = reweighted(mrf, {j: w})
        return mrf

    def _weights(self, enc: Encoding, j: int) -> np.ndarray:
        return decode_weights(enc.codecs[j], self.groupings[j], self.fine_counts[j], self.floor)

    def _decode(self, enc: Encoding, codes: np.ndarray, keep: dict[int, Keep],
                rng: np.random.Generator) -> pd.DataFrame:
        """Typed rows: in each group a fine code drawn by its decoding weight (times the share
        the conditions keep), then values as `encoding.decode_groups` draws them (the same rows
        for the same seed when nothing is conditioned), inside a range when one is given."""
        out: dict[str, pd.Series] = {}
        for j, codec in enumerate(enc.codecs):
            w = self._weights(enc, j) * (keep[j].share if j in keep else 1.0)
            fine, inside = draw_fine(self.groupings[j], codes[:, j], w, rng)
            values = codec.decode(fine, rng, inside=inside).reset_index(drop=True)
            interval = keep[j].interval if j in keep else None
            if interval is not None:
                share = keep[j].share
                part = np.flatnonzero(codec.in_bins(fine) & (share[fine] > 0) & (share[fine] < 1))
                if len(part):
                    values = _put(codec.column, values, part,
                                  redraw_in_range(codec, fine[part], interval, rng))
            out[codec.column.name] = values
        return datetimes.with_layout(pd.DataFrame(out), self.schema.columns)

    def files(self) -> dict[str, str | bytes]:
        """model.json and model.npz, for a job's output folder (beside its schema.json)."""
        return model_files(self.schema, self.groupings, self.fine_counts, self.floor,
                           potentials_of(self.mrf), float(self.mrf.total))

    def save(self, folder: str | Path) -> Path:
        """Write schema.json, model.json and model.npz into `folder` (made if needed)."""
        return write_folder(folder, self.schema, self.files())

    @classmethod
    def load(cls, folder: str | Path) -> SynthesisModel:
        """The model saved in `folder` (a job's output folder); ModelFileError when a file is
        missing, of another format or version, altered, or not of the folder's schema.json."""
        schema, groupings, counts, floor, sizes, potentials, total = read_model(Path(folder))
        return cls(schema, groupings, counts, floor, from_potentials(sizes, potentials, total))


def _put(column: Any, values: pd.Series, rows: np.ndarray, units: np.ndarray) -> pd.Series:
    """`values` with the given rows replaced by numbers in the column's units."""
    from fedsynth.synthesis import datetimes

    values = values.copy()
    if column.kind == "datetime":
        values.iloc[rows] = pd.Series(datetimes.from_units(units, column.resolution)).to_numpy()
    elif column.integral:
        values.iloc[rows] = units.astype(np.int64)
    else:
        values.iloc[rows] = units
    return values

