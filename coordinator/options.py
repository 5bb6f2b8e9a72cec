"""What a job's caller may choose beyond the job spec the parties agree to (the spec is
protocols.spec.JobSpec): rows, seeds, the method's tuning knobs, timeouts, evaluation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedsynth.evaluation.plan import EvalOptions


@dataclass(frozen=True)
class JobOptions:
    rows: int | None = None  # synthetic rows; default: the noisy estimate of the real total
    seed: int = 0
    max_groups: int = 32  # values per numeric column in the model
    select_groups: int = 8  # values per column in the selection round
    shares: tuple[float, float, float] = (0.1, 0.2, 0.7)  # one-way, select, pairs
    iters: int = 1000  # estimation iterations
    extra_pairs: float = 1.0  # pairs beyond the spanning tree, as a multiple of (columns - 1)
    max_model_mb: float = 64.0  # cap on the graphical model's size when adding pairs
    refine: bool = False  # adaptive round (measured neutral, twice the time: marginal_method)
    reuse_mb: float = 2.0  # model size up to which unchosen pairs' selection answers join it
    timeout: float = 600.0  # seconds to wait for the parties' replies in each step
    evaluate: EvalOptions | None = None  # federated evaluation after sampling (None: skip it)
    train: Mapping[str, Any] | None = None  # dpsgd: synthesis.dpsgd.TrainPlan fields
