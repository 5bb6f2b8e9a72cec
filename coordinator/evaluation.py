"""The job's evaluation step: every party scores the synthetic table; only sums come back.

The coordinator sends the synthetic table (a DP output) and the public options; each party
builds the same evaluation plan, computes its statistics vector over its HELD-OUT rows only
(evaluation.statistics) and answers with it masked, exactly as in a measurement round, so the
coordinator learns only the sum over at least t parties. From that sum it computes the report's
measures (evaluation.measures). With an evaluation ε (the default) every party noises its vector
(evaluation.dp) and charges its ledger's evaluation budget; without one the sums are exact, not
DP, and a party releases them only if its policy says "exact".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pandas as pd

from fedsynth.coordinator.exchange import Exchange, PartyKeys, secure_sum_of
from fedsynth.evaluation.measures import measure
from fedsynth.evaluation.plan import EvalOptions, EvaluationPlan
from fedsynth.evaluation.transfer import synthetic_from_parquet, synthetic_to_parquet
from fedsynth.protocols import fedsynth_pb2 as pb
from fedsynth.protocols.spec import JobSpec

log = logging.getLogger("fedsynth.coordinator")

REVEALS = ("each party, over its held-out rows only (never the rows the synthesis used): counts "
           "per evaluation bin, pair and sampled triple of columns; exact evaluations also per "
           "fine and display bin of numeric columns and of values equal to a public bound, and "
           "fixed-point sums of numeric values; model score histograms by label; group x label "
           "x prediction counts; and the other blocks of the evaluation plan. The coordinator "
           "sees only the sum over the contributing parties (secure aggregation)")


def federated_evaluation(ex: Exchange, *, round_id: int, spec: JobSpec,
                         participants: Sequence[int], keys: PartyKeys,
                         synthetic: pd.DataFrame, options: EvalOptions) -> dict[str, Any]:
    epsilon = options.epsilon
    data = synthetic_to_parquet(synthetic)
    table = synthetic_from_parquet(data, spec.schema)  # what every party will see
    plan = EvaluationPlan.build(spec.schema, table, options)
    req = pb.EvaluateRequest(round=round_id, synthetic_parquet=data,
                             options_json=options.to_json(), participants=list(participants))
    res = secure_sum_of(ex, "evaluate_request", req, round_id=round_id, label="evaluation",
                        channel=spec.channel, threshold=spec.threshold,
                        participants=participants, keys=keys, length=plan.length)
    out = measure(plan, res.total, table)
    out["evaluation"] = {**out.get("evaluation", {}), "mode": "federated",
                         # the real side: a party evaluates its held-out rows and nothing else
                         "real_side": "held_out",
                         "real_rows": "the parties' held-out rows (never used for synthesis)",
                         "parties": res.contributors,
                         "options": options.__dict__, "statistics": plan.length,
                         "synthetic_bytes_sent_to_each_party": len(data), "reveals": REVEALS,
                         "guarantee": (f"DP: each party's held-out rows at ε={epsilon}, "
                                       f"δ={options.delta} (a separate "
                                       "evaluation budget in each party's ledger)")
                         if epsilon is not None else
                         "NOT differentially private: exact sums over the parties' held-out rows",
                         "seeded_noise_parties": res.seeded_noise}
    out["ledger_epsilon_per_party"] = {str(p): e for p, e in sorted(res.ledger_epsilon.items())}
    log.info("evaluation: %d statistics summed over parties %s", plan.length, res.contributors)
    return out
