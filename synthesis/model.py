"""The fitted synthesis model: what a job keeps so that rows can be drawn again later.

Everything here is post-processing of noisy aggregated answers (the graphical model's
potentials, the model's grouping of each column, the noisy fine 1-way counts used to decode
inside a group): drawing more rows from it costs no privacy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fedsynth.synthesis.encoding import Encoding, Grouping, decode_groups
from fedsynth.synthesis.estimation import sample_codes
from fedsynth.synthesis.schema import Schema


@dataclass
class SynthesisModel:
    schema: Schema
    groupings: list[Grouping]  # per column: fine code -> model group
    fine_counts: list[np.ndarray]  # per column: noisy fine 1-way counts (decoding inside groups)
    floor: float  # fine counts below this are treated as empty when decoding
    mrf: Any  # mbi's MarkovRandomField over the group codes

    def sample(self, rows: int, *, seed: int) -> pd.DataFrame:
        """`rows` synthetic rows with the schema's columns and types."""
        codes = sample_codes(self.mrf, rows, seed=seed)
        return decode_groups(Encoding.from_schema(self.schema), self.groupings, codes,
                             self.fine_counts, np.random.default_rng(seed), floor=self.floor)
