"""A trained dpsgd generator as a job keeps it: more rows later at no privacy cost.

What is kept is post-processing of DP outputs only: the global generator's parameters (the
average of the parties' DP-SGD updates, marginals matched to the domain round's counts), the
public training plan that shapes the network, each column's grouping and the domain round's
noisy fine counts (for values inside a group), and the decoding floor. On disk it is model.json
and model.npz (synthesis.model_file, format "fedsynth-generator"), never pickle. Needs the
dpsgd extra (torch) to sample.

A generator draws plain rows only: conditions and class ratios need the marginal method's
graphical model, whose exact conditionals a network over all columns does not have.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedsynth import progress
from fedsynth.synthesis import datetimes, dpsgd, herding
from fedsynth.synthesis.conditions import ClassRatio, ConditionError, Conditions
from fedsynth.synthesis.encoding import Encoding, Grouping, decode_groups
from fedsynth.synthesis.model_file import (
    MODEL_JSON,
    ModelFileError,
    generator_files,
    read_generator,
    write_folder,
)
from fedsynth.synthesis.schema import Schema


@dataclass
class GeneratorModel:
    schema: Schema
    plan: dpsgd.TrainPlan
    groupings: list[Grouping]  # per column: fine code -> the generator's value
    fine_counts: list[np.ndarray]  # per column: noisy fine 1-way counts (ones: no domain round)
    floor: float  # fine counts below this are treated as empty when decoding
    parameters: np.ndarray
    # "herded" (synthesis.herding), or "independent": a model saved before rows were herded,
    # whose seed gives its job's rows only when drawn as they were
    sampler: str = "herded"

    def sample(self, rows: int, *, seed: int, conditions: Conditions | None = None,
               class_ratio: ClassRatio | None = None, balanced: bool = True) -> pd.DataFrame:
        """`rows` synthetic rows with the schema's columns and types (the same for the same
        seed); ConditionError when conditions or a class ratio are asked for.

        `balanced` (the default) chooses the rows among more draws of the generator so that
        their one- and two-way counts follow it without the noise of chance (synthesis.
        herding), up to herding.MAX_ROWS rows; False, more rows, or a model saved before
        rows were herded (`sampler` "independent") gives independent draws."""
        if conditions or class_ratio:
            raise ConditionError("conditions and class ratios need a model of the marginal "
                                 "method (--method marginals); this is a dpsgd generator, "
                                 "which draws plain rows only")
        sizes = [g.size for g in self.groupings]
        model = dpsgd.build(self.plan, sizes)
        dpsgd.set_vector(model, self.parameters)
        gen = dpsgd.sampling_generator(seed)
        if balanced and self.sampler == "herded" and rows <= herding.MAX_ROWS:
            with progress.task(f"choosing {rows:,} rows from the generator's draws",
                               total=rows, unit="row") as bar:
                codes = herding.balanced(lambda m: model.sample(m, gen), rows, sizes,
                                         np.random.default_rng([seed, 1]),
                                         advance=bar.advance)
        else:
            codes = model.sample(rows, gen)
        return datetimes.with_layout(decode_groups(
            Encoding.from_schema(self.schema), self.groupings, codes, self.fine_counts,
            np.random.default_rng(seed), floor=self.floor), self.schema.columns)

    def files(self) -> dict[str, str | bytes]:
        """model.json and model.npz, for a job's output folder (beside its schema.json)."""
        return generator_files(self.schema, self.groupings, self.fine_counts, self.floor,
                               json.loads(self.plan.to_json()), self.parameters, self.sampler)

    def save(self, folder: str | Path) -> Path:
        """Write schema.json, model.json and model.npz into `folder` (made if needed)."""
        return write_folder(folder, self.schema, self.files())

    @classmethod
    def load(cls, folder: str | Path) -> GeneratorModel:
        """The generator saved in `folder`; ModelFileError when a file is missing, altered, of
        another format, or its parameters do not fit its plan and domain."""
        path = Path(folder)
        schema, groupings, counts, floor, raw_plan, params, sampler = read_generator(path)
        try:
            plan = dpsgd.TrainPlan.from_json(json.dumps(raw_plan))
            expected = dpsgd.parameter_count(plan, [g.size for g in groupings])
        except ValueError as exc:
            raise ModelFileError("model file", path / MODEL_JSON, [str(exc)]) from None
        if len(params) != expected:
            raise ModelFileError("model file", path / MODEL_JSON, [
                f"{len(params)} parameters where its plan and domain make {expected}"])
        if np.abs(params).max(initial=0.0) > dpsgd.PARAMETER_BOUND:
            raise ModelFileError("model file", path / MODEL_JSON, [
                f"parameters beyond ±{dpsgd.PARAMETER_BOUND:g} (a trained generator stays "
                "within it)"])
        return cls(schema, plan, groupings, counts, floor, params, sampler)
