"""The job's evaluation step: every party scores the synthetic table; only sums come back.

The coordinator sends the synthetic table (a DP output) and the public options; each party
builds the same evaluation plan, computes its statistics vector (evaluation.statistics) and
answers with it masked, exactly as in a measurement round, so the coordinator learns only the
sum over at least t parties. From that sum it computes the report's measures (evaluation.
measures). The sum is exact, not DP: a party releases it only if its policy allows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from fedsynth.coordinator.exchange import Exchange, secure_sum_of
from fedsynth.evaluation.measures import measure
from fedsynth.evaluation.plan import EvalOptions, EvaluationPlan
from fedsynth.evaluation.transfer import synthetic_from_parquet, synthetic_to_parquet
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.protocols.spec import JobSpec

log = logging.getLogger("fedsynth.coordinator")

REVEALS = ("each party: exact counts per evaluation bin, pair and sampled triple of columns; "
           "fixed-point sums, squares and products of numeric values; model score histograms "
           "by label; group x label x prediction counts; a 0/1 flag per synthetic row equal to "
           "one of its rows; histograms of distances to the closest record. The coordinator "
           "sees only the sum of these over the contributing parties (secure aggregation); "
           "none of it is differentially private")


def federated_evaluation(ex: Exchange, *, round_id: int, spec: JobSpec,
                         participants: Sequence[int], publics: Mapping[int, bytes],
                         synthetic: pd.DataFrame, options: EvalOptions) -> dict[str, Any]:
    data = synthetic_to_parquet(synthetic)
    table = synthetic_from_parquet(data, spec.schema)  # what every party will see
    plan = EvaluationPlan.build(spec.schema, table, options)
    req = pb.EvaluateRequest(round=round_id, synthetic_parquet=data,
                             options_json=options.to_json(), participants=list(participants))
    res = secure_sum_of(ex, "evaluate_request", req, round_id=round_id, label="evaluation",
                        channel=spec.channel, threshold=spec.threshold,
                        participants=participants, publics=publics, length=plan.length)
    out = measure(plan, res.total, table)
    out["evaluation"] = {"mode": "federated", "parties": res.contributors,
                         "options": options.__dict__, "statistics": plan.length,
                         "synthetic_bytes_sent_to_each_party": len(data), "reveals": REVEALS}
    out["ledger_epsilon_per_party"] = {str(p): e for p, e in sorted(res.ledger_epsilon.items())}
    log.info("evaluation: %d statistics summed over parties %s", plan.length, res.contributors)
    return out
