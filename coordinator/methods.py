"""Synthesis methods as plug-ins: what a job measures and how it makes the synthetic table.

A method gets the job's `Rounds` (the parties who completed set-up, the channel, the
accountant) and returns a `Synthesis`; set-up, evaluation and the privacy report around it are
the job's (coordinator.job). Methods are registered by the name a job spec carries
(`protocols.spec.METHODS`) and imported only when asked for, so a method with heavy optional
dependencies costs nothing to the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pandas as pd

from fedsynth.coordinator.options import JobOptions
from fedsynth.coordinator.rounds import Rounds
from fedsynth.crypto.accountant import StepBudget
from fedsynth.errors import InputError
from fedsynth.evaluation.meter import StepMeter
from fedsynth.synthesis.model import SavedModel


@dataclass
class Synthesis:
    """What a method hands back: the table, the model to draw more from (None if the method
    keeps none), its budget plan, the noisy count of the parties' rows, and lines for the
    privacy report (e.g. which marginals were measured)."""

    synthetic: pd.DataFrame
    model: SavedModel | None
    plan: list[StepBudget]
    total: float | None  # None: the method made no noisy count of the rows
    report: dict[str, Any] = field(default_factory=dict)


class Method(Protocol):
    name: str

    def synthesize(self, rounds: Rounds, opt: JobOptions, meter: StepMeter,
                   say: Callable[[str], None]) -> Synthesis: ...


class MethodUnavailable(InputError):
    """A method the job names is not known, or needs an optional extra not installed."""


# name -> (module, class, the pip extra it needs or "")
REGISTRY: dict[str, tuple[str, str, str]] = {
    "marginals": ("fedsynth.coordinator.marginal_method", "MarginalMethod", ""),
    "dpsgd": ("fedsynth.coordinator.dpsgd_method", "DpsgdMethod", "dpsgd"),
}


def get(name: str) -> Method:
    """The method registered as `name`, with a clear error naming the extra it needs."""
    if name not in REGISTRY:
        raise MethodUnavailable(f"method {name!r} is not one of {sorted(REGISTRY)}")
    module, cls, extra = REGISTRY[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        if not extra:
            raise
        raise MethodUnavailable(f"method {name!r} needs the optional extra {extra!r}: "
                                f'pip install -e ".[{extra}]" ({exc})') from None
    method: Method = getattr(mod, cls)()
    return method
