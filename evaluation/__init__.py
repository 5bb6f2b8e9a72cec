"""Evaluation of synthetic tables: the same measures locally and federated (sums only).

plan (what is computed, from public inputs) -> statistics (a node's sums over its rows) ->
measures (the report's numbers from summed statistics) -> report (report.html).
"""

from fedsynth.evaluation.local import evaluate_tables
from fedsynth.evaluation.metrics import EvaluationBinning, exact_match_rate, marginal_tvd, tstr_auc
from fedsynth.evaluation.plan import EvalOptions

__all__ = ["EvalOptions", "EvaluationBinning", "evaluate_tables", "exact_match_rate",
           "marginal_tvd", "tstr_auc"]
